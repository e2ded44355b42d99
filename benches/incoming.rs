//! Issue 4's benchmark: latency from the last byte of an upload to its build requests being
//! queued (the PACKAGING event on the SSE stream), `dput` → PACKAGING against mini-buildd's
//! observed 0.34 s, and the throughput of 100 uploads at once. Every upload is gpg-signed and
//! verified (repository `sec` demands signatures).
//!
//! `cargo bench --bench incoming`

#[path = "../tests/common/mod.rs"]
mod common;

use common::upload::*;
use common::{Instance, Server, median, ok as sh};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DIST: &str = "bookworm-sec-unstable";

/// Upload sets (one directory each, holding the upload's files).
fn sets(dir: &Path, prefix: &str, n: usize, g: &Gpg) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let c = make_source(dir, &format!("{prefix}{i}"), "1.0-1~sec12+1", DIST, Some((g, "up@example.org")));
            let set = dir.join(format!("set-{prefix}{i}"));
            std::fs::create_dir_all(&set).expect("mkdir");
            for f in upload_files(&c) {
                std::fs::copy(&f, set.join(f.file_name().expect("name"))).expect("copy");
            }
            set
        })
        .collect()
}

/// PACKAGING arrivals (source → wall-clock seconds), from a live SSE stream.
fn watch(url: &str) -> (std::process::Child, Arc<Mutex<HashMap<String, f64>>>) {
    let seen: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let s = seen.clone();
    let child = watch_events(url, move |t, v| {
        if v["type"] == "PACKAGING" {
            s.lock().expect("lock").insert(v["source"].as_str().unwrap_or_default().to_owned(), t);
        }
    });
    (child, seen)
}

fn wait_for(seen: &Mutex<HashMap<String, f64>>, names: &[String]) {
    let start = Instant::now();
    while names.iter().any(|n| !seen.lock().expect("lock").contains_key(n)) {
        assert!(start.elapsed() < Duration::from_secs(300), "uploads were not packaged");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let inst = Instance::new("rsa4096");
    inst.ok(&["setup", "--repositories", "sec:Default:bookworm"]);
    let g = register_uploader(&inst, d, "sec");
    eprintln!("making 205 signed uploads");
    let seq = sets(d, "seq", 100, &g);
    let par = sets(d, "par", 100, &g);
    let dputs: Vec<PathBuf> = (0..5)
        .map(|i| make_source(d, &format!("dput{i}"), "1.0-1~sec12+1", DIST, Some((&g, "up@example.org"))))
        .collect();

    let srv =
        Server::start(inst.cmd(&["serve", "--http", "127.0.0.1:0", "--ftp", "127.0.0.1:0", "--build-slots", "0"]));
    let idle_rss = rss_mb(srv.child.id());
    let (mut sse, seen) = watch(&srv.url);
    std::thread::sleep(Duration::from_millis(300));

    // 1. Last byte → queued, one upload after another on one connection.
    let timed = ftp("timed", &srv.ftp, &seq);
    let names: Vec<String> = (0..100).map(|i| format!("seq{i}")).collect();
    wait_for(&seen, &names);
    let lat: Vec<f64> = timed
        .as_array()
        .expect("timed")
        .iter()
        .zip(&names)
        .map(|(t, n)| {
            assert!(t["ok"].as_bool().unwrap_or(false), "{t}");
            (seen.lock().expect("lock")[n] - t["end"].as_f64().expect("end")) * 1000.0
        })
        .collect();

    // 2. dput → PACKAGING, as a user sees it.
    let conf = d.join("dput.cf");
    std::fs::write(&conf, api(&srv.url, "dput_conf", "").as_str().expect("string")).expect("write");
    let (mut dput_s, mut dput_exit) = (Vec::new(), Vec::new());
    for (i, c) in dputs.iter().enumerate() {
        let t0 = now();
        sh(Command::new("dput")
            .arg("-c")
            .arg(&conf)
            .arg("mini-buildd-ci")
            .arg(c)
            .env("GNUPGHOME", &g.home)
            .env("USER", "bench"));
        dput_exit.push(now() - t0);
        let n = format!("dput{i}");
        wait_for(&seen, std::slice::from_ref(&n));
        dput_s.push(seen.lock().expect("lock")[&n] - t0);
    }

    // 3. 100 uploads at once, one connection each.
    let t0 = now();
    ftp("parallel", &srv.ftp, &par);
    let pnames: Vec<String> = (0..100).map(|i| format!("par{i}")).collect();
    wait_for(&seen, &pnames);
    let last = pnames.iter().map(|n| seen.lock().expect("lock")[n]).fold(0.0, f64::max);
    let total = last - t0;
    let busy_rss = rss_mb(srv.child.id());
    let _ = sse.kill();
    drop(srv);

    println!("### Upload → build requests queued\n");
    println!(
        "`cargo bench --bench incoming` on {} cores, loopback: uploads signed by gpg (Ed25519) and verified by sequoia; each is checked, then gets a clear-signed build request (RSA-4096 instance key) with its tar, queued in redb. Latency is measured by the client: from the moment the last byte of the `.changes` (the last file) left it to the PACKAGING event arriving on the SSE stream.\n",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("| measurement | result |\n|---|---|");
    println!(
        "| last byte → queued, 100 uploads one after another | **p50 {:.1} ms**, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!(
        "| `dput` start → PACKAGING (median of 5) | **{:.3} s** (mini-buildd 2.2.8 here: 0.34 s, **{:.2}×**); dput alone runs {:.3} s, checking signatures locally |",
        median(dput_s.clone()),
        0.34 / median(dput_s),
        median(dput_exit)
    );
    println!(
        "| 100 uploads at once (100 FTP connections) → all queued | {:.2} s, **{:.0} uploads/s** |",
        total,
        100.0 / total
    );
    println!("| daemon RSS idle / after 205 uploads | {idle_rss:.1} MB / {busy_rss:.1} MB |\n");
}
