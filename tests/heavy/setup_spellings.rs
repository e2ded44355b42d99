//! mini-buildd's own client (`mini-buildd-api` from mini-buildd-utils) sets buildbay up with
//! mini-buildd's spellings: `setup` inspects without `--update`, a bare codename is a source,
//! `--chroots bookworm:amd64+i386` prepares an i386 image beside the shared amd64 one, and
//! `remake_chroots --keys bookworm:amd64` remakes that one only. Needs root and Debian's archive.

use crate::common::upload::{mbd_client_as, setup_item as item};
use crate::common::*;
use std::path::Path;
use std::time::Instant;

const MACHINES: &str = "/var/lib/machines";

fn json(out: std::process::Output, what: &str) -> serde_json::Value {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn mini_buildds_client_sets_up_buildbay_with_mini_buildds_spellings() {
    assert!(nix::unistd::geteuid().is_root(), "chroot images need root; run the tests as root");
    let inst = Instance::online("ed25519");
    inst.ok(&["setup", "--chroots", "bookworm:amd64"]);
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let s = serve_local(&inst, &[]);
    let setup = |args: &[&str]| json(mbd_client_as(&s.url, "admin", "setup", args), "setup");

    // Inspect: the objects as they are, nothing changed.
    let config = || mbd_client_as(&s.url, "admin", "config_ls", &[]).stdout;
    let before = config();
    let out = setup(&[]);
    assert_eq!(item(&out, "repository", "test")["status"], "ACTIVE", "{out}");
    let out = setup(&["--chroots", "bookworm:amd64+i386"]);
    assert_eq!(item(&out, "chroot", "bookworm:i386")["status"], "MISSING", "{out}");
    assert_eq!(config(), before, "without --update, setup changes nothing");

    // A bare codename: Debian's bookworm, checked against deb.debian.org.
    let out = setup(&["--update", "all", "--pca", "all", "--sources", "bookworm"]);
    assert_eq!(item(&out, "source", "Debian:bookworm")["status"], "ACTIVE", "{out}");

    // codename:arch0+arch1: the i386 image is made beside the amd64 one.
    let t = Instant::now();
    let out = setup(&["--update", "all", "--pca", "all", "--chroots", "bookworm:amd64+i386"]);
    println!("setup --chroots bookworm:amd64+i386: {:.1} s", t.elapsed().as_secs_f64());
    for id in ["bookworm:amd64", "bookworm:i386"] {
        assert_eq!(item(&out, "chroot", id)["status"], "ACTIVE", "{out}");
    }
    for arch in ["amd64", "i386"] {
        assert!(Path::new(MACHINES).join(format!("buildbay-bookworm-{arch}/usr/bin/dpkg")).exists(), "{arch}'s image");
    }

    // remake_chroots --keys: that chroot only.
    let marker = |arch: &str| Path::new(MACHINES).join(format!("buildbay-bookworm-{arch}/etc/buildbay-test-marker"));
    for arch in ["amd64", "i386"] {
        std::fs::write(marker(arch), "before the remake\n").expect("marker");
    }
    let t = Instant::now();
    let out = mbd_client_as(&s.url, "admin", "remake_chroots", &["--keys", "bookworm:amd64"]);
    println!("remake_chroots --keys bookworm:amd64: {:.1} s", t.elapsed().as_secs_f64());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!marker("amd64").exists(), "bookworm:amd64 was remade: {text}");
    assert!(marker("i386").exists(), "bookworm:i386 was left alone: {text}");
    std::fs::remove_file(marker("i386")).expect("rm marker");
    assert!(s.stop());
}
