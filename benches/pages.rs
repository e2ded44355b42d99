//! Issue 6's benchmark: time to answer the repository pages and the package tracker page with
//! 10,000 source packages in the repository (goal: p99 under 50 ms).
//!
//! `cargo bench --bench pages`. Environment: BUILDBAY_BENCH_SOURCES (default 10000),
//! BUILDBAY_BENCH_REQUESTS (default 300 per page). Prints a Markdown report; docs/benchmarks.md
//! holds the recorded one. Times are the whole request seen from the client on the same host
//! (connect, render, transfer), so they bound the server's render time from above.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Server, ok as sh, synth};
use std::process::Command;
use std::time::Instant;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let n = env("BUILDBAY_BENCH_SOURCES", 10_000);
    let requests = env("BUILDBAY_BENCH_REQUESTS", 300);
    let tmp = tempfile::tempdir().expect("tempdir");
    let incoming = tmp.path().join("incoming");
    std::fs::create_dir_all(&incoming).expect("mkdir");
    let bin = env!("CARGO_BIN_EXE_buildbay");
    let state = tmp.path().join("state");
    common::setup_bench_state(bin, &state);
    eprintln!("generating and including {n} source packages ...");
    let changes: Vec<_> = (0..n).map(|i| synth::package(&incoming, i, "1.0~test12+1")).collect();
    for chunk in changes.chunks(2000) {
        sh(Command::new(bin)
            .arg("--state")
            .arg(&state)
            .args(["--log", "warn", "repo", "include", synth::DIST])
            .args(chunk)
            .arg("--force"));
    }
    let listed = sh(Command::new(bin).arg("--state").arg(&state).args(["repo", "list", synth::DIST]));
    let tracked = listed.split_whitespace().next().expect("a package").to_owned();
    let server = Server::start({
        let mut c = Command::new(bin);
        c.arg("--state").arg(&state).args(["--log", "warn,buildbay=info", "serve", "--http", "127.0.0.1:0"]);
        c
    });
    let agent = ureq::Agent::new_with_defaults();
    let pages = [
        ("Repositories (every distribution, package counts, apt lines)", "/mini_buildd/repositories/".to_owned()),
        (
            "Distribution listing, first page (500 of 10,000 rows)",
            format!("/mini_buildd/repositories/test/{}/", synth::DIST),
        ),
        ("Distribution listing filtered (`?q=`)", format!("/mini_buildd/repositories/test/{}/?q=9999", synth::DIST)),
        ("Package tracker", format!("/mini_buildd/sources/{tracked}/")),
    ];
    println!("| Page, {n} source packages | requests | median | p99 | max | bytes |\n|---|---|---|---|---|---|");
    for (what, path) in pages {
        let url = format!("{}{path}", server.url);
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0;
        for _ in 0..requests {
            let t = Instant::now();
            let body = agent.get(&url).call().and_then(|mut r| r.body_mut().read_to_string()).expect("GET page");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            bytes = body.len();
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| {what} | {requests} | {:.1} ms | {:.1} ms | {:.1} ms | {bytes} |",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1]
        );
    }
    assert!(server.stop(), "the daemon stops cleanly");
}
