//! The repository engine, judged by real apt and gpgv.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn apt_accepts_the_repository_through_include_migrate_remove() {
    // The default (RSA-4096) archive key: apt and gpgv of bookworm must accept it.
    let inst = Instance::new("rsa4096");
    let pkg = make_pkg(inst.dir.path(), "bbhello", "1.0~test12+1");
    inst.ok(&["repo", "include", "bookworm-test-unstable", pkg.to_str().unwrap()]);
    let (asc, gpg) = inst.key_files();
    verify_published(&inst.repo(), &gpg);
    let release = std::fs::read_to_string(inst.repo().join("dists/bookworm-test-unstable/Release")).unwrap();
    for field in [
        "MD5Sum:",
        "SHA1:",
        "SHA256:",
        "SHA512:",
        "Acquire-By-Hash: yes",
        "NotAutomatic: yes",
        "ButAutomaticUpgrades: yes",
        "Origin:",
        "Label:",
        "Suite:",
        "Codename:",
        "Architectures: amd64",
        "Components: main",
    ] {
        assert!(release.contains(field), "Release lacks {field}:\n{release}");
    }

    let uri = format!("file://{}", inst.repo().display());
    let apt = AptRoot::new(inst.dir.path(), &uri, &["bookworm-test-unstable"], &asc);
    apt.update();
    let out = apt.apt("apt-get", &["-y", "install", "bbhello"]);
    assert!(out.status.success(), "apt-get install: {}", String::from_utf8_lossy(&out.stderr));
    let hello = ok(&mut std::process::Command::new(apt.root.join("usr/bin/bbhello")));
    assert_eq!(hello.trim(), "hello from bbhello 1.0~test12+1");

    // migrate: testing serves it.
    inst.ok(&["repo", "migrate", "bbhello", "bookworm-test-unstable"]);
    apt.set_sources(&uri, &["bookworm-test-testing"], &asc);
    apt.update();
    assert!(apt.madison("bbhello").contains("bookworm-test-testing/main"), "{}", apt.madison("bbhello"));

    // remove from unstable: gone there, served by unstable-rollback0.
    inst.ok(&["repo", "remove", "bbhello", "bookworm-test-unstable"]);
    apt.set_sources(&uri, &["bookworm-test-unstable", "bookworm-test-unstable-rollback0"], &asc);
    apt.update();
    let m = apt.madison("bbhello");
    assert!(m.contains("bookworm-test-unstable-rollback0/main"), "{m}");
    assert!(!m.contains("bookworm-test-unstable/main"), "{m}");
    verify_published(&inst.repo(), &gpg);

    // snapshot: served at dists/<dist>/snapshots/<name>/ and apt accepts it.
    inst.ok(&["repo", "snapshot", "create", "bookworm-test-testing", "s1"]);
    assert_eq!(inst.ok(&["repo", "snapshot", "ls", "bookworm-test-testing"]).trim(), "s1");
    // As reprepro's gensnapshot for mini-buildd: the Suite names the snapshot, the Codename and
    // the pins are the distribution's (a client that saw mini-buildd's would refuse others).
    let release =
        std::fs::read_to_string(inst.repo().join("dists/bookworm-test-testing/snapshots/s1/Release")).expect("Release");
    let dist_release =
        std::fs::read_to_string(inst.repo().join("dists/bookworm-test-testing/Release")).expect("Release");
    assert!(release.contains("\nSuite: bookworm-test-testing/snapshots/s1\n"), "{release}");
    assert!(release.contains("\nCodename: bookworm-test-testing\n"), "{release}");
    for pin in ["NotAutomatic: yes", "ButAutomaticUpgrades: yes"] {
        assert_eq!(release.contains(pin), dist_release.contains(pin), "{pin}: {release}");
    }
    apt.set_sources(&uri, &["bookworm-test-testing", "bookworm-test-testing/snapshots/s1"], &asc);
    apt.update();
    assert!(apt.madison("bbhello").contains("bookworm-test-testing/snapshots/s1"), "{}", apt.madison("bbhello"));
    // Removing from testing keeps the pool file alive for the snapshot.
    inst.ok(&["repo", "remove", "bbhello", "bookworm-test-testing", "--without-rollback"]);
    inst.ok(&["repo", "remove", "bbhello", "bookworm-test-unstable-rollback0"]);
    assert!(inst.repo().join("pool/main/b/bbhello/bbhello_1.0~test12+1_all.deb").exists());
    inst.ok(&["repo", "snapshot", "delete", "bookworm-test-testing", "s1"]);
    assert!(
        !inst.repo().join("pool/main/b/bbhello/bbhello_1.0~test12+1_all.deb").exists(),
        "unreferenced pool files are removed"
    );
    inst.ok(&["repo", "check", "test"]);
}

