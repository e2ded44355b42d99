//! Kill the writer at random points of include and publish; the published tree must always
//! verify (gpgv plus checksums), and the next include must work.

use crate::common::*;
use std::time::{Duration, Instant};

#[test]
fn killing_the_writer_never_breaks_the_published_tree() {
    let inst = Instance::new("ed25519");
    let (_, gpg) = inst.key_files();
    let rounds: u64 = std::env::var("BUILDBAY_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let pkgs: Vec<_> =
        (1..=rounds + 1).map(|i| make_pkg(inst.dir.path(), "bbcrash", &format!("1.{i}~test12+1"))).collect();
    // How long an include takes; kills land uniformly within it.
    let t0 = Instant::now();
    inst.ok(&["repo", "include", "bookworm-test-unstable", pkgs[0].to_str().unwrap()]);
    let span = t0.elapsed().as_micros() as u64;
    let mut seed: u64 = std::env::var("BUILDBAY_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("crash test: {rounds} rounds, include takes {span} µs, seed {seed}");
    let mut killed = 0;
    let mut seen = Default::default();
    for (i, pkg) in pkgs.iter().enumerate().skip(1) {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = (seed >> 33) % span.max(1);
        let mut child =
            inst.cmd(&["repo", "include", "bookworm-test-unstable", pkg.to_str().unwrap()]).spawn().expect("spawn");
        std::thread::sleep(Duration::from_micros(delay));
        if child.try_wait().expect("wait").is_none() {
            child.kill().expect("kill -9");
            killed += 1;
        }
        let _ = child.wait();
        verify_published_since(&inst.repo(), &gpg, &mut seen);
        // The next include works: a fresh version always goes in (this one may or may not have).
        if i % 10 == 0 {
            let probe = make_pkg(inst.dir.path(), "bbprobe", &format!("1.{i}~test12+1"));
            inst.ok(&["repo", "include", "bookworm-test-unstable", probe.to_str().unwrap()]);
            verify_published_since(&inst.repo(), &gpg, &mut seen);
        }
    }
    eprintln!("killed {killed} of {rounds} writers mid-flight");
    assert!(killed >= 50, "only {killed} writers were killed mid-flight; the test did not test");
    let last = make_pkg(inst.dir.path(), "bbcrash", "9.0~test12+1");
    inst.ok(&["repo", "include", "bookworm-test-unstable", last.to_str().unwrap()]);
    inst.ok(&["repo", "check", "test"]);
    verify_published(&inst.repo(), &gpg);
}
