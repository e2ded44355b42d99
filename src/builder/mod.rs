//! The builder (mini-buildd §5.3): takes build requests from the queue, runs each in its own
//! transient systemd unit (or, without systemd, a child process in its own process group), and
//! turns what the build left behind into a signed build result dropped into incoming, where the
//! packager collects it like any remote builder's.
//!
//! A build's whole state is its directory `var/builds/<bkey>/` plus one row in `builds`:
//! - `buildlog`: the output, written by `buildbay builder-exec`, which also copies it to the journal;
//! - `result`: `SERVICE_RESULT EXIT_CODE EXIT_STATUS`, written by the unit's ExecStopPost (or by
//!   the daemon for a child process) however the unit ended. Its presence means "finished";
//! - `built`: written by the relay when a build succeeded and an after script (lintian in
//!   ignore mode) still runs in its unit. The build is finished (its result goes out), the unit
//!   not yet: it keeps its slot until `result` appears.
//!
//! So a restarted daemon re-attaches to running units by name, collects the ones that finished
//! meanwhile, and starts again what never started.

pub mod exec;
pub mod nspawn;
pub mod phases;
pub mod sbuild;

use crate::chroot::Places;
use crate::deb::Changes;
use crate::events::{Event, EventType};
use crate::instance::Instance;
use crate::packager::BuildRequest;
use crate::store::{self, BUILDS, StoreError};
use crate::systemd::bus::{Systemd, TransientService, UnitState};
use redb::ReadableTable;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Gpg(#[from] crate::gpg::GpgError),
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
    #[error("build request {bkey}: {why}")]
    Request { bkey: String, why: String },
    #[error("systemd: {0}")]
    Systemd(#[from] zbus::Error),
    #[error("no build {0} is queued or running; see `status` for the build queue")]
    NoSuchBuild(String),
}
crate::from_redb_errors!(BuilderError);

type Result<T> = std::result::Result<T, BuilderError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuilderError {
    let path = path.into();
    move |source| BuilderError::Io { path, source }
}

/// Resource limits of every build unit.
#[derive(Debug, Clone)]
pub struct Limits {
    pub slots: usize,
    pub memory_max: Option<u64>,
    pub cpu_weight: Option<u64>,
    pub tasks_max: Option<u64>,
    pub runtime_max_sec: u64,
    /// The user builds run as (default: the daemon's own).
    pub user: Option<String>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_max: None,
            cpu_weight: Some(50),
            tasks_max: Some(4096),
            runtime_max_sec: 6 * 3600,
            user: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JobState {
    /// Recorded, unit not (yet) started: started again after a crash.
    Starting,
    Running,
    /// The result is in incoming; the row goes when the packager took it off the queue.
    Finished,
}

/// One build (table `builds`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub bkey: String,
    pub arch: String,
    pub source: String,
    pub version: String,
    pub distribution: String,
    pub unit: String,
    pub dir: PathBuf,
    pub state: JobState,
    /// The child's process id (child-process runner only).
    pub pid: Option<i32>,
    #[serde(with = "crate::events::iso")]
    pub started: chrono::DateTime<chrono::Utc>,
    /// Its build slot, which names its apt archive cache: no two running builds share one, so
    /// apt's lock on it is never contended.
    #[serde(default)]
    pub slot: usize,
}

/// Every build the table knows: running, and finished but not yet collected.
pub fn jobs(store: &store::Store) -> std::result::Result<Vec<Job>, StoreError> {
    let tx = store.read()?;
    let t = tx.open_table(BUILDS)?;
    let mut out = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        out.push(store::decode::<Job>(k.value(), v.value())?);
    }
    Ok(out)
}

/// Who runs build commands.
pub enum Runner {
    Systemd(Systemd),
    /// No systemd bus: child processes in their own process group.
    Child(Mutex<HashMap<String, std::process::Child>>),
}

impl Runner {
    /// systemd over D-Bus if it answers, else child processes; says which in the log.
    pub async fn detect() -> Runner {
        match Systemd::connect().await {
            Ok(s) => Runner::Systemd(s),
            Err(e) => {
                tracing::info!(
                    "no systemd on the system bus ({e}): builds run as child processes in their own process group"
                );
                Runner::Child(Mutex::new(HashMap::new()))
            }
        }
    }