#[test]
fn rollbacks_shift_and_restore() {
    let inst = Instance::new("ed25519");
    for v in 1..=4 {
        let pkg = make_pkg(inst.dir.path(), "bbroll", &format!("1.{v}~test12+1"));
        inst.ok(&["repo", "include", "bookworm-test-unstable", pkg.to_str().unwrap()]);
    }
    let ls = inst.ok(&["repo", "ls", "bbroll"]);
    let has = |v: &str, d: &str| ls.lines().any(|l| l.contains(v) && l.split_whitespace().nth(2) == Some(d));
    assert!(has("1.4~test12+1", "bookworm-test-unstable"), "{ls}");
    assert!(has("1.3~test12+1", "bookworm-test-unstable-rollback0"), "{ls}");
    assert!(has("1.2~test12+1", "bookworm-test-unstable-rollback1"), "{ls}");
    assert!(has("1.1~test12+1", "bookworm-test-unstable-rollback2"), "{ls}");
    // Removing rollback1 compacts the chain.
    inst.ok(&["repo", "remove", "bbroll", "bookworm-test-unstable-rollback1"]);
    let ls = inst.ok(&["repo", "ls", "bbroll"]);
    assert!(ls.lines().any(|l| l.contains("1.1~test12+1") && l.contains("unstable-rollback1")), "{ls}");
    // Restore needs an empty base distribution.
    let err = inst.fails(&["repo", "migrate", "bbroll", "bookworm-test-unstable-rollback0"]);
    assert!(err.contains("remove it there"), "{err}");
    inst.ok(&["repo", "remove", "bbroll", "bookworm-test-unstable", "--without-rollback"]);
    inst.ok(&["repo", "migrate", "bbroll", "bookworm-test-unstable-rollback0"]);
    assert!(
        inst.ok(&["repo", "ls", "bbroll"])
            .lines()
            .any(|l| l.contains("1.3~test12+1") && l.split_whitespace().nth(2) == Some("bookworm-test-unstable"))
    );
    // --full migrates along the whole chain.
    inst.ok(&["repo", "migrate", "bbroll", "bookworm-test-unstable", "--full"]);
    let ls = inst.ok(&["repo", "ls", "bbroll"]);
    assert!(ls.contains("bookworm-test-stable "), "{ls}");
    let (_, gpg) = inst.key_files();
    verify_published(&inst.repo(), &gpg);
}

