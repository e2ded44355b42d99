//! Issue 5's benchmark: a real build of the trivial debhelper package, from its build request
//! queued (the PACKAGING event) to its build result (BUILT), broken into phases, for each
//! backend (sbuild on the schroot overlay, the nspawn machine) and each lintian mode (errfail
//! gating the install, ignore run after the result, disabled). The first build of each
//! backend is reported apart (cold), then the median of the warm ones.
//!
//! The peer, in the same run: debspawn (Debian's package, the nspawn build tool the issue names)
//! builds the same package in a booted systemd container (it needs machined), from its own
//! image; the first build after its image exists is left out, as for buildbay.
//!
//! Needs root and the `buildbay-bookworm-amd64` machine image (made on first use). Runs builds
//! as child processes (this host has no systemd). `cargo bench --bench builds`

#[path = "../tests/common/mod.rs"]
mod common;

use common::container::{self, Booted};
use common::upload::*;
use common::{Instance, Server, median};
use std::process::Command;
use std::time::{Duration, Instant};

const DIST: &str = "bookworm-test-unstable";
const WARM: usize = 3;

/// One build's figures, in seconds.
#[derive(Default, Clone)]
struct Run {
    queued_to_built: f64,
    to_start: f64,
    phases: Vec<(String, f64)>,
    result: f64,
    installed: f64,
    /// ignore mode: lintian's run after BUILT, until its report ended.
    lintian_after: Option<f64>,
}

