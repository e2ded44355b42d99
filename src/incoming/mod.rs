//! Incoming: the FTP drop box and the spool. A set of files becomes an upload only when a
//! `.changes` and every file it lists are present with the listed sizes; then it is claimed
//! into `<state>/spool/<id>/` and recorded in redb in one transaction. What never completes is
//! swept after a timeout.
//!
//! Claiming is crash-safe: files are hard-linked into the spool first, the record is committed,
//! and only then are the incoming names removed. A restart finds either no record (the spool
//! directory is dropped and the files are claimed again) or a record whose spool files share
//! their inodes with the leftovers in incoming (the leftovers are removed, never claimed twice).
//!
//! Two drop boxes are scanned: the FTP incoming, open to anyone, and the daemon's own results
//! directory, where only this instance's builders deliver. A user upload's timecode is always
//! made here: nothing an uploader writes picks its key.

pub mod ftp;

use crate::deb::{Changes, FileName};
use crate::events::{Event, EventType};
use crate::protocol::{BuildKey, QaMode, Timecode};
use crate::store::{self, CLAIMED, PENDING, StoreError, UPLOAD_KEYS, UPLOADS};
use chrono::{DateTime, Utc};
use redb::ReadableTable;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}
crate::from_redb_errors!(IncomingError);

type Result<T> = std::result::Result<T, IncomingError>;

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IncomingError {
    let path = path.into();
    move |source| IncomingError::Io { path, source }
}

/// Limits of the drop box.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest single file, in bytes.
    pub max_file: u64,
    /// Largest upload (the sum of what a `.changes` lists), in bytes.
    pub max_upload: u64,
    /// Files that are not part of a complete upload after this long are swept.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_file: 2 << 30, max_upload: 8 << 30, timeout: Duration::from_secs(3600) }
    }
}

/// What a spool entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A user's upload (source, or a binary-only upload).
    Upload,
    /// `*_mini-buildd-buildresult_<arch>.changes` from a builder.
    BuildResult,
    /// `*_mini-buildd-buildrequest_<arch>.changes` from a remote packager.
    BuildRequest,
}

/// Where an upload is in the pipeline. Final: Installed, Failed, Rejected, Done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UploadState {
    /// Claimed into the spool; the checks have not run yet.
    Received,
    /// Checked; build requests are queued, results are awaited.
    Packaging,
    Installed,
    Failed,
    Rejected,
    /// A build result that was handed to its upload (or back to its remote), or a remote's
    /// build request that was built.
    Done,
    /// This builder's result of a remote's request, on its way back to the remote's incoming.
    Forwarding,
}

impl UploadState {
    pub fn is_final(self) -> bool {
        !matches!(self, UploadState::Received | UploadState::Packaging | UploadState::Forwarding)
    }
}

/// One architecture of an upload being packaged.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArchBuild {
    pub bkey: BuildKey,
    pub optional: bool,
    pub arch_all: bool,
    /// Experimental suites ignore lintian, piuparts and autopkgtest results.
    #[serde(default)]
    pub ignore_checks: bool,
    /// The QA modes requested (what the result is judged by, whatever the builder reports).
    #[serde(default)]
    pub lintian: QaMode,
    #[serde(default)]
    pub piuparts: QaMode,
    #[serde(default)]
    pub autopkgtest: QaMode,
    /// The build result, once it arrived.
    pub result: Option<ArchResult>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArchResult {
    /// `X-Mini-Buildd-Sbuild-Status` (`successful`, `skipped`, `failed`, `error`, …).
    pub status: String,
    pub success: bool,
    /// The spool id of the build result.
    pub spool: u64,
    pub reason: Option<String>,
    /// The QA checks' verdicts (`Lintian`, `Piuparts`, `Autopkgtest` → `pass`, `fail`, …), as
    /// the build result reported them.
    #[serde(default)]
    pub checks: std::collections::BTreeMap<String, String>,
}

