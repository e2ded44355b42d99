//! Internal jobs (mini-buildd's crontab): each has mini-buildd's id (`cronjob_expire_builds
//! (DAILY)`), a period, and a record in redb (last run, how long, the result, the next run).
//! Because the next run is stored, a run missed while the daemon was down (socket-activated,
//! restarted) runs at the next start. The `cronjob` call runs one now.
//!
//! The schedule is pure ([`Period::next_after`], [`is_due`]); the work is done through `events`,
//! `archive` and `incoming`'s records, and the files under the state directory.

use crate::instance::Instance;
use crate::store::StoreError;
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use std::path::{Path, PathBuf};

/// id → JSON [`Record`].
const JOBS_TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("jobs");

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("there is no job {0:?}; the jobs are: {1}")]
    Unknown(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Hourly => "HOURLY",
            Period::Daily => "DAILY",
            Period::Weekly => "WEEKLY",
            Period::Monthly => "MONTHLY",
            Period::Yearly => "YEARLY",
        }
    }

    /// The next run after `t` (UTC): hourly an hour later; daily at 04:30 the next day; weekly
    /// at 02:30 next Sunday; monthly at 00:30 on the first of next month; yearly at 01:00 on
    /// the first of January.
    pub fn next_after(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let at =
            |d: chrono::NaiveDate, h: u32, m: u32| Utc.from_utc_datetime(&d.and_hms_opt(h, m, 0).unwrap_or_default());
        let today = t.date_naive();
        let first = |y: i32, m: u32| chrono::NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(today);
        match self {
            Period::Hourly => t + Duration::hours(1),
            Period::Daily => at(today + Duration::days(1), 4, 30),
            Period::Weekly => {
                let ahead = 7 - i64::from(today.weekday().num_days_from_sunday());
                at(today + Duration::days(ahead), 2, 30)
            }
            Period::Monthly if today.month() == 12 => at(first(today.year() + 1, 1), 0, 30),
            Period::Monthly => at(first(today.year(), today.month() + 1), 0, 30),
            Period::Yearly => at(first(today.year() + 1, 1), 1, 0),
        }
    }

    /// How long the automatic snapshots of this period are kept.
    pub fn keep(self) -> Duration {
        match self {
            Period::Yearly => Duration::weeks(192),
            Period::Monthly => Duration::weeks(48),
            Period::Weekly => Duration::weeks(8),
            Period::Daily | Period::Hourly => Duration::days(7),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    RetryUploads,
    SetupInspect,
    ExpireBuilds,
    ExpireEvents,
    ExpireSessions,
    Snapshots,
    Retention,
    ChrootUpkeep,
    CheckSources,
}

/// What a job's work did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(String),
    /// It could not run now (builds were running): it runs again in [`POSTPONE_MINUTES`].
    Postponed(String),
}

/// How soon a postponed job runs again.
pub const POSTPONE_MINUTES: i64 = 10;

/// One job of the table.
#[derive(Debug)]
pub struct Def {
    pub name: &'static str,
    pub period: Period,
    pub work: Work,
    pub doc: &'static str,
}

impl Def {
    /// mini-buildd's id: `<name> (<PERIOD>)`.
    pub fn id(&self) -> String {
        format!("{} ({})", self.name, self.period.name())
    }
}

