//! The runner of a daemon that is not root: the root helper stages and starts each build (after
//! verifying its request itself) and stops it; the daemon only watches, reading the build's
//! directory (root's, readable by the daemon's group) and its unit's state over D-Bus.

use super::{Launch, Launched, Runner};
use crate::builder::{BuilderError, Job, JobState, Phase, check_unit_name, unit_name};
use crate::protocol::BuildKey;
use crate::rootops::{Answer, Client, Request, RootOpsError};
use crate::systemd::bus::{Systemd, UnitState};

pub struct HelperRunner {
    client: Client,
    bus: Systemd,
    /// Where the helper makes build directories.
    root: std::path::PathBuf,
    /// The state directory the request paths are relative to.
    state: std::path::PathBuf,
}

impl HelperRunner {
    pub fn new(client: Client, bus: Systemd, root: std::path::PathBuf, state: std::path::PathBuf) -> HelperRunner {
        HelperRunner { client, bus, root, state }
    }

    /// Ask the helper. A refusal is about the request (final, for `bkey`); anything else is
    /// retried.
    async fn call(&self, bkey: &BuildKey, req: Request) -> Result<Answer, BuilderError> {
        let client = self.client.clone();
        match tokio::task::spawn_blocking(move || client.call(&req)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(RootOpsError::Refused(why))) => Err(BuilderError::Request { bkey: bkey.clone(), why }),
            Ok(Err(e)) => Err(BuilderError::Helper(e.to_string())),
            Err(e) => Err(BuilderError::Helper(format!("the helper call did not finish: {e}"))),
        }
    }
}

#[async_trait::async_trait]
impl Runner for HelperRunner {
    fn name(&self) -> &'static str {
        "helper"
    }

    fn is_systemd(&self) -> bool {
        true
    }

    async fn launch(&self, l: Launch<'_>) -> Result<Launched, BuilderError> {
        let request = l
            .request
            .strip_prefix(&self.state)
            .map_err(|_| BuilderError::Request {
                bkey: l.bkey.clone(),
                why: format!("{} is not in the state directory", l.request.display()),
            })?
            .to_owned();
        let start = Request::BuildStart { bkey: l.bkey.clone(), slot: l.slot, request, phase: l.phase };
        let answer = self.call(l.bkey, start).await?;
        let Answer::Started { machine, backend, checks_unit, .. } = answer else {
            return Err(BuilderError::Helper(format!("the helper answered {answer:?} to a build start")));
        };
        let job = Job {
            bkey: l.bkey.clone(),
            distribution: l.distribution.clone(),
            unit: match l.phase {
                Phase::Build => unit_name(l.bkey),
                Phase::Checks => check_unit_name(l.bkey),
            },
            dir: self.root.join(l.bkey.rel_path()),
            state: JobState::Starting,
            pid: None,
            started: chrono::Utc::now(),
            slot: l.slot,
            checks_unit,
            phase: l.phase,
        };
        Ok(Launched { job, machine, backend })
    }

    async fn ended(&self, job: &Job) -> Result<bool, BuilderError> {
        if job.dir.join(crate::builder::RESULT).exists() {
            return Ok(true);
        }
        // The directory is the helper's: a vanished unit is recorded by the builder as lost.
        Ok(self.bus.state(&job.unit).await? == UnitState::Gone)
    }

    async fn stop(&self, job: &Job) -> Result<(), BuilderError> {
        self.call(&job.bkey, Request::BuildStop { bkey: job.bkey.clone(), canceled_by: None }).await.map(|_| ())
    }

    async fn cancel(&self, job: &Job, by: &str) -> Result<(), BuilderError> {
        let req = Request::BuildStop { bkey: job.bkey.clone(), canceled_by: Some(by.to_owned()) };
        self.call(&job.bkey, req).await.map(|_| ())
    }

    async fn unit_gone(&self, unit: &str) -> Result<bool, BuilderError> {
        Ok(self.bus.state(unit).await? == UnitState::Gone)
    }

    async fn remove(&self, job: &Job) -> Result<(), BuilderError> {
        self.call(&job.bkey, Request::BuildRemove { bkey: job.bkey.clone() }).await.map(|_| ())
    }
}
