//! The internal jobs (mini-buildd's crontab) through the real daemon: run now with the
//! `cronjob` call, expired uploads and events leave the disk and the database, snapshots are
//! made and dropped beyond retention, the crontab page shows the results, and runs missed while
//! the daemon was down run at its next start (the schedule's clock moved 400 days on).

use crate::common::upload::*;
use crate::common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
const STABLE: &str = "bookworm-test-stable";

fn cronjob(url: &str, id: &str) -> serde_json::Value {
    let out = api_as(url, "admin", &["cronjob", id]);
    assert!(out.status.success(), "cronjob {id}: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer[id]["ok"], true, "{answer}");
    answer[id].clone()
}

fn snapshots(url: &str) -> Vec<String> {
    let ls = api(url, "snapshot_ls", &format!("distribution={STABLE}"));
    ls.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

fn crontab(url: &str) -> String {
    ok(Command::new("curl").args(["-sf", "--max-time", "10"]).arg(format!("{url}/mini_buildd/crontab/")))
}

fn spooled(inst: &Instance) -> usize {
    std::fs::read_dir(inst.state().join("spool")).map(|d| d.flatten().count()).unwrap_or(0)
}

#[test]
fn jobs_expire_snapshot_and_run_what_was_missed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let srv = serve_local(&inst, &["--keep-events-days", "0", "--expire-builds-days", "0"]);

    // A finished upload (REJECTED: no such distribution), with its spool directory, record,
    // events and event files.
    let changes = upload::make_source(dir.path(), "bbold", "1.0~test12+1", "bookworm-nothere-unstable", None);
    ftp_upload(&srv.ftp, &changes);
    wait_event(&srv.url, "bbold", "REJECTED", WAIT);
    let files = inst.state().join("var/events/bbold");
    let start = Instant::now();
    while std::fs::read_dir(&files).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(start.elapsed() < WAIT, "no event files in {}", files.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(spooled(&inst), 1);

    let r = cronjob(&srv.url, "cronjob_expire_builds (DAILY)");
    assert!(r["result"].as_str().unwrap_or_default().starts_with("1 uploads"), "{r}");
    assert_eq!(spooled(&inst), 0, "the spool directory is gone");
    let r = cronjob(&srv.url, "cronjob_expire_events (WEEKLY)");
    assert!(r["result"].as_str().unwrap_or_default().contains("event files"), "{r}");
    assert!(of(&events(&srv.url), "bbold", "REJECTED").is_empty(), "the events left the database");
    assert_eq!(std::fs::read_dir(&files).map(|d| d.count()).unwrap_or(0), 0, "and their files the disk");
    // Sessions and tokens: none has expired yet (the unit test in auth expires them).
    let r = cronjob(&srv.url, "cronjob_expire_sessions (DAILY)");
    assert_eq!(r["result"], "0 expired sessions and tokens removed", "{r}");

    // A weekly snapshot of the stable distribution.
    let r = cronjob(&srv.url, "cronjob_snapshots (WEEKLY)");
    let first = snapshots(&srv.url);
    assert!(first.len() == 1 && first[0].starts_with("weekly-"), "{first:?} {r}");
    let page = crontab(&srv.url);
    assert!(page.contains("cronjob_snapshots (WEEKLY)") && page.contains(&format!("snapshots {}", first[0])), "{page}");
    // An unknown job is refused with the list.
    let out = api_as(&srv.url, "admin", &["cronjob", "cronjob_nothing (DAILY)"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cronjob_expire_builds (DAILY)"));
    assert!(srv.stop());

    // 400 days later: every job missed its runs and runs at the start. The weekly snapshot made
    // above is now beyond its 8 weeks and dropped; the new weekly and the yearly are made.
    let srv = serve_local(&inst, &["--jobs-clock-offset-days", "400"]);
    let start = Instant::now();
    let later = loop {
        let s = snapshots(&srv.url);
        if s.iter().any(|n| n.starts_with("yearly-")) && s.iter().any(|n| n.starts_with("weekly-") && *n != first[0]) {
            break s;
        }
        assert!(start.elapsed() < WAIT, "the missed jobs did not run at the start: {s:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!later.contains(&first[0]), "the old weekly snapshot is dropped: {later:?}");
    assert!(inst.state().join("var/inspect.json").exists(), "the setup inspection ran");
    let page = crontab(&srv.url);
    assert_eq!(page.matches("class=\"badge ok\">ok</span>").count(), buildbay::jobs::JOBS.len(), "{page}");
    assert!(srv.stop());
}

/// Retention beyond rollbacks: a suite's `keep_versions` and `keep_snapshots` trim its
/// rollbacks and snapshots to the newest N, and `keep_days` and `keep_snapshot_days` drop what
/// is older (the schedule's clock moved 400 days on); each removal is a REMOVED event naming
/// the rule, and what is kept stays installable.
#[test]
fn retention_trims_rollbacks_and_snapshots_with_events() {
    const UNSTABLE: &str = "bookworm-test-unstable";
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    for v in 1..=4 {
        let pkg = make_pkg(inst.dir.path(), "bbkeep", &format!("1.{v}~test12+1"));
        inst.ok(&["repo", "include", UNSTABLE, pkg.to_str().expect("utf-8")]);
    }
    let srv = serve_local(&inst, &[]);
    let admin = |args: &[&str]| {
        let out = api_as(&srv.url, "admin", args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    for name in ["s1", "s2", "s3"] {
        admin(&["snapshot_create", UNSTABLE, name]);
        std::thread::sleep(Duration::from_millis(1100)); // a second apart: their Release dates
    }
    let rollbacks = |url: &str| -> Vec<String> {
        let ls = api(url, "ls", "source=bbkeep");
        let rbs = ls["test"][UNSTABLE]["rollbacks"].as_object().cloned().unwrap_or_default();
        rbs.iter().map(|(d, v)| format!("{d}={}", v["version"].as_str().unwrap_or("?"))).collect()
    };
    let snapshots_of = |url: &str| api(url, "snapshot_ls", &format!("distribution={UNSTABLE}"));
    let before = rollbacks(&srv.url);
    assert_eq!(before.len(), 3, "three older versions in rollback0..2: {before:?}");

    // The Default layout's unstable keeps 2 versions.
    let all: serde_json::Value = serde_json::from_slice(&admin(&["config_ls"]).stdout).expect("config_ls");
    let mut layout = all
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["kind"] == "layout" && o["id"] == "Default")
        .expect("layout")["fields"]
        .clone();
    set_unstable(&srv.url, &mut layout, &[("keep_versions", 2), ("keep_snapshots", 2)]);
    let r = cronjob(&srv.url, "cronjob_retention (DAILY)");
    assert_eq!(r["result"], "1 rollback versions and 1 snapshots removed", "{r}");
    let after = rollbacks(&srv.url);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(!after.iter().any(|r| r.contains("1.1~test12+1")), "the oldest went: {after:?}");
    let snaps: Vec<String> =
        snapshots_of(&srv.url).as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect();
    assert_eq!(snaps, ["s2", "s3"], "the oldest snapshot went");
    // 1.1 left the rollbacks and nothing else holds it (the snapshots hold 1.4): its pool
    // files went; the others' stay.
    let pool = inst.repo().join("pool/main/b/bbkeep");
    let in_pool = |v: &str| {
        std::fs::read_dir(&pool).into_iter().flatten().flatten().any(|e| e.file_name().to_string_lossy().contains(v))
    };
    assert!(!in_pool("1.1~test12+1") && in_pool("1.2~test12+1") && in_pool("1.4~test12+1"));
    let removed = of(&events(&srv.url), "bbkeep", "REMOVED");
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["distribution"], "bookworm-test-unstable-rollback2");
    assert_eq!(removed[0]["version"], "1.1~test12+1");
    assert!(removed[0]["extra"]["retention"].as_str().unwrap_or_default().starts_with("keep_versions=2"));
    let all_events = events(&srv.url);
    let snap_ev = all_events.iter().find(|e| e["extra"]["snapshot"] == "s1").expect("the snapshot's REMOVED event");
    assert_eq!(snap_ev["type"], "REMOVED");
    assert_eq!(snap_ev["distribution"], "bookworm-test-unstable/snapshots/s1");
    // Run again: nothing more goes.
    let r = cronjob(&srv.url, "cronjob_retention (DAILY)");
    assert_eq!(r["result"], "0 rollback versions and 0 snapshots removed", "{r}");

    // 30 days at most, seen 400 days later: every rollback and snapshot is too old.
    set_unstable(&srv.url, &mut layout, &[("keep_days", 30), ("keep_snapshot_days", 30)]);
    assert!(srv.stop());
    let srv = serve_local(&inst, &["--jobs-clock-offset-days", "400"]);
    let start = Instant::now();
    while !rollbacks(&srv.url).is_empty() || snapshots_of(&srv.url).as_array().is_none_or(|a| !a.is_empty()) {
        let left = (rollbacks(&srv.url), snapshots_of(&srv.url));
        assert!(start.elapsed() < WAIT, "the missed retention run did not drop what is too old: {left:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let ls = api(&srv.url, "ls", "source=bbkeep").to_string();
    assert!(ls.contains("1.4~test12+1"), "the distribution itself is untouched: {ls}");
    // Nothing holds 1.1 to 1.3 now: their pool files went; 1.4's stay, and the tree verifies.
    assert!(!in_pool("1.1~test12+1") && !in_pool("1.3~test12+1") && in_pool("1.4~test12+1"));
    let removed = of(&events(&srv.url), "bbkeep", "REMOVED");
    assert!(removed.iter().any(|e| e["extra"]["retention"].as_str().unwrap_or_default().starts_with("keep_days=30")));
    assert!(srv.stop());
    let (_, keyring) = inst.key_files();
    verify_published(&inst.repo(), &keyring);
}

/// Set fields of the Default layout's unstable suite, and activate the layout again.
fn set_unstable(url: &str, layout: &mut serde_json::Value, fields: &[(&str, u32)]) {
    for s in layout["layout"]["suites"].as_array_mut().into_iter().flatten() {
        if s["suite"] == "unstable" {
            for (field, value) in fields {
                s[*field] = serde_json::json!(value);
            }
        }
    }
    for args in [
        vec!["config_set".to_owned(), "layout".into(), layout.to_string()],
        ["config_action", "layout", "Default", "pca"].map(String::from).to_vec(),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = api_as(url, "admin", &args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The source re-check: a source whose release runs out within a day is checked again every
/// hour. A mirror that serves an expired release deactivates it, with the reason, in the job's
/// result; a renewed release activates it again. (A test archive signed by a test key, which
/// serves InRelease, then Release with Release.gpg.)
#[test]
fn sources_are_checked_again_before_their_release_runs_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let gpg = Gpg::new(dir.path());
    gpg.generate("archive@example.org", "1y", None);
    let fpr = gpg.fingerprint("archive@example.org");
    let root = dir.path().join("mirror");
    let dists = root.join("dists/stale");
    std::fs::create_dir_all(&dists).expect("mkdir");
    // InRelease, or (detached) Release with Release.gpg as some security mirrors serve them.
    let release = |valid_until: chrono::DateTime<chrono::Utc>, detached: bool| {
        let fmt = "%a, %d %b %Y %H:%M:%S UTC";
        let text = format!(
            "Origin: Test\nLabel: Test\nSuite: stale\nCodename: stale\nVersion: 1\nDate: {}\nValid-Until: {}\n\
             Architectures: amd64\nComponents: main\nDescription: a test archive\n",
            chrono::Utc::now().format(fmt),
            valid_until.format(fmt)
        );
        for f in ["InRelease", "Release", "Release.gpg"] {
            let _ = std::fs::remove_file(dists.join(f));
        }
        if detached {
            let path = dists.join("Release");
            std::fs::write(&path, text).expect("write");
            let sig = dists.join("Release.gpg");
            ok(gpg
                .cmd()
                .args(["--armor", "--detach-sign", "--local-user", "archive@example.org", "--output"])
                .arg(&sig)
                .arg(&path));
        } else {
            let path = dists.join("InRelease");
            std::fs::write(&path, text).expect("write");
            gpg.clearsign("archive@example.org", &path, None);
        }
    };
    let now = chrono::Utc::now();
    release(now + chrono::Duration::hours(2), false);
    let (base, mut server) = http_server(&root);
    let srv = serve_local(&inst, &[]);
    let admin = |args: &[&str]| -> serde_json::Value {
        let out = api_as(&srv.url, "admin", args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let key = serde_json::json!({"key": gpg.export("archive@example.org")});
    admin(&["config_set", "aptkey", &key.to_string()]);
    admin(&["config_action", "aptkey", &fpr, "pca"]);
    let archive = format!("{base}/");
    admin(&["config_set", "archive", &serde_json::json!({"url": archive}).to_string()]);
    admin(&["config_action", "archive", &archive, "pca"]);
    let source = serde_json::json!({"origin": "Test", "codename": "stale", "codeversion": "1",
        "components": ["main"], "architectures": ["amd64"], "apt_keys": [fpr]});
    admin(&["config_set", "source", &source.to_string()]);
    admin(&["config_action", "source", "Test:stale", "pca"]);
    let state = || -> serde_json::Value {
        let all = admin(&["config_ls"]);
        all.as_array().into_iter().flatten().find(|o| o["id"] == "Test:stale").cloned().expect("the source")
    };
    let s = state();
    assert_eq!(s["state"], "ACTIVE", "{s}");
    assert!(s["fields"]["valid_until"].is_string(), "the check learnt its Valid-Until: {s}");
    let job = "cronjob_check_sources (HOURLY)";
    let run = |expect_ok: bool| -> String {
        let answer = admin(&["cronjob", job]);
        assert_eq!(answer[job]["ok"], expect_ok, "{answer}");
        answer[job]["result"].as_str().unwrap_or_default().to_owned()
    };

    // Within a day of running out, and the mirror serves no newer release: said, still active.
    let r = run(false);
    assert!(r.contains("Test:stale: its release still runs out at") && r.contains("kept current"), "{r}");
    assert_eq!(state()["state"], "ACTIVE");
    // A failed re-check while the known release is still valid (here, the mirror serves an
    // expired one) only warns: the source stays active.
    release(now - chrono::Duration::minutes(1), false);
    let r = run(false);
    assert!(r.contains("checking it again failed") && r.contains("Valid-Until"), "{r}");
    assert_eq!(state()["state"], "ACTIVE");
    // A release that runs out in 3 seconds is learnt; once it ran out and the mirror still
    // serves it, the re-check deactivates the source with the reason, and keeps trying.
    release(chrono::Utc::now() + chrono::Duration::seconds(3), false);
    let r = run(false);
    assert!(r.contains("still runs out at"), "{r}");
    std::thread::sleep(std::time::Duration::from_secs(4));
    for _ in 0..2 {
        let r = run(false);
        assert!(r.contains("Test:stale") && r.contains("the mirror is stale"), "{r}");
        let s = state();
        assert!(
            s["state"] != "ACTIVE" && s["message"].as_str().unwrap_or_default().contains("the mirror is stale"),
            "{s}"
        );
    }
    // Renewed for a week (now as Release and Release.gpg): checked again, active again, and no
    // longer due.
    release(now + chrono::Duration::days(7), true);
    assert_eq!(run(true), "1 sources checked again, 1 renewed");
    assert_eq!(state()["state"], "ACTIVE");
    assert_eq!(run(true), "0 sources checked again, 0 renewed");
    // The debian sources of the fixture archive have no Valid-Until: never due.
    let page =
        ok(Command::new("curl").args(["-sf", "--max-time", "10"]).arg(format!("{}/mini_buildd/crontab/", srv.url)));
    assert!(page.contains(job), "{page}");
    assert!(srv.stop());
    let _ = server.kill();
    let _ = server.wait();
}