/// An upload in the spool: the queue record, in redb table `uploads`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Upload {
    pub id: u64,
    pub kind: Kind,
    pub changes: FileName,
    /// Every file of the upload, the `.changes` included, as stored in the spool.
    pub files: Vec<FileName>,
    #[serde(with = "crate::events::iso")]
    pub received: DateTime<Utc>,
    pub state: UploadState,
    /// From the `.changes`, or guessed from its name when it does not parse.
    pub source: String,
    pub version: String,
    pub distribution: String,
    /// Made when the upload was claimed (mini-buildd's `X-Mini-Buildd-Timecode` of an upload is
    /// not taken: it would let an uploader choose the key, and its path).
    pub timecode: Timecode,
    pub arches: BTreeMap<String, ArchBuild>,
    /// Why it was rejected or failed.
    pub error: Option<String>,
    pub retries: u32,
    /// Who uploaded the `.changes` over FTP; `None`: dropped into incoming on this host.
    #[serde(default)]
    pub peer: Option<Peer>,
    /// How often its current step failed for a reason of the daemon's (a full disk, …).
    #[serde(default)]
    pub attempts: u32,
    /// When its build requests were queued (PACKAGING has a deadline).
    #[serde(default)]
    pub packaging_since: Option<DateTime<Utc>>,
    /// FORWARDING: the remote incoming this build result goes to.
    #[serde(default)]
    pub forward_to: Option<crate::protocol::remote::FtpUrl>,
}

impl Upload {
    /// mini-buildd's key: `<source>/<version>/<timecode>`.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.source, self.version, self.timecode)
    }
}

pub fn get(tx: &redb::ReadTransaction, id: u64) -> std::result::Result<Option<Upload>, StoreError> {
    get_from(&tx.open_table(UPLOADS)?, id)
}

/// Read an upload inside a write transaction.
pub fn get_w(tx: &redb::WriteTransaction, id: u64) -> std::result::Result<Option<Upload>, StoreError> {
    get_from(&tx.open_table(UPLOADS)?, id)
}

fn get_from(t: &impl ReadableTable<u64, &'static [u8]>, id: u64) -> std::result::Result<Option<Upload>, StoreError> {
    t.get(id)?.map(|v| store::decode(&format!("upload {id}"), v.value())).transpose()
}

/// Store an upload; it is pending exactly while its state is not final.
pub fn put(tx: &redb::WriteTransaction, u: &Upload) -> std::result::Result<(), StoreError> {
    tx.open_table(UPLOADS)?.insert(u.id, store::encode(u).as_slice())?;
    let mut pending = tx.open_table(PENDING)?;
    if u.state.is_final() {
        pending.remove(u.id)?;
    } else {
        pending.insert(u.id, 0)?;
    }
    Ok(())
}

