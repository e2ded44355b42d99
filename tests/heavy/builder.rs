//! Real builds: a bookworm/amd64 machine image prepared with debootstrap, sbuild on its schroot
//! (overlay), run by the child-process runner (this host has no systemd). Uploads over FTP end
//! INSTALLED, FAILED for a package that does not build, canceled, or stopped by RuntimeMaxSec;
//! a daemon restart during a build loses nothing. Needs root and Debian's archive.

use crate::common::upload::*;
use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const UNSTABLE: &str = "bookworm-test-unstable";
const BUILD_WAIT: Duration = Duration::from_secs(600);

/// A daemon on fixed ports (a restarted one must be where build requests point).
fn serve(inst: &Instance, ports: (u16, u16), extra: &[&str]) -> Server {
    serve_builds(inst, ports, "2", extra)
}

/// GET a URL with curl, for at most `secs` seconds (a stream is cut off then), as text.
fn curl(url: &str, secs: u32) -> String {
    let out = Command::new("curl").args(["-sN", "--max-time", &secs.to_string(), url]).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && !cmd.contains("cargo") {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

fn wait_gone(needle: &str, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = processes_with(needle);
        if left.is_empty() || start.elapsed() > timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sbuild_on_a_machine_image_chroot() {
    assert!(nix::unistd::geteuid().is_root(), "real builds need root (debootstrap, schroot); run the tests as root");
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::online("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    // The image (debootstrap the first time; kept in /var/lib/machines afterwards), its schroot
    // config, and the check (apt-get update and dist-upgrade inside it).
    let t = Instant::now();
    let setup = inst.ok(&["setup", "--chroots", "bookworm:amd64"]);
    println!("setup --chroots: {:.1} s", t.elapsed().as_secs_f64());
    assert!(
        setup.lines().any(|l| l.starts_with("chroot") && l.contains("bookworm:amd64") && l.contains("ACTIVE")),
        "{setup}"
    );
    assert!(Path::new("/var/lib/machines/buildbay-bookworm-amd64/etc/buildbay-image").exists());
    let conf = std::fs::read_to_string("/etc/schroot/chroot.d/buildbay-bookworm-amd64.conf").expect("schroot config");
    assert!(conf.contains("union-type=overlay"), "{conf}");

    let ports = (free_port(), free_port());
    let srv = serve(&inst, ports, &[]);
    let status = api(&srv.url, "status", "");
    assert_eq!(status["chroots"], serde_json::json!(["bookworm:amd64"]), "{status}");

    // 1. A package that builds: BUILDING, BUILT, INSTALLED; the result holds the .deb, the
    //    .buildinfo and the log; apt sees the package.
    let good = buildable_source(dir.path(), "bbhello", "1.0~test12+1", UNSTABLE, "true");
    let t = Instant::now();
    ftp_upload(&srv.ftp, &good);
    let installed = wait_event(&srv.url, "bbhello", "INSTALLED", BUILD_WAIT);
    println!("upload to INSTALLED: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    let all = events(&srv.url);
    let built = of(&all, "bbhello", "BUILT");
    assert_eq!(built.len(), 1, "{all:?}");
    assert_eq!(built[0]["extra"]["status"], "successful");
    assert_eq!(of(&all, "bbhello", "BUILDING").len(), 1);
    let tars =
        walk_named(&inst.state().join("spool"), "bbhello_1.0~test12+1_mini-buildd-buildresult_amd64.changes.tar");
    assert_eq!(tars.len(), 1, "{tars:?}");
    let listing = ok(Command::new("tar").arg("tf").arg(&tars[0]));
    for want in
        ["bbhello_1.0~test12+1_all.deb", "bbhello_1.0~test12+1_amd64.buildinfo", "bbhello_1.0~test12+1_amd64.changes"]
    {
        assert!(listing.lines().any(|l| l == want), "{want} not in the result:\n{listing}");
    }
    let logs = walk_named(&inst.state().join("spool"), "bbhello_1.0~test12+1_amd64.buildlog");
    let log = std::fs::read_to_string(&logs[0]).expect("buildlog");
    assert!(log.contains("Status: successful") && log.contains("dpkg-buildpackage"), "{log}");
    // debhelper is in the image: nothing to install, sbuild's null resolver, no apt setup.
    assert!(log.contains("buildbay: the build dependencies are all in the chroot image: nothing to install"), "{log}");
    assert!(!log.contains("Setup apt archive"), "{log}");
    // Where the time went, by phase.
    let phases = built[0]["extra"]["phases"].as_object().expect("phases").clone();
    for phase in ["setup", "dependencies", "build", "cleanup"] {
        assert!(phases.get(phase).and_then(|s| s.as_f64()).is_some_and(|s| s >= 0.0), "{phase}: {phases:?}");
    }
    println!("bbhello phases: {phases:?}");
    // The build log is served where the BUILT event and the builds page point.
    let served = curl(
        &format!("{}/mini_buildd/events-dir/{}", srv.url, built[0]["extra"]["buildlog"].as_str().expect("log")),
        10,
    );
    assert!(served.contains("Status: successful") && served.contains("dpkg-buildpackage"), "{served}");
    let page = curl(&format!("{}/mini_buildd/builds/", srv.url), 10);
    assert!(page.contains("bbhello") && page.contains("/mini_buildd/events-dir/bbhello/"), "{page}");
    let pool = walk_named(&inst.state().join("repositories/test/pool"), "bbhello_1.0~test12+1_all.deb");
    assert_eq!(pool.len(), 1);
    let key = dir.path().join("archive.asc");
    std::fs::write(&key, api(&srv.url, "pub_key", "").as_str().expect("the key")).expect("write");
    let apt = AptRoot::new(dir.path(), &format!("{}/repositories/test", srv.url), &[UNSTABLE], &key);
    apt.update();
    assert!(apt.madison("bbhello").contains("1.0~test12+1"), "{}", apt.madison("bbhello"));

    // 1b. A package whose build dependencies are not all in the image (hello, added by the
    //     upload) goes through apt; lintian in ignore mode runs after its result, and its report
    //     is served beside the build log.
    let deps = buildable_source_with(
        dir.path(),
        "bbdeps",
        "1.0~test12+1",
        UNSTABLE,
        "test -x /usr/bin/hello",
        &["add-depends=hello", "lintian-mode=ignore"],
    );
    ftp_upload(&srv.ftp, &deps);
    let installed = wait_event(&srv.url, "bbdeps", "INSTALLED", BUILD_WAIT);
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    let built = of(&events(&srv.url), "bbdeps", "BUILT").pop().expect("BUILT");
    let logs = walk_named(&inst.state().join("spool"), "bbdeps_1.0~test12+1_amd64.buildlog");
    let log = std::fs::read_to_string(&logs[0]).expect("buildlog");
    assert!(log.contains("buildbay: build dependencies to install: the request adds dependencies"), "{log}");
    assert!(log.contains("Setting up hello"), "apt installed hello: {log}");
    assert!(!log.contains("Lintian"), "ignore mode: lintian is not in the build: {log}");
    let report = built["extra"]["lintian"].as_str().expect("the BUILT event names the lintian report").to_owned();
    let url = format!("{}/mini_buildd/events-dir/{report}", srv.url);
    let start = Instant::now();
    let report = loop {
        let text = curl(&url, 10);
        if text.contains("buildbay: exit code") {
            break text;
        }
        assert!(start.elapsed() < BUILD_WAIT, "no lintian report at {url}: {text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(report.contains("Lintian: ") && report.contains(" errors, "), "{report}");
    let followed = curl(&format!("{url}?follow=1"), 30);
    assert!(followed.contains("no-manual-page"), "following the report streams it: {followed}");
    assert!(followed.contains("event:end") || followed.contains("event: end"), "and ends with the unit: {followed}");
    // The test package has no manual page: lintian, run for real, says so.
    assert!(report.contains("no-manual-page"), "{report}");
    println!("lintian after the result: {:.1} s after BUILT", start.elapsed().as_secs_f64());
    // What apt downloaded stays in the slot's apt archive cache, and the next build takes it
    // from there instead of the network.
    let cached = walk_named(&inst.state().join("var/cache/apt-archives"), ".deb");
    assert!(cached.iter().any(|p| p.to_string_lossy().contains("/hello_")), "{cached:?}\n{log}");
    assert!(
        log.contains("http://deb.debian.org/debian bookworm/main amd64 hello "),
        "the first build downloads hello: {log}"
    );
    let again = buildable_source_with(
        dir.path(),
        "bbdeps2",
        "1.0~test12+1",
        UNSTABLE,
        "test -x /usr/bin/hello",
        &["add-depends=hello", "lintian-mode=disabled"],
    );
    ftp_upload(&srv.ftp, &again);
    let installed = wait_event(&srv.url, "bbdeps2", "INSTALLED", BUILD_WAIT);
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    let logs = walk_named(&inst.state().join("spool"), "bbdeps2_1.0~test12+1_amd64.buildlog");
    let log2 = std::fs::read_to_string(&logs[0]).expect("buildlog");
    assert!(log2.contains("buildbay: apt archive cache ") && log2.contains("Setting up hello"), "{log2}");
    assert!(!log2.contains("amd64 hello "), "hello came from the cache, not the network: {log2}");

    // 1c. The distribution's build settings change the build: the resolver (named in the log),
    //     DEB_BUILD_OPTIONS as debian/rules sees them, the chroot setup script (run as root in
    //     the build's session), lintian's extra options, the sbuildrc snippet with %LIBDIR%.
    let dist = || -> serde_json::Value {
        let all: serde_json::Value =
            serde_json::from_slice(&api_as(&srv.url, "admin", &["config_ls"]).stdout).expect("config_ls");
        all.as_array().into_iter().flatten().find(|o| o["kind"] == "distribution").cloned().expect("distribution")
            ["fields"]
            .clone()
    };
    let set_dist = |f: &serde_json::Value| {
        let out = api_as(&srv.url, "admin", &["config_set", "distribution", &f.to_string()]);
        assert!(out.status.success(), "config_set: {}", String::from_utf8_lossy(&out.stderr));
        let out = api_as(&srv.url, "admin", &["config_action", "distribution", "bookworm", "pca"]);
        assert!(out.status.success(), "pca: {}", String::from_utf8_lossy(&out.stderr));
    };
    let original = dist();
    let mut f = original.clone();
    f["build_dep_resolver"] = serde_json::json!("aptitude");
    f["deb_build_options"] = serde_json::json!("nocheck buildbay-test-option");
    f["lintian_extra_options"] = serde_json::json!("--info");
    f["chroot_setup_script"] = serde_json::json!(
        "#!/bin/sh\nset -e\necho chroot-setup-script-ran-as-$(id -u)\ntouch /etc/buildbay-setup-marker\n"
    );
    f["sbuildrc_snippet"] = serde_json::json!("$build_environment = { 'BUILDBAY_SNIPPET' => 'libdir=%LIBDIR%' };\n");
    set_dist(&f);
    let settings = buildable_source(
        dir.path(),
        "bbsettings",
        "1.0~test12+1",
        UNSTABLE,
        "echo \"DBO=$$DEB_BUILD_OPTIONS SNIPPET=$$BUILDBAY_SNIPPET\"; test -f /etc/buildbay-setup-marker",
    );
    ftp_upload(&srv.ftp, &settings);
    let installed = wait_event(&srv.url, "bbsettings", "INSTALLED", BUILD_WAIT);
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    let logs = walk_named(&inst.state().join("spool"), "bbsettings_1.0~test12+1_amd64.buildlog");
    let log = std::fs::read_to_string(&logs[0]).expect("buildlog");
    for want in [
        "buildbay: build dependencies to install: the distribution has a chroot setup script",
        "buildbay: build-dependency resolver: aptitude",
        "chroot-setup-script-ran-as-0",
        // sbuild adds its parallel=N to the distribution's options.
        "DBO=buildbay-test-option nocheck parallel=",
        "SNIPPET=libdir=/",
        "N: ",
    ] {
        assert!(log.contains(want), "{want:?} not in the log:\n{log}");
    }
    assert!(log.contains("Setting up aptitude"), "sbuild resolved with aptitude: {log}");
    set_dist(&original);

    // 1d. The default blocks: eatmydata preloaded in the session, and ccache with the slot's
    //     cache of this chroot, kept between builds: the second build of the same C file hits.
    let [(first, hits1), (second, hits2)] =
        two_ccache_builds(&srv.url, &srv.ftp, &inst.state(), dir.path(), "bbccache", BUILD_WAIT);
    for log in [&first, &second] {
        for want in [
            "buildbay: setup block eatmydata: /usr/lib/x86_64-linux-gnu/libeatmydata.so preloaded",
            "buildbay: ccache directory ",
            "CC=/usr/lib/ccache/gcc",
        ] {
            assert!(log.contains(want), "{want:?} not in the log:\n{log}");
        }
    }
    assert_eq!(hits1, Some(0), "a fresh cache: {first}");
    assert_eq!(hits2, Some(1), "the second build hits the first one's cache: {second}");

    // 1e. port: a no-change rebuild of the installed bbhello in its own distribution goes through
    //     incoming as an upload signed by this instance, and ends INSTALLED as
    //     `<version>+rebuilt<stamp>` with its changelog entry; apt sees it. Bad requests change
    //     nothing.
    for (bad, why) in [
        (vec!["port", "bbnothere", UNSTABLE, UNSTABLE], "is not in"),
        (vec!["port", "bbhello", UNSTABLE, "bookworm-test-unstable-rollback0"], "not uploadable"),
        (vec!["port", "bbhello", UNSTABLE, "bookworm-nothere-unstable"], "nothere"),
        (vec!["port", "bbhello", UNSTABLE, UNSTABLE, "--options", "lintian-mode=sometimes"], "lintian-mode"),
        (vec!["port", "bbhello", UNSTABLE, UNSTABLE, "--version", "9.9"], "not 9.9"),
    ] {
        let out = api_as(&srv.url, "admin", &bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{bad:?}: {err}");
    }
    // mini-buildd's own client, unchanged, for the calls that work.
    let out = mbd_client_as(&srv.url, "admin", "port", &["bbhello", UNSTABLE, UNSTABLE]);
    assert!(out.status.success(), "port: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("port's answer");
    let rebuilt = answer[0]["version"].as_str().expect("the port's version").to_owned();
    assert!(
        rebuilt.starts_with("1.0~test12+1+rebuilt") && rebuilt.len() == "1.0~test12+1+rebuilt".len() + 14,
        "{answer}"
    );
    let start = Instant::now();
    let installed = loop {
        let e = final_event_within(&srv.url, "bbhello", BUILD_WAIT);
        if e["version"] == rebuilt.as_str() {
            break e;
        }
        assert!(start.elapsed() < BUILD_WAIT, "no final event of the rebuild {rebuilt}: {e}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(installed["type"], "INSTALLED", "{installed}");
    let changes = walk_named(&inst.state().join("spool"), &format!("bbhello_{rebuilt}_source.changes"));
    let text = std::fs::read_to_string(&changes[0]).expect("the port's .changes");
    assert!(
        text.contains("No-change rebuild by buildbay") && text.contains("MINI_BUILDD_OPTION: lintian-mode=ignore"),
        "{text}"
    );
    assert!(text.contains("-----BEGIN PGP SIGNATURE-----"), "signed: {text}");
    apt.update();
    assert!(apt.madison("bbhello").contains(&rebuilt), "{}", apt.madison("bbhello"));

    // 1f. auto-ports: after INSTALLED, the upload is ported to each listed distribution of its
    //     repository (here: a rebuild in place), and the INSTALLED event says so per target; a
    //     target in another repository is refused there, with the reason.
    let auto = buildable_source_with(
        dir.path(),
        "bbauto",
        "1.0~test12+1",
        UNSTABLE,
        "true",
        &["lintian-mode=disabled", "auto-ports=bookworm-test-unstable,bookworm-other-unstable"],
    );
    ftp_upload(&srv.ftp, &auto);
    let installed = wait_event(&srv.url, "bbauto", "INSTALLED", BUILD_WAIT);
    let auto_ports = &installed["extra"]["auto_ports"];
    assert_eq!(auto_ports[UNSTABLE][0], true, "{installed}");
    let rebuilt = auto_ports[UNSTABLE][1]["version"].as_str().expect("the auto-port's version").to_owned();
    assert!(rebuilt.starts_with("1.0~test12+1+rebuilt"), "{installed}");
    assert_eq!(auto_ports["bookworm-other-unstable"][0], false, "{installed}");
    assert!(
        auto_ports["bookworm-other-unstable"][1].as_str().unwrap_or_default().contains("auto-ports stay in"),
        "{installed}"
    );
    let start = Instant::now();
    loop {
        let e = final_event_within(&srv.url, "bbauto", BUILD_WAIT);
        if e["version"] == rebuilt.as_str() {
            assert_eq!(e["type"], "INSTALLED", "{e}");
            break;
        }
        assert!(start.elapsed() < BUILD_WAIT, "no final event of the auto-port {rebuilt}: {e}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // 1g. keyring_packages (through mini-buildd's client): <identity>-archive-keyring is built
    //     into unstable, INSTALLED and migrated to stable. apt on a clean root installs it from
    //     stable; then, with the .sources it ships in place of the client's own line and the
    //     client's key gone, apt-get update verifies the repository with the key the package
    //     installed.
    let keyring_state = |dist: &str| {
        let status = api(&srv.url, "status", "");
        let states = status["keyring_packages"].as_array().cloned().unwrap_or_default();
        states.into_iter().find(|k| k["distribution"] == dist).unwrap_or_else(|| panic!("{dist}: {status}"))
    };
    assert_eq!(keyring_state(UNSTABLE)["current"], false, "not built yet");
    let out = mbd_client_as(&srv.url, "admin", "keyring_packages", &[]);
    assert!(out.status.success(), "keyring_packages: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let o = &answer[0];
    assert_eq!(o["result"], "INSTALLED", "{answer}");
    assert!(o["migration"].to_string().contains("bookworm-test-stable"), "{answer}");
    let name = o["source"].as_str().expect("the package's name").to_owned();
    for dist in [UNSTABLE, "bookworm-test-stable"] {
        let state = keyring_state(dist);
        assert!(state["current"] == true && state["version"] == o["version"], "status says it is current: {state}");
    }
    let client = dir.path().join("keyring-client");
    std::fs::create_dir_all(&client).expect("mkdir");
    let bootstrap = client.join("bootstrap.asc");
    std::fs::copy(&key, &bootstrap).expect("copy");
    let c = AptRoot::new(&client, &format!("{}/repositories/test", srv.url), &["bookworm-test-stable"], &bootstrap);
    c.update();
    let out = c.apt("apt-get", &["install", "-y", "--no-install-recommends", &name]);
    assert!(out.status.success(), "apt-get install {name}: {}", String::from_utf8_lossy(&out.stderr));
    let installed_key = c.root.join(format!("usr/share/keyrings/{name}.gpg"));
    assert!(installed_key.is_file(), "{}", installed_key.display());
    let shipped =
        std::fs::read_to_string(c.root.join(format!("usr/share/{name}/sources.list.d/bookworm/test_stable.sources")))
            .expect("the shipped .sources");
    assert!(shipped.contains(&format!("URIs: {}/repositories/test\n", srv.url)), "{shipped}");
    std::fs::remove_file(&bootstrap).expect("rm");
    std::fs::remove_file(c.root.join("etc/apt/sources.list.d/buildbay.sources")).expect("rm");
    let inside = format!("{}/usr/share/keyrings/", c.root.display());
    std::fs::write(
        c.root.join("etc/apt/sources.list.d/keyring.sources"),
        shipped.replace("/usr/share/keyrings/", &inside),
    )
    .expect("write");
    std::fs::remove_dir_all(c.root.join("var/lib/apt/lists")).expect("rm lists");
    std::fs::create_dir_all(c.root.join("var/lib/apt/lists/partial")).expect("mkdir");
    c.update();
    assert!(c.madison(&name).contains("bookworm-test-stable"), "{}", c.madison(&name));

    // 1h. test_packages --with-check (through mini-buildd's client): buildbay's three test
    //     packages in experimental; archall and cpp end INSTALLED, ftbfs FAILED, and the call
    //     reports each.
    let out = mbd_client_as(&srv.url, "admin", "test_packages", &["--with-check"]);
    assert!(out.status.success(), "test_packages: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let result = |source: &str| {
        answer.as_array().into_iter().flatten().find(|o| o["source"] == source).map(|o| o["result"].clone())
    };
    assert_eq!(result("mbd-test-archall"), Some("INSTALLED".into()), "{answer}");
    assert_eq!(result("mbd-test-cpp"), Some("INSTALLED".into()), "{answer}");
    assert_eq!(result("mbd-test-ftbfs"), Some("FAILED".into()), "{answer}");
    assert!(
        answer.as_array().into_iter().flatten().all(|o| o["distribution"] == "bookworm-test-experimental"),
        "{answer}"
    );

    // 1i. port into another codename: bullseye added to repository test (with its chroot, made
    //     through the API), bbhello ported from bookworm's unstable to bullseye's ends INSTALLED
    //     there with bullseye's appendix and its changelog entry, and apt sees it there.
    let t = Instant::now();
    let out = api_as(
        &srv.url,
        "admin",
        &[
            "setup",
            "--update",
            "all",
            "--pca",
            "all",
            "--distributions",
            "bullseye:amd64",
            "--repositories",
            "test:Default:bookworm+bullseye",
            "--chroots",
            "bullseye:amd64",
        ],
    );
    assert!(out.status.success(), "setup bullseye: {}", String::from_utf8_lossy(&out.stderr));
    println!("setup bullseye (distribution and chroot): {:.1} s", t.elapsed().as_secs_f64());
    const BULLSEYE: &str = "bullseye-test-unstable";
    let out = mbd_client_as(&srv.url, "admin", "port", &["bbhello", UNSTABLE, BULLSEYE]);
    assert!(out.status.success(), "port to bullseye: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("port's answer");
    let ported = answer[0]["version"].as_str().expect("the port's version").to_owned();
    assert!(ported.starts_with("1.0~test11+1"), "bullseye's appendix: {answer}");
    let start = Instant::now();
    let installed = loop {
        let e = final_event_within(&srv.url, "bbhello", BUILD_WAIT);
        if e["version"] == ported.as_str() {
            break e;
        }
        assert!(start.elapsed() < BUILD_WAIT, "no final event of the port {ported}: {e}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(installed["type"], "INSTALLED", "{installed}");
    assert_eq!(installed["distribution"], BULLSEYE, "{installed}");
    let changes = walk_named(&inst.state().join("spool"), &format!("bbhello_{ported}_source.changes"));
    let text = std::fs::read_to_string(&changes[0]).expect("the port's .changes");
    assert!(text.contains(&format!("bbhello ({ported}) {BULLSEYE}; urgency=")), "its changelog entry: {text}");
    let bullseye = dir.path().join("bullseye");
    std::fs::create_dir_all(&bullseye).expect("mkdir");
    let apt11 = AptRoot::new(&bullseye, &format!("{}/repositories/test", srv.url), &[BULLSEYE], &key);
    apt11.update();
    assert!(apt11.madison("bbhello").contains(&ported), "{}", apt11.madison("bbhello"));
    let out = apt11.apt("apt-get", &["install", "-y", "--no-install-recommends", "bbhello"]);
    assert!(out.status.success(), "apt installs the port: {}", String::from_utf8_lossy(&out.stderr));
    let status = std::fs::read_to_string(apt11.root.join("var/lib/dpkg/status")).expect("dpkg status");
    assert!(status.contains(&format!("Version: {ported}\n")), "{status}");

    // 2. A package that fails to build: FAILED, and the result carries the log.
    let bad = buildable_source(dir.path(), "bbftbfs", "1.0~test12+1", UNSTABLE, "echo this build breaks >&2; exit 1");
    ftp_upload(&srv.ftp, &bad);
    let failed = wait_event(&srv.url, "bbftbfs", "FAILED", BUILD_WAIT);
    let why = failed["extra"]["error"]["detail"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("amd64: sbuild status"), "{failed}");
    let logs = walk_named(&inst.state().join("spool"), "bbftbfs_1.0~test12+1_amd64.buildlog");
    let log = std::fs::read_to_string(&logs[0]).expect("buildlog");
    assert!(log.contains("this build breaks") && log.contains("Status: attempted"), "{log}");

    // 3. Cancel a long build: FAILED "canceled by admin", and nothing of it is left running.
    let long = buildable_source(dir.path(), "bbsleep", "1.0~test12+1", UNSTABLE, "sleep 6071");
    ftp_upload(&srv.ftp, &long);
    let building = wait_event(&srv.url, "bbsleep", "BUILDING", BUILD_WAIT);
    let bkey = building["extra"]["bkey"].as_str().expect("bkey").to_owned();
    let start = Instant::now();
    while processes_with("sleep 6071").is_empty() {
        assert!(start.elapsed() < BUILD_WAIT, "the long build never reached its build step");
        std::thread::sleep(Duration::from_millis(200));
    }
    // While it runs: the builds page lists it with its live log, and the log follows over SSE.
    let page = curl(&format!("{}/mini_buildd/builds/", srv.url), 10);
    assert!(page.contains(&format!("data-log-follow=\"/mini_buildd/events-dir/{bkey}/buildlog?follow=1\"")), "{page}");
    let live = format!("{}/mini_buildd/events-dir/{bkey}/buildlog?follow=1", srv.url);
    let tail = curl(&live, 3);
    assert!(tail.contains("event:log") || tail.contains("event: log"), "no log events: {tail}");
    assert!(tail.contains("sleep 6071"), "the live tail shows the build step: {tail}");
    assert!(!tail.contains("event:end") && !tail.contains("event: end"), "the build is still running: {tail}");
    let out = api_as(&srv.url, "admin", &["cancel", &bkey]);
    assert!(out.status.success(), "cancel: {}", String::from_utf8_lossy(&out.stderr));
    let failed = wait_event(&srv.url, "bbsleep", "FAILED", BUILD_WAIT);
    assert!(failed["extra"]["error"]["detail"].as_str().unwrap_or_default().contains("canceled by admin"), "{failed}");
    let ended = curl(&live, 30);
    assert!(ended.contains("event:end") || ended.contains("event: end"), "the tail ends with the build: {ended}");
    let build_dir = inst.state().join("var/builds").join(&bkey);
    let left = wait_gone(&build_dir.display().to_string(), Duration::from_secs(10));
    assert!(left.is_empty(), "processes of the canceled build survived: {left:?}");
    assert!(processes_with("sleep 6071").is_empty(), "the build's sleep survived the cancel");

    // 4. Restart during a build: the build goes on, and the new daemon collects its result.
    let slow = buildable_source(dir.path(), "bbslow", "1.0~test12+1", UNSTABLE, "sleep 8");
    ftp_upload(&srv.ftp, &slow);
    wait_event(&srv.url, "bbslow", "BUILDING", BUILD_WAIT);
    assert!(srv.stop(), "the daemon stops on SIGTERM");
    let srv = serve(&inst, ports, &[]);
    let installed = wait_event(&srv.url, "bbslow", "INSTALLED", BUILD_WAIT);
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    assert_eq!(of(&events(&srv.url), "bbslow", "BUILDING").len(), 1, "the build ran once");
    assert!(srv.stop());

    // 5. RuntimeMaxSec: a build longer than the limit is stopped and fails with the reason.
    let srv = serve(&inst, ports, &["--build-runtime-max", "20"]);
    let endless = buildable_source(dir.path(), "bbendless", "1.0~test12+1", UNSTABLE, "sleep 6072");
    ftp_upload(&srv.ftp, &endless);
    let failed = wait_event(&srv.url, "bbendless", "FAILED", BUILD_WAIT);
    assert!(failed["extra"]["error"]["detail"].as_str().unwrap_or_default().contains("RuntimeMaxSec=20s"), "{failed}");
    assert!(wait_gone("sleep 6072", Duration::from_secs(10)).is_empty(), "the stopped build's sleep survived");
    assert!(srv.stop());

    // 6. The chroot upkeep job: it upgrades the active chroot (apt-get update and dist-upgrade
    //    in its image). When the upgrade fails, the chroot is deactivated with the reason and an
    //    upload for it waits, unbuilt; when the next run passes, the chroot is active again and
    //    the upload builds.
    let chroot = |url: &str| -> serde_json::Value {
        let out = api_as(url, "admin", &["config_ls"]);
        assert!(out.status.success(), "config_ls: {}", String::from_utf8_lossy(&out.stderr));
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("config_ls is JSON");
        all.as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == "chroot" && o["id"] == "bookworm:amd64")
            .cloned()
            .expect("the chroot")
    };
    let upkeep = |url: &str| -> serde_json::Value {
        let out = api_as(url, "admin", &["cronjob", "cronjob_chroot_upkeep (DAILY)"]);
        assert!(out.status.success(), "cronjob: {}", String::from_utf8_lossy(&out.stderr));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        answer["cronjob_chroot_upkeep (DAILY)"].clone()
    };
    let srv = serve(&inst, ports, &[]);
    let before = chroot(&srv.url)["checked"].clone();
    let t = Instant::now();
    let r = upkeep(&srv.url);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"], "2 chroots upgraded (bookworm:amd64, bullseye:amd64)", "{r}");
    let after = chroot(&srv.url);
    assert!(after["checked"] != before && after["state"] == "ACTIVE", "{before} -> {after}");
    println!("chroot upkeep: {:.1} s", t.elapsed().as_secs_f64());

    struct Broken(std::path::PathBuf);
    impl Drop for Broken {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let broken =
        Broken(Path::new("/var/lib/machines/buildbay-bookworm-amd64/etc/apt/sources.list.d/broken.list").into());
    std::fs::write(&broken.0, "this is not a sources.list line\n").expect("break the image's apt");
    let r = upkeep(&srv.url);
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["result"].as_str().unwrap_or_default().contains("failed, their builds wait: bookworm:amd64"), "{r}");
    let failed = chroot(&srv.url);
    assert!(
        failed["state"] != "ACTIVE" && failed["message"].as_str().unwrap_or_default().contains("broken.list"),
        "{failed}"
    );
    let waits = buildable_source(dir.path(), "bbwaits", "1.0~test12+1", UNSTABLE, "true");
    ftp_upload(&srv.ftp, &waits);
    wait_event(&srv.url, "bbwaits", "PACKAGING", BUILD_WAIT);
    std::thread::sleep(Duration::from_secs(8));
    assert!(of(&events(&srv.url), "bbwaits", "BUILDING").is_empty(), "a build started on the failing chroot");
    // Failing a second time, it still waits to be activated again, and so does the build.
    let r = upkeep(&srv.url);
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["result"].as_str().unwrap_or_default().contains("failed, their builds wait: bookworm:amd64"), "{r}");
    std::thread::sleep(Duration::from_secs(6));
    assert!(of(&events(&srv.url), "bbwaits", "BUILDING").is_empty(), "a build started after a second failure");
    drop(broken);
    let r = upkeep(&srv.url);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(chroot(&srv.url)["state"], "ACTIVE");
    let installed = wait_event(&srv.url, "bbwaits", "INSTALLED", BUILD_WAIT);
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    assert!(srv.stop());
}
