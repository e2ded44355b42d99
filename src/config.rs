//! Configuration objects (mini-buildd §3) and their status lifecycle: prepare, check, activate,
//! deactivate, remove. Pure: the actions' side effects live in `instance`.

use crate::deb::ArchiveUrl;
use crate::deb::{Arch, ArchiveSuite, Codename, Component, Identity, RepoId};
use crate::gpg::KeyAlgo;
use crate::layout::Layout;
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
    /// The status as one word: ACTIVE, FAILED (its last check), CHANGED, PREPARED, REMOVED.
    pub fn word(&self) -> &'static str {
        match (self.state, &self.checked) {
            (State::Active, _) => "ACTIVE",
            (_, Checked::Failed) => "FAILED",
            (State::Prepared, Checked::Changed) => "CHANGED",
            (State::Prepared, _) => "PREPARED",
            (State::Removed, _) => "REMOVED",
        }
    }

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
                } else if self.checked != Checked::Reactivate {
                    self.checked = Checked::Failed;
                }
                // Failing again while waiting to reactivate: still waiting (the upkeep and the
                // source re-check try again, and activate it once a check passes).
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
    /// Who gets notification mail (mini-buildd's `email_address`, `notify`, `allow_emails_to`).
    #[serde(flatten, default)]
    pub mail: DaemonMail,
    pub status: Status,
}

/// The daemon's mail settings, with mini-buildd's field names. Changing them never deactivates
/// the daemon.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DaemonMail {
    /// The sender of notification mail; unset: `buildbay@<this host>`.
    #[serde(default)]
    pub email_address: Option<lettre::message::Mailbox>,
    /// Addresses that get every notification.
    #[serde(default)]
    pub notify: Vec<lettre::message::Mailbox>,
    /// A regular expression the addresses taken from an upload (Changed-By, Maintainer) must
    /// match before they get mail; unset: `.*@<this host>` (mini-buildd's default).
    #[serde(default)]
    pub allow_emails_to: Option<String>,
}

/// A repository's mail settings (mini-buildd's `notify`, `notify_changed_by`,
/// `notify_maintainer`). Changing them never deactivates the repository.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RepositoryMail {
    /// Addresses that get every notification of this repository.
    #[serde(default)]
    pub notify: Vec<lettre::message::Mailbox>,
    /// Mail the upload's Changed-By (when `allow_emails_to` matches it).
    #[serde(default)]
    pub notify_changed_by: bool,
    /// Mail the upload's Maintainer (when `allow_emails_to` matches it).
    #[serde(default)]
    pub notify_maintainer: bool,
}

/// The mail settings' field names: changing only these keeps an object's status.
pub const MAIL_FIELDS: &[&str] =
    &["email_address", "notify", "allow_emails_to", "notify_changed_by", "notify_maintainer"];

/// The longest `allow_emails_to` (mini-buildd's column is 254 characters).
const ALLOW_EMAILS_TO_MAX: usize = 254;

impl DaemonMail {
    /// Refuse an `allow_emails_to` that is not a regular expression, or too long.
    pub fn check(&self) -> Result<(), String> {
        if let Some(r) = &self.allow_emails_to {
            if r.len() > ALLOW_EMAILS_TO_MAX {
                return Err(format!("allow_emails_to is at most {ALLOW_EMAILS_TO_MAX} characters"));
            }
            regex::RegexBuilder::new(r)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("allow_emails_to is not a regular expression: {e}"))?;
        }
        Ok(())
    }
}

impl Daemon {
    /// The `Origin` of its releases (what apt pins name): `custom_archive_origin`, else
    /// `Buildbay archive <identity>`.
    pub fn archive_origin(&self) -> String {
        self.custom_archive_origin.clone().unwrap_or_else(|| format!("Buildbay archive {}", self.identity))
    }

    /// mini-buildd's default `Origin`, for clients whose pins name it.
    pub fn mini_buildd_origin(&self, host: &str) -> String {
        format!("Mini-Buildd archive {} on {host}", self.identity)
    }

    /// `setup --archive-origin`: `buildbay` (the default), `mini-buildd` (its form, on `host`),
    /// or the text itself.
    pub fn set_archive_origin(&mut self, choice: &str, host: &str) -> Result<(), String> {
        self.custom_archive_origin = match choice {
            "buildbay" => None,
            "mini-buildd" => Some(self.mini_buildd_origin(host)),
            text => Some(text.to_owned()),
        };
        match &self.custom_archive_origin {
            Some(o) => crate::deb::names::valid_origin(o),
            None => Ok(()),
        }
    }
}

