//! The builder (mini-buildd §5.3): takes build requests from the queue, runs each through its
//! [`Backend`](backend::Backend) (sbuild, nspawn) under a [`Runner`](runner::Runner) (a
//! transient systemd unit, or a child process without systemd), and turns what the build left
//! behind into a signed build result that it drops into the daemon's own results directory,
//! where the packager collects it like any remote builder's.
//!
//! A build's whole state is its directory `var/builds/<bkey>/` plus one row in `builds`:
//! - `buildlog`: the output, written by `buildbay builder-exec`, which also copies it to the journal;
//! - `result`: `SERVICE_RESULT EXIT_CODE EXIT_STATUS`, written by the unit's ExecStopPost (or by
//!   the relay for a child process) however the unit ended. Its presence means "finished";
//! - `built`: written by the relay when a build succeeded and an after step (lintian in
//!   ignore mode) still runs in its unit. The build is finished (its result goes out), the unit
//!   not yet: it keeps its slot until `result` appears.
//!
//! So a restarted daemon re-attaches to running units by name, collects the ones that finished
//! meanwhile, and starts again what never started.
//!
//! A build never runs as root: each slot has its own unprivileged build user (sbuild) or uid
//! range (nspawn), and nothing the build wrote is executed or followed by the host.

pub mod apt_cache;
pub mod backend;
pub mod exec;
pub mod machine_root;
pub mod phases;
pub mod result;
pub mod runner;
pub mod setup;
pub mod slots;
pub mod stage;

