//! The packager (mini-buildd §5.2): checks a claimed upload, turns it into one signed build
//! request per architecture, collects the build results, and installs through the archive.
//!
//! Every step ends in one redb transaction that moves the upload's state and records its event,
//! so a step either happened, event included, or it did not and runs again after a restart.
//! Steps that write files write them before that transaction, idempotently.

pub mod options;

use crate::archive::{ArchiveError, RepoCtx};
use crate::config::{self, Distribution, Repository, Uploader, kind};
use crate::deb::{Changes, Dist, FileName, Stanza};
use crate::events::problem;
use crate::events::{Event, EventType};
use crate::incoming::{self, ArchBuild, ArchResult, Incoming, Kind, Upload, UploadState};
use crate::instance::Instance;
use crate::store::{self, BUILD_QUEUE, CONFIG, PENDING, StoreError, UPLOAD_KEYS};
use options::UploadOptions;
use redb::ReadableTable;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
}
crate::from_redb_errors!(PackagerError);

type Result<T> = std::result::Result<T, PackagerError>;

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PackagerError {
    let path = path.into();
    move |source| PackagerError::Io { path, source }
}

/// A build request waiting for a builder (table `build_queue`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BuildRequest {
    pub bkey: String,
    pub upload: u64,
    pub arch: String,
    pub distribution: String,
    /// The clear-signed request `.changes`; its tar is beside it.
    pub changes: PathBuf,
    #[serde(with = "crate::events::iso")]
    pub queued: chrono::DateTime<chrono::Utc>,
}