/// An archive release a distribution is based on (mini-buildd's Source): `Origin:codename`.
/// Its check finds the archives that serve it with a release that verifies against its keys,
/// and reads components, architectures and the codeversion from that release.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Source {
    pub origin: String,
    /// The directory under `dists/` (`bookworm`, `bookworm-backports`).
    pub codename: ArchiveSuite,
    pub codeversion: String,
    pub codeversion_override: Option<String>,
    pub components: Vec<Component>,
    pub architectures: Vec<Arch>,
    /// Fingerprints of the AptKeys its release must be signed with (one good signature suffices).
    #[serde(default)]
    pub apt_keys: Vec<String>,
    /// Refuse a release past its `Valid-Until` (a stale mirror).
    #[serde(default = "yes")]
    pub check_valid_until: bool,
    /// Found by the check: the archives that serve it, fastest first.
    #[serde(default)]
    pub archives: Vec<ArchiveUrl>,
    /// Found by the check: the release's Description.
    #[serde(default)]
    pub description: String,
    /// Found by the check: the release's `Valid-Until`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
    pub status: Status,
}

/// How long before its release's `Valid-Until` runs out a source is checked again
/// (`cronjob_check_sources`): a mirror that stopped renewing it shows before builds fail.
pub const RECHECK_HOURS: i64 = 24;

fn yes() -> bool {
    true
}

impl Source {
    pub fn id(&self) -> String {
        format!("{}:{}", self.origin, self.codename)
    }

    pub fn codeversion(&self) -> &str {
        self.codeversion_override.as_deref().unwrap_or(&self.codeversion)
    }

    /// What a passing check learnt: the archives, and the release's components, architectures,
    /// codeversion and description. Names apt would not take are left out.
    pub fn learn(&mut self, archives: &[ArchiveUrl], r: &crate::deb::Release) {
        self.archives = archives.to_vec();
        self.components = r.components.iter().filter_map(|c| c.parse().ok()).collect();
        self.architectures = r.architectures.iter().filter_map(|a| a.parse().ok()).collect();
        self.codeversion = crate::layout::guess_codeversion(&self.origin, r.version.as_deref(), self.codename.as_str());
        self.description = r.description.clone().unwrap_or_default();
        self.valid_until = r.valid_until;
    }

    /// Whether `cronjob_check_sources` checks it again now: it is active (or its check failed
    /// while it was), it honours `Valid-Until`, and its release runs out within
    /// [`RECHECK_HOURS`], or ran out.
    pub fn recheck_due(&self, now: DateTime<Utc>) -> bool {
        let live = self.status.is_active() || self.status.checked == Checked::Reactivate;
        live && self.check_valid_until
            && self.valid_until.is_some_and(|u| u - now <= chrono::Duration::hours(RECHECK_HOURS))
    }
}

/// A chroot config object (mini-buildd's Chroot with the Dir backend), `codename:arch`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Chroot {
    pub codename: Codename,
    pub arch: Arch,
    /// The archive mmdebstrap and apt inside the image use.
    pub mirror: ArchiveUrl,
    pub status: Status,
}

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

impl Chroot {
    pub fn new(codename: Codename, arch: Arch) -> Chroot {
        Chroot {
            codename,
            arch,
            mirror: DEFAULT_MIRROR.parse().expect("the default mirror is a valid URL"),
            status: Status::default(),
        }
    }

    /// `codename:arch`, its id in the config store and in `status`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.codename, self.arch)
    }

    /// `buildbay-<codename>-<arch>`: the machine image's and the schroot's name.
    pub fn name(&self) -> String {
        chroot_name(&self.codename, &self.arch)
    }
}

/// `buildbay-<codename>-<arch>`: a chroot's machine image and schroot name.
pub fn chroot_name(codename: &Codename, arch: &Arch) -> String {
    format!("buildbay-{codename}-{arch}")
}

/// An upstream archive (mini-buildd's Archive): a mirror that may serve Sources.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Archive {
    pub url: ArchiveUrl,
    /// Milliseconds its last ping took (the check).
    #[serde(default)]
    pub ping_ms: Option<u64>,
    pub status: Status,
}

impl Archive {
    pub fn new(url: ArchiveUrl) -> Archive {
        Archive { url, ping_ms: None, status: Status::default() }
    }
}