/// Forget finished uploads (their records only; the caller removed their spool directories):
/// their records, their keys, and the drop box names claimed for them, in one transaction.
pub fn forget(store: &store::Store, uploads: &[Upload]) -> std::result::Result<(), StoreError> {
    let ids: std::collections::HashSet<u64> = uploads.iter().map(|u| u.id).collect();
    let tx = store.write()?;
    {
        let (mut records, mut pending, mut keys) =
            (tx.open_table(UPLOADS)?, tx.open_table(PENDING)?, tx.open_table(UPLOAD_KEYS)?);
        for u in uploads {
            records.remove(u.id)?;
            pending.remove(u.id)?;
            keys.remove(u.key().as_str())?;
        }
        let mut claimed = tx.open_table(CLAIMED)?;
        let names: Vec<String> = claimed
            .iter()?
            .filter_map(|e| e.ok())
            .filter(|(_, id)| ids.contains(&id.value()))
            .map(|(n, _)| n.value().to_owned())
            .collect();
        for n in names {
            claimed.remove(n.as_str())?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Every upload, oldest first.
pub fn list(store: &store::Store) -> std::result::Result<Vec<Upload>, StoreError> {
    list_from(&store.read()?.open_table(UPLOADS)?)
}

fn list_from(t: &impl ReadableTable<u64, &'static [u8]>) -> std::result::Result<Vec<Upload>, StoreError> {
    let mut out = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        out.push(store::decode(&format!("upload {}", k.value()), v.value())?);
    }
    Ok(out)
}

/// The build result file name pattern: `<src>_<ver>_mini-buildd-buildresult_<arch>.changes`.
pub fn result_arch(name: &str) -> Option<&str> {
    crate::protocol::BuildResult::arch_of(name)
}

/// The extended attribute that records who uploaded a file over FTP.
const PEER_XATTR: &str = "user.buildbay.peer";

/// Who sent a file over FTP: the peer's address, and for a peer on this host the uid that owns
/// its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub ip: IpAddr,
    pub uid: Option<u32>,
}

impl Peer {
    /// On this host, and not one of buildbay's own builds (a build may reach loopback while it
    /// installs its dependencies: its uploads are a stranger's).
    pub fn is_local(&self) -> bool {
        let loopback = self.ip.to_canonical().is_loopback();
        loopback && self.uid.is_some_and(|uid| !is_build_uid(uid))
    }

    fn encode(&self) -> String {
        match self.uid {
            Some(u) => format!("{} {u}", self.ip),
            None => self.ip.to_string(),
        }
    }

    fn decode(s: &str) -> Option<Peer> {
        let mut w = s.split_whitespace();
        let ip = w.next()?.parse().ok()?;
        Some(Peer { ip, uid: w.next().and_then(|u| u.parse().ok()) })
    }
}

/// A build's uid: a slot's build user (made with the comment "buildbay build slot") or a uid
/// of an nspawn machine's range.
pub fn is_build_uid(uid: u32) -> bool {
    uid >= crate::protocol::BUILD_UID_BASE
        || nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .is_some_and(|u| u.gecos.to_string_lossy().starts_with("buildbay build slot"))
}

/// The uid owning the local socket `peer` connected to `local` (both on this host), from
/// `/proc/net/tcp` or `tcp6`.
pub fn socket_uid(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Option<u32> {
    let hex4 = |a: std::net::Ipv4Addr| format!("{:08X}", u32::from_le_bytes(a.octets()));
    let hex6 = |a: std::net::Ipv6Addr| {
        a.octets()
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<String>()
    };
    let key = |a: std::net::SocketAddr| match a.ip() {
        IpAddr::V4(v4) => (false, format!("{}:{:04X}", hex4(v4), a.port())),
        IpAddr::V6(v6) => (true, format!("{}:{:04X}", hex6(v6), a.port())),
    };
    let ((v6, want_local), (_, want_remote)) = (key(peer), key(local));
    let table = std::fs::read_to_string(if v6 { "/proc/net/tcp6" } else { "/proc/net/tcp" }).ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == want_local && f[2] == want_remote).then(|| f[7].parse().ok()).flatten()
    })
}

/// Record the FTP peer of a file that is about to land in incoming.
pub fn set_peer(file: &std::fs::File, peer: Peer) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let name = std::ffi::CString::new(PEER_XATTR).map_err(std::io::Error::other)?;
    let value = peer.encode();
    // SAFETY: a valid descriptor, NUL-terminated name, and a buffer of the given length.
    let r = unsafe { nix::libc::fsetxattr(file.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The FTP peer of a file, if it came over FTP and its file system keeps the record.
pub fn peer_of(path: &Path) -> Option<Peer> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(PEER_XATTR).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe { nix::libc::lgetxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return None;
    }
    Peer::decode(std::str::from_utf8(&buf[..n as usize]).ok()?)
}

/// Is the `.changes` ready? Pure: `present` gives the size of a file in incoming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Complete,
    /// Files still missing or of another size than listed (maybe still being replaced).
    Waiting(Vec<String>),
    TooLarge {
        total: u64,
        limit: u64,
    },
}