pub const JOBS: &[Def] = &[
    Def {
        name: "cronjob_retry_uploads",
        period: Period::Hourly,
        work: Work::RetryUploads,
        doc: "Send the build results waiting for a remote now, without their back-off.",
    },
    Def {
        name: "cronjob_setup_inspect",
        period: Period::Weekly,
        work: Work::SetupInspect,
        doc: "Inspect the configuration objects and store the report in var/inspect.json.",
    },
    Def {
        name: "cronjob_expire_builds",
        period: Period::Daily,
        work: Work::ExpireBuilds,
        doc: "Remove finished uploads older than --expire-builds-days: their spool directories and records, and kept build logs.",
    },
    Def {
        name: "cronjob_expire_events",
        period: Period::Weekly,
        work: Work::ExpireEvents,
        doc: "Remove events older than --keep-events-days: from the database and their files.",
    },
    Def {
        name: "cronjob_expire_sessions",
        period: Period::Daily,
        work: Work::ExpireSessions,
        doc: "Remove expired browser sessions and API tokens from the database (buildbay's own job).",
    },
    Def {
        name: "cronjob_check_sources",
        period: Period::Hourly,
        work: Work::CheckSources,
        doc: "Check again each source whose release's Valid-Until runs out within a day (or ran out), so that a mirror that stopped renewing it shows before builds fail (buildbay's own job).",
    },
    Def {
        name: "cronjob_chroot_upkeep",
        period: Period::Daily,
        work: Work::ChrootUpkeep,
        doc: "Upgrade the chroot images (apt-get update and dist-upgrade), and check again those whose upgrade failed; builds wait for a failed one until it passes (buildbay's own job).",
    },
    Def {
        name: "cronjob_retention",
        period: Period::Daily,
        work: Work::Retention,
        doc: "Apply each suite's retention to its rollbacks (keep_versions, keep_days) and snapshots (keep_snapshots, keep_snapshot_days); each removal is a REMOVED event (buildbay's own job).",
    },
    Def {
        name: "cronjob_snapshots",
        period: Period::Weekly,
        work: Work::Snapshots,
        doc: "Snapshot every stable distribution (no migration target, not experimental); drop this period's snapshots older than 8 weeks.",
    },
    Def {
        name: "cronjob_snapshots",
        period: Period::Monthly,
        work: Work::Snapshots,
        doc: "Snapshot every stable distribution; drop this period's snapshots older than 48 weeks.",
    },
    Def {
        name: "cronjob_snapshots",
        period: Period::Yearly,
        work: Work::Snapshots,
        doc: "Snapshot every stable distribution; drop this period's snapshots older than 192 weeks.",
    },
];

/// The ids, for the `cronjob` call's choices (a test keeps them equal to [`JOBS`]).
pub const IDS: &[&str] = &[
    "cronjob_retry_uploads (HOURLY)",
    "cronjob_setup_inspect (WEEKLY)",
    "cronjob_expire_builds (DAILY)",
    "cronjob_expire_events (WEEKLY)",
    "cronjob_expire_sessions (DAILY)",
    "cronjob_check_sources (HOURLY)",
    "cronjob_chroot_upkeep (DAILY)",
    "cronjob_retention (DAILY)",
    "cronjob_snapshots (WEEKLY)",
    "cronjob_snapshots (MONTHLY)",
    "cronjob_snapshots (YEARLY)",
];

/// What is known of a job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub last_run: Option<DateTime<Utc>>,
    pub seconds: f64,
    pub ok: bool,
    /// What it did, or why it failed.
    pub result: String,
    pub next_run: DateTime<Utc>,
}

/// A job is due when its next run has come (or went by while the daemon was down).
pub fn is_due(record: Option<&Record>, now: DateTime<Utc>) -> bool {
    record.is_some_and(|r| r.next_run <= now)
}

/// What the jobs work on.
pub struct Ctx<'a> {
    pub inst: &'a Instance,
    pub keep_events_days: u32,
    pub expire_builds_days: u32,
    /// Wake the daemon's pipeline (after `retry_uploads`).
    pub wake: &'a (dyn Fn() + Sync),
    /// Tell the daemon's listeners of events a job recorded (what retention removed).
    pub publish: &'a (dyn Fn(&[crate::events::Event]) + Sync),
    /// The daemon's chroot upkeep (it holds the builders while it runs).
    pub chroot_upkeep: &'a (dyn Fn() -> Result<Outcome, String> + Sync),
}

impl Ctx<'_> {
    fn state(&self) -> PathBuf {
        self.inst.store.dir().to_owned()
    }
}

/// Every job with its record (a job never scheduled yet has none).
pub fn table(inst: &Instance) -> Result<Vec<(&'static Def, Option<Record>)>, JobError> {
    let read = inst.store.read()?;
    let t = match read.open_table(JOBS_TABLE) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(StoreError::from(e).into()),
    };
    let mut out = Vec::new();
    for d in JOBS {
        let r = match &t {
            Some(t) => {
                t.get(d.id().as_str()).map_err(StoreError::from)?.and_then(|v| serde_json::from_slice(v.value()).ok())
            }
            None => None,
        };
        out.push((d, r));
    }
    Ok(out)
}

fn put(inst: &Instance, id: &str, r: &Record) -> Result<(), JobError> {
    let tx = inst.store.write()?;
    tx.open_table(JOBS_TABLE)
        .map_err(StoreError::from)?
        .insert(id, serde_json::to_vec(r).unwrap_or_default().as_slice())
        .map_err(StoreError::from)?;
    tx.commit().map_err(StoreError::from)?;
    Ok(())
}

