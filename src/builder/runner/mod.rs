//! Runners: who stages and runs a build. `systemd` starts a transient, sandboxed unit over
//! D-Bus; `child` (no systemd: a laptop, a CI host) a child process in its own process group;
//! `helper` asks the root helper, which stages and starts the unit itself, and only watches.
//! Each is one file; the builder sees only [`Runner`].

pub mod child;
pub mod helper;
pub mod systemd;

use super::backend::{After, Plan};
use super::{BuilderError, Job, Limits};
use std::path::PathBuf;

/// What to run for one build, independent of who runs it.
#[derive(Debug, Clone)]
pub struct Unit {
    /// `buildbay-build-….service`.
    pub name: String,
    pub description: String,
    /// The relay (`buildbay builder-exec --build-log …`) and the build command after `--`.
    pub relay: Vec<String>,
    /// The relay's `--result` argument, for runners without ExecStopPost.
    pub result: PathBuf,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// The exe, for ExecStopPost.
    pub exe: PathBuf,
    /// `KEY=value` journal fields of every line.
    pub log_fields: Vec<String>,
    /// The backend: what the unit's sandbox must allow.
    pub backend: crate::protocol::Backend,
    /// The build's architecture.
    pub arch: String,
    /// What of the network the build may reach.
    pub network: super::backend::Network,
    /// What the unit may write besides its build directory.
    pub writable: Vec<PathBuf>,
    /// The daemon's state directory: its key, database and spool are hidden from the unit.
    pub state: Option<PathBuf>,
}

/// The relay's arguments for what runs after a successful build: the checks (their plan in the
/// build directory) and lintian after the result.
fn after_args(after: Option<&After>, checks: Option<&std::path::Path>) -> Vec<String> {
    let mut relay = Vec::new();
    if let Some(After::Lintian { chroot, user, dir, options }) = after {
        relay.extend(["--after-lintian".to_owned(), chroot.clone()]);
        relay.extend(options.iter().map(|o| format!("--after-lintian-opt={o}")));
        relay.extend(["--after-dir".to_owned(), dir.display().to_string()]);
        if let Some(u) = user {
            relay.extend(["--after-user".to_owned(), u.clone()]);
        }
    }
    if let Some(plan) = checks {
        relay.extend(["--checks".to_owned(), plan.display().to_string()]);
    }
    relay
}

impl Unit {
    /// The unit of a build: the relay, then the build's command. Its checks and lintian after the
    /// result run in it, unless they run in a unit of their own ([`Unit::for_checks`]).
    pub fn for_build(job: &Job, plan: &Plan, limits: &Limits, exe: &std::path::Path) -> Unit {
        let dir = job.dir.clone();
        let mut relay = vec![exe.display().to_string(), "builder-exec".into(), "--build-log".into()];
        relay.push(dir.join(super::LIVE_LOG).display().to_string());
        if !plan.separate_checks {
            let checks = dir.join(super::backend::CHECKS_PLAN);
            relay.extend(after_args(plan.after.as_ref(), (!plan.checks.is_empty()).then_some(checks.as_path())));
        }
        for note in &plan.notes {
            relay.extend(["--note".to_owned(), note.clone()]);
        }
        relay.push("--".into());
        relay.extend(plan.argv.iter().cloned());
        Unit::new(job, relay, limits, exe, plan)
    }

    /// The unit of a build's checks after the build's unit ended (see [`super::Phase::Checks`]):
    /// the relay runs no command, only the check machines of the plan at `checks` (they need
    /// the namespaces the build's unit forbids), into the build's logs. It opens no schroot
    /// session: lintian after the result is a check machine here too.
    pub fn for_checks(
        job: &Job,
        plan: &Plan,
        checks: &std::path::Path,
        limits: &Limits,
        exe: &std::path::Path,
    ) -> Unit {
        let dir = job.dir.clone();
        let mut relay = vec![exe.display().to_string(), "builder-exec".into(), "--build-log".into()];
        relay.push(dir.join(super::LIVE_LOG).display().to_string());
        relay.push("--checks-only".into());
        relay.extend(after_args(None, Some(checks)));
        let mut unit = Unit::new(job, relay, limits, exe, plan);
        unit.name = super::check_unit_name(&job.bkey);
        unit.description = format!("buildbay checks {} {} {}", job.bkey.source(), job.bkey.version(), job.bkey.arch);
        unit.backend = crate::protocol::Backend::Nspawn;
        unit
    }

