//! The root helper (`buildbay helper`, `buildbay-helper.service`): the only buildbay process
//! that is root when the daemon is not. It answers the fixed verbs of [`crate::rootops`] on a
//! Unix socket that only root and the daemon's group may open, one request per connection:
//!
//! - start a build: it opens the queued request and its tar below the daemon's state directory
//!   itself (beneath it, following no symlink), verifies the request's signature with the
//!   daemon's public key, stages the build directory and starts the sandboxed unit, with the
//!   same code the daemon uses when it is root ([`crate::builder::stage`]);
//! - stop or cancel a build, remove a finished build's directory (units `buildbay-build-*` and
//!   directories below its builds root only: the names come from the typed build key);
//! - prepare, check or remove a chroot (typed codename, architecture and mirror URL).
//!
//! It never runs a command that a request names, never writes into the daemon's state
//! directory, and never follows a path it was given.

use crate::builder::runner::systemd::{Stage, SystemdRunner};
use crate::builder::stage::Stager;
use crate::builder::{BuilderError, Phase, check_unit_name, unit_name};
use crate::protocol::{BuildKey, BuildRequest};
use crate::rootops::{Answer, ChrootOp, MAX_LINE, Request, check_request_path};
use crate::systemd::bus::UnitState;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Connections answered at once; more wait for the listener's backlog.
const MAX_CONNECTIONS: usize = 8;
/// How long a client may take to send its request line.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest name of who canceled a build.
const MAX_CANCELED_BY: usize = 256;
/// The daemon's archive key, below its state directory.
const KEY: &str = "gnupg/archive-key.asc";

pub struct Helper {
    /// The daemon's state directory: requests and its key are read from below it.
    pub state: PathBuf,
    /// The daemon's user: its uid may ask, its group reads the build directories.
    pub daemon_uid: u32,
    pub daemon_gid: u32,
    pub runner: SystemdRunner,
    pub stager: Stager,
    /// One chroot operation at a time.
    pub chroots: tokio::sync::Mutex<()>,
    /// Chroot operations running or waiting: a bound, so that slow chroot operations never
    /// hold all the connections that build starts need.
    pub chroots_queued: tokio::sync::Semaphore,
}

/// Chroot operations that may run or wait at once (of [`MAX_CONNECTIONS`]).
pub const MAX_CHROOT_OPS: usize = 2;

#[derive(Debug, thiserror::Error)]
enum HelperError {
    /// The request is bad: final.
    #[error("{0}")]
    Refused(String),
    /// It could not be done now.
    #[error("{0}")]
    Failed(String),
}

impl From<BuilderError> for HelperError {
    fn from(e: BuilderError) -> HelperError {
        match e {
            BuilderError::Request { .. } => HelperError::Refused(e.to_string()),
            e => HelperError::Failed(e.to_string()),
        }
    }
}

