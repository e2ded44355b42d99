//! Configuration objects (mini-buildd §3) and their status lifecycle: prepare, check, activate,
//! deactivate, remove. Pure: the actions' side effects live in `instance`.

use crate::archive::layout::Layout;
use crate::deb::{Arch, Codename, Component, Identity, RepoId};
use crate::gpg::KeyAlgo;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum State {
    Removed,
    Prepared,
    Active,
}

/// mini-buildd's `last_checked`: a time, or one of its sentinels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Checked {
    /// `-`: never checked.
    Never,
    /// `*`: changed since it was prepared; prepare again.
    Changed,
    /// `x`: the last check failed.
    Failed,
    /// `A`: failed while active, or activation was asked before a check passed: activates once a check passes.
    Reactivate,
    At(DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub state: State,
    pub checked: Checked,
    /// Why the object is not active: the last failed check's message.
    pub message: Option<String>,
}

impl Default for Status {
    fn default() -> Status {
        Status { state: State::Removed, checked: Checked::Never, message: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("{0} is not prepared; prepare it first")]
    NotPrepared(String),
    #[error("{0} changed since it was prepared; prepare it again")]
    Changed(String),
}

impl Status {
    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// After a successful prepare (or sync of a changed object).
    pub fn prepared(&mut self) {
        if self.state == State::Removed {
            self.state = State::Prepared;
            self.checked = Checked::Never;
        } else if self.checked == Checked::Changed {
            self.checked = Checked::Never;
        }
    }

    /// Whether a check may run now.
    pub fn can_check(&self, name: &str) -> Result<(), LifecycleError> {
        match (&self.state, &self.checked) {
            (State::Removed, _) => Err(LifecycleError::NotPrepared(name.into())),
            (_, Checked::Changed) => Err(LifecycleError::Changed(name.into())),
            _ => Ok(()),
        }
    }

    /// Record a check's result.
    pub fn checked(&mut self, result: Result<(), String>, now: DateTime<Utc>) {
        match result {
            Ok(()) => {
                if self.checked == Checked::Reactivate {
                    self.state = State::Active;
                }
                self.checked = Checked::At(now);
                self.message = None;
            }
            Err(msg) => {
                if self.state == State::Active {
                    self.state = State::Prepared;
                    self.checked = Checked::Reactivate;
                } else {
                    self.checked = Checked::Failed;
                }
                self.message = Some(msg);
            }
        }
    }

    pub fn activate(&mut self, name: &str) -> Result<(), LifecycleError> {
        match (&self.state, &self.checked) {
            (State::Removed, _) => Err(LifecycleError::NotPrepared(name.into())),
            (_, Checked::Changed) => Err(LifecycleError::Changed(name.into())),
            (_, Checked::At(_)) => {
                self.state = State::Active;
                Ok(())
            }
            _ => {
                self.checked = Checked::Reactivate;
                Ok(())
            }
        }
    }

    pub fn deactivate(&mut self) {
        self.state = self.state.min(State::Prepared);
    }

    pub fn removed(&mut self) {
        *self = Status::default();
    }

    /// A saved change to a prepared object: it must be prepared again; an active one is deactivated.
    pub fn changed(&mut self) {
        if self.state != State::Removed {
            self.checked = Checked::Changed;
            self.deactivate();
        }
    }
}

/// The instance itself (singleton).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Daemon {
    pub identity: Identity,
    pub custom_archive_origin: Option<String>,
    pub key_algo: KeyAlgo,
    /// Set once prepare generated the archive key.
    pub key_fingerprint: Option<String>,
    pub status: Status,
}

impl Daemon {
    pub fn archive_origin(&self) -> String {
        self.custom_archive_origin.clone().unwrap_or_else(|| format!("Buildbay archive {}", self.identity))
    }
}

/// An archive release a distribution is based on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Source {
    pub origin: String,
    pub codename: Codename,
    pub codeversion: String,
    pub codeversion_override: Option<String>,
    pub components: Vec<Component>,
    pub architectures: Vec<Arch>,
    pub status: Status,
}

impl Source {
    pub fn id(&self) -> String {
        format!("{}:{}", self.origin, self.codename)
    }