fn build(srv: &Server, seen: &Seen, dir: &std::path::Path, version: &str, lintian: &str) -> Run {
    let option = format!("lintian-mode={lintian}");
    let changes = buildable_source_with(dir, "bbbench", version, DIST, "true", &[&option]);
    let t0 = now();
    ftp_upload(&srv.ftp, &changes);
    let (queued, _) = wait_seen(seen, "PACKAGING", version);
    let (building, _) = wait_seen(seen, "BUILDING", version);
    let (built, event) = wait_seen(seen, "BUILT", version);
    let (installed, _) = wait_seen(seen, "INSTALLED", version);
    assert_eq!(event["extra"]["status"], "successful", "{event}");
    let phases: Vec<(String, f64)> = event["extra"]["phases"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0))).collect())
        .unwrap_or_default();
    let in_unit: f64 = phases.iter().map(|(_, s)| s).sum();
    // The report of lintian after the result (ignore mode): wait for it, so that it does not
    // overlap the next build, and say how long after BUILT it ended.
    let lintian_after = event["extra"]["lintian"].as_str().map(|rel| {
        let url = format!("{}/mini_buildd/events-dir/{rel}", srv.url);
        loop {
            let out = Command::new("curl").args(["-sf", &url]).output().expect("curl");
            if String::from_utf8_lossy(&out.stdout).contains("buildbay: exit code") {
                break now() - built;
            }
            assert!(now() - built < 600.0, "no lintian report at {url}");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    Run {
        lintian_after,
        queued_to_built: built - queued,
        to_start: building - queued,
        result: (built - building - in_unit).max(0.0),
        phases,
        installed: installed - t0,
    }
}

const PHASES: [&str; 5] = ["setup", "dependencies", "build", "post-build", "cleanup"];

fn row(label: &str, runs: &[Run]) -> String {
    let med = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let mut cells = vec![
        label.to_owned(),
        format!("**{:.2}**", med(&|r| r.queued_to_built)),
        format!("{:.2}", med(&|r| r.to_start)),
    ];
    for p in PHASES {
        cells.push(format!("{:.2}", med(&|r| r.phases.iter().find(|(n, _)| n == p).map_or(0.0, |(_, s)| *s))));
    }
    cells.push(format!("{:.2}", med(&|r| r.result)));
    cells.push(format!("{:.2}", med(&|r| r.installed)));
    cells.push(if runs.iter().all(|r| r.lintian_after.is_some()) {
        format!("{:.2}", med(&|r| r.lintian_after.unwrap_or_default()))
    } else {
        "—".into()
    });
    format!("| {} |", cells.join(" | "))
}

/// debspawn's wall time per build of the trivial package (first build dropped), or why not.
fn debspawn_peer(dir: &std::path::Path) -> Result<Vec<f64>, String> {
    let tree = container::tree(
        std::path::Path::new("/var/tmp/buildbay-bench/debspawn-bookworm"),
        &[
            "mmdebstrap",
            "--variant=minbase",
            "--include=dbus,systemd,systemd-sysv,systemd-container,debspawn,dpkg-dev,ca-certificates",
            "bookworm",
        ],
    );
    let work = dir.join("debspawn");
    std::fs::create_dir_all(work.join("out")).map_err(|e| e.to_string())?;
    let c = Booted::boot(&tree, &[&work.display().to_string()]);
    let made = c.run(
        "command -v dpkg-source >/dev/null || (apt-get update -q && apt-get install -y -q dpkg-dev) && \
         (debspawn list 2>/dev/null | grep -q bookworm || debspawn create bookworm)",
    );
    if !made.status.success() {
        return Err(format!("debspawn create: {}", String::from_utf8_lossy(&made.stderr)));
    }
    let mut times = Vec::new();
    for i in 0..=WARM {
        let changes = buildable_source(&work, "bbpeer", &format!("1.{i}~test12+1"), DIST, "true");
        let dsc = changes.to_string_lossy().replace("_source.changes", ".dsc");
        let t = Instant::now();
        let out = c.run(&format!("debspawn build --only binary --results-dir {}/out bookworm {dsc}", work.display()));
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            return Err(format!("debspawn build: {}", text.lines().rev().take(15).collect::<Vec<_>>().join("\n")));
        }
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

fn main() {
    let Some(dir) = common::build_bench() else { return };
    let inst = Instance::online("ed25519");
    common::ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let t = Instant::now();
    inst.ok(&["setup", "--chroots", "bookworm:amd64"]);
    println!("chroot ready (image reused when present): {:.1} s", t.elapsed().as_secs_f64());
    let srv = common::serve_builds(&inst, (common::free_port(), common::free_port()), "1", &[]);
    let (mut curl, seen) = watch_seen(&srv.url);
    std::thread::sleep(Duration::from_millis(300));
    let mut table = vec![
        "| backend, lintian | queued → BUILT | queued → start | setup | dependencies | build | post-build (lintian) | cleanup | result | upload → INSTALLED | lintian report after BUILT |".to_owned(),
        "|---|---|---|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    let mut n = 0;
    for backend in ["sbuild", "nspawn"] {
        if backend == "nspawn" {
            let out = api_as(
                &srv.url,
                "admin",
                &["setup", "--update", "all", "--pca", "all", "--distributions", "bookworm:amd64:nspawn"],
            );
            assert!(out.status.success(), "setup nspawn: {}", String::from_utf8_lossy(&out.stderr));
        }
        for (i, lintian) in ["disabled", "ignore", "errfail"].into_iter().enumerate() {
            let mut runs = Vec::new();
            let rounds = if i == 0 { WARM + 1 } else { WARM };
            for _ in 0..rounds {
                n += 1;
                runs.push(build(&srv, &seen, dir.path(), &format!("1.{n}~test12+1"), lintian));
            }
            if i == 0 {
                table.push(row(&format!("{backend}, first build (cold), lintian {lintian}"), &runs[..1]));
                runs.remove(0);
            }
            table.push(row(&format!("{backend}, warm, lintian {lintian} (median of {})", runs.len()), &runs));
            println!("{}", table.last().map(String::as_str).unwrap_or_default());
        }
    }
    let _ = curl.kill();
    srv.stop();
    let ours = |label: &str| -> f64 {
        table
            .iter()
            .find(|l| l.contains(label))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|c| c.trim().trim_matches('*').parse().ok())
            .unwrap_or(f64::NAN)
    };
    let peer = debspawn_peer(dir.path());
    println!("\nAll figures in seconds, this machine, one build at a time:\n");
    for line in &table {
        println!("{line}");
    }
    match peer {
        Ok(times) => {
            let d = median(times.clone());
            println!(
                "\ndebspawn 0.6.2, same package, same run, warm (median of {}): {d:.2} s {times:.2?}",
                times.len()
            );
            for label in ["sbuild, warm, lintian disabled", "nspawn, warm, lintian disabled"] {
                println!("- buildbay {label}: {:.2} s = {:.2}× debspawn", ours(label), ours(label) / d);
            }
        }
        Err(why) => println!("\ndebspawn could not run here: {why}"),
    }
}
