//! The packager (mini-buildd §5.2): checks a claimed upload, turns it into one signed build
//! request per architecture, collects the build results, and installs through the archive.
//!
//! Every step ends in one redb transaction that moves the upload's state and records its event,
//! so a step either happened, event included, or it did not and runs again after a restart.
//! Steps that write files write them before that transaction, idempotently.
//!
//! A step ends one of three ways: done; refused because the upload is bad (REJECTED or FAILED,
//! final, with the reason); or not done because the daemon could not do it now (a store or disk
//! error: retried, and after [`MAX_ATTEMPTS`] parked as FAILED with the reason).

use crate::archive::{ArchiveError, RepoCtx};
use crate::config::{self, Distribution, Repository, Uploader};
use crate::deb::{Changes, Dist};
use crate::events::problem;
use crate::events::{Event, EventType};
use crate::incoming::{self, ArchBuild, ArchResult, Incoming, Kind, Upload, UploadState};
use crate::instance::Instance;
use crate::protocol::options::UploadOptions;
use crate::protocol::{BuildKey, BuildRequest, BuildResult, Check, QaMode, Timecode, UploadKey, tar};
use crate::store::{self, BUILD_QUEUE, CONFIG, PENDING, StoreError, UPLOAD_KEYS};
use redb::ReadableTable;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How often a step may fail for the daemon's reasons before the upload is parked as FAILED.
pub const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum PackagerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Gpg(#[from] crate::gpg::GpgError),
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
    #[error(transparent)]
    Protocol(#[from] crate::protocol::ProtocolError),
}
crate::from_redb_errors!(PackagerError);

type Result<T> = std::result::Result<T, PackagerError>;

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PackagerError {
    let path = path.into();
    move |source| PackagerError::Io { path, source }
}

/// Why a check did not pass.
enum StepError {
    /// The upload (or result) is bad: final, with the reason shown to the uploader.
    Bad(String),
    /// The daemon could not check it now: retried.
    Later(Box<PackagerError>),
}

impl<E: Into<PackagerError>> From<E> for StepError {
    fn from(e: E) -> StepError {
        StepError::Later(Box::new(e.into()))
    }
}

fn bad(why: impl Into<String>) -> StepError {
    StepError::Bad(why.into())
}

/// An archive error is about the upload (a rule, a name, a checksum), or about the daemon.
fn archive_step(e: ArchiveError) -> StepError {
    if e.is_input() { StepError::Bad(e.to_string()) } else { StepError::from(e) }
}

/// A build request waiting for a builder (table `build_queue`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueuedBuild {
    pub bkey: BuildKey,
    /// The spool id of its upload (of the request itself, when a remote sent it).
    pub upload: u64,
    pub distribution: Dist,
    /// The clear-signed request `.changes`; its tar is beside it.
    pub changes: PathBuf,
    #[serde(with = "crate::events::iso")]
    pub queued: chrono::DateTime<chrono::Utc>,
    /// Whose request it is: this instance's packager, or a remote's.
    #[serde(default)]
    pub from: RequestFrom,
    /// Packager side: the builder it was handed to, if any yet.
    #[serde(default)]
    pub handed: Option<Handover>,
}

impl QueuedBuild {
    /// Whether this instance's builders take it: a remote's request, or one handed to them.
    pub fn is_local(&self) -> bool {
        matches!(self.from, RequestFrom::Remote { .. })
            || self.handed.as_ref().is_some_and(|h| h.builder == crate::protocol::remote::Builder::Local)
    }
}

/// Whose build request a queue entry is.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestFrom {
    /// This instance's packager: the result is installed here.
    #[default]
    Here,
    /// A remote packager's, verified against its key: the result goes back to its incoming.
    Remote { upload_to: crate::protocol::remote::FtpUrl, signer: String },
}

/// To whom a packager handed a build request, and when (recorded after the hand-over worked).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Handover {
    pub builder: crate::protocol::remote::Builder,
    /// The key its result must be signed with.
    pub fingerprint: String,
    #[serde(with = "crate::events::iso")]
    pub at: chrono::DateTime<chrono::Utc>,
    /// How many builders it was handed to so far.
    pub count: u32,
}

/// Record that `bkey` was handed to a builder, unless someone else took it meanwhile (`was`
/// is the hand-over the dispatcher saw). Returns whether it was recorded.
pub fn record_handover(
    store: &store::Store,
    bkey: &BuildKey,
    was: Option<&Handover>,
    builder: crate::protocol::remote::Builder,
    fingerprint: String,
) -> std::result::Result<bool, StoreError> {
    let tx = store.write()?;
    let done = {
        let mut q = tx.open_table(BUILD_QUEUE)?;
        let key = bkey.to_string();
        let current: Option<QueuedBuild> = q.get(key.as_str())?.map(|v| store::decode(&key, v.value())).transpose()?;
        match current {
            Some(mut r) if r.handed.as_ref() == was => {
                let count = was.map_or(0, |h| h.count) + 1;
                r.handed = Some(Handover { builder, fingerprint, at: chrono::Utc::now(), count });
                q.insert(key.as_str(), store::encode(&r).as_slice())?;
                true
            }
            _ => false,
        }
    };
    tx.commit()?;
    Ok(done)
}

/// Every queued build request, oldest first.
pub fn build_queue(store: &store::Store) -> std::result::Result<Vec<QueuedBuild>, StoreError> {
    let tx = store.read()?;
    let t = tx.open_table(BUILD_QUEUE)?;
    let mut out: Vec<QueuedBuild> = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        out.push(store::decode(k.value(), v.value())?);
    }
    out.sort_by_key(|r| r.queued);
    Ok(out)
}

/// Spool ids of uploads that are not final yet, oldest first.
pub fn pending(store: &store::Store) -> std::result::Result<Vec<u64>, StoreError> {
    let tx = store.read()?;
    let t = tx.open_table(PENDING)?;
    let mut out = Vec::new();
    for item in t.iter()? {
        out.push(item?.0.value());
    }
    Ok(out)
}

/// An upload that passed every check.
struct Accepted {
    changes: Changes,
    dist: Dist,
    distribution: Distribution,
    experimental: bool,
    options: UploadOptions,
    /// The `.dsc` and every source file, from the upload or the pool.
    source_files: Vec<PathBuf>,
    ctx: RepoCtx,
}

pub struct Packager<'a> {
    pub inst: &'a Instance,
    pub incoming: &'a Incoming,
    /// `http://host:port`, for the build request's URLs.
    pub http_url: String,
    /// `ftp://host:port`, where builders upload results.
    pub ftp_url: String,
    /// How long an upload may wait in PACKAGING for its build results.
    pub deadline: chrono::Duration,
    /// This instance's build slots (0: it builds nothing, and takes no remote's request).
    pub slots: usize,
    /// Free bytes the state directory's file system keeps: below it, nothing is installed.
    pub disk_reserve: u64,
}

