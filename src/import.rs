//! Taking over a mini-buildd 2.x instance (`buildbay import <home>`): its configuration
//! (`config.sqlite`), its archive key, its users and uploaders, and its reprepro repositories
//! with every distribution, rollback and snapshot, so that its apt clients go on unchanged.
//!
//! The configuration's rows become objects by the pure [`objects`]; the edges read the
//! database (read only), export the key with gpg, and read each distribution's indices only
//! after its `InRelease` verified against that key. Whatever cannot come over is reported with
//! the reason, never dropped silently.

use crate::archive::adopt::Listed;
use crate::auth::Role;
use crate::config::{
    self, AptKey, ArchOption, Archive, Checked, Chroot, Daemon, Distribution, PrioritySource, Remote, Repository,
    Source, State, Status, Uploader,
};
use crate::deb::{Component, Dist, Stanza};
use crate::gpg::ArchiveKey;
use crate::instance::Instance;
use chrono::{DateTime, NaiveDateTime, Utc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The other instance is not what an import takes (final: the reason says what to fix).
    #[error("{0}")]
    Bad(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("reading {path}: {source}; is it a mini-buildd 2.x config.sqlite?")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Gpg(#[from] crate::gpg::GpgError),
}

pub type Result<T> = std::result::Result<T, ImportError>;

/// What came over, and what did not (with the reason).
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub carried: Vec<String>,
    pub left: Vec<String>,
}

/// Bytes of one index read from the other instance.
const MAX_INDEX: u64 = 512 << 20;

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

/// One row of a table, by column.
pub type Row = BTreeMap<String, Cell>;

fn text<'a>(r: &'a Row, col: &str) -> &'a str {
    match r.get(col) {
        Some(Cell::Text(s)) => s,
        _ => "",
    }
}

fn int(r: &Row, col: &str) -> i64 {
    match r.get(col) {
        Some(Cell::Int(i)) => *i,
        Some(Cell::Text(s)) => s.parse().unwrap_or(0),
        Some(Cell::Real(f)) => *f as i64,
        _ => 0,
    }
}

/// The tables an import reads (mini-buildd's Django models, `mini_buildd_<name>`).
pub const TABLES: &[&str] = &[
    "daemon",
    "archive",
    "aptkey",
    "source",
    "source_apt_keys",
    "source_archives",
    "source_components",
    "source_architectures",
    "prioritysource",
    "distribution",
    "architectureoption",
    "distribution_components",
    "distribution_extra_sources",
    "suiteoption",
    "suite",
    "repository",
    "repository_distributions",
    "uploader",
    "uploader_may_upload_to",
    "remote",
    "chroot",
];

/// The rows of [`TABLES`] and of Django's `auth_user`, by table name.
pub type Tables = BTreeMap<String, Vec<Row>>;

fn rows<'a>(t: &'a Tables, name: &str) -> &'a [Row] {
    t.get(name).map_or(&[], Vec::as_slice)
}

/// Read the tables, read only.
pub fn read_tables(path: &Path) -> Result<Tables> {
    let err = |source| ImportError::Sqlite { path: path.to_owned(), source };
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    let mut out = Tables::new();
    let names = TABLES
        .iter()
        .map(|t| (t.to_string(), format!("mini_buildd_{t}")))
        .chain([("auth_user".into(), "auth_user".into())]);
    for (name, table) in names {
        // The table names are this module's constants, never input.
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).map_err(err)?;
        let cols: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let mut q = stmt.query([]).map_err(err)?;
        let mut list = Vec::new();
        while let Some(r) = q.next().map_err(err)? {
            let mut row = Row::new();
            for (i, c) in cols.iter().enumerate() {
                use rusqlite::types::ValueRef;
                let cell = match r.get_ref(i).map_err(err)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Real(v) => Cell::Real(v),
                    ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(_) => Cell::Null,
                };
                row.insert(c.clone(), cell);
            }
            list.push(row);
        }
        out.insert(name, list);
    }
    Ok(out)
}