pub fn readiness(changes: &Changes, limits: &Limits, present: impl Fn(&FileName) -> Option<u64>) -> Readiness {
    let total: u64 = changes.files.iter().map(|f| f.size).fold(0, u64::saturating_add);
    if total > limits.max_upload {
        return Readiness::TooLarge { total, limit: limits.max_upload };
    }
    let waiting: Vec<String> = changes
        .files
        .iter()
        .filter_map(|f| match present(&f.name) {
            Some(s) if s == f.size => None,
            Some(s) => Some(format!("{} ({} bytes, listed with {})", f.name, s, f.size)),
            None => Some(format!("{} (missing)", f.name)),
        })
        .collect();
    if waiting.is_empty() { Readiness::Complete } else { Readiness::Waiting(waiting) }
}

/// `(source, version)` guessed from `<source>_<version>_<arch>.changes`.
fn guess_from_name(name: &str) -> (String, String) {
    let mut parts = name.trim_end_matches(".changes").split('_');
    (parts.next().unwrap_or(name).to_owned(), parts.next().unwrap_or("").to_owned())
}

/// What one scan did.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Spool ids of uploads claimed for the packager.
    pub claimed: Vec<u64>,
    /// REJECTED events already recorded (publish them).
    pub events: Vec<Event>,
    pub swept: Vec<String>,
}

/// The drop box `<state>/incoming/`, the results directory `<state>/var/results/`, and the
/// spool `<state>/spool/`.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub dir: PathBuf,
    /// Where this instance's builders deliver their results (only the daemon writes there).
    pub results: PathBuf,
    pub spool: PathBuf,
    pub limits: Limits,
}

/// A new spool id: microseconds since the epoch, strictly increasing within the process.
fn fresh_id() -> u64 {
    crate::protocol::fresh_micros()
}

fn ino(p: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(p).ok().filter(|m| m.is_file()).map(|m| (m.dev(), m.ino()))
}

/// The drop box of this instance's own builders, under the state directory.
pub const RESULTS_DIR: &str = "var/results";

/// One drop box being scanned.
#[derive(Clone, Copy)]
struct DropDir<'a> {
    dir: &'a Path,
    /// Open to anyone over FTP (incoming), or the daemon's own (results).
    ftp: bool,
}

impl Incoming {
    pub fn new(state: &Path, limits: Limits) -> Result<Incoming> {
        let inc = Incoming {
            dir: state.join("incoming"),
            results: state.join(RESULTS_DIR),
            spool: state.join("spool"),
            limits,
        };
        for d in [inc.dir.clone(), inc.part_dir(), inc.spool.clone(), inc.results.clone()] {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&inc.results, std::fs::Permissions::from_mode(0o700)).map_err(io_err(&inc.results))?;
        Ok(inc)
    }

    /// Where the FTP server writes files until they are complete.
    pub fn part_dir(&self) -> PathBuf {
        self.dir.join(".part")
    }

    pub fn spool_dir(&self, id: u64) -> PathBuf {
        self.spool.join(id.to_string())
    }