impl Packager<'_> {
    /// Advance one pending upload as far as it goes now. Returns the events recorded; an error
    /// means the daemon could not do the step now (see [`Packager::failed_attempt`]).
    pub fn step(&self, id: u64) -> Result<Vec<Event>> {
        let Some(u) = incoming::get(&self.inst.store.read()?, id)? else {
            return Ok(vec![]);
        };
        match (u.kind, u.state) {
            (Kind::Upload, UploadState::Received) => self.package(u),
            (Kind::BuildResult, UploadState::Received) => self.take_result(u),
            (Kind::BuildRequest, UploadState::Received) => self.take_request(u),
            (Kind::Upload, UploadState::Packaging) => self.install_if_complete(u),
            _ => Ok(vec![]),
        }
    }

    /// A step of upload `id` failed for the daemon's reasons: count it, and once it failed
    /// [`MAX_ATTEMPTS`] times, park the upload as FAILED with the reason instead of trying for
    /// ever (`retry` starts it again).
    pub fn failed_attempt(&self, id: u64, why: &str) -> Result<Vec<Event>> {
        let tx = self.inst.store.write()?;
        let Some(mut u) = incoming::get_w(&tx, id)? else { return Ok(vec![]) };
        if u.state.is_final() {
            return Ok(vec![]);
        }
        u.attempts += 1;
        if u.attempts < MAX_ATTEMPTS {
            incoming::put(&tx, &u)?;
            tx.commit()?;
            return Ok(vec![]);
        }
        let why = format!(
            "the daemon could not process it ({} attempts; the last: {why}); fix the cause, then use retry",
            u.attempts
        );
        self.end_failed(&tx, &mut u, &why)?;
        let event = self.failed_event(&u, &why);
        event.record(&tx)?;
        tx.commit()?;
        Ok(vec![event])
    }

    /// Mark an upload FAILED and drop its queued build requests (in `tx`).
    fn end_failed(&self, tx: &redb::WriteTransaction, u: &mut Upload, why: &str) -> Result<()> {
        tracing::info!(upload = u.id, source = %u.source, version = %u.version, "failed: {why}");
        {
            let mut q = tx.open_table(BUILD_QUEUE)?;
            for b in u.arches.values() {
                q.remove(b.bkey.to_string().as_str())?;
            }
        }
        u.state = UploadState::Failed;
        u.error = Some(why.to_owned());
        incoming::put(tx, u)?;
        Ok(())
    }

    fn failed_event(&self, u: &Upload, why: &str) -> Event {
        event_for(EventType::Failed, u, None).with("error", problem(500, "Package failed", why))
    }

    fn dir(&self, u: &Upload) -> PathBuf {
        self.incoming.spool_dir(u.id)
    }

    /// Mark an upload REJECTED with its reason and event, in one transaction.
    fn reject(&self, mut u: Upload, why: String) -> Result<Vec<Event>> {
        tracing::info!(upload = u.id, source = %u.source, version = %u.version, "rejected: {why}");
        let event = incoming::rejected_event(&u, &why);
        u.state = UploadState::Rejected;
        u.error = Some(why);
        let tx = self.inst.store.write()?;
        incoming::put(&tx, &u)?;
        event.record(&tx)?;
        tx.commit()?;
        Ok(vec![event])
    }

    /// An upload in PACKAGING that no builder anywhere can build (no builder has its chroot):
    /// REJECTED with the reason, its requests off the queue (mini-buildd rejects it too).
    pub fn reject_packaging(&self, id: u64, why: &str) -> Result<Vec<Event>> {
        let tx = self.inst.store.write()?;
        let Some(mut u) = incoming::get_w(&tx, id)? else { return Ok(vec![]) };
        if u.state != UploadState::Packaging {
            return Ok(vec![]);
        }
        self.end_failed(&tx, &mut u, why)?;
        u.state = UploadState::Rejected;
        incoming::put(&tx, &u)?;
        let event = incoming::rejected_event(&u, why);
        event.record(&tx)?;
        tx.commit()?;
        Ok(vec![event])
    }

    /// A remote's build request arrived (builder side): verify it against the remotes keyring,
    /// check that its result goes back to the remote that signed it, and queue it for this
    /// instance's builders. A bad one is REJECTED here (its packager's deadline ends it there).
    fn take_request(&self, mut u: Upload) -> Result<Vec<Event>> {
        let queued = match self.check_request(&u) {
            Ok(Some(q)) => q,
            Ok(None) => {
                // The same request again (its packager crashed before it recorded the hand-over).
                tracing::info!(upload = u.id, changes = %u.changes, "a build request this builder has already: dropped");
                u.state = UploadState::Done;
                u.error = Some("a duplicate of a build request this builder has".into());
                let tx = self.inst.store.write()?;
                incoming::put(&tx, &u)?;
                tx.commit()?;
                return Ok(vec![]);
            }
            Err(StepError::Bad(why)) => return self.reject(u, why),
            Err(StepError::Later(e)) => return Err(*e),
        };
        u.state = UploadState::Packaging;
        u.distribution = queued.distribution.to_string();
        let tx = self.inst.store.write()?;
        incoming::put(&tx, &u)?;
        tx.open_table(BUILD_QUEUE)?.insert(queued.bkey.to_string().as_str(), store::encode(&queued).as_slice())?;
        tx.open_table(UPLOAD_KEYS)?.insert(request_key(&queued.bkey).as_str(), u.id)?;
        tx.commit()?;
        tracing::info!(bkey = %queued.bkey, from = ?queued.from, "queued a remote's build request");
        Ok(vec![])
    }

    /// The checks of a remote's build request; `None`: this builder had it already.
    fn check_request(&self, u: &Upload) -> std::result::Result<Option<QueuedBuild>, StepError> {
        let dir = self.dir(u);
        let path = dir.join(u.changes.as_str());
        let certs = self.inst.remotes_keyring()?;
        let (req, signer) = BuildRequest::read(&path, &certs).map_err(|e| {
            bad(format!(
                "build request not accepted: {e} (only the active remotes of this instance may send build requests)"
            ))
        })?;
        if signer == self.inst.key()?.cert().fingerprint().to_hex() {
            // This instance's own requests never travel by FTP: this one is a replay.
            return Err(bad("a build request signed by this instance came in over FTP; its own requests never do"));
        }
        // A remote may only have results sent home: to its own host.
        let remote =
            self.inst.trusted_remotes()?.into_iter().find(|r| r.key_fingerprint == signer).ok_or_else(|| {
                bad(format!("build request signed by {signer}, which is no trusted remote's key any more"))
            })?;
        let upload_to: crate::protocol::remote::FtpUrl =
            req.upload_to.parse().map_err(|e| bad(format!("its X-Mini-Buildd-Upload-To: {e}")))?;
        if upload_to.host != remote.http.host() {
            return Err(bad(format!(
                "its results would go to {upload_to}, which is not on the host of the remote that signed it ({}); a remote must be configured by the host name it calls itself",
                remote.http
            )));
        }
        // A request for a chroot this instance lacks is queued all the same: its builder fails it
        // with the reason, and that result goes home, so the packager need not wait for its
        // deadline. With no slots nothing would ever take it.
        if self.slots == 0 {
            let chroot = format!("{}:{}", req.distribution.codename, req.key.arch);
            return Err(bad(format!("this instance builds nothing (--build-slots 0); {chroot} was not for it")));
        }
        // Every request is built once: its key is recorded for good when it is queued.
        let bkey = req.key.clone();
        let read = self.inst.store.read()?;
        if read.open_table(UPLOAD_KEYS)?.get(request_key(&bkey).as_str())?.is_some() {
            return Ok(None);
        }
        Ok(Some(QueuedBuild {
            bkey,
            upload: u.id,
            distribution: req.distribution,
            changes: path,
            queued: chrono::Utc::now(),
            from: RequestFrom::Remote { upload_to, signer },
            handed: None,
        }))
    }

    /// Check an upload and queue its build requests (PACKAGING), or reject it (REJECTED).
    fn package(&self, u: Upload) -> Result<Vec<Event>> {
        match self.check(&u) {
            Ok(accepted) => self.request_builds(u, accepted),
            Err(StepError::Bad(why)) => self.reject(u, why),
            Err(StepError::Later(e)) => Err(*e),
        }
    }

    /// mini-buildd's checks, in its order (§5.1–5.2). What is parsed is the text a signature
    /// covered, when the repository wants one.
    fn check(&self, u: &Upload) -> std::result::Result<Accepted, StepError> {
        let dir = self.dir(u);
        let path = dir.join(u.changes.as_str());
        let raw =
            crate::deb::changes::read_bounded(&path).map_err(|e| bad(format!("cannot read {}: {e}", u.changes)))?;
        let text = String::from_utf8(raw.clone()).map_err(|_| bad("the .changes is not UTF-8"))?;
        // 1. Syntax (a strictly framed signature, or none), mandatory fields, checksums.
        let unverified = Changes::parse(&text).map_err(|e| bad(format!("the .changes does not parse: {e}")))?;
        // 2. The distribution.
        let read = self.inst.store.read()?;
        let (dist, ctx) = resolve_dist(&read, &unverified.distribution)?;
        let (distribution, suite, _) = ctx.check_dist(&dist).map_err(archive_step)?;
        if dist.is_rollback() {
            return Err(bad(format!("{dist} is a rollback distribution; upload to {} instead", dist.base())));
        }
        if !suite.uploadable {
            let chain = ctx.layout.suites.iter().filter(|s| s.uploadable).map(|s| s.suite.to_string());
            return Err(bad(format!(
                "suite {} of {dist} takes no uploads (packages reach it by migration); upload to one of: {}",
                suite.suite,
                chain.collect::<Vec<_>>().join(", ")
            )));
        }
        if !ctx.repo.status.is_active() {
            return Err(bad(format!(
                "repository {} is not active; ask an administrator to activate it",
                ctx.repo.identity
            )));
        }
        if !distribution.status.is_active() {
            return Err(bad(format!(
                "distribution {} is not active; ask an administrator to activate it",
                dist.codename
            )));
        }
        let (distribution, experimental) = (distribution.clone(), suite.experimental);
        // 3. The signature: from here on, only what it covered counts.
        let certs = self.uploader_keyring(&read, &ctx.repo)?;
        let verified = crate::gpg::verify_upload(&raw, &certs);
        let changes = match verified {
            Ok(v) => {
                let c =
                    Changes::parse(&v.payload).map_err(|e| bad(format!("the signed .changes does not parse: {e}")))?;
                if c.distribution != unverified.distribution {
                    return Err(bad("the signed text and the file differ; upload the file as debsign wrote it"));
                }
                c
            }
            Err(e) if !ctx.repo.allow_unauthenticated_uploads => {
                return Err(bad(format!(
                    "the .changes is not signed by an active uploader of repository {}: {e}; sign it with debsign, and register your key with set_user_key",
                    ctx.repo.identity
                )));
            }
            Err(e) => {
                if let crate::gpg::GpgError::Framing(f) = &e {
                    return Err(bad(format!("the .changes is malformed: {f}")));
                }
                // Unsigned uploads, from this host only (not from a build), unless an
                // administrator opened the repository to the network.
                if u.peer.is_some_and(|p| !p.is_local()) && !ctx.repo.unauthenticated_from_network {
                    let from = u.peer.map(|p| match p.uid {
                        Some(uid) if p.ip.to_canonical().is_loopback() => format!("{} (uid {uid}, a build)", p.ip),
                        _ => p.ip.to_string(),
                    });
                    return Err(bad(format!(
                        "repository {} takes unsigned uploads only from this host, and this one came from {}; sign it with debsign (and register your key with set_user_key), or ask an administrator to allow unsigned uploads from the network",
                        ctx.repo.identity,
                        from.unwrap_or_default()
                    )));
                }
                unverified
            }
        };
        if changes.stanza.get("Changed-By").is_none_or(|c| c.trim().is_empty()) {
            return Err(bad("the .changes has no Changed-By field; build it with dpkg-genchanges"));
        }
        for f in &changes.files {
            f.verify(&dir).map_err(|e| bad(format!("{e}; upload the file again")))?;
        }
        drop(read);
        // 4. Version rules, and 5. the source files (missing ones from the pool).
        if changes.dsc().is_none() {
            return Err(bad("the upload has no .dsc; buildbay builds from source, so upload the source"));
        }
        let source_files = self.inst.archive()?.precheck(&dist, &path).map_err(archive_step)?;
        let options =
            UploadOptions::parse(changes.stanza.get("Changes").unwrap_or("")).map_err(|e| bad(e.to_string()))?;
        Ok(Accepted { changes, dist, distribution, experimental, options, source_files, ctx })
    }

    /// The uploader keyring of a repository: its active uploaders, its extra keyrings, our own key.
    fn uploader_keyring(&self, read: &redb::ReadTransaction, repo: &Repository) -> Result<Vec<crate::gpg::Cert>> {
        let t = read.open_table(CONFIG)?;
        let key_ = self.inst.key()?;
        let mut certs = vec![key_.cert().clone()];
        for up in store::list_config::<Uploader>(&t)? {
            if up.status.is_active() && up.may_upload_to.contains(&repo.identity) {
                match crate::gpg::read_keyring(up.key.as_bytes()) {
                    Ok(c) => certs.extend(c),
                    Err(e) => tracing::warn!(user = %up.user, "uploader key does not parse: {e}"),
                }
            }
        }
        for k in &repo.extra_uploader_keyrings {
            match std::fs::read(k) {
                Ok(data) => match crate::gpg::read_keyring(&data) {
                    Ok(c) => certs.extend(c),
                    Err(e) => tracing::warn!(keyring = %k, "extra uploader keyring does not parse: {e}"),
                },
                Err(e) => tracing::warn!(keyring = %k, "extra uploader keyring unreadable: {e}"),
            }
        }
        Ok(certs)
    }

    /// Write one clear-signed build request per architecture, then queue them (PACKAGING).
    fn request_builds(&self, mut u: Upload, a: Accepted) -> Result<Vec<Event>> {
        u.distribution = a.dist.to_string();
        let key = UploadKey::new(a.changes.source.clone(), a.changes.version.clone(), u.timecode.clone());
        // The build trusts this instance's key and the keys of the distribution's extra sources
        // (the base source's keys come with the chroot image).
        let key_ = self.inst.key()?;
        let mut certs = vec![key_.cert().clone()];
        for (source, _) in self.inst.extra_sources(&a.distribution) {
            certs.extend(self.inst.source_certs(&source)?);
        }
        let pub_key = crate::gpg::armored_keyring(&certs)?;
        let mut arches = BTreeMap::new();
        let mut requests = Vec::new();
        for opt in &a.distribution.architectures {
            let bkey = key.build(opt.arch.clone());
            let out = self.dir(&u).join("requests").join(opt.arch.as_str());
            std::fs::create_dir_all(&out).map_err(io_err(&out))?;
            let tar_name = BuildRequest::tar_name(&bkey);
            let tar_path = out.join(&tar_name);
            let mut w = tar::Writer::create(&tar_path)?;
            for (name, content) in self.config_files(&a, opt.arch.as_str(), &pub_key) {
                w.add_bytes(&format!(".config/{name}"), content.as_bytes())?;
            }
            for f in &a.source_files {
                let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                w.add_file(&name, f)?;
            }
            w.finish()?;
            let req = self.request(&a, opt, bkey.clone(), crate::protocol::request::file_entry(&out, &tar_name)?);
            let signed = req.sign(key_)?;
            let changes_path = out.join(BuildRequest::changes_name(&bkey));
            write_synced(&changes_path, &signed)?;
            arches.insert(
                opt.arch.to_string(),
                ArchBuild {
                    bkey: bkey.clone(),
                    optional: opt.optional,
                    arch_all: opt.build_architecture_all,
                    ignore_checks: a.experimental,
                    lintian: req.lintian,
                    piuparts: req.piuparts,
                    autopkgtest: req.autopkgtest,
                    result: None,
                },
            );
            requests.push(QueuedBuild {
                bkey,
                upload: u.id,
                distribution: a.dist.clone(),
                changes: changes_path,
                queued: chrono::Utc::now(),
                from: RequestFrom::Here,
                handed: None,
            });
        }
        u.arches = arches;
        u.state = UploadState::Packaging;
        u.attempts = 0;
        u.packaging_since = Some(chrono::Utc::now());
        let buildrequests: serde_json::Map<String, serde_json::Value> =
            requests.iter().map(|r| (r.bkey.arch.to_string(), r.bkey.to_string().into())).collect();
        let event = event_for(EventType::Packaging, &u, Some(&a.changes)).with("buildrequests", buildrequests);
        let tx = self.inst.store.write()?;
        incoming::put(&tx, &u)?;
        {
            let mut q = tx.open_table(BUILD_QUEUE)?;
            for r in &requests {
                q.insert(r.bkey.to_string().as_str(), store::encode(r).as_slice())?;
            }
        }
        event.record(&tx)?;
        tx.commit()?;
        Ok(vec![event])
    }

    /// The build request of one architecture.
    fn request(
        &self,
        a: &Accepted,
        opt: &config::ArchOption,
        key: BuildKey,
        tar: crate::deb::FileEntry,
    ) -> BuildRequest {
        let arch = opt.arch.as_str();
        let set = &a.distribution.build;
        let mode = |k: &str, default: QaMode| a.options.mode(k, arch).unwrap_or(default);
        BuildRequest {
            key,
            distribution: a.dist.clone(),
            upload_to: format!("{}/", self.ftp_url),
            packager: format!("{}/", self.http_url),
            builder: Some(self.http_url.clone()),
            arch_all: opt.build_architecture_all,
            resolver: set.build_dep_resolver,
            config_blocks: set.sbuild_config_blocks.clone(),
            setup_blocks: set.sbuild_setup_blocks.clone(),
            deb_build_options: a.options.build_options(arch).or(set.deb_build_options.as_ref()).cloned(),
            deb_build_profiles: a.options.build_profiles(arch).or(set.deb_build_profiles.as_ref()).cloned(),
            add_depends: a.options.add_depends(arch).or(set.add_depends.as_ref()).cloned(),
            lintian: mode("lintian-mode", set.lintian_mode),
            lintian_extra_options: set.lintian_extra_options.clone(),
            piuparts: mode("piuparts-mode", set.piuparts_mode),
            piuparts_extra_options: set.piuparts_extra_options.clone(),
            autopkgtest: mode("autopkgtest-mode", set.autopkgtest_mode),
            backend: a.distribution.build_backend,
            network: a.distribution.build_network,
            tar,
        }
    }

    /// `.config/*` of a build request: apt sources, preferences and keys for the build.
    fn config_files(&self, a: &Accepted, arch: &str, pub_key: &str) -> Vec<(&'static str, String)> {
        let repo = &a.ctx.repo.identity;
        let components: Vec<String> = a.distribution.components.iter().map(|c| c.to_string()).collect();
        let suite = a.ctx.layout.suite(&a.dist.suite);
        // Experimental suites see every non-experimental suite; others themselves and what they migrate to.
        let suites: Vec<crate::deb::Suite> = match suite {
            Some(s) if s.experimental => {
                let mut v: Vec<_> =
                    a.ctx.layout.suites.iter().filter(|s| !s.experimental).map(|s| s.suite.clone()).collect();
                v.push(s.suite.clone());
                v
            }
            _ => {
                let mut v = vec![a.dist.suite.clone()];
                v.extend(a.ctx.layout.migration_chain(&a.dist.suite));
                v
            }
        };
        // The base distribution: a builder's chroot has it already (apt merges the same line), but
        // mini-buildd's builder replaces the chroot's sources with these.
        let mut sources = String::new();
        match self.inst.get::<config::Source>(&a.distribution.base_source).ok().flatten() {
            Some(base) if !base.archives.is_empty() => {
                let shared = shared_components(&a.distribution, &base);
                sources.push_str(&format!(
                    "deb {} {} {}\n",
                    base.archives[0].mirror(),
                    base.codename,
                    shared.join(" ")
                ));
            }
            _ => sources.push_str("# The base distribution comes from the builder's chroot.\n"),
        }
        for s in suites {
            let d = Dist::new(a.dist.codename.clone(), repo.clone(), s);
            sources.push_str(&format!("deb {}/repositories/{repo}/ {d} {}\n", self.http_url, components.join(" ")));
        }
        let priority = a.options.apt_priority(arch).unwrap_or(a.distribution.build.internal_apt_priority);
        let origin = self.inst.daemon().ok().flatten().map(|d| d.archive_origin()).unwrap_or_default();
        let mut prefs = format!("Package: *\nPin: release o={origin}\nPin-Priority: {priority}\n");
        // The distribution's extra sources (backports, …), each pinned at its priority.
        for (source, priority) in self.inst.extra_sources(&a.distribution) {
            let Some(archive) = source.archives.first() else { continue };
            let shared = shared_components(&a.distribution, &source);
            if shared.is_empty() {
                tracing::warn!(source = %source.id(), "extra source has none of the distribution's components; left out");
                continue;
            }
            sources.push_str(&format!("deb {} {} {}\n", archive.mirror(), source.codename, shared.join(" ")));
            prefs.push_str(&format!(
                "\nPackage: *\nPin: release o={},n={}\nPin-Priority: {priority}\n",
                source.origin, source.codename
            ));
        }
        vec![
            ("apt_sources.list", sources),
            ("apt_preferences", prefs),
            ("apt_keys", pub_key.to_owned()),
            ("ssl_cert", String::new()),
            ("chroot_setup_script", a.distribution.build.chroot_setup_script.as_str().to_owned()),
            ("sbuildrc_snippet", a.distribution.build.sbuildrc_snippet.as_str().to_owned()),
        ]
    }

    /// A build result arrived: check it and hand it to its upload, or (a remote's request
    /// this instance built) mark it for the trip back to the remote.
    fn take_result(&self, r: Upload) -> Result<Vec<Event>> {
        let (target, arch, result) = match self.check_result(&r) {
            Ok(Taken::ForUpload(target, arch, result)) => (target, arch, result),
            Ok(Taken::Forward(q)) => return self.forward_later(r, *q),
            Err(StepError::Bad(why)) => return self.reject(r, why),
            Err(StepError::Later(e)) => return Err(*e),
        };
        let mut done = r.clone();
        done.state = UploadState::Done;
        let tx = self.inst.store.write()?;
        let mut up = incoming::get_w(&tx, target)?.ok_or_else(|| {
            PackagerError::Store(StoreError::Corrupt { key: format!("upload {target}"), reason: "vanished".into() })
        })?;
        if let Some(b) = up.arches.get_mut(&arch)
            && b.result.is_none()
        {
            tx.open_table(BUILD_QUEUE)?.remove(b.bkey.to_string().as_str())?;
            b.result = Some(result);
        }
        incoming::put(&tx, &up)?;
        incoming::put(&tx, &done)?;
        tx.commit()?;
        self.install_if_complete(up)
    }

    /// This builder's result of a remote's request: FORWARDING to the remote's incoming (the
    /// dispatcher uploads it), the request done here.
    fn forward_later(&self, mut r: Upload, q: QueuedBuild) -> Result<Vec<Event>> {
        let RequestFrom::Remote { upload_to, .. } = &q.from else { return Ok(vec![]) };
        r.state = UploadState::Forwarding;
        r.forward_to = Some(upload_to.clone());
        let tx = self.inst.store.write()?;
        if let Some(mut req) = incoming::get_w(&tx, q.upload)? {
            req.state = UploadState::Done;
            incoming::put(&tx, &req)?;
        }
        tx.open_table(BUILD_QUEUE)?.remove(q.bkey.to_string().as_str())?;
        incoming::put(&tx, &r)?;
        tx.commit()?;
        tracing::info!(bkey = %q.bkey, to = %upload_to, "built a remote's request; its result goes back");
        Ok(vec![])
    }

    /// Verify a build result and match it to the upload waiting for it; what is judged is the
    /// signed text, by the modes this packager requested. Only the builder the request was
    /// handed to may answer it: a late result of an earlier hand-over is refused.
    fn check_result(&self, r: &Upload) -> std::result::Result<Taken, StepError> {
        let dir = self.dir(r);
        let raw = crate::deb::changes::read_bounded(&dir.join(r.changes.as_str()))
            .map_err(|e| bad(format!("cannot read the build result: {e}")))?;
        // Results are signed by a builder: this instance, or one of its remotes.
        let certs = self.inst.remotes_keyring()?;
        let (result, signer) = BuildResult::verify(&raw, &certs)
            .map_err(|e| bad(format!("build result not accepted from a known builder: {e}")))?;
        result.verify_files(&dir).map_err(|e| bad(e.to_string()))?;
        let own = self.inst.key()?.cert().fingerprint().to_hex();
        let queued: Option<QueuedBuild> = {
            let read = self.inst.store.read()?;
            let t = read.open_table(BUILD_QUEUE)?;
            let k = result.key.to_string();
            t.get(k.as_str())?.map(|v| store::decode(&k, v.value())).transpose()?
        };
        if let Some(q) = &queued {
            let want = match (&q.from, &q.handed) {
                (RequestFrom::Remote { .. }, _) | (_, None) => own.clone(),
                (_, Some(h)) => h.fingerprint.clone(),
            };
            if signer != want {
                let to = q.handed.as_ref().map_or_else(|| "this instance".to_owned(), |h| h.builder.to_string());
                return Err(bad(format!(
                    "a late or stray result: {} was handed to {to}, and this result is signed by key {signer}",
                    result.key
                )));
            }
            if matches!(q.from, RequestFrom::Remote { .. }) {
                return Ok(Taken::Forward(Box::new(q.clone())));
            }
        }
        let arch = result.key.arch.to_string();
        let key = result.key.upload.to_string();
        let target = {
            let read = self.inst.store.read()?;
            let t = read.open_table(UPLOAD_KEYS)?;
            t.get(key.as_str())?.map(|v| v.value())
        }
        .ok_or_else(|| bad(format!("no upload {key} waits for build results")))?;
        let up =
            incoming::get(&self.inst.store.read()?, target)?.ok_or_else(|| bad(format!("upload {key} vanished")))?;
        let Some(b) = up.arches.get(&arch) else {
            return Err(bad(format!("upload {key} requested no build for {arch}")));
        };
        if up.state != UploadState::Packaging || b.result.is_some() {
            return Err(bad(format!("upload {key} does not wait for its {arch} result (any more)")));
        }
        let status = result.status().to_owned();
        let mut reason = None;
        let mut success = matches!(status.as_str(), "successful" | "skipped");
        if !success {
            reason = Some(format!("sbuild status {status}"));
        }
        if status == "successful" && !b.ignore_checks {
            for (check, mode) in
                [(Check::Lintian, b.lintian), (Check::Piuparts, b.piuparts), (Check::Autopkgtest, b.autopkgtest)]
            {
                let got = result.check(check);
                if !mode.passes(got) {
                    success = false;
                    let got = if got.is_empty() { "reported no result" } else { got };
                    reason = Some(format!("{} {got} (mode {mode})", check.field()));
                }
            }
        }
        if let Some(e) = &result.internal_error {
            success = false;
            reason = Some(format!("builder error: {e}"));
        }
        if let Some(by) = &result.canceled_by {
            success = false;
            reason = Some(format!("build canceled by {by}"));
        }
        let checks = Check::ALL
            .into_iter()
            .filter(|c| !result.check(*c).is_empty())
            .map(|c| (c.field().to_owned(), result.check(c).to_owned()))
            .collect();
        Ok(Taken::ForUpload(target, arch, ArchResult { status, success, spool: r.id, reason, checks }))
    }

    /// Once every architecture has its result: install (INSTALLED) or give up (FAILED). An
    /// upload past its deadline in PACKAGING ends FAILED.
    fn install_if_complete(&self, mut u: Upload) -> Result<Vec<Event>> {
        if u.state != UploadState::Packaging {
            return Ok(vec![]);
        }
        let waiting: Vec<&str> = u.arches.iter().filter(|(_, b)| b.result.is_none()).map(|(a, _)| a.as_str()).collect();
        if !waiting.is_empty() {
            let since = u.packaging_since.unwrap_or(u.received);
            if chrono::Utc::now() - since <= self.deadline {
                return Ok(vec![]);
            }
            let why = format!(
                "no build result for {} within {} s of packaging; see the builds for why, then use retry",
                waiting.join(", "),
                self.deadline.num_seconds()
            );
            let tx = self.inst.store.write()?;
            self.end_failed(&tx, &mut u, &why)?;
            let event = self.failed_event(&u, &why);
            event.record(&tx)?;
            tx.commit()?;
            return Ok(vec![event]);
        }
        let failures: Vec<String> = u
            .arches
            .iter()
            .filter(|(_, b)| !b.optional)
            .filter_map(|(a, b)| b.result.as_ref().filter(|r| !r.success).map(|r| (a, r)))
            .map(|(a, r)| format!("{a}: {}", r.reason.clone().unwrap_or_else(|| r.status.clone())))
            .collect();
        // The upload's own, checked .changes (the signed text of it was checked at packaging).
        let changes = crate::deb::changes::read_bounded(&self.dir(&u).join(u.changes.as_str()))
            .map_err(|e| e.to_string())
            .and_then(|raw| String::from_utf8(raw).map_err(|e| e.to_string()))
            .and_then(|t| Changes::parse(&t).map_err(|e| e.to_string()));
        // Each architecture's QA verdicts, for the events and the migration gate.
        let checks: serde_json::Map<String, serde_json::Value> = u
            .arches
            .iter()
            .filter_map(|(a, b)| b.result.as_ref().map(|r| (a.clone(), serde_json::json!(r.checks))))
            .collect();
        let outcome = match (&changes, failures.is_empty()) {
            (Ok(c), true) => self.install(&u, c),
            (Err(e), true) => Err(Install::Bad(format!("{}: {e}", u.changes))),
            (_, false) => Err(Install::Bad(failures.join("; "))),
        };
        let changes = changes.ok();
        let results: serde_json::Map<String, serde_json::Value> = u
            .arches
            .iter()
            .map(|(a, b)| (a.clone(), b.result.as_ref().map(|r| r.status.clone()).unwrap_or_default().into()))
            .collect();
        let event = match &outcome {
            Ok(()) => {
                u.state = UploadState::Installed;
                u.error = None;
                let event = event_for(EventType::Installed, &u, changes.as_ref())
                    .with("buildresults", results)
                    .with("checks", checks.clone());
                // mini-buildd's field, on every INSTALLED event.
                event.with("auto_ports", changes.as_ref().map(|c| self.auto_ports(&u, c)).unwrap_or_default())
            }
            Err(Install::Later(e)) => {
                return Err(PackagerError::Io { path: self.dir(&u), source: std::io::Error::other(e.clone()) });
            }
            Err(Install::Bad(why)) => {
                tracing::info!(upload = u.id, source = %u.source, version = %u.version, "failed: {why}");
                u.state = UploadState::Failed;
                u.error = Some(why.clone());
                event_for(EventType::Failed, &u, changes.as_ref())
                    .with("buildresults", results)
                    .with("checks", checks)
                    .with("error", problem(500, "Package failed", why))
            }
        };
        let tx = self.inst.store.write()?;
        incoming::put(&tx, &u)?;
        event.record(&tx)?;
        tx.commit()?;
        Ok(vec![event])
    }

    /// The upload's `auto-ports` (each target once, at most [`MAX_AUTO_PORTS`]), after it was installed, in mini-buildd's shape: per target,
    /// `[true, {source, distribution, version, changes}]` or `[false, why]`. A port that cannot
    /// be made does not undo the install. Only into the upload's own repository: its uploader
    /// may upload there, and the port is signed with this instance's key (a port into another
    /// repository is the `port` call's, for staff).
    fn auto_ports(&self, u: &Upload, changes: &Changes) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        let options = UploadOptions::parse(changes.stanza.get("Changes").unwrap_or("")).unwrap_or_default();
        let Ok(from) = u.distribution.parse::<Dist>() else { return out };
        let drop = self.inst.store.dir().join(incoming::RESULTS_DIR);
        let mut targets: Vec<&Dist> = Vec::new();
        for to in options.auto_ports() {
            if !targets.contains(&to) {
                targets.push(to);
            }
        }
        for (n, to) in targets.into_iter().enumerate() {
            let made = if n >= MAX_AUTO_PORTS {
                Err(format!("more than {MAX_AUTO_PORTS} auto-ports: this one is not made"))
            } else if to.repo != from.repo {
                Err(format!(
                    "{to} is in repository {}, not {}: auto-ports stay in the upload's repository; staff can use the port call",
                    to.repo, from.repo
                ))
            } else {
                let req = crate::port::PortRequest {
                    source: changes.source.clone(),
                    from: from.clone(),
                    to: vec![to.clone()],
                    version: Some(changes.version.clone()),
                    options: vec![crate::port::DEFAULT_OPTIONS.to_owned()],
                };
                self.inst.archive().map_err(|e| e.to_string()).and_then(|a| {
                    crate::port::port(self.inst, &a, &drop, &req, chrono::Utc::now()).map_err(|e| e.to_string())
                })
            };
            let answer = match made {
                Ok(done) => serde_json::json!([true, done.first()]),
                Err(e) => serde_json::json!([false, e]),
            };
            tracing::info!(source = %changes.source, to = %to, "auto-port: {answer}");
            out.insert(to.to_string(), answer);
        }
        out
    }

    /// Install the source and every successful architecture's binaries. Safe to run again after
    /// a crash: a source already in the distribution is not included twice.
    fn install(&self, u: &Upload, changes: &Changes) -> std::result::Result<(), Install> {
        let later = |e: &dyn std::fmt::Display| Install::Later(e.to_string());
        // Before anything is written into the pool or published.
        if let Some(low) = low_disk(crate::store::free_bytes(self.inst.store.dir()), self.disk_reserve) {
            return Err(Install::Later(low));
        }
        let dir = self.dir(u);
        let dist: Dist = u.distribution.parse().map_err(|e| Install::Bad(format!("{e}")))?;
        let archive = self.inst.archive().map_err(|e| later(&e))?;
        let mut list = Vec::new();
        if !archive.holds(&dist, &changes.source, &changes.version).map_err(|e| later(&e))? {
            list.push(source_only_changes(&dir, changes).map_err(|e| later(&e))?);
        }
        for (arch, b) in &u.arches {
            let Some(r) = b.result.as_ref().filter(|r| r.success) else { continue };
            if r.status == "skipped" {
                continue;
            }
            let out = dir.join("results").join(arch);
            let built = unpack_result(&self.incoming.spool_dir(r.spool), &out)
                .and_then(|p| result_is_of(&p, changes, arch).map(|()| p))
                .map_err(|e| Install::Bad(format!("{arch}: {e}")))?;
            list.push(built);
        }
        // One include of everything: a refused architecture leaves nothing installed, neither
        // the source nor the other architectures.
        if list.is_empty() {
            return Ok(()); // the source is in, and no architecture brought packages
        }
        let all = combined_changes(&dir, changes, &list)?;
        match archive.include(&dist, &all, false) {
            Ok(_) => Ok(()),
            Err(e) if e.is_input() => Err(Install::Bad(format!("nothing was installed: {e}"))),
            Err(e) => Err(Install::Later(e.to_string())),
        }
    }
}