    fn new(job: &Job, relay: Vec<String>, limits: &Limits, exe: &std::path::Path, plan: &Plan) -> Unit {
        let dir = job.dir.clone();
        Unit {
            name: job.unit.clone(),
            description: format!("buildbay build {} {} {}", job.bkey.source(), job.bkey.version(), job.bkey.arch),
            relay,
            result: dir.join(super::RESULT),
            dir,
            env: plan.env.clone(),
            limits: limits.clone(),
            exe: exe.to_owned(),
            log_fields: vec![
                format!("BUILDBAY_SOURCE={}", job.bkey.source()),
                format!("BUILDBAY_VERSION={}", job.bkey.version()),
                format!("BUILDBAY_ARCH={}", job.bkey.arch),
                format!("BUILDBAY_BKEY={}", job.bkey),
            ],
            backend: if plan.machine.is_some() {
                crate::protocol::Backend::Nspawn
            } else {
                crate::protocol::Backend::Sbuild
            },
            arch: job.bkey.arch.to_string(),
            network: plan.network.clone(),
            writable: plan.writable.clone(),
            state: None,
        }
    }
}

/// One build to launch: a queued request, in a free slot.
pub struct Launch<'a> {
    pub bkey: &'a crate::protocol::BuildKey,
    pub slot: usize,
    /// The signed request file (its tar is beside it).
    pub request: &'a std::path::Path,
    /// The keys a request must be signed by.
    pub certs: &'a [crate::gpg::Cert],
    pub distribution: &'a crate::deb::Dist,
    /// The build, or its checks after it succeeded.
    pub phase: super::Phase,
}

/// A launched build.
pub struct Launched {
    pub job: Job,
    pub machine: Option<String>,
    pub backend: crate::protocol::Backend,
}

/// Read a queued request and open its tar (the daemon's own spool: trusted paths).
pub fn read_queued(l: &Launch<'_>) -> Result<(Vec<u8>, std::fs::File), BuilderError> {
    let bad = |why: String| BuilderError::Request { bkey: l.bkey.clone(), why };
    let raw = crate::deb::changes::read_bounded(l.request).map_err(|e| bad(format!("cannot read the request: {e}")))?;
    let tar = l.request.with_file_name(crate::protocol::BuildRequest::tar_name(l.bkey));
    let (f, _) = crate::protocol::tar::open_regular(&tar).map_err(|e| bad(format!("cannot read its tar: {e}")))?;
    Ok((raw, f))
}

/// Who stages and runs builds.
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    fn name(&self) -> &'static str;
    /// A systemd with machined is there (nspawn machines register).
    fn is_systemd(&self) -> bool;
    /// Stage a build (verify its request, make its directory, plan it) and start it; or, for
    /// [`super::Phase::Checks`], start the checks of a build that succeeded.
    async fn launch(&self, l: Launch<'_>) -> Result<Launched, BuilderError>;
    /// Whether a build's unit (or child) has ended: its `result` exists, or it vanished without
    /// one (then `result` says "lost"). Reaps and times out what the runner must.
    async fn ended(&self, job: &Job) -> Result<bool, BuilderError>;
    /// Stop a unit that may or may not exist (a build recorded as starting).
    async fn stop(&self, job: &Job) -> Result<(), BuilderError>;
    /// Cancel a running build (`by` whom): everything it started ends, and `result` says so.
    async fn cancel(&self, job: &Job, by: &str) -> Result<(), BuilderError>;
    /// Whether a unit of this runner's is gone (never started, or ended). A runner without
    /// units (child processes) never has a build whose checks run in a unit of their own.
    async fn unit_gone(&self, _unit: &str) -> Result<bool, BuilderError> {
        Ok(true)
    }
    /// Remove the directory of a build that has ended and was delivered.
    async fn remove(&self, job: &Job) -> Result<(), BuilderError> {
        remove_dir(&job.dir)
    }
}

/// Remove a build directory (gone already is fine).
pub fn remove_dir(dir: &std::path::Path) -> Result<(), BuilderError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(super::io_err(dir)(e)),
        _ => Ok(()),
    }
}

/// systemd over D-Bus if it answers, else child processes; says which in the log.
pub async fn detect(stager: super::stage::Stager) -> Box<dyn Runner> {
    match crate::systemd::bus::Systemd::connect().await {
        Ok(s) => Box::new(systemd::SystemdRunner::new(s, stager)),
        Err(e) => {
            tracing::info!(
                "no systemd on the system bus ({e}): builds run as child processes in their own process group"
            );
            Box::new(child::ChildRunner::new(stager))
        }
    }
}