    /// After a restart: drop spool directories that no record owns (a claim that did not commit).
    pub fn recover(&self, store: &store::Store) -> Result<usize> {
        let tx = store.read()?;
        let t = tx.open_table(UPLOADS)?;
        let mut dropped = 0;
        for e in std::fs::read_dir(&self.spool).map_err(io_err(&self.spool))? {
            let e = e.map_err(io_err(&self.spool))?;
            let owned = match e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                Some(id) => t.get(id)?.is_some(),
                None => false,
            };
            if !owned {
                std::fs::remove_dir_all(e.path()).map_err(io_err(e.path()))?;
                dropped += 1;
            }
        }
        for e in std::fs::read_dir(self.part_dir()).map_err(io_err(self.part_dir()))? {
            let e = e.map_err(io_err(self.part_dir()))?;
            let _ = std::fs::remove_file(e.path());
        }
        Ok(dropped)
    }

    /// One pass over the drop boxes: claim complete uploads, reject what cannot become one, sweep.
    pub fn scan(&self, store: &store::Store, now: SystemTime) -> Result<ScanReport> {
        let mut report = ScanReport::default();
        self.scan_dir(store, DropDir { dir: &self.results, ftp: false }, now, &mut report)?;
        self.scan_dir(store, DropDir { dir: &self.dir, ftp: true }, now, &mut report)?;
        let part = self.part_dir();
        if let Ok(rd) = std::fs::read_dir(&part) {
            for e in rd.flatten() {
                let stale = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .is_some_and(|m| now.duration_since(m).unwrap_or_default() > self.limits.timeout);
                if stale {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(report)
    }

    fn scan_dir(
        &self,
        store: &store::Store,
        drop: DropDir<'_>,
        now: SystemTime,
        report: &mut ScanReport,
    ) -> Result<()> {
        let mut sizes: BTreeMap<String, (u64, SystemTime)> = BTreeMap::new();
        for e in std::fs::read_dir(drop.dir).map_err(io_err(drop.dir))? {
            let e = e.map_err(io_err(drop.dir))?;
            let Ok(name) = e.file_name().into_string() else { continue };
            let Ok(m) = e.metadata() else { continue };
            if m.is_file() && !name.starts_with('.') {
                sizes.insert(name, (m.len(), m.modified().unwrap_or(now)));
            }
        }
        let stale = |mtime: SystemTime| now.duration_since(mtime).unwrap_or_default() > self.limits.timeout;
        let mut referenced: BTreeSet<String> = BTreeSet::new();
        let changes_names: Vec<String> = sizes.keys().filter(|n| n.ends_with(".changes")).cloned().collect();
        for name in changes_names {
            let Some(&(_, mtime)) = sizes.get(&name) else { continue };
            let path = drop.dir.join(&name);
            if self.leftover(store, drop, &name)? {
                continue;
            }
            let text = match crate::deb::changes::read_bounded(&path)
                .and_then(|raw| String::from_utf8(raw).map_err(|_| std::io::Error::other("it is not UTF-8 text")))
            {
                Ok(t) => t,
                Err(e) => {
                    self.claim_rejected(store, drop, &name, &[], format!("cannot read the .changes: {e}"), report)?;
                    continue;
                }
            };
            let changes = match Changes::parse(&text) {
                Ok(c) => c,
                Err(e) => {
                    let why = format!("the .changes does not parse: {e}");
                    self.claim_rejected(store, drop, &name, &[], why, report)?;
                    continue;
                }
            };
            referenced.extend(changes.files.iter().map(|f| f.name.to_string()));
            // What of the upload is here, to keep with a rejection.
            let present = || -> Vec<FileName> {
                changes.files.iter().filter(|f| sizes.contains_key(f.name.as_str())).map(|f| f.name.clone()).collect()
            };
            match readiness(&changes, &self.limits, |f| sizes.get(f.as_str()).map(|s| s.0)) {
                Readiness::Complete => {
                    let id = self.claim(store, drop, &name, &changes)?;
                    report.claimed.push(id);
                }
                Readiness::TooLarge { total, limit } => {
                    let why = format!("the upload is {total} bytes, more than the limit of {limit} bytes");
                    self.claim_rejected(store, drop, &name, &present(), why, report)?;
                }
                Readiness::Waiting(missing) if stale(mtime) => {
                    let why = format!(
                        "the upload stayed incomplete for {} s: {}; upload every file the .changes lists",
                        self.limits.timeout.as_secs(),
                        missing.join(", ")
                    );
                    self.claim_rejected(store, drop, &name, &present(), why, report)?;
                }
                Readiness::Waiting(_) => {}
            }
        }
        // Files no .changes lists.
        for (name, (_, mtime)) in &sizes {
            if !name.ends_with(".changes") && !referenced.contains(name) && stale(*mtime) {
                let p = drop.dir.join(name);
                if std::fs::remove_file(&p).is_ok() {
                    tracing::info!(file = %name, "swept a file that never became part of a complete upload");
                    report.swept.push(name.clone());
                }
            }
        }
        Ok(())
    }

    /// A `.changes` left in a drop box by a claim that committed but crashed before cleaning up.
    fn leftover(&self, store: &store::Store, drop: DropDir<'_>, name: &str) -> Result<bool> {
        let id = {
            let tx = store.read()?;
            let t = tx.open_table(CLAIMED)?;
            t.get(name)?.map(|v| v.value())
        };
        let Some(id) = id else { return Ok(false) };
        let inc = drop.dir.join(name);
        let spooled = self.spool_dir(id).join(name);
        if ino(&inc).is_none() || ino(&inc) != ino(&spooled) {
            return Ok(false);
        }
        let tx = store.read()?;
        if let Some(u) = get(&tx, id)? {
            self.unlink_claimed(drop, &u);
        }
        Ok(true)
    }

    /// Remove the drop box names of a claimed upload, where they still are the claimed files.
    fn unlink_claimed(&self, drop: DropDir<'_>, u: &Upload) {
        let dir = self.spool_dir(u.id);
        for f in &u.files {
            let inc = drop.dir.join(f.as_str());
            if ino(&inc).is_some() && ino(&inc) == ino(&dir.join(f.as_str())) {
                let _ = std::fs::remove_file(&inc);
            }
        }
    }

    /// Link the files into a new spool directory (synced), without a record yet.
    fn link_into_spool(&self, drop: DropDir<'_>, files: &[FileName]) -> Result<u64> {
        let (id, dir) = loop {
            let id = fresh_id();
            let dir = self.spool_dir(id);
            match std::fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(IncomingError::Io { path: dir, source: e }),
            }
        };
        for f in files {
            let from = drop.dir.join(f.as_str());
            let to = dir.join(f.as_str());
            std::fs::hard_link(&from, &to).map_err(io_err(&from))?;
        }
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
        Ok(id)
    }

    fn claim(&self, store: &store::Store, drop: DropDir<'_>, name: &str, changes: &Changes) -> Result<u64> {
        let changes_name: FileName = name.parse().map_err(|e: crate::deb::names::NameError| IncomingError::Io {
            path: drop.dir.join(name),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut files = vec![changes_name.clone()];
        files.extend(changes.files.iter().map(|f| f.name.clone()).filter(|f| f != &changes_name));
        let peer = if drop.ftp { peer_of(&drop.dir.join(name)) } else { None };
        let id = self.link_into_spool(drop, &files)?;
        // Only this instance's results directory delivers build results; what claims to be one
        // over FTP is checked as one (a remote builder's), by its signature.
        let kind = if result_arch(name).is_some() {
            Kind::BuildResult
        } else if drop.ftp && crate::protocol::BuildRequest::arch_of(name).is_some() {
            Kind::BuildRequest
        } else {
            Kind::Upload
        };
        let u = Upload {
            id,
            kind,
            changes: changes_name,
            files,
            received: Utc::now(),
            state: UploadState::Received,
            source: changes.source.to_string(),
            version: changes.version.to_string(),
            distribution: changes.distribution.clone(),
            timecode: Timecode::now(),
            arches: BTreeMap::new(),
            error: None,
            retries: 0,
            peer,
            attempts: 0,
            packaging_since: None,
            forward_to: None,
        };
        let tx = store.write()?;
        put(&tx, &u)?;
        tx.open_table(CLAIMED)?.insert(name, id)?;
        if kind == Kind::Upload {
            insert_key(&tx, &u.key(), id)?;
        }
        tx.commit()?;
        self.unlink_claimed(drop, &u);
        tracing::debug!(id, changes = %name, "claimed an upload");
        Ok(id)
    }

    /// Claim what there is of a broken upload as REJECTED, so that it is kept and can be retried.
    fn claim_rejected(
        &self,
        store: &store::Store,
        drop: DropDir<'_>,
        name: &str,
        files: &[FileName],
        why: String,
        report: &mut ScanReport,
    ) -> Result<()> {
        let (source, version) = guess_from_name(name);
        let Ok(changes_name) = name.parse::<FileName>() else {
            // Not a name the FTP server accepts (dropped in by hand): nothing to keep.
            tracing::warn!(file = %name, "removed a .changes with an invalid name from incoming");
            let _ = std::fs::remove_file(drop.dir.join(name));
            return Ok(());
        };
        let mut all = vec![changes_name.clone()];
        all.extend(files.iter().filter(|f| f.as_str() != name).cloned());
        let peer = if drop.ftp { peer_of(&drop.dir.join(name)) } else { None };
        let id = self.link_into_spool(drop, &all)?;
        let u = Upload {
            id,
            kind: Kind::Upload,
            changes: changes_name,
            files: all,
            received: Utc::now(),
            state: UploadState::Rejected,
            source: source.clone(),
            version: version.clone(),
            distribution: String::new(),
            timecode: Timecode::now(),
            arches: BTreeMap::new(),
            error: Some(why.clone()),
            retries: 0,
            peer,
            attempts: 0,
            packaging_since: None,
            forward_to: None,
        };
        let event = rejected_event(&u, &why);
        let tx = store.write()?;
        put(&tx, &u)?;
        tx.open_table(CLAIMED)?.insert(name, id)?;
        insert_key(&tx, &u.key(), id)?;
        event.record(&tx)?;
        tx.commit()?;
        self.unlink_claimed(drop, &u);
        let _ = std::fs::remove_file(drop.dir.join(name));
        report.events.push(event);
        Ok(())
    }
}

/// Record an upload key, only if no upload has it yet: a key names exactly one upload for ever.
/// Timecodes are fresh and strictly increasing, so a clash means a bug, never a second owner.
pub fn insert_key(tx: &redb::WriteTransaction, key: &str, id: u64) -> std::result::Result<(), StoreError> {
    let mut t = tx.open_table(UPLOAD_KEYS)?;
    if let Some(owner) = t.get(key)?.map(|v| v.value())
        && owner != id
    {
        return Err(StoreError::Corrupt {
            key: format!("upload key {key}"),
            reason: format!("already names upload {owner}"),
        });
    }
    t.insert(key, id)?;
    Ok(())
}

/// The REJECTED event of an upload, with mini-buildd's RFC 7807 `error`.
pub fn rejected_event(u: &Upload, why: &str) -> Event {
    Event::new(EventType::Rejected, &u.distribution, &u.source, &u.version)
        .with("changes", u.changes.as_str())
        .with("key", u.key())
        .with("error", crate::events::problem(400, "Upload rejected", why))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(files: &[(&str, u64)]) -> Changes {
        let mut text = String::from(
            "Format: 1.8\nSource: hello\nVersion: 1.0-1\nDistribution: bookworm-test-unstable\nArchitecture: source\nFiles:\n",
        );
        for (n, s) in files {
            text.push_str(&format!(" d41d8cd98f00b204e9800998ecf8427e {s} misc optional {n}\n"));
        }
        Changes::parse(&text).unwrap()
    }

    #[test]
    fn readiness_waits_for_every_file_and_size() {
        let c = changes(&[("hello_1.0-1.dsc", 10), ("hello_1.0-1.tar.xz", 20)]);
        let l = Limits::default();
        assert_eq!(
            readiness(&c, &l, |_| None),
            Readiness::Waiting(vec!["hello_1.0-1.dsc (missing)".into(), "hello_1.0-1.tar.xz (missing)".into()])
        );
        let partial = |f: &FileName| if f.as_str().ends_with(".dsc") { Some(10) } else { Some(5) };
        assert!(matches!(readiness(&c, &l, partial), Readiness::Waiting(w) if w.len() == 1));
        let all = |f: &FileName| if f.as_str().ends_with(".dsc") { Some(10) } else { Some(20) };
        assert_eq!(readiness(&c, &l, all), Readiness::Complete);
        let small = Limits { max_upload: 25, ..Limits::default() };
        assert_eq!(readiness(&c, &small, all), Readiness::TooLarge { total: 30, limit: 25 });
    }

    #[test]
    fn result_names() {
        assert_eq!(result_arch("hello_1.0-1_mini-buildd-buildresult_amd64.changes"), Some("amd64"));
        assert_eq!(result_arch("hello_1.0-1_source.changes"), None);
        assert_eq!(guess_from_name("hello_1.0-1_source.changes"), ("hello".into(), "1.0-1".into()));
    }

    #[test]
    fn ids_increase() {
        let a = fresh_id();
        let b = fresh_id();
        assert!(b > a);
    }
}