    pub fn is_systemd(&self) -> bool {
        matches!(self, Runner::Systemd(_))
    }
}

/// `buildbay-build-<source>-<version>-<timecode>-<arch>.service`, escaped as systemd-escape does.
pub fn unit_name(bkey: &str) -> String {
    let mut s = String::from("buildbay-build-");
    for (i, b) in bkey.replace('/', "-").bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' => s.push(b as char),
            b'.' if i > 0 => s.push('.'),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push_str(".service");
    s
}

/// Where the build directories are, under the state directory.
pub const BUILDS_DIR: &str = "var/builds";

/// The live output of a build, in its directory.
pub const LIVE_LOG: &str = "buildlog";
/// Where the per-slot apt archive caches are, under the state directory.
pub const APT_CACHE_DIR: &str = "var/cache/apt-archives";
/// Written by the relay when a build succeeded and an after script (lintian in ignore mode)
/// still runs in its unit: the build is finished, its result can go.
pub const BUILT: &str = "built";
/// The after script (lintian in ignore mode), in the build directory.
pub const AFTER_SCRIPT: &str = ".lintian";
/// The after script's output, in the build directory (served beside the build log).
pub const AFTER_LOG: &str = "lintian.log";

pub struct Builder {
    pub runner: Runner,
    pub limits: Limits,
    pub places: Places,
    /// `var/builds` under the state directory.
    pub root: PathBuf,
    /// Where results go: the incoming directory.
    pub incoming: PathBuf,
    /// The running binary, for `builder-exec`.
    pub exe: PathBuf,
    /// Held by `pass` and `cancel`: only one of them collects a build's result. The periodic
    /// chroot upgrade holds it too, so no build starts on an image while it changes.
    pub turn: tokio::sync::Mutex<()>,
    /// How often active chroot images are upgraded (their check: apt-get update and
    /// dist-upgrade inside), when no build runs. `None`: never.
    pub chroot_upgrade: Option<std::time::Duration>,
}

/// What one builder pass did.
pub struct Pass {
    pub events: Vec<Event>,
    /// A result was dropped into incoming.
    pub delivered: bool,
    /// Builds running after the pass.
    pub running: usize,
}

/// What a build's `result` file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub service_result: String,
    pub exit_code: String,
    pub exit_status: String,
}

impl Ended {
    pub fn new(service_result: &str, exit_code: &str, exit_status: &str) -> Ended {
        Ended { service_result: service_result.into(), exit_code: exit_code.into(), exit_status: exit_status.into() }
    }

    /// A process's exit code as systemd would report its unit (128 + N: killed by signal N).
    pub fn of_exit(code: i32) -> Ended {
        match code {
            0 => Ended::new("success", "exited", "0"),
            c if c > 128 => Ended::new("signal", "killed", &(c - 128).to_string()),
            c => Ended::new("exit-code", "exited", &c.to_string()),
        }
    }

    /// Record it as a build's `result` file.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::archive::publish::write_file_synced(path, self.line().as_bytes())
    }

    pub fn parse(text: &str) -> Ended {
        let mut w = text.split_whitespace().map(str::to_owned);
        Ended {
            service_result: w.next().unwrap_or_default(),
            exit_code: w.next().unwrap_or_default(),
            exit_status: w.next().unwrap_or_default(),
        }
    }

    pub fn line(&self) -> String {
        format!("{} {} {}\n", self.service_result, self.exit_code, self.exit_status)
    }

    /// Why the unit ended badly, when systemd stopped it (limits), not the build itself.
    pub fn limit_reason(&self, limits: &Limits) -> Option<String> {
        match self.service_result.as_str() {
            "timeout" => {
                Some(format!("the build ran longer than RuntimeMaxSec={}s and was stopped", limits.runtime_max_sec))
            }
            "oom-kill" => Some(format!(
                "the build exceeded MemoryMax={} and was killed",
                limits.memory_max.map_or("(unset)".into(), |m| m.to_string())
            )),
            "signal" | "core-dump" if self.exit_status == "KILL" || self.exit_status == "9" => {
                Some("the build was killed (SIGKILL)".into())
            }
            _ => None,
        }
    }
}

