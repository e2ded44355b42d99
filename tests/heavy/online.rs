//! What needs Debian's archive itself: setup's sources checked against deb.debian.org with the
//! keys of the host's debian-archive-keyring, backports as a pinned extra source, a release its
//! keys did not sign.

use crate::common::*;
use std::process::Command;

fn serve(inst: &Instance) -> Server {
    Server::start(inst.cmd(&["serve", "--http", "127.0.0.1:0"]))
}

/// Sources are checked for real: the archive's InRelease is fetched from Debian's archive,
/// verified with sequoia against the keys of the host's debian-archive-keyring, and its
/// components, architectures and codeversion are read from it. A source that no archive
/// serves, or whose release its keys did not sign, fails with the reason; a distribution's
/// extra source reaches its build requests' apt sources, pinned.
#[test]
fn sources_are_checked_against_archives_and_keys() {
    let inst = Instance::online("ed25519");
    let own = inst.ok(&["pub-key"]);
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let s = serve(&inst);
    let call = |args: &[&str]| -> serde_json::Value {
        let out = upload::api_as(&s.url, "admin", args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON answer")
    };
    let find = |kind: &str, id: &str| {
        call(&["config_ls"]).as_array().into_iter().flatten().find(|o| o["kind"] == kind && o["id"] == id).cloned()
    };

    // Setup's base source, checked against deb.debian.org with the keyring's keys.
    let bookworm = find("source", "Debian:bookworm").expect("source");
    assert_eq!(bookworm["state"], "ACTIVE", "{bookworm}");
    let f = &bookworm["fields"];
    assert_eq!(f["archives"], serde_json::json!(["http://deb.debian.org/debian/"]), "{f}");
    assert_eq!(f["codeversion"], "12", "read from the release's Version: {f}");
    assert!(f["description"].as_str().unwrap().contains("Debian 12"), "{f}");
    for c in ["main", "contrib", "non-free-firmware"] {
        assert!(f["components"].as_array().unwrap().iter().any(|x| x == c), "{c}: {f}");
    }
    assert!(f["architectures"].as_array().unwrap().iter().any(|a| a == "arm64"), "{f}");
    let keyring = ok(Command::new("gpg").args([
        "--no-default-keyring",
        "--with-colons",
        "--show-keys",
        "/usr/share/keyrings/debian-archive-keyring.gpg",
    ]));
    let fprs: Vec<&str> =
        keyring.lines().filter(|l| l.starts_with("fpr:")).filter_map(|l| l.split(':').nth(9)).collect();
    for k in f["apt_keys"].as_array().unwrap() {
        assert!(fprs.contains(&k.as_str().unwrap()), "{k} is a key of debian-archive-keyring");
        assert_eq!(find("aptkey", k.as_str().unwrap()).expect("aptkey")["state"], "ACTIVE");
    }
    let archive = find("archive", "http://deb.debian.org/debian/").expect("archive");
    assert!(archive["fields"]["ping_ms"].as_u64().is_some(), "{archive}");

    // Backports, through setup; then as a pinned extra source of bookworm.
    let out = call(&[
        "setup",
        "--update",
        "all",
        "--pca",
        "all",
        "--sources",
        "Debian Backports:bookworm-backports,Debian:nosuchrelease",
    ]);
    let item = |id: &str| {
        out["instances"].as_array().unwrap().iter().rev().find(|i| i["kind"] == "source" && i["id"] == id).cloned()
    };
    assert_eq!(item("Debian Backports:bookworm-backports").unwrap()["status"], "ACTIVE", "{out}");
    let bad = item("Debian:nosuchrelease").unwrap();
    assert_eq!(bad["status"], "FAILED", "{out}");
    assert!(bad["message"].as_str().unwrap().contains("dists/nosuchrelease/InRelease answered 404"), "{bad}");

    // A source whose keys did not sign the release: this instance's own key.
    let key = call(&["config_set", "aptkey", &serde_json::json!({ "key": own }).to_string()]);
    let fpr = key["id"].as_str().expect("aptkey id").to_owned();
    call(&["config_action", "aptkey", &fpr, "pca"]);
    let mut src = serde_json::json!({"origin": "Debian", "codename": "trixie", "codeversion": "", "codeversion_override": null,
        "components": [], "architectures": [], "apt_keys": [fpr], "archives": ["http://evil.example/"]});
    call(&["config_set", "source", &src.to_string()]);
    let saved = find("source", "Debian:trixie").unwrap();
    assert_eq!(saved["fields"]["archives"], serde_json::json!([]), "only a check sets the archives: {saved}");
    src["origin"] = serde_json::json!("Debian\nPin-Priority: 1001");
    let out = upload::api_as(&s.url, "admin", &["config_set", "source", &src.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no control characters"), "{err}");
    call(&["config_action", "source", "Debian:trixie", "pca"]);
    let trixie = find("source", "Debian:trixie").unwrap();
    assert_eq!(trixie["active"], false, "{trixie}");
    assert!(trixie["message"].as_str().unwrap().contains("does not verify against the source's keys"), "{trixie}");

    call(&["config_set", "prioritysource", r#"{"source": "Debian Backports:bookworm-backports", "priority": 100}"#]);
    call(&["config_action", "prioritysource", "Debian Backports:bookworm-backports:100", "pca"]);
    let mut dist = find("distribution", "bookworm").unwrap()["fields"].clone();
    dist["extra_sources"] = serde_json::json!(["Debian Backports:bookworm-backports:100"]);
    call(&["config_set", "distribution", &dist.to_string()]);
    call(&["config_action", "distribution", "bookworm", "pca"]);
    assert_eq!(find("distribution", "bookworm").unwrap()["state"], "ACTIVE");

    let dir = tempfile::tempdir().unwrap();
    let changes = upload::make_source(dir.path(), "withbpo", "1.0~test12+1", "bookworm-test-unstable", None);
    upload::ftp_upload(&s.ftp, &changes);
    upload::wait_event(&s.url, "withbpo", "PACKAGING", std::time::Duration::from_secs(60));
    let found = ok(Command::new("find")
        .arg(inst.state().join("spool"))
        .args(["-name", "withbpo_*_mini-buildd-buildrequest_amd64.changes.tar"]));
    let tar = found.lines().next().expect("a build request").to_owned();
    let sources = ok(Command::new("tar").arg("-xOf").arg(&tar).arg(".config/apt_sources.list"));
    assert!(sources.contains("deb http://deb.debian.org/debian bookworm-backports main"), "{sources}");
    // The base distribution too: mini-buildd's builder replaces its chroot's sources with these.
    assert!(sources.lines().any(|l| l == "deb http://deb.debian.org/debian bookworm main"), "{sources}");
    let prefs = ok(Command::new("tar").arg("-xOf").arg(&tar).arg(".config/apt_preferences"));
    assert!(prefs.contains("Pin: release o=Debian Backports,n=bookworm-backports\nPin-Priority: 100"), "{prefs}");
    // The build trusts the extra source's keys too: one armored keyring, this instance's key
    // first, then every active key of the backports source.
    let keys = ok(Command::new("tar").arg("-xOf").arg(&tar).arg(".config/apt_keys"));
    assert_eq!(keys.matches("BEGIN PGP PUBLIC KEY BLOCK").count(), 1, "{keys}");
    let key_file = dir.path().join("apt_keys.asc");
    std::fs::write(&key_file, &keys).unwrap();
    let listed = ok(Command::new("gpg").args(["--no-default-keyring", "--with-colons", "--show-keys"]).arg(&key_file));
    let in_request: Vec<&str> =
        listed.lines().filter(|l| l.starts_with("fpr:")).filter_map(|l| l.split(':').nth(9)).collect();
    let bpo = find("source", "Debian Backports:bookworm-backports").unwrap();
    for k in bpo["fields"]["apt_keys"].as_array().unwrap() {
        assert!(in_request.contains(&k.as_str().unwrap()), "{k} missing from the request's apt_keys: {in_request:?}");
    }
    let own_file = dir.path().join("own.asc");
    std::fs::write(&own_file, upload::api(&s.url, "pub_key", "").as_str().expect("the key")).unwrap();
    let own = ok(Command::new("gpg").args(["--no-default-keyring", "--with-colons", "--show-keys"]).arg(&own_file));
    let own = own.lines().find(|l| l.starts_with("fpr:")).and_then(|l| l.split(':').nth(9)).expect("fpr").to_owned();
    assert_eq!(in_request.first(), Some(&own.as_str()), "this instance's key comes first: {in_request:?}");
}