/// An archive signing key a Source trusts (mini-buildd's AptKey), by fingerprint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AptKey {
    /// The armored public key.
    pub key: String,
    /// Read from the key when it is saved.
    #[serde(default)]
    pub fingerprint: String,
    /// Its first user id, read from the key.
    #[serde(default)]
    pub name: String,
    pub status: Status,
}

impl AptKey {
    pub fn from_cert(cert: &sequoia_openpgp::Cert) -> Result<AptKey, crate::gpg::GpgError> {
        use sequoia_openpgp::serialize::SerializeInto;
        let key = String::from_utf8(cert.armored().to_vec()?).unwrap_or_default();
        Ok(AptKey {
            key,
            fingerprint: cert.fingerprint().to_hex(),
            name: cert
                .userids()
                .next()
                .map(|u| String::from_utf8_lossy(u.userid().value()).into_owned())
                .unwrap_or_default(),
            status: Status::default(),
        })
    }

    /// Re-read fingerprint and name from the key itself (what the editor saves).
    pub fn from_key(key: &str, status: Status) -> Result<AptKey, crate::gpg::GpgError> {
        let cert = crate::gpg::one_key(key.as_bytes())?;
        Ok(AptKey { status, ..AptKey::from_cert(&cert)? })
    }
}

/// A Source added to a distribution's builds with an apt pin priority (mini-buildd's
/// PrioritySource), e.g. backports at 1: there, but only taken when asked for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PrioritySource {
    pub source: String,
    pub priority: i32,
    pub status: Status,
}

impl PrioritySource {
    pub fn id(&self) -> String {
        format!("{}:{}", self.source, self.priority)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchOption {
    pub arch: Arch,
    pub optional: bool,
    pub build_architecture_all: bool,
}

/// How the builds of a distribution are isolated.
pub use crate::protocol::Backend as BuildBackend;

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
    /// PrioritySource ids whose archives the builds also see, pinned.
    #[serde(default)]
    pub extra_sources: Vec<String>,
    /// mini-buildd's build settings (resolver, QA modes, blocks, …), as fields of their own.
    #[serde(flatten)]
    pub build: crate::protocol::BuildSettings,
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
    /// With `allow_unauthenticated_uploads`: take unsigned uploads from any FTP peer, not only
    /// from this host (buildbay's own; off by default).
    #[serde(default)]
    pub unauthenticated_from_network: bool,
    pub extra_uploader_keyrings: Vec<String>,
    #[serde(flatten, default)]
    pub mail: RepositoryMail,
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

/// Another instance whose builders this one shares, both ways (mini-buildd's Remote). Trust
/// rests on its key: prepare imports it from the remote's `pub_key` (verify its fingerprint
/// out of band), check proves a signed handshake both ways.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Remote {
    /// mini-buildd's `http`: where its API is (`http://host:port`).
    pub http: crate::protocol::remote::RemoteUrl,
    /// Run (split like a shell would, never through one) when its `status` does not answer.
    #[serde(default)]
    pub wake_command: String,
    /// Its armored public key, imported by prepare.
    #[serde(default)]
    pub key: String,
    /// Read from the key by prepare.
    #[serde(default)]
    pub key_fingerprint: String,
    /// What its last `status` said: its chroots, load and incoming.
    #[serde(default)]
    pub last_status: Option<crate::protocol::remote::RemoteStatus>,
    /// A check passed with its current key (a handshake both ways): until then its key is not
    /// trusted, even when it is armed to activate.
    #[serde(default)]
    pub verified: bool,
    pub status: Status,
}

/// A user's subscription to the events of a source and/or a distribution (empty: any), kept
/// under `<user>/<source>/<distribution>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subscription {
    pub user: String,
    pub source: String,
    pub distribution: String,
}

impl Subscription {
    /// Its id in the store.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.user, self.source, self.distribution)
    }
}