/// Why nothing may be installed now: the state directory's file system has `free` bytes (for
/// unprivileged users), less than `reserve`. `None`: enough, or it cannot tell.
pub fn low_disk(free: Option<u64>, reserve: u64) -> Option<String> {
    let free = free?;
    (free < reserve).then(|| {
        format!(
            "the state directory's file system has {} MiB free, below the {} MiB it keeps (--disk-reserve); nothing was installed: free space, then retry",
            free >> 20,
            reserve >> 20
        )
    })
}

/// The most auto-ports an upload makes (each one unpacks and packs its source).
const MAX_AUTO_PORTS: usize = 5;

/// What a checked build result is for.
enum Taken {
    /// The upload (spool id) waiting for it, its architecture, the verdict.
    ForUpload(u64, String, ArchResult),
    /// A remote's request this instance built: the result goes back.
    Forward(Box<QueuedBuild>),
}

/// Why an install did not happen.
enum Install {
    /// The upload's files are bad (final).
    Bad(String),
    /// The daemon could not do it now (retried).
    Later(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no upload has the key {0}; take the key from its REJECTED or FAILED event")]
    NotFound(String),
    #[error("upload {key} is {state:?}; only FAILED and REJECTED uploads can be retried")]
    NotFinished { key: String, state: UploadState },
    #[error(transparent)]
    Store(#[from] StoreError),
}
crate::from_redb_errors!(RetryError);

/// `retry`: put a FAILED or REJECTED upload back to the start of the pipeline, from its spooled
/// files, with a new timecode. `bkey` is `<source>/<version>/<timecode>[/<arch>]`.
pub fn retry(inst: &Instance, incoming: &Incoming, bkey: &str) -> std::result::Result<u64, RetryError> {
    let key: String = bkey.split('/').take(3).collect::<Vec<_>>().join("/");
    let tx = inst.store.write()?;
    let id = tx.open_table(UPLOAD_KEYS)?.get(key.as_str())?.map(|v| v.value());
    let mut u = match id {
        Some(id) => incoming::get_w(&tx, id)?,
        None => None,
    }
    .ok_or_else(|| RetryError::NotFound(key.clone()))?;
    if !matches!(u.state, UploadState::Failed | UploadState::Rejected) || u.kind != Kind::Upload {
        return Err(RetryError::NotFinished { key, state: u.state });
    }
    if !incoming.spool_dir(u.id).join(u.changes.as_str()).exists() {
        return Err(RetryError::NotFound(key));
    }
    u.state = UploadState::Received;
    u.timecode = Timecode::now();
    incoming::insert_key(&tx, &u.key(), u.id)?;
    u.arches.clear();
    u.error = None;
    u.retries += 1;
    u.attempts = 0;
    u.packaging_since = None;
    incoming::put(&tx, &u)?;
    tx.commit()?;
    Ok(u.id)
}

/// The distribution's components that a source has.
fn shared_components<'a>(d: &'a Distribution, source: &config::Source) -> Vec<&'a str> {
    d.components.iter().filter(|c| source.components.contains(c)).map(|c| c.as_str()).collect()
}