/// Bad input gets a clear error and leaves the repository byte-for-byte unchanged.
#[test]
fn bad_input_leaves_the_repository_unchanged() {
    let inst = Instance::new("ed25519");
    let good = make_pkg(inst.dir.path(), "bbgood", "2.0~test12+1");
    inst.ok(&["repo", "include", "bookworm-test-unstable", good.to_str().unwrap()]);
    let before = tree_fingerprint(&inst.repo());
    let include =
        |dist: &str, changes: &std::path::Path| inst.fails(&["repo", "include", dist, changes.to_str().unwrap()]);
    let check = |what: &str, err: String, expect: &str| {
        assert!(err.contains(expect), "{what}: error should mention {expect:?}, got: {err}");
        assert_eq!(tree_fingerprint(&inst.repo()), before, "{what} changed the repository");
    };

    // A corrupt .deb whose checksums in the .changes are right.
    let pkg = make_pkg(inst.dir.path(), "bbcorrupt", "1.0~test12+1");
    let deb = pkg.with_file_name("bbcorrupt_1.0~test12+1_all.deb");
    std::fs::write(&deb, b"!<arch>\ngarbage that is no deb").unwrap();
    let tree = pkg.parent().unwrap().join("bbcorrupt-src");
    let changes = ok(std::process::Command::new("dpkg-genchanges").arg("-sa").current_dir(&tree));
    std::fs::write(&pkg, changes).unwrap();
    check("corrupt deb", include("bookworm-test-unstable", &pkg), "bbcorrupt_1.0~test12+1_all.deb");

    // A checksum mismatch.
    let pkg = make_pkg(inst.dir.path(), "bbtamper", "1.0~test12+1");
    let tar = pkg.with_file_name("bbtamper_1.0~test12+1.tar.xz");
    let mut data = std::fs::read(&tar).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&tar, data).unwrap();
    check("checksum mismatch", include("bookworm-test-unstable", &pkg), "checksum mismatch");

    // Unknown distributions.
    let pkg = make_pkg(inst.dir.path(), "bbdist", "1.0~test12+1");
    check("unknown suite", include("bookworm-test-nosuch", &pkg), "no suite nosuch");
    check("unknown codename", include("trixie-test-unstable", &pkg), "no codename trixie");
    check("unknown repository", include("bookworm-other-unstable", &pkg), "repository other does not exist");
    check("rollback", include("bookworm-test-unstable-rollback0", &pkg), "rollback distribution");
    check("malformed", include("bookworm-test", &pkg), "invalid distribution");

    // Version rules.
    let pkg = make_pkg(inst.dir.path(), "bbrule", "1.0");
    check("missing appendix", include("bookworm-test-unstable", &pkg), "mandatory appendix");
    let pkg = make_pkg(inst.dir.path(), "bbrule", "1.0~test12+0");
    check("experimental appendix in unstable", include("bookworm-test-unstable", &pkg), "~test12+1");
    let pkg = make_pkg(inst.dir.path(), "bbgood", "1.0~test12+1");
    check("lower version", include("bookworm-test-unstable", &pkg), "lower than 2.0~test12+1");
    check("duplicate version", include("bookworm-test-unstable", &good), "already in bookworm-test-unstable");

    // Hostile file names in the .changes.
    let text = std::fs::read_to_string(&good).unwrap();
    for (what, bad) in [
        ("dot-dot", "../../../etc/passwd".to_owned()),
        ("absolute", "/etc/passwd".to_owned()),
        ("NUL", "bad\0name.deb".to_owned()),
        ("newline", "bad\nname.deb".to_owned()),
    ] {
        let hostile = text.replace("bbgood_2.0~test12+1_all.deb", &bad);
        let path = inst.dir.path().join(format!("hostile-{what}.changes"));
        std::fs::write(&path, hostile).unwrap();
        let err = include("bookworm-test-unstable", &path);
        assert!(
            err.contains("invalid file name")
                || err.contains("NUL")
                || err.contains("malformed")
                || err.contains("deb822"),
            "{what}: {err}"
        );
        assert_eq!(tree_fingerprint(&inst.repo()), before, "{what} changed the repository");
    }

    // --force skips the version rules (admin import), and the repository still verifies.
    let pkg = make_pkg(inst.dir.path(), "bbforce", "1.0");
    inst.ok(&["repo", "include", "bookworm-test-unstable", pkg.to_str().unwrap(), "--force"]);
    let (_, gpg) = inst.key_files();
    verify_published(&inst.repo(), &gpg);
}

#[test]
fn offline_command_on_a_held_state_directory_fails_clearly() {
    let inst = Instance::new("ed25519");
    let store = buildbay::store::Store::open(&inst.state()).unwrap();
    let err = inst.fails(&["repo", "ls", "bbhello"]);
    assert!(err.contains("in use by a running buildbay daemon"), "{err}");
    drop(store);
    inst.ok(&["repo", "ls", "bbhello"]);
}