/// Schedule the jobs never scheduled, and run those that are due (one after the other).
pub fn run_due(ctx: &Ctx<'_>, now: DateTime<Utc>) -> Result<usize, JobError> {
    let mut ran = 0;
    for (def, record) in table(ctx.inst)? {
        match record {
            None => {
                let next_run = def.period.next_after(now);
                let r = Record { last_run: None, seconds: 0.0, ok: true, result: "not run yet".into(), next_run };
                put(ctx.inst, &def.id(), &r)?;
            }
            Some(r) if is_due(Some(&r), now) => {
                run(ctx, def, now)?;
                ran += 1;
            }
            Some(_) => {}
        }
    }
    Ok(ran)
}

/// Run the job `id` now (the `cronjob` call): its record, with the next run as scheduled.
pub fn run_now(ctx: &Ctx<'_>, id: &str) -> Result<Record, JobError> {
    let def = JOBS.iter().find(|d| d.id() == id).ok_or_else(|| JobError::Unknown(id.to_owned(), IDS.join(", ")))?;
    run(ctx, def, Utc::now())
}

/// One job at a time, whoever runs it (the schedule or the `cronjob` call).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(ctx: &Ctx<'_>, def: &Def, now: DateTime<Utc>) -> Result<Record, JobError> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Its next run is stored first: a daemon stopped in the middle of a long job (an upgrade)
    // does not run it again at once on its next start.
    let running = Record {
        last_run: Some(now),
        seconds: 0.0,
        ok: true,
        result: "running; a daemon stopped meanwhile did not finish it".into(),
        next_run: def.period.next_after(now),
    };
    put(ctx.inst, &def.id(), &running)?;
    let start = std::time::Instant::now();
    let done = match def.work {
        Work::RetryUploads => retry_uploads(ctx).map(Outcome::Done),
        Work::SetupInspect => setup_inspect(ctx, now).map(Outcome::Done),
        Work::ExpireBuilds => expire_builds(ctx, now).map(Outcome::Done),
        Work::ExpireEvents => expire_events(ctx, now).map(Outcome::Done),
        Work::ExpireSessions => crate::auth::expire(&ctx.inst.store)
            .map(|n| Outcome::Done(format!("{n} expired sessions and tokens removed")))
            .map_err(|e| e.to_string()),
        Work::Snapshots => snapshots(ctx, def.period, now).map(Outcome::Done),
        Work::Retention => retention(ctx, now).map(Outcome::Done),
        Work::ChrootUpkeep => (ctx.chroot_upkeep)(),
        Work::CheckSources => check_sources(ctx, now).map(Outcome::Done),
    };
    let seconds = start.elapsed().as_secs_f64();
    let mut next_run = def.period.next_after(now);
    let (ok, result) = match done {
        Ok(Outcome::Done(what)) => {
            tracing::info!(job = %def.id(), seconds, "job done: {what}");
            (true, what)
        }
        Ok(Outcome::Postponed(why)) => {
            next_run = now + Duration::minutes(POSTPONE_MINUTES);
            tracing::info!(job = %def.id(), "job postponed {POSTPONE_MINUTES} minutes: {why}");
            (true, format!("postponed {POSTPONE_MINUTES} minutes: {why}"))
        }
        Err(why) => {
            tracing::error!(job = %def.id(), seconds, "job failed: {why}");
            (false, why)
        }
    };
    let r = Record { last_run: Some(now), seconds, ok, result, next_run };
    put(ctx.inst, &def.id(), &r)?;
    Ok(r)
}