    pub fn codeversion(&self) -> &str {
        self.codeversion_override.as_deref().unwrap_or(&self.codeversion)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchOption {
    pub arch: Arch,
    pub optional: bool,
    pub build_architecture_all: bool,
}

/// How the builds of a distribution are isolated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildBackend {
    /// sbuild on the chroot's schroot overlay (mini-buildd's way).
    #[default]
    Sbuild,
    /// An ephemeral systemd-nspawn machine of the chroot image, registered with machined:
    /// apt installs the build dependencies, dpkg-buildpackage builds as a non-root user
    /// (debspawn's way).
    Nspawn,
}

impl BuildBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildBackend::Sbuild => "sbuild",
            BuildBackend::Nspawn => "nspawn",
        }
    }
}

impl std::str::FromStr for BuildBackend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sbuild" => Ok(BuildBackend::Sbuild),
            "nspawn" => Ok(BuildBackend::Nspawn),
            other => Err(format!("unknown build backend {other:?}: use sbuild or nspawn")),
        }
    }
}

/// A build profile for one base source (one codename).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Distribution {
    pub codename: Codename,
    pub base_source: String,
    pub architectures: Vec<ArchOption>,
    pub components: Vec<Component>,
    pub status: Status,
    #[serde(default)]
    pub build_backend: BuildBackend,
    /// The build step may use the network (the nspawn backend cuts it off otherwise; installing
    /// the build dependencies always has it).
    #[serde(default)]
    pub build_network: bool,
}

impl Distribution {
    pub fn arches(&self) -> impl Iterator<Item = &Arch> {
        self.architectures.iter().map(|a| &a.arch)
    }

    /// The architecture that builds arch-all packages.
    pub fn arch_all(&self) -> Option<&Arch> {
        self.architectures.iter().find(|a| a.build_architecture_all).map(|a| &a.arch)
    }
}

/// A stored layout: the rules plus its status.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LayoutObject {
    pub layout: Layout,
    pub status: Status,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Repository {
    pub identity: RepoId,
    pub layout: String,
    pub distributions: Vec<Codename>,
    pub allow_unauthenticated_uploads: bool,
    pub extra_uploader_keyrings: Vec<String>,
    pub status: Status,
}

/// An uploader's key and the repositories it may upload to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Uploader {
    pub user: String,
    pub key: String,
    pub fingerprint: Option<String>,
    pub may_upload_to: Vec<RepoId>,
    pub status: Status,
}

pub mod kind {
    pub const DAEMON: &str = "daemon";
    pub const SOURCE: &str = "source";
    pub const DISTRIBUTION: &str = "distribution";
    pub const LAYOUT: &str = "layout";
    pub const REPOSITORY: &str = "repository";
    pub const UPLOADER: &str = "uploader";
    pub const SUBSCRIPTION: &str = "subscription";
    pub const CHROOT: &str = "chroot";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let now = Utc::now();
        let mut s = Status::default();
        assert!(s.can_check("x").is_err());
        assert!(s.activate("x").is_err());
        s.prepared();
        assert_eq!((s.state, s.checked.clone()), (State::Prepared, Checked::Never));
        // Activating before a check passed arms auto-activation.
        s.activate("x").unwrap();
        assert_eq!(s.checked, Checked::Reactivate);
        s.checked(Ok(()), now);
        assert_eq!(s.state, State::Active);
        // A failing check of an active object drops it to prepared, ready to reactivate.
        s.checked(Err("archive unreachable".into()), now);
        assert_eq!((s.state, s.checked.clone()), (State::Prepared, Checked::Reactivate));
        assert_eq!(s.message.as_deref(), Some("archive unreachable"));
        s.checked(Ok(()), now);
        assert!(s.is_active());
        assert_eq!(s.message, None);
        s.changed();
        assert_eq!((s.state, s.checked.clone()), (State::Prepared, Checked::Changed));
        assert!(s.can_check("x").is_err());
        s.prepared();
        s.checked(Err("bad".into()), now);
        assert_eq!(s.checked, Checked::Failed);
        s.deactivate();
        s.removed();
        assert_eq!(s, Status::default());
    }
}