/// Every queued build request, oldest first.
pub fn build_queue(store: &store::Store) -> std::result::Result<Vec<BuildRequest>, StoreError> {
    let tx = store.read()?;
    let t = tx.open_table(BUILD_QUEUE)?;
    let mut out: Vec<BuildRequest> = Vec::new();
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

/// Why an upload is refused: shown to the uploader as the REJECTED event's detail.
struct Reject(String);

impl<E: std::fmt::Display> From<E> for Reject {
    fn from(e: E) -> Reject {
        Reject(e.to_string())
    }
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
}

impl Packager<'_> {
    /// Advance one pending upload as far as it goes now. Returns the events recorded.
    pub fn step(&self, id: u64) -> Result<Vec<Event>> {
        let Some(u) = incoming::get(&self.inst.store.read()?, id)? else {
            return Ok(vec![]);
        };
        match (u.kind, u.state) {
            (Kind::Upload, UploadState::Received) => self.package(u),
            (Kind::BuildResult, UploadState::Received) => self.take_result(u),
            (_, UploadState::Packaging) => self.install_if_complete(u),
            _ => Ok(vec![]),
        }
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

    /// Check an upload and queue its build requests (PACKAGING), or reject it (REJECTED).
    fn package(&self, u: Upload) -> Result<Vec<Event>> {
        let accepted = match self.check(&u) {
            Ok(a) => a,
            Err(Reject(why)) => return self.reject(u, why),
        };
        self.request_builds(u, accepted)
    }

    /// mini-buildd's checks, in its order (§5.1–5.2).
    fn check(&self, u: &Upload) -> std::result::Result<Accepted, Reject> {
        let dir = self.dir(u);
        let path = dir.join(u.changes.as_str());
        let raw = std::fs::read(&path).map_err(|e| Reject(format!("cannot read {}: {e}", u.changes)))?;
        // 1. Syntax, mandatory fields, checksums of every file.
        let text = String::from_utf8(raw.clone()).map_err(|_| Reject("the .changes is not UTF-8".into()))?;
        let changes = Changes::parse(&text).map_err(|e| Reject(format!("the .changes does not parse: {e}")))?;
        if changes.stanza.get("Changed-By").is_none_or(|c| c.trim().is_empty()) {
            return Err(Reject("the .changes has no Changed-By field; build it with dpkg-genchanges".into()));
        }
        for f in &changes.files {
            f.verify(&dir).map_err(|e| Reject(format!("{e}; upload the file again")))?;
        }
        // 2. The distribution.
        let read = self.inst.store.read()?;
        let (dist, ctx) = resolve_dist(&read, &changes.distribution)?;
        let (distribution, suite, _) = ctx.check_dist(&dist)?;
        if dist.is_rollback() {
            return Err(Reject(format!("{dist} is a rollback distribution; upload to {} instead", dist.base())));
        }
        if !suite.uploadable {
            let chain = ctx.layout.suites.iter().filter(|s| s.uploadable).map(|s| s.suite.to_string());
            return Err(Reject(format!(
                "suite {} of {dist} takes no uploads (packages reach it by migration); upload to one of: {}",
                suite.suite,
                chain.collect::<Vec<_>>().join(", ")
            )));
        }
        if !ctx.repo.status.is_active() {
            return Err(Reject(format!(
                "repository {} is not active; ask an administrator to activate it",
                ctx.repo.identity
            )));
        }
        if !distribution.status.is_active() {
            return Err(Reject(format!(
                "distribution {} is not active; ask an administrator to activate it",
                dist.codename
            )));
        }
        let (distribution, experimental) = (distribution.clone(), suite.experimental);
        // 3. The signature.
        if !ctx.repo.allow_unauthenticated_uploads {
            let certs = self.uploader_keyring(&read, &ctx.repo)?;
            crate::gpg::verify_upload(&raw, &certs).map_err(|e| {
                Reject(format!(
                    "the .changes is not signed by an active uploader of repository {}: {e}; sign it with debsign, and register your key with set_user_key",
                    ctx.repo.identity
                ))
            })?;
        }
        drop(read);
        // 4. Version rules, and 5. the source files (missing ones from the pool).
        if changes.dsc().is_none() {
            return Err(Reject("the upload has no .dsc; buildbay builds from source, so upload the source".into()));
        }
        let source_files = self.inst.archive()?.precheck(&dist, &path)?;
        let options = UploadOptions::parse(changes.stanza.get("Changes").unwrap_or(""))?;
        Ok(Accepted { changes, dist, distribution, experimental, options, source_files, ctx })
    }

    /// The uploader keyring of a repository: its active uploaders, its extra keyrings, our own key.
    fn uploader_keyring(&self, read: &redb::ReadTransaction, repo: &Repository) -> Result<Vec<crate::gpg::Cert>> {
        let t = read.open_table(CONFIG)?;
        let key_ = self.inst.key()?;
        let mut certs = vec![key_.cert().clone()];
        for up in store::list_config::<Uploader>(&t, kind::UPLOADER)? {
            if up.status.is_active() && up.may_upload_to.contains(&repo.identity) {
                match crate::gpg::read_keyring(up.key.as_bytes()) {
                    Ok(c) => certs.extend(c),
                    Err(e) => tracing::warn!(user = %up.user, "uploader key does not parse: {e}"),
                }
            }
        }
        for k in &repo.extra_uploader_keyrings {
            match std::fs::read(k) {
                Ok(data) => certs.extend(crate::gpg::read_keyring(&data)?),
                Err(e) => tracing::warn!(keyring = %k, "extra uploader keyring unreadable: {e}"),
            }
        }
        Ok(certs)
    }

    /// Write one clear-signed build request per architecture, then queue them (PACKAGING).
    fn request_builds(&self, mut u: Upload, a: Accepted) -> Result<Vec<Event>> {
        if u.timecode.is_none() {
            u.timecode = Some(incoming::timecode());
        }
        u.distribution = a.dist.to_string();
        let key = u.key();
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
            let arch = opt.arch.to_string();
            let bkey = format!("{key}/{arch}");
            let out = self.dir(&u).join("requests").join(&arch);
            std::fs::create_dir_all(&out).map_err(io_err(&out))?;
            let base =
                format!("{}_{}_mini-buildd-buildrequest_{arch}", a.changes.source, a.changes.version.without_epoch());
            let tar_name = format!("{base}.changes.tar");
            let tar_path = out.join(&tar_name);
            write_request_tar(&tar_path, &self.config_files(&a, &arch, &pub_key), &a.source_files)?;
            let mut st = Stanza::new();
            st.set("Format", "1.8");
            st.set("Date", chrono::Utc::now().to_rfc2822());
            st.set("Source", a.changes.source.as_str());
            st.set("Version", a.changes.version.as_str());
            st.set("Distribution", a.dist.to_string());
            st.set("Architecture", arch.as_str());
            for (k, v) in self.request_fields(&a, &u, opt, &bkey) {
                st.set(&format!("X-Mini-Buildd-{k}"), v);
            }
            set_file_fields(&mut st, &out, std::slice::from_ref(&tar_name)).map_err(io_err(&tar_path))?;
            let mut text = st.to_string();
            text.push('\n');
            let signed = key_.clearsign(text.as_bytes())?;
            let changes_path = out.join(format!("{base}.changes"));
            write_synced(&changes_path, &signed)?;
            arches.insert(
                arch.clone(),
                ArchBuild {
                    bkey: bkey.clone(),
                    optional: opt.optional,
                    arch_all: opt.build_architecture_all,
                    ignore_checks: a.experimental,
                    result: None,
                },
            );
            requests.push(BuildRequest {
                bkey,
                upload: u.id,
                arch,
                distribution: a.dist.to_string(),
                changes: changes_path,
                queued: chrono::Utc::now(),
            });
        }
        u.arches = arches;
        u.state = UploadState::Packaging;
        let buildrequests: serde_json::Map<String, serde_json::Value> =
            requests.iter().map(|r| (r.arch.clone(), r.bkey.clone().into())).collect();
        let event = event_for(EventType::Packaging, &u, Some(&a.changes)).with("buildrequests", buildrequests);
        let tx = self.inst.store.write()?;
        incoming::put(&tx, &u)?;
        tx.open_table(UPLOAD_KEYS)?.insert(key.as_str(), u.id)?;
        {
            let mut q = tx.open_table(BUILD_QUEUE)?;
            for r in &requests {
                q.insert(r.bkey.as_str(), store::encode(r).as_slice())?;
            }
        }
        event.record(&tx)?;
        tx.commit()?;
        Ok(vec![event])
    }

    /// The `X-Mini-Buildd-*` fields of a build request.
    fn request_fields(&self, a: &Accepted, u: &Upload, opt: &config::ArchOption, bkey: &str) -> Vec<(String, String)> {
        let arch = opt.arch.as_str();
        let log = format!("{}_{}_{arch}.buildlog", a.changes.source, a.changes.version.without_epoch());
        let mode = |k: &str, default: &str| a.options.get(k, arch).unwrap_or(default).to_owned();
        let mut f = vec![
            ("Timecode", u.timecode.clone().unwrap_or_default()),
            ("Upload-To", format!("{}/", self.ftp_url)),
            ("Packager", format!("{}/", self.http_url)),
            ("Build-Dep-Resolver", "apt".to_owned()),
            ("Sbuild-Config-Blocks", "set-default-path ccache".to_owned()),
            ("Sbuild-Setup-Blocks", "apt-setup apt-update ccache eatmydata".to_owned()),
            ("Lintian-Mode", mode("lintian-mode", "errfail")),
            ("Piuparts-Mode", mode("piuparts-mode", "disabled")),
            ("Autopkgtest-Mode", mode("autopkgtest-mode", "disabled")),
            ("Buildlog", format!("{bkey}/{log}")),
            ("Buildlog-Installed", format!("{}/mini_buildd/events-dir/{bkey}/{log}", self.http_url)),
        ];
        if opt.build_architecture_all {
            f.push(("Arch-All", "Yes".to_owned()));
        }
        // buildbay's own (mini-buildd ignores them): only when the distribution leaves sbuild.
        if a.distribution.build_backend != config::BuildBackend::Sbuild {
            f.push(("Build-Backend", a.distribution.build_backend.as_str().to_owned()));
            f.push(("Build-Network", if a.distribution.build_network { "Yes" } else { "No" }.to_owned()));
        }
        for (k, field) in [
            ("deb-build-options", "Deb-Build-Options"),
            ("deb-build-profiles", "Deb-Build-Profiles"),
            ("add-depends", "Add-Depends"),
        ] {
            if let Some(v) = a.options.get(k, arch) {
                f.push((field, v.to_owned()));
            }
        }
        f.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
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
        let mut sources = String::from("# The base distribution comes from the builder's chroot.\n");
        for s in suites {
            let d = Dist::new(a.dist.codename.clone(), repo.clone(), s);
            sources.push_str(&format!("deb {}/repositories/{repo}/ {d} {}\n", self.http_url, components.join(" ")));
        }
        let priority = a.options.get("internal-apt-priority", arch).unwrap_or("1");
        let origin = self.inst.daemon().ok().flatten().map(|d| d.archive_origin()).unwrap_or_default();
        let mut prefs = format!("Package: *\nPin: release o={origin}\nPin-Priority: {priority}\n");
        // The distribution's extra sources (backports, …), each pinned at its priority.
        for (source, priority) in self.inst.extra_sources(&a.distribution) {
            let Some(archive) = source.archives.first() else { continue };
            // The distribution's components that the source has.
            let shared: Vec<&str> = a
                .distribution
                .components
                .iter()
                .filter(|c| source.components.contains(c))
                .map(|c| c.as_str())
                .collect();
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
            ("chroot_setup_script", String::new()),
            ("sbuildrc_snippet", String::new()),
        ]
    }

    /// A build result arrived: check it and hand it to its upload.
    fn take_result(&self, r: Upload) -> Result<Vec<Event>> {
        let (target, arch, result) = match self.check_result(&r) {
            Ok(x) => x,
            Err(Reject(why)) => return self.reject(r, why),
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
            tx.open_table(BUILD_QUEUE)?.remove(b.bkey.as_str())?;
            b.result = Some(result);
        }
        incoming::put(&tx, &up)?;
        incoming::put(&tx, &done)?;
        tx.commit()?;
        self.install_if_complete(up)
    }

    fn check_result(&self, r: &Upload) -> std::result::Result<(u64, String, ArchResult), Reject> {
        let dir = self.dir(r);
        let raw = std::fs::read(dir.join(r.changes.as_str()))?;
        let text = String::from_utf8(raw.clone()).map_err(|_| Reject("the build result is not UTF-8".into()))?;
        let changes = Changes::parse(&text)?;
        for f in &changes.files {
            f.verify(&dir)?;
        }
        // Results are signed by a builder: this instance (remotes come with the builder work).
        crate::gpg::verify_upload(&raw, std::slice::from_ref(self.inst.key()?.cert()))
            .map_err(|e| Reject(format!("build result not signed by a known builder: {e}")))?;
        let arch = incoming::result_arch(r.changes.as_str()).unwrap_or_default().to_owned();
        let timecode = changes.stanza.get("X-Mini-Buildd-Timecode").unwrap_or("-");
        let key = format!("{}/{}/{timecode}", changes.source, changes.version);
        let target = {
            let read = self.inst.store.read()?;
            let t = read.open_table(UPLOAD_KEYS)?;
            t.get(key.as_str())?.map(|v| v.value())
        }
        .ok_or_else(|| Reject(format!("no upload {key} waits for build results")))?;
        let up =
            incoming::get(&self.inst.store.read()?, target)?.ok_or_else(|| Reject(format!("upload {key} vanished")))?;
        let Some(b) = up.arches.get(&arch) else {
            return Err(Reject(format!("upload {key} requested no build for {arch}")));
        };
        if up.state != UploadState::Packaging || b.result.is_some() {
            return Err(Reject(format!("upload {key} already has its {arch} result")));
        }
        let status = changes.stanza.get("X-Mini-Buildd-Sbuild-Status").unwrap_or("error").to_owned();
        let mut reason = None;
        let mut success = matches!(status.as_str(), "successful" | "skipped");
        if !success {
            reason = Some(format!("sbuild status {status}"));
        }
        if success && !b.ignore_checks {
            for check in ["Lintian", "Piuparts", "Autopkgtest"] {
                let mode = changes.stanza.get(&format!("X-Mini-Buildd-{check}-Mode")).unwrap_or("disabled");
                let got = changes.stanza.get(&format!("X-Mini-Buildd-Sbuild-{check}")).unwrap_or("");
                if !check_passes(mode, got) {
                    success = false;
                    reason = Some(format!("{check} {got} (mode {mode})"));
                }
            }
        }
        if let Some(e) = changes.stanza.get("X-Mini-Buildd-Internal-Error") {
            success = false;
            reason = Some(format!("builder error: {e}"));
        }
        if let Some(by) = changes.stanza.get("X-Mini-Buildd-Canceled-By") {
            success = false;
            reason = Some(format!("build canceled by {by}"));
        }
        Ok((target, arch, ArchResult { status, success, spool: r.id, reason }))
    }

    /// Once every architecture has its result: install (INSTALLED) or give up (FAILED).
    fn install_if_complete(&self, mut u: Upload) -> Result<Vec<Event>> {
        if u.state != UploadState::Packaging || u.arches.values().any(|b| b.result.is_none()) {
            return Ok(vec![]);
        }
        let failures: Vec<String> = u
            .arches
            .iter()
            .filter(|(_, b)| !b.optional)
            .filter_map(|(a, b)| b.result.as_ref().filter(|r| !r.success).map(|r| (a, r)))
            .map(|(a, r)| format!("{a}: {}", r.reason.clone().unwrap_or_else(|| r.status.clone())))
            .collect();
        let changes = std::fs::read_to_string(self.dir(&u).join(u.changes.as_str()))
            .map_err(|e| e.to_string())
            .and_then(|t| Changes::parse(&t).map_err(|e| e.to_string()));
        let outcome = match (&changes, failures.is_empty()) {
            (Ok(c), true) => self.install(&u, c),
            (Err(e), true) => Err(format!("{}: {e}", u.changes)),
            (_, false) => Err(failures.join("; ")),
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
                event_for(EventType::Installed, &u, changes.as_ref()).with("buildresults", results)
            }
            Err(why) => {
                tracing::info!(upload = u.id, source = %u.source, version = %u.version, "failed: {why}");
                u.state = UploadState::Failed;
                u.error = Some(why.clone());
                event_for(EventType::Failed, &u, changes.as_ref())
                    .with("buildresults", results)
                    .with("error", problem(500, "Package failed", why))
            }
        };
        let tx = self.inst.store.write()?;
        incoming::put(&tx, &u)?;
        event.record(&tx)?;
        tx.commit()?;
        Ok(vec![event])
    }

    /// Install the source and every successful architecture's binaries. Safe to run again after
    /// a crash: a source already in the distribution is not included twice.
    fn install(&self, u: &Upload, changes: &Changes) -> std::result::Result<(), String> {
        let dir = self.dir(u);
        let dist: Dist = u.distribution.parse().map_err(|e| format!("{e}"))?;
        let archive = self.inst.archive().map_err(|e| e.to_string())?;
        let mut list = Vec::new();
        if !archive.holds(&dist, &changes.source, &changes.version).map_err(|e| e.to_string())? {
            list.push(source_only_changes(&dir, changes).map_err(|e| e.to_string())?);
        }
        for (arch, b) in &u.arches {
            let Some(r) = b.result.as_ref().filter(|r| r.success) else { continue };
            if r.status == "skipped" {
                continue;
            }
            let out = dir.join("results").join(arch);
            list.push(unpack_result(&self.incoming.spool_dir(r.spool), &out).map_err(|e| format!("{arch}: {e}"))?);
        }
        let errors: Vec<String> = archive
            .include_many(&dist, &list, false)
            .into_iter()
            .zip(&list)
            .filter_map(|(r, p)| {
                r.err().map(|e| format!("{}: {e}", p.file_name().unwrap_or_default().to_string_lossy()))
            })
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }
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
    u.timecode = Some(incoming::timecode());
    tx.open_table(UPLOAD_KEYS)?.insert(u.key().as_str(), u.id)?;
    u.arches.clear();
    u.error = None;
    u.retries += 1;
    incoming::put(&tx, &u)?;
    tx.commit()?;
    Ok(u.id)
}