fn retry_uploads(ctx: &Ctx<'_>) -> Result<String, String> {
    let tx = ctx.inst.store.write().map_err(|e| e.to_string())?;
    let mut n = 0;
    for id in crate::packager::pending(&ctx.inst.store).map_err(|e| e.to_string())? {
        let Some(mut u) = crate::incoming::get_w(&tx, id).map_err(|e| e.to_string())? else { continue };
        if u.state == crate::incoming::UploadState::Forwarding {
            u.packaging_since = None;
            crate::incoming::put(&tx, &u).map_err(|e| e.to_string())?;
            n += 1;
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    (ctx.wake)();
    Ok(format!("{n} build results for remotes sent again"))
}

fn setup_inspect(ctx: &Ctx<'_>, now: DateTime<Utc>) -> Result<String, String> {
    let objects = ctx.inst.objects().map_err(|e| e.to_string())?;
    let list: Vec<serde_json::Value> = objects
        .iter()
        .map(|(id, o)| {
            let s = o.status();
            serde_json::json!({"kind": o.kind(), "id": id, "state": s.word(), "active": s.is_active(), "message": s.message})
        })
        .collect();
    let inactive = list.iter().filter(|o| o["active"] == false).count();
    let report = serde_json::json!({"time": crate::events::iso::format(&now), "objects": list});
    let path = ctx.state().join("var/inspect.json");
    write_atomic(&path, &serde_json::to_vec_pretty(&report).unwrap_or_default())?;
    Ok(format!("{} objects, {inactive} not active: {}", list.len(), path.display()))
}

fn expire_events(ctx: &Ctx<'_>, now: DateTime<Utc>) -> Result<String, String> {
    let before = now - Duration::days(i64::from(ctx.keep_events_days));
    let n = crate::events::expire(&ctx.inst.store, before).map_err(|e| e.to_string())?;
    let files = remove_older(&ctx.state().join("var/events"), before)?;
    Ok(format!("{n} events and {files} event files older than {} days", ctx.keep_events_days))
}

fn expire_builds(ctx: &Ctx<'_>, now: DateTime<Utc>) -> Result<String, String> {
    let before = now - Duration::days(i64::from(ctx.expire_builds_days));
    let spool = ctx.state().join("spool");
    let old: Vec<crate::incoming::Upload> = crate::incoming::list(&ctx.inst.store)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|u| u.state.is_final() && u.received < before)
        .collect();
    for u in &old {
        let dir = spool.join(u.id.to_string());
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    crate::incoming::forget(&ctx.inst.store, &old).map_err(|e| e.to_string())?;
    let logs = remove_older(&ctx.state().join(crate::builder::LOGS_DIR), before)?;
    Ok(format!("{} uploads and {logs} kept build logs older than {} days", old.len(), ctx.expire_builds_days))
}

fn snapshots(ctx: &Ctx<'_>, period: Period, now: DateTime<Utc>) -> Result<String, String> {
    let archive = ctx.inst.archive().map_err(|e| e.to_string())?;
    let prefix = format!("{}-", period.name().to_ascii_lowercase());
    let name: crate::deb::SnapshotName = format!("{prefix}{}", now.format("%Y%m%dT%H%M"))
        .parse()
        .map_err(|e: crate::deb::names::NameError| e.to_string())?;
    let expire = now - period.keep();
    let (mut made, mut dropped, mut failed) = (0, 0, Vec::new());
    for r in ctx.inst.list::<crate::config::Repository>().map_err(|e| e.to_string())? {
        if !r.status.is_active() {
            continue;
        }
        let ctx_r = archive.ctx(&r.identity).map_err(|e| e.to_string())?;
        for dist in ctx_r.all_dists().into_iter().filter(|d| !d.is_rollback()) {
            let stable = ctx_r.layout.suite(&dist.suite).is_some_and(|s| !s.experimental && s.migrates_to.is_none());
            if !stable {
                continue;
            }
            // Each distribution on its own: one that fails does not stop the others.
            match archive.snapshot_create(&dist, &name) {
                Ok(()) => made += 1,
                Err(e) => failed.push(format!("{dist}: {e}")),
            }
            for old in archive.snapshot_ls(&dist).map_err(|e| e.to_string())? {
                let stamp = old
                    .as_str()
                    .strip_prefix(&prefix)
                    .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M").ok());
                if stamp.is_some_and(|s| Utc.from_utc_datetime(&s) <= expire) {
                    let why = format!("automatic {prefix}snapshots are kept {} weeks", period.keep().num_weeks());
                    match archive.snapshot_expire(&dist, &old, &why) {
                        Ok(ev) => {
                            (ctx.publish)(&[ev]);
                            dropped += 1
                        }
                        Err(e) => failed.push(format!("{dist} {old}: {e}")),
                    }
                }
            }
        }
    }
    if failed.is_empty() {
        Ok(format!("{made} snapshots {name}, {dropped} older than {} weeks dropped", period.keep().num_weeks()))
    } else {
        Err(format!("{made} snapshots made, {dropped} dropped; failed: {}", failed.join("; ")))
    }
}

fn check_sources(ctx: &Ctx<'_>, now: DateTime<Utc>) -> Result<String, String> {
    use crate::config::{Action, Kind, Object, Source};
    let due: Vec<Source> =
        ctx.inst.list::<Source>().map_err(|e| e.to_string())?.into_iter().filter(|s| s.recheck_due(now)).collect();
    let places = crate::chroot::Places::default();
    let (mut renewed, mut failed) = (0, Vec::new());
    for s in &due {
        let id = s.id();
        let still_valid = s.valid_until.is_some_and(|u| u > now);
        // While its release is still valid, a failed re-check (the network, a mirror in the
        // middle of a sync) only warns; the check that records it deactivates the source only
        // once the release ran out, or when it succeeds (which records the new date).
        if still_valid && let Err(why) = ctx.inst.check_source(s) {
            failed.push(format!(
                "{id}: checking it again failed, and its release runs out at {}: {why}",
                s.valid_until.map(|u| u.to_string()).unwrap_or_default()
            ));
            continue;
        }
        match ctx.inst.lifecycle(&places, Kind::Source, &id, Action::Check) {
            Ok(Object::Source(after)) => match (&after.status.message, after.valid_until) {
                (Some(why), _) => failed.push(format!("{id}: {why}")),
                (None, Some(until)) if until <= s.valid_until.unwrap_or(until) => failed.push(format!(
                    "{id}: its release still runs out at {until}: its archives serve no newer one; use a mirror that is kept current"
                )),
                (None, _) => renewed += 1,
            },
            Ok(_) => {}
            Err(e) => failed.push(format!("{id}: {e}")),
        }
    }
    let done = format!("{} sources checked again, {renewed} renewed", due.len());
    if failed.is_empty() { Ok(done) } else { Err(format!("{done}; {}", failed.join("; "))) }
}

fn retention(ctx: &Ctx<'_>, now: DateTime<Utc>) -> Result<String, String> {
    let archive = ctx.inst.archive().map_err(|e| e.to_string())?;
    let (mut rollbacks, mut snapshots, mut failed) = (0, 0, Vec::new());
    for r in ctx.inst.list::<crate::config::Repository>().map_err(|e| e.to_string())? {
        if !r.status.is_active() {
            continue;
        }
        // Each repository on its own: one that fails does not stop the others.
        match archive.retention(&r.identity, now) {
            Ok(events) => {
                (ctx.publish)(&events);
                let snaps = events.iter().filter(|e| e.extra.contains_key("snapshot")).count();
                snapshots += snaps;
                rollbacks += events.len() - snaps;
            }
            Err(e) => failed.push(format!("{}: {e}", r.identity)),
        }
    }
    let done = format!("{rollbacks} rollback versions and {snapshots} snapshots removed");
    if failed.is_empty() { Ok(done) } else { Err(format!("{done}; failed: {}", failed.join("; "))) }
}

/// Remove the regular files below `dir` last changed before `before`, then the directories they
/// leave empty; never follows a symlink. Returns how many files went.
fn remove_older(dir: &Path, before: DateTime<Utc>) -> Result<usize, String> {
    let cutoff: std::time::SystemTime = before.into();
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            n += remove_older(&p, before)?;
            let _ = std::fs::remove_dir(&p);
        } else if meta.modified().is_ok_and(|m| m < cutoff) {
            std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(&tmp, data).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_ids_are_mini_buildds_and_unique() {
        let ids: Vec<String> = JOBS.iter().map(Def::id).collect();
        assert_eq!(ids, IDS);
    }

    #[test]
    fn schedule() {
        // 2026-12-06 is a Sunday.
        let now = t("2026-12-06T10:00:00Z");
        assert_eq!(Period::Hourly.next_after(now), t("2026-12-06T11:00:00Z"));
        assert_eq!(Period::Daily.next_after(now), t("2026-12-07T04:30:00Z"));
        assert_eq!(Period::Weekly.next_after(now), t("2026-12-13T02:30:00Z"));
        assert_eq!(Period::Weekly.next_after(t("2026-12-09T10:00:00Z")), t("2026-12-13T02:30:00Z"));
        assert_eq!(Period::Monthly.next_after(now), t("2027-01-01T00:30:00Z"));
        assert_eq!(Period::Monthly.next_after(t("2027-01-15T00:00:00Z")), t("2027-02-01T00:30:00Z"));
        assert_eq!(Period::Yearly.next_after(now), t("2027-01-01T01:00:00Z"));
        // A run missed while the daemon was down is due at the next start; none before its time.
        let r = Record {
            last_run: None,
            seconds: 0.0,
            ok: true,
            result: String::new(),
            next_run: t("2026-12-07T04:30:00Z"),
        };
        assert!(!is_due(Some(&r), now));
        assert!(is_due(Some(&r), t("2026-12-20T00:00:00Z")));
        assert!(!is_due(None, now), "a job never scheduled is scheduled, not run");
    }
}
