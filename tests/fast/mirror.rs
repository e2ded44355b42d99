//! `debmirror` (mini-buildd's call, admin): Debian's debmirror mirrors a repository from the
//! daemon over HTTP with the Release signatures checked, and apt installs from the mirror; a
//! destination outside `<state>/debmirror/` is refused, and a non-admin may not call it.

use crate::common::upload::*;
use crate::common::*;
use std::process::Command;

#[test]
fn debmirror_makes_a_mirror_apt_installs_from() {
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    ok(inst.cmd(&["user", "add", "dev", "--role", "staff"]).env("BUILDBAY_PASSWORD", "dev-password"));
    let pkg = make_pkg(inst.dir.path(), "bbmirror", "1.0~test12+1");
    inst.ok(&["repo", "include", "bookworm-test-unstable", pkg.to_str().expect("utf-8")]);
    let (asc, _) = inst.key_files();
    let srv = serve_local(&inst, &[]);

    // Refused: a destination outside debmirror/, and a caller below admin.
    for bad in ["/tmp/mirror-{}", "debmirror/../repositories", "repositories/{}"] {
        let out = api_as(&srv.url, "admin", &["debmirror", "--suites", "unstable", "--destination", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("destination"), "{bad}: {err}");
    }
    let out = api_as(&srv.url, "dev", &["debmirror", "--suites", "unstable"]);
    assert!(!out.status.success(), "staff may not mirror");
    assert!(!inst.state().join("debmirror").exists());

    let out = api_as(
        &srv.url,
        "admin",
        &["debmirror", "--suites", "unstable", "--architectures", "amd64", "--components", "main"],
    );
    assert!(out.status.success(), "debmirror: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let dest = answer["test"]["destination"].as_str().expect("destination").to_owned();
    assert_eq!(dest, inst.state().join("debmirror/test").display().to_string());
    assert_eq!(answer["test"]["dists"], serde_json::json!(["bookworm-test-unstable"]), "{answer}");
    let dists = std::path::Path::new(&dest).join("dists/bookworm-test-unstable");
    // Contents too (mini-buildd's --getcontents): Release lists it, and apt-file fetches it.
    for f in ["InRelease", "Release", "Release.gpg", "main/Contents-amd64.gz"] {
        assert!(dists.join(f).exists(), "{f} not mirrored: {answer}");
    }
    assert!(!std::path::Path::new(&dest).join("dists/bookworm-test-stable").exists(), "only the suite asked for");

    // apt on a clean root, from the mirror alone, verifying with the archive key.
    let apt = AptRoot::new(inst.dir.path(), &format!("file://{dest}"), &["bookworm-test-unstable"], &asc);
    apt.update();
    let out = apt.apt("apt-get", &["-y", "install", "bbmirror"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ok(&mut Command::new(apt.root.join("usr/bin/bbmirror"))).trim(), "hello from bbmirror 1.0~test12+1");
    assert!(srv.stop());
}
