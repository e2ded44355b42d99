//! The whole mission in a booted systemd container, from buildbay's own Debian package:
//! build the `.deb` with dpkg-buildpackage, install it into a debootstrapped bookworm, boot it,
//! and see the sockets start the daemon; set up a chroot through the API; upload a signed
//! package with Debian's dput; apt-get install the built package from the repository inside the
//! container and run it; find it in the journal; restart the daemon during a build and stop it
//! before an upload without losing either; purge it. Needs root and Debian's archive. The timings it
//! prints go to docs/benchmarks.md.

use crate::common::container::{self, Booted};
use crate::common::upload::*;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const UNSTABLE: &str = "bookworm-test-unstable";
const URL: &str = "http://127.0.0.1:8066";
const WAIT: Duration = Duration::from_secs(900);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// buildbay's binary package, built from this checkout's files by dpkg-buildpackage. The
/// release build lands in the checkout's own target directory, so a rerun does not rebuild it.
fn build_package(work: &Path) -> PathBuf {
    let src = work.join("buildbay");
    std::fs::create_dir_all(&src).expect("mkdir");
    // The checkout's files as git sees them (new files included, ignored ones not).
    ok(Command::new("sh")
        .arg("-c")
        .arg("git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C \"$1\"")
        .arg("sh")
        .arg(&src)
        .current_dir(repo_root()));
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| repo_root().join("target"));
    ok(Command::new("dpkg-buildpackage").args(["-b", "-us", "-uc"]).current_dir(&src).env("CARGO_TARGET_DIR", target));
    let lintian = run(Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(work.join(format!("buildbay_{}-1_amd64.changes", env!("CARGO_PKG_VERSION")))));
    assert!(
        lintian.status.success(),
        "lintian errors:\n{}{}",
        String::from_utf8_lossy(&lintian.stdout),
        String::from_utf8_lossy(&lintian.stderr)
    );
    std::fs::read_dir(work)
        .expect("read")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("dpkg-buildpackage made a .deb")
}

/// A plain debootstrapped bookworm with systemd, made once per checkout (under its target
/// directory: a fresh clone makes it anew), copied for each run.
fn fresh_tree(work: &Path) -> PathBuf {
    let base = container::tree(
        &repo_root().join("target/appliance-base"),
        &["debootstrap", "--variant=minbase", "--include=dbus,systemd,systemd-sysv,ca-certificates", "bookworm"],
    );
    let tree = work.join("tree");
    ok(Command::new("cp").arg("-a").arg(&base).arg(&tree));
    tree
}

/// The one-time admin password the package's postinst left for root.
fn password_in(tree: &Path) -> String {
    let path = tree.join("etc/buildbay/admin-password");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("the admin password file").permissions().mode();
    assert_eq!(mode & 0o077, 0, "{} is readable by others", path.display());
    std::fs::read_to_string(&path).expect("admin password").trim().to_owned()
}