impl Builder {
    pub fn dir(&self, bkey: &str) -> PathBuf {
        self.root.join(bkey)
    }

    /// The apt archive caches, one per slot (`var/cache/apt-archives/<slot>`).
    pub fn apt_caches(&self) -> PathBuf {
        // `root` is `<state>/var/builds`.
        self.root.parent().and_then(Path::parent).unwrap_or(&self.root).join(APT_CACHE_DIR)
    }

    /// Every build row.
    fn put_job(tx: &redb::WriteTransaction, job: &Job) -> Result<()> {
        tx.open_table(BUILDS)?.insert(job.bkey.as_str(), store::encode(job).as_slice())?;
        Ok(())
    }

    /// One pass: collect finished builds, drop rows the packager is done with, start queued
    /// requests into free slots.
    pub async fn pass(&self, inst: &Instance) -> Result<Pass> {
        let _turn = self.turn.lock().await;
        let mut events = Vec::new();
        let mut delivered = false;
        let queue = crate::packager::build_queue(&inst.store)?;
        let queued: std::collections::HashSet<&str> = queue.iter().map(|r| r.bkey.as_str()).collect();
        let mut running = 0;
        let mut known = std::collections::HashSet::new();
        for job in jobs(&inst.store)? {
            known.insert(job.bkey.clone());
            let after_script_running =
                job.state == JobState::Finished && !job.dir.join("result").exists() && !self.unit_ended(&job).await?;
            match job.state {
                // Built, and its unit still runs the after script (lintian in ignore mode): it
                // holds its slot (and keeps the image from being upgraded) until the unit ends.
                JobState::Finished if after_script_running => {
                    running += 1;
                }
                JobState::Finished if !queued.contains(job.bkey.as_str()) => {
                    let tx = inst.store.write()?;
                    tx.open_table(BUILDS)?.remove(job.bkey.as_str())?;
                    tx.commit()?;
                }
                JobState::Finished => {}
                JobState::Starting => {
                    // Never known to have started: start it again (a unit of that name may exist).
                    if let Runner::Systemd(s) = &self.runner {
                        s.stop(&job.unit).await?;
                    }
                    let tx = inst.store.write()?;
                    tx.open_table(BUILDS)?.remove(job.bkey.as_str())?;
                    tx.commit()?;
                    known.remove(&job.bkey);
                }
                JobState::Running => {
                    if self.poll(&job).await? {
                        events.push(self.finish(inst, job)?);
                        delivered = true;
                    } else {
                        running += 1;
                    }
                }
            }
        }
        for req in queue {
            if running >= self.limits.slots {
                break;
            }
            if known.contains(&req.bkey) {
                continue;
            }
            match self.start(inst, &req).await {
                Ok(e) => {
                    events.push(e);
                    running += 1;
                }
                Err(e) => {
                    tracing::error!(bkey = %req.bkey, "cannot start the build: {e}");
                    events.push(self.fail_unstarted(inst, &req, &e.to_string())?);
                    delivered = true;
                }
            }
        }
        Ok(Pass { events, delivered, running })
    }

    /// Whether a running build has ended: it is `built` (its unit may go on with the after
    /// script), or its unit ended (see `unit_ended`).
    async fn poll(&self, job: &Job) -> Result<bool> {
        if job.dir.join(BUILT).exists() {
            return Ok(true);
        }
        self.unit_ended(job).await
    }

