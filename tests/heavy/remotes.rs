//! Remotes (issue 17) with real builds: instance A builds nothing (`--build-slots 0`) and hands
//! every build request to instance B, its remote, which builds it with sbuild on the shared
//! chroot image and sends the result back over FTP. Each upload ends in exactly one final state
//! on A through `kill -9` of B mid-build, `kill -9` of A right after it queued a request, and B
//! being away for a while. The remote runs the QA checks a request asks for. Needs root and Debian's archive (the image, the build dependencies).

use crate::common::upload::*;
use crate::common::*;
use std::time::{Duration, Instant};

const UNSTABLE: &str = "bookworm-test-unstable";
const BUILD_WAIT: Duration = Duration::from_secs(600);

/// A daemon on fixed ports (a restarted one must be where the other side points).
fn serve(inst: &Instance, ports: (u16, u16), slots: &str) -> Server {
    serve_builds(inst, ports, slots, &["--no-default-setup"])
}

fn kill9(mut srv: Server) {
    let pid = nix::unistd::Pid::from_raw(srv.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let _ = srv.child.wait();
}

fn as_admin(url: &str, call: &[&str]) -> String {
    let out = api_as(url, "admin", call);
    assert!(out.status.success(), "{call:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exactly one final event for `source` on `url` (and which), waiting for it.
fn one_final(url: &str, source: &str) -> String {
    let start = Instant::now();
    loop {
        let all = events(url);
        let finals: Vec<&str> = ["INSTALLED", "FAILED", "REJECTED"]
            .into_iter()
            .flat_map(|k| std::iter::repeat_n(k, of(&all, source, k).len()))
            .collect();
        if !finals.is_empty() {
            // Anything that would end it twice would have done so by now.
            std::thread::sleep(Duration::from_secs(3));
            let again = events(url);
            let n: usize = ["INSTALLED", "FAILED", "REJECTED"].iter().map(|k| of(&again, source, k).len()).sum();
            assert_eq!(n, 1, "{source} ended {n} times: {finals:?}");
            return finals[0].to_owned();
        }
        assert!(start.elapsed() < BUILD_WAIT, "{source} did not end within {BUILD_WAIT:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_remote_builds_what_its_packager_delegates() {
    assert!(nix::unistd::geteuid().is_root(), "real builds need root (schroot, sbuild); run the tests as root");
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (Instance::online("ed25519"), Instance::online("ed25519"));
    for i in [&a, &b] {
        ok(i.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    }
    b.ok(&["setup", "--chroots", "bookworm:amd64"]);
    let (pa, pb) = ((free_port(), free_port()), (free_port(), free_port()));
    let mut sa = serve(&a, pa, "0");
    let mut sb = serve(&b, pb, "1");
    as_admin(&sa.url, &["setup", "--update", "all", "--pca", "all", "--remotes", &sb.url]);
    as_admin(&sb.url, &["setup", "--update", "all", "--pca", "all", "--remotes", &sa.url]);
    let out = as_admin(&sa.url, &["setup", "--update", "all", "--pca", "all", "--remotes", &sb.url]);
    assert!(!out.contains("FAILED"), "{out}");
    assert_eq!(api(&sa.url, "status", "")["remotes"], serde_json::json!([sb.url]));

    // 1. An upload to A is built on B and INSTALLED on A; B runs the autopkgtest the upload
    //    asks for (errfail), in a machine of its own, and its verdict gates the install on A.
    let t = Instant::now();
    let tested = tested_source(
        dir.path(),
        "bbremote",
        "1.0~test12+1",
        UNSTABLE,
        &["autopkgtest-mode=errfail"],
        &[("smoke", "", "bbremote | grep -q 'hello from bbremote'")],
    );
    ftp_upload(&sa.ftp, &tested);
    assert_eq!(one_final(&sa.url, "bbremote"), "INSTALLED");
    let logs = walk_named(&b.state().join("var/logs/bbremote"), "bbremote_1.0~test12+1_amd64.buildlog");
    let log = logs.first().map(|p| std::fs::read_to_string(p).expect("log")).unwrap_or_default();
    assert!(log.contains("buildbay: Autopkgtest: pass"), "B's build log:\n{log}");
    println!("upload to A, built on B, INSTALLED on A: {:.1} s", t.elapsed().as_secs_f64());
    let on_b = events(&sb.url);
    assert_eq!(of(&on_b, "bbremote", "BUILT").len(), 1, "B built it once");
    assert!(of(&events(&sa.url), "bbremote", "BUILDING").is_empty(), "A built nothing itself");
    let installed = of(&events(&sa.url), "bbremote", "INSTALLED").pop().expect("INSTALLED");
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    let ls = api(&sa.url, "ls", "source=bbremote");
    assert!(ls.to_string().contains("1.0~test12+1"), "{ls}");
    let markers = walk_named(&b.state().join("spool"), ".upload");
    assert_eq!(markers.len(), 1, "{markers:?}");

    // 2. kill -9 of B mid-build: the build outlives it, the restarted B sends the result.
    ftp_upload(&sa.ftp, &buildable_source(dir.path(), "bbkillb", "1.0~test12+1", UNSTABLE, "sleep 8"));
    let building = wait_event(&sb.url, "bbkillb", "BUILDING", BUILD_WAIT);
    // The build's log where the request's Buildlog-Building points, while it runs.
    let bkey = building["extra"]["bkey"].as_str().expect("bkey");
    let live = format!("{}/mini_buildd/builds-dir/{bkey}/bbkillb_1.0~test12+1_amd64.buildlog", sb.url);
    let got = std::process::Command::new("curl").args(["-sf", "--max-time", "10", &live]).output().expect("curl");
    assert!(got.status.success(), "{live}: {got:?}");
    kill9(sb);
    sb = serve(&b, pb, "1");
    assert_eq!(one_final(&sa.url, "bbkillb"), "INSTALLED");

    // 3. kill -9 of A as soon as it queued the request (before or after the hand-over): the
    //    restarted A hands it over again at most, B drops a duplicate, one final state.
    ftp_upload(&sa.ftp, &buildable_source(dir.path(), "bbkilla", "1.0~test12+1", UNSTABLE, "true"));
    wait_event(&sa.url, "bbkilla", "PACKAGING", BUILD_WAIT);
    kill9(sa);
    sa = serve(&a, pa, "0");
    assert_eq!(one_final(&sa.url, "bbkilla"), "INSTALLED");
    assert!(of(&events(&sb.url), "bbkilla", "BUILT").len() <= 1, "B built it twice");

    // 4. B away: the request waits on A, queued (not rejected), and is built once B is back.
    assert!(sb.stop());
    ftp_upload(&sa.ftp, &buildable_source(dir.path(), "bbaway", "1.0~test12+1", UNSTABLE, "true"));
    wait_event(&sa.url, "bbaway", "PACKAGING", BUILD_WAIT);
    std::thread::sleep(Duration::from_secs(6));
    let all = events(&sa.url);
    assert!(of(&all, "bbaway", "REJECTED").is_empty() && of(&all, "bbaway", "FAILED").is_empty(), "{all:?}");
    let queue = api(&sa.url, "status", "")["build_queue"].clone();
    assert_eq!(queue.as_array().map(Vec::len), Some(1), "{queue}");
    let sb = serve(&b, pb, "1");
    assert_eq!(one_final(&sa.url, "bbaway"), "INSTALLED");
    assert!(sa.stop() && sb.stop());
}
