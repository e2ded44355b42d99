//! Events (mini-buildd §5.6): what happened to a package, persisted in redb and logged to the journal.

use crate::store::{self, EVENTS, Result};
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

    /// Persist within the caller's transaction, so the event exists exactly when its change does.
    pub fn record(&self, tx: &WriteTransaction) -> Result<()> {
        let mut t = tx.open_table(EVENTS)?;
        let micros = self.timestamp.timestamp_micros().max(0) as u64;
        let mut seq = 0u32;
        while t.get((micros, seq))?.is_some() {
            seq += 1;
        }
        t.insert((micros, seq), store::encode(self).as_slice())?;
        Ok(())
    }

    /// Write the event to the log (the journal, with structured fields, when there is one).
    pub fn log(&self) {
        tracing::info!(
            BUILDBAY_EVENT = self.kind.as_str(),
            BUILDBAY_SOURCE = %self.source,
            BUILDBAY_VERSION = %self.version,
            BUILDBAY_DIST = %self.distribution,
            "{} {} {} {}",
            self.kind.as_str(),
            self.source,
            self.version,
            self.distribution
        );
    }
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