/// The key under which a remote's build request is recorded once queued (table `upload_keys`;
/// an upload's own keys have no `request/` prefix).
fn request_key(bkey: &BuildKey) -> String {
    format!("request/{bkey}")
}

/// Map the `.changes` distribution to a real one: as written, or through a meta-distribution.
fn resolve_dist(read: &redb::ReadTransaction, written: &str) -> std::result::Result<(Dist, RepoCtx), StepError> {
    if let Ok(d) = written.parse::<Dist>() {
        let ctx = RepoCtx::load(read, &d.repo)
            .map_err(|e| if e.is_input() { bad(format!("distribution {written}: {e}")) } else { StepError::from(e) })?;
        return Ok((d, ctx));
    }
    let t = read.open_table(CONFIG)?;
    let mut found = Vec::new();
    for repo in store::list_config::<Repository>(&t)? {
        let Ok(ctx) = RepoCtx::load(read, &repo.identity) else { continue };
        if let Some((codename, suite)) = ctx.layout.meta(written)
            && ctx.dists.contains_key(codename.as_str())
        {
            found.push((Dist::new(codename, repo.identity.clone(), suite), ctx));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(bad(format!(
            "distribution {written:?} is unknown: use <codename>-<repository>-<suite>, e.g. bookworm-test-unstable (see the sources_list call)"
        ))),
        _ => Err(bad(format!(
            "meta-distribution {written} is ambiguous: {} repositories map it; use the full distribution name",
            found.len()
        ))),
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    crate::store::write_file_synced(path, data).map_err(io_err(path))
}

/// A `.changes` beside the upload that lists only its source files (mini-buildd installs the
/// `.dsc`, never binaries an uploader built).
fn source_only_changes(dir: &Path, changes: &Changes) -> Result<PathBuf> {
    let mut st = changes.stanza.clone();
    let keep = |name: &str| crate::deb::debfile::PackageType::of_file(name).is_none() && !name.ends_with(".buildinfo");
    for field in ["Files", "Checksums-Sha1", "Checksums-Sha256"] {
        if let Some(v) = st.get(field) {
            let lines: Vec<&str> = v
                .lines()
                .filter(|l| l.split_whitespace().last().is_some_and(|n| keep(n) || l.trim().is_empty()))
                .collect();
            let joined =
                lines.iter().filter(|l| !l.trim().is_empty()).map(|l| format!("\n {}", l.trim())).collect::<String>();
            st.set(field, joined);
        }
    }
    st.set("Architecture", "source");
    st.remove("Binary");
    let path = dir.join(format!("{}_{}_buildbay-source.changes", changes.source, changes.version));
    write_synced(&path, st.to_string().as_bytes())?;
    Ok(path)
}

/// One `.changes` (in `<dir>/install/`) listing the files of every part (the source-only
/// `.changes` and each architecture's result, each file checked against its part's sums), so
/// that they are installed together or not at all. A name in two parts must be one content.
fn combined_changes(dir: &Path, upload: &Changes, parts: &[PathBuf]) -> std::result::Result<PathBuf, Install> {
    // The disk (try again later), or the parts (final).
    let io = |what: &Path, e: std::io::Error| Install::Later(format!("{}: {e}", what.display()));
    let bad = Install::Bad;
    use crate::deb::debfile::PackageType;
    let out = dir.join("install");
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| io(&out, e))?;
    }
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    let mut stanza: Option<crate::deb::Stanza> = None;
    let (mut arches, mut binaries): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let (mut md5, mut sha1, mut sha256) = (String::new(), String::new(), String::new());
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    for part in parts {
        let raw = crate::deb::changes::read_bounded(part).map_err(|e| io(part, e))?;
        let text = String::from_utf8(raw).map_err(|_| bad(format!("{} is not UTF-8", part.display())))?;
        let c = Changes::parse(&text).map_err(|e| bad(format!("{}: {e}", part.display())))?;
        let from = part.parent().unwrap_or(dir);
        for f in c.files.iter().filter(|f| !f.name.as_str().ends_with(".buildinfo")) {
            let name = f.name.as_str();
            let sums = f.verify(from).map_err(|e| bad(e.to_string()))?;
            match taken.get(name) {
                Some(sha) if *sha == sums.sha256 => continue,
                Some(_) => return Err(bad(format!("{name} is in two build results, with different contents"))),
                None => {}
            }
            let dst = out.join(name);
            if std::fs::hard_link(from.join(name), &dst).is_err() {
                std::fs::copy(from.join(name), &dst).map_err(|e| io(&dst, e))?;
            }
            taken.insert(name.to_owned(), sums.sha256.clone());
            let (section, priority) = (f.section.as_deref().unwrap_or("-"), f.priority.as_deref().unwrap_or("-"));
            md5.push_str(&format!("\n {} {} {section} {priority} {name}", sums.md5, sums.size));
            sha1.push_str(&format!("\n {} {} {name}", sums.sha1, sums.size));
            sha256.push_str(&format!("\n {} {} {name}", sums.sha256, sums.size));
            if PackageType::of_file(name).is_some()
                && let Some(pkg) = name.split('_').next()
                && !binaries.iter().any(|b| b == pkg)
            {
                binaries.push(pkg.to_owned());
            }
        }
        for a in &c.architectures {
            if !arches.contains(a) {
                arches.push(a.clone());
            }
        }
        stanza.get_or_insert(c.stanza);
    }
    let mut st = stanza.ok_or_else(|| bad("nothing to install".into()))?;
    st.set("Architecture", arches.join(" "));
    if binaries.is_empty() {
        st.remove("Binary");
    } else {
        st.set("Binary", binaries.join(" "));
    }
    st.set("Files", md5);
    st.set("Checksums-Sha1", sha1);
    st.set("Checksums-Sha256", sha256);
    let path = out.join(format!("{}_{}_buildbay-install.changes", upload.source, upload.version));
    crate::store::write_file_synced(&path, st.to_string().as_bytes()).map_err(|e| io(&path, e))?;
    Ok(path)
}

