//! Remotes with the real mini-buildd 2.2.8 (Debian's package from bookworm-backports), installed
//! in a booted bookworm systemd container that shares the host's network (its HTTP on 8066, its
//! FTP on 8067, its host name set to 127.0.0.1). A buildbay instance and mini-buildd shake hands
//! both ways, then build for each other:
//! - mini-buildd, which has no amd64 chroot, hands its upload's amd64 build to buildbay and
//!   installs buildbay's result;
//! - buildbay, which has no i386 chroot, builds its upload's amd64 itself and hands the i386
//!   build to mini-buildd, whose result it installs.
//!
//! The container tree, with mini-buildd set up and its i386 chroot, is kept in
//! /var/tmp/buildbay-tests/mini-buildd between runs (the first run takes minutes more). Needs
//! root and Debian's archive.

use crate::common::container::{self, Booted};
use crate::common::upload::*;
use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TREE: &str = "/var/tmp/buildbay-tests/mini-buildd";
const MBD: &str = "http://127.0.0.1:8066";
const MBD_PASSWORD: &str = "mbd-admin-password";
const UNSTABLE: &str = "bookworm-test-unstable";
const WAIT: Duration = Duration::from_secs(900);

/// A call to mini-buildd's API as its admin, through buildbay's client (which speaks its login).
fn mbd_api(call: &[&str]) -> String {
    let out = run(Command::new(bin())
        .args(["api", "--url", MBD, "--user", "admin", "--confirm"])
        .args(call)
        .env("BUILDBAY_PASSWORD", MBD_PASSWORD));
    assert!(out.status.success(), "mini-buildd {call:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// mini-buildd's setup adds Debian's security and backports-sloppy releases to a distribution's
/// extra sources; deb.debian.org serves neither, so they never activate, and neither would the
/// distribution. Drop them from its configuration (the test's setup, not what is tested).
fn drop_unreachable_extra_sources(c: &Booted) {
    c.ok("python3 -c \"import sqlite3; c = sqlite3.connect('/var/lib/mini-buildd/config.sqlite'); \
          c.execute('delete from mini_buildd_distribution_extra_sources'); c.commit()\"");
}

fn wait_http(url: &str) {
    let start = Instant::now();
    while !run(Command::new("curl").args(["-sf", "--max-time", "5", &format!("{url}/mini_buildd/api/status/")]))
        .status
        .success()
    {
        assert!(start.elapsed() < Duration::from_secs(120), "{url} does not answer");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Wait until mini-buildd's `ls` lists `version` of `source` in `dist`.
fn wait_mbd_installed(source: &str, version: &str) {
    let start = Instant::now();
    loop {
        let ls = api(MBD, "ls", &format!("source={source}"));
        if ls["test"][UNSTABLE]["version"] == version {
            return;
        }
        assert!(start.elapsed() < WAIT, "mini-buildd did not install {source} {version}: {ls}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn mini_buildd_and_buildbay_build_for_each_other() {
    assert!(nix::unistd::geteuid().is_root(), "containers and builds need root; run the tests as root");
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = container::tree(
        Path::new(TREE),
        &["debootstrap", "--variant=minbase", "--include=dbus,systemd,systemd-sysv,ca-certificates", "bookworm"],
    );
    std::fs::write(
        tree.join("etc/apt/sources.list.d/backports.sources"),
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .expect("write");
    let c = Booted::boot(&tree, &[]);
    if !tree.join("usr/sbin/mini-buildd").exists() {
        c.ok(&format!(
            "echo 'mini-buildd mini-buildd/admin_password password {MBD_PASSWORD}' | debconf-set-selections && \
             echo 'mini-buildd mini-buildd/options string --hostname=127.0.0.1' | debconf-set-selections && \
             apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports mini-buildd"
        ));
    }
    wait_http(MBD);
    let version = api(MBD, "status", "")["version"].as_str().unwrap_or_default().to_owned();
    assert!(version.starts_with("2.2.8"), "{version}");
    // Remotes of earlier runs (other ports) are gone.
    c.ok("python3 -c \"import sqlite3; c = sqlite3.connect('/var/lib/mini-buildd/config.sqlite'); \
          c.execute('delete from mini_buildd_remote'); c.commit()\"");
    // mini-buildd's own setup, once: Debian bookworm, repository test, an i386 chroot only.
    let mbd_setup = |extra: &[&str]| {
        let mut call = vec![
            "setup",
            "--update",
            "all",
            "--pca",
            "all",
            "--identity",
            "mbd",
            "--from-origins",
            "Debian",
            "--archives",
            "http://deb.debian.org/debian/",
            "--sources",
            "bookworm",
            "--distributions",
            "bookworm:amd64",
            "--repositories",
            "test:Default:bookworm",
        ];
        call.extend_from_slice(extra);
        let out = mbd_api(&call);
        drop_unreachable_extra_sources(&c);
        out
    };
    if !api(MBD, "status", "")["chroots"].as_array().is_some_and(|c| c.iter().any(|c| c == "bookworm:i386")) {
        let t = Instant::now();
        mbd_setup(&["--chroots", "bookworm:i386"]);
        println!("mini-buildd's i386 chroot: {:.0} s", t.elapsed().as_secs_f64());
    }
    mbd_api(&["start"]);
    let status = api(MBD, "status", "");
    assert_eq!(status["chroots"], serde_json::json!(["bookworm:i386"]), "{status}");

    // buildbay: bookworm amd64 and i386, an amd64 chroot only.
    let b = Instance::online("ed25519");
    ok(b.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    b.ok(&["setup", "--distributions", "bookworm:amd64+i386"]);
    b.ok(&["setup", "--chroots", "bookworm:amd64"]);
    let (http, ftp) = (free_port(), free_port());
    let sb = serve_builds(&b, (http, ftp), "1", &["--no-default-setup"]);

    // The handshake both ways, with mini-buildd's own spelling of a remote on its side.
    let out = api_as(&sb.url, "admin", &["setup", "--update", "all", "--pca", "all", "--remotes", MBD]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = mbd_setup(&["--remotes", &format!("tcp:host=127.0.0.1:port={http}")]);
    assert!(out.contains("tcp:host=127.0.0.1"), "{out}");
    let out = api_as(&sb.url, "admin", &["setup", "--update", "all", "--pca", "all", "--remotes", MBD]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains("FAILED"), "{text}");
    assert_eq!(api(&sb.url, "status", "")["remotes"], serde_json::json!([MBD]));
    assert_eq!(api(MBD, "status", "")["remotes"], serde_json::json!([sb.url]));

    // 1. mini-buildd hands its amd64 build to buildbay, and installs buildbay's result.
    // The container (and what its mini-buildd installed) is kept between runs: each run's
    // versions must be above every earlier run's, also across midnight.
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let v1 = format!("1.{stamp}~test12+1");
    let up = buildable_source_with(dir.path(), "bbmbd", &v1, UNSTABLE, "true", &["lintian-mode=ignore"]);
    let cf = dir.path().join("dput.cf");
    std::fs::write(
        &cf,
        "[mbd]\nmethod = ftp\nfqdn = 127.0.0.1:8067\nlogin = anonymous\nincoming = /incoming\nallow_unsigned_uploads = 1\n",
    )
    .expect("write");
    let t = Instant::now();
    ok(Command::new("dput").arg("-c").arg(&cf).arg("mbd").arg(&up));
    wait_mbd_installed("bbmbd", &v1);
    println!("mini-buildd upload, built on buildbay, installed by mini-buildd: {:.1} s", t.elapsed().as_secs_f64());
    let built = of(&events(&sb.url), "bbmbd", "BUILT");
    assert!(built.iter().any(|e| e["version"] == v1.as_str() && e["extra"]["status"] == "successful"), "{built:?}");

    // 2. buildbay builds amd64 itself and hands i386 to mini-buildd, then installs both.
    let v2 = format!("2.{stamp}~test12+1");
    let up = buildable_source_for(dir.path(), "bbany", &v2, UNSTABLE, "true", &["lintian-mode=ignore"], "any");
    let t = Instant::now();
    ftp_upload(&sb.ftp, &up);
    let installed = wait_event(&sb.url, "bbany", "INSTALLED", WAIT);
    println!("buildbay upload, i386 built on mini-buildd, installed by buildbay: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(installed["extra"]["buildresults"]["i386"], "successful", "{installed}");
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    let building: Vec<String> = of(&events(&sb.url), "bbany", "BUILDING")
        .iter()
        .map(|e| e["extra"]["architecture"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(building, vec!["amd64".to_owned()], "buildbay built only amd64 itself");
    let ls = api(&sb.url, "ls", "source=bbany");
    assert!(ls.to_string().contains(&v2), "{ls}");
    assert!(sb.stop());

    // 3. buildbay takes mini-buildd over (`buildbay import`), and mini-buildd's apt client and
    // API client go on unchanged.
    takeover(&c, dir.path(), &v1, &stamp);
}

/// The versions `mini-buildd-api ls` lists, per repository and distribution, rollbacks included.
fn ls_versions(endpoint: &str, source: &str) -> Vec<(String, String)> {
    let out = run(Command::new("mini-buildd-api").args(["--json", "ls", endpoint, source]));
    assert!(out.status.success(), "mini-buildd-api ls: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls is JSON");
    let mut found = Vec::new();
    for (repo, dists) in v.as_object().into_iter().flatten() {
        for (dist, e) in dists.as_object().into_iter().flatten() {
            found.push((format!("{repo}/{dist}"), e["version"].as_str().unwrap_or_default().to_owned()));
            for (rb, r) in e["rollbacks"].as_object().into_iter().flatten() {
                found.push((format!("{repo}/{rb}"), r["version"].as_str().unwrap_or_default().to_owned()));
            }
        }
    }
    found.sort();
    found
}

/// The instance's apt client (the container), with the lines `sources_list` gives it, the
/// snapshot's too, and the key from its keyring: update, then install `version`.
fn apt_client(c: &Booted, snapshot: &str, version: &str) {
    c.ok(&format!(
        "apt-get update -q -o Dir::Etc::SourceList=/etc/apt/mbd-client.list -o Dir::Etc::SourceParts=/dev/null && \
         apt-cache -o Dir::Etc::SourceList=/etc/apt/mbd-client.list -o Dir::Etc::SourceParts=/dev/null policy bbmbd | grep -F {UNSTABLE}/snapshots/{snapshot} && \
         (dpkg -r bbmbd || true) && \
         apt-get install -y -q -o Dir::Etc::SourceList=/etc/apt/mbd-client.list -o Dir::Etc::SourceParts=/dev/null bbmbd={version} && \
         dpkg-query -W -f '${{Version}}' bbmbd | grep -Fx '{version}'"
    ));
}

fn takeover(c: &Booted, work: &Path, v1: &str, stamp: &str) {
    // mini-buildd: a snapshot, its client's apt lines, what its API lists.
    let snapshot = format!("s{stamp}");
    mbd_api(&["snapshot_create", UNSTABLE, &snapshot]);
    let lines = mbd_api(&["sources_list", "--codenames", "bookworm", "--suites", "unstable", "--rollbacks", "2"]);
    // `deb [options] URL dist components`: the same lines, the client's key as Signed-By.
    let mut client: Vec<String> = lines
        .lines()
        .filter_map(|l| l.strip_prefix("deb "))
        .map(|l| if l.starts_with('[') { l.split_once("] ").map_or(l, |(_, r)| r) } else { l })
        .map(|l| format!("deb [signed-by=/etc/apt/keyrings/mbd.asc] {l}"))
        .collect();
    let unstable = client
        .iter()
        .find(|l| l.contains(&format!(" {UNSTABLE} ")))
        .unwrap_or_else(|| panic!("no line for {UNSTABLE}: {lines}"))
        .clone();
    assert!(unstable.contains(&format!(" {MBD}/repositories/test")), "{lines}");
    assert!(client.iter().any(|l| l.contains(&format!(" {UNSTABLE}-rollback1 "))), "{lines}");
    client.push(unstable.replacen(&format!(" {UNSTABLE} "), &format!(" {UNSTABLE}/snapshots/{snapshot} "), 1));
    c.ok("mkdir -p /etc/apt/keyrings && gpg --homedir /var/lib/mini-buildd/.gnupg --export --armor > /etc/apt/keyrings/mbd.asc");
    std::fs::write(Path::new(TREE).join("etc/apt/mbd-client.list"), client.join("\n") + "\n").expect("write");
    apt_client(c, &snapshot, v1);
    let before = ls_versions(MBD, "bbmbd");
    assert!(before.iter().any(|(d, v)| d.ends_with("-rollback0") && !v.is_empty()), "{before:?}");

    // The takeover: mini-buildd stops; buildbay imports its home and serves on its port.
    c.ok("systemctl stop mini-buildd");
    let state = work.join("imported");
    let t = Instant::now();
    let out = ok(Command::new(bin())
        .arg("--state")
        .arg(&state)
        .args(["--json", "import"])
        .arg(Path::new(TREE).join("var/lib/mini-buildd")));
    println!("buildbay import of mini-buildd: {:.1} s", t.elapsed().as_secs_f64());
    let report: serde_json::Value = serde_json::from_str(&out).expect("the report is JSON");
    let text = report.to_string();
    for want in ["daemon 1", "repository test", "user admin (admin)", &format!("snapshot {UNSTABLE}/{snapshot}")] {
        assert!(text.contains(want), "{want} not carried over: {report:#}");
    }
    assert!(report["left"].to_string().contains("chroot bookworm:i386"), "{report:#}");
    let mut serve = Command::new(bin());
    serve.arg("--state").arg(&state).args([
        "serve",
        "--http",
        "127.0.0.1:8066",
        "--ftp",
        "127.0.0.1:8067",
        "--build-slots",
        "0",
    ]);
    let served = Server::start(serve);
    assert_eq!(served.url, MBD);
    // The client, unchanged: apt verifies the same key's signatures, and installs.
    apt_client(c, &snapshot, v1);
    assert_eq!(ls_versions(MBD, "bbmbd"), before, "mini-buildd-api ls lists the same versions");
    // mini-buildd's admin logs in with the same password.
    mbd_api(&["snapshot_create", UNSTABLE, &format!("after{stamp}")]);
    assert!(served.stop());
    c.ok("systemctl start mini-buildd");
}
