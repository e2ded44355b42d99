//! README.md's first command on a fresh state directory, as a new user runs it: the daemon sets
//! up the embedded default, makes this host's chroot in the background, and builds a real
//! Debian source package (Debian's `hello`, with a changelog entry for the `test` repository,
//! as a user would add) uploaded with Debian's dput, with no other command. The one-time admin
//! password is where the log says.

use crate::common::upload::{api, events, of};
use crate::common::{Server, bin, ok};
use std::process::Command;
use std::time::Duration;

/// Debian's hello in bookworm, from the archive's pool.
const HELLO_DSC: &str = "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3.dsc";

#[test]
fn the_first_command_builds_an_upload() {
    assert!(nix::unistd::geteuid().is_root(), "building on the host's chroot image needs root");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // README's command (`buildbay --state DIR serve`), on ephemeral ports: the appliance test
    // has 8066 and 8067.
    let s = Server::start({
        let mut c = Command::new(bin());
        c.arg("--state").arg(&state).args(["serve", "--http", "127.0.0.1:0"]);
        c
    });

    // The admin's one-time password, where the log says (the client logs in with it first).
    let said = s.log.iter().find_map(|l| l.split("one-time password is in ").nth(1)).unwrap_or_else(|| {
        panic!("the log names no password file:\n{}", s.log.join("\n"));
    });
    let path = said.split(" (change").next().unwrap_or_default();
    assert_eq!(std::path::Path::new(path), state.join("admin-password"), "{said}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).expect("the password file").permissions().mode();
    assert_eq!(mode & 0o077, 0, "{path} is readable by others");
    let password = std::fs::read_to_string(path).expect("read").trim().to_owned();
    let login = ok(Command::new(bin())
        .args(["api", "--url", &s.url, "--user", "admin", "status"])
        .env("BUILDBAY_PASSWORD", &password));
    assert!(login.contains("identity"), "logged in with the file's password: {login}");

    // The chroot is being made: status says so.
    let status = api(&s.url, "status", "");
    let host = format!("bookworm:{}", buildbay::instance::host_arch());
    assert!(
        status["chroots_preparing"] == serde_json::json!([host]) || status["chroots"] == serde_json::json!([host]),
        "{status}"
    );

    // Debian's hello, given the version the test repository's unstable takes.
    let work = dir.path().join("hello");
    std::fs::create_dir_all(&work).expect("mkdir");
    ok(Command::new("dget").args(["-u", "-d", HELLO_DSC]).current_dir(&work));
    ok(Command::new("dpkg-source").args(["-x", "hello_2.10-3.dsc", "hello-2.10"]).current_dir(&work));
    let tree = work.join("hello-2.10");
    ok(Command::new("dch")
        .args([
            "--newversion",
            "2.10-3~test12+1",
            "--distribution",
            "bookworm-test-unstable",
            "--force-distribution",
            "--force-bad-version",
        ])
        .arg("Rebuilt for buildbay's test repository.")
        .env("DEBFULLNAME", "Test User")
        .env("DEBEMAIL", "test@example.org")
        .current_dir(&tree));
    ok(Command::new("dpkg-buildpackage").args(["-S", "-sa", "-us", "-uc", "-d", "-nc"]).current_dir(&tree));
    let changes = work.join("hello_2.10-3~test12+1_source.changes");
    assert!(changes.exists(), "no {}", changes.display());

    // dput, configured as the instance says (dput_conf), unsigned (repository test takes that
    // from this host).
    let dput_cf = dir.path().join("dput.cf");
    let conf = ok(Command::new(bin()).args(["api", "--url", &s.url, "dput_conf"]));
    std::fs::write(&dput_cf, conf).expect("write");
    let identity = status["identity"].as_str().expect("identity");
    ok(Command::new("dput").args(["-u", "-c"]).arg(&dput_cf).arg(format!("mini-buildd-{identity}")).arg(&changes));

    let installed = wait_end(&s.url, "hello", Duration::from_secs(1200));
    assert_eq!(installed["version"], "2.10-3~test12+1", "{installed}");
    let status = api(&s.url, "status", "");
    assert_eq!(status["chroots"], serde_json::json!([host]), "{status}");
    assert_eq!(status["chroots_preparing"], serde_json::json!([]), "{status}");
    assert!(s.stop(), "the daemon did not stop cleanly");
}

/// The upload's INSTALLED event; panics at once if it ends REJECTED or FAILED instead.
fn wait_end(url: &str, source: &str, timeout: Duration) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let all = events(url);
        if let Some(e) = of(&all, source, "INSTALLED").pop() {
            return e;
        }
        for end in ["REJECTED", "FAILED"] {
            if let Some(e) = of(&all, source, end).pop() {
                panic!("the upload ended {end}: {e}");
            }
        }
        assert!(start.elapsed() < timeout, "no end for {source} within {timeout:?}: {all:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}