    /// Whether a build's unit (or child) has ended: its `result` exists, or it vanished without
    /// one (then `result` says "lost"). Reaps the child, and stops one past RuntimeMaxSec.
    async fn unit_ended(&self, job: &Job) -> Result<bool> {
        let result = job.dir.join("result");
        if result.exists() {
            if let Runner::Child(children) = &self.runner
                && let Some(mut child) = children.lock().unwrap_or_else(|p| p.into_inner()).remove(&job.bkey)
            {
                // The relay wrote the result as its last act: reap it.
                let _ = child.wait();
            }
            return Ok(true);
        }
        let gone = match &self.runner {
            Runner::Systemd(s) => s.state(&job.unit).await? == UnitState::Gone,
            Runner::Child(children) => {
                let mut map = children.lock().unwrap_or_else(|p| p.into_inner());
                match map.get_mut(&job.bkey) {
                    Some(child) => match child.try_wait().map_err(io_err(&job.dir))? {
                        Some(status) => {
                            map.remove(&job.bkey);
                            write_result(&result, &Ended::of_exit(exec::exit_code(status)))?;
                            return Ok(true);
                        }
                        None => {
                            let limit = self.limits.runtime_max_sec as i64;
                            if (chrono::Utc::now() - job.started).num_seconds() > limit {
                                exec::kill_group(child.id() as i32);
                                let _ = child.wait();
                                map.remove(&job.bkey);
                                write_result(&result, &Ended::new("timeout", "killed", "KILL"))?;
                                return Ok(true);
                            }
                            false
                        }
                    },
                    // Started by an earlier daemon: alive while its process is.
                    None => !job.pid.is_some_and(exec::alive),
                }
            }
        };
        if gone && !result.exists() {
            // ExecStopPost always runs; without its file the unit was lost (e.g. a reboot).
            write_result(&result, &Ended::new("lost", "-", "-"))?;
        }
        Ok(gone)
    }

    /// The row of a build of `req`, started now.
    fn job(&self, req: &BuildRequest, source: &str, version: &str, state: JobState) -> Job {
        Job {
            bkey: req.bkey.clone(),
            arch: req.arch.clone(),
            source: source.to_owned(),
            version: version.to_owned(),
            distribution: req.distribution.clone(),
            unit: unit_name(&req.bkey),
            dir: self.dir(&req.bkey),
            state,
            pid: None,
            started: chrono::Utc::now(),
            slot: 0,
        }
    }

    /// Verify and unpack a request, write the build's files, record it, start its unit.
    async fn start(&self, inst: &Instance, req: &BuildRequest) -> Result<Event> {
        let dir = self.dir(&req.bkey);
        // The lowest slot no other running build holds.
        let taken: Vec<usize> =
            jobs(&inst.store)?.into_iter().filter(|j| j.state != JobState::Finished).map(|j| j.slot).collect();
        let slot = (0..).find(|s| !taken.contains(s)).unwrap_or_default();
        let cache = self.apt_caches().join(slot.to_string());
        std::fs::create_dir_all(cache.join("partial")).map_err(io_err(&cache))?;
        let plan = sbuild::prepare(inst, req, &dir, &self.places, self.runner.is_systemd(), &cache)?;
        let mut job = self.job(req, &plan.source, &plan.version, JobState::Starting);
        job.slot = slot;
        let unit = job.unit.clone();
        let tx = inst.store.write()?;
        Self::put_job(&tx, &job)?;
        tx.commit()?;
        // The relay: `buildbay builder-exec --build-log … [--result …] -- sbuild …`.
        let relay = |result: bool| -> Vec<String> {
            let mut argv = vec![self.exe.display().to_string(), "builder-exec".into(), "--build-log".into()];
            argv.push(dir.join(LIVE_LOG).display().to_string());
            if result {
                argv.extend(["--result".to_owned(), dir.join("result").display().to_string()]);
            }
            if let Some(after) = &plan.after {
                argv.extend(["--after".to_owned(), after.display().to_string()]);
            }
            for note in &plan.notes {
                argv.extend(["--note".to_owned(), note.clone()]);
            }
            argv.push("--".into());
            argv.extend(plan.argv.iter().cloned());
            argv
        };
        match &self.runner {
            Runner::Systemd(s) => {
                let svc = TransientService {
                    name: unit.clone(),
                    description: format!("buildbay build {} {} {}", plan.source, plan.version, req.arch),
                    exec_start: relay(false),
                    exec_stop_post: vec![
                        self.exe.display().to_string(),
                        "builder-exec".into(),
                        "--stop-post".into(),
                        dir.join("result").display().to_string(),
                    ],
                    working_directory: dir.display().to_string(),
                    user: self.limits.user.clone(),
                    environment: plan.env.clone(),
                    memory_max: self.limits.memory_max,
                    cpu_weight: self.limits.cpu_weight,
                    tasks_max: self.limits.tasks_max,
                    runtime_max_sec: Some(self.limits.runtime_max_sec),
                    log_extra_fields: vec![
                        format!("BUILDBAY_SOURCE={}", plan.source),
                        format!("BUILDBAY_VERSION={}", plan.version),
                        format!("BUILDBAY_ARCH={}", req.arch),
                        format!("BUILDBAY_BKEY={}", req.bkey),
                    ],
                };
                s.start(&svc).await?;
            }
            Runner::Child(children) => {
                // No ExecStopPost here: the relay records how the build ended.
                let child = exec::spawn_group(&relay(true), &dir, &plan.env).map_err(io_err(&dir))?;
                job.pid = Some(child.id() as i32);
                children.lock().unwrap_or_else(|p| p.into_inner()).insert(req.bkey.clone(), child);
            }
        }
        job.state = JobState::Running;
        tracing::info!(bkey = %req.bkey, unit = %unit, systemd = self.runner.is_systemd(), "build started");
        let event = Event::new(EventType::Building, &req.distribution, &plan.source, &plan.version)
            .with("architecture", req.arch.as_str())
            .with("bkey", req.bkey.as_str())
            .with("unit", unit.as_str())
            .with("backend", if plan.machine.is_some() { "nspawn" } else { "sbuild" });
        let event = match &plan.machine {
            Some(m) => event.with("machine", m.as_str()),
            None => event,
        };
        let tx = inst.store.write()?;
        Self::put_job(&tx, &job)?;
        event.record(&tx)?;
        tx.commit()?;
        Ok(event)
    }

