//! Issue 2's benchmark: include one new package into a repository of 10,000 source packages
//! (with 20,000 amd64 and all binaries) and republish; the same step with reprepro beside it.
//!
//! `cargo bench --bench publish` (needs root for apt-get install of reprepro, or reprepro present).
//! Environment: BUILDBAY_BENCH_SOURCES (default 10000), BUILDBAY_BENCH_DIR (kept if given).
//! Prints a Markdown report; docs/benchmarks.md holds the recorded one.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{median, ok as sh, synth};

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use synth::{DIST, package};

/// Run under /usr/bin/time; returns (wall seconds, peak RSS MB).
fn timed(cmd: &mut Command) -> (f64, f64) {
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f").arg("TIME %e %M").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            t.env(k, v);
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        t.current_dir(d);
    }
    let out = t.output().expect("/usr/bin/time");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {err}");
    let line = err.lines().rev().find(|l| l.starts_with("TIME ")).expect("time output");
    let f: Vec<f64> = line[5..].split_whitespace().map(|x| x.parse().expect("number")).collect();
    (f[0], f[1] / 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("BUILDBAY_BENCH_SOURCES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let keep = std::env::var_os("BUILDBAY_BENCH_DIR").map(PathBuf::from);
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = keep.clone().unwrap_or_else(|| tmp.path().to_owned());
    let incoming = base.join("incoming");
    std::fs::create_dir_all(&incoming).expect("mkdir");
    let bin = env!("CARGO_BIN_EXE_buildbay");
    let state = base.join("state");
    if Command::new("reprepro").arg("--version").output().is_err() {
        sh(Command::new("apt-get").args(["install", "-y", "-qq", "reprepro", "time"]));
    }

    eprintln!("generating {n} source packages ...");
    let t = Instant::now();
    let changes: Vec<PathBuf> = (0..n).map(|i| package(&incoming, i, "1.0~test12+1")).collect();
    eprintln!("  {:.1} s", t.elapsed().as_secs_f64());

    common::setup_bench_state(bin, &state);
    eprintln!("importing into buildbay ...");
    let t = Instant::now();
    for chunk in changes.chunks(2000) {
        sh(Command::new(bin)
            .arg("--state")
            .arg(&state)
            .args(["--log", "warn", "repo", "include", DIST])
            .args(chunk)
            .arg("--force"));
    }
    let import = t.elapsed().as_secs_f64();
    eprintln!("  {import:.1} s");
    let repo = state.join("repositories/test");
    let packages_size =
        std::fs::metadata(repo.join(format!("dists/{DIST}/main/binary-amd64/Packages"))).expect("Packages").len();
    let contents_gz =
        std::fs::metadata(repo.join(format!("dists/{DIST}/main/Contents-amd64.gz"))).expect("Contents").len();

    // reprepro, same files: pulled from buildbay's tree by `reprepro update`.
    let rr = base.join("reprepro");
    let gnupg = base.join("gnupg");
    std::fs::create_dir_all(rr.join("conf")).expect("mkdir");
    std::fs::create_dir_all(&gnupg).expect("mkdir");
    sh(Command::new("chmod").arg("700").arg(&gnupg));
    sh(Command::new("gpg").env("GNUPGHOME", &gnupg).args([
        "--batch",
        "--passphrase",
        "",
        "--quick-gen-key",
        "Bench <bench@example.org>",
        "rsa4096",
        "sign",
        "never",
    ]));
    std::fs::write(
        rr.join("conf/distributions"),
        format!("Codename: {DIST}\nSuite: {DIST}\nLabel: {DIST}\nOrigin: bench\nComponents: main\nArchitectures: source amd64\nDescription: bench\nSignWith: default\nNotAutomatic: yes\nButAutomaticUpgrades: yes\nUDebComponents: main\nDebIndices: Packages Release . .gz .xz\nDscIndices: Sources Release . .gz .xz\nContents: .gz\nUpdate: bb\n"),
    )
    .expect("write");
    std::fs::write(
        rr.join("conf/updates"),
        format!("Name: bb\nMethod: file://{}\nSuite: {DIST}\nComponents: main\nArchitectures: amd64 source\nVerifyRelease: blindtrust\n", repo.display()),
    )
    .expect("write");
    eprintln!("importing into reprepro ...");
    let t = Instant::now();
    sh(Command::new("reprepro").env("GNUPGHOME", &gnupg).arg("-b").arg(&rr).args(["--noskipold", "update"]));
    eprintln!("  {:.1} s", t.elapsed().as_secs_f64());
    let rr_count = sh(Command::new("reprepro").arg("-b").arg(&rr).args(["list", DIST])).lines().count();

    // The measured step: one new package, three rounds each.
    let mut bb = (Vec::new(), Vec::new());
    let mut rp = (Vec::new(), Vec::new());
    for round in 0..3 {
        let new = package(&incoming, n + round, "1.0~test12+1");
        let (s, m) = timed(
            Command::new(bin).arg("--state").arg(&state).args(["--log", "warn", "repo", "include", DIST]).arg(&new),
        );
        bb.0.push(s);
        bb.1.push(m);
        let (s, m) = timed(
            Command::new("reprepro").env("GNUPGHOME", &gnupg).arg("-b").arg(&rr).args(["include", DIST]).arg(&new),
        );
        rp.0.push(s);
        rp.1.push(m);
    }
    let (bt, bm, rt, rm) = (median(bb.0), median(bb.1), median(rp.0), median(rp.1));
    let version = sh(Command::new("reprepro").arg("--version")).trim().to_owned();
    let version = if version.is_empty() { "reprepro".into() } else { version };
    println!("### Include one package into {n} sources / {} binaries, and republish\n", 2 * n);
    println!(
        "`cargo bench --bench publish` on {} cores; `Packages` is {:.1} MB; `Contents-amd64.gz` is {:.1} MB ({} paths, both sides publish it); reprepro holds {rr_count} packages after `update`.",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        packages_size as f64 / 1e6,
        contents_gz as f64 / 1e6,
        6 * n
    );
    println!(
        "Median of 3 rounds, each a new source with one amd64 and one all binary, wall time and peak RSS by `/usr/bin/time`.\n"
    );
    println!("| | wall time | peak RSS |\n|---|---|---|");
    println!("| buildbay `repo include` | {bt:.2} s | {bm:.0} MB |");
    println!("| {version} `include` | {rt:.2} s | {rm:.0} MB |");
    println!("| ratio (reprepro / buildbay) | **{:.1}×** | **{:.1}×** |\n", rt / bt, rm / bm);
    println!("Bulk import of the {n} sources into buildbay (setup, not measured above): {import:.0} s.");
}