/// Each kind of configuration object is stored under its name in [`kind`].
macro_rules! config_objects {
    ($($t:ty => $k:ident),* $(,)?) => {
        $(impl crate::store::ConfigObject for $t { const KIND: &'static str = kind::$k; })*
    };
}
config_objects! {
    Daemon => DAEMON,
    LayoutObject => LAYOUT,
    AptKey => APTKEY,
    Archive => ARCHIVE,
    Source => SOURCE,
    PrioritySource => PRIORITYSOURCE,
    Distribution => DISTRIBUTION,
    Repository => REPOSITORY,
    Chroot => CHROOT,
    Uploader => UPLOADER,
    Subscription => SUBSCRIPTION,
    Remote => REMOTE,
}

/// The kinds of configuration objects, in the order they depend on each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Daemon,
    Layout,
    AptKey,
    Archive,
    Source,
    PrioritySource,
    Distribution,
    Repository,
    Chroot,
    Uploader,
    Remote,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Daemon,
        Kind::Layout,
        Kind::AptKey,
        Kind::Archive,
        Kind::Source,
        Kind::PrioritySource,
        Kind::Distribution,
        Kind::Repository,
        Kind::Chroot,
        Kind::Uploader,
        Kind::Remote,
    ];

    /// [`Kind::ALL`]'s names, for argument choices.
    pub const NAMES: [&'static str; 11] = [
        kind::DAEMON,
        kind::LAYOUT,
        kind::APTKEY,
        kind::ARCHIVE,
        kind::SOURCE,
        kind::PRIORITYSOURCE,
        kind::DISTRIBUTION,
        kind::REPOSITORY,
        kind::CHROOT,
        kind::UPLOADER,
        kind::REMOTE,
    ];

    /// The store's key prefix (see [`kind`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Daemon => kind::DAEMON,
            Kind::Layout => kind::LAYOUT,
            Kind::AptKey => kind::APTKEY,
            Kind::Archive => kind::ARCHIVE,
            Kind::Source => kind::SOURCE,
            Kind::PrioritySource => kind::PRIORITYSOURCE,
            Kind::Distribution => kind::DISTRIBUTION,
            Kind::Repository => kind::REPOSITORY,
            Kind::Chroot => kind::CHROOT,
            Kind::Uploader => kind::UPLOADER,
            Kind::Remote => kind::REMOTE,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Kind, String> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!("unknown configuration object kind {s:?}; use one of {}", Kind::ALL.map(Kind::as_str).join(", "))
        })
    }
}

/// A lifecycle action on one configuration object (mini-buildd's admin actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Prepare,
    Check,
    Activate,
    Deactivate,
    /// Unprepare: back to "removed" (the object stays, its data on disk too).
    Remove,
    /// Prepare, check and activate.
    Pca,
    /// Delete a removed object from the configuration.
    Delete,
}

impl Action {
    pub const NAMES: &'static [&'static str] =
        &["prepare", "check", "activate", "deactivate", "remove", "pca", "delete"];
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Action, String> {
        Ok(match s {
            "prepare" => Action::Prepare,
            "check" => Action::Check,
            "activate" => Action::Activate,
            "deactivate" => Action::Deactivate,
            "remove" => Action::Remove,
            "pca" => Action::Pca,
            "delete" => Action::Delete,
            other => return Err(format!("unknown action {other:?}; use one of {}", Action::NAMES.join(", "))),
        })
    }
}

/// Any configuration object, typed.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Object {
    Daemon(Daemon),
    Layout(LayoutObject),
    AptKey(AptKey),
    Archive(Archive),
    Source(Source),
    PrioritySource(PrioritySource),
    Distribution(Distribution),
    Repository(Repository),
    Chroot(Chroot),
    Uploader(Uploader),
    Remote(Remote),
}

