//! The runner without systemd: each build is a child process in its own process group, its
//! output in the build log only. The relay records how it ended (there is no ExecStopPost), and
//! this runner stops one past RuntimeMaxSec itself. No unit sandbox exists here: the isolation
//! is the backend's own (the build user, the nspawn machine).

use super::{Launch, Launched, Runner, Unit};
use crate::builder::exec::{alive, exit_code, kill_group, spawn_group};
use crate::builder::stage::Stager;
use crate::builder::{BuilderError, Ended, Job, io_err, write_result};
use std::collections::HashMap;
use std::sync::Mutex;

pub struct ChildRunner {
    children: Mutex<HashMap<String, std::process::Child>>,
    stager: Stager,
}

impl ChildRunner {
    pub fn new(stager: Stager) -> ChildRunner {
        ChildRunner { children: Mutex::new(HashMap::new()), stager }
    }

    /// Start a staged unit as a child; returns its pid.
    fn start(&self, unit: &Unit) -> Result<i32, BuilderError> {
        // The relay records the end itself: insert `--result` before its `--`.
        let mut argv = unit.relay.clone();
        let at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
        argv.splice(at..at, ["--result".to_owned(), unit.result.display().to_string()]);
        let child = spawn_group(&argv, &unit.dir, &unit.env).map_err(io_err(&unit.dir))?;
        let pid = child.id() as i32;
        self.children().insert(unit.name.clone(), child);
        Ok(pid)
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::process::Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Runner for ChildRunner {
    fn name(&self) -> &'static str {
        "child"
    }

    fn is_systemd(&self) -> bool {
        false
    }

    async fn launch(&self, l: Launch<'_>) -> Result<Launched, BuilderError> {
        let (request, mut tar) = super::read_queued(&l)?;
        let staged = self.stager.stage(l.bkey, l.slot, &request, &mut tar, l.certs, false, None)?;
        let mut job = staged.job;
        job.pid = Some(self.start(&staged.unit)?);
        Ok(Launched { job, machine: staged.machine, backend: staged.backend })
    }

    async fn ended(&self, job: &Job) -> Result<bool, BuilderError> {
        let result = job.dir.join(crate::builder::RESULT);
        let mut map = self.children();
        if result.exists() {
            if let Some(mut child) = map.remove(&job.unit) {
                // The relay wrote the result as its last act: reap it.
                let _ = child.wait();
            }
            return Ok(true);
        }
        let gone = match map.get_mut(&job.unit) {
            Some(child) => match child.try_wait().map_err(io_err(&job.dir))? {
                Some(status) => {
                    map.remove(&job.unit);
                    write_result(&result, &Ended::of_exit(exit_code(status)))?;
                    return Ok(true);
                }
                None => {
                    if (chrono::Utc::now() - job.started).num_seconds() > self.stager.limits.runtime_max_sec as i64 {
                        kill_group(child.id() as i32);
                        let _ = child.wait();
                        map.remove(&job.unit);
                        write_result(&result, &Ended::new("timeout", "killed", "KILL"))?;
                        return Ok(true);
                    }
                    false
                }
            },
            // Started by an earlier daemon: alive while its process is.
            None => !job.pid.is_some_and(alive),
        };
        if gone && !result.exists() {
            write_result(&result, &Ended::new("lost", "-", "-"))?;
        }
        Ok(gone)
    }

    async fn stop(&self, _job: &Job) -> Result<(), BuilderError> {
        Ok(())
    }

    async fn cancel(&self, job: &Job, by: &str) -> Result<(), BuilderError> {
        let marker = job.dir.join(crate::builder::result::CANCELED);
        crate::store::write_file_synced(&marker, by.as_bytes()).map_err(io_err(&marker))?;
        let mut map = self.children();
        let pid = map.get(&job.unit).map(|c| c.id() as i32).or(job.pid);
        if let Some(pid) = pid {
            kill_group(pid);
        }
        if let Some(mut c) = map.remove(&job.unit) {
            let _ = c.wait();
        }
        write_result(&job.dir.join(crate::builder::RESULT), &Ended::new("canceled", "killed", "TERM"))
    }
}