impl Helper {
    /// Answer connections until the process ends.
    pub async fn serve(self: std::sync::Arc<Self>, listener: tokio::net::UnixListener) {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accepting a helper connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.connection(stream).await;
                drop(permit);
            });
        }
    }

    async fn connection(&self, mut stream: tokio::net::UnixStream) {
        let answer = match self.read_request(&mut stream).await {
            Ok(req) => self.answer(req).await,
            Err(why) => Answer::Refused { why },
        };
        let mut line = serde_json::to_vec(&answer).unwrap_or_default();
        line.push(b'\n');
        if let Err(e) = stream.write_all(&line).await {
            tracing::warn!("answering the daemon: {e}");
        }
    }

    /// The peer must be root or the daemon's user; its line a request of at most MAX_LINE bytes.
    async fn read_request(&self, stream: &mut tokio::net::UnixStream) -> Result<Request, String> {
        let cred = stream.peer_cred().map_err(|e| format!("who is asking: {e}"))?;
        if cred.uid() != 0 && cred.uid() != self.daemon_uid {
            tracing::warn!(uid = cred.uid(), "refused a helper request from a user that is not the daemon's");
            return Err(format!("uid {} may not ask the buildbay helper", cred.uid()));
        }
        let mut line = Vec::new();
        let mut r = tokio::io::BufReader::new(stream.take(MAX_LINE + 1));
        match tokio::time::timeout(READ_TIMEOUT, r.read_until(b'\n', &mut line)).await {
            Ok(Ok(_)) if line.len() as u64 <= MAX_LINE => {}
            Ok(Ok(_)) => return Err(format!("a request line is at most {MAX_LINE} bytes")),
            Ok(Err(e)) => return Err(format!("reading the request: {e}")),
            Err(_) => return Err(format!("no request line within {READ_TIMEOUT:?}")),
        }
        serde_json::from_slice(&line).map_err(|e| format!("not a helper request: {e}"))
    }

    /// Do what one request asks; every outcome is an answer.
    pub async fn answer(&self, req: Request) -> Answer {
        let what = verb(&req);
        let done = match req {
            Request::BuildStart { bkey, slot, request, phase } => self.build_start(&bkey, slot, &request, phase).await,
            Request::BuildStop { bkey, canceled_by } => {
                self.build_stop(&bkey, canceled_by).await.map(|()| Answer::Done)
            }
            Request::BuildRemove { bkey } => self.build_remove(&bkey).await.map(|()| Answer::Done),
            Request::Chroot { op, chroot } => self.chroot(op, chroot).await.map(|()| Answer::Done),
        };
        match done {
            Ok(a) => {
                tracing::info!("{what}: done");
                a
            }
            Err(HelperError::Refused(why)) => {
                tracing::warn!("{what}: refused: {why}");
                Answer::Refused { why }
            }
            Err(HelperError::Failed(why)) => {
                tracing::warn!("{what}: failed: {why}");
                Answer::Failed { why }
            }
        }
    }

    async fn build_start(
        &self,
        bkey: &BuildKey,
        slot: usize,
        request: &Path,
        phase: Phase,
    ) -> Result<Answer, HelperError> {
        check_request_path(request).map_err(HelperError::Refused)?;
        let unit = unit_name(bkey);
        if phase == Phase::Build && self.runner.state_of(&unit).await? != UnitState::Gone {
            return Err(HelperError::Failed(format!("{unit} runs already; stop it first")));
        }
        let state = open_dir(&self.state)?;
        let raw = read_beneath(&state, request, crate::deb::changes::MAX_CHANGES, self.daemon_uid)?;
        let key = read_beneath(&state, Path::new(KEY), crate::deb::changes::MAX_CHANGES, self.daemon_uid)?;
        let cert = crate::gpg::one_key(&key)
            .map_err(|e| HelperError::Failed(format!("the daemon's key {KEY}: {e}")))?
            .strip_secret_key_material();
        // A remote's request verifies against the remotes' keys the daemon left beside its own.
        let mut certs = vec![cert];
        let remotes = Path::new(crate::instance::Instance::REMOTES_KEYRING);
        if let Ok(raw) = read_beneath(&state, remotes, crate::deb::changes::MAX_CHANGES, self.daemon_uid) {
            certs.extend(crate::gpg::read_keyring(&raw).unwrap_or_default());
        }
        let mut tar = open_beneath(&state, &request.with_file_name(BuildRequest::tar_name(bkey)), self.daemon_uid)?;
        let stage = Stage { bkey, slot, request: &raw, certs: &certs, group: Some(self.daemon_gid), phase };
        let launched = self.runner.stage_and_start(stage, &mut tar).await?;
        let checks_unit = launched.job.checks_unit;
        Ok(Answer::Started { machine: launched.machine, backend: launched.backend, slot, checks_unit })
    }

    /// A build's unit name and directory: from its typed key, nothing else.
    fn build(&self, bkey: &BuildKey) -> (String, PathBuf) {
        (unit_name(bkey), self.stager.dir(bkey))
    }

    async fn build_stop(&self, bkey: &BuildKey, canceled_by: Option<String>) -> Result<(), HelperError> {
        let (unit, dir) = self.build(bkey);
        if let Some(by) = canceled_by {
            if by.len() > MAX_CANCELED_BY || by.chars().any(char::is_control) {
                return Err(HelperError::Refused(format!(
                    "who canceled is a name of at most {MAX_CANCELED_BY} characters"
                )));
            }
            if dir.is_dir() {
                let marker = dir.join(crate::builder::result::CANCELED);
                crate::store::write_file_synced(&marker, by.as_bytes())
                    .map_err(|e| HelperError::Failed(format!("{}: {e}", marker.display())))?;
            }
        }
        // Its checks' unit too, whichever runs.
        self.runner.stop_named(&check_unit_name(bkey)).await?;
        Ok(self.runner.stop_named(&unit).await?)
    }

    async fn build_remove(&self, bkey: &BuildKey) -> Result<(), HelperError> {
        let (unit, dir) = self.build(bkey);
        for unit in [unit, check_unit_name(bkey)] {
            if self.runner.state_of(&unit).await? != UnitState::Gone {
                return Err(HelperError::Failed(format!("{unit} still runs; stop it first")));
            }
        }
        Ok(crate::builder::runner::remove_dir(&dir)?)
    }

    async fn chroot(&self, op: ChrootOp, c: crate::config::Chroot) -> Result<(), HelperError> {
        let Ok(_queued) = self.chroots_queued.try_acquire() else {
            return Err(HelperError::Failed(format!(
                "{MAX_CHROOT_OPS} chroot operations run or wait already; try again when they are done"
            )));
        };
        let _one = self.chroots.lock().await;
        let places = self.stager.places.clone();
        let caches = self.stager.caches.clone();
        let done = tokio::task::spawn_blocking(move || match op {
            ChrootOp::Prepare => crate::chroot::prepare(&places, &c),
            ChrootOp::Check => {
                let checked = crate::chroot::check(&places, &c);
                if checked.is_ok() {
                    // The image was upgraded: what the caches held is older, or in it.
                    crate::builder::empty_caches(&caches);
                }
                checked
            }
            ChrootOp::Remove => crate::chroot::remove(&places, &c),
        })
        .await
        .map_err(|e| HelperError::Failed(format!("the chroot operation did not finish: {e}")))?;
        done.map_err(|e| match e {
            crate::chroot::ChrootError::Missing(_) => HelperError::Refused(e.to_string()),
            e => HelperError::Failed(e.to_string()),
        })
    }
}