/// A reference to another object: `(kind, id)`.
pub type ObjRef = (Kind, String);

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Daemon(_) => Kind::Daemon,
            Object::Layout(_) => Kind::Layout,
            Object::AptKey(_) => Kind::AptKey,
            Object::Archive(_) => Kind::Archive,
            Object::Source(_) => Kind::Source,
            Object::PrioritySource(_) => Kind::PrioritySource,
            Object::Distribution(_) => Kind::Distribution,
            Object::Repository(_) => Kind::Repository,
            Object::Chroot(_) => Kind::Chroot,
            Object::Uploader(_) => Kind::Uploader,
            Object::Remote(_) => Kind::Remote,
        }
    }

    pub fn status(&self) -> &Status {
        match self {
            Object::Daemon(o) => &o.status,
            Object::Layout(o) => &o.status,
            Object::AptKey(o) => &o.status,
            Object::Archive(o) => &o.status,
            Object::Source(o) => &o.status,
            Object::PrioritySource(o) => &o.status,
            Object::Distribution(o) => &o.status,
            Object::Repository(o) => &o.status,
            Object::Chroot(o) => &o.status,
            Object::Uploader(o) => &o.status,
            Object::Remote(o) => &o.status,
        }
    }

    pub fn status_mut(&mut self) -> &mut Status {
        match self {
            Object::Daemon(o) => &mut o.status,
            Object::Layout(o) => &mut o.status,
            Object::AptKey(o) => &mut o.status,
            Object::Archive(o) => &mut o.status,
            Object::Source(o) => &mut o.status,
            Object::PrioritySource(o) => &mut o.status,
            Object::Distribution(o) => &mut o.status,
            Object::Repository(o) => &mut o.status,
            Object::Chroot(o) => &mut o.status,
            Object::Uploader(o) => &mut o.status,
            Object::Remote(o) => &mut o.status,
        }
    }

    /// The object's id in the configuration (`1` for the daemon, which is one of a kind).
    pub fn id(&self) -> String {
        match self {
            Object::Daemon(_) => "1".into(),
            Object::Layout(o) => o.layout.name.clone(),
            Object::AptKey(o) => o.fingerprint.clone(),
            Object::Archive(o) => o.url.to_string(),
            Object::Source(o) => o.id(),
            Object::PrioritySource(o) => o.id(),
            Object::Distribution(o) => o.codename.to_string(),
            Object::Repository(o) => o.identity.to_string(),
            Object::Chroot(o) => o.id(),
            Object::Uploader(o) => o.user.clone(),
            Object::Remote(o) => o.http.to_string(),
        }
    }

    /// What an editor shows and takes: every field but the status, as JSON.
    pub fn fields(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut v {
            m.remove("status");
        }
        v
    }

    /// Its fields without the mail settings ([`MAIL_FIELDS`]): what its status depends on.
    pub fn fields_but_mail(&self) -> serde_json::Value {
        let mut v = self.fields();
        if let serde_json::Value::Object(m) = &mut v {
            m.retain(|k, _| !MAIL_FIELDS.contains(&k.as_str()));
        }
        v
    }

    /// An object of `kind` from its fields (as [`Object::fields`] gives them) and a status.
    /// The fields are parsed here, once: a bad name, architecture or codename is refused with
    /// what is wrong.
    pub fn from_fields(kind: Kind, fields: serde_json::Value, status: Status) -> Result<Object, String> {
        let serde_json::Value::Object(mut m) = fields else {
            return Err(format!("a {kind} is a JSON object of its fields, like {{\"field\": value, …}}"));
        };
        m.insert("status".into(), serde_json::to_value(status).map_err(|e| e.to_string())?);
        let v = serde_json::Value::Object(m);
        fn de<T: serde::de::DeserializeOwned>(kind: Kind, v: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| format!("{kind}: {e}"))
        }
        Ok(match kind {
            Kind::Daemon => {
                let d: Daemon = de(kind, v)?;
                d.mail.check().map_err(|e| format!("{kind}: {e}"))?;
                if let Some(o) = &d.custom_archive_origin {
                    crate::deb::names::valid_origin(o).map_err(|e| format!("{kind}: custom_archive_origin: {e}"))?;
                }
                Object::Daemon(d)
            }
            Kind::Layout => Object::Layout(de(kind, v)?),
            Kind::AptKey => {
                let k: AptKey = de(kind, v)?;
                Object::AptKey(AptKey::from_key(&k.key, k.status).map_err(|e| format!("{kind}: {e}"))?)
            }
            Kind::Archive => Object::Archive(de(kind, v)?),
            Kind::Source => {
                let s: Source = de(kind, v)?;
                crate::deb::names::valid_origin(&s.origin).map_err(|e| format!("{kind}: {e}"))?;
                Object::Source(s)
            }
            Kind::PrioritySource => Object::PrioritySource(de(kind, v)?),
            Kind::Distribution => {
                let d: Distribution = de(kind, v)?;
                d.build.check().map_err(|e| format!("{kind}: {e}"))?;
                Object::Distribution(d)
            }
            Kind::Repository => Object::Repository(de(kind, v)?),
            Kind::Chroot => Object::Chroot(de(kind, v)?),
            Kind::Uploader => Object::Uploader(de(kind, v)?),
            Kind::Remote => {
                let r: Remote = de(kind, v)?;
                if r.wake_command.len() > 1024 || r.wake_command.chars().any(|c| c.is_control()) {
                    return Err(format!("{kind}: wake_command is one line of at most 1024 characters"));
                }
                Object::Remote(r)
            }
        })
    }

    /// The objects this one needs active before its check can pass.
    pub fn depends_on(&self) -> Vec<ObjRef> {
        match self {
            Object::Daemon(_) | Object::Layout(_) | Object::AptKey(_) | Object::Archive(_) => vec![],
            // Its keys are not dependencies: one good signature suffices, and an expired key of
            // a keyring must not fail the Source (its check uses the keys that are usable).
            Object::Source(_) => vec![],
            Object::PrioritySource(p) => vec![(Kind::Source, p.source.clone())],
            Object::Distribution(d) => std::iter::once((Kind::Source, d.base_source.clone()))
                .chain(d.extra_sources.iter().map(|p| (Kind::PrioritySource, p.clone())))
                .collect(),
            Object::Repository(r) => std::iter::once((Kind::Layout, r.layout.clone()))
                .chain(r.distributions.iter().map(|c| (Kind::Distribution, c.to_string())))
                .collect(),
            Object::Chroot(c) => vec![(Kind::Distribution, c.codename.to_string())],
            Object::Uploader(u) => u.may_upload_to.iter().map(|r| (Kind::Repository, r.to_string())).collect(),
            Object::Remote(_) => vec![],
        }
    }
}