/// `buildbay user …` and `buildbay uploader …` while the daemon runs: through its API, with the
/// local administration credential it writes at each start (0600); a wrong one is refused, and
/// a stopped daemon's is dead.
#[test]
fn users_and_uploaders_are_added_while_the_daemon_runs() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    let srv = serve_local(&inst, &[]);
    let file = inst.state().join("run/local-admin");
    assert_eq!(std::fs::metadata(&file).expect("local-admin").permissions().mode() & 0o777, 0o600);
    let out = ok(inst.cmd(&["user", "add", "alice", "--role", "staff"]).env("BUILDBAY_PASSWORD", "alice-password"));
    assert!(out.contains("through the running daemon"), "{out}");
    // A password that looks like an option is a password.
    ok(inst.cmd(&["user", "add", "dashed"]).env("BUILDBAY_PASSWORD", "--help-me-please"));
    let out =
        inst.cmd(&["user", "add", "local-admin"]).env("BUILDBAY_PASSWORD", "local-admin-pw").output().expect("run");
    assert!(!out.status.success(), "the local administrator's name is reserved");
    // A credential file that names another host is not followed (a password would go there).
    let good = std::fs::read_to_string(&file).expect("read");
    let evil = good.replace("http://127.0.0.1", "http://192.0.2.1");
    std::fs::remove_file(&file).expect("rm");
    std::fs::write(&file, &evil).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = inst.cmd(&["user", "add", "mallory"]).env("BUILDBAY_PASSWORD", "mallory-password").output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a loopback"), "{err}");
    std::fs::write(&file, &good).expect("write");
    assert!(inst.ok(&["user", "ls"]).contains("alice"));
    assert!(upload::api_as(&srv.url, "alice", &["status"]).status.success(), "alice logs in");
    let g = upload::Gpg::new(dir.path());
    g.generate("Up <up@example.org>", "1y", None);
    let key = dir.path().join("up.asc");
    std::fs::write(&key, g.export("up@example.org")).expect("write");
    let out = inst.ok(&["uploader", "add", "alice", "--key", key.to_str().unwrap(), "--repositories", "test"]);
    assert!(out.contains("is active"), "{out}");
    // Hostile: another token is refused; so is the credential of a daemon that stopped.
    let text = std::fs::read_to_string(&file).expect("read");
    let token = serde_json::from_str::<serde_json::Value>(&text).expect("JSON")["token"].as_str().unwrap().to_owned();
    let call = |url: &str, t: &str, call: &str| {
        ok(Command::new("curl").args([
            "-s",
            "-H",
            &format!("Authorization: Bearer {t}"),
            &format!("{url}/mini_buildd/api/{call}/?output=json"),
        ]))
    };
    let uploaders = call(&srv.url, &token, "uploaders");
    assert!(uploaders.contains(&g.fingerprint("up@example.org")), "{uploaders}");
    let who = |url: &str, t: &str| call(url, t, "user_ls");
    assert!(who(&srv.url, &token).contains("alice"), "the credential works");
    assert!(!who(&srv.url, &format!("{token}x")).contains("alice"), "another token is refused");
    assert!(srv.stop());
    let srv = serve_local(&inst, &[]);
    assert!(!who(&srv.url, &token).contains("alice"), "a stopped daemon's credential is dead");
    assert!(srv.stop());
}

#[test]
fn archive_key_is_private_and_setup_is_idempotent() {
    use std::os::unix::fs::PermissionsExt;
    let inst = Instance::new("ed25519");
    let key = inst.state().join("gnupg/archive-key.asc");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&key).unwrap();
    let out = inst.ok(&["setup", "--distributions", "bookworm:amd64", "--repositories", "test:Default:bookworm"]);
    assert!(!out.contains("MISSING") && !out.contains("CHANGED"), "{out}");
    assert_eq!(std::fs::read(&key).unwrap(), before, "setup never regenerates the key");
    assert!(inst.ok(&["pub-key"]).starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
}

#[test]
fn a_distribution_chooses_its_build_backend() {
    let inst = Instance::new("ed25519");
    let out = inst.ok(&["setup", "--distributions", "bookworm:amd64:nspawn+network"]);
    assert!(out.contains("CHANGED"), "switching the backend changes the distribution: {out}");
    let out = inst.ok(&["setup", "--distributions", "bookworm:amd64:nspawn+network"]);
    assert!(!out.contains("CHANGED"), "{out}");
    let out = inst.ok(&["setup", "--distributions", "bookworm:amd64"]);
    assert!(out.contains("CHANGED"), "back to sbuild: {out}");
    let err = inst.fails(&["setup", "--distributions", "bookworm:amd64:chroot"]);
    assert!(err.contains("unknown build backend \"chroot\": use sbuild or nspawn"), "{err}");
    let err = inst.fails(&["setup", "--distributions", "bookworm:amd64:sbuild+network"]);
    assert!(err.contains("+network applies to the nspawn backend only"), "{err}");
}