/// What a request asks, for the log.
fn verb(req: &Request) -> String {
    match req {
        Request::BuildStart { bkey, slot, phase: Phase::Build, .. } => format!("start build {bkey} in slot {slot}"),
        Request::BuildStart { bkey, slot, phase: Phase::Checks, .. } => {
            format!("start the checks of build {bkey} in slot {slot}")
        }
        Request::BuildStop { bkey, canceled_by: None } => format!("stop build {bkey}"),
        Request::BuildStop { bkey, canceled_by: Some(by) } => format!("cancel build {bkey} (by {by})"),
        Request::BuildRemove { bkey } => format!("remove build directory {bkey}"),
        Request::Chroot { op, chroot } => format!("{op:?} chroot {}", chroot.id()),
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd, HelperError> {
    use nix::fcntl::OFlag;
    nix::fcntl::open(dir, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(|e| HelperError::Failed(format!("{}: {e}", dir.display())))
}

/// Open a regular file below `dir`, never leaving it and following no symlink on the way
/// (openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS), never blocking on a FIFO.
pub fn open_beneath_fd(dir: &OwnedFd, rel: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(dir, rel, how).map_err(std::io::Error::from)?;
    let f = std::fs::File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(f)
}

/// A regular file below `dir` (see [`open_beneath_fd`]) that `owner` wrote: owned by them, with
/// no other name (a hard link to someone else's file is not theirs to hand over).
fn open_beneath(dir: &OwnedFd, rel: &Path, owner: u32) -> Result<std::fs::File, HelperError> {
    use std::os::unix::fs::MetadataExt;
    let refused = |why: String| HelperError::Refused(format!("{}: {why}", rel.display()));
    let f = open_beneath_fd(dir, rel).map_err(|e| refused(e.to_string()))?;
    let m = f.metadata().map_err(|e| refused(e.to_string()))?;
    if m.uid() != owner || m.nlink() != 1 {
        return Err(refused(format!("owned by uid {} with {} links, not the daemon's own file", m.uid(), m.nlink())));
    }
    Ok(f)
}

/// A regular file below `dir` (see [`open_beneath`]), of at most `max` bytes.
fn read_beneath(dir: &OwnedFd, rel: &Path, max: u64, owner: u32) -> Result<Vec<u8>, HelperError> {
    use std::io::Read;
    let f = open_beneath(dir, rel, owner)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| HelperError::Failed(format!("{}: {e}", rel.display())))?;
    if buf.len() as u64 > max {
        return Err(HelperError::Refused(format!("{} is more than {max} bytes", rel.display())));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_regular_files_beneath_without_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("state");
        std::fs::create_dir_all(root.join("spool/1")).unwrap();
        std::fs::write(root.join("spool/1/r.changes"), "ok").unwrap();
        std::fs::write(d.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("spool/1/link.changes")).unwrap();
        std::os::unix::fs::symlink("1", root.join("spool/via")).unwrap();
        nix::unistd::mkfifo(&root.join("spool/1/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::hard_link(root.join("spool/1/r.changes"), root.join("spool/1/hard.changes")).unwrap();
        std::fs::write(root.join("spool/1/s.changes"), "ok").unwrap();
        let fd = open_dir(&root).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(read_beneath(&fd, Path::new("spool/1/s.changes"), 10, me).unwrap(), b"ok");
        for bad in [
            "spool/1/link.changes",
            "spool/via/r.changes",
            "../secret",
            "/etc/passwd",
            "spool/1/fifo",
            "spool",
            "spool/1/hard.changes",
            "spool/1/r.changes",
        ] {
            assert!(open_beneath(&fd, Path::new(bad), me).is_err(), "{bad}");
        }
        assert!(open_beneath(&fd, Path::new("spool/1/s.changes"), me + 1).is_err(), "someone else's file");
        assert!(matches!(read_beneath(&fd, Path::new("spool/1/s.changes"), 1, me), Err(HelperError::Refused(_))));
    }
}
