//! Issue 19's benchmark: upload → INSTALLED of a package with a passing `debian/tests` on each
//! backend (nspawn, then sbuild), with autopkgtest and piuparts in `ignore` mode (they run after the result)
//! against both `disabled`, in one run, alternating. The goal: ignore adds under 0.5 s. The
//! `errfail` times (both checks before the result) are reported beside them. Before each round,
//! the previous round's checks have finished (their logs are kept), so no round shares the
//! machine with another's checks.
//!
//! Needs root and the `buildbay-bookworm-amd64` machine image (made on first use). Runs builds
//! as child processes (this host has no systemd). `cargo bench --bench qa`

#[path = "../tests/common/mod.rs"]
mod common;

use common::upload::*;
use common::{Instance, Server, median};
use std::time::{Duration, Instant};

const DIST: &str = "bookworm-test-unstable";
const ROUNDS: usize = 5;

/// Upload a version with both checks in `mode`; wait for INSTALLED, then for the checks that run
/// after it (their logs kept when the build's unit ended). Seconds to INSTALLED.
fn round(inst: &Instance, srv: &Server, seen: &Seen, dir: &std::path::Path, version: &str, mode: &str) -> f64 {
    let opts = [format!("autopkgtest-mode={mode}"), format!("piuparts-mode={mode}"), "lintian-mode=disabled".into()];
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let changes = tested_source(dir, "bbqa", version, DIST, &opts, &[("smoke", "", "bbqa | grep -q hello")]);
    let t0 = now();
    ftp_upload(&srv.ftp, &changes);
    let (installed, ev) = wait_seen(seen, "INSTALLED", version);
    assert_eq!(ev["type"], "INSTALLED", "{ev}");
    if mode == "ignore" {
        // Both after logs are kept together, when the build's unit ends.
        let logs = inst.state().join("var/logs/bbqa").join(version);
        let start = Instant::now();
        while common::walk_named(&logs, "piuparts.log").is_empty() {
            assert!(start.elapsed() < Duration::from_secs(600), "the checks after {version} never ended");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    installed - t0
}

fn main() {
    let Some(dir) = common::build_bench() else { return };
    let inst = Instance::online("ed25519");
    inst.ok(&["setup", "--chroots", "bookworm:amd64"]);
    // Both backends in one run: the same check machines after the build.
    for backend in ["nspawn", "sbuild"] {
        inst.ok(&["setup", "--distributions", &format!("bookworm:amd64:{backend}")]);
        let srv = common::serve_builds(&inst, (common::free_port(), common::free_port()), "1", &["--no-default-setup"]);
        let (mut child, seen) = watch_seen(&srv.url);
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let v = |i: usize, m: usize| format!("{}.{i}.{m}~test12+1", if backend == "nspawn" { 1 } else { 2 });
        // Warm: the image's page cache, and the slot's apt cache with autopkgtest and piuparts.
        round(&inst, &srv, &seen, dir.path(), &v(0, 0), "errfail");
        let (mut disabled, mut ignore, mut errfail) = (Vec::new(), Vec::new(), Vec::new());
        for i in 1..=ROUNDS {
            disabled.push(round(&inst, &srv, &seen, dir.path(), &v(i, 0), "disabled"));
            ignore.push(round(&inst, &srv, &seen, dir.path(), &v(i, 1), "ignore"));
            if i <= 3 {
                errfail.push(round(&inst, &srv, &seen, dir.path(), &v(i, 2), "errfail"));
            }
        }
        let _ = child.kill();
        let (d, g, e) = (median(disabled.clone()), median(ignore.clone()), median(errfail.clone()));
        println!(
            "\nupload → INSTALLED, a package with one passing autopkgtest, {backend} backend, lintian disabled, warm ({:.0} s in all):\n",
            t.elapsed().as_secs_f64()
        );
        println!("| autopkgtest and piuparts | median (s) | runs (s) |");
        println!("|---|---|---|");
        println!("| disabled | **{d:.2}** | {disabled:.2?} |");
        println!("| ignore (after the result) | **{g:.2}** | {ignore:.2?} |");
        println!("| errfail (before the result) | **{e:.2}** | {errfail:.2?} |");
        println!(
            "\n{backend}: ignore adds {:.2} s to disabled by the medians ({:.2}×); goal: under 0.5 s",
            g - d,
            g / d
        );
        assert!(srv.stop());
    }
}
