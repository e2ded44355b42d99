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
