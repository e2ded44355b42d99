//! Issue 17's benchmark: upload → INSTALLED of the trivial debhelper package built on a remote,
//! against the same upload built locally, in one run. Instance B builds (one slot, sbuild, lintian
//! disabled); instance A builds nothing (`--build-slots 0`) and has B as its remote. The rounds
//! alternate: an upload to B (built and installed on B), then one to A (handed to B by FTP, built
//! there, the result sent back by FTP, installed on A). The goal: the remote adds at most 0.5 s.
//!
//! Needs root and the `buildbay-bookworm-amd64` machine image (made on first use). Runs builds
//! as child processes (this host has no systemd). `cargo bench --bench remotes`

#[path = "../tests/common/mod.rs"]
mod common;

use common::upload::*;
use common::{Instance, Server, median};
use std::time::Instant;

const DIST: &str = "bookworm-test-unstable";
const ROUNDS: usize = 9;

fn serve(inst: &Instance, slots: &str) -> Server {
    common::serve_builds(inst, (common::free_port(), common::free_port()), slots, &["--no-default-setup"])
}

/// Upload to `srv` and wait for INSTALLED there: seconds.
fn upload_to_installed(srv: &Server, seen: &Seen, dir: &std::path::Path, version: &str) -> f64 {
    let changes = buildable_source_with(dir, "bbbench", version, DIST, "true", &["lintian-mode=disabled"]);
    let t0 = now();
    ftp_upload(&srv.ftp, &changes);
    let (installed, _) = wait_seen(seen, "INSTALLED", version);
    installed - t0
}

fn main() {
    let Some(dir) = common::build_bench() else { return };
    let (a, b) = (Instance::online("ed25519"), Instance::online("ed25519"));
    for i in [&a, &b] {
        common::ok(i.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    }
    b.ok(&["setup", "--chroots", "bookworm:amd64"]);
    let (sa, sb) = (serve(&a, "0"), serve(&b, "1"));
    for (on, remote) in [(&sa, &sb), (&sb, &sa), (&sa, &sb)] {
        let out = api_as(&on.url, "admin", &["setup", "--update", "all", "--pca", "all", "--remotes", &remote.url]);
        assert!(out.status.success(), "setup --remotes: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (mut ca, seen_a) = watch_seen(&sa.url);
    let (mut cb, seen_b) = watch_seen(&sb.url);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = Instant::now();
    // One build each first (warms the image's page cache and the apt cache), not counted.
    upload_to_installed(&sb, &seen_b, dir.path(), "1.0~test12+1");
    upload_to_installed(&sa, &seen_a, dir.path(), "1.0~test12+1");
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for i in 1..=ROUNDS {
        local.push(upload_to_installed(&sb, &seen_b, dir.path(), &format!("1.{i}~test12+1")));
        remote.push(upload_to_installed(&sa, &seen_a, dir.path(), &format!("1.{i}~test12+1")));
    }
    let _ = (ca.kill(), cb.kill());
    let (l, r) = (median(local.clone()), median(remote.clone()));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (lm, rm) = (mean(&local), mean(&remote));
    println!(
        "\nupload → INSTALLED, trivial package, sbuild, lintian disabled, warm, median of {ROUNDS} ({:.0} s in all):\n",
        t.elapsed().as_secs_f64()
    );
    println!("| where it builds | median (s) | runs (s) |");
    println!("|---|---|---|");
    println!("| locally (an upload to B) | **{l:.2}** | {local:.2?} |");
    println!("| on a remote (an upload to A, built on B) | **{r:.2}** | {remote:.2?} |");
    println!(
        "\nthe remote adds {:.2} s by the medians ({:.2}× local), {:.2} s by the means; goal: at most 0.5 s",
        r - l,
        r / l,
        rm - lm
    );
    assert!(sa.stop() && sb.stop());
}
