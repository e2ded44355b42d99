//! `port_ext`: an external `.dsc` fetched over HTTP, its signature and files checked before
//! anything is made; and `port`'s refusals. (A port that builds is in the heavy tier.)

use crate::common::upload::*;
use crate::common::*;

#[test]
fn port_ext_verifies_the_dsc_and_its_files_before_it_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    for (name, role) in [("admin", "admin"), ("staff", "staff")] {
        ok(inst.cmd(&["user", "add", name, "--role", role]).env("BUILDBAY_PASSWORD", format!("{name}-password")));
    }
    let srv = Server::start(inst.cmd(&["serve", "--http", "127.0.0.1:0", "--ftp", "127.0.0.1:0"]));
    // A source signed by a developer's key, served as a web page would.
    let gpg = Gpg::new(dir.path());
    gpg.generate("Ext Dev <ext@example.org>", "1y", None);
    let changes = make_source(dir.path(), "extpkg", "1.0-1", "unstable", Some((&gpg, "ext@example.org")));
    let work = changes.parent().expect("work").to_owned();
    let (base, mut server) = http_server(&work);
    let url = format!("{base}/extpkg_1.0-1.dsc");
    let port = |args: &[&str]| {
        let mut call = vec!["port_ext"];
        call.extend_from_slice(args);
        api_as(&srv.url, "staff", &call)
    };
    let refused = |args: &[&str], why: &str| {
        let out = port(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains(why), "{args:?}: {why:?} not in: {err}");
    };
    let unstable = "bookworm-test-unstable";

    // The signer is no AptKey yet: refused, with what to do.
    refused(&[&url, unstable], "signature does not verify");
    // Not a .dsc, nothing there, a port nobody listens on, a non-http URL, a rollback target.
    refused(&[&format!("{base}/extpkg_1.0-1.tar.gz"), unstable], "not an http or https URL of a .dsc");
    refused(&[&format!("{base}/nothere_1.0.dsc"), unstable], "answered 404");
    refused(&[&format!("http://127.0.0.1:{}/x.dsc", free_port()), unstable], "cannot fetch");
    refused(&["file:///etc/passwd.dsc", unstable], "not an http or https URL");
    refused(&[&url, "bookworm-test-unstable-rollback0", "--allow-unauthenticated"], "not uploadable");

    // The signer as an AptKey.
    let key = serde_json::json!({"key": gpg.export("ext@example.org")});
    let out = api_as(&srv.url, "admin", &["config_set", "aptkey", &key.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A broken signature: one byte of the signed text changed.
    let tampered = dir.path().join("tampered");
    std::fs::create_dir_all(&tampered).expect("mkdir");
    for e in std::fs::read_dir(&work).expect("ls").flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), tampered.join(e.file_name())).expect("copy");
        }
    }
    let dsc_text = std::fs::read_to_string(work.join("extpkg_1.0-1.dsc")).expect("dsc");
    std::fs::write(tampered.join("extpkg_1.0-1.dsc"), dsc_text.replacen("Maintainer: ", "Maintainer:  ", 1))
        .expect("write");
    // A file that does not match the checksums the .dsc signed.
    let tarball = std::fs::read_dir(&tampered)
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(".tar."))
        .expect("a tarball");
    let (tbase, mut tserver) = http_server(&tampered);
    refused(&[&format!("{tbase}/extpkg_1.0-1.dsc"), unstable], "signature does not verify");
    std::fs::write(tampered.join("extpkg_1.0-1.dsc"), &dsc_text).expect("write");
    std::fs::write(&tarball, b"not the signed tarball").expect("write");
    refused(&[&format!("{tbase}/extpkg_1.0-1.dsc"), unstable], "does not match the .dsc's size and SHA256");
    let _ = tserver.kill();
    let _ = tserver.wait();
    // Nothing of the refused ports reached incoming.
    assert!(events(&srv.url).iter().all(|e| e["source"] != "extpkg"), "{:?}", events(&srv.url));

    // Verified: ported with the target's default appendix, through incoming as an upload.
    let out = port(&[&url, unstable]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer[0]["version"], "1.0-1~test12+1", "{answer}");
    assert_eq!(answer[0]["distribution"], unstable, "{answer}");
    let start = std::time::Instant::now();
    let seen = loop {
        let all = events(&srv.url);
        if let Some(e) = all.iter().find(|e| e["source"] == "extpkg") {
            break e.clone();
        }
        assert!(start.elapsed().as_secs() < 60, "no event of the port: {all:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_ne!(seen["type"], "REJECTED", "the port passes incoming's checks: {seen}");
    assert_eq!(seen["version"], "1.0-1~test12+1", "{seen}");
    let _ = server.kill();
    let _ = server.wait();
}
