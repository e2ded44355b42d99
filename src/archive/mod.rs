//! The signed APT repository engine.
//!
//! Owns everything under `<state>/repositories/`. The package index of every distribution lives in
//! redb (`store`); the published `dists/` trees are derived from it by `publish`, and a
//! distribution whose tree is behind its index is marked dirty in the same transaction that
//! changed the index, so a crash at any point is repaired by the next publish.

pub mod adopt;
pub mod compress;
pub mod index;
pub mod publish;
pub mod scratch;

use crate::config::{self, Distribution, LayoutObject, Repository};
use crate::deb::changes::FileCheckError;
use crate::deb::control::ControlError;
use crate::deb::debfile::{DebError, PackageType};
use crate::deb::{
    Arch, Changes, Checksums, Component, Dist, Dsc, FileName, PackageName, RepoId, SnapshotName, Version,
};
use crate::events::{Event, EventType};
use crate::gpg::ArchiveKey;
use crate::layout::{self, Layout, ShiftOp, Slot};
use crate::store::{
    self, CONFIG, DEB_CONTENTS, DIRTY, DIST_BINARIES, DIST_DSCS, DIST_SOURCES, POOL_REFS, SNAPSHOTS, Store, StoreError,
};
use publish::{IndexKind, Part, PublishError};
use redb::{ReadableTable, WriteTransaction};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One debdiff at a time.
static DEBDIFF_TURN: Mutex<()> = Mutex::new(());
/// Most bytes of sources a debdiff compares.
const DEBDIFF_INPUT: u64 = 1 << 30;

/// How long a `debdiff` may take, and how much of its output is answered.
const DEBDIFF_SECS: u32 = 120;
const DEBDIFF_MAX: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Installed (committed), but publishing failed: the next publish catches up (retry).
    #[error("installed, but publishing failed: {0}; the next publish catches up")]
    NotPublished(String),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{file}: {source}")]
    Control { file: String, source: ControlError },
    #[error("{file}: {source}")]
    Deb { file: String, source: DebError },
    #[error(transparent)]
    FileCheck(#[from] FileCheckError),
    #[error("{0}")]
    Rule(#[from] layout::RuleError),
    #[error("repository {0} does not exist; create it with `buildbay setup --repositories {0}:Default:<codename>`")]
    UnknownRepository(RepoId),
    #[error("repository {0} is not active; activate it first")]
    InactiveRepository(RepoId),
    #[error("distribution {dist} does not exist: {why}")]
    UnknownDistribution { dist: String, why: String },
    #[error("{0} is a rollback distribution; upload to or include into {1} instead")]
    RollbackDistribution(Dist, Dist),
    #[error("{package} {version} is already in {dist} of repository {repo}; use a new version")]
    AlreadyInstalled { package: PackageName, version: Version, dist: Dist, repo: RepoId },
    #[error("{package} {version} is lower than {current} in {dist}; use a higher version, or remove the installed one")]
    VersionTooLow { package: PackageName, version: Version, current: Version, dist: Dist },
    #[error("{0} is not in {1}")]
    NotFound(PackageName, Dist),
    #[error("{package} in {dist} has version {actual}, not {asked}")]
    WrongVersion { package: PackageName, dist: Dist, actual: Version, asked: Version },
    #[error("{0} does not migrate anywhere in its layout")]
    NoMigration(Dist),
    #[error("{0} is already in {1}; remove it there before restoring a rollback")]
    RestoreOccupied(PackageName, Dist),
    #[error("upload is inconsistent: {0}")]
    Inconsistent(String),
    #[error(
        "pool file {path} already exists with different content; the upload reuses a file name with new content (e.g. a changed orig tarball)"
    )]
    PoolConflict { path: String },
    #[error("snapshot {0} of {1} already exists")]
    SnapshotExists(SnapshotName, Dist),
    #[error("snapshot {0} of {1} does not exist")]
    NoSnapshot(SnapshotName, Dist),
    #[error("{package} {version} is not in repository {repo}; `ls {package}` lists its versions")]
    NoSuchVersion { package: PackageName, version: Version, repo: RepoId },
    #[error("repository {1} holds fewer than two versions of {0}: nothing to compare")]
    NothingToCompare(PackageName, RepoId),
    #[error("debdiff failed: {0}")]
    Debdiff(String),
    #[error("{0}")]
    TooLarge(String),
}

pub type Result<T> = std::result::Result<T, ArchiveError>;

impl ArchiveError {
    /// Whether the error is about the input (a rule, a name, a file: final), not about the
    /// daemon (the store, the disk: try again later).
    pub fn is_input(&self) -> bool {
        !matches!(
            self,
            ArchiveError::Store(_) | ArchiveError::Publish(_) | ArchiveError::Io { .. } | ArchiveError::NotPublished(_)
        )
    }
}

crate::from_redb_errors!(ArchiveError);

fn io_err<P: AsRef<Path>>(path: P) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let path = path.as_ref().to_owned();
    move |source| ArchiveError::Io { path, source }
}

/// A file in a repository's pool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolFile {
    /// Relative to the repository root: `pool/main/h/hello/hello_1.0.dsc`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BinaryKey {
    pub arch: Arch,
    pub package: PackageName,
    pub version: Version,
    /// `.deb` (not written), `.udeb` or `.ddeb`.
    #[serde(default, skip_serializing_if = "PackageType::is_deb")]
    pub kind: PackageType,
}

/// What a distribution holds of one source package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceRecord {
    pub source: PackageName,
    pub version: Version,
    pub component: Component,
    pub files: Vec<PoolFile>,
    pub binaries: Vec<BinaryKey>,
    /// When this version left its distribution for rollback0 (rollbacks only; retention's
    /// `keep_days` counts from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<chrono::DateTime<chrono::Utc>>,
}

/// What the migration gate sees of one migration (see [`Archive::migration_view`]).
#[derive(Debug, Clone)]
pub struct MigrationView {
    pub source: PackageName,
    pub to: Dist,
    pub version: Version,
    /// The migrating binaries' `Packages` stanzas, by architecture (`all` included).
    pub candidates: Vec<(Arch, Vec<u8>)>,
    /// The target's other binaries' stanzas.
    pub others: Vec<(Arch, Vec<u8>)>,
    /// The distribution's architectures that must build.
    pub mandatory: Vec<Arch>,
}

/// A record plus its index stanzas, as moved between distributions.
#[derive(Debug, Clone)]
struct Entry {
    record: SourceRecord,
    dsc: Option<Vec<u8>>,
    binaries: Vec<Vec<u8>>,
}

/// A repository with everything needed to apply its rules.
#[derive(Debug, Clone)]
pub struct RepoCtx {
    pub repo: Repository,
    pub layout: Layout,
    /// Per codename: the distribution and its codeversion.
    pub dists: BTreeMap<String, (Distribution, String)>,
}

impl RepoCtx {
    pub fn load(tx: &redb::ReadTransaction, id: &RepoId) -> Result<RepoCtx> {
        let t = tx.open_table(CONFIG)?;
        let repo: Repository =
            store::get_config(&t, id.as_str())?.ok_or_else(|| ArchiveError::UnknownRepository(id.clone()))?;
        let layout: LayoutObject = store::get_config(&t, &repo.layout)?.ok_or_else(|| {
            ArchiveError::Inconsistent(format!("repository {id} uses unknown layout {}", repo.layout))
        })?;
        let mut dists = BTreeMap::new();
        for c in &repo.distributions {
            let d: Distribution = store::get_config(&t, c.as_str())?
                .ok_or_else(|| ArchiveError::Inconsistent(format!("repository {id} uses unknown distribution {c}")))?;
            let src: Option<config::Source> = store::get_config(&t, &d.base_source)?;
            let cv =
                src.map(|s| s.codeversion().to_owned()).unwrap_or_else(|| format!("~{}", c.as_str().to_uppercase()));
            dists.insert(c.to_string(), (d, cv));
        }
        Ok(RepoCtx { repo, layout: layout.layout, dists })
    }

    /// Every distribution name of the repository, rollbacks included.
    pub fn all_dists(&self) -> Vec<Dist> {
        let mut out = Vec::new();
        for (d, _) in self.dists.values() {
            for s in &self.layout.suites {
                let base = Dist::new(d.codename.clone(), self.repo.identity.clone(), s.suite.clone());
                out.extend((0..s.rollback).map(|n| base.rollback(n)));
                out.push(base);
            }
        }
        out
    }

    /// Check that a distribution exists in this repository.
    pub fn check_dist(&self, dist: &Dist) -> Result<(&Distribution, &layout::SuiteOption, &str)> {
        let unknown = |why: String| ArchiveError::UnknownDistribution { dist: dist.to_string(), why };
        if dist.repo != self.repo.identity {
            return Err(unknown(format!("it belongs to repository {}, not {}", dist.repo, self.repo.identity)));
        }
        let (d, cv) = self
            .dists
            .get(dist.codename.as_str())
            .ok_or_else(|| unknown(format!("repository {} has no codename {}", self.repo.identity, dist.codename)))?;
        let s = self
            .layout
            .suite(&dist.suite)
            .ok_or_else(|| unknown(format!("layout {} has no suite {}", self.layout.name, dist.suite)))?;
        if let Some(n) = dist.rollback
            && n >= s.rollback
        {
            return Err(unknown(format!("suite {} keeps {} rollbacks", s.suite, s.rollback)));
        }
        Ok((d, s, cv))
    }