/// mini-buildd's status and `last_checked` (with its sentinels in year 1) as a status.
pub fn status(r: &Row, now: DateTime<Utc>) -> Status {
    let state = match int(r, "status") {
        2 => State::Active,
        1 => State::Prepared,
        _ => State::Removed,
    };
    let at = NaiveDateTime::parse_from_str(text(r, "last_checked"), "%Y-%m-%d %H:%M:%S%.f").ok();
    let checked = match at {
        Some(t) if t.and_utc().format("%Y").to_string() == "0001" => {
            match t.and_utc().format("%d").to_string().as_str() {
                "02" => Checked::Changed,
                "03" => Checked::Failed,
                "04" => Checked::Reactivate,
                _ => Checked::Never,
            }
        }
        Some(t) => Checked::At(t.and_utc()),
        None if state == State::Active => Checked::At(now),
        None => Checked::Never,
    };
    Status { state, checked, message: None }
}

/// The ids of `col` in the rows of an m2m `table` whose `owner` column is `id`.
fn linked(t: &Tables, table: &str, owner: &str, id: &str, col: &str) -> Vec<String> {
    rows(t, table)
        .iter()
        .filter(|r| match r.get(owner) {
            Some(Cell::Int(i)) => i.to_string() == id,
            Some(Cell::Text(s)) => s == id,
            _ => false,
        })
        .map(|r| match r.get(col) {
            Some(Cell::Int(i)) => i.to_string(),
            _ => text(r, col).to_owned(),
        })
        .collect()
}

fn parsed<T: std::str::FromStr>(items: Vec<String>, what: &str, left: &mut Vec<String>) -> Vec<T>
where
    T::Err: std::fmt::Display,
{
    items
        .into_iter()
        .filter_map(|s| match s.parse() {
            Ok(v) => Some(v),
            Err(e) => {
                left.push(format!("{what}: {s:?} is left out: {e}"));
                None
            }
        })
        .collect()
}

/// The QA modes' and resolver's names, from mini-buildd's numbers.
fn mode(n: i64) -> &'static str {
    ["disabled", "ignore", "errfail", "warnfail"].get(n as usize).copied().unwrap_or("disabled")
}