fn wait_http() {
    let start = Instant::now();
    while run(Command::new("curl").args(["-sf", "--max-time", "5", &format!("{URL}/mini_buildd/api/status/")]))
        .status
        .code()
        != Some(0)
    {
        assert!(start.elapsed() < Duration::from_secs(60), "buildbay did not answer on {URL}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn admin(password: &str, call: &[&str]) -> String {
    ok(Command::new(bin())
        .args(["api", "--url", URL, "--user", "admin", "--confirm"])
        .args(call)
        .env("BUILDBAY_PASSWORD", password))
}

/// A signed source upload with Debian's dput, through the dput.cf that `dput_conf` gives.
fn dput(dput_cf: &Path, identity: &str, changes: &Path) {
    ok(Command::new("dput").args(["-u", "-c"]).arg(dput_cf).arg(format!("mini-buildd-{identity}")).arg(changes));
}

#[test]
fn install_boot_upload_build_and_apt_install() {
    assert!(nix::unistd::geteuid().is_root(), "the appliance test boots a container: it needs root");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut timings: Vec<(&str, f64)> = Vec::new();

    // 1. The package, and a fresh bookworm with it installed.
    let t = Instant::now();
    let deb = build_package(dir.path());
    timings.push(("dpkg-buildpackage (incremental) + lintian", t.elapsed().as_secs_f64()));
    let tree = fresh_tree(dir.path());
    std::fs::copy(&deb, tree.join("root/buildbay.deb")).expect("copy the .deb");
    let t = Instant::now();
    let install =
        ok(Command::new("systemd-nspawn").args(["-q", "--register=no", "--keep-unit", "-D"]).arg(&tree).args([
            "sh",
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /root/buildbay.deb",
        ]));
    timings.push(("apt install ./buildbay_*.deb (with sbuild, schroot, mmdebstrap)", t.elapsed().as_secs_f64()));
    assert!(install.contains("created the account 'admin'"), "{install}");
    assert!(!install.contains(password_in(&tree).as_str()), "the password went into apt's log: {install}");
    let password = password_in(&tree);
    let password = password.as_str();
    // Builders and uploaders reach this instance as localhost (the host's name is not resolvable
    // inside chroots here).
    std::fs::write(tree.join("etc/default/buildbay"), "BUILDBAY_OPTS=\"--public-host localhost\"\n").expect("write");

    // 2. Boot: the sockets listen, the daemon is not running yet; the first request starts it.
    let c = Booted::boot(&tree, &[]);
    assert_eq!(c.ok("systemctl is-active buildbay-http.socket buildbay-ftp.socket"), "active\nactive\n");
    let state = c.run("systemctl is-active buildbay.service");
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "inactive", "the daemon runs before any request");
    let units = [
        "buildbay.service",
        "buildbay-helper.service",
        "buildbay-http.socket",
        "buildbay-ftp.socket",
        "buildbay-helper.socket",
    ];
    let paths: Vec<String> = units.iter().map(|u| format!("/lib/systemd/system/{u}")).collect();
    let verify = c.run(&format!("systemd-analyze verify --man=no {}", paths.join(" ")));
    assert!(verify.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&verify.stderr));
    for unit in ["buildbay.service", "buildbay-helper.service"] {
        let security = c.ok(&format!("systemd-analyze security --no-pager {unit} | tail -1"));
        println!("systemd-analyze security {unit}: {}", security.trim());
    }
    assert_eq!(c.ok("systemctl is-active buildbay-helper.socket").trim(), "active");
    let t = Instant::now();
    wait_http();
    timings.push(("first request: socket activation to the status answer", t.elapsed().as_secs_f64()));
    assert_eq!(c.ok("systemctl is-active buildbay.service").trim(), "active");

    // 3. The first start set up bookworm:amd64 and repository test, and makes the host's chroot
    // in the background (through the helper): status says so until it is active.
    let t = Instant::now();
    let status = loop {
        let status = api(URL, "status", "");
        if status["chroots"] == serde_json::json!(["bookworm:amd64"]) {
            break status;
        }
        assert!(
            status["chroots_preparing"] == serde_json::json!(["bookworm:amd64"]),
            "the first start is not making the chroot: {status}\n{}",
            c.ok("journalctl -u buildbay.service -u buildbay-helper.service --no-pager | tail -30")
        );
        assert!(t.elapsed() < Duration::from_secs(900), "the chroot was not made in 15 minutes: {status}");
        std::thread::sleep(Duration::from_secs(2));
    };
    timings.push((
        "first start: the default chroot made in the background (mmdebstrap in the hardened helper)",
        t.elapsed().as_secs_f64(),
    ));
    let identity = status["identity"].as_str().expect("identity").to_owned();

    // 4. An uploader (offline, while the daemon is stopped), a signed upload with dput.
    let gpg = Gpg::new(dir.path());
    gpg.generate("Uploader <up@example.org>", "1y", None);
    std::fs::write(tree.join("root/up.asc"), gpg.export("up@example.org")).expect("write");
    c.ok("systemctl stop buildbay.service");
    c.ok("buildbay uploader add up --key /root/up.asc --repositories test");
    wait_http();
    let dput_cf = dir.path().join("dput.cf");
    std::fs::write(&dput_cf, admin(password, &["dput_conf"])).expect("write");
    let hello = buildable_source(dir.path(), "apphello", "1.0~test12+1", UNSTABLE, "true");
    gpg.clearsign("up@example.org", &hello, None);
    let t = Instant::now();
    dput(&dput_cf, &identity, &hello);
    let installed = wait_event(URL, "apphello", "INSTALLED", WAIT);
    timings.push(("dput to INSTALLED (trivial package, lintian on)", t.elapsed().as_secs_f64()));
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");

    // 5. apt inside the container: deb822 sources with Signed-By, install, run.
    std::fs::create_dir_all(tree.join("etc/apt/keyrings")).expect("mkdir");
    std::fs::write(tree.join("etc/apt/keyrings/buildbay.asc"), admin(password, &["pub_key"])).expect("write");
    std::fs::write(
        tree.join("etc/apt/sources.list.d/buildbay.sources"),
        format!("Types: deb\nURIs: http://localhost:8066/repositories/test\nSuites: {UNSTABLE}\nComponents: main\nSigned-By: /etc/apt/keyrings/buildbay.asc\n"),
    )
    .expect("write");
    let out = c.ok("apt-get update -qq 2>&1 && apt-get install -y -qq apphello >/dev/null && apphello");
    assert!(out.contains("hello from apphello 1.0~test12+1"), "{out}");

    // 6. The journal has the upload, the build and the install under the source's name; the
    // chroot is a machine image.
    let journal = c.ok("journalctl BUILDBAY_SOURCE=apphello --no-pager -o cat");
    for needle in ["PACKAGING", "Status: successful", "INSTALLED"] {
        assert!(journal.contains(needle), "journalctl BUILDBAY_SOURCE=apphello lacks {needle}:\n{journal}");
    }
    assert!(c.ok("machinectl list-images --no-legend").contains("buildbay-bookworm-amd64"));

    // 7a. `systemctl restart buildbay` during a build loses nothing.
    let slow = buildable_source(dir.path(), "appslow", "1.0~test12+1", UNSTABLE, "sleep 10");
    gpg.clearsign("up@example.org", &slow, None);
    dput(&dput_cf, &identity, &slow);
    wait_event(URL, "appslow", "BUILDING", WAIT);
    c.ok("systemctl restart buildbay.service");
    let installed = wait_event(URL, "appslow", "INSTALLED", WAIT);
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    assert_eq!(of(&events(URL), "appslow", "BUILDING").len(), 1, "the build ran once");

    // 7b. Stopped daemon, then an upload: the FTP socket starts it and the upload is processed.
    c.ok("systemctl stop buildbay.service");
    assert_eq!(String::from_utf8_lossy(&c.run("systemctl is-active buildbay.service").stdout).trim(), "inactive");
    let third = buildable_source(dir.path(), "appthird", "1.0~test12+1", UNSTABLE, "true");
    gpg.clearsign("up@example.org", &third, None);
    dput(&dput_cf, &identity, &third);
    wait_event(URL, "appthird", "INSTALLED", WAIT);

    let rss = c.ok("ps -o rss= -C buildbay | head -1");
    println!("buildbay RSS after the run: {} kB", rss.trim());
    assert_eq!(c.ok("stat -c '%U:%G %a' /var/lib/buildbay").trim(), "buildbay:buildbay 750");
    // The process that speaks HTTP and FTP is not root; the helper is.
    assert_eq!(c.ok("stat -c %U /proc/$(systemctl show -P MainPID buildbay.service)").trim(), "buildbay");
    assert_eq!(c.ok("stat -c %U /proc/$(systemctl show -P MainPID buildbay-helper.service)").trim(), "root");
    assert_eq!(c.ok("find /var/lib/buildbay ! -user buildbay | head -5"), "", "state that is not the daemon's");

    // 8. Purge: the state and the schroot configs go, the chroot image is left and named.
    let purge = c.ok("DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq buildbay 2>&1");
    assert!(purge.contains("chroot images are left in /var/lib/machines"), "{purge}");
    assert!(!tree.join("var/lib/buildbay").exists(), "purge left the state directory");
    assert!(!tree.join("etc/buildbay").exists(), "purge left the admin password");
    assert!(!tree.join("etc/schroot/chroot.d/buildbay-bookworm-amd64.conf").exists());
    assert!(tree.join("var/lib/machines/buildbay-bookworm-amd64").exists());
    for (what, secs) in &timings {
        println!("timing: {what}: {secs:.1} s");
    }
}