    fn rollbacks(&self, dist: &Dist) -> u32 {
        self.layout.suite(&dist.suite).map_or(0, |s| s.rollback)
    }

    fn parts(&self, dist: &Dist) -> Vec<Part> {
        let Some((d, _)) = self.dists.get(dist.codename.as_str()) else { return vec![] };
        let mut parts = Vec::new();
        for c in &d.components {
            for a in d.arches() {
                for kind in [IndexKind::Packages, IndexKind::Installer, IndexKind::Contents] {
                    parts.push(Part { component: c.to_string(), arch: a.to_string(), kind });
                }
            }
            parts.push(Part { component: c.to_string(), arch: "source".into(), kind: IndexKind::Sources });
        }
        parts
    }

    pub fn release_meta(&self, dist: &Dist, origin: &str) -> index::ReleaseMeta {
        let suite = self.layout.suite(&dist.suite);
        let (na, bau) = match (dist.rollback, suite) {
            (Some(_), _) => (true, false),
            (None, Some(s)) => (s.not_automatic, s.but_automatic_upgrades),
            (None, None) => (true, false),
        };
        let d = self.dists.get(dist.codename.as_str()).map(|(d, _)| d);
        index::ReleaseMeta {
            origin: origin.to_owned(),
            label: dist.to_string(),
            suite: dist.to_string(),
            codename: dist.to_string(),
            description: dist.to_string(),
            architectures: d.map(|d| d.arches().map(|a| a.to_string()).collect()).unwrap_or_default(),
            components: d.map(|d| d.components.iter().map(|c| c.to_string()).collect()).unwrap_or_default(),
            not_automatic: na,
            but_automatic_upgrades: bau,
        }
    }
}

/// Result of an include.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IncludeReport {
    pub distribution: Dist,
    pub source: PackageName,
    pub version: Version,
    pub files: Vec<String>,
}

/// One line of `ls`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LsEntry {
    pub distribution: Dist,
    pub source: PackageName,
    pub version: Version,
    pub component: Component,
    pub binaries: Vec<BinaryKey>,
}

pub struct Archive<'a> {
    store: &'a Store,
    key: &'a ArchiveKey,
    origin: String,
    root: PathBuf,
    /// Shared by every `Archive` of one instance: one writer at a time.
    writer: &'a Mutex<()>,
}

/// A prepared include: everything validated and staged in memory, nothing written yet.
struct Staged {
    dist: Dist,
    entry: Entry,
    /// Pool path → file to copy in.
    copies: Vec<(String, PathBuf, Checksums)>,
    /// Binary-only upload onto an existing source record.
    binary_only: bool,
}

/// What each `.deb` and `.ddeb` of an upload installs, one path per line, by file name.
type UploadContents = BTreeMap<String, Vec<u8>>;

/// Read what the packages of an upload install (for `Contents`). The dearest part of an include
/// (each `data.tar` is unpacked), so it runs before the archive's writer lock is taken. A member
/// compressed in a way not read here (bzip2) lists nothing, with a warning; any other fault of a
/// package refuses the upload.
fn upload_contents(changes_path: &Path) -> Result<UploadContents> {
    let changes = Changes::parse(&read_limited(changes_path)?)
        .map_err(|source| ArchiveError::Control { file: changes_path.display().to_string(), source })?;
    let dir = changes_path.parent().unwrap_or(Path::new("."));
    let mut out = BTreeMap::new();
    for f in &changes.files {
        let name = f.name.as_str();
        if !PackageType::in_contents(name) {
            continue;
        }
        let paths = match crate::deb::debfile::read_contents(&dir.join(name)) {
            Ok(paths) => paths.join("\n").into_bytes(),
            Err(e @ DebError::Compression(..)) => {
                tracing::warn!(file = name, error = %e, "Contents leaves this package out");
                vec![]
            }
            Err(source) => return Err(ArchiveError::Deb { file: name.to_owned(), source }),
        };
        out.insert(name.to_owned(), paths);
    }
    Ok(out)
}

fn key3(a: &str, b: &str, c: &str) -> String {
    format!("{a}/{b}/{c}")
}

pub(crate) fn read_limited(path: &Path) -> Result<String> {
    let bytes = crate::deb::changes::read_bounded(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::FileTooLarge => ArchiveError::Inconsistent(e.to_string()),
        _ => ArchiveError::Io { path: path.to_owned(), source: e },
    })?;
    String::from_utf8(bytes).map_err(|_| ArchiveError::Inconsistent(format!("{} is not UTF-8 text", path.display())))
}

fn component_of(section: Option<&str>) -> Option<&str> {
    section.and_then(|s| s.split_once('/')).map(|(c, _)| c)
}