/// Unpack a build result's tar (the builder's `.changes` and its packages) and return the `.changes`.
fn unpack_result(result_dir: &Path, out: &Path) -> std::result::Result<PathBuf, String> {
    let tar_path = std::fs::read_dir(result_dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tar"))
        .ok_or("the build result has no .tar")?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let names = tar::unpack(&tar_path, out, false, Default::default()).map_err(|e| e.to_string())?;
    let changes = names.into_iter().find(|n| n.ends_with(".changes"));
    changes.map(|n| out.join(n)).ok_or_else(|| "the build result tar holds no .changes".to_owned())
}

/// A build result's own `.changes` must be of the upload it was requested for: the same source
/// and version, binaries of the requested architecture (or `all`) only, no source. A build
/// cannot install another source's package through its result.
fn result_is_of(path: &Path, upload: &Changes, arch: &str) -> std::result::Result<(), String> {
    let raw = crate::deb::changes::read_bounded(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8(raw).map_err(|_| "the build's .changes is not UTF-8".to_owned())?;
    let c = Changes::parse(&text).map_err(|e| format!("the build's .changes does not parse: {e}"))?;
    if c.source != upload.source || c.version.as_str() != upload.version.as_str() {
        return Err(format!(
            "the build's .changes is of {} {}, not of {} {}",
            c.source, c.version, upload.source, upload.version
        ));
    }
    if let Some(a) = c.architectures.iter().find(|a| a.as_str() != arch && a.as_str() != "all") {
        return Err(format!("the build's .changes has architecture {a}; a build for {arch} makes {arch} and all"));
    }
    if let Some(f) = c.files.iter().find(|f| {
        let name = f.name.as_str();
        crate::deb::debfile::PackageType::of_file(name).is_none() && !name.ends_with(".buildinfo")
    }) {
        return Err(format!("the build's .changes lists {}; a build result carries binary packages only", f.name));
    }
    // Each package is of this architecture (or all), by its name and by its control: a
    // build for one architecture installs nothing for another.
    let dir = path.parent().unwrap_or(Path::new("."));
    for f in c.files.iter().filter(|f| crate::deb::debfile::PackageType::of_file(f.name.as_str()).is_some()) {
        let name = f.name.as_str();
        let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
        let named = stem.rsplit('_').next().unwrap_or_default();
        let control = crate::deb::debfile::read_control(&dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let declared = control.get("Architecture").unwrap_or_default();
        if named != declared || (declared != arch && declared != "all") {
            return Err(format!(
                "{name} is a package for {declared} (named {named}); a build for {arch} makes {arch} and all"
            ));
        }
    }
    Ok(())
}

/// An event about an upload, with the `.changes` fields mini-buildd puts into `extra`.
fn event_for(kind: EventType, u: &Upload, c: Option<&Changes>) -> Event {
    let mut e = Event::new(kind, &u.distribution, &u.source, &u.version)
        .with("key", u.key())
        .with("timecode", u.timecode.to_string())
        .with("changes", u.changes.as_str());
    if let Some(c) = c {
        e = e
            .with("architecture", c.architectures.join(" "))
            .with("maintainer", c.stanza.get("Maintainer").unwrap_or(""))
            .with("changed_by", c.stanza.get("Changed-By").unwrap_or(""));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_of_its_upload_only() {
        let dir = tempfile::tempdir().unwrap();
        let upload = Changes::parse(
            "Format: 1.8\nSource: hello\nVersion: 1.0-1\nDistribution: bookworm-test-unstable\nArchitecture: source\nFiles:\n d41d8cd98f00b204e9800998ecf8427e 0 misc optional hello_1.0-1.dsc\n",
        )
        .unwrap();
        // A package file whose control says `arch`, named `file`.
        let deb = |file: &str, arch: &str| {
            let control = format!("Package: hello\nVersion: 1.0-1\nArchitecture: {arch}\nDescription: t\n t\n");
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            {
                let mut tar = ::tar::Builder::new(&mut gz);
                let mut h = ::tar::Header::new_gnu();
                h.set_size(control.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                tar.append_data(&mut h, "./control", control.as_bytes()).unwrap();
                tar.finish().unwrap();
            }
            let gz = gz.finish().unwrap();
            let mut ar = ar::Builder::new(std::fs::File::create(dir.path().join(file)).unwrap());
            ar.append(&ar::Header::new(b"debian-binary".to_vec(), 4), &b"2.0\n"[..]).unwrap();
            ar.append(&ar::Header::new(b"control.tar.gz".to_vec(), gz.len() as u64), &gz[..]).unwrap();
        };
        let write = |source: &str, version: &str, arch: &str, file: &str| {
            if crate::deb::debfile::PackageType::of_file(file).is_some()
                && let Some(a) = file.rsplit_once('.').and_then(|(s, _)| s.rsplit('_').next())
            {
                deb(file, a);
            }
            let p = dir.path().join("r.changes");
            std::fs::write(
                &p,
                format!("Format: 1.8\nSource: {source}\nVersion: {version}\nDistribution: bookworm-test-unstable\nArchitecture: {arch}\nFiles:\n d41d8cd98f00b204e9800998ecf8427e 0 misc optional {file}\n"),
            )
            .unwrap();
            p
        };
        assert!(result_is_of(&write("hello", "1.0-1", "all amd64", "hello_1.0-1_amd64.deb"), &upload, "amd64").is_ok());
        for file in ["hello-udeb_1.0-1_amd64.udeb", "hello-dbgsym_1.0-1_amd64.ddeb"] {
            assert!(result_is_of(&write("hello", "1.0-1", "amd64", file), &upload, "amd64").is_ok(), "{file}");
        }
        for (source, version, arch, file) in [
            ("victim", "1.0-1", "amd64", "victim_1.0-1_amd64.deb"),
            ("hello", "1.0-2", "amd64", "hello_1.0-2_amd64.deb"),
            ("hello", "1.0-1", "i386", "hello_1.0-1_i386.deb"),
            ("hello", "1.0-1", "source amd64", "hello_1.0-1.dsc"),
            ("hello", "1.0-1", "amd64", "hello_1.0-1_amd64.deb.sh"),
        ] {
            let e = result_is_of(&write(source, version, arch, file), &upload, "amd64");
            assert!(e.is_err(), "{source} {version} {arch} {file}");
        }
        // A package of another architecture under this build's name, or named for another.
        for (file, control_arch) in [("hello_1.0-1_amd64.deb", "i386"), ("hello_1.0-1_i386.deb", "i386")] {
            let p = write("hello", "1.0-1", "amd64", file);
            deb(file, control_arch);
            let e = result_is_of(&p, &upload, "amd64");
            assert!(e.as_ref().is_err_and(|e| e.contains("a build for amd64 makes amd64 and all")), "{file}: {e:?}");
        }
    }
}