/// The check every object shares: what it depends on exists and is active. `lookup` gives a
/// dependency's status, or None when it does not exist.
pub fn check_dependencies(obj: &Object, lookup: impl Fn(&ObjRef) -> Option<Status>) -> Result<(), String> {
    let missing: Vec<String> = obj
        .depends_on()
        .iter()
        .filter_map(|r| match lookup(r) {
            None => Some(format!("{} {} does not exist", r.0, r.1)),
            Some(s) if !s.is_active() => Some(format!("{} {} is not active", r.0, r.1)),
            Some(_) => None,
        })
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(format!("{}; activate it first", missing.join(", "))) }
}

pub mod kind {
    pub const DAEMON: &str = "daemon";
    pub const APTKEY: &str = "aptkey";
    pub const ARCHIVE: &str = "archive";
    pub const SOURCE: &str = "source";
    pub const PRIORITYSOURCE: &str = "prioritysource";
    pub const DISTRIBUTION: &str = "distribution";
    pub const LAYOUT: &str = "layout";
    pub const REPOSITORY: &str = "repository";
    pub const UPLOADER: &str = "uploader";
    pub const SUBSCRIPTION: &str = "subscription";
    pub const CHROOT: &str = "chroot";
    pub const REMOTE: &str = "remote";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_name_what_is_missing_or_inactive() {
        let repo = Object::Repository(Repository {
            identity: "test".parse().unwrap(),
            layout: "Default".into(),
            distributions: vec!["bookworm".parse().unwrap(), "trixie".parse().unwrap()],
            allow_unauthenticated_uploads: false,
            unauthenticated_from_network: false,
            extra_uploader_keyrings: vec![],
            mail: Default::default(),
            status: Status::default(),
        });
        assert_eq!(
            repo.depends_on(),
            vec![
                (Kind::Layout, "Default".into()),
                (Kind::Distribution, "bookworm".into()),
                (Kind::Distribution, "trixie".into())
            ]
        );
        let active = Status { state: State::Active, checked: Checked::Never, message: None };
        let lookup = |r: &ObjRef| match r.1.as_str() {
            "Default" => Some(active.clone()),
            "bookworm" => Some(Status::default()),
            _ => None,
        };
        assert_eq!(
            check_dependencies(&repo, lookup).unwrap_err(),
            "distribution bookworm is not active, distribution trixie does not exist; activate it first"
        );
        assert!(check_dependencies(&repo, |_| Some(active.clone())).is_ok());
        assert_eq!("chroot".parse::<Kind>(), Ok(Kind::Chroot));
        assert_eq!(Kind::ALL.map(Kind::as_str), Kind::NAMES);
        assert!("nonsense".parse::<Kind>().unwrap_err().contains("daemon, layout"));
        assert_eq!("pca".parse::<Action>(), Ok(Action::Pca));
    }

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
        // Failing again while it waits: it still waits to reactivate, with the new reason.
        s.checked(Err("still unreachable".into()), now);
        assert_eq!((s.state, s.checked.clone()), (State::Prepared, Checked::Reactivate));
        assert_eq!(s.message.as_deref(), Some("still unreachable"));
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