/// The configuration objects of the tables; `origin` is the `Origin` its releases carry (kept,
/// so apt pins on the clients keep matching), `key` the taken-over key's fingerprint.
pub fn objects(t: &Tables, origin: &str, key: &str, now: DateTime<Utc>) -> (Vec<config::Object>, Vec<String>) {
    use config::Object as O;
    let mut out = Vec::new();
    let mut left = Vec::new();

    for r in rows(t, "daemon") {
        let id = text(r, "identity");
        let Ok(identity) = id.parse() else {
            left.push(format!("daemon: identity {id:?} is not a valid identity here"));
            continue;
        };
        let mut d = Daemon {
            identity,
            custom_archive_origin: Some(origin.to_owned()),
            key_algo: Default::default(),
            key_fingerprint: Some(key.to_owned()),
            mail: Default::default(),
            status: status(r, now),
        };
        d.mail.email_address = text(r, "email_address").parse().ok();
        d.mail.allow_emails_to = Some(text(r, "allow_emails_to").to_owned()).filter(|s| !s.is_empty());
        if d.mail.check().is_err() {
            left.push("daemon: allow_emails_to is not a regular expression here; left unset".into());
            d.mail.allow_emails_to = None;
        }
        out.push(O::Daemon(d));
    }
    for r in rows(t, "archive") {
        match text(r, "url").parse() {
            Ok(url) => out.push(O::Archive(Archive { status: active_now(now), ..Archive::new(url) })),
            Err(e) => left.push(format!("archive {:?}: {e}", text(r, "url"))),
        }
    }
    let mut key_fprs: BTreeMap<String, String> = BTreeMap::new();
    for r in rows(t, "aptkey") {
        match AptKey::from_key(text(r, "key"), status(r, now)) {
            Ok(k) => {
                key_fprs.insert(int(r, "id").to_string(), k.fingerprint.clone());
                out.push(O::AptKey(k));
            }
            Err(e) => left.push(format!("apt key {}: {e}", text(r, "key_id"))),
        }
    }
    let mut source_ids: BTreeMap<String, String> = BTreeMap::new();
    for r in rows(t, "source") {
        let id = int(r, "id").to_string();
        let what = format!("source {}:{}", text(r, "origin"), text(r, "codename"));
        let Ok(codename) = text(r, "codename").parse() else {
            left.push(format!("{what}: the codename is not valid here"));
            continue;
        };
        let s = Source {
            origin: text(r, "origin").to_owned(),
            codename,
            codeversion: text(r, "codeversion").to_owned(),
            codeversion_override: Some(text(r, "codeversion_override").to_owned()).filter(|s| !s.is_empty()),
            components: parsed(linked(t, "source_components", "source_id", &id, "component_id"), &what, &mut left),
            architectures: parsed(
                linked(t, "source_architectures", "source_id", &id, "architecture_id"),
                &what,
                &mut left,
            ),
            apt_keys: linked(t, "source_apt_keys", "source_id", &id, "aptkey_id")
                .iter()
                .filter_map(|k| key_fprs.get(k).cloned())
                .collect(),
            check_valid_until: int(r, "check_valid_until") != 0,
            archives: parsed(linked(t, "source_archives", "source_id", &id, "archive_id"), &what, &mut left),
            description: text(r, "description").to_owned(),
            valid_until: None,
            status: status(r, now),
        };
        source_ids.insert(id, s.id());
        out.push(O::Source(s));
    }
    let mut prio_ids: BTreeMap<String, String> = BTreeMap::new();
    for r in rows(t, "prioritysource") {
        let Some(source) = source_ids.get(&int(r, "source_id").to_string()) else { continue };
        let p = PrioritySource { source: source.clone(), priority: int(r, "priority") as i32, status: active_now(now) };
        prio_ids.insert(int(r, "id").to_string(), p.id());
        out.push(O::PrioritySource(p));
    }
    let mut dist_codenames: BTreeMap<String, String> = BTreeMap::new();
    for r in rows(t, "distribution") {
        let id = int(r, "id").to_string();
        let Some(base) = source_ids.get(&int(r, "base_source_id").to_string()) else {
            left.push(format!("distribution {id}: its base source did not come over"));
            continue;
        };
        let codename = base.rsplit(':').next().unwrap_or_default().to_owned();
        let what = format!("distribution {codename}");
        let Ok(codename_t) = codename.parse() else {
            left.push(format!("{what}: the codename is not valid here"));
            continue;
        };
        let architectures = rows(t, "architectureoption")
            .iter()
            .filter(|a| int(a, "distribution_id").to_string() == id)
            .filter_map(|a| match text(a, "architecture_id").parse() {
                Ok(arch) => Some(ArchOption {
                    arch,
                    optional: int(a, "optional") != 0,
                    build_architecture_all: int(a, "build_architecture_all") != 0,
                }),
                Err(e) => {
                    left.push(format!("{what}: architecture {:?}: {e}", text(a, "architecture_id")));
                    None
                }
            })
            .collect();
        let resolver = match int(r, "build_dep_resolver") {
            1 => "aptitude",
            0 => "apt",
            _ => {
                left.push(format!("{what}: mini-buildd's internal resolver does not exist here; apt resolves"));
                "apt"
            }
        };
        let settings = serde_json::json!({
            "build_dep_resolver": resolver,
            "lintian_mode": mode(int(r, "lintian_mode")),
            "lintian_extra_options": text(r, "lintian_extra_options"),
            "piuparts_mode": mode(int(r, "piuparts_mode")),
            "piuparts_extra_options": text(r, "piuparts_extra_options"),
            "piuparts_root_arg": text(r, "piuparts_root_arg"),
            "autopkgtest_mode": mode(int(r, "autopkgtest_mode")),
            "internal_apt_priority": int(r, "internal_apt_priority"),
            "deb_build_options": Some(text(r, "deb_build_options")).filter(|s| !s.is_empty()),
            "deb_build_profiles": Some(text(r, "deb_build_profiles")).filter(|s| !s.is_empty()),
            "add_depends": Some(text(r, "add_depends")).filter(|s| !s.is_empty()),
            "sbuild_config_blocks": text(r, "sbuild_config_blocks"),
            "sbuild_setup_blocks": text(r, "sbuild_setup_blocks"),
            "chroot_setup_script": text(r, "chroot_setup_script").replace("\r\n", "\n"),
            "sbuildrc_snippet": text(r, "sbuildrc_snippet").replace("\r\n", "\n"),
        });
        let build = serde_json::from_value(settings).unwrap_or_else(|e| {
            left.push(format!("{what}: its build settings are not valid here ({e}); the defaults are taken"));
            Default::default()
        });
        let d = Distribution {
            codename: codename_t,
            base_source: base.clone(),
            architectures,
            components: parsed(
                linked(t, "distribution_components", "distribution_id", &id, "component_id"),
                &what,
                &mut left,
            ),
            status: active_now(now),
            build_backend: Default::default(),
            build_network: false,
            extra_sources: linked(t, "distribution_extra_sources", "distribution_id", &id, "prioritysource_id")
                .iter()
                .filter_map(|p| prio_ids.get(p).cloned())
                .collect(),
            build,
        };
        dist_codenames.insert(id, codename);
        out.push(O::Distribution(d));
    }
    for r in rows(t, "repository") {
        let id = text(r, "identity");
        let Ok(identity) = id.parse() else {
            left.push(format!("repository {id:?}: the identity is not valid here"));
            continue;
        };
        let what = format!("repository {id}");
        let codenames = linked(t, "repository_distributions", "repository_id", id, "distribution_id")
            .iter()
            .filter_map(|d| dist_codenames.get(d).cloned())
            .collect();
        let keyrings: Vec<String> = text(r, "extra_uploader_keyrings")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if !keyrings.is_empty() {
            left.push(format!("{what}: extra_uploader_keyrings {keyrings:?} are kept; each must exist on this host"));
        }
        let mut repo = Repository {
            identity,
            layout: text(r, "layout_id").to_owned(),
            distributions: parsed(codenames, &what, &mut left),
            allow_unauthenticated_uploads: int(r, "allow_unauthenticated_uploads") != 0,
            unauthenticated_from_network: false,
            extra_uploader_keyrings: keyrings,
            mail: Default::default(),
            status: status(r, now),
        };
        repo.mail.notify_changed_by = int(r, "notify_changed_by") != 0;
        repo.mail.notify_maintainer = int(r, "notify_maintainer") != 0;
        if !text(r, "external_home_url").is_empty() {
            left.push(format!("{what}: external_home_url has no counterpart here"));
        }
        out.push(O::Repository(repo));
    }
    let users: BTreeMap<String, String> =
        rows(t, "auth_user").iter().map(|u| (int(u, "id").to_string(), text(u, "username").to_owned())).collect();
    for r in rows(t, "uploader") {
        let Some(user) = users.get(&int(r, "user_id").to_string()) else { continue };
        let key = text(r, "key");
        let fingerprint = Some(text(r, "key_fingerprint").to_owned()).filter(|f| !f.is_empty());
        if key.is_empty() && int(r, "status") == 0 {
            continue; // mini-buildd makes one per user; without a key it says nothing
        }
        let may = linked(t, "uploader_may_upload_to", "uploader_id", &int(r, "id").to_string(), "repository_id");
        out.push(O::Uploader(Uploader {
            user: user.clone(),
            key: key.to_owned(),
            fingerprint,
            may_upload_to: parsed(may, &format!("uploader {user}"), &mut left),
            status: status(r, now),
        }));
    }
    for r in rows(t, "remote") {
        let http = text(r, "http");
        match http.parse() {
            Ok(http) => {
                let mut st = status(r, now);
                if st.state == State::Active {
                    // Trusted again only after a handshake with this instance: armed to activate.
                    st.state = State::Prepared;
                    st.checked = Checked::Reactivate;
                }
                left.push(format!(
                    "remote {http}: its key came over; it activates once a check passes (`buildbay api check remote {http}`)"
                ));
                out.push(O::Remote(Remote {
                    http,
                    wake_command: text(r, "wake_command").to_owned(),
                    key: text(r, "key").to_owned(),
                    key_fingerprint: text(r, "key_fingerprint").to_owned(),
                    last_status: None,
                    verified: false,
                    status: st,
                }))
            }
            Err(e) => left.push(format!("remote {http:?}: {e}")),
        }
    }
    for r in rows(t, "chroot") {
        let Some(source) = source_ids.get(&int(r, "source_id").to_string()) else { continue };
        let codename = source.rsplit(':').next().unwrap_or_default();
        let arch = text(r, "architecture_id");
        match (codename.parse(), arch.parse()) {
            (Ok(c), Ok(a)) => {
                let chroot = Chroot::new(c, a);
                left.push(format!(
                    "chroot {}: mini-buildd's image is not taken; make it here with `buildbay api setup --chroots {}` (minutes)",
                    chroot.id(),
                    chroot.id()
                ));
                out.push(O::Chroot(chroot));
            }
            _ => left.push(format!("chroot {codename}:{arch}: not valid here")),
        }
    }
    (out, left)
}