use crate::chroot::{Chroot, Places};
use crate::events::{Event, EventType};
use crate::instance::Instance;
use crate::packager::QueuedBuild;
use crate::protocol::BuildKey;
use crate::store::{self, BUILDS, StoreError};
use redb::ReadableTable;
use runner::{Launch, Runner};
use std::path::{Path, PathBuf};

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
    /// The request itself cannot be built (final: its upload fails with the reason).
    #[error("build request {bkey}: {why}")]
    Request { bkey: BuildKey, why: String },
    #[error("systemd: {0}")]
    Systemd(#[from] zbus::Error),
    #[error("no build {0} is queued or running; see `status` for the build queue")]
    NoSuchBuild(String),
    #[error("the build users: {0}")]
    Users(String),
    #[error("{0}")]
    Helper(String),
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
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_max: None,
            cpu_weight: Some(50),
            tasks_max: Some(4096),
            runtime_max_sec: 6 * 3600,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JobState {
    /// Recorded, unit not (yet) started: started again after a crash.
    Starting,
    Running,
    /// The result is delivered; the row goes when the packager took it off the queue.
    Finished,
}

pub use crate::protocol::Phase;

/// One build (table `builds`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub bkey: BuildKey,
    pub distribution: crate::deb::Dist,
    pub unit: String,
    pub dir: PathBuf,
    pub state: JobState,
    /// The child's process id (child-process runner only).
    pub pid: Option<i32>,
    #[serde(with = "crate::events::iso")]
    pub started: chrono::DateTime<chrono::Utc>,
    /// Its build slot, which names its build user, uid range and apt archive cache: no two
    /// running builds share one.
    #[serde(default)]
    pub slot: usize,
    /// After a successful build, its checks run in a unit of their own (an sbuild build in a
    /// systemd unit with piuparts or autopkgtest).
    #[serde(default)]
    pub checks_unit: bool,
    /// What its unit (`unit`) does now.
    #[serde(default)]
    pub phase: Phase,
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

/// `buildbay-build-<source>_<version>_<timecode>_<arch>.service`, escaped as systemd-escape does.
/// `_` separates the parts because none of them may contain it (a `-` would make `a-1`/`1-1`
/// and `a`/`1-1-1` the same unit).
pub fn unit_name(bkey: &BuildKey) -> String {
    unit_name_of("buildbay-build-", bkey)
}

/// `buildbay-check-…service`: the unit of a build's checks (see [`Phase::Checks`]).
pub fn check_unit_name(bkey: &BuildKey) -> String {
    unit_name_of("buildbay-check-", bkey)
}

fn unit_name_of(prefix: &str, bkey: &BuildKey) -> String {
    let mut s = String::from(prefix);
    for (i, b) in bkey.to_string().replace('/', "_").bytes().enumerate() {
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
/// Where build logs are kept (`<logs>/<bkey>/`), under the state directory: the final build log
/// and lintian's after-result log outlive the build's directory.
pub const LOGS_DIR: &str = "var/logs";
/// At most this much of a lintian log is kept.
const MAX_KEPT_LOG: u64 = 32 << 20;
/// Where this builder's results go, under the state directory: only the daemon writes there.
pub use crate::incoming::RESULTS_DIR;
/// The live output of a build, in its directory.
pub const LIVE_LOG: &str = "buildlog";
/// Where the per-slot apt archive caches are, under the state directory.
pub const APT_CACHE_DIR: &str = "var/cache/apt-archives";
/// Written by the relay when a build succeeded and an after step (lintian in ignore mode)
/// still runs in its unit: the build is finished, its result can go.
pub const BUILT: &str = "built";
/// The after step's output, in the build directory (served beside the build log).
pub const AFTER_LOG: &str = "lintian.log";
/// The logs of the checks in ignore mode, which run after the result (lintian's first), each
/// named by its check (`autopkgtest.log`), kept and served beside the build log.
pub const AFTER_LOGS: [&str; 3] = [AFTER_LOG, "piuparts.log", "autopkgtest.log"];

/// The after log of a check.
pub fn after_log(check: crate::protocol::Check) -> &'static str {
    match check {
        crate::protocol::Check::Lintian => AFTER_LOGS[0],
        crate::protocol::Check::Piuparts => AFTER_LOGS[1],
        crate::protocol::Check::Autopkgtest => AFTER_LOGS[2],
    }
}
/// The verdicts of the checks that ran after the build (or why they did not run), in sbuild's
/// summary form (`Autopkgtest: pass`): written by the host, never by the build.
pub const CHECKS: &str = "checks";
/// The build log's length when the build ended, written by the host before a check appends its
/// output there: sbuild's summary is read only up to it (a test's output could print one).
pub const BUILD_END: &str = "buildlog.end";
/// How the unit ended, in the build directory.
pub const RESULT: &str = "result";
/// How the build's unit ended, once its checks run in a unit of their own (whose end is then
/// [`RESULT`]).
pub const BUILD_RESULT: &str = "result.build";
/// The build's own output directory, in the build directory, once sanitised.
pub const OUT: &str = "out";
/// Where the build writes its output (`<dir>/.writing/out`): a directory only its owner (root
/// when a helper stages) enters, so that nothing the build left (a setuid file, a file with
/// capabilities) is reachable on the host before it is sanitised and moved to [`OUT`].
pub const WRITING: &str = ".writing";

/// Where the build in `dir` writes its output.
pub fn writing_out(dir: &std::path::Path) -> PathBuf {
    dir.join(WRITING).join(OUT)
}

pub struct Builder {
    /// Stages and runs the builds (the daemon itself, or the root helper).
    pub runner: Box<dyn Runner>,
    pub limits: Limits,
    pub places: Places,
    /// The build directories (`var/builds` under the state directory, or the helper's).
    pub root: PathBuf,
    /// Where results go: the daemon's results directory.
    pub results: PathBuf,
    /// Where build logs are kept after their build directory is gone ([`LOGS_DIR`]).
    pub logs: PathBuf,
    /// The slots' apt archive caches (emptied after an image upgrade); `None`: the root
    /// helper's, which empties them after each check.
    pub caches: Option<PathBuf>,
    /// Held by `pass` and `cancel`: only one of them collects a build's result. The chroot
    /// upkeep holds it too, so no build starts on an image while it changes.
    pub turn: tokio::sync::Mutex<()>,
    /// Chroots (`codename:arch`) being made now: their build requests wait for them, queued,
    /// instead of failing for want of the chroot.
    pub preparing: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Builds told (in the journal) that they wait for a failing chroot: each is told once.
    pub waiting: std::sync::Mutex<std::collections::BTreeSet<BuildKey>>,
}

/// What becomes of a build whose checks run in a unit of their own, once a pass looked at it.
enum AfterBuild {
    /// It keeps its slot: it builds, or its checks run.
    Hold,
    /// It is finished, with the builder's reason why it could not run, if any.
    Finish(Option<String>),
}

/// What one builder pass did.
pub struct Pass {
    pub events: Vec<Event>,
    /// A result was delivered.
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
        crate::store::write_file_synced(path, self.line().as_bytes())
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

/// Read a small file the host wrote into a build directory (a marker), bounded.
pub(crate) fn read_marker(path: &Path) -> Option<String> {
    use std::io::Read;
    let (f, _) = crate::protocol::tar::open_regular(path).ok()?;
    let mut s = String::new();
    f.take(4096).read_to_string(&mut s).ok()?;
    Some(s)
}

impl Builder {
    pub fn dir(&self, bkey: &BuildKey) -> PathBuf {
        self.root.join(bkey.rel_path())
    }

    /// The apt archive caches, one per slot (`<caches>/<slot>`), if they are the daemon's.
    pub fn apt_caches(&self) -> Option<PathBuf> {
        self.caches.clone()
    }

    fn put_job(tx: &redb::WriteTransaction, job: &Job) -> Result<()> {
        tx.open_table(BUILDS)?.insert(job.bkey.to_string().as_str(), store::encode(job).as_slice())?;
        Ok(())
    }

    fn drop_job(inst: &Instance, bkey: &BuildKey) -> Result<()> {
        let tx = inst.store.write()?;
        tx.open_table(BUILDS)?.remove(bkey.to_string().as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// One pass: collect finished builds, drop rows the packager is done with, start queued
    /// requests into free slots.
    pub async fn pass(&self, inst: &Instance) -> Result<Pass> {
        let _turn = self.turn.lock().await;
        let mut events = Vec::new();
        let mut delivered = false;
        let queue = crate::packager::build_queue(&inst.store)?;
        let queued: std::collections::HashSet<&BuildKey> = queue.iter().map(|r| &r.bkey).collect();
        // The slots running builds hold: a build still running, or a finished one whose unit
        // still runs its after step (lintian in ignore mode). One list, so a slot is only ever
        // given to a build when no other holds it, and only below `limits.slots`.
        let mut held: Vec<usize> = Vec::new();
        let mut known = std::collections::HashSet::new();
        for job in jobs(&inst.store)? {
            known.insert(job.bkey.clone());
            let after_step_running =
                job.state == JobState::Finished && !job.dir.join(RESULT).exists() && !self.runner.ended(&job).await?;
            match job.state {
                // Built, and its unit still runs the after step (lintian in ignore mode): it
                // holds its slot (and keeps the image from being upgraded) until the unit ends.
                JobState::Finished if after_step_running => held.push(job.slot),
                // The packager has its result and the unit has ended: keep its logs, remove its
                // directory (the debs, the sources), then forget it. A directory that cannot be
                // removed now is tried again next pass.
                JobState::Finished if !queued.contains(&job.bkey) => match self.retire(&job).await {
                    Ok(()) => Self::drop_job(inst, &job.bkey)?,
                    Err(e) => tracing::warn!(bkey = %job.bkey, "cannot remove the build directory yet: {e}"),
                },
                JobState::Finished => {}
                JobState::Starting => {
                    // Never known to have started: start it again (a unit of that name may exist).
                    self.runner.stop(&job).await?;
                    Self::drop_job(inst, &job.bkey)?;
                    known.remove(&job.bkey);
                }
                // Its checks run in a unit of their own once it built.
                JobState::Running if job.checks_unit && job.phase == Phase::Build => {
                    match self.after_build(inst, &job, &queue).await? {
                        AfterBuild::Hold => held.push(job.slot),
                        AfterBuild::Finish(internal) => {
                            events.push(self.finish_with(inst, job, internal)?);
                            delivered = true;
                        }
                    }
                }
                JobState::Running => {
                    let ended = self.runner.ended(&job).await?;
                    if job.dir.join(BUILT).exists() || ended {
                        // Built, its unit still running the after step: it keeps its slot.
                        if !ended {
                            held.push(job.slot);
                        }
                        events.push(self.finish(inst, job)?);
                        delivered = true;
                    } else {
                        held.push(job.slot);
                    }
                }
            }
        }
        let preparing = self.preparing.lock().map(|p| p.clone()).unwrap_or_default();
        // Chroots that are not active (their upgrade failed, or an admin deactivated them):
        // their builds wait until a check activates them, rather than build on an image apt
        // could not upgrade. (A build for a chroot with no object fails at its start.)
        let inactive: std::collections::BTreeMap<String, String> = inst
            .list::<Chroot>()?
            .into_iter()
            .filter(|c| !c.status.is_active())
            .map(|c| (c.id(), c.status.message.clone().unwrap_or_else(|| c.status.word().to_lowercase())))
            .collect();
        // With remotes, the dispatcher hands each request to a builder first; without, they
        // are all this instance's.
        let remotes = !inst.active_remotes()?.is_empty();
        for req in queue {
            let Some(slot) = free_slot(&held, self.limits.slots) else {
                break;
            };
            if !(req.is_local() || (req.handed.is_none() && !remotes)) {
                continue;
            }
            let chroot = Chroot::new(req.distribution.codename.clone(), req.bkey.arch.clone());
            if known.contains(&req.bkey) || preparing.contains(&chroot.id()) {
                continue;
            }
            if let Some(why) = inactive.get(&chroot.id()) {
                if self.told_waiting(&req.bkey) {
                    tracing::warn!(bkey = %req.bkey, chroot = %chroot.id(), "the build waits: the chroot is not active ({why}); it starts once a check activates it (cronjob_chroot_upkeep checks again one whose upgrade failed)");
                }
                continue;
            }
            match self.start(inst, &req, slot).await {
                Ok(Some(e)) => {
                    events.push(e);
                    held.push(slot);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(bkey = %req.bkey, "cannot start the build: {e}");
                    events.push(self.fail_unstarted(inst, &req, &e.to_string())?);
                    delivered = true;
                }
            }
        }
        Ok(Pass { events, delivered, running: held.len() })
    }

    /// A build whose checks run in a unit of their own, while its row says it builds: it holds
    /// its slot (building, or its checks just started), or it is finished (with the builder's
    /// reason, if any). Nothing in its directory counts until its unit is gone: root in its
    /// session writes there; its checks' verdicts count only once the row says their unit was
    /// started ([`Builder::finish_with`]).
    async fn after_build(&self, inst: &Instance, job: &Job, queue: &[QueuedBuild]) -> Result<AfterBuild> {
        if !self.runner.unit_gone(&job.unit).await? {
            return Ok(AfterBuild::Hold);
        }
        if job.dir.join(BUILD_RESULT).exists() {
            // Started before the daemon stopped, not recorded: its running unit proves it (no
            // build reaches systemd); one that is gone leaves nothing to trust.
            if !self.runner.unit_gone(&check_unit_name(&job.bkey)).await? {
                self.record_checks(inst, job)?;
                return Ok(AfterBuild::Hold);
            }
            let why = "its QA checks ended while the daemon was away; retry the upload";
            return Ok(AfterBuild::Finish(Some(why.into())));
        }
        if !build_succeeded(&job.dir) {
            return Ok(AfterBuild::Finish(None));
        }
        match self.start_checks(inst, job, queue).await {
            Ok(()) => Ok(AfterBuild::Hold),
            Err(e @ (BuilderError::Request { .. } | BuilderError::Io { .. })) => {
                Ok(AfterBuild::Finish(Some(format!("its QA checks could not start: {e}"))))
            }
            // Could not start now (the helper, systemd): again next pass.
            Err(e) => {
                tracing::warn!(bkey = %job.bkey, "cannot start the build's checks yet: {e}");
                Ok(AfterBuild::Hold)
            }
        }
    }

    /// Record that a build's checks run now, in their unit.
    fn record_checks(&self, inst: &Instance, job: &Job) -> Result<()> {
        let mut job = job.clone();
        job.phase = Phase::Checks;
        job.unit = check_unit_name(&job.bkey);
        let tx = inst.store.write()?;
        Self::put_job(&tx, &job)?;
        tx.commit()?;
        Ok(())
    }

    /// Start the checks of a build that succeeded, in a unit of their own, from its queued
    /// request (verified again by whoever stages them), and record that its unit is now theirs.
    async fn start_checks(&self, inst: &Instance, job: &Job, queue: &[QueuedBuild]) -> Result<()> {
        let q = queue.iter().find(|q| q.bkey == job.bkey).ok_or_else(|| BuilderError::Request {
            bkey: job.bkey.clone(),
            why: "its request is no longer queued".into(),
        })?;
        let certs = inst.remotes_keyring()?;
        self.runner
            .launch(Launch {
                bkey: &job.bkey,
                slot: job.slot,
                request: &q.changes,
                certs: &certs,
                distribution: &job.distribution,
                phase: Phase::Checks,
            })
            .await?;
        tracing::info!(bkey = %job.bkey, unit = %check_unit_name(&job.bkey), "the build succeeded: its QA checks started");
        self.record_checks(inst, job)
    }

    /// Keep a finished build's after logs (lintian's, the checks') beside its build log, then
    /// have the runner remove its directory.
    async fn retire(&self, job: &Job) -> Result<()> {
        let kept = self.logs.join(job.bkey.rel_path());
        for name in AFTER_LOGS {
            let after = job.dir.join(name);
            if let Ok((from, _)) = crate::protocol::tar::open_regular(&after) {
                std::fs::create_dir_all(&kept).map_err(io_err(&kept))?;
                let tmp = kept.join(format!(".{name}.tmp"));
                let mut to = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
                std::io::copy(&mut std::io::Read::take(from, MAX_KEPT_LOG), &mut to).map_err(io_err(&tmp))?;
                std::fs::rename(&tmp, kept.join(name)).map_err(io_err(&kept))?;
            }
        }
        self.runner.remove(job).await
    }

    /// The row of a build of `req`, started now.
    fn job(&self, req: &QueuedBuild, state: JobState) -> Job {
        Job {
            bkey: req.bkey.clone(),
            distribution: req.distribution.clone(),
            unit: unit_name(&req.bkey),
            dir: self.dir(&req.bkey),
            state,
            pid: None,
            started: chrono::Utc::now(),
            slot: 0,
            checks_unit: false,
            phase: Phase::Build,
        }
    }

    /// Record the build, then have the runner stage and start it in `index`, a slot no other
    /// build holds.
    async fn start(&self, inst: &Instance, q: &QueuedBuild, index: usize) -> Result<Option<Event>> {
        // Not handed out yet: it is this instance's now, unless the dispatcher gave it to a
        // remote meanwhile.
        if q.handed.is_none() && q.from == crate::packager::RequestFrom::Here {
            let own = inst.key()?.cert().fingerprint().to_hex();
            let local = crate::protocol::remote::Builder::Local;
            if !crate::packager::record_handover(&inst.store, &q.bkey, None, local, own)? {
                return Ok(None);
            }
        }
        let mut job = self.job(q, JobState::Starting);
        job.slot = index;
        let tx = inst.store.write()?;
        Self::put_job(&tx, &job)?;
        tx.commit()?;
        // A remote's request verifies against its key (the helper reads them from a file).
        let certs = inst.remotes_keyring()?;
        if matches!(q.from, crate::packager::RequestFrom::Remote { .. }) {
            inst.write_remotes_keyring()?;
        }
        let launched = self
            .runner
            .launch(Launch {
                bkey: &q.bkey,
                slot: index,
                request: &q.changes,
                certs: &certs,
                distribution: &q.distribution,
                phase: Phase::Build,
            })
            .await?;
        let mut job = launched.job;
        job.state = JobState::Running;
        job.distribution = q.distribution.clone();
        tracing::info!(bkey = %q.bkey, unit = %job.unit, slot = index, runner = self.runner.name(), "build started");
        let event = Event::new(
            EventType::Building,
            q.distribution.to_string(),
            q.bkey.source().as_str(),
            q.bkey.version().as_str(),
        )
        .with("architecture", q.bkey.arch.as_str())
        .with("bkey", q.bkey.to_string())
        .with("unit", job.unit.as_str())
        .with("backend", launched.backend.as_str());
        let event = match &launched.machine {
            Some(m) => event.with("machine", m.as_str()),
            None => event,
        };
        let tx = inst.store.write()?;
        Self::put_job(&tx, &job)?;
        event.record(&tx)?;
        tx.commit()?;
        Ok(Some(event))
    }

    /// A request that cannot even start (bad signature, no chroot): a failed result, so the
    /// upload ends FAILED with the reason instead of waiting forever.
    fn fail_unstarted(&self, inst: &Instance, q: &QueuedBuild, why: &str) -> Result<Event> {
        let job = self.job(q, JobState::Running);
        self.finish_with(inst, job, Some(why.to_owned()))
    }

    /// Turn a finished build into a signed result in the results directory, and record BUILT.
    fn finish(&self, inst: &Instance, job: Job) -> Result<Event> {
        self.finish_with(inst, job, None)
    }

    /// [`Builder::finish`], with the builder's own reason why the build could not run.
    fn finish_with(&self, inst: &Instance, mut job: Job, internal: Option<String>) -> Result<Event> {
        // `built` is how the build itself ended; a later `result` is about its after step.
        // Neither: the unit vanished without recording how (a reboot, or it never started).
        // A build whose checks run in a unit of their own but did not: neither `built` nor its
        // checks' verdicts count (root in its session could have written them).
        let trusted = !(job.checks_unit && job.phase == Phase::Build);
        let built = if trusted { read_marker(&job.dir.join(BUILT)) } else { None };
        let ended = built.or_else(|| read_marker(&job.dir.join(RESULT)));
        let ended = match (&internal, ended) {
            (Some(_), _) => Ended::new("error", "-", "-"),
            (None, Some(text)) => Ended::parse(&text),
            (None, None) => Ended::new("lost", "-", "-"),
        };
        let outcome = result::deliver(inst, &job, &ended, &self.limits, &self.results, &self.logs, internal, trusted)?;
        job.state = JobState::Finished;
        let phases = phases::summary(&read_marker(&job.dir.join(phases::FILE)).unwrap_or_default());
        let phases_line = phases.iter().map(|(n, s)| format!("{n} {s:.2} s")).collect::<Vec<_>>().join(", ");
        tracing::info!(bkey = %job.bkey, status = %outcome.status, "build finished: {} ({phases_line})", ended.line().trim());
        let phases: serde_json::Map<String, serde_json::Value> =
            phases.into_iter().map(|(n, s)| (n.to_owned(), s.into())).collect();
        let event = Event::new(
            EventType::Built,
            job.distribution.to_string(),
            job.bkey.source().as_str(),
            job.bkey.version().as_str(),
        )
        .with("architecture", job.bkey.arch.as_str())
        .with("bkey", job.bkey.to_string())
        .with("status", outcome.status.as_str())
        .with("buildlog", format!("{}/{}", job.bkey, job.bkey.buildlog_name()))
        .with("duration", (chrono::Utc::now() - job.started).num_seconds())
        .with("phases", phases);
        // The checks in ignore mode run after this result, in the build's unit: their logs.
        let mut event = event;
        if outcome.status == "successful" {
            for check in &outcome.after {
                let field = check.field().to_ascii_lowercase();
                event = event.with(&field, format!("{}/{}", job.bkey, after_log(*check)));
            }
        }
        let tx = inst.store.write()?;
        Self::put_job(&tx, &job)?;
        event.record(&tx)?;
        tx.commit()?;
        Ok(event)
    }

    /// Whether `bkey` is to be told it waits (the first time only; the set is bounded).
    fn told_waiting(&self, bkey: &BuildKey) -> bool {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() >= 10_000 {
            w.clear();
        }
        w.insert(bkey.clone())
    }

    /// `cancel`: stop a running build (its whole cgroup), or drop a queued one; either way the
    /// upload gets a failed result that says who canceled it.
    pub async fn cancel(&self, inst: &Instance, bkey: &BuildKey, by: &str) -> Result<Vec<Event>> {
        // Without the turn, a pass could see the result first and collect it twice.
        let _turn = self.turn.lock().await;
        let job = jobs(&inst.store)?.into_iter().find(|j| &j.bkey == bkey);
        match job {
            Some(job) if job.state == JobState::Running => {
                self.runner.cancel(&job, by).await?;
                // Wait for ExecStopPost's result (StopUnit returns when the job is queued).
                for _ in 0..100 {
                    if job.dir.join(RESULT).exists() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Ok(vec![self.finish(inst, job)?])
            }
            Some(_) => Err(BuilderError::NoSuchBuild(bkey.to_string())),
            None => {
                let req = crate::packager::build_queue(&inst.store)?
                    .into_iter()
                    .find(|r| &r.bkey == bkey)
                    .ok_or_else(|| BuilderError::NoSuchBuild(bkey.to_string()))?;
                Ok(vec![self.fail_unstarted(inst, &req, &format!("canceled by {by} before it started"))?])
            }
        }
    }
}

/// The lowest slot below `slots` that no build in `held` holds; `None`: all are busy.
fn free_slot(held: &[usize], slots: usize) -> Option<usize> {
    (0..slots).find(|s| !held.contains(s))
}

/// Empty the slots' apt archive caches (after an image upgrade: what they held is older than
/// the images now, or in them).
pub fn empty_caches(caches: &Path) {
    match std::fs::remove_dir_all(caches) {
        Ok(()) => tracing::info!(dir = %caches.display(), "emptied the apt archive caches"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %caches.display(), "cannot empty the apt archive caches: {e}"),
    }
}

/// Whether the build in `dir` ended well (its unit's `result`: exited 0).
pub(crate) fn build_succeeded(dir: &Path) -> bool {
    read_marker(&dir.join(RESULT)).is_some_and(|t| Ended::parse(&t) == Ended::of_exit(0))
}

pub(crate) fn write_result(path: &Path, ended: &Ended) -> Result<()> {
    ended.write(path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_escape_like_systemd() {
        let k: BuildKey = "hello/1:1.0~bb12+1/20260101-000000-000000/amd64".parse().unwrap();
        assert_eq!(unit_name(&k), "buildbay-build-hello_1\\x3a1.0\\x7ebb12\\x2b1_20260101-000000-000000_amd64.service");
        let a: BuildKey = "ab-1/1-1/20260101-000000-000000/amd64".parse().unwrap();
        let b: BuildKey = "ab/1-1-1/20260101-000000-000000/amd64".parse().unwrap();
        assert_ne!(unit_name(&a), unit_name(&b), "two builds, one unit");
    }

    #[test]
    fn slots_are_given_only_below_the_limit_and_only_when_free() {
        assert_eq!(free_slot(&[], 2), Some(0));
        assert_eq!(free_slot(&[0], 2), Some(1));
        assert_eq!(free_slot(&[1], 2), Some(0));
        assert_eq!(free_slot(&[0, 1], 2), None, "both held: the request stays queued");
        assert_eq!(free_slot(&[], 0), None);
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
