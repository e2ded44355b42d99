//! Incoming: real dput and gpg, the upload checks with their rejections, build requests and
//! results, event hooks, retry, and hostile FTP.

use crate::common::upload::*;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const UNSTABLE: &str = "bookworm-test-unstable";

const SECURE: &str = "bookworm-sec-unstable";

/// An instance with repositories `test` (which, as in mini-buildd, takes unsigned uploads) and
/// `sec` (which demands signatures), and one uploader key active for both.
fn with_uploader(dir: &Path) -> (Instance, Gpg) {
    let inst = Instance::new("ed25519");
    inst.ok(&["setup", "--repositories", "sec:Default:bookworm"]);
    let g = register_uploader(&inst, dir, "test,sec");
    (inst, g)
}

fn pool_files(inst: &Instance) -> Vec<String> {
    tree_fingerprint(&inst.state().join("repositories/test/pool")).into_iter().map(|(p, _)| p).collect()
}

#[test]
fn dput_upload_is_queued_built_installed_with_hooks_and_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (inst, g) = with_uploader(dir.path());
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    // An event hook that records what it was given.
    let hooks = inst.state().join("etc/event-hooks");
    std::fs::create_dir_all(&hooks).expect("mkdir");
    let seen = dir.path().join("hook.log");
    let hook = hooks.join("10-record");
    std::fs::write(&hook, format!("#!/bin/sh\necho \"$1\" >> {}\n", seen.display())).expect("write");
    ok(Command::new("chmod").arg("755").arg(&hook));
    std::fs::write(hooks.join("_disabled"), "#!/bin/sh\nexit 1\n").expect("write");
    let keyring = dir.path().join("instance.asc");
    std::fs::write(&keyring, inst.ok(&["pub-key"])).expect("write");
    let srv = serve_local(&inst, &[]);

    // The dput snippet from dput_conf, unchanged.
    let conf = api(&srv.url, "dput_conf", "");
    let conf_path = dir.path().join("dput.cf");
    std::fs::write(&conf_path, conf.as_str().expect("a string")).expect("write");
    let changes = make_source(dir.path(), "hello", "1.0-1~test12+1", UNSTABLE, Some((&g, "up@example.org")));
    let out = ok(Command::new("dput")
        .arg("-c")
        .arg(&conf_path)
        .arg("mini-buildd-ci")
        .arg(&changes)
        .env("GNUPGHOME", &g.home)
        .env("USER", "test"));
    assert!(out.contains("Successfully uploaded"), "dput: {out}");

    let packaging = wait_event(&srv.url, "hello", "PACKAGING", WAIT);
    assert_eq!(packaging["distribution"], UNSTABLE);
    let bkey = packaging["extra"]["buildrequests"]["amd64"].as_str().expect("a build request for amd64").to_owned();
    assert!(bkey.starts_with("hello/1.0-1~test12+1/"), "{bkey}");
    let status = api(&srv.url, "status", "");
    assert!(status["build_queue"].as_array().expect("build_queue").iter().any(|b| b == bkey.as_str()), "{status}");

    // The build request: clear-signed by the instance key, with its tar of config and sources.
    let req: Vec<PathBuf> = walk(&inst.state().join("spool"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("_mini-buildd-buildrequest_amd64.changes"))
        .collect();
    assert_eq!(req.len(), 1, "{req:?}");
    ok(Command::new("gpg")
        .args(["--batch", "--dearmor", "--yes", "--output"])
        .arg(dir.path().join("instance.kbx"))
        .arg(&keyring));
    ok(Command::new("gpgv").arg("--keyring").arg(dir.path().join("instance.kbx")).arg(&req[0]));
    let text = std::fs::read_to_string(&req[0]).expect("read");
    for field in ["X-Mini-Buildd-Timecode:", "X-Mini-Buildd-Arch-All: Yes", "X-Mini-Buildd-Lintian-Mode: ignore"] {
        assert!(text.contains(field), "{field} missing in\n{text}");
    }
    let listing = ok(Command::new("tar").arg("-tf").arg(req[0].with_extension("changes.tar")));
    for f in [".config/apt_sources.list", ".config/apt_keys", "hello_1.0-1~test12+1.dsc", "hello_1.0-1~test12+1.tar.gz"]
    {
        assert!(listing.lines().any(|l| l == f), "{f} missing in the request tar:\n{listing}");
    }

    // A builder (signing with this instance's key) sends a successful result: INSTALLED.
    let (ig, ifpr) = instance_signer(dir.path(), &inst.state());
    let result = build_result(dir.path(), &packaging, "successful", (&ig, &ifpr));
    ftp_upload(&srv.ftp, &result);
    let installed = wait_event(&srv.url, "hello", "INSTALLED", WAIT);
    assert_eq!(installed["extra"]["buildresults"]["amd64"], "successful");
    let ls = api(&srv.url, "ls", "source=hello");
    assert!(ls.to_string().contains("1.0-1~test12+1"), "{ls}");
    assert!(pool_files(&inst).iter().any(|p| p.ends_with("hello_1.0-1~test12+1_all.deb")));
    assert!(api(&srv.url, "status", "")["build_queue"].as_array().expect("queue").is_empty());

    // A failed build: FAILED with the architecture's reason; retry runs it again.
    let changes = make_source(dir.path(), "broken", "2.0-1~test12+1", UNSTABLE, Some((&g, "up@example.org")));
    ftp_upload(&srv.ftp, &changes);
    let packaging = wait_event(&srv.url, "broken", "PACKAGING", WAIT);
    ftp_upload(&srv.ftp, &build_result(dir.path(), &packaging, "failed", (&ig, &ifpr)));
    let failed = wait_event(&srv.url, "broken", "FAILED", WAIT);
    let detail = failed["extra"]["error"]["detail"].as_str().expect("detail");
    assert!(detail.contains("amd64: sbuild status failed"), "{detail}");
    assert!(!pool_files(&inst).iter().any(|p| p.contains("broken")));
    let key = failed["extra"]["key"].as_str().expect("key");
    let out = ok(inst
        .cmd(&["api", "--url", &srv.url, "--user", "admin", "--confirm", "retry", key])
        .env("BUILDBAY_PASSWORD", "admin-password"));
    assert!(out.contains("retried"), "{out}");
    let start = std::time::Instant::now();
    while of(&events(&srv.url), "broken", "PACKAGING").len() < 2 {
        assert!(start.elapsed() < WAIT, "retry did not package again");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Hooks ran for each event, with the event's JSON; the disabled one did not.
    let start = std::time::Instant::now();
    let ran = loop {
        let ran = std::fs::read_to_string(&seen).unwrap_or_default();
        if ran.lines().count() >= 5 || start.elapsed() > WAIT {
            break ran;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let paths: Vec<&str> = ran.lines().collect();
    assert!(paths.iter().any(|p| p.ends_with("hello_1.0-1~test12+1_INSTALLED.json")), "{ran}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(paths[0]).expect("event file")).expect("event json");
    assert!(json["type"].is_string() && json["timestamp"].is_string(), "{json}");
    assert!(srv.stop());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn every_check_rejects_with_its_reason_and_nothing_reaches_the_repository() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (inst, g) = with_uploader(d);
    // Already installed: the same version may not be uploaded again.
    let installed = make_pkg(d, "dup", "1.0~test12+1");
    inst.ok(&["repo", "include", UNSTABLE, installed.to_str().expect("utf-8")]);
    let before = pool_files(&inst);

    // Keys that must not pass: unknown, expired (made and used in 2020, valid one day), revoked.
    let other = Gpg::new(&d.join("other"));
    other.generate("Stranger <stranger@example.org>", "1y", None);
    let old = Gpg::new(&d.join("old"));
    old.generate("Old <old@example.org>", "1d", Some("20200101T000000"));
    let revoked = Gpg::new(&d.join("revoked"));
    revoked.generate("Revoked <revoked@example.org>", "1y", None);

    let up = Some((&g, "up@example.org"));
    let mut cases: Vec<(PathBuf, &str)> = vec![
        (make_source(d, "unsigned", "1.0-1~sec12+1", SECURE, None), "not signed by an active uploader"),
        (make_source(d, "stranger", "1.0-1~sec12+1", SECURE, Some((&other, "stranger@example.org"))), "Missing key"),
        (make_source(d, "rollback", "1.0-1~test12+1", "bookworm-test-unstable-rollback0", up), "rollback distribution"),
        (make_source(d, "unknown", "1.0-1~test12+1", "bookworm-nope-unstable", up), "does not exist"),
        (make_source(d, "testing", "1.0-1~test12+1", "bookworm-test-testing", up), "takes no uploads"),
        (make_source(d, "appendix", "1.0-1", UNSTABLE, up), "1.0-1~test12+"),
        (make_source(d, "dup", "1.0~test12+1", UNSTABLE, up), "already"),
        (make_source(d, "nodist", "1.0-1~test12+1", "sid", up), "is unknown"),
    ];
    // Expired: signed while the key was valid, rejected now.
    let expired = make_source(d, "expired", "1.0-1~sec12+1", SECURE, None);
    old.clearsign("old@example.org", &expired, Some("20200101T120000"));
    cases.push((expired, "xpired"));
    // Revoked: signed, then the key was revoked, and the uploader key carries the revocation.
    let rev = make_source(d, "revoked", "1.0-1~sec12+1", SECURE, Some((&revoked, "revoked@example.org")));
    revoked.revoke("revoked@example.org");
    cases.push((rev, "evoked"));
    // A tampered file: same size, one byte changed after signing.
    let tampered = make_source(d, "tampered", "1.0-1~test12+1", UNSTABLE, up);
    let tar = tampered.parent().expect("dir").join("tampered_1.0-1~test12+1.tar.gz");
    let mut bytes = std::fs::read(&tar).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&tar, bytes).expect("write");
    cases.push((tampered, "checksum mismatch"));

    for (user, gpg, mail) in [("old", &old, "old@example.org"), ("revoked", &revoked, "revoked@example.org")] {
        let key = d.join(format!("{user}.asc"));
        std::fs::write(&key, gpg.export(mail)).expect("write");
        inst.ok(&["uploader", "add", user, "--key", key.to_str().expect("utf-8"), "--repositories", "sec"]);
    }
    let srv = serve_local(&inst, &[]);
    for (changes, _) in &cases {
        ftp_upload(&srv.ftp, changes);
    }
    for (changes, reason) in &cases {
        let name = changes.file_name().expect("name").to_string_lossy().split('_').next().expect("source").to_owned();
        let e = wait_event(&srv.url, &name, "REJECTED", WAIT);
        let detail = e["extra"]["error"]["detail"].as_str().expect("detail");
        assert!(detail.contains(reason), "{name}: expected {reason:?} in {detail:?}");
        assert!(of(&events(&srv.url), &name, "PACKAGING").is_empty(), "{name} was packaged");
    }
    assert_eq!(pool_files(&inst), before, "a rejected upload reached the pool");
    assert!(api(&srv.url, "status", "")["build_queue"].as_array().expect("queue").is_empty());
    assert!(srv.stop());
}

#[test]
fn hostile_ftp_and_a_hundred_parallel_uploads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let inst = Instance::new("ed25519");
    let srv = serve_local(&inst, &["--max-file-size", "100000", "--incoming-timeout", "3"]);
    let state = inst.state();

    let small = d.join("small.txt");
    std::fs::write(&small, "hello\n").expect("write");
    let big = d.join("big.bin");
    std::fs::write(&big, vec![0u8; 200_000]).expect("write");
    let r = ftp("hostile", &srv.ftp, &[small.clone(), big]);
    let code = |k: &str| r[k].as_str().unwrap_or("").chars().take(3).collect::<String>();
    for k in [
        "stor_parent",
        "stor_absolute",
        "stor_root",
        "stor_through_parent",
        "stor_subdir",
        "stor_dotfile",
        "cwd_etc",
        "retr",
        "retr_passwd",
        "dele",
        "rename",
        "mkd",
        "rmd",
        "stor_big",
    ] {
        assert!(code(k).starts_with('5'), "{k} was not refused: {r}");
    }
    assert_eq!(code("stor_ok"), "226", "{r}");
    assert_eq!(code("stor_big"), "552", "{r}");
    assert_eq!(r["list"], serde_json::json!([]), "other uploads must not be listed: {r}");
    assert!(!Path::new("/etc/escape.txt").exists() && !state.join("escape.txt").exists());
    assert!(!state.join("incoming/big.bin").exists(), "an oversize file was kept");

    // A .changes that lists files outside incoming is rejected, and nothing is read from there.
    for (n, listed) in [("passwd", "/etc/passwd"), ("parent", "../x")] {
        let c = d.join(format!("{n}_1.0_source.changes"));
        std::fs::write(
            &c,
            format!("Format: 1.8\nSource: {n}\nVersion: 1.0\nDistribution: {UNSTABLE}\nArchitecture: source\nChanged-By: x <x@example.org>\nFiles:\n d41d8cd98f00b204e9800998ecf8427e 0 misc optional {listed}\n"),
        )
        .expect("write");
        ftp_upload_raw(&srv.ftp, &[c]);
        let e = wait_event(&srv.url, n, "REJECTED", WAIT);
        assert!(e["extra"]["error"]["detail"].as_str().unwrap_or("").contains("does not parse"), "{e}");
    }

    // 100 uploads at once, each on its own connection, plus 5 that never complete.
    let mut dirs = Vec::new();
    for i in 0..100 {
        let c = make_source(d, &format!("par{i}"), "1.0-1~test12+1", UNSTABLE, None);
        let set = d.join(format!("set{i}"));
        std::fs::create_dir_all(&set).expect("mkdir");
        for f in upload_files(&c) {
            std::fs::copy(&f, set.join(f.file_name().expect("name"))).expect("copy");
        }
        dirs.push(set);
    }
    for i in 0..5 {
        let c = make_source(d, &format!("partial{i}"), "1.0-1~test12+1", UNSTABLE, None);
        let set = d.join(format!("pset{i}"));
        std::fs::create_dir_all(&set).expect("mkdir");
        // Only the .changes and the .dsc: the tarball never comes.
        for f in upload_files(&c).into_iter().filter(|f| !f.to_string_lossy().ends_with(".tar.gz")) {
            std::fs::copy(&f, set.join(f.file_name().expect("name"))).expect("copy");
        }
        dirs.push(set);
    }
    let results = ftp("parallel", &srv.ftp, &dirs);
    for (set, replies) in results.as_object().expect("results") {
        for reply in replies.as_array().expect("replies") {
            assert!(reply.as_str().unwrap_or("").starts_with("226"), "{set}: {replies}");
        }
    }
    // Repository `test` takes unsigned uploads: each is packaged exactly once.
    let start = std::time::Instant::now();
    loop {
        let all = events(&srv.url);
        let done = (0..100).filter(|i| of(&all, &format!("par{i}"), "PACKAGING").len() == 1).count();
        let partial_rejected = (0..5).filter(|i| of(&all, &format!("partial{i}"), "REJECTED").len() == 1).count();
        if done == 100 && partial_rejected == 5 {
            for i in 0..5 {
                let e = &of(&all, &format!("partial{i}"), "REJECTED")[0];
                let detail = e["extra"]["error"]["detail"].as_str().unwrap_or("");
                assert!(detail.contains("incomplete") && detail.contains("tar.gz (missing)"), "{detail}");
            }
            for i in 0..100 {
                let n = format!("par{i}");
                assert_eq!(all.iter().filter(|e| e["source"] == n.as_str()).count(), 1, "{n}: one event, no more");
            }
            let queue = api(&srv.url, "status", "")["build_queue"].as_array().expect("queue").len();
            assert_eq!(queue, 100, "one build request per upload");
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "after {WAIT:?}: {done}/100 uploads and {partial_rejected}/5 partial sets accounted for"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Nothing is left behind in incoming, and every upload is kept in the spool.
    let left: Vec<_> = std::fs::read_dir(state.join("incoming"))
        .expect("incoming")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "ok.txt")
        .collect();
    assert!(left.is_empty(), "left in incoming: {left:?}");
    assert!(srv.stop());
}

fn ftp_upload_raw(hostport: &str, files: &[PathBuf]) {
    let r = ftp("upload", hostport, files);
    assert!(r.as_array().expect("replies").iter().all(|x| x.as_str().unwrap_or("").starts_with("226")), "{r}");
}

/// A distribution's build settings (mini-buildd's Distribution fields): hostile values are
/// refused at `config_set` with the reason and nothing is stored; set values travel in the
/// build request with mini-buildd's field names, and the scripts in its tar's `.config`.
#[test]
fn distribution_build_settings_travel_in_the_build_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let srv = serve_local(&inst, &[]);
    let ls = || -> serde_json::Value {
        serde_json::from_slice(&api_as(&srv.url, "admin", &["config_ls"]).stdout).expect("config_ls")
    };
    let fields = || {
        ls().as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == "distribution" && o["id"] == "bookworm")
            .cloned()
            .expect("bookworm")["fields"]
            .clone()
    };
    let original = fields();
    assert_eq!(original["lintian_mode"], "errfail", "mini-buildd's default: {original}");
    assert_eq!(original["sbuild_setup_blocks"], "apt-setup apt-update ccache eatmydata", "{original}");
    for (field, value, why) in [
        ("lintian_extra_options", serde_json::json!("--include-dir=/tmp/evil"), "holds '/'"),
        ("lintian_extra_options", serde_json::json!("--include-dir=."), "not an option buildbay passes on"),
        ("lintian_extra_options", serde_json::json!("--help"), "not an option buildbay passes on"),
        ("lintian_extra_options", serde_json::json!("--info; id"), "holds ';'"),
        ("piuparts_extra_options", serde_json::json!("--scriptsdir /tmp/x"), "is not an option"),
        ("deb_build_options", serde_json::json!("nocheck $(id)"), "DEB_BUILD_OPTIONS"),
        ("chroot_setup_script", serde_json::json!("rm -rf /"), "interpreter line"),
        ("sbuild_setup_blocks", serde_json::json!("apt-setup curl-evil"), "unknown"),
        ("internal_apt_priority", serde_json::json!(99999), "-32768"),
        ("build_dep_resolver", serde_json::json!("internal"), "unknown variant"),
    ] {
        let mut f = original.clone();
        f[field] = value.clone();
        let out = api_as(&srv.url, "admin", &["config_set", "distribution", &f.to_string()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{field}={value}: {err}");
    }
    assert_eq!(fields(), original, "a refused value changed nothing");

    let mut f = original.clone();
    for (field, value) in [
        ("build_dep_resolver", serde_json::json!("aptitude")),
        ("lintian_extra_options", serde_json::json!("--info --display-experimental")),
        ("piuparts_extra_options", serde_json::json!("--warn-on-others")),
        ("autopkgtest_mode", serde_json::json!("ignore")),
        ("internal_apt_priority", serde_json::json!(500)),
        ("deb_build_options", serde_json::json!("nocheck parallel=2")),
        ("add_depends", serde_json::json!("base-files (>= 1)")),
        ("sbuild_setup_blocks", serde_json::json!("apt-setup apt-update")),
        ("chroot_setup_script", serde_json::json!("#!/bin/sh\necho setup-script-ran\n")),
        ("sbuildrc_snippet", serde_json::json!("$buildbay_test = 1;\n")),
    ] {
        f[field] = value;
    }
    let out = api_as(&srv.url, "admin", &["config_set", "distribution", &f.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = api_as(&srv.url, "admin", &["config_action", "distribution", "bookworm", "pca"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let changes = make_source(dir.path(), "hello", "1.0-1~test12+1", UNSTABLE, None);
    ftp_upload(&srv.ftp, &changes);
    wait_event(&srv.url, "hello", "PACKAGING", WAIT);
    let req: Vec<PathBuf> = walk(&inst.state().join("spool"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("_mini-buildd-buildrequest_amd64.changes"))
        .collect();
    assert_eq!(req.len(), 1, "{req:?}");
    let text = std::fs::read_to_string(&req[0]).expect("read");
    for field in [
        "X-Mini-Buildd-Build-Dep-Resolver: aptitude",
        // The upload's `lintian-mode=ignore` option overrides the distribution's errfail.
        "X-Mini-Buildd-Lintian-Mode: ignore",
        "X-Mini-Buildd-Lintian-Extra-Options: --info --display-experimental",
        "X-Mini-Buildd-Piuparts-Extra-Options: --warn-on-others",
        "X-Mini-Buildd-Autopkgtest-Mode: ignore",
        "X-Mini-Buildd-Deb-Build-Options: nocheck parallel=2",
        "X-Mini-Buildd-Add-Depends: base-files (>= 1)",
        "X-Mini-Buildd-Sbuild-Setup-Blocks: apt-setup apt-update\n",
        "X-Mini-Buildd-Sbuild-Config-Blocks: set-default-path ccache",
    ] {
        assert!(text.contains(field), "{field} missing in\n{text}");
    }
    let tar = req[0].with_extension("changes.tar");
    let member = |name: &str| ok(Command::new("tar").arg("-xOf").arg(&tar).arg(name));
    assert_eq!(member(".config/chroot_setup_script"), "#!/bin/sh\necho setup-script-ran\n");
    assert_eq!(member(".config/sbuildrc_snippet"), "$buildbay_test = 1;\n");
    assert!(member(".config/apt_preferences").contains("Pin-Priority: 500"), "internal_apt_priority");
}

/// Below the free-disk reserve an upload whose build succeeded is not installed: `status` says
/// why, nothing lands in the pool, and after the daemon's attempts it ends FAILED with the
/// reason; with the space back, `retry` builds and installs it.
#[test]
fn below_the_disk_reserve_nothing_is_installed_until_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let srv = serve_local(&inst, &[]);
    let changes = make_source(dir.path(), "bblow", "1.0-1~test12+1", UNSTABLE, None);
    ftp_upload(&srv.ftp, &changes);
    let packaging = wait_event(&srv.url, "bblow", "PACKAGING", WAIT);
    let (ig, ifpr) = instance_signer(dir.path(), &inst.state());
    let result = build_result(dir.path(), &packaging, "successful", (&ig, &ifpr));
    assert!(srv.stop());

    // A reserve larger than any disk: the result arrives (not by FTP, which keeps the reserve
    // too), and the install waits, then fails with the reason.
    let srv = serve_local(&inst, &["--disk-reserve", &u64::MAX.to_string()]);
    let status = api(&srv.url, "status", "");
    assert!(status["disk"]["low"].as_str().unwrap_or("").contains("--disk-reserve"), "{status}");
    drop_into(&inst.state().join("incoming"), &dir.path().join("drop"), &result);
    let failed = wait_event(&srv.url, "bblow", "FAILED", Duration::from_secs(90));
    let detail = failed["extra"]["error"]["detail"].as_str().unwrap_or("");
    assert!(detail.contains("--disk-reserve") && detail.contains("nothing was installed"), "{failed}");
    assert!(!pool_files(&inst).iter().any(|p| p.contains("bblow")), "{:?}", pool_files(&inst));
    let key = failed["extra"]["key"].as_str().expect("key").to_owned();
    assert!(srv.stop());

    // Space again: retry packages it again, and its new build result installs.
    let srv = serve_local(&inst, &[]);
    assert!(api(&srv.url, "status", "")["disk"]["low"].is_null());
    let out = ok(inst
        .cmd(&["api", "--url", &srv.url, "--user", "admin", "--confirm", "retry", &key])
        .env("BUILDBAY_PASSWORD", "admin-password"));
    assert!(out.contains("retried"), "{out}");
    let start = std::time::Instant::now();
    let again = loop {
        let p = of(&events(&srv.url), "bblow", "PACKAGING");
        if p.len() >= 2 {
            break p[p.len() - 1].clone();
        }
        assert!(start.elapsed() < WAIT, "retry did not package again");
        std::thread::sleep(Duration::from_millis(200));
    };
    ftp_upload(&srv.ftp, &build_result(dir.path(), &again, "successful", (&ig, &ifpr)));
    wait_event(&srv.url, "bblow", "INSTALLED", WAIT);
    assert!(pool_files(&inst).iter().any(|p| p.ends_with("bblow_1.0-1~test12+1_all.deb")));
    assert!(srv.stop());
}

#[test]
fn a_build_result_with_a_udeb_and_a_ddeb_is_installed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (inst, g) = with_uploader(dir.path());
    let srv = serve_local(&inst, &[]);
    let v = "1.0-1~test12+1";
    let udeb_stanza = "\nPackage: bbinst-udeb\nPackage-Type: udeb\nSection: debian-installer\nArchitecture: amd64\nDescription: t\n t\n";
    let changes = make_source_with(dir.path(), "bbinst", v, UNSTABLE, Some((&g, "up@example.org")), udeb_stanza);
    ftp_upload(&srv.ftp, &changes);
    let packaging = wait_event(&srv.url, "bbinst", "PACKAGING", WAIT);

    // What sbuild leaves for such a source on Ubuntu: the .deb, the .udeb, and debhelper's
    // automatic debug package as a .ddeb.
    let bins = dir.path().join("bins");
    std::fs::create_dir_all(&bins).expect("mkdir");
    let control = |pkg: &str, section: &str, extra: &str| {
        format!(
            "Package: {pkg}\nSource: bbinst\nVersion: {v}\nArchitecture: amd64\nMaintainer: Test User <test@example.org>\nSection: {section}\nPriority: optional\n{extra}Description: t\n t\n"
        )
    };
    let udeb = bins.join(format!("bbinst-udeb_{v}_amd64.udeb"));
    let ddeb = bins.join(format!("bbinst-dbgsym_{v}_amd64.ddeb"));
    deb_from(
        &bins,
        &bins,
        &format!("bbinst-udeb_{v}_amd64.udeb"),
        &control("bbinst-udeb", "debian-installer", "Package-Type: udeb\n"),
        &[("usr/lib/bbinst-udeb/step", "x\n")],
    );
    deb_from(
        &bins,
        &bins,
        &format!("bbinst-dbgsym_{v}_amd64.ddeb"),
        &control("bbinst-dbgsym", "debug", "Auto-Built-Package: debug-symbols\nPackage-Type: ddeb\n"),
        &[("usr/lib/debug/.build-id/12/3456789a.debug", "x\n")],
    );
    let (ig, ifpr) = instance_signer(dir.path(), &inst.state());
    let result = build_result_with(
        dir.path(),
        &packaging,
        "successful",
        (&ig, &ifpr),
        &[(&udeb, "debian-installer"), (&ddeb, "debug")],
    );
    ftp_upload(&srv.ftp, &result);
    wait_event(&srv.url, "bbinst", "INSTALLED", WAIT);
    let pool = pool_files(&inst);
    for f in
        [format!("bbinst_{v}_all.deb"), format!("bbinst-udeb_{v}_amd64.udeb"), format!("bbinst-dbgsym_{v}_amd64.ddeb")]
    {
        assert!(pool.iter().any(|p| p.ends_with(&f)), "{f} not in the pool: {pool:?}");
    }
    let dist = inst.state().join("repositories/test/dists").join(UNSTABLE);
    let installer = std::fs::read_to_string(dist.join("main/debian-installer/binary-amd64/Packages")).expect("udebs");
    assert!(installer.contains("Package: bbinst-udeb\n"), "{installer}");
    let mut contents = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(dist.join("main/Contents-amd64.gz")).expect("Contents")),
        &mut contents,
    )
    .expect("gunzip");
    assert_eq!(
        contents,
        "usr/bin/bbinst\t    misc/bbinst\nusr/lib/debug/.build-id/12/3456789a.debug\t    debug/bbinst-dbgsym\n"
    );
    assert!(srv.stop());
}

/// A build result the archive refuses (a binary package the source does not declare) leaves
/// nothing installed: the upload ends FAILED, and neither its source nor its other packages are
/// in the distribution or the pool (they were, before: the source went in first).
#[test]
fn a_refused_build_result_installs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (inst, g) = with_uploader(dir.path());
    let srv = serve_local(&inst, &[]);
    let v = "1.0-1~test12+1";
    let changes = make_source_with(dir.path(), "bbhalf", v, UNSTABLE, Some((&g, "up@example.org")), "");
    ftp_upload(&srv.ftp, &changes);
    let packaging = wait_event(&srv.url, "bbhalf", "PACKAGING", WAIT);
    let bins = dir.path().join("bins");
    std::fs::create_dir_all(&bins).expect("mkdir");
    let evil = bins.join(format!("bbhalf-evil_{v}_amd64.deb"));
    deb_from(
        &bins,
        &bins,
        &format!("bbhalf-evil_{v}_amd64.deb"),
        &format!(
            "Package: bbhalf-evil\nSource: bbhalf\nVersion: {v}\nArchitecture: amd64\nMaintainer: Test User <test@example.org>\nSection: misc\nPriority: optional\nDescription: t\n t\n"
        ),
        &[("usr/bin/bbhalf-evil", "x\n")],
    );
    let (ig, ifpr) = instance_signer(dir.path(), &inst.state());
    let result = build_result_with(dir.path(), &packaging, "successful", (&ig, &ifpr), &[(&evil, "misc")]);
    ftp_upload(&srv.ftp, &result);
    let failed = wait_event(&srv.url, "bbhalf", "FAILED", WAIT);
    let ls = api(&srv.url, "ls", "source=bbhalf");
    assert!(!ls.to_string().contains(v), "the source is not left in place: {ls}");
    let pool = pool_files(&inst);
    assert!(!pool.iter().any(|p| p.contains("bbhalf")), "nothing in the pool: {pool:?}");
    let text = failed.to_string();
    assert!(text.contains("nothing was installed") && text.contains("bbhalf-evil"), "{text}");
    assert!(srv.stop());
}
