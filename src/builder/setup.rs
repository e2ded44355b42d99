//! How builds are set up on this host, from the options `serve` and `helper` share: the
//! stager, the runner and the builder. The daemon as root stages and runs its builds itself;
//! a daemon with a helper (`--helper`, the packaged service, which is not root) asks it.

use super::runner::{self, Runner};
use super::slots::Users;
use super::stage::Stager;
use super::{APT_CACHE_DIR, BUILDS_DIR, Builder, BuilderError, LOGS_DIR, Limits};
use crate::chroot::Places;
use std::path::PathBuf;

/// Where a helper makes build directories, by default (root's, readable by the daemon's group).
pub const HELPER_BUILDS: &str = "/var/lib/buildbay-builds";
/// Where a helper keeps the slots' apt archive caches, by default.
pub const HELPER_CACHES: &str = "/var/cache/buildbay/apt-archives";

/// Who runs builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerKind {
    /// systemd over D-Bus if it answers, else child processes.
    Auto,
    Systemd,
    Child,
}

#[derive(Debug, Clone)]
pub struct Setup {
    /// The daemon's state directory.
    pub state: PathBuf,
    pub limits: Limits,
    /// The build users' prefix (`<prefix><slot>`).
    pub build_users: String,
    /// Images, schroot configs, slot directories, and the helper's socket if there is one.
    pub places: Places,
    /// Build directories (default: [`Setup::default_builds`]).
    pub builds: Option<PathBuf>,
    /// The slots' apt archive caches (default: [`Setup::default_caches`]).
    pub caches: Option<PathBuf>,
    pub runner: RunnerKind,
}

impl Setup {
    /// The helper's directories when there is one (or this is it), else the state directory's.
    fn with_helper(&self) -> bool {
        self.places.helper.is_some()
    }

    pub fn builds_dir(&self, helper: bool) -> PathBuf {
        self.builds
            .clone()
            .unwrap_or_else(|| if helper { PathBuf::from(HELPER_BUILDS) } else { self.state.join(BUILDS_DIR) })
    }

    pub fn caches_dir(&self, helper: bool) -> PathBuf {
        self.caches
            .clone()
            .unwrap_or_else(|| if helper { PathBuf::from(HELPER_CACHES) } else { self.state.join(APT_CACHE_DIR) })
    }

    /// What stages builds here: the daemon as root, or the helper (`helper`: this is it).
    pub fn stager(&self, helper: bool) -> Result<Stager, BuilderError> {
        let exe = std::env::current_exe().map_err(|e| BuilderError::Io { path: "/proc/self/exe".into(), source: e })?;
        let mut places = self.places.clone();
        places.helper = None;
        Ok(Stager {
            root: self.builds_dir(helper),
            places,
            limits: self.limits.clone(),
            users: Users::detect(&self.build_users),
            caches: self.caches_dir(helper),
            exe,
            state: self.state.clone(),
        })
    }

    /// The runner the options ask for.
    pub async fn runner(&self) -> Result<Box<dyn Runner>, BuilderError> {
        use crate::systemd::bus::Systemd;
        if let Some(socket) = &self.places.helper {
            let bus = Systemd::connect().await.map_err(|e| {
                BuilderError::Helper(format!("--helper needs systemd on the system bus to watch build units: {e}"))
            })?;
            tracing::info!(socket = %socket.display(), "builds and chroots go through the buildbay helper (this daemon is not root)");
            let client = crate::rootops::Client { socket: socket.clone() };
            return Ok(Box::new(runner::helper::HelperRunner::new(
                client,
                bus,
                self.builds_dir(true),
                self.state.clone(),
            )));
        }
        if !nix::unistd::geteuid().is_root() {
            tracing::info!("not root and no --helper: builds run as this user");
        } else {
            tracing::warn!(
                "running as root without a helper: the process that serves HTTP and FTP does the root work \
                 itself; the packaged service runs it as user buildbay beside buildbay-helper"
            );
        }
        let stager = self.stager(false)?;
        Ok(match self.runner {
            RunnerKind::Auto => runner::detect(stager).await,
            RunnerKind::Systemd => Box::new(runner::systemd::SystemdRunner::new(Systemd::connect().await?, stager)),
            RunnerKind::Child => {
                tracing::info!("--build-runner child: builds run as child processes in their own process group");
                Box::new(runner::child::ChildRunner::new(stager))
            }
        })
    }

    /// The daemon's builder; its results go to `results`.
    pub async fn builder(&self, results: PathBuf) -> Result<Builder, BuilderError> {
        let helper = self.with_helper();
        Ok(Builder {
            runner: self.runner().await?,
            limits: self.limits.clone(),
            places: self.places.clone(),
            root: self.builds_dir(helper),
            results,
            logs: self.state.join(LOGS_DIR),
            caches: (!helper).then(|| self.caches_dir(false)),
            turn: Default::default(),
            preparing: Default::default(),
            waiting: Default::default(),
        })
    }
}