impl<'a> Archive<'a> {
    pub fn new(store: &'a Store, key: &'a ArchiveKey, origin: String, writer: &'a Mutex<()>) -> Archive<'a> {
        let root = store.dir().join("repositories");
        Archive { store, key, origin, root, writer }
    }

    pub fn repo_root(&self, repo: &RepoId) -> PathBuf {
        self.root.join(repo.as_str())
    }

    fn dists_dir(&self, repo: &RepoId) -> PathBuf {
        self.repo_root(repo).join("dists")
    }

    pub fn ctx(&self, repo: &RepoId) -> Result<RepoCtx> {
        RepoCtx::load(&self.store.read()?, repo)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create a repository's directories and publish all its distributions.
    pub fn prepare_repository(&self, repo: &RepoId) -> Result<()> {
        let _w = self.lock();
        let ctx = self.ctx(repo)?;
        for sub in ["dists", "pool"] {
            let d = self.repo_root(repo).join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let tx = self.store.write()?;
        {
            let mut dirty = tx.open_table(DIRTY)?;
            for d in ctx.all_dists() {
                dirty.insert(key3(&d.to_string(), "*", "*").as_str(), 1)?;
            }
        }
        tx.commit()?;
        self.publish_dirty_locked(&ctx)?;
        Ok(())
    }

    /// Verify that every published distribution matches its index and signature.
    pub fn check_repository(&self, repo: &RepoId) -> Result<()> {
        let ctx = self.ctx(repo)?;
        let _w = self.lock();
        self.mark_stale(&ctx)?;
        self.publish_dirty_locked(&ctx)?;
        for d in ctx.all_dists() {
            let dir = self.dists_dir(repo).join(d.to_string());
            let inrelease = std::fs::read(dir.join("InRelease")).map_err(io_err(dir.join("InRelease")))?;
            let (payload, _) = crate::gpg::verify_clearsigned(&inrelease, std::slice::from_ref(self.key.cert()))
                .map_err(|e| ArchiveError::Inconsistent(format!("{d}: InRelease: {e}")))?;
            for f in index::release_files(&String::from_utf8_lossy(&payload)) {
                let p = dir.join(&f.path);
                let sums = publish::listed_sums(&dir, &f.path).map_err(io_err(&p))?;
                if sums.sha256 != f.sums.sha256 {
                    return Err(ArchiveError::Inconsistent(format!("{d}: {} does not match Release", f.path)));
                }
            }
        }
        Ok(())
    }

    /// Publish again every distribution whose `Release` names another `Origin` than the
    /// daemon's now (its `custom_archive_origin` changed), so apt pins see the new one. Returns
    /// how many.
    pub fn refresh_origin(&self, repo: &RepoId) -> Result<usize> {
        let ctx = self.ctx(repo)?;
        let _w = self.lock();
        let n = self.mark_stale(&ctx)?;
        self.publish_dirty_locked(&ctx)?;
        Ok(n)
    }

    /// Mark for publishing in full the distributions published with another `Origin`, or
    /// without an index this version publishes (`Contents`, the installer's).
    fn mark_stale(&self, ctx: &RepoCtx) -> Result<usize> {
        let dists = self.dists_dir(&ctx.repo.identity);
        let other: Vec<Dist> = ctx
            .all_dists()
            .into_iter()
            .filter(|d| {
                let dir = dists.join(d.to_string());
                let Ok(release) = std::fs::read_to_string(dir.join("Release")) else { return false };
                let origin = release.lines().find_map(|l| l.strip_prefix("Origin:")).map(str::trim);
                let lacks = publish::lacks_parts(&index::release_files(&release), &ctx.parts(d));
                origin.is_some_and(|o| o != self.origin) || lacks
            })
            .collect();
        if !other.is_empty() {
            let tx = self.store.write()?;
            {
                let mut dirty = tx.open_table(DIRTY)?;
                for d in &other {
                    dirty.insert(key3(&d.to_string(), "*", "*").as_str(), 1)?;
                }
            }
            tx.commit()?;
            tracing::info!(repository = %ctx.repo.identity, n = other.len(), origin = %self.origin, "a distribution's Origin or indices are not this version's: publishing again");
        }
        Ok(other.len())
    }

    /// Validate an upload completely, without writing anything.
    fn stage(&self, ctx: &RepoCtx, dist: &Dist, changes_path: &Path, force: bool) -> Result<Staged> {
        let (distribution, suite, codeversion) = ctx.check_dist(dist)?;
        if dist.is_rollback() {
            return Err(ArchiveError::RollbackDistribution(dist.clone(), dist.base()));
        }
        let cname = changes_path.display().to_string();
        let changes = Changes::parse(&read_limited(changes_path)?)
            .map_err(|source| ArchiveError::Control { file: cname.clone(), source })?;
        let dir = changes_path.parent().unwrap_or(Path::new("."));
        let mut sums: BTreeMap<FileName, Checksums> = BTreeMap::new();
        for f in &changes.files {
            sums.insert(f.name.clone(), f.verify(dir)?);
        }

        let read = self.store.read()?;
        let current = get_entry(&read, dist, &changes.source)?;
        let dsc_entry = changes.dsc().cloned();
        let (mut entry, copies_src, binary_only) = match dsc_entry {
            Some(dsc_file) => {
                let dsc = Dsc::parse(&read_limited(&dir.join(dsc_file.name.as_str()))?)
                    .map_err(|source| ArchiveError::Control { file: dsc_file.name.to_string(), source })?;
                if dsc.source != changes.source || dsc.version != changes.version {
                    return Err(ArchiveError::Inconsistent(format!(
                        ".dsc is {} {}, but the .changes says {} {}",
                        dsc.source, dsc.version, changes.source, changes.version
                    )));
                }
                if dsc_file.name.as_str() != dsc.file_name() {
                    return Err(ArchiveError::Inconsistent(format!(
                        "the .dsc of {} {} must be named {}, not {}",
                        dsc.source,
                        dsc.version,
                        dsc.file_name(),
                        dsc_file.name
                    )));
                }
                let component = component_of(dsc_file.section.as_deref()).unwrap_or("main").to_owned();
                let component: Component = component
                    .parse()
                    .map_err(|e: crate::deb::names::NameError| ArchiveError::Inconsistent(e.to_string()))?;
                if !distribution.components.contains(&component) {
                    return Err(ArchiveError::Inconsistent(format!("component {component} is not in {dist}")));
                }
                let pooldir = format!("pool/{component}/{}/{}", changes.source.pool_prefix(), changes.source);
                // Every file of the .dsc: from the upload, or already in the pool with the same content.
                let mut copies = vec![(
                    format!("{pooldir}/{}", dsc_file.name),
                    dir.join(dsc_file.name.as_str()),
                    sums[&dsc_file.name].clone(),
                )];
                for f in &dsc.files {
                    let pool_path = format!("{pooldir}/{}", f.name);
                    match sums.get(&f.name) {
                        Some(s) => {
                            f.matches(s)?;
                            copies.push((pool_path, dir.join(f.name.as_str()), s.clone()));
                        }
                        None => {
                            let in_pool = self.repo_root(&dist.repo).join(&pool_path);
                            let s = Checksums::of_file(&in_pool).map_err(|_| {
                                ArchiveError::Inconsistent(format!(
                                    "{} is listed in the .dsc but neither uploaded nor in the pool; upload with -sa",
                                    f.name
                                ))
                            })?;
                            f.matches(&s)?;
                            copies.push((pool_path, in_pool, s));
                        }
                    }
                }
                let dsc_stanza = index::sources_entry(
                    &dsc.stanza,
                    dsc_file.name.as_str(),
                    &sums[&dsc_file.name],
                    &pooldir,
                    dsc_file.section.as_deref(),
                    dsc_file.priority.as_deref(),
                );
                let record = SourceRecord {
                    source: changes.source.clone(),
                    version: changes.version.clone(),
                    component,
                    files: vec![],
                    binaries: vec![],
                    superseded: None,
                };
                (Entry { record, dsc: Some(dsc_stanza.to_string().into_bytes()), binaries: vec![] }, copies, false)
            }
            None => {
                let Some(cur) = current.clone().filter(|c| c.record.version == changes.version) else {
                    return Err(ArchiveError::Inconsistent(format!(
                        "binary-only upload of {} {}, but {dist} does not hold that source version; include the source first",
                        changes.source, changes.version
                    )));
                };
                (cur, vec![], true)
            }
        };

        let pooldir = format!("pool/{}/{}/{}", entry.record.component, changes.source.pool_prefix(), changes.source);
        let mut copies = copies_src;
        let mut new_bins: Vec<(BinaryKey, Vec<u8>)> = Vec::new();
        // debhelper's automatic debug packages (`<package>-dbgsym`): built, never declared.
        let mut auto_debug: Vec<PackageName> = Vec::new();
        for f in &changes.files {
            let name = f.name.as_str();
            let Some(kind) = PackageType::of_file(name) else { continue };
            let control = crate::deb::debfile::read_control(&dir.join(name))
                .map_err(|source| ArchiveError::Deb { file: name.to_owned(), source })?;
            let field = |k: &'static str| {
                control.require(k).map_err(|source| ArchiveError::Control { file: name.to_owned(), source })
            };
            let package: PackageName = field("Package")?
                .parse()
                .map_err(|e: crate::deb::names::NameError| ArchiveError::Inconsistent(format!("{name}: {e}")))?;
            let version: Version = field("Version")?
                .parse()
                .map_err(|e: crate::deb::version::VersionError| ArchiveError::Inconsistent(format!("{name}: {e}")))?;
            let arch: Arch = field("Architecture")?
                .parse()
                .map_err(|e: crate::deb::names::NameError| ArchiveError::Inconsistent(format!("{name}: {e}")))?;
            if control.get("Auto-Built-Package") == Some("debug-symbols") {
                auto_debug.push(package.clone());
            }
            let src_name = control.get("Source").and_then(|s| s.split_whitespace().next()).unwrap_or(package.as_str());
            if src_name != changes.source.as_str() {
                return Err(ArchiveError::Inconsistent(format!(
                    "{name} is built from source {src_name}, not {}",
                    changes.source
                )));
            }
            if !arch.is_all() && !distribution.arches().any(|a| a == &arch) {
                return Err(ArchiveError::Inconsistent(format!("{name}: architecture {arch} is not in {dist}")));
            }
            let pool_path = format!("{pooldir}/{name}");
            let stanza = index::packages_entry(
                &control,
                &pool_path,
                &sums[&f.name],
                f.section.as_deref(),
                f.priority.as_deref(),
            );
            if let Some(section) = stanza.get("Section").filter(|s| !index::valid_section(s)) {
                return Err(ArchiveError::Inconsistent(format!(
                    "{name}: Section {section:?} is not a Debian section (lower-case letters, digits, '+', '-' and '.', with at most one area in front, e.g. contrib/net)"
                )));
            }
            if let Some((twin, _)) = new_bins.iter().find(|(k, _)| {
                k.package == package && arch_segment(k.kind, k.arch.as_str()) == arch_segment(kind, arch.as_str())
            }) {
                return Err(ArchiveError::Inconsistent(format!(
                    "{name}: the upload has {} for {} already; one package per architecture",
                    twin.package, twin.arch
                )));
            }
            copies.push((pool_path, dir.join(name), sums[&f.name].clone()));
            new_bins.push((BinaryKey { arch, package, version, kind }, stanza.to_string().into_bytes()));
        }
        if binary_only && new_bins.is_empty() {
            return Err(ArchiveError::Inconsistent("the .changes lists neither a .dsc nor any .deb".into()));
        }
        // A source builds only the binary packages its .dsc declares, and none that another
        // source of the distribution owns.
        if !new_bins.is_empty() {
            let declared = match &entry.dsc {
                Some(bytes) => {
                    let text = String::from_utf8_lossy(bytes);
                    let st = crate::deb::Stanza::parse_one(&text)
                        .map_err(|source| ArchiveError::Control { file: format!("{} .dsc", changes.source), source })?;
                    crate::deb::changes::binary_list(st.get("Binary").unwrap_or_default())
                        .map_err(|source| ArchiveError::Control { file: format!("{} .dsc", changes.source), source })?
                }
                None => vec![],
            };
            let declared_debug = |p: &PackageName| {
                auto_debug.contains(p)
                    && p.as_str()
                        .strip_suffix("-dbgsym")
                        .is_some_and(|stem| declared.iter().any(|d| d.as_str() == stem))
            };
            for (k, _) in &new_bins {
                if !declared.contains(&k.package) && !declared_debug(&k.package) {
                    return Err(ArchiveError::Inconsistent(format!(
                        "binary package {} is not in the Binary field of {}'s .dsc; a source builds only the packages it declares",
                        k.package, changes.source
                    )));
                }
            }
            // In every suite of the repository (rollbacks are history, not owners).
            let stanzas = read.open_table(DIST_BINARIES)?;
            for (k, _) in &new_bins {
                for in_dist in ctx.all_dists().into_iter().filter(|d| !d.is_rollback()) {
                    if let Some(owner) = binary_owner(&stanzas, ctx, &in_dist, &k.package)?
                        && owner != changes.source.as_str()
                    {
                        return Err(ArchiveError::Inconsistent(format!(
                            "binary package {} belongs to source {owner} in {in_dist}; one source cannot take over another's package (remove {owner} first)",
                            k.package
                        )));
                    }
                }
            }
        }

        // Merge: binaries replace those of the same package and architecture.
        if binary_only {
            let mut bins: Vec<(BinaryKey, Vec<u8>)> =
                entry.record.binaries.iter().cloned().zip(entry.binaries.iter().cloned()).collect();
            for (k, s) in new_bins {
                bins.retain(|(b, _)| !(b.package == k.package && b.arch == k.arch && b.kind == k.kind));
                bins.push((k, s));
            }
            entry.record.binaries = bins.iter().map(|(k, _)| k.clone()).collect();
            entry.binaries = bins.into_iter().map(|(_, s)| s).collect();
        } else {
            entry.record.binaries = new_bins.iter().map(|(k, _)| k.clone()).collect();
            entry.binaries = new_bins.into_iter().map(|(_, s)| s).collect();
        }
        for (path, _, s) in &copies {
            entry.record.files.retain(|f| &f.path != path);
            entry.record.files.push(PoolFile { path: path.clone(), size: s.size, sha256: s.sha256.clone() });
        }

        // Version rules.
        if !binary_only && !force {
            ctx.layout.check_version(suite, &ctx.repo.identity, codeversion, &changes.version)?;
            let records = read.open_table(DIST_SOURCES)?;
            for d in ctx.all_dists() {
                if let Some(r) = get_record(&records, &d, &changes.source)?
                    && r.version == changes.version
                {
                    return Err(ArchiveError::AlreadyInstalled {
                        package: changes.source.clone(),
                        version: changes.version.clone(),
                        dist: d,
                        repo: ctx.repo.identity.clone(),
                    });
                }
            }
            if let Some(cur) = &current
                && changes.version < cur.record.version
            {
                return Err(ArchiveError::VersionTooLow {
                    package: changes.source.clone(),
                    version: changes.version.clone(),
                    current: cur.record.version.clone(),
                    dist: dist.clone(),
                });
            }
        }

        // The pool never changes a file's content under its name.
        for (path, _, s) in &copies {
            let existing = self.repo_root(&dist.repo).join(path);
            if existing.exists() {
                let have = Checksums::of_file(&existing).map_err(io_err(&existing))?;
                if have.sha256 != s.sha256 {
                    return Err(ArchiveError::PoolConflict { path: path.clone() });
                }
            }
        }
        Ok(Staged { dist: dist.clone(), entry, copies, binary_only })
    }

    /// Run every check of an include without writing anything: the upload's files, the
    /// distribution, the version rules. Returns where each source file (the `.dsc` and what it
    /// lists) is found: in the upload, or in the pool.
    pub fn precheck(&self, dist: &Dist, changes_path: &Path) -> Result<Vec<PathBuf>> {
        let ctx = self.ctx(&dist.repo)?;
        let staged = self.stage(&ctx, dist, changes_path, false)?;
        Ok(staged
            .copies
            .into_iter()
            .filter(|(p, _, _)| PackageType::of_file(p).is_none())
            .map(|(_, from, _)| from)
            .collect())
    }

    /// Whether a distribution holds this version of a source package.
    pub fn holds(&self, dist: &Dist, source: &PackageName, version: &Version) -> Result<bool> {
        let read = self.store.read()?;
        Ok(get_entry(&read, dist, source)?.is_some_and(|e| &e.record.version == version))
    }

    /// Include a `.changes` (source and/or binaries) into a distribution.
    pub fn include(&self, dist: &Dist, changes_path: &Path, force: bool) -> Result<IncludeReport> {
        self.include_many(dist, &[changes_path.to_owned()], force).remove(0)
    }

    /// Include several uploads one after another, publishing once at the end (bulk import).
    /// Each upload succeeds or fails on its own; a failed one changes nothing.
    pub fn include_many(&self, dist: &Dist, changes: &[PathBuf], force: bool) -> Vec<Result<IncludeReport>> {
        let ctx = match self.ctx(&dist.repo) {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                return changes.iter().map(|_| Err(ArchiveError::Inconsistent(msg.clone()))).collect();
            }
        };
        let contents: Vec<Result<UploadContents>> = changes.iter().map(|c| upload_contents(c)).collect();
        let _w = self.lock();
        let mut gc = Vec::new();
        let results: Vec<_> = changes
            .iter()
            .zip(contents)
            .map(|(c, paths)| self.include_one(&ctx, dist, c, force, paths?, &mut gc))
            .collect();
        if let Err(e) = self.finish(&ctx, gc) {
            let msg = e.to_string();
            return results.into_iter().map(|r| r.and_then(|_| Err(ArchiveError::NotPublished(msg.clone())))).collect();
        }
        results
    }

    fn include_one(
        &self,
        ctx: &RepoCtx,
        dist: &Dist,
        changes_path: &Path,
        force: bool,
        mut paths: UploadContents,
        gc: &mut Vec<String>,
    ) -> Result<IncludeReport> {
        let staged = self.stage(ctx, dist, changes_path, force)?;
        // Pool path of each new `.deb` and `.ddeb` → what it installs.
        let mut contents = Vec::new();
        for (path, _, _) in &staged.copies {
            if PackageType::in_contents(path) {
                let file = path.rsplit('/').next().unwrap_or(path);
                let listed = paths.remove(file).ok_or_else(|| {
                    ArchiveError::Inconsistent(format!("{file} changed while it was being included; upload it again"))
                })?;
                contents.push((path.clone(), listed));
            }
        }
        let root = self.repo_root(&dist.repo);
        for (path, from, _) in &staged.copies {
            let dst = root.join(path);
            if dst.exists() {
                continue;
            }
            let parent = dst.parent().expect("pool paths have a parent");
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            let tmp = parent.join(format!(".{}.tmp", dst.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
            std::fs::copy(from, &tmp).map_err(io_err(&tmp))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        }
        let tx = self.store.write()?;
        if !staged.binary_only {
            shift_rollbacks(&tx, ctx, &staged.dist, &staged.entry.record.source, gc)?;
        }
        put_entry(&tx, ctx, &staged.dist, &staged.entry, gc)?;
        {
            let mut t = tx.open_table(DEB_CONTENTS)?;
            for (path, paths) in &contents {
                t.insert(format!("{}/{path}", dist.repo).as_str(), paths.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(IncludeReport {
            distribution: staged.dist,
            source: staged.entry.record.source.clone(),
            version: staged.entry.record.version.clone(),
            files: staged.copies.iter().map(|(p, _, _)| p.clone()).collect(),
        })
    }

    /// Publish what changed and drop pool files nothing references any more.
    fn finish(&self, ctx: &RepoCtx, gc: Vec<String>) -> Result<()> {
        self.publish_dirty_locked(ctx)?;
        let root = self.repo_root(&ctx.repo.identity);
        // Only what is still unreferenced now: a later upload of a batch may have taken a file back.
        let gc: Vec<String> = {
            let read = self.store.read()?;
            let refs = read.open_table(POOL_REFS)?;
            let mut keep = Vec::new();
            for p in gc {
                if refs.get(format!("{}/{p}", ctx.repo.identity).as_str())?.is_none() && !keep.contains(&p) {
                    keep.push(p);
                }
            }
            keep
        };
        for path in gc {
            match std::fs::remove_file(root.join(&path)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ArchiveError::Io { path: root.join(path), source: e }),
            }
        }
        Ok(())
    }

    /// Migrate a source package from a distribution to the next suite (or along the whole chain);
    /// from a rollback distribution, restore it into its base distribution.
    /// `forced`: the migration gate's reasons an admin overrode; `unchecked`: what the gate
    /// could not check. Both are recorded in the first MIGRATED event.
    pub fn migrate(
        &self,
        source: &PackageName,
        dist: &Dist,
        full: bool,
        version: Option<&Version>,
        (forced, unchecked): (&[String], &[String]),
    ) -> Result<Vec<Event>> {
        let ctx = self.ctx(&dist.repo)?;
        let _w = self.lock();
        ctx.check_dist(dist)?;
        let tx = self.store.write()?;
        let mut gc = Vec::new();
        let mut events = Vec::new();
        let mut from = dist.clone();
        loop {
            let entry = the_entry(get_entry_w(&tx, &from, source)?, source, &from, version)?;
            let to = if from.is_rollback() {
                let base = from.base();
                if get_entry_w(&tx, &base, source)?.is_some() {
                    return Err(ArchiveError::RestoreOccupied(source.clone(), base));
                }
                base
            } else {
                let next = ctx.layout.suite(&from.suite).and_then(|s| s.migrates_to.clone());
                let next = next.ok_or_else(|| ArchiveError::NoMigration(from.clone()))?;
                Dist::new(from.codename.clone(), from.repo.clone(), next)
            };
            shift_rollbacks(&tx, &ctx, &to, source, &mut gc)?;
            put_entry(&tx, &ctx, &to, &entry, &mut gc)?;
            let mut ev = Event::new(EventType::Migrated, &from, source, &entry.record.version)
                .with("migrated_to", to.to_string());
            if events.is_empty() && !forced.is_empty() {
                ev = ev.with("forced", forced.to_vec());
            }
            if events.is_empty() && !unchecked.is_empty() {
                ev = ev.with("unchecked", unchecked.to_vec());
            }
            ev.record(&tx)?;
            events.push(ev);
            let more =
                full && !to.is_rollback() && ctx.layout.suite(&to.suite).is_some_and(|s| s.migrates_to.is_some());
            if !more || from.is_rollback() {
                break;
            }
            from = to;
        }
        tx.commit()?;
        self.finish(&ctx, gc)?;
        Ok(events)
    }

    /// What the migration gate looks at before `source` migrates from `dist` (`None`: `dist`
    /// is a rollback, whose restore is no migration): the target distribution, the version,
    /// the binaries that would migrate and the target's other binaries (index stanzas, with
    /// their architecture; the target's only `with_others`), and the distribution's mandatory
    /// architectures.
    pub fn migration_view(
        &self,
        source: &PackageName,
        dist: &Dist,
        version: Option<&Version>,
        with_others: bool,
    ) -> Result<Option<MigrationView>> {
        if dist.is_rollback() {
            return Ok(None);
        }
        let ctx = self.ctx(&dist.repo)?;
        ctx.check_dist(dist)?;
        let read = self.store.read()?;
        let entry = the_entry(get_entry(&read, dist, source)?, source, dist, version)?;
        let next = ctx.layout.suite(&dist.suite).and_then(|s| s.migrates_to.clone());
        let to = Dist::new(
            dist.codename.clone(),
            dist.repo.clone(),
            next.ok_or_else(|| ArchiveError::NoMigration(dist.clone()))?,
        );
        // The installer's packages are not for apt's solver.
        let candidates: Vec<(Arch, Vec<u8>)> = entry
            .record
            .binaries
            .iter()
            .zip(entry.binaries.iter())
            .filter(|(b, _)| b.kind != PackageType::Udeb)
            .map(|(b, s)| (b.arch.clone(), s.clone()))
            .collect();
        let names: Vec<&PackageName> = entry.record.binaries.iter().map(|b| &b.package).collect();
        let mut others = Vec::new();
        let table = read.open_table(DIST_BINARIES)?;
        let scan = |k: &str, v: &[u8], others: &mut Vec<(Arch, Vec<u8>)>| {
            // <dist>/<component>/<arch>/<package>; an installer package's `udeb:<arch>` is no
            // architecture, so it is left out.
            let mut parts = k.rsplitn(3, '/');
            let (Some(package), Some(arch)) = (parts.next(), parts.next()) else { return };
            if names.iter().any(|n| n.as_str() == package) {
                return;
            }
            if let Ok(arch) = arch.parse::<Arch>() {
                others.push((arch, v.to_vec()));
            }
        };
        if with_others {
            store::scan_prefix(&table, &format!("{to}/"), |k, v| {
                scan(k, v, &mut others);
                Ok(())
            })?;
        }
        let mandatory = ctx
            .dists
            .get(dist.codename.as_str())
            .map(|(d, _)| d.architectures.iter().filter(|a| !a.optional).map(|a| a.arch.clone()).collect())
            .unwrap_or_default();
        Ok(Some(MigrationView {
            source: source.clone(),
            to,
            version: entry.record.version,
            candidates,
            others,
            mandatory,
        }))
    }

    /// Remove a source package from a distribution, keeping it in the rollbacks unless asked not to.
    pub fn remove(
        &self,
        source: &PackageName,
        dist: &Dist,
        without_rollback: bool,
        version: Option<&Version>,
    ) -> Result<Event> {
        let ctx = self.ctx(&dist.repo)?;
        let _w = self.lock();
        ctx.check_dist(dist)?;
        let tx = self.store.write()?;
        let mut gc = Vec::new();
        let entry = the_entry(get_entry_w(&tx, dist, source)?, source, dist, version)?;
        match dist.rollback {
            None => {
                if !without_rollback {
                    shift_rollbacks(&tx, &ctx, dist, source, &mut gc)?;
                }
                delete_entry(&tx, &ctx, dist, source, &mut gc)?;
            }
            Some(k) => {
                let base = dist.base();
                for (slot, from) in layout::compact_plan(k, ctx.rollbacks(&base)) {
                    let to = slot_dist(&base, slot);
                    match from.map(|s| slot_dist(&base, s)) {
                        Some(f) => match get_entry_w(&tx, &f, source)? {
                            Some(e) => put_entry(&tx, &ctx, &to, &e, &mut gc)?,
                            None => delete_entry(&tx, &ctx, &to, source, &mut gc)?,
                        },
                        None => delete_entry(&tx, &ctx, &to, source, &mut gc)?,
                    }
                }
            }
        }
        let ev = Event::new(EventType::Removed, dist, source, &entry.record.version)
            .with("without_rollback", without_rollback);
        ev.record(&tx)?;
        tx.commit()?;
        self.finish(&ctx, gc)?;
        Ok(ev)
    }

    /// Every distribution's version of a source package in a repository.
    pub fn ls(&self, repo: &RepoId, source: &PackageName) -> Result<Vec<LsEntry>> {
        let ctx = self.ctx(repo)?;
        let read = self.store.read()?;
        let records = read.open_table(DIST_SOURCES)?;
        let mut out = Vec::new();
        for d in ctx.all_dists() {
            if let Some(r) = get_record(&records, &d, source)? {
                out.push(LsEntry {
                    distribution: d,
                    source: r.source,
                    version: r.version,
                    component: r.component,
                    binaries: r.binaries,
                });
            }
        }
        Ok(out)
    }

    /// The pool's `.dsc` of a source package version in a component.
    pub fn dsc_path(&self, repo: &RepoId, source: &PackageName, version: &Version, component: &Component) -> PathBuf {
        self.repo_root(repo).join(format!(
            "pool/{component}/{}/{source}/{source}_{}.dsc",
            source.pool_prefix(),
            version.without_epoch()
        ))
    }

    /// `debdiff` of two versions of a source package in a repository's pool. Without versions:
    /// `b` is the newest, `a` the newest one below `b`. Returns (a, b, the diff).
    pub fn debdiff(
        &self,
        repo: &RepoId,
        source: &PackageName,
        a: Option<&Version>,
        b: Option<&Version>,
    ) -> Result<(Version, Version, String)> {
        let mut held: Vec<(Version, Component)> =
            self.ls(repo, source)?.into_iter().map(|e| (e.version, e.component)).collect();
        held.sort_by(|x, y| y.0.cmp(&x.0));
        held.dedup_by(|x, y| x.0 == y.0);
        let find = |v: &Version| {
            held.iter().find(|(h, _)| h == v).cloned().ok_or_else(|| ArchiveError::NoSuchVersion {
                package: source.clone(),
                version: v.clone(),
                repo: repo.clone(),
            })
        };
        let nothing = || ArchiveError::NothingToCompare(source.clone(), repo.clone());
        let b = match b {
            Some(v) => find(v)?,
            None => held.first().cloned().ok_or_else(nothing)?,
        };
        let a = match a {
            Some(v) => find(v)?,
            None => held.iter().find(|(h, _)| *h < b.0).cloned().ok_or_else(nothing)?,
        };
        let dsc = |(v, c): &(Version, Component)| self.dsc_path(repo, source, v, c);
        // Bounded: one at a time, inputs of at most DEBDIFF_INPUT bytes copied into a scratch
        // directory, run as nobody (dpkg-source -x unpacks what an uploader wrote), at most
        // DEBDIFF_SECS (coreutils' timeout), and DEBDIFF_MAX bytes of answer.
        let _one = DEBDIFF_TURN
            .try_lock()
            .map_err(|_| ArchiveError::Debdiff("another debdiff is running; try again in a minute".into()))?;
        let scratch = scratch::Scratch::new("debdiff", DEBDIFF_INPUT)?;
        let a_dsc = scratch.copy_source(&dsc(&a), "a")?;
        let b_dsc = scratch.copy_source(&dsc(&b), "b")?;
        let mut cmd = std::process::Command::new("timeout");
        cmd.arg(DEBDIFF_SECS.to_string())
            .arg("debdiff")
            .arg(&a_dsc)
            .arg(&b_dsc)
            .current_dir(scratch.tmp())
            .env("TMPDIR", scratch.tmp())
            .env("HOME", scratch.tmp())
            .stdin(std::process::Stdio::null());
        scratch.as_owner(&mut cmd);
        let out = cmd.output().map_err(|e| ArchiveError::Debdiff(e.to_string()))?;
        drop(scratch);
        // debdiff exits 0 for no differences and 1 for differences.
        match out.status.code() {
            Some(0 | 1) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.len() > DEBDIFF_MAX {
                    let mut cut = DEBDIFF_MAX;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push_str(&format!("\n[buildbay: the debdiff is longer than {DEBDIFF_MAX} bytes; cut here]\n"));
                }
                Ok((a.0, b.0, text))
            }
            Some(124) => Err(ArchiveError::Debdiff(format!("it took longer than {DEBDIFF_SECS} s"))),
            Some(127) => Err(ArchiveError::Debdiff(
                "the debdiff program is not installed; install Debian's devscripts package, which provides it".into(),
            )),
            _ => Err(ArchiveError::Debdiff(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))),
        }
    }

    /// All source packages of a distribution.
    pub fn list_dist(&self, dist: &Dist) -> Result<Vec<SourceRecord>> {
        let read = self.store.read()?;
        let t = read.open_table(DIST_SOURCES)?;
        let mut out = Vec::new();
        store::scan_prefix(&t, &format!("{dist}/"), |k, v| {
            out.push(store::decode(k, v)?);
            Ok(())
        })?;
        Ok(out)
    }

    pub fn snapshot_ls(&self, dist: &Dist) -> Result<Vec<SnapshotName>> {
        let read = self.store.read()?;
        let t = read.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        store::scan_prefix(&t, &format!("{dist}/"), |k, _| {
            if let Some(n) = k.rsplit('/').next().and_then(|n| n.parse().ok()) {
                out.push(n);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Freeze a distribution's current state as `dists/<dist>/snapshots/<name>/`.
    pub fn snapshot_create(&self, dist: &Dist, name: &SnapshotName) -> Result<()> {
        let ctx = self.ctx(&dist.repo)?;
        let _w = self.lock();
        ctx.check_dist(dist)?;
        self.publish_dirty_locked(&ctx)?;
        let skey = format!("{dist}/{name}");
        let tx = self.store.write()?;
        {
            let mut snaps = tx.open_table(SNAPSHOTS)?;
            if snaps.get(skey.as_str())?.is_some() {
                return Err(ArchiveError::SnapshotExists(name.clone(), dist.clone()));
            }
            let mut records: Vec<SourceRecord> = Vec::new();
            store::scan_prefix(&tx.open_table(DIST_SOURCES)?, &format!("{dist}/"), |k, v| {
                records.push(store::decode(k, v)?);
                Ok(())
            })?;
            let mut refs = tx.open_table(POOL_REFS)?;
            for f in records.iter().flat_map(|r| &r.files) {
                let k = format!("{}/{}", dist.repo, f.path);
                let n = refs.get(k.as_str())?.map_or(0, |v| v.value());
                refs.insert(k.as_str(), n + 1)?;
            }
            snaps.insert(skey.as_str(), store::encode(&records).as_slice())?;
        }
        // Build the snapshot tree beside its final place, then rename it in.
        let dists = self.dists_dir(&dist.repo);
        let (_, cur) = publish::current_generation(&dists, &dist.to_string())
            .ok_or_else(|| ArchiveError::Inconsistent(format!("{dist} is not published")))?;
        let snapdir = dists.join(".snapshots").join(dist.to_string());
        std::fs::create_dir_all(&snapdir).map_err(io_err(&snapdir))?;
        let tmp = snapdir.join(format!(".{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        let release = std::fs::read_to_string(cur.join("Release")).map_err(io_err(cur.join("Release")))?;
        let files = index::release_files(&release);
        for f in &files {
            if !publish::on_disk(&f.path) {
                continue;
            }
            let dst = tmp.join(&f.path);
            let parent = dst.parent().expect("index files live in directories");
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            std::fs::hard_link(cur.join(&f.path), &dst).map_err(io_err(&dst))?;
        }
        publish::link_contents(&tmp, &files)?;
        // As reprepro's gensnapshot writes it for mini-buildd: the Suite names the snapshot,
        // the Codename and the pins stay the distribution's (apt refuses a Codename or a
        // default priority that changes under a source line it already knows).
        let mut meta = ctx.release_meta(dist, &self.origin);
        meta.suite = format!("{dist}/snapshots/{name}");
        let text = index::release(&meta, chrono::Utc::now(), &files);
        publish::write_synced(&tmp.join("Release"), text.as_bytes())?;
        publish::write_synced(
            &tmp.join("InRelease"),
            &self.key.clearsign(text.as_bytes()).map_err(PublishError::from)?,
        )?;
        publish::write_synced(
            &tmp.join("Release.gpg"),
            &self.key.detached_sign(text.as_bytes()).map_err(PublishError::from)?,
        )?;
        let fin = snapdir.join(name.as_str());
        if fin.exists() {
            std::fs::remove_dir_all(&fin).map_err(io_err(&fin))?;
        }
        std::fs::rename(&tmp, &fin).map_err(io_err(&fin))?;
        tx.commit()?;
        Ok(())
    }

    pub fn snapshot_delete(&self, dist: &Dist, name: &SnapshotName) -> Result<()> {
        self.snapshot_drop(dist, name, None)
    }

    /// Where a snapshot's tree is: `dists/.snapshots/<dist>/<name>/`.
    fn snapshot_dir(&self, dist: &Dist, name: &SnapshotName) -> PathBuf {
        self.dists_dir(&dist.repo).join(".snapshots").join(dist.to_string()).join(name.as_str())
    }

    /// When a snapshot was made: its `Release`'s `Date` (`None` if it cannot be read).
    pub fn snapshot_made(&self, dist: &Dist, name: &SnapshotName) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = std::fs::read_to_string(self.snapshot_dir(dist, name).join("Release")).ok()?;
        let date = text.lines().find_map(|l| l.strip_prefix("Date:"))?.trim().replace("UTC", "+0000");
        chrono::DateTime::parse_from_rfc2822(&date).ok().map(|d| d.with_timezone(&chrono::Utc))
    }

    /// Retention (each suite's `keep_versions` and `keep_days` for its rollbacks,
    /// `keep_snapshots` and `keep_snapshot_days` for its snapshots): drop what is beyond them,
    /// each reported by a REMOVED event recorded with its change.
    pub fn retention(&self, repo: &RepoId, now: chrono::DateTime<chrono::Utc>) -> Result<Vec<Event>> {
        let ctx = self.ctx(repo)?;
        let mut events = Vec::new();
        for dist in ctx.all_dists().into_iter().filter(|d| !d.is_rollback()) {
            let Some(suite) = ctx.layout.suite(&dist.suite) else { continue };
            let (rollbacks, snapshots) = (suite.rollback_retention(), suite.snapshot_retention());
            if rollbacks.is_set() {
                events.extend(self.retain_rollbacks(&ctx, &dist, &rollbacks, now)?);
            }
            if !snapshots.is_set() {
                continue;
            }
            let mut snaps: Vec<(Option<chrono::DateTime<chrono::Utc>>, SnapshotName)> =
                self.snapshot_ls(&dist)?.into_iter().map(|n| (self.snapshot_made(&dist, &n), n)).collect();
            // Newest first; those whose time is unknown count as the newest.
            snaps.sort_by(|a, b| b.0.unwrap_or(now).cmp(&a.0.unwrap_or(now)).then_with(|| b.1.cmp(&a.1)));
            let times: Vec<_> = snaps.iter().map(|(t, _)| *t).collect();
            for (i, why) in snapshots.drops(&times, now) {
                events.push(self.snapshot_expire(&dist, &snaps[i].1, &why.to_string())?);
            }
        }
        Ok(events)
    }

    /// Retention of one distribution's rollbacks. A rollback version from before buildbay
    /// recorded when it was superseded counts from the first retention run that sees it.
    fn retain_rollbacks(
        &self,
        ctx: &RepoCtx,
        dist: &Dist,
        rule: &layout::Retention,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Event>> {
        let n = ctx.rollbacks(dist);
        let _w = self.lock();
        let tx = self.store.write()?;
        let mut sources = std::collections::BTreeSet::new();
        for k in 0..n {
            store::scan_prefix(&tx.open_table(DIST_SOURCES)?, &format!("{}/", dist.rollback(k)), |k, v| {
                sources.insert(store::decode::<SourceRecord>(k, v)?.source);
                Ok(())
            })?;
        }
        let (mut gc, mut events) = (Vec::new(), Vec::new());
        for source in &sources {
            let mut chain = Vec::new();
            for k in 0..n {
                let rd = dist.rollback(k);
                if let Some(mut e) = get_entry_w(&tx, &rd, source)? {
                    if e.record.superseded.is_none() {
                        e.record.superseded = Some(now);
                        tx.open_table(DIST_SOURCES)?
                            .insert(format!("{rd}/{source}").as_str(), store::encode(&e.record).as_slice())?;
                    }
                    chain.push((rd, e.record));
                }
            }
            let times: Vec<_> = chain.iter().map(|(_, r)| r.superseded).collect();
            for (i, why) in rule.drops(&times, now) {
                let (rd, record) = &chain[i];
                delete_entry(&tx, ctx, rd, source, &mut gc)?;
                let ev = Event::new(EventType::Removed, rd, source, &record.version).with("retention", why.to_string());
                ev.record(&tx)?;
                events.push(ev);
            }
        }
        tx.commit()?;
        self.finish(ctx, gc)?;
        Ok(events)
    }

    /// Delete a snapshot for a retention rule (`why`): its REMOVED event, recorded with the change.
    pub fn snapshot_expire(&self, dist: &Dist, name: &SnapshotName, why: &str) -> Result<Event> {
        let ev = Event::new(EventType::Removed, format!("{dist}/snapshots/{name}"), "", "")
            .with("snapshot", name.as_str())
            .with("retention", why);
        self.snapshot_drop(dist, name, Some(&ev))?;
        Ok(ev)
    }

    /// Delete a snapshot; `event` (retention's) is recorded with the change.
    fn snapshot_drop(&self, dist: &Dist, name: &SnapshotName, event: Option<&Event>) -> Result<()> {
        let ctx = self.ctx(&dist.repo)?;
        let _w = self.lock();
        let skey = format!("{dist}/{name}");
        let tx = self.store.write()?;
        if let Some(ev) = event {
            ev.record(&tx)?;
        }
        let mut gc = Vec::new();
        {
            let mut snaps = tx.open_table(SNAPSHOTS)?;
            let records: Vec<SourceRecord> = match snaps.remove(skey.as_str())? {
                Some(v) => store::decode(&skey, v.value())?,
                None => return Err(ArchiveError::NoSnapshot(name.clone(), dist.clone())),
            };
            for r in &records {
                unref_files(&tx, &dist.repo, &r.files, &mut gc)?;
            }
        }
        tx.commit()?;
        let dir = self.snapshot_dir(dist, name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        self.finish(&ctx, gc)
    }

    /// Publish every dirty distribution of every repository (after a crash, or on start).
    pub fn publish_dirty(&self, repo: &RepoId) -> Result<usize> {
        let ctx = self.ctx(repo)?;
        let _w = self.lock();
        self.publish_dirty_locked(&ctx)
    }

    fn publish_dirty_locked(&self, ctx: &RepoCtx) -> Result<usize> {
        let repo = &ctx.repo.identity;
        let dirty: Vec<String> = {
            let read = self.store.read()?;
            let t = read.open_table(DIRTY)?;
            let mut v = Vec::new();
            for d in ctx.all_dists() {
                store::scan_prefix(&t, &format!("{d}/"), |k, _| {
                    v.push(k.to_owned());
                    Ok(())
                })?;
            }
            v
        };
        let mut by_dist: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        for k in &dirty {
            let mut it = k.splitn(3, '/');
            if let (Some(d), Some(c), Some(a)) = (it.next(), it.next(), it.next()) {
                by_dist.entry(d.to_owned()).or_default().insert((c.to_owned(), a.to_owned()));
            }
        }
        let dists = self.dists_dir(repo);
        let root = self.repo_root(repo);
        let mut learnt = Vec::new();
        std::fs::create_dir_all(&dists).map_err(io_err(&dists))?;
        for (dist_name, touched) in &by_dist {
            let dist: Dist = dist_name
                .parse()
                .map_err(|e: crate::deb::names::NameError| ArchiveError::Inconsistent(e.to_string()))?;
            let parts = ctx.parts(&dist);
            let current = publish::current_generation(&dists, dist_name);
            let all = touched.contains(&("*".into(), "*".into())) || current.is_none();
            // A part the current tree lacks (an index kind newer than the tree) is made in full.
            let missing = |p: &Part| current.as_ref().is_some_and(|(_, dir)| !dir.join(p.gz()).exists());
            let regen: Vec<&Part> = parts
                .iter()
                .filter(|p| all || missing(p) || touched.contains(&(p.component.clone(), p.arch.clone())))
                .collect();
            let t = std::time::Instant::now();
            let read = self.store.read()?;
            let mut fresh = Vec::new();
            for p in regen {
                fresh.push((p.clone(), index_text(&read, &dist, p, &root, &mut learnt)?));
            }
            drop(read);
            let t_index = t.elapsed();
            publish::publish(&dists, dist_name, &ctx.release_meta(&dist, &self.origin), &parts, fresh, self.key)?;
            crate::metrics::published(t.elapsed());
            tracing::debug!(
                dist = dist_name,
                index_ms = t_index.as_millis() as u64,
                total_ms = t.elapsed().as_millis() as u64,
                "published"
            );
        }
        if !dirty.is_empty() {
            let tx = self.store.write()?;
            {
                let mut t = tx.open_table(DIRTY)?;
                for k in &dirty {
                    t.remove(k.as_str())?;
                }
                let mut t = tx.open_table(DEB_CONTENTS)?;
                for (k, paths) in &learnt {
                    t.insert(k.as_str(), paths.as_slice())?;
                }
            }
            tx.commit()?;
        }
        Ok(by_dist.len())
    }
}

type StanzaVisitor<'a> = dyn FnMut(&str, &[u8]) -> std::result::Result<(), StoreError> + 'a;

/// The plain text of one index. `root` is the repository's, for a package stored before its
/// paths were; what such a package installs is read from the pool and added to `learnt`.
fn index_text(
    read: &redb::ReadTransaction,
    dist: &Dist,
    part: &Part,
    root: &Path,
    learnt: &mut Vec<(String, Vec<u8>)>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut add = |_: &str, v: &[u8]| -> std::result::Result<(), StoreError> {
        out.extend_from_slice(v);
        out.push(b'\n');
        Ok(())
    };
    let c = &part.component;
    let binaries = |kind: PackageType, f: &mut StanzaVisitor<'_>| {
        let t = read.open_table(DIST_BINARIES)?;
        for arch in [part.arch.as_str(), "all"] {
            store::scan_prefix(&t, &format!("{dist}/{c}/{}/", arch_segment(kind, arch)), &mut *f)?;
        }
        Ok::<_, ArchiveError>(())
    };
    match part.kind {
        IndexKind::Sources => store::scan_prefix(&read.open_table(DIST_DSCS)?, &format!("{dist}/{c}/"), &mut add)?,
        IndexKind::Packages => binaries(PackageType::Deb, &mut add)?,
        IndexKind::Installer => binaries(PackageType::Udeb, &mut add)?,
        IndexKind::Contents => {
            let stored = read.open_table(DEB_CONTENTS)?;
            let mut entries = Vec::new();
            let mut owners = |_: &str, v: &[u8]| -> std::result::Result<(), StoreError> {
                let (Some(package), Some(filename)) =
                    (index::stanza_field(v, "Package"), index::stanza_field(v, "Filename"))
                else {
                    return Ok(());
                };
                let owner: std::rc::Rc<str> = index::contents_owner(index::stanza_field(v, "Section"), package).into();
                let key = format!("{}/{filename}", dist.repo);
                let paths = match stored.get(key.as_str())? {
                    Some(v) => v.value().to_vec(),
                    None => match crate::deb::debfile::read_contents(&root.join(filename)) {
                        Ok(paths) => {
                            let paths = paths.join("\n").into_bytes();
                            learnt.push((key, paths.clone()));
                            paths
                        }
                        Err(e) => {
                            // Remembered as listing nothing: not read (and warned about) again.
                            tracing::warn!(%dist, file = filename, error = %e, "Contents leaves this package out: its paths cannot be read");
                            learnt.push((key, vec![]));
                            return Ok(());
                        }
                    },
                };
                let text = String::from_utf8_lossy(&paths);
                entries.extend(text.lines().filter(|l| !l.is_empty()).map(|p| (p.to_owned(), owner.clone())));
                Ok(())
            };
            binaries(PackageType::Deb, &mut owners)?;
            return Ok(index::contents(entries));
        }
    }
    Ok(out)
}

fn slot_dist(base: &Dist, slot: Slot) -> Dist {
    match slot {
        Slot::Base => base.clone(),
        Slot::Rollback(n) => base.rollback(n),
    }
}

/// Only the record of a source in a distribution (not its index stanzas).
fn get_record(
    records: &impl ReadableTable<&'static str, &'static [u8]>,
    dist: &Dist,
    source: &PackageName,
) -> Result<Option<SourceRecord>> {
    Ok(store::get_json(records, &format!("{dist}/{source}"))?)
}

/// Which source builds a binary package name in a distribution: point lookups under each of
/// its components and architectures (a `.deb`'s or a `.udeb`'s), not a scan of the distribution.
fn binary_owner(
    stanzas: &impl ReadableTable<&'static str, &'static [u8]>,
    ctx: &RepoCtx,
    dist: &Dist,
    package: &PackageName,
) -> Result<Option<String>> {
    let Some((d, _)) = ctx.dists.get(dist.codename.as_str()) else { return Ok(None) };
    let arches: Vec<String> = d.arches().map(|a| a.to_string()).chain(["all".to_owned()]).collect();
    for c in &d.components {
        for arch in &arches {
            for kind in [PackageType::Deb, PackageType::Udeb] {
                let key = format!("{dist}/{c}/{}/{package}", arch_segment(kind, arch));
                if let Some(v) = stanzas.get(key.as_str())? {
                    let stanza = v.value();
                    let source = index::stanza_field(stanza, "Source").and_then(|s| s.split_whitespace().next());
                    return Ok(Some(source.unwrap_or(package.as_str()).to_owned()));
                }
            }
        }
    }
    Ok(None)
}

/// A source's entry in `dist`, which must exist, and be of `version` when one is asked for.
fn the_entry(entry: Option<Entry>, source: &PackageName, dist: &Dist, version: Option<&Version>) -> Result<Entry> {
    let entry = entry.ok_or_else(|| ArchiveError::NotFound(source.clone(), dist.clone()))?;
    if let Some(v) = version
        && &entry.record.version != v
    {
        return Err(ArchiveError::WrongVersion {
            package: source.clone(),
            dist: dist.clone(),
            actual: entry.record.version.clone(),
            asked: v.clone(),
        });
    }
    Ok(entry)
}

fn get_entry(read: &redb::ReadTransaction, dist: &Dist, source: &PackageName) -> Result<Option<Entry>> {
    load_entry(
        &read.open_table(DIST_SOURCES)?,
        &read.open_table(DIST_DSCS)?,
        &read.open_table(DIST_BINARIES)?,
        dist,
        source,
    )
}

fn get_entry_w(tx: &WriteTransaction, dist: &Dist, source: &PackageName) -> Result<Option<Entry>> {
    load_entry(&tx.open_table(DIST_SOURCES)?, &tx.open_table(DIST_DSCS)?, &tx.open_table(DIST_BINARIES)?, dist, source)
}

/// `dist/component/arch/package`; a `.udeb`'s arch segment is `udeb:<arch>` (no architecture
/// has a colon), so that `Packages` and the installer's index are apart.
fn binary_key(dist: &Dist, component: &Component, b: &BinaryKey) -> String {
    format!("{dist}/{component}/{}/{}", arch_segment(b.kind, b.arch.as_str()), b.package)
}

fn arch_segment(kind: PackageType, arch: &str) -> String {
    match kind {
        PackageType::Udeb => format!("udeb:{arch}"),
        PackageType::Deb | PackageType::Ddeb => arch.to_owned(),
    }
}

fn load_entry(
    sources: &impl ReadableTable<&'static str, &'static [u8]>,
    dscs: &impl ReadableTable<&'static str, &'static [u8]>,
    bins: &impl ReadableTable<&'static str, &'static [u8]>,
    dist: &Dist,
    source: &PackageName,
) -> Result<Option<Entry>> {
    let Some(record) = get_record(sources, dist, source)? else {
        return Ok(None);
    };
    let dsc = dscs
        .get(key3(&dist.to_string(), record.component.as_str(), source.as_str()).as_str())?
        .map(|v| v.value().to_vec());
    let mut binaries = Vec::new();
    for b in &record.binaries {
        let k = binary_key(dist, &record.component, b);
        let v = bins
            .get(k.as_str())?
            .ok_or_else(|| StoreError::Corrupt { key: k.clone(), reason: "missing stanza".into() })?;
        binaries.push(v.value().to_vec());
    }
    Ok(Some(Entry { record, dsc, binaries }))
}

fn mark_dirty(tx: &WriteTransaction, ctx: &RepoCtx, dist: &Dist, record: &SourceRecord) -> Result<()> {
    let mut dirty = tx.open_table(DIRTY)?;
    let d = dist.to_string();
    let c = record.component.as_str();
    dirty.insert(key3(&d, c, "source").as_str(), 1)?;
    for b in &record.binaries {
        if b.arch.is_all() {
            if let Some((dd, _)) = ctx.dists.get(dist.codename.as_str()) {
                for a in dd.arches() {
                    dirty.insert(key3(&d, c, a.as_str()).as_str(), 1)?;
                }
            }
        } else {
            dirty.insert(key3(&d, c, b.arch.as_str()).as_str(), 1)?;
        }
    }
    Ok(())
}

/// Drop one reference to each file; a file no longer referenced goes to `gc`, and what it
/// installs out of `Contents`' store.
fn unref_files(tx: &WriteTransaction, repo: &RepoId, files: &[PoolFile], gc: &mut Vec<String>) -> Result<()> {
    let mut refs = tx.open_table(POOL_REFS)?;
    let mut contents = tx.open_table(DEB_CONTENTS)?;
    for f in files {
        let k = format!("{repo}/{}", f.path);
        let n = refs.get(k.as_str())?.map_or(0, |v| v.value());
        if n <= 1 {
            refs.remove(k.as_str())?;
            contents.remove(k.as_str())?;
            gc.push(f.path.clone());
        } else {
            refs.insert(k.as_str(), n - 1)?;
        }
    }
    Ok(())
}

fn delete_entry(
    tx: &WriteTransaction,
    ctx: &RepoCtx,
    dist: &Dist,
    source: &PackageName,
    gc: &mut Vec<String>,
) -> Result<()> {
    let Some(old) = get_entry_w(tx, dist, source)? else { return Ok(()) };
    mark_dirty(tx, ctx, dist, &old.record)?;
    tx.open_table(DIST_SOURCES)?.remove(format!("{dist}/{source}").as_str())?;
    tx.open_table(DIST_DSCS)?
        .remove(key3(&dist.to_string(), old.record.component.as_str(), source.as_str()).as_str())?;
    {
        let mut bins = tx.open_table(DIST_BINARIES)?;
        for b in &old.record.binaries {
            bins.remove(binary_key(dist, &old.record.component, b).as_str())?;
        }
    }
    unref_files(tx, &dist.repo, &old.record.files, gc)?;
    Ok(())
}

fn put_entry(tx: &WriteTransaction, ctx: &RepoCtx, dist: &Dist, entry: &Entry, gc: &mut Vec<String>) -> Result<()> {
    let source = &entry.record.source;
    // Reference the new files before releasing the old ones, so shared files survive.
    {
        let mut refs = tx.open_table(POOL_REFS)?;
        for f in &entry.record.files {
            let k = format!("{}/{}", dist.repo, f.path);
            let n = refs.get(k.as_str())?.map_or(0, |v| v.value());
            refs.insert(k.as_str(), n + 1)?;
        }
    }
    delete_entry(tx, ctx, dist, source, gc)?;
    gc.retain(|p| !entry.record.files.iter().any(|f| &f.path == p));
    tx.open_table(DIST_SOURCES)?
        .insert(format!("{dist}/{source}").as_str(), store::encode(&entry.record).as_slice())?;
    if let Some(dsc) = &entry.dsc {
        tx.open_table(DIST_DSCS)?.insert(
            key3(&dist.to_string(), entry.record.component.as_str(), source.as_str()).as_str(),
            dsc.as_slice(),
        )?;
    }
    {
        let mut bins = tx.open_table(DIST_BINARIES)?;
        for (b, stanza) in entry.record.binaries.iter().zip(&entry.binaries) {
            bins.insert(binary_key(dist, &entry.record.component, b).as_str(), stanza.as_slice())?;
        }
    }
    mark_dirty(tx, ctx, dist, &entry.record)?;
    Ok(())
}

/// Apply mini-buildd's rollback shift for `source` in base distribution `dist`.
fn shift_rollbacks(
    tx: &WriteTransaction,
    ctx: &RepoCtx,
    dist: &Dist,
    source: &PackageName,
    gc: &mut Vec<String>,
) -> Result<()> {
    let n = ctx.rollbacks(dist);
    let base = get_entry_w(tx, dist, source)?.map(|e| e.record.version);
    let mut rbs = Vec::new();
    for k in 0..n {
        rbs.push(get_entry_w(tx, &dist.rollback(k), source)?.map(|e| e.record.version));
    }
    for op in layout::shift_plan(base.as_ref(), &rbs) {
        let ShiftOp::Copy { from, to } = op;
        let superseded = from == Slot::Base;
        let (from, to) = (slot_dist(dist, from), slot_dist(dist, to));
        match get_entry_w(tx, &from, source)? {
            Some(mut e) => {
                if superseded {
                    e.record.superseded = Some(chrono::Utc::now());
                }
                put_entry(tx, ctx, &to, &e, gc)?
            }
            None => delete_entry(tx, ctx, &to, source, gc)?,
        }
    }
    Ok(())
}
