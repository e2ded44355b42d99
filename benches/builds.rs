//! Issue 5's benchmark: a real build of the trivial debhelper package, from its build request
//! queued (the PACKAGING event) to its build result (BUILT), broken into phases, for each
//! backend (sbuild on the schroot overlay, the nspawn machine) and each lintian mode (errfail
//! gating the install, ignore run after the result, disabled). The first build of each
//! backend is reported apart (cold), then the median of the warm ones.
//!
//! Needs root and the `buildbay-bookworm-amd64` machine image (made on first use). Runs builds
//! as child processes (this host has no systemd). `cargo bench --bench builds`

#[path = "../tests/common/mod.rs"]
mod common;

use common::upload::*;
use common::{Instance, Server, median};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DIST: &str = "bookworm-test-unstable";
const WARM: usize = 3;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

type Seen = Arc<Mutex<HashMap<(String, String), (f64, serde_json::Value)>>>;

/// Every event's arrival (type, version) → (wall-clock seconds, event), from a live SSE stream.
fn watch(url: &str) -> (std::process::Child, Seen) {
    let mut child = Command::new("curl")
        .args(["-s", "-N"])
        .arg(format!("{url}/api/events"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let seen: Seen = Arc::default();
    let out = child.stdout.take().expect("stdout");
    let s = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let t = now();
            if let Some(v) =
                line.strip_prefix("data:").and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
            {
                let key = (
                    v["type"].as_str().unwrap_or_default().to_owned(),
                    v["version"].as_str().unwrap_or_default().to_owned(),
                );
                s.lock().expect("lock").insert(key, (t, v));
            }
        }
    });
    (child, seen)
}

fn wait(seen: &Seen, kind: &str, version: &str) -> (f64, serde_json::Value) {
    let start = Instant::now();
    loop {
        if let Some(e) = seen.lock().expect("lock").get(&(kind.to_owned(), version.to_owned())) {
            return e.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(900), "no {kind} for {version}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One build's figures, in seconds.
#[derive(Default, Clone)]
struct Run {
    queued_to_built: f64,
    to_start: f64,
    phases: Vec<(String, f64)>,
    result: f64,
    installed: f64,
}

fn build(srv: &Server, seen: &Seen, dir: &std::path::Path, version: &str, lintian: &str) -> Run {
    let option = format!("lintian-mode={lintian}");
    let changes = buildable_source_with(dir, "bbbench", version, DIST, "true", &[&option]);
    let t0 = now();
    ftp_upload(&srv.ftp, &changes);
    let (queued, _) = wait(seen, "PACKAGING", version);
    let (building, _) = wait(seen, "BUILDING", version);
    let (built, event) = wait(seen, "BUILT", version);
    let (installed, _) = wait(seen, "INSTALLED", version);
    assert_eq!(event["extra"]["status"], "successful", "{event}");
    let phases: Vec<(String, f64)> = event["extra"]["phases"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0))).collect())
        .unwrap_or_default();
    let in_unit: f64 = phases.iter().map(|(_, s)| s).sum();
    Run {
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
    format!("| {} |", cells.join(" | "))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "real builds need root; run the bench as root");
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    common::ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let t = Instant::now();
    inst.ok(&["setup", "--chroots", "bookworm:amd64"]);
    println!("chroot ready (image reused when present): {:.1} s", t.elapsed().as_secs_f64());
    let port = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let (http, ftp) = (format!("127.0.0.1:{}", port()), format!("127.0.0.1:{}", port()));
    let srv = Server::start(inst.cmd(&[
        "serve",
        "--http",
        &http,
        "--ftp",
        &ftp,
        "--public-host",
        "127.0.0.1",
        "--build-runner",
        "child",
        "--build-slots",
        "1",
    ]));
    let (mut curl, seen) = watch(&srv.url);
    std::thread::sleep(Duration::from_millis(300));
    let mut table = vec![
        "| backend, lintian | queued → BUILT | queued → start | setup | dependencies | build | post-build (lintian) | cleanup | result | upload → INSTALLED |".to_owned(),
        "|---|---|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    let mut n = 0;
    for backend in ["sbuild", "nspawn"] {
        if backend == "nspawn" {
            let out = api_as(&srv.url, "admin", &["setup", "--distributions", "bookworm:amd64:nspawn"]);
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
    println!("\nAll figures in seconds, this machine, one build at a time:\n");
    for line in table {
        println!("{line}");
    }
    srv.stop();
}
