//! State in redb: configuration objects, the package index of every distribution, events.
//!
//! The database file is `<state>/buildbay.redb`. redb allows one process at a time, which is how
//! an offline command learns that a daemon holds the state directory. Readers never block: redb
//! serves read transactions from a snapshot while one writer works.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};

/// Bump on every incompatible change, and add a step to [`Store::migrate`].
pub const SCHEMA_VERSION: u64 = 2;

pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `(kind, id)` → JSON of a configuration object.
pub const CONFIG: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("config");
/// `dist/source` → JSON `SourceRecord`.
pub const DIST_SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("dist_sources");
/// `dist/component/arch/package` → the `Packages` stanza.
pub const DIST_BINARIES: TableDefinition<&str, &[u8]> = TableDefinition::new("dist_binaries");
/// `dist/component/source` → the `Sources` stanza.
pub const DIST_DSCS: TableDefinition<&str, &[u8]> = TableDefinition::new("dist_dscs");
/// `repo/pool path` → number of distribution or snapshot records listing the file.
pub const POOL_REFS: TableDefinition<&str, u64> = TableDefinition::new("pool_refs");
/// `repo/pool path` of a `.deb` or `.ddeb` → the paths it installs, one per line (for `Contents`;
/// dropped with the pool file's last reference).
pub const DEB_CONTENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deb_contents");
/// `repo/dist` → 1 when the published tree is behind the index.
pub const DIRTY: TableDefinition<&str, u8> = TableDefinition::new("dirty");
/// `repo/dist` → JSON `Published` (generation and file list of what apt sees).
pub const PUBLISHED: TableDefinition<&str, &[u8]> = TableDefinition::new("published");
/// `dist/name` → JSON list of source records frozen in a snapshot.
pub const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// `name` → JSON user (see `auth`).
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// SHA-256 of a session id → JSON session.
pub const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// SHA-256 of an API token → JSON token.
pub const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// `(timestamp µs, seq)` → JSON event.
pub const EVENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("events");
/// `(source, timestamp µs, seq)` → (): the events of one source package (schema 2).
pub const EVENTS_BY_SOURCE: TableDefinition<(&str, u64, u32), ()> = TableDefinition::new("events_by_source");
/// `(timestamp µs, seq)` of an event → (): events whose notification mail is still to be
/// worked out (written with the event, taken by `mail`).
pub const MAIL_PENDING: TableDefinition<(u64, u32), ()> = TableDefinition::new("mail_pending");
/// Sequence number → JSON `mail::Queued`: notification mail waiting for the SMTP server.
pub const MAIL_QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("mail_queue");
/// Spool id → JSON `incoming::Upload` (the queue of uploads and build results).
pub const UPLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("uploads");
/// `.changes` file name → spool id of its latest claim (to recognise leftovers after a crash).
pub const CLAIMED: TableDefinition<&str, u64> = TableDefinition::new("claimed");
/// Spool ids of uploads whose state is not final (the packager's work list).
pub const PENDING: TableDefinition<u64, u8> = TableDefinition::new("pending");
/// Upload key `<source>/<version>/<timecode>` → spool id.
pub const UPLOAD_KEYS: TableDefinition<&str, u64> = TableDefinition::new("upload_keys");
/// bkey `<source>/<version>/<timecode>/<arch>` → JSON `packager::BuildRequest`, waiting for a builder.
pub const BUILD_QUEUE: TableDefinition<&str, &[u8]> = TableDefinition::new("build_queue");
/// keyring package version → fingerprint of the archive key it ships (`keyring`).
pub const KEYRING_BUILDS: TableDefinition<&str, &str> = TableDefinition::new("keyring_builds");
/// bkey → JSON `builder::Job`: builds started and not yet taken by the packager.
pub const BUILDS: TableDefinition<&str, &[u8]> = TableDefinition::new("builds");

/// Free bytes for unprivileged users on the file system holding `path`; `None`: cannot tell.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    nix::sys::statvfs::statvfs(path).ok().map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state directory {0} is in use by a running buildbay daemon; stop it (systemctl stop buildbay) or use its API instead"
    )]
    InUse(PathBuf),
    #[error("cannot create state directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("state database: {0}")]
    Db(String),
    #[error(
        "state directory {path} has schema version {found}, newer than this buildbay supports ({SCHEMA_VERSION}); upgrade buildbay"
    )]
    TooNew { path: PathBuf, found: u64 },
    #[error("state record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(redb::Error, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// `From` every redb error for a module error with a `Store(StoreError)` variant, so that `?`