/// mini-buildd's check modes: `disabled`/`ignore` always pass; `errfail` fails on `fail`,
/// `warnfail` also on `warn`.
pub fn check_passes(mode: &str, result: &str) -> bool {
    match mode {
        "errfail" => result != "fail",
        "warnfail" => !matches!(result, "fail" | "warn"),
        _ => true,
    }
}

/// Map the `.changes` distribution to a real one: as written, or through a meta-distribution.
fn resolve_dist(read: &redb::ReadTransaction, written: &str) -> std::result::Result<(Dist, RepoCtx), Reject> {
    if let Ok(d) = written.parse::<Dist>() {
        let ctx = RepoCtx::load(read, &d.repo).map_err(|e| Reject(format!("distribution {written}: {e}")))?;
        return Ok((d, ctx));
    }
    let t = read.open_table(CONFIG)?;
    let mut found = Vec::new();
    for repo in store::list_config::<Repository>(&t, kind::REPOSITORY)? {
        let Ok(ctx) = RepoCtx::load(read, &repo.identity) else { continue };
        if let Some((codename, suite)) = ctx.layout.meta(written)
            && ctx.dists.contains_key(codename.as_str())
        {
            found.push((Dist::new(codename, repo.identity.clone(), suite), ctx));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Reject(format!(
            "distribution {written:?} is unknown: use <codename>-<repository>-<suite>, e.g. bookworm-test-unstable (see the sources_list call)"
        ))),
        _ => Err(Reject(format!(
            "meta-distribution {written} is ambiguous: {} repositories map it; use the full distribution name",
            found.len()
        ))),
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    crate::archive::publish::write_file_synced(path, data).map_err(io_err(path))
}

/// The request tar: `.config/*`, then the `.dsc` and every source file.
fn write_request_tar(path: &Path, config: &[(&str, String)], files: &[PathBuf]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut tar = tar::Builder::new(file);
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    for (name, content) in config {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(now);
        tar.append_data(&mut h, format!(".config/{name}"), content.as_bytes()).map_err(io_err(&tmp))?;
    }
    for f in files {
        let name = f.file_name().unwrap_or_default();
        tar.append_path_with_name(f, name).map_err(io_err(f))?;
    }
    let file = tar.into_inner().map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// A `.changes` beside the upload that lists only its source files (mini-buildd installs the
/// `.dsc`, never binaries an uploader built).
fn source_only_changes(dir: &Path, changes: &Changes) -> Result<PathBuf> {
    let mut st = changes.stanza.clone();
    let keep = |name: &str| !name.ends_with(".deb") && !name.ends_with(".udeb") && !name.ends_with(".buildinfo");
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

/// Unpack a build result's tar (the builder's `.changes` and its packages) and return the `.changes`.
fn unpack_result(result_dir: &Path, out: &Path) -> std::result::Result<PathBuf, String> {
    let tar_path = std::fs::read_dir(result_dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tar"))
        .ok_or("the build result has no .tar")?;
    let names = unpack_protocol_tar(&tar_path, out, false)?;
    let changes = names.into_iter().find(|n| n.ends_with(".changes"));
    changes.map(|n| out.join(n)).ok_or_else(|| "the build result tar holds no .changes".to_owned())
}

/// Unpack the tar of a build request or result into `out`: plain file names only, and
/// `.config/<plain name>` when `with_config` (a request's apt configuration). Returns the names
/// written, in tar order.
pub(crate) fn unpack_protocol_tar(
    tar_path: &Path,
    out: &Path,
    with_config: bool,
) -> std::result::Result<Vec<String>, String> {
    let file = std::fs::File::open(tar_path).map_err(|e| format!("{}: {e}", tar_path.display()))?;
    let mut ar = tar::Archive::new(file);
    let plain = |n: &str| n.parse::<FileName>().is_ok();
    let mut names = Vec::new();
    for entry in ar.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let name = path.to_str().unwrap_or_default().to_owned();
        let config = with_config && name.strip_prefix(".config/").is_some_and(plain);
        if !plain(&name) && !config {
            let allowed = if with_config { "plain file names and .config/*" } else { "plain file names" };
            return Err(format!("the tar holds {name:?}; only {allowed} are allowed"));
        }
        let dst = out.join(&name);
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        entry.unpack(&dst).map_err(|e| e.to_string())?;
        names.push(name);
    }
    Ok(names)
}

/// Set a protocol `.changes`' `Files` and `Checksums-Sha256` for `names` in `dir`.
pub(crate) fn set_file_fields(st: &mut Stanza, dir: &Path, names: &[String]) -> std::io::Result<()> {
    let (mut files, mut sha) = (String::new(), String::new());
    for n in names {
        let s = crate::deb::Checksums::of_file(&dir.join(n))?;
        files.push_str(&format!("\n {} {} mini-buildd extra {n}", s.md5, s.size));
        sha.push_str(&format!("\n {} {} {n}", s.sha256, s.size));
    }
    st.set("Files", files);
    st.set("Checksums-Sha256", sha);
    Ok(())
}

/// An event about an upload, with the `.changes` fields mini-buildd puts into `extra`.
fn event_for(kind: EventType, u: &Upload, c: Option<&Changes>) -> Event {
    let mut e = Event::new(kind, &u.distribution, &u.source, &u.version)
        .with("key", u.key())
        .with("timecode", u.timecode.clone().unwrap_or_default())
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
    fn check_modes() {
        assert!(check_passes("disabled", "fail"));
        assert!(check_passes("ignore", "fail"));
        assert!(!check_passes("errfail", "fail"));
        assert!(check_passes("errfail", "warn"));
        assert!(!check_passes("warnfail", "warn"));
        assert!(check_passes("warnfail", "pass"));
    }
}