    /// A request that cannot even start (bad signature, no chroot): a failed result, so the
    /// upload ends FAILED with the reason instead of waiting forever.
    fn fail_unstarted(&self, inst: &Instance, req: &BuildRequest, why: &str) -> Result<Event> {
        let dir = self.dir(&req.bkey);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let (source, version) = req.bkey.split('/').next().zip(req.bkey.split('/').nth(1)).unwrap_or_default();
        let job = self.job(req, source, version, JobState::Running);
        std::fs::write(dir.join("internal-error"), why).map_err(io_err(&dir))?;
        write_result(&dir.join("result"), &Ended::new("error", "-", "-"))?;
        self.finish(inst, job)
    }

    /// Turn a finished build into a signed result in incoming, and record BUILT.
    fn finish(&self, inst: &Instance, mut job: Job) -> Result<Event> {
        // `built` is how the build itself ended; a later `result` is about its after script.
        let ended = std::fs::read_to_string(job.dir.join(BUILT))
            .or_else(|_| std::fs::read_to_string(job.dir.join("result")))
            .unwrap_or_default();
        let ended = Ended::parse(&ended);
        let result = sbuild::result(inst, &job, &ended, &self.limits, &self.incoming)?;
        job.state = JobState::Finished;
        let phases = phases::summary(&std::fs::read_to_string(job.dir.join(phases::FILE)).unwrap_or_default());
        let phases_line = phases.iter().map(|(n, s)| format!("{n} {s:.2} s")).collect::<Vec<_>>().join(", ");
        tracing::info!(bkey = %job.bkey, status = %result.status, "build finished: {} ({phases_line})", ended.line().trim());
        let phases: serde_json::Map<String, serde_json::Value> =
            phases.into_iter().map(|(n, s)| (n.to_owned(), s.into())).collect();
        let event = Event::new(EventType::Built, &job.distribution, &job.source, &job.version)
            .with("architecture", job.arch.as_str())
            .with("bkey", job.bkey.as_str())
            .with("status", result.status.as_str())
            .with("buildlog", result.buildlog.as_str())
            .with("duration", (chrono::Utc::now() - job.started).num_seconds())
            .with("phases", phases);
        // Lintian in ignore mode runs after this result, in the build's unit.
        let event = if result.status == "successful" && job.dir.join(AFTER_SCRIPT).exists() {
            event.with("lintian", format!("{}/{AFTER_LOG}", job.bkey))
        } else {
            event
        };
        let tx = inst.store.write()?;
        Self::put_job(&tx, &job)?;
        event.record(&tx)?;
        tx.commit()?;
        Ok(event)
    }