/// works on redb calls there too.
#[macro_export]
macro_rules! from_redb_errors {
    ($target:ident) => {
        $crate::from_redb_errors!($target, redb::TableError, redb::StorageError, redb::CommitError, redb::TransactionError);
    };
    ($target:ident, $($t:ty),*) => {$(
        impl From<$t> for $target {
            fn from(e: $t) -> $target {
                $target::Store(e.into())
            }
        }
    )*};
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub struct Store {
    db: Database,
    dir: PathBuf,
}

impl Store {
    /// Open (or create) the state directory.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir { path: dir.to_owned(), source })?;
        let db = match Database::create(dir.join("buildbay.redb")) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse(dir.to_owned())),
            Err(e) => return Err(StoreError::Db(e.to_string())),
        };
        let store = Store { db, dir: dir.to_owned() };
        store.migrate()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Create the tables, stamp the schema version, and upgrade older state.
    fn migrate(&self) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::TooNew { path: self.dir.clone(), found: v });
                }
                Some(1) => {
                    index_events_by_source(&tx)?;
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                // Future: `Some(2) => migrate_2_to_3(&tx)?`, one step per version.
                _ => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
            }
            tx.open_table(CONFIG)?;
            for t in [DIST_SOURCES, DIST_BINARIES, DIST_DSCS, PUBLISHED, SNAPSHOTS, USERS, SESSIONS, TOKENS] {
                tx.open_table(t)?;
            }
            tx.open_table(POOL_REFS)?;
            tx.open_table(DEB_CONTENTS)?;
            tx.open_table(DIRTY)?;
            tx.open_table(EVENTS)?;
            tx.open_table(EVENTS_BY_SOURCE)?;
            tx.open_table(UPLOADS)?;
            tx.open_table(CLAIMED)?;
            tx.open_table(PENDING)?;
            tx.open_table(UPLOAD_KEYS)?;
            tx.open_table(BUILD_QUEUE)?;
            tx.open_table(BUILDS)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn schema_version(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get("schema_version")?.map(|v| v.value()).unwrap_or(0))
    }

    pub fn read(&self) -> Result<redb::ReadTransaction> {
        Ok(self.db.begin_read()?)
    }

    pub fn write(&self) -> Result<redb::WriteTransaction> {
        Ok(self.db.begin_write()?)
    }
}

/// The one field of a stored event its index needs.
#[derive(serde::Deserialize)]
pub struct EventSource {
    pub source: String,
}

/// Schema 1 → 2: index the stored events by source package. An event that does not decode is
/// left out of the index (and still expires), rather than keeping the daemon from starting.
fn index_events_by_source(tx: &redb::WriteTransaction) -> Result<()> {
    let events = tx.open_table(EVENTS)?;
    let mut index = tx.open_table(EVENTS_BY_SOURCE)?;
    for item in events.iter()? {
        let (k, v) = item?;
        let (micros, seq) = k.value();
        match serde_json::from_slice::<EventSource>(v.value()) {
            Ok(e) => {
                index.insert((e.source.as_str(), micros, seq), ())?;
            }
            Err(e) => tracing::warn!("event {micros}/{seq} does not decode ({e}); it is not indexed"),
        }
    }
    Ok(())
}

/// Decode a JSON record.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("state records serialize")
}

/// Get a JSON record from a string-keyed table.
pub fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>> {
    match table.get(key)? {
        Some(v) => Ok(Some(decode(key, v.value())?)),
        None => Ok(None),
    }
}

/// All `(key, value)` pairs of a string-keyed table whose key starts with `prefix`.
pub fn scan_prefix<V: redb::Value + 'static>(
    table: &impl ReadableTable<&'static str, V>,
    prefix: &str,
    mut f: impl FnMut(&str, V::SelfType<'_>) -> Result<()>,
) -> Result<()> {
    for item in table.range(prefix..)? {
        let (k, v) = item?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        f(key, v.value())?;
    }
    Ok(())
}

/// A configuration object: stored in [`CONFIG`] under its kind, so that the type says where
/// (`get::<Repository>(id)`; a kind and a type that do not belong together do not compile).
pub trait ConfigObject: Serialize + DeserializeOwned {
    /// The store's key prefix.
    const KIND: &'static str;
}

/// A configuration object by its id.
pub fn get_config<T: ConfigObject>(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    id: &str,
) -> Result<Option<T>> {
    match table.get((T::KIND, id))? {
        Some(v) => Ok(Some(decode(&format!("{}/{id}", T::KIND), v.value())?)),
        None => Ok(None),
    }
}

pub fn list_config<T: ConfigObject>(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
) -> Result<Vec<T>> {
    Ok(list_config_entries(table)?.into_iter().map(|(_, v)| v).collect())
}

/// Every object of a kind with its id.
pub fn list_config_entries<T: ConfigObject>(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
) -> Result<Vec<(String, T)>> {
    let kind = T::KIND;
    let mut out = Vec::new();
    for item in table.range((kind, "")..)? {
        let (k, v) = item?;
        let (k_kind, id) = k.value();
        if k_kind != kind {
            break;
        }
        out.push((id.to_owned(), decode(&format!("{kind}/{id}"), v.value())?));
    }
    Ok(out)
}

/// Remove whatever is at `path`, if anything: a file, a symlink itself (never what it names), a
/// directory tree.
pub fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Write a file durably and atomically: a fresh temporary beside it (never through an existing
/// name or symlink), synced, then renamed over the target.
pub fn write_file_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp =
        path.with_file_name(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    // Whatever is there (a leftover, or what a build planted: a symlink, a directory) goes.
    remove_any(&tmp)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_twice_is_in_use_and_schema_is_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        match Store::open(dir.path()) {
            Err(StoreError::InUse(_)) => {}
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("second open must fail"),
        }
        drop(s);
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let tx = s.write().unwrap();
            tx.open_table(META).unwrap().insert("schema_version", SCHEMA_VERSION + 1).unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(Store::open(dir.path()), Err(StoreError::TooNew { .. })));
    }
}
