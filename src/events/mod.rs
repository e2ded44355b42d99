//! Events (mini-buildd §5.6): what happened to a package, persisted in redb and logged to the journal.

use crate::store::{self, EVENTS, EVENTS_BY_SOURCE, MAIL_PENDING, Result};
use chrono::{DateTime, Utc};
use redb::{ReadableTable, WriteTransaction};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Rejected,
    Packaging,
    Building,
    Built,
    Installed,
    Failed,
    Migrated,
    Removed,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Rejected => "REJECTED",
            EventType::Packaging => "PACKAGING",
            EventType::Building => "BUILDING",
            EventType::Built => "BUILT",
            EventType::Installed => "INSTALLED",
            EventType::Failed => "FAILED",
            EventType::Migrated => "MIGRATED",
            EventType::Removed => "REMOVED",
        }
    }
}

/// mini-buildd's event JSON: `{type, distribution, source, version, timestamp, extra}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub distribution: String,
    pub source: String,
    pub version: String,
    /// Python's `isoformat()` of an aware UTC time, as mini-buildd's clients parse it.
    #[serde(with = "iso")]
    pub timestamp: DateTime<Utc>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    pub fn new(kind: EventType, distribution: impl ToString, source: impl ToString, version: impl ToString) -> Event {
        Event {
            kind,
            distribution: distribution.to_string(),
            source: source.to_string(),
            version: version.to_string(),
            timestamp: Utc::now(),
            extra: serde_json::Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Event {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// Persist within the caller's transaction, so the event exists exactly when its change does
    /// (and so does the mark that its notification mail is to be sent).
    pub fn record(&self, tx: &WriteTransaction) -> Result<()> {
        let mut t = tx.open_table(EVENTS)?;
        let micros = self.timestamp.timestamp_micros().max(0) as u64;
        let mut seq = 0u32;
        while t.get((micros, seq))?.is_some() {
            seq += 1;
        }
        t.insert((micros, seq), store::encode(self).as_slice())?;
        tx.open_table(EVENTS_BY_SOURCE)?.insert((self.source.as_str(), micros, seq), ())?;
        // Its notification mail is worked out later, but is never lost: the mark commits with it.
        tx.open_table(MAIL_PENDING)?.insert((micros, seq), ())?;
        Ok(())
    }

    /// Write the event to the log (the journal, with structured fields, when there is one).
    pub fn log(&self) {
        let detail = self
            .extra
            .get("error")
            .and_then(|e| e.get("detail"))
            .and_then(|d| d.as_str())
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        match self.arch() {
            Some(arch) => tracing::info!(
                BUILDBAY_EVENT = self.kind.as_str(),
                BUILDBAY_SOURCE = %self.source,
                BUILDBAY_VERSION = %self.version,
                BUILDBAY_DIST = %self.distribution,
                BUILDBAY_ARCH = %arch,
                "{} {} {} {} {arch}{detail}",
                self.kind.as_str(),
                self.source,
                self.version,
                self.distribution
            ),
            None => tracing::info!(
                BUILDBAY_EVENT = self.kind.as_str(),
                BUILDBAY_SOURCE = %self.source,
                BUILDBAY_VERSION = %self.version,
                BUILDBAY_DIST = %self.distribution,
                "{} {} {} {}{detail}",
                self.kind.as_str(),
                self.source,
                self.version,
                self.distribution
            ),
        }
    }

    /// The architecture of a per-architecture event (BUILDING, BUILT).
    pub fn arch(&self) -> Option<&str> {
        matches!(self.kind, EventType::Building | EventType::Built)
            .then(|| self.extra.get("architecture").and_then(|a| a.as_str()))
            .flatten()
    }

    /// mini-buildd's file name: `<source>_<version>_<TYPE>[_<arch>].json`.
    pub fn file_name(&self) -> String {
        let clean = |s: &str| {
            s.chars().map(|c| if c.is_ascii_alphanumeric() || "+-.~".contains(c) { c } else { '_' }).collect::<String>()
        };
        // A source-less event (a snapshot retention removed) is named by its distribution.
        let mut n = if self.source.is_empty() {
            format!("{}_{}", clean(&self.distribution), self.kind.as_str())
        } else {
            format!("{}_{}_{}", clean(&self.source), clean(&self.version), self.kind.as_str())
        };
        if let Some(a) = self.arch() {
            n.push('_');
            n.push_str(&clean(a));
        }
        n + ".json"
    }
}

/// mini-buildd's RFC 7807 error object, as in an event's `extra.error` and an API error body.
pub fn problem(status: u16, title: &str, detail: &str) -> serde_json::Value {
    serde_json::json!({"type": "about:blank", "status": status, "title": title, "detail": detail, "instance": "about:blank"})
}

/// Timestamps as Python's `datetime.isoformat()` writes them: `2024-05-01T12:00:00.123456+00:00`.
pub mod iso {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(t: &DateTime<Utc>) -> String {
        t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }

    /// Parse an aware ISO 8601 time (`+00:00`, `Z`, any offset); naive times are refused.
    pub fn parse(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&s.replace(' ', "+")).ok().map(|t| t.with_timezone(&Utc))
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not an aware ISO 8601 time: {s:?}")))
    }
}

/// Events at or after `after`, oldest first.
pub fn since(store: &store::Store, after: Option<DateTime<Utc>>) -> Result<Vec<Event>> {
    let tx = store.read()?;
    let t = tx.open_table(EVENTS)?;
    let from = after.map_or(0, |a| a.timestamp_micros().max(0) as u64);
    let mut out = Vec::new();
    for item in t.range((from, 0)..)? {
        let (k, v) = item?;
        out.push(store::decode(&format!("event {:?}", k.value()), v.value())?);
    }
    Ok(out)
}

/// The newest `n` events that `keep` accepts, newest first. Reads backwards and stops there.
pub fn newest(store: &store::Store, n: usize, keep: impl Fn(&Event) -> bool) -> Result<Vec<Event>> {
    let tx = store.read()?;
    let t = tx.open_table(EVENTS)?;
    let mut out = Vec::new();
    for item in t.range::<(u64, u32)>(..)?.rev() {
        if out.len() >= n {
            break;
        }
        let (k, v) = item?;
        let e: Event = store::decode(&format!("event {:?}", k.value()), v.value())?;
        if keep(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

/// At most the newest `n` events after `after`, oldest first (a replay for a client that missed
/// them: bounded however old `after` is).
pub fn replay(store: &store::Store, after: DateTime<Utc>, n: usize) -> Result<Vec<Event>> {
    let tx = store.read()?;
    let t = tx.open_table(EVENTS)?;
    let from = after.timestamp_micros().max(0) as u64;
    let mut out = Vec::new();
    for item in t.range((from, 0)..)?.rev() {
        if out.len() >= n {
            break;
        }
        let (k, v) = item?;
        let e: Event = store::decode(&format!("event {:?}", k.value()), v.value())?;
        if e.timestamp > after {
            out.push(e);
        }
    }
    out.reverse();
    Ok(out)
}

/// The newest `n` events of one source package, newest first (through the source index).
pub fn of_source(store: &store::Store, source: &str, n: usize) -> Result<Vec<Event>> {
    let tx = store.read()?;
    let index = tx.open_table(EVENTS_BY_SOURCE)?;
    let events = tx.open_table(EVENTS)?;
    let mut out = Vec::new();
    for item in index.range((source, 0, 0)..=(source, u64::MAX, u32::MAX))?.rev().take(n) {
        let (k, _) = item?;
        let (_, micros, seq) = k.value();
        if let Some(v) = events.get((micros, seq))? {
            out.push(store::decode(&format!("event {micros}/{seq}"), v.value())?);
        }
    }
    Ok(out)
}

/// Delete events older than `before`; returns how many.
pub fn expire(store: &store::Store, before: DateTime<Utc>) -> Result<usize> {
    let until = before.timestamp_micros().max(0) as u64;
    let tx = store.write()?;
    let n = {
        let mut t = tx.open_table(EVENTS)?;
        let mut index = tx.open_table(EVENTS_BY_SOURCE)?;
        // An undecodable event still expires; it just has no index entry to remove.
        let old: Vec<((u64, u32), Option<store::EventSource>)> = t
            .range(..(until, 0))?
            .map(|i| i.map(|(k, v)| (k.value(), serde_json::from_slice(v.value()).ok())))
            .collect::<std::result::Result<_, _>>()?;
        for ((micros, seq), e) in &old {
            t.remove((*micros, *seq))?;
            if let Some(e) = e {
                index.remove((e.source.as_str(), *micros, *seq))?;
            }
        }
        old.len()
    };
    tx.commit()?;
    Ok(n)
}

/// Event hooks: every executable in `<state>/etc/event-hooks/` whose name matches mini-buildd's
/// glob `[!_.]*[!~]` runs, in name order, as `<hook> <event.json>`, with a timeout. Failures are
/// logged and change nothing else.
#[derive(Debug, Clone)]
pub struct Hooks {
    pub dir: std::path::PathBuf,
    /// Where the event JSON files are written (`<state>/var/events/`).
    pub events_dir: std::path::PathBuf,
    pub timeout: std::time::Duration,
}

impl Hooks {
    fn hooks(&self) -> Vec<std::path::PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return vec![] };
        let mut v: Vec<std::path::PathBuf> = rd
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                !n.starts_with(['_', '.']) && !n.ends_with('~') && !n.is_empty()
            })
            .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// Write the event's JSON and run every hook on it.
    pub async fn run(&self, event: &Event) {
        let hooks = self.hooks();
        // `_archive` is no package name: source-less events never share a package's directory.
        let dir = self.events_dir.join(if event.source.is_empty() { "_archive" } else { event.source.as_str() });
        let path = dir.join(event.file_name());
        let json = serde_json::to_vec_pretty(event).unwrap_or_default();
        if let Err(e) = tokio::fs::create_dir_all(&dir).await.and(tokio::fs::write(&path, json).await) {
            tracing::warn!("cannot write the event file {}: {e}", path.display());
            return;
        }
        for hook in hooks {
            let mut cmd = tokio::process::Command::new(&hook);
            cmd.arg(&path).kill_on_drop(true).stdin(std::process::Stdio::null());
            match tokio::time::timeout(self.timeout, cmd.output()).await {
                Ok(Ok(out)) if out.status.success() => {
                    tracing::info!(hook = %hook.display(), event = event.kind.as_str(), "event hook ran")
                }
                Ok(Ok(out)) => tracing::warn!(
                    hook = %hook.display(),
                    "event hook failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Ok(Err(e)) => tracing::warn!(hook = %hook.display(), "event hook did not start: {e}"),
                Err(_) => tracing::warn!(hook = %hook.display(), "event hook killed after {:?}", self.timeout),
            }
        }
    }
}

/// The event bus: every event, once persisted, goes to the log and to every live subscriber
/// (long-poll, SSE, the web pages).
#[derive(Clone)]
pub struct Bus {
    tx: tokio::sync::broadcast::Sender<Event>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus { tx: tokio::sync::broadcast::channel(1024).0 }
    }

    pub fn publish(&self, event: &Event) {
        event.log();
        let _ = self.tx.send(event.clone());
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> (std::path::PathBuf, store::Store) {
        let dir = std::env::temp_dir().join(format!("bb-events-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = store::Store::open(&dir).expect("store");
        (dir, s)
    }

    fn put(s: &store::Store, source: &str, version: &str, secs: i64) {
        let mut e = Event::new(EventType::Installed, "bookworm-test-unstable", source, version);
        e.timestamp = DateTime::from_timestamp(secs, 0).expect("time");
        let tx = s.write().unwrap();
        e.record(&tx).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn newest_and_per_source_read_backwards_and_expire_cleans_the_index() {
        let (dir, s) = store("newest");
        for i in 0..10 {
            put(&s, if i % 3 == 0 { "rare" } else { "common" }, &format!("1.{i}"), 1_000 + i);
        }
        let newest: Vec<String> = newest(&s, 3, |_| true).unwrap().into_iter().map(|e| e.version).collect();
        assert_eq!(newest, ["1.9", "1.8", "1.7"]);
        let rare: Vec<String> = of_source(&s, "rare", 10).unwrap().into_iter().map(|e| e.version).collect();
        assert_eq!(rare, ["1.9", "1.6", "1.3", "1.0"]);
        assert_eq!(of_source(&s, "rar", 10).unwrap().len(), 0, "a prefix of a name is another source");
        assert_eq!(expire(&s, DateTime::from_timestamp(1_004, 0).unwrap()).unwrap(), 4);
        let rare: Vec<String> = of_source(&s, "rare", 10).unwrap().into_iter().map(|e| e.version).collect();
        assert_eq!(rare, ["1.9", "1.6"]);
        let tx = s.read().unwrap();
        assert_eq!(
            redb::ReadableTableMetadata::len(&tx.open_table(EVENTS_BY_SOURCE).unwrap()).unwrap(),
            6,
            "expired events leave the index"
        );
        drop(tx);
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn schema_1_state_gets_its_events_indexed() {
        let (dir, s) = store("migrate");
        put(&s, "old", "1.0", 1_000);
        put(&s, "old", "1.1", 1_001);
        // Make it look like schema 1: no index yet.
        let tx = s.write().unwrap();
        tx.delete_table(EVENTS_BY_SOURCE).unwrap();
        tx.open_table(store::META).unwrap().insert("schema_version", 1).unwrap();
        tx.commit().unwrap();
        drop(s);
        let s = store::Store::open(&dir).unwrap();
        assert_eq!(s.schema_version().unwrap(), store::SCHEMA_VERSION);
        assert_eq!(of_source(&s, "old", 10).unwrap().len(), 2);
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
