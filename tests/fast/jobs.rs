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
