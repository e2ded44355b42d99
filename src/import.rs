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
use crate::deb::{Component, RepoId, Stanza};
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
/// Bytes of an `InRelease` (what a signature is verified over is bounded at 4 MiB anyway).
const MAX_INRELEASE: u64 = 8 << 20;
/// Rows of one table of `config.sqlite`.
const MAX_ROWS: usize = 100_000;

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
        // A table, not a view (a view's query could run without end).
        let kind: String =
            conn.query_row("SELECT type FROM sqlite_master WHERE name = ?1", [&table], |r| r.get(0)).map_err(err)?;
        if kind != "table" {
            return Err(ImportError::Bad(format!("{}: {table} is a {kind}, not a table", path.display())));
        }
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
            if list.len() > MAX_ROWS {
                return Err(ImportError::Bad(format!("{}: {table} has more than {MAX_ROWS} rows", path.display())));
            }
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
        let Some(source) = source_ids.get(&int(r, "source_id").to_string()) else {
            left.push(format!("priority source {}: its source did not come over", int(r, "id")));
            continue;
        };
        let p = PrioritySource {
            source: source.clone(),
            priority: i32::try_from(int(r, "priority")).unwrap_or(1),
            status: active_now(now),
        };
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
        let build = build_settings(settings, &what, &mut left);
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
        let Some(user) = users.get(&int(r, "user_id").to_string()) else {
            left.push(format!("uploader {}: its user did not come over", int(r, "id")));
            continue;
        };
        let key = text(r, "key");
        if key.is_empty() && int(r, "status") == 0 {
            continue; // mini-buildd makes one per user; without a key it says nothing
        }
        // The fingerprint is the key's own, never the row's.
        let fingerprint = match crate::gpg::one_key(key.as_bytes()) {
            Ok(cert) => Some(cert.fingerprint().to_hex()),
            Err(e) => {
                left.push(format!("uploader {user}: its key: {e}"));
                continue;
            }
        };
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
                    "remote {http}: its key came over; it activates once a check passes (`buildbay api config_action remote {http} check`)"
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
        let Some(source) = source_ids.get(&int(r, "source_id").to_string()) else {
            left.push(format!("chroot {}: its source did not come over", int(r, "id")));
            continue;
        };
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