/// Release `Origin` as an option: `setup --archive-origin mini-buildd` publishes every
/// distribution again as `Mini-Buildd archive <identity> on <host>` (what a mini-buildd
/// instance's clients pin); a custom one through `config_set daemon` takes effect at the
/// daemon's check; an Origin that would forge Release fields is refused.
#[test]
fn the_archive_origin_is_an_option_and_every_release_follows_it() {
    let inst = Instance::new("ed25519");
    let pkg = make_pkg(inst.dir.path(), "bborigin", "1.0~test12+1");
    inst.ok(&["repo", "include", "bookworm-test-unstable", pkg.to_str().expect("utf-8")]);
    let (_, keyring) = inst.key_files();
    let origin_of = |dist: &str| -> String {
        let release = std::fs::read_to_string(inst.repo().join("dists").join(dist).join("Release")).expect("Release");
        release.lines().find_map(|l| l.strip_prefix("Origin: ")).expect("Origin").to_owned()
    };
    assert_eq!(origin_of("bookworm-test-unstable"), "Buildbay archive ci");

    let host = nix::unistd::gethostname().expect("hostname").into_string().expect("utf-8");
    inst.ok(&["setup", "--archive-origin", "mini-buildd"]);
    let mini = format!("Mini-Buildd archive ci on {host}");
    for dist in ["bookworm-test-unstable", "bookworm-test-stable", "bookworm-test-unstable-rollback0"] {
        assert_eq!(origin_of(dist), mini, "{dist}");
    }
    verify_published(&inst.repo(), &keyring);
    let out = inst.cmd(&["setup", "--archive-origin", "x,n=sid"]).output().expect("setup");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--archive-origin"));
    assert_eq!(origin_of("bookworm-test-unstable"), mini, "a refused origin changes nothing");

    // Through the API: a custom Origin, applied at the daemon's check; a forged one refused.
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let srv = serve_local(&inst, &[]);
    let daemon = |origin: &str| {
        serde_json::json!({"identity": "ci", "custom_archive_origin": origin, "key_algo": "Ed25519"}).to_string()
    };
    let out = upload::api_as(&srv.url, "admin", &["config_set", "daemon", &daemon("x\nLabel: forged")]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("custom_archive_origin"));
    let out = upload::api_as(&srv.url, "admin", &["config_set", "daemon", &daemon("Our Archive")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = upload::api_as(&srv.url, "admin", &["config_action", "daemon", "1", "pca"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(origin_of("bookworm-test-unstable"), "Our Archive");
    let out = upload::api_as(
        &srv.url,
        "admin",
        &["setup", "--update", "all", "--pca", "all", "--archive-origin", "buildbay"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(origin_of("bookworm-test-testing"), "Buildbay archive ci");
    assert!(srv.stop());
    verify_published(&inst.repo(), &keyring);
}

/// An arch:any source with a `.deb`, an arch-all `.deb`, a `.udeb` and a `.ddeb` (Ubuntu's
/// debug symbols, debhelper's `Auto-Built-Package`), as a `.changes` from dpkg-genchanges.
fn multi_pkg(dir: &Path) -> PathBuf {
    let work = dir.join("bbmulti");
    let tree = work.join("bbmulti-1.0~test12+1");
    std::fs::create_dir_all(tree.join("debian/source")).expect("mkdir");
    let c = "Maintainer: Test User <test@example.org>";
    std::fs::write(
        tree.join("debian/changelog"),
        "bbmulti (1.0~test12+1) bookworm-test-unstable; urgency=medium\n\n  * Test.\n\n -- Test User <test@example.org>  Mon, 01 Jan 2024 00:00:00 +0000\n",
    )
    .expect("write");
    std::fs::write(
        tree.join("debian/control"),
        format!("Source: bbmulti\nSection: misc\nPriority: optional\n{c}\nStandards-Version: 4.6.2\n\nPackage: bbmulti\nArchitecture: amd64\nDescription: t\n t\n\nPackage: bbmulti-data\nArchitecture: all\nDescription: t\n t\n\nPackage: bbmulti-udeb\nPackage-Type: udeb\nSection: debian-installer\nArchitecture: amd64\nDescription: t\n t\n"),
    )
    .expect("write");
    std::fs::write(tree.join("debian/source/format"), "3.0 (native)\n").expect("write");
    std::fs::write(tree.join("debian/rules"), "#!/usr/bin/make -f\n%:\n\tdh $@\n").expect("write");
    ok(Command::new("dpkg-source").arg("-b").arg(&tree).current_dir(&work));
    let stanza = |pkg: &str, arch: &str, section: &str, extra: &str| {
        format!(
            "Package: {pkg}\nSource: bbmulti\nVersion: 1.0~test12+1\nArchitecture: {arch}\n{c}\nSection: {section}\nPriority: optional\n{extra}Description: t\n t\n"
        )
    };
    deb_from(
        &work,
        &work,
        "bbmulti_1.0~test12+1_amd64.deb",
        &stanza("bbmulti", "amd64", "misc", ""),
        &[("usr/bin/bbmulti", "#!/bin/sh\necho multi\n"), ("etc/bbmulti/shared.conf", "x\n")],
    );
    deb_from(
        &work,
        &work,
        "bbmulti-data_1.0~test12+1_all.deb",
        &stanza("bbmulti-data", "all", "misc", ""),
        &[("usr/share/bbmulti/data", "data\n"), ("etc/bbmulti/shared.conf", "x\n")],
    );
    deb_from(
        &work,
        &work,
        "bbmulti-udeb_1.0~test12+1_amd64.udeb",
        &stanza("bbmulti-udeb", "amd64", "debian-installer", "Package-Type: udeb\n"),
        &[("usr/lib/bbmulti-udeb/only-in-the-installer", "x\n")],
    );
    deb_from(
        &work,
        &work,
        "bbmulti-dbgsym_1.0~test12+1_amd64.ddeb",
        &stanza("bbmulti-dbgsym", "amd64", "debug", "Auto-Built-Package: debug-symbols\nPackage-Type: ddeb\n"),
        &[("usr/lib/debug/.build-id/ab/cdef0123.debug", "x\n")],
    );
    std::fs::write(
        tree.join("debian/files"),
        "bbmulti_1.0~test12+1_amd64.deb misc optional\nbbmulti-data_1.0~test12+1_all.deb misc optional\nbbmulti-udeb_1.0~test12+1_amd64.udeb debian-installer optional\nbbmulti-dbgsym_1.0~test12+1_amd64.ddeb debug optional automatic=yes\n",
    )
    .expect("write");
    let changes = ok(Command::new("dpkg-genchanges").arg("-sa").current_dir(&tree));
    let path = work.join("bbmulti_1.0~test12+1_source+amd64+all.changes");
    std::fs::write(&path, changes).expect("write");
    path
}

/// Source `bbthief` (version 2.0~test12+1) declaring and building the binary `package`, a
/// `.<file>` of `arch`.
fn thief_pkg(dir: &Path, package: &str, file: &str, arch: &str, section: &str) -> PathBuf {
    let work = dir.join(format!("thief-{package}"));
    let tree = work.join("bbthief-2.0~test12+1");
    std::fs::create_dir_all(tree.join("debian/source")).expect("mkdir");
    let c = "Maintainer: Test User <test@example.org>";
    std::fs::write(
        tree.join("debian/changelog"),
        "bbthief (2.0~test12+1) bookworm-test-unstable; urgency=medium\n\n  * Test.\n\n -- Test User <test@example.org>  Mon, 01 Jan 2024 00:00:00 +0000\n",
    )
    .expect("write");
    let udeb = if file == "udeb" { "Package-Type: udeb\n" } else { "" };
    std::fs::write(
        tree.join("debian/control"),
        format!("Source: bbthief\nSection: misc\nPriority: optional\n{c}\nStandards-Version: 4.6.2\n\nPackage: {package}\n{udeb}Architecture: {arch}\nDescription: t\n t\n"),
    )
    .expect("write");
    std::fs::write(tree.join("debian/source/format"), "3.0 (native)\n").expect("write");
    std::fs::write(tree.join("debian/rules"), "#!/usr/bin/make -f\n%:\n\tdh $@\n").expect("write");
    ok(Command::new("dpkg-source").arg("-b").arg(&tree).current_dir(&work));
    let name = format!("{package}_2.0~test12+1_{arch}.{file}");
    let control = format!(
        "Package: {package}\nSource: bbthief\nVersion: 2.0~test12+1\nArchitecture: {arch}\n{c}\nSection: {section}\nPriority: optional\n{udeb}Description: t\n t\n"
    );
    deb_from(&work, &work, &name, &control, &[("usr/share/bbthief/x", "x\n")]);
    let automatic = if file == "ddeb" { " automatic=yes" } else { "" };
    std::fs::write(tree.join("debian/files"), format!("{name} misc optional{automatic}\n")).expect("write");
    let changes = ok(Command::new("dpkg-genchanges").arg("-sa").current_dir(&tree));
    let path = work.join("bbthief.changes");
    std::fs::write(&path, changes).expect("write");
    path
}

#[test]
fn contents_udebs_and_ddebs_are_published_and_apt_reads_them() {
    let inst = Instance::new("ed25519");
    let changes = multi_pkg(inst.dir.path());
    let text = std::fs::read_to_string(&changes).expect("changes");
    assert!(text.contains(".udeb") && text.contains(".ddeb"), "{text}");
    inst.ok(&["repo", "include", "bookworm-test-unstable", changes.to_str().expect("utf-8")]);
    let (asc, gpg) = inst.key_files();
    verify_published(&inst.repo(), &gpg);

    let dist = inst.repo().join("dists/bookworm-test-unstable");
    let release = std::fs::read_to_string(dist.join("Release")).expect("Release");
    for listed in [
        " main/Contents-amd64\n",
        " main/Contents-amd64.gz\n",
        " main/debian-installer/binary-amd64/Packages\n",
        " main/debian-installer/binary-amd64/Packages.xz\n",
    ] {
        assert!(release.contains(listed), "Release lacks{listed}{release}");
    }
    let gunzip = |p: &Path| {
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(
                std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            ),
            &mut s,
        )
        .expect("gunzip");
        s
    };
    let contents = gunzip(&dist.join("main/Contents-amd64.gz"));
    assert_eq!(
        contents,
        "etc/bbmulti/shared.conf\t    misc/bbmulti,misc/bbmulti-data\n\
         usr/bin/bbmulti\t    misc/bbmulti\n\
         usr/lib/debug/.build-id/ab/cdef0123.debug\t    debug/bbmulti-dbgsym\n\
         usr/share/bbmulti/data\t    misc/bbmulti-data\n",
        "reprepro's layout, sorted, the installer's package left out"
    );
    assert_eq!(gunzip(&dist.join("Contents-amd64.gz")), contents, "reprepro's compatibility link");
    let installer = std::fs::read_to_string(dist.join("main/debian-installer/binary-amd64/Packages")).expect("udebs");
    assert!(installer.contains("Package: bbmulti-udeb\n") && installer.contains(".udeb\n"), "{installer}");
    assert!(!installer.contains("Package: bbmulti\n"), "{installer}");
    let packages = std::fs::read_to_string(dist.join("main/binary-amd64/Packages")).expect("Packages");
    assert!(packages.contains("Filename: pool/main/b/bbmulti/bbmulti-dbgsym_1.0~test12+1_amd64.ddeb\n"), "{packages}");
    assert!(!packages.contains("bbmulti-udeb"), "{packages}");

    // apt reads Contents as apt-file configures it, and installs the .ddeb like any package.
    let uri = format!("file://{}", inst.repo().display());
    let apt = AptRoot::new(inst.dir.path(), &uri, &["bookworm-test-unstable"], &asc);
    let target = "-oAcquire::IndexTargets::deb::Contents-deb";
    let opts = [
        format!("{target}::MetaKey=$(COMPONENT)/Contents-$(ARCHITECTURE)"),
        format!("{target}::ShortDescription=Contents-$(ARCHITECTURE)"),
        format!("{target}::Description=$(RELEASE)/$(COMPONENT) $(ARCHITECTURE) Contents (deb)"),
    ];
    let with =
        |args: &[&str]| -> Vec<String> { opts.iter().cloned().chain(args.iter().map(|a| a.to_string())).collect() };
    let argv = with(&["update"]);
    let out = apt.apt("apt-get", &argv.iter().map(String::as_str).collect::<Vec<_>>());
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !all.contains("W:") && !all.contains("E:"), "{all}");
    assert!(all.contains("amd64 Contents (deb)"), "apt fetched no Contents: {all}");
    let argv = with(&["indextargets", "--format", "$(FILENAME)", "Identifier: Contents-deb"]);
    let out = apt.apt("apt-get", &argv.iter().map(String::as_str).collect::<Vec<_>>());
    let file = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success() && !file.is_empty(), "indextargets: {}", String::from_utf8_lossy(&out.stderr));
    // apt keeps it compressed (lz4 here); its helper reads it as apt-file does.
    let fetched = ok(Command::new("/usr/lib/apt/apt-helper").args(["cat-file", &file]));
    assert_eq!(fetched, contents);
    let out = apt.apt("apt-get", &["-y", "install", "bbmulti", "bbmulti-dbgsym"]);
    assert!(out.status.success(), "apt-get install: {}", String::from_utf8_lossy(&out.stderr));
    assert!(apt.root.join("usr/lib/debug/.build-id/ab/cdef0123.debug").exists());

    // A snapshot has the same link, to its own copy.
    inst.ok(&["repo", "snapshot", "create", "bookworm-test-unstable", "s1"]);
    assert_eq!(gunzip(&dist.join("snapshots/s1/Contents-amd64.gz")), contents);
    inst.ok(&["repo", "snapshot", "delete", "bookworm-test-unstable", "s1"]);

    // Another source cannot take over bbmulti's packages, a .udeb no more than a .deb.
    for (stolen, file, arch) in
        [("bbmulti-udeb", "udeb", "amd64"), ("bbmulti-data", "deb", "all"), ("bbmulti-dbgsym", "ddeb", "amd64")]
    {
        let thief = thief_pkg(inst.dir.path(), stolen, file, arch, "misc");
        let out = inst
            .cmd(&["repo", "include", "bookworm-test-unstable", thief.to_str().expect("utf-8")])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("binary package {stolen} belongs to source bbmulti")),
            "{stolen}: {err}"
        );
    }

    // A Section that would forge a Contents line's owners is refused.
    let forger = thief_pkg(inst.dir.path(), "bbthief", "deb", "all", "admin/sudo,utils");
    let out = inst
        .cmd(&["repo", "include", "bookworm-test-unstable", forger.to_str().expect("utf-8")])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not a Debian section"), "{err}");

    // A package stored before buildbay kept paths (an upgraded state): the next publish of its
    // Contents reads them from the pool, and keeps them.
    let stored = || -> Vec<String> {
        use redb::ReadableTable;
        let store = buildbay::store::Store::open(&inst.state()).expect("store");
        let read = store.read().expect("read");
        let t = read.open_table(buildbay::store::DEB_CONTENTS).expect("table");
        t.iter().expect("iter").map(|e| e.expect("entry").0.value().to_owned()).collect()
    };
    assert_eq!(stored().len(), 3, "the .deb, the arch-all .deb and the .ddeb: {:?}", stored());
    {
        let keys = stored();
        let store = buildbay::store::Store::open(&inst.state()).expect("store");
        let tx = store.write().expect("write");
        for k in keys {
            tx.open_table(buildbay::store::DEB_CONTENTS).expect("table").remove(k.as_str()).expect("remove");
        }
        tx.commit().expect("commit");
    }
    assert!(stored().is_empty());
    let other = make_pkg(inst.dir.path(), "bbother", "1.0~test12+1");
    inst.ok(&["repo", "include", "bookworm-test-unstable", other.to_str().expect("utf-8")]);
    let now = gunzip(&dist.join("main/Contents-amd64.gz"));
    let mut lines: Vec<&str> = contents.lines().chain(["usr/bin/bbother\t    misc/bbother"]).collect();
    lines.sort();
    assert_eq!(now, format!("{}\n", lines.join("\n")));
    assert_eq!(stored().len(), 4, "learnt again: {:?}", stored());
    inst.ok(&["repo", "remove", "bbother", "bookworm-test-unstable", "--without-rollback"]);

    // Gone with the source: the next Contents lists nothing, and the pool files go.
    inst.ok(&["repo", "remove", "bbmulti", "bookworm-test-unstable", "--without-rollback"]);
    assert_eq!(gunzip(&dist.join("main/Contents-amd64.gz")), "");
    assert!(stored().is_empty(), "what the removed packages install is dropped with them: {:?}", stored());
    assert!(!inst.repo().join("pool/main/b/bbmulti/bbmulti-udeb_1.0~test12+1_amd64.udeb").exists());
    verify_published(&inst.repo(), &gpg);
    inst.ok(&["repo", "check", "test"]);
}