/// Active since the import (objects mini-buildd keeps no status for).
fn active_now(now: DateTime<Utc>) -> Status {
    Status { state: State::Active, checked: Checked::At(now), message: None }
}

/// Django's roles as buildbay's.
pub fn role(r: &Row) -> Role {
    if int(r, "is_superuser") != 0 {
        Role::Admin
    } else if int(r, "is_staff") != 0 {
        Role::Staff
    } else {
        Role::Login
    }
}

/// The secret keys of the other instance's GnuPG home, exported by gpg (without passphrase:
/// mini-buildd's key has none).
fn export_keys(gnupg: &Path) -> Result<Vec<ArchiveKey>> {
    let out = std::process::Command::new("gpg")
        .arg("--homedir")
        .arg(gnupg)
        .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--export-secret-keys"])
        .output()
        .map_err(|source| ImportError::Io { path: "gpg".into(), source })?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(ImportError::Bad(format!(
            "gpg exported no secret key from {}: {}; give the archive key with --archive-key FILE (`gpg --export-secret-keys`)",
            gnupg.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(ArchiveKey::from_secret_keyring(&out.stdout)?)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|source| ImportError::Io { path: path.to_owned(), source })?;
    let mut data = Vec::new();
    f.take(MAX_INDEX + 1).read_to_end(&mut data).map_err(|source| ImportError::Io { path: path.to_owned(), source })?;
    if data.len() as u64 > MAX_INDEX {
        return Err(ImportError::Bad(format!("{} is larger than {MAX_INDEX} bytes", path.display())));
    }
    Ok(data)
}

/// A published distribution (or snapshot) tree of the other instance: its verified `Release`.
struct Tree {
    dir: PathBuf,
    release: String,
}

impl Tree {
    /// Read `InRelease` and verify it with `key`; `None` when the tree has none.
    fn open(dir: &Path, key: &ArchiveKey) -> Result<Option<Tree>> {
        let path = dir.join("InRelease");
        if !path.exists() {
            return Ok(None);
        }
        let (payload, _) = crate::gpg::verify_clearsigned(&read_bounded(&path)?, std::slice::from_ref(key.cert()))
            .map_err(|e| {
                ImportError::Bad(format!("{}: {e}; is the archive key the one that signs it?", path.display()))
            })?;
        let release =
            String::from_utf8(payload).map_err(|_| ImportError::Bad(format!("{}: not UTF-8", path.display())))?;
        Ok(Some(Tree { dir: dir.to_owned(), release }))
    }

    fn origin(&self) -> Option<String> {
        self.release.lines().find_map(|l| l.strip_prefix("Origin:")).map(|o| o.trim().to_owned())
    }

    /// The entries of the index at `rel`, when the release lists it; its bytes must match.
    fn stanzas(&self, rel: &str) -> Result<Vec<Stanza>> {
        let files = crate::archive::index::release_files(&self.release);
        let Some(listed) = files.iter().find(|f| f.path == rel) else { return Ok(vec![]) };
        let data = read_bounded(&self.dir.join(rel))?;
        let sums = crate::deb::Checksums::of_bytes(&data);
        if sums.size != listed.sums.size || !sums.sha256.eq_ignore_ascii_case(&listed.sums.sha256) {
            return Err(ImportError::Bad(format!("{}: does not match its Release", self.dir.join(rel).display())));
        }
        let text = String::from_utf8(data).map_err(|_| ImportError::Bad(format!("{rel}: not UTF-8")))?;
        crate::deb::control::parse_stanzas(&text).map_err(|e| ImportError::Bad(format!("{rel}: {e}")))
    }

    /// Every component's sources and binaries.
    fn listed(&self) -> Result<BTreeMap<Component, Listed>> {
        use crate::deb::debfile::PackageType;
        let r = crate::deb::Release::parse(&self.release).map_err(|e| ImportError::Bad(e.to_string()))?;
        let mut out = BTreeMap::new();
        for c in &r.components {
            let Ok(comp) = c.parse::<Component>() else { continue };
            let mut l = Listed { sources: self.stanzas(&format!("{c}/source/Sources"))?, binaries: vec![] };
            for a in &r.architectures {
                for st in self.stanzas(&format!("{c}/binary-{a}/Packages"))? {
                    let kind = if st.get("Filename").is_some_and(|f| f.ends_with(".ddeb")) {
                        PackageType::Ddeb
                    } else {
                        PackageType::Deb
                    };
                    l.binaries.push((kind, st));
                }
                for st in self.stanzas(&format!("{c}/debian-installer/binary-{a}/Packages"))? {
                    l.binaries.push((PackageType::Udeb, st));
                }
            }
            out.insert(comp, l);
        }
        Ok(out)
    }
}

/// Import the mini-buildd instance at `home` into `inst`, a state directory with no
/// configuration yet. `key_file`: the archive key when gpg cannot export it from `home`.
pub fn import(inst: &Instance, home: &Path, key_file: Option<&Path>) -> Result<Report> {
    let sqlite = home.join("config.sqlite");
    if !sqlite.is_file() {
        return Err(ImportError::Bad(format!(
            "{} does not exist: give mini-buildd's home (usually /var/lib/mini-buildd)",
            sqlite.display()
        )));
    }
    if inst.daemon()?.is_some() {
        return Err(ImportError::Bad(
            "this state directory is configured already; import into a new one (--state DIR)".into(),
        ));
    }
    let tables = read_tables(&sqlite)?;
    let repos_dir = home.join("repositories");
    // The key: the one that signs the repositories.
    let keys = match key_file {
        Some(f) => ArchiveKey::from_secret_keyring(&read_bounded(f)?)?,
        None => export_keys(&home.join(".gnupg"))?,
    };
    let mut first_tree = None;
    for r in rows(&tables, "repository") {
        let dists = repos_dir.join(text(r, "identity")).join("dists");
        if let Ok(rd) = std::fs::read_dir(&dists)
            && let Some(d) = rd.flatten().map(|e| e.path()).find(|p| p.join("InRelease").exists())
        {
            first_tree = Some(d);
            break;
        }
    }
    let key = match &first_tree {
        Some(dir) => keys
            .into_iter()
            .find(|k| Tree::open(dir, k).ok().flatten().is_some())
            .ok_or_else(|| ImportError::Bad(format!("no secret key found signs {}/InRelease", dir.display())))?,
        None => {
            let mut keys = keys;
            if keys.len() != 1 {
                return Err(ImportError::Bad(format!(
                    "{} signing keys found, and no repository to tell which signs",
                    keys.len()
                )));
            }
            keys.remove(0)
        }
    };
    let origin = match &first_tree {
        Some(dir) => Tree::open(dir, &key)?.and_then(|t| t.origin()),
        None => None,
    };
    let identity = rows(&tables, "daemon").first().map(|r| text(r, "identity").to_owned()).unwrap_or_default();
    let origin = origin.unwrap_or_else(|| format!("Mini-Buildd archive {identity}"));
    let (objects, mut left) = objects(&tables, &origin, &key.fingerprint(), Utc::now());
    let mut report = Report::default();
    inst.adopt_key(key.clone())?;
    report.carried.push(format!("archive key {}", key.fingerprint()));
    for o in objects {
        let (kind, id) = (o.kind(), o.id());
        inst.put_object(&id, &o)?;
        report.carried.push(format!("{kind} {id}"));
    }
    for u in rows(&tables, "auth_user") {
        let name = text(u, "username");
        let email = text(u, "email").parse().ok();
        match crate::auth::import_user(&inst.store, name, text(u, "password"), role(u), email) {
            Ok(_) => report.carried.push(format!("user {name} ({})", role(u).as_str())),
            Err(e) => left.push(format!("user {name}: {e}")),
        }
    }
    // The repositories, distribution by distribution, rollbacks and snapshots included.
    let archive = inst.archive()?;
    for repo in inst.list::<Repository>()? {
        let from = repos_dir.join(repo.identity.as_str());
        if inst.get::<config::LayoutObject>(&repo.layout)?.is_none() {
            left.push(format!(
                "repository {}: layout {:?} is not one of buildbay's (Default, Default (no rollbacks), Debian Developer); its packages are not taken",
                repo.identity, repo.layout
            ));
            continue;
        }
        archive.prepare_repository(&repo.identity)?;
        let ctx = archive.ctx(&repo.identity)?;
        for dist in ctx.all_dists() {
            let dir = from.join("dists").join(dist.to_string());
            let Some(tree) = Tree::open(&dir, &key)? else { continue };
            for name in snapshots(&dir) {
                match adopt_snapshot(&archive, &dist, &from, &dir, &key, &name) {
                    Ok(n) => report.carried.push(format!("snapshot {dist}/{name}: {n} sources")),
                    Err(e) => left.push(format!("snapshot {dist}/{name}: {e}")),
                }
            }
            let a = archive.adopt(&dist, &from, &tree.listed()?)?;
            if a.sources > 0 {
                report.carried.push(format!("{dist}: {} sources, {} binaries", a.sources, a.binaries));
            }
            left.extend(a.skipped);
        }
        for d in std::fs::read_dir(from.join("dists")).into_iter().flatten().flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if !ctx.all_dists().iter().any(|x| x.to_string() == name) {
                left.push(format!(
                    "{}/dists/{name}: not a distribution of repository {} here",
                    from.display(),
                    repo.identity
                ));
            }
        }
    }
    report.left = left;
    Ok(report)
}

/// The snapshot names under a distribution's tree.
fn snapshots(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("InRelease").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A snapshot: the distribution is made to hold it, and it is frozen under its name (the
/// distribution's own state is adopted after its snapshots).
fn adopt_snapshot(
    archive: &crate::archive::Archive<'_>,
    dist: &Dist,
    from: &Path,
    dir: &Path,
    key: &ArchiveKey,
    name: &str,
) -> Result<usize> {
    let snap: crate::deb::SnapshotName =
        name.parse().map_err(|e: crate::deb::names::NameError| ImportError::Bad(e.to_string()))?;
    let tree =
        Tree::open(&dir.join("snapshots").join(name), key)?.ok_or_else(|| ImportError::Bad("no InRelease".into()))?;
    let a = archive.adopt(dist, from, &tree.listed()?)?;
    archive.snapshot_create(dist, &snap)?;
    Ok(a.sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[(&str, Cell)]) -> Row {
        cells.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }
    fn t(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    #[test]
    fn status_reads_mini_buildds_sentinels() {
        let now = Utc::now();
        let s = |st: i64, at: &str| status(&row(&[("status", Cell::Int(st)), ("last_checked", t(at))]), now);
        assert_eq!(s(2, "2026-12-07 11:51:05.336792").word(), "ACTIVE");
        assert!(matches!(s(2, "2026-12-07 11:51:05.336792").checked, Checked::At(_)));
        assert_eq!(s(1, "0001-01-01 00:00:00").checked, Checked::Never);
        assert_eq!(s(1, "0001-01-02 00:00:00").word(), "CHANGED");
        assert_eq!(s(1, "0001-01-03 00:00:00").word(), "FAILED");
        assert_eq!(s(1, "0001-01-04 00:00:00").checked, Checked::Reactivate);
        assert_eq!(s(0, "garbage").word(), "REMOVED");
    }

    #[test]
    fn objects_map_mini_buildds_rows_and_list_what_is_left() {
        let mut tables = Tables::new();
        let now = Utc::now();
        tables.insert(
            "daemon".into(),
            vec![row(&[
                ("identity", t("mbd")),
                ("status", Cell::Int(2)),
                ("allow_emails_to", t("(")),
                ("email_address", t("mbd@example.org")),
            ])],
        );
        tables.insert(
            "source".into(),
            vec![row(&[
                ("id", Cell::Int(1)),
                ("origin", t("Debian")),
                ("codename", t("bookworm")),
                ("codeversion", t("12")),
                ("check_valid_until", Cell::Int(1)),
                ("status", Cell::Int(2)),
            ])],
        );
        tables.insert(
            "source_components".into(),
            vec![
                row(&[("source_id", Cell::Int(1)), ("component_id", t("main"))]),
                row(&[("source_id", Cell::Int(1)), ("component_id", t("../x"))]),
            ],
        );
        tables.insert(
            "distribution".into(),
            vec![row(&[
                ("id", Cell::Int(1)),
                ("base_source_id", Cell::Int(1)),
                ("build_dep_resolver", Cell::Int(2)),
                ("lintian_mode", Cell::Int(3)),
                ("lintian_extra_options", t("--info")),
                ("piuparts_root_arg", t("sudo")),
                ("internal_apt_priority", Cell::Int(1)),
                ("sbuild_setup_blocks", t("")),
                ("sbuild_config_blocks", t("")),
            ])],
        );
        tables.insert(
            "architectureoption".into(),
            vec![row(&[
                ("distribution_id", Cell::Int(1)),
                ("architecture_id", t("amd64")),
                ("build_architecture_all", Cell::Int(1)),
            ])],
        );
        tables.insert(
            "distribution_components".into(),
            vec![row(&[("distribution_id", Cell::Int(1)), ("component_id", t("main"))])],
        );
        tables.insert(
            "repository".into(),
            vec![row(&[
                ("identity", t("test")),
                ("layout_id", t("Default")),
                ("status", Cell::Int(2)),
                ("allow_unauthenticated_uploads", Cell::Int(1)),
                ("external_home_url", t("http://x")),
            ])],
        );
        tables.insert(
            "repository_distributions".into(),
            vec![row(&[("repository_id", t("test")), ("distribution_id", Cell::Int(1))])],
        );
        tables.insert(
            "remote".into(),
            vec![
                row(&[("http", t("tcp:host=127.0.0.1:port=8066")), ("status", Cell::Int(2))]),
                row(&[("http", t("evil\nhost"))]),
            ],
        );
        tables.insert(
            "chroot".into(),
            vec![row(&[("source_id", Cell::Int(1)), ("architecture_id", t("i386")), ("status", Cell::Int(2))])],
        );
        tables.insert(
            "auth_user".into(),
            vec![row(&[("id", Cell::Int(1)), ("username", t("admin")), ("is_superuser", Cell::Int(1))])],
        );
        tables.insert(
            "uploader".into(),
            vec![row(&[("id", Cell::Int(1)), ("user_id", Cell::Int(1)), ("status", Cell::Int(0))])],
        );
        let (objs, left) = objects(&tables, "Mini-Buildd archive mbd on host", "FPR", now);
        let kinds: Vec<String> = objs.iter().map(|o| format!("{} {}", o.kind(), o.id())).collect();
        assert_eq!(
            kinds,
            [
                "daemon 1",
                "source Debian:bookworm",
                "distribution bookworm",
                "repository test",
                "remote http://127.0.0.1:8066",
                "chroot bookworm:i386"
            ]
        );
        let config::Object::Daemon(d) = &objs[0] else { panic!() };
        assert_eq!(d.custom_archive_origin.as_deref(), Some("Mini-Buildd archive mbd on host"));
        assert_eq!(d.mail.allow_emails_to, None);
        let config::Object::Distribution(dist) = &objs[2] else { panic!() };
        assert_eq!(dist.build.lintian_mode, crate::protocol::QaMode::Warnfail);
        assert_eq!(dist.components.len(), 1);
        let config::Object::Repository(r) = &objs[3] else { panic!() };
        assert_eq!(r.distributions.len(), 1);
        assert!(r.allow_unauthenticated_uploads);
        let config::Object::Remote(rm) = &objs[4] else { panic!() };
        assert_eq!((rm.status.state, &rm.status.checked), (State::Prepared, &Checked::Reactivate));
        let config::Object::Chroot(c) = &objs[5] else { panic!() };
        assert_eq!(c.status.state, State::Removed);
        let text = left.join("\n");
        for want in [
            "allow_emails_to",
            "\"../x\"",
            "internal resolver",
            "external_home_url",
            "evil",
            "chroot bookworm:i386",
            "remote http://127.0.0.1:8066",
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
        assert_eq!(role(&rows(&tables, "auth_user")[0]), Role::Admin);
    }
}