/// A distribution's build settings from mini-buildd's fields: a field buildbay refuses (an
/// option it does not pass on, a block it does not know) takes buildbay's default, and is
/// listed; the others are kept.
fn build_settings(mut fields: serde_json::Value, what: &str, left: &mut Vec<String>) -> crate::protocol::BuildSettings {
    fn attempt(fields: &serde_json::Value) -> std::result::Result<crate::protocol::BuildSettings, String> {
        serde_json::from_value::<crate::protocol::BuildSettings>(fields.clone())
            .map_err(|e| e.to_string())
            .and_then(|b| b.check().map(|()| b).map_err(|e| e.to_string()))
    }
    loop {
        let why = match attempt(&fields) {
            Ok(b) => return b,
            Err(why) => why,
        };
        let Some(map) = fields.as_object_mut() else { return Default::default() };
        // The field the reason names, else the one without which the reason changes.
        let without = |k: &String| {
            let mut m = map.clone();
            m.remove(k);
            attempt(&serde_json::Value::Object(m)).err().as_ref() != Some(&why)
        };
        let culprit =
            map.keys().find(|k| why.contains(k.as_str())).or_else(|| map.keys().find(|k| without(k))).cloned();
        match culprit {
            Some(k) => {
                left.push(format!("{what}: {why}; {k} takes buildbay's default"));
                map.remove(&k);
            }
            None => {
                left.push(format!(
                    "{what}: its build settings are not valid here ({why}); buildbay's defaults are taken"
                ));
                return Default::default();
            }
        }
    }
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
/// mini-buildd's key has none). gpg runs on a private copy of the keys only (`pubring.kbx`
/// and `private-keys-v1.d/*.key`), with no configuration: the old home's `gpg.conf` or
/// `gpg-agent.conf` could name programs for gpg to start.
fn export_keys(gnupg: &Path, work: &Path) -> Result<Vec<ArchiveKey>> {
    // Inside the import's own (new, private) state directory, never a guessable name in /tmp.
    let tmp = work.join("gnupg-import");
    let result = export_from_copy(gnupg, &tmp);
    let _ = std::process::Command::new("gpgconf")
        .arg("--homedir")
        .arg(&tmp)
        .args(["--kill", "all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn export_from_copy(gnupg: &Path, tmp: &Path) -> Result<Vec<ArchiveKey>> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ImportError::Io { path, source }
    };
    let _ = std::fs::remove_dir_all(tmp);
    std::fs::DirBuilder::new().mode(0o700).create(tmp).map_err(io(tmp))?;
    std::fs::DirBuilder::new().mode(0o700).create(tmp.join("private-keys-v1.d")).map_err(io(tmp))?;
    let mut files = vec!["pubring.kbx".to_owned()];
    for e in std::fs::read_dir(gnupg.join("private-keys-v1.d")).map_err(io(gnupg))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".key") && !name.contains('/') && files.len() < 64 {
            files.push(format!("private-keys-v1.d/{name}"));
        }
    }
    for f in &files {
        let data = read_beneath(gnupg, f, None, 16 << 20)?;
        std::fs::write(tmp.join(f), data).map_err(io(&tmp.join(f)))?;
    }
    let out = std::process::Command::new("gpg")
        .arg("--no-options")
        .arg("--homedir")
        .arg(tmp)
        .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--export-secret-keys"])
        .env_remove("GNUPGHOME")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ImportError::Io { path: "gpg".into(), source })?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(ImportError::Bad(format!(
            "gpg exported no secret key from {}: {}; give the archive key with --archive-key FILE (`gpg --export-secret-keys` as mini-buildd's user)",
            gnupg.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(ArchiveKey::from_secret_keyring(&out.stdout)?)
}

/// Read `rel` beneath `root` (no symbolic link followed), when it has `want` bytes, or at most
/// `max` when `want` is not known.
fn read_beneath(root: &Path, rel: &str, want: Option<u64>, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let path = root.join(rel);
    let io = |source| ImportError::Io { path: path.clone(), source };
    let (f, len) = crate::protocol::tar::open_regular_beneath(root, rel).map_err(io)?;
    match want {
        Some(w) if w != len => {
            return Err(ImportError::Bad(format!("{}: does not match its Release (size)", path.display())));
        }
        None if len > max => return Err(ImportError::Bad(format!("{} is larger than {max} bytes", path.display()))),
        _ => {}
    }
    let mut data = Vec::new();
    f.take(len.min(max)).read_to_end(&mut data).map_err(io)?;
    Ok(data)
}

/// A published distribution (or snapshot) tree of the other instance: its verified `Release`.
struct Tree {
    /// The repository's root (`<home>/repositories/<id>`), beneath which every read stays.
    root: PathBuf,
    /// `dists/<dist>` or `dists/<dist>/snapshots/<name>`.
    dir: String,
    release: String,
}

impl Tree {
    /// Read `InRelease` and verify it with `key`; `None` when the tree has none. Its Codename
    /// must be `codename` and its Suite `suite` (reprepro's, for mini-buildd): a tree copied
    /// or linked under another distribution's name is refused.
    fn open(root: &Path, dir: &str, key: &ArchiveKey, codename: &str, suite: &str) -> Result<Option<Tree>> {
        let rel = format!("{dir}/InRelease");
        if std::fs::symlink_metadata(root.join(&rel)).is_err() {
            return Ok(None);
        }
        let data = read_beneath(root, &rel, None, MAX_INRELEASE)?;
        let (payload, _) = crate::gpg::verify_clearsigned(&data, std::slice::from_ref(key.cert())).map_err(|e| {
            ImportError::Bad(format!("{}/{rel}: {e}; is the archive key the one that signs it?", root.display()))
        })?;
        let release =
            String::from_utf8(payload).map_err(|_| ImportError::Bad(format!("{}/{rel}: not UTF-8", root.display())))?;
        let tree = Tree { root: root.to_owned(), dir: dir.to_owned(), release };
        for (field, want) in [("Codename", codename), ("Suite", suite)] {
            let have = tree.field(field).unwrap_or_default();
            if have != want {
                return Err(ImportError::Bad(format!(
                    "{}/{rel}: its {field} is {have:?}, not {want:?}; a release is taken only where it was published",
                    root.display()
                )));
            }
        }
        Ok(Some(tree))
    }

    fn field(&self, name: &str) -> Option<String> {
        self.release.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(|o| o.trim().to_owned())
    }

    /// The entries of the index at `rel`, when the release lists it; its bytes must match.
    fn stanzas(&self, rel: &str) -> Result<Vec<Stanza>> {
        let files = crate::archive::index::release_files(&self.release);
        let Some(listed) = files.iter().find(|f| f.path == rel) else { return Ok(vec![]) };
        let path = format!("{}/{rel}", self.dir);
        let data = read_beneath(&self.root, &path, Some(listed.sums.size), MAX_INDEX)?;
        let sums = crate::deb::Checksums::of_bytes(&data);
        if sums.size != listed.sums.size || !sums.sha256.eq_ignore_ascii_case(&listed.sums.sha256) {
            return Err(ImportError::Bad(format!("{}/{path}: does not match its Release", self.root.display())));
        }
        let text = String::from_utf8(data).map_err(|_| ImportError::Bad(format!("{path}: not UTF-8")))?;
        crate::deb::control::parse_stanzas(&text).map_err(|e| ImportError::Bad(format!("{path}: {e}")))
    }

    /// Every component's sources and binaries.
    fn listed(&self, left: &mut Vec<String>) -> Result<BTreeMap<Component, Listed>> {
        use crate::deb::debfile::PackageType;
        let r = crate::deb::Release::parse(&self.release).map_err(|e| ImportError::Bad(e.to_string()))?;
        let arches: Vec<crate::deb::Arch> = parsed(r.architectures.clone(), &self.dir, left);
        let mut out = BTreeMap::new();
        for comp in parsed::<Component>(r.components.clone(), &self.dir, left) {
            let mut l = Listed { sources: self.stanzas(&format!("{comp}/source/Sources"))?, binaries: vec![] };
            for a in &arches {
                for st in self.stanzas(&format!("{comp}/binary-{a}/Packages"))? {
                    let kind = if st.get("Filename").is_some_and(|f| f.ends_with(".ddeb")) {
                        PackageType::Ddeb
                    } else {
                        PackageType::Deb
                    };
                    l.binaries.push((kind, st));
                }
                for st in self.stanzas(&format!("{comp}/debian-installer/binary-{a}/Packages"))? {
                    l.binaries.push((PackageType::Udeb, st));
                }
            }
            out.insert(comp, l);
        }
        Ok(out)
    }
}

/// Import the mini-buildd instance at `home` into the state directory `state`, which must not
/// exist or be empty: the import is made in a directory beside it, renamed into place only when
/// it succeeded, so a failed import leaves nothing behind. `key_file`: the archive key, when
/// gpg cannot export it from `home`.
pub fn import_into(state: &Path, home: &Path, key_file: Option<&Path>) -> Result<Report> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ImportError::Io { path, source }
    };
    if std::fs::read_dir(state).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ImportError::Bad(format!(
            "{} is not empty; import into a new state directory (--state DIR)",
            state.display()
        )));
    }
    let name = state.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into());
    let tmp = state.with_file_name(format!(".{name}.importing"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    let result = Instance::open(&tmp).map_err(ImportError::from).and_then(|inst| import(&inst, home, key_file));
    match result {
        Ok(report) => {
            if state.exists() {
                std::fs::remove_dir(state).map_err(io(state))?;
            }
            std::fs::rename(&tmp, state).map_err(io(state))?;
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Import the mini-buildd instance at `home` into `inst`, a state directory with no
/// configuration yet.
fn import(inst: &Instance, home: &Path, key_file: Option<&Path>) -> Result<Report> {
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
    let Some(daemon) = rows(&tables, "daemon").first() else {
        return Err(ImportError::Bad(format!("{} has no Daemon: is it a mini-buildd 2.x instance?", sqlite.display())));
    };
    let identity = text(daemon, "identity").to_owned();
    if identity.parse::<crate::deb::Identity>().is_err() {
        return Err(ImportError::Bad(format!("the instance's identity {identity:?} is not one buildbay takes")));
    }
    // The key: the one that signs the repositories.
    let keys = match key_file {
        Some(f) => ArchiveKey::from_secret_keyring(&read_beneath(
            f.parent().unwrap_or(Path::new("/")),
            &f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            None,
            16 << 20,
        )?)?,
        None => export_keys(&home.join(".gnupg"), inst.store.dir())?,
    };
    let mut first_tree = None;
    for r in rows(&tables, "repository") {
        let Ok(repo) = text(r, "identity").parse::<RepoId>() else { continue };
        let root = repos_dir.join(repo.as_str());
        if let Ok(rd) = std::fs::read_dir(root.join("dists"))
            && let Some(d) = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|d| root.join("dists").join(d).join("InRelease").exists())
        {
            first_tree = Some((root, d));
            break;
        }
    }
    let open = |k: &ArchiveKey, (root, d): &(PathBuf, String)| Tree::open(root, &format!("dists/{d}"), k, d, d);
    let key = match &first_tree {
        Some(t) => keys.into_iter().find(|k| open(k, t).ok().flatten().is_some()).ok_or_else(|| {
            ImportError::Bad(format!(
                "no secret key found signs {}/dists/{}/InRelease as published",
                t.0.display(),
                t.1
            ))
        })?,
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
        Some(t) => open(&key, t)?.and_then(|t| t.field("Origin")),
        None => None,
    };
    let origin = origin.unwrap_or_else(|| format!("Mini-Buildd archive {identity}"));
    let (objects, mut left) = objects(&tables, &origin, &key.fingerprint(), Utc::now());
    // Everything is read and verified before anything is written.
    let trees = read_trees(&tables, &repos_dir, &key, &mut left)?;
    let mut report = Report::default();
    inst.adopt_key(key.clone())?;
    report.carried.push(format!("archive key {}", key.fingerprint()));
    for o in objects {
        let (kind, id) = (o.kind(), o.id());
        // Checked as an edit is: what the editor would refuse does not come over either.
        let status = o.status().clone();
        match config::Object::from_fields(kind, o.fields(), status) {
            Ok(o) => {
                inst.put_object(&id, &o)?;
                report.carried.push(format!("{kind} {id}"));
            }
            Err(e) => left.push(format!("{kind} {id:?}: {e}")),
        }
    }
    for u in rows(&tables, "auth_user") {
        let name = text(u, "username");
        let email = text(u, "email").parse().ok();
        match crate::auth::import_user(&inst.store, name, text(u, "password"), role(u), email) {
            Ok(_) => report.carried.push(format!("user {name} ({})", role(u).as_str())),
            Err(e) => left.push(format!("user {name:?}: {e}")),
        }
    }
    // The repositories, distribution by distribution, rollbacks and snapshots included.
    let archive = inst.archive()?;
    for (repo, dists) in trees {
        let Some(conf) = inst.get::<Repository>(repo.as_str())? else { continue };
        if inst.get::<config::LayoutObject>(&conf.layout)?.is_none() {
            left.push(format!(
                "repository {repo}: layout {:?} is not one of buildbay's (Default, Default (no rollbacks), Debian Developer); its packages are not taken",
                conf.layout
            ));
            continue;
        }
        let from = repos_dir.join(repo.as_str());
        let ctx = match archive.prepare_repository(&repo).and_then(|()| archive.ctx(&repo)) {
            Ok(ctx) => ctx,
            Err(e) if e.is_input() => {
                left.push(format!("repository {repo}: {e}; its packages are not taken"));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let known = ctx.all_dists();
        for (name, read) in dists {
            let Some(dist) = known.iter().find(|d| d.to_string() == name) else {
                left.push(format!("{}/dists/{name}: not a distribution of repository {repo} here", from.display()));
                continue;
            };
            for (snap, listed) in &read.snapshots {
                let a = archive.adopt(dist, &from, listed)?;
                archive.snapshot_create(dist, snap)?;
                report.carried.push(format!("snapshot {dist}/{snap}: {} sources", a.sources));
                left.extend(a.skipped.into_iter().map(|s| format!("snapshot {snap} of {s}")));
            }
            let a = archive.adopt(dist, &from, &read.listed)?;
            if a.sources > 0 {
                report.carried.push(format!("{dist}: {} sources, {} binaries", a.sources, a.binaries));
            }
            left.extend(a.skipped);
        }
    }
    report.left = left;
    Ok(report)
}

/// Per repository, its distributions' trees by directory name.
type Trees = Vec<(RepoId, Vec<(String, Read)>)>;

/// A distribution's tree as read (and verified) before anything is written.
struct Read {
    listed: BTreeMap<Component, Listed>,
    snapshots: Vec<(crate::deb::SnapshotName, BTreeMap<Component, Listed>)>,
}

/// Every published tree of the repositories, verified against `key`: per repository, per
/// distribution directory. A tree that does not verify fails the import before it writes.
fn read_trees(tables: &Tables, repos_dir: &Path, key: &ArchiveKey, left: &mut Vec<String>) -> Result<Trees> {
    let mut out = Vec::new();
    for r in rows(tables, "repository") {
        let Ok(repo) = text(r, "identity").parse::<RepoId>() else { continue };
        let root = repos_dir.join(repo.as_str());
        let mut dists = Vec::new();
        for name in subdirs(&root.join("dists"), left) {
            let dir = format!("dists/{name}");
            let Some(tree) = Tree::open(&root, &dir, key, &name, &name)? else {
                left.push(format!("{}/{dir}: no InRelease", root.display()));
                continue;
            };
            let mut snapshots = Vec::new();
            for s in subdirs(&root.join(&dir).join("snapshots"), left) {
                match s.parse::<crate::deb::SnapshotName>() {
                    Ok(snap) => {
                        let sdir = format!("{dir}/snapshots/{s}");
                        let t = Tree::open(&root, &sdir, key, &name, &format!("{name}/snapshots/{s}"))?
                            .ok_or_else(|| ImportError::Bad(format!("{}/{sdir}: no InRelease", root.display())))?;
                        snapshots.push((snap, t.listed(left)?));
                    }
                    Err(e) => left.push(format!("snapshot {s:?} of {name}: {e}")),
                }
            }
            dists.push((name, Read { listed: tree.listed(left)?, snapshots }));
        }
        out.push((repo, dists));
    }
    Ok(out)
}

/// The directories in `dir`, sorted; a symbolic link is listed in `left`, not followed.
fn subdirs(dir: &Path, left: &mut Vec<String>) -> Vec<String> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match e.file_type() {
            Ok(t) if t.is_dir() && !name.starts_with('.') => names.push(name),
            Ok(t) if t.is_symlink() => left.push(format!("{:?}: a symbolic link, not followed", dir.join(&name))),
            _ => {}
        }
    }
    names.sort();
    names
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

    #[test]
    fn build_settings_keep_what_is_valid_and_list_what_is_not() {
        let mut left = Vec::new();
        let b = build_settings(
            serde_json::json!({
                "lintian_mode": "warnfail",
                "lintian_extra_options": "--info",
                "piuparts_extra_options": "--info --evil",
                "sbuild_setup_blocks": "no-such-block",
                "internal_apt_priority": 500,
            }),
            "distribution bookworm",
            &mut left,
        );
        assert_eq!(b.lintian_mode, crate::protocol::QaMode::Warnfail, "{left:?}");
        assert_eq!(b.internal_apt_priority, 500);
        assert!(b.piuparts_extra_options.is_empty());
        assert_eq!(b.sbuild_setup_blocks, crate::protocol::BuildSettings::default().sbuild_setup_blocks);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().any(|l| l.contains("piuparts_extra_options takes")), "{left:?}");
        assert!(left.iter().any(|l| l.contains("sbuild_setup_blocks takes")), "{left:?}");
    }
}
