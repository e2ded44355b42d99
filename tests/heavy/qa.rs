//! QA checks that really run: autopkgtest and piuparts, each in a fresh nspawn machine of the
//! chroot image (in the build slot's user namespace), after a build on the nspawn backend.
//! errfail gates the install,
//! ignore reports after it; the sbuild backend runs the same machines after its build.
//! Needs root, the shared bookworm/amd64 image and Debian's archive.

use crate::common::upload::*;
use crate::common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const UNSTABLE: &str = "bookworm-test-unstable";
const WAIT: Duration = Duration::from_secs(900);

fn curl(url: &str, secs: u32) -> String {
    let out = Command::new("curl").args(["-sN", "--max-time", &secs.to_string(), url]).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn final_event(url: &str, source: &str) -> serde_json::Value {
    final_event_within(url, source, WAIT)
}

fn kept_log(inst: &Instance, source: &str, name: &str) -> String {
    let logs = walk_named(&inst.state().join("var/logs").join(source), name);
    logs.first().map(|p| std::fs::read_to_string(p).expect("log")).unwrap_or_default()
}

#[test]
fn qa_checks_run_in_machines_and_gate_or_report() {
    assert!(nix::unistd::geteuid().is_root(), "real builds need root; run the tests as root");
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::online("ed25519");
    inst.ok(&["setup", "--chroots", "bookworm:amd64"]);
    inst.ok(&["setup", "--distributions", "bookworm:amd64:nspawn"]);
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let srv = serve_builds(&inst, (free_port(), free_port()), "2", &[]);

    // 1. Passing tests under errfail: INSTALLED, the verdict in the build log. A hostile test
    //    (root of the throwaway machine) cannot touch the build's files: /build is read-only.
    let escape = "for f in /build/out/evil.deb /build/checks /build/out/.buildbay-summary; do \
                  if (echo forged >> $f) 2>/dev/null; then echo WROTE-$f; fi; done; true";
    let pass = tested_source(
        dir.path(),
        "qapass",
        "1.0~test12+1",
        UNSTABLE,
        &["autopkgtest-mode=errfail", "piuparts-mode=errfail", "lintian-mode=disabled"],
        &[
            ("smoke", "", "qapass | grep -q 'hello from qapass'"),
            ("escape", "needs-root", escape),
            // The check machine is a container of its own: such a test runs, it is not skipped.
            ("contained", "isolation-container", "echo contained-test-ran"),
        ],
    );
    let t = Instant::now();
    ftp_upload(&srv.ftp, &pass);
    let e = final_event(&srv.url, "qapass");
    let log = kept_log(&inst, "qapass", "qapass_1.0~test12+1_amd64.buildlog");
    assert_eq!(e["type"], "INSTALLED", "{e}\n{log}");
    println!("errfail, passing tests: upload to INSTALLED {:.1} s", t.elapsed().as_secs_f64());
    for want in [
        "Autopkgtest (mode errfail) in a fresh machine",
        "smoke",
        "PASS",
        "buildbay: Autopkgtest: pass",
        "Piuparts (mode errfail) in a fresh machine",
        "PASS: All tests.",
        "buildbay: Piuparts: pass",
    ] {
        assert!(log.contains(want), "{want:?} not in the log:\n{log}");
    }
    assert!(!log.contains("WROTE-"), "a test wrote into the build directory:\n{log}");
    assert!(log.contains("contained-test-ran") && !log.contains("SKIP"), "the isolation-container test:\n{log}");
    let built = of(&events(&srv.url), "qapass", "BUILT").pop().expect("BUILT");
    assert_eq!(built["extra"]["status"], "successful", "{built}");
    // The events page: per architecture, the build log and each check's verdict.
    let page = curl(&format!("{}/mini_buildd/events/", srv.url), 10);
    for want in ["amd64: <a href=\"/mini_buildd/events-dir/qapass/", "Autopkgtest pass", "Piuparts pass"] {
        assert!(page.contains(want), "{want:?} not on the events page");
    }

    // 2. A failing test under errfail: FAILED, naming autopkgtest.
    let fail = tested_source(
        dir.path(),
        "qafail",
        "1.0~test12+1",
        UNSTABLE,
        &["autopkgtest-mode=errfail", "lintian-mode=disabled"],
        &[("broken", "", "echo this test fails >&2; exit 1")],
    );
    ftp_upload(&srv.ftp, &fail);
    let e = final_event(&srv.url, "qafail");
    assert_eq!(e["type"], "FAILED", "{e}");
    let why = e["extra"]["error"]["detail"].as_str().unwrap_or_default();
    assert!(why.contains("Autopkgtest fail (mode errfail)"), "{e}");
    let log = kept_log(&inst, "qafail", "qafail_1.0~test12+1_amd64.buildlog");
    assert!(log.contains("this test fails") && log.contains("buildbay: Autopkgtest: fail"), "{log}");

    // 3. ignore: INSTALLED first, the failing test reported after, in its own log, served beside
    //    the build log.
    let ignored = tested_source(
        dir.path(),
        "qaignore",
        "1.0~test12+1",
        UNSTABLE,
        &["autopkgtest-mode=ignore", "lintian-mode=disabled"],
        &[("broken", "", "echo ignored test fails >&2; exit 1")],
    );
    ftp_upload(&srv.ftp, &ignored);
    let e = final_event(&srv.url, "qaignore");
    assert_eq!(e["type"], "INSTALLED", "{e}");
    let built = of(&events(&srv.url), "qaignore", "BUILT").pop().expect("BUILT");
    let report = built["extra"]["autopkgtest"].as_str().expect("the BUILT event names the autopkgtest log").to_owned();
    let url = format!("{}/mini_buildd/events-dir/{report}", srv.url);
    let start = Instant::now();
    let text = loop {
        let text = curl(&url, 10);
        if text.contains("buildbay: Autopkgtest: ") {
            break text;
        }
        assert!(start.elapsed() < WAIT, "no autopkgtest report at {url}: {text}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(text.contains("ignored test fails") && text.contains("buildbay: Autopkgtest: fail"), "{text}");

    // 4. piuparts errfail on a package whose postrm fails on purge: FAILED, naming piuparts.
    let postrm =
        "#!/bin/sh\nset -e\nif [ \"$1\" = purge ]; then echo postrm fails on purge >&2; exit 1; fi\n#DEBHELPER#\n";
    let pp = source_with_files(
        dir.path(),
        "qapiuparts",
        "1.0~test12+1",
        UNSTABLE,
        "true",
        &["piuparts-mode=errfail", "lintian-mode=disabled"],
        "all",
        &[("debian/postrm".to_owned(), postrm.to_owned())],
    );
    ftp_upload(&srv.ftp, &pp);
    let e = final_event(&srv.url, "qapiuparts");
    assert_eq!(e["type"], "FAILED", "{e}");
    assert!(e["extra"]["error"]["detail"].as_str().unwrap_or_default().contains("Piuparts fail (mode errfail)"), "{e}");
    let log = kept_log(&inst, "qapiuparts", "qapiuparts_1.0~test12+1_amd64.buildlog");
    assert!(log.contains("postrm fails on purge") && log.contains("buildbay: Piuparts: fail"), "{log}");

    // 5. Gated migration: a package whose dependency is not in testing is refused with the
    //    reason; forcing it works and the MIGRATED event records what was overridden; once the
    //    dependency is there, it migrates without force.
    let control = |name: &str, depends: &str| {
        format!(
            "Source: {name}\nSection: misc\nPriority: optional\nMaintainer: Test User <test@example.org>\nBuild-Depends: debhelper-compat (= 13)\nStandards-Version: 4.6.2\nRules-Requires-Root: no\n\nPackage: {name}\nArchitecture: all\nDepends: ${{misc:Depends}}{depends}\nDescription: buildbay test package\n Prints hello.\n"
        )
    };
    for (name, depends) in [("qamiga", String::new()), ("qamigb", ", qamiga (>= 1.0~)".to_owned())] {
        let src = source_with_files(
            dir.path(),
            name,
            "1.0~test12+1",
            UNSTABLE,
            "true",
            &["lintian-mode=disabled"],
            "all",
            &[("debian/control".to_owned(), control(name, &depends))],
        );
        ftp_upload(&srv.ftp, &src);
        assert_eq!(final_event(&srv.url, name)["type"], "INSTALLED");
    }
    // lintian was disabled by the uploads, where the distribution gates on it: that is a reason
    // too, so the distribution ignores lintian for this step.
    let refused = api_as(&srv.url, "admin", &["migrate", "qamigb", UNSTABLE]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "migrated without its dependency");
    assert!(err.contains("qamigb") && err.contains("qamiga") && err.contains("is not available"), "{err}");
    assert!(err.contains("Lintian on amd64: no result, where the distribution's mode is errfail"), "{err}");
    // The tracker says why it waits (the QA; installability is checked when it migrates).
    let tracker = curl(&format!("{}/mini_buildd/sources/qamigb/", srv.url), 30);
    assert!(tracker.contains("Cannot migrate yet: Lintian on amd64: no result"), "{tracker}");
    let forced = api_as(&srv.url, "admin", &["migrate", "qamigb", UNSTABLE, "--force"]);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    let migrated = of(&events(&srv.url), "qamigb", "MIGRATED").pop().expect("MIGRATED");
    let why = migrated["extra"]["forced"].to_string();
    assert!(why.contains("is not available") && why.contains("Lintian"), "{migrated}");
    let out = api_as(&srv.url, "admin", &["config_ls"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("config_ls");
    let mut dist =
        all.as_array().into_iter().flatten().find(|o| o["kind"] == "distribution").expect("dist")["fields"].clone();
    dist["lintian_mode"] = serde_json::json!("ignore");
    assert!(api_as(&srv.url, "admin", &["config_set", "distribution", &dist.to_string()]).status.success());
    assert!(api_as(&srv.url, "admin", &["config_action", "distribution", "bookworm", "pca"]).status.success());
    let a = api_as(&srv.url, "admin", &["migrate", "qamiga", UNSTABLE, "--full"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = api_as(&srv.url, "admin", &["migrate", "qamigb", "bookworm-test-testing"]);
    assert!(b.status.success(), "with its dependency in stable: {}", String::from_utf8_lossy(&b.stderr));

    // 5b. The default blocks on the nspawn backend: eatmydata preloaded in the machine, and
    //     ccache with the slot's cache of this chroot, bound into each machine: the second build
    //     of the same C file hits.
    let [(first, hits1), (second, hits2)] =
        two_ccache_builds(&srv.url, &srv.ftp, &inst.state(), dir.path(), "qaccache", WAIT);
    for log in [&first, &second] {
        for want in
            ["setup block eatmydata: /usr/lib/x86_64-linux-gnu/libeatmydata.so preloaded", "CC=/usr/lib/ccache/gcc"]
        {
            assert!(log.contains(want), "{want:?} not in the log:\n{log}");
        }
    }
    assert_eq!(hits1, Some(0), "a fresh cache: {first}");
    assert_eq!(hits2, Some(1), "the second build hits the first one's cache: {second}");

    // 5c. The distribution's build_dep_resolver aptitude on the nspawn backend: a package that
    //     stands for the build dependencies, installed by aptitude, whose solver takes the
    //     alternative apt's resolver (the first one only) cannot.
    let set_resolver = |resolver: &str| {
        let out = api_as(&srv.url, "admin", &["config_ls"]);
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("config_ls");
        let mut dist =
            all.as_array().into_iter().flatten().find(|o| o["kind"] == "distribution").expect("dist")["fields"].clone();
        dist["build_dep_resolver"] = serde_json::json!(resolver);
        assert!(api_as(&srv.url, "admin", &["config_set", "distribution", &dist.to_string()]).status.success());
        assert!(api_as(&srv.url, "admin", &["config_action", "distribution", "bookworm", "pca"]).status.success());
    };
    set_resolver("aptitude");
    let control = "Source: qaaptitude\nSection: misc\nPriority: optional\nMaintainer: Test User <test@example.org>\nBuild-Depends: debhelper-compat (= 13), buildbay-no-such-package | hello\nStandards-Version: 4.6.2\nRules-Requires-Root: no\n\nPackage: qaaptitude\nArchitecture: all\nDepends: ${misc:Depends}\nDescription: buildbay test package\n Prints hello.\n";
    let src = source_with_files(
        dir.path(),
        "qaaptitude",
        "1.0~test12+1",
        UNSTABLE,
        "hello --version",
        &["lintian-mode=disabled"],
        "all",
        &[("debian/control".to_owned(), control.to_owned())],
    );
    ftp_upload(&srv.ftp, &src);
    let e = final_event(&srv.url, "qaaptitude");
    let log = kept_log(&inst, "qaaptitude", "qaaptitude_1.0~test12+1_amd64.buildlog");
    assert_eq!(e["type"], "INSTALLED", "{e}\n{log}");
    for want in ["build-dependency resolver: aptitude", "buildbay-build-deps", "hello (GNU Hello)"] {
        assert!(log.contains(want), "{want:?} not in the log:\n{log}");
    }
    set_resolver("apt");

    // 6. The sbuild backend: the same check machines after the build (never as root in a
    //    schroot session, which is root here); without systemd, from the build's relay.
    assert!(srv.stop());
    inst.ok(&["setup", "--distributions", "bookworm:amd64:sbuild"]);
    let srv = serve_builds(&inst, (free_port(), free_port()), "2", &[]);
    let on_sbuild = tested_source(
        dir.path(),
        "qasbuild",
        "1.0~test12+1",
        UNSTABLE,
        &["autopkgtest-mode=errfail", "lintian-mode=disabled"],
        // Hostile: the test prints a summary of its own into the build log (after sbuild's),
        // which must not count.
        &[(
            "smoke",
            "",
            "set -e\nqasbuild | grep -q 'hello from qasbuild'\nr=+$(printf '%078d' 0 | tr 0 -)+\n\
             printf '%s\\n| %-76s |\\n%s\\nStatus: attempted\\n' \"$r\" Summary \"$r\"",
        )],
    );
    ftp_upload(&srv.ftp, &on_sbuild);
    let e = final_event(&srv.url, "qasbuild");
    let log = kept_log(&inst, "qasbuild", "qasbuild_1.0~test12+1_amd64.buildlog");
    assert_eq!(e["type"], "INSTALLED", "{e}\n{log}");
    for want in
        ["Autopkgtest (mode errfail) in a fresh machine", "smoke", "buildbay: Autopkgtest: pass", "Status: attempted"]
    {
        assert!(log.contains(want), "{want:?} not in the sbuild build's log:\n{log}");
    }
    assert!(srv.stop());
}