    /// `cancel`: stop a running build (its whole cgroup), or drop a queued one; either way the
    /// upload gets a failed result that says who canceled it.
    pub async fn cancel(&self, inst: &Instance, bkey: &str, by: &str) -> Result<Vec<Event>> {
        // Without the turn, a pass could see the result first and collect it twice.
        let _turn = self.turn.lock().await;
        let job = jobs(&inst.store)?.into_iter().find(|j| j.bkey == bkey);
        match job {
            Some(job) if job.state == JobState::Running => {
                std::fs::write(job.dir.join("canceled"), by).map_err(io_err(&job.dir))?;
                match &self.runner {
                    Runner::Systemd(s) => s.stop(&job.unit).await?,
                    Runner::Child(children) => {
                        let mut map = children.lock().unwrap_or_else(|p| p.into_inner());
                        let pid = map.get(&job.bkey).map(|c| c.id() as i32).or(job.pid);
                        if let Some(pid) = pid {
                            exec::kill_group(pid);
                        }
                        if let Some(mut c) = map.remove(&job.bkey) {
                            let _ = c.wait();
                        }
                        write_result(&job.dir.join("result"), &Ended::new("canceled", "killed", "TERM"))?;
                    }
                }
                // Wait for ExecStopPost's result (StopUnit returns when the job is queued).
                for _ in 0..100 {
                    if job.dir.join("result").exists() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Ok(vec![self.finish(inst, job)?])
            }
            Some(_) => Err(BuilderError::NoSuchBuild(bkey.to_owned())),
            None => {
                let req = crate::packager::build_queue(&inst.store)?
                    .into_iter()
                    .find(|r| r.bkey == bkey)
                    .ok_or_else(|| BuilderError::NoSuchBuild(bkey.to_owned()))?;
                Ok(vec![self.fail_unstarted(inst, &req, &format!("canceled by {by} before it started"))?])
            }
        }
    }
}

fn write_result(path: &Path, ended: &Ended) -> Result<()> {
    ended.write(path).map_err(io_err(path))
}

/// The lines of an sbuild log mini-buildd turns into `X-Mini-Buildd-Sbuild-<Name>` fields.
pub fn sbuild_fields(log: &str) -> Vec<(String, String)> {
    const NAMES: &[&str] =
        &["Status", "Lintian", "Piuparts", "Autopkgtest", "Build-Time", "Package-Time", "Space", "Build-Space"];
    let mut out: Vec<(String, String)> = Vec::new();
    for line in log.lines() {
        if let Some((k, v)) = line.split_once(": ")
            && NAMES.contains(&k)
        {
            out.retain(|(name, _)| name != k);
            out.push((k.to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// Parse sbuild's own `.changes` (unsigned) in `out`, if the build produced one.
pub(crate) fn built_changes(out: &Path) -> Option<(PathBuf, Changes)> {
    let entries = std::fs::read_dir(out).ok()?;
    let path = entries.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "changes"))?;
    let text = std::fs::read_to_string(&path).ok()?;
    Some((path, Changes::parse(&text).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_escape_like_systemd() {
        assert_eq!(
            unit_name("hello/1:1.0~bb12+1/20260101/amd64"),
            "buildbay-build-hello-1\\x3a1.0\\x7ebb12\\x2b1-20260101-amd64.service"
        );
    }

    #[test]
    fn sbuild_summary_becomes_fields() {
        let log = "Status: failed\nnoise: x\nLintian: pass\nBuild-Time: 3\nStatus: successful\nSpace: 132\n";
        let f = sbuild_fields(log);
        assert_eq!(
            f,
            vec![
                ("Lintian".to_owned(), "pass".to_owned()),
                ("Build-Time".to_owned(), "3".to_owned()),
                ("Status".to_owned(), "successful".to_owned()),
                ("Space".to_owned(), "132".to_owned()),
            ]
        );
    }

    #[test]
    fn limits_are_named_in_the_reason() {
        let l = Limits { memory_max: Some(100 << 20), runtime_max_sec: 60, ..Limits::default() };
        assert!(Ended::parse("timeout killed KILL").limit_reason(&l).unwrap().contains("RuntimeMaxSec=60s"));
        assert!(Ended::parse("oom-kill killed KILL").limit_reason(&l).unwrap().contains("MemoryMax=104857600"));
        assert_eq!(Ended::parse("exit-code exited 2").limit_reason(&l), None);
        assert_eq!(Ended::parse("success exited 0").line(), "success exited 0\n");
    }
}
