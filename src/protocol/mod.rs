//! mini-buildd's build protocol (§5.2–5.3) as types: the keys, the QA modes, the build request a
//! packager sends to a builder, the build result that comes back, their signing, and the tar
//! each carries. Written and read only here, byte-compatible with mini-buildd 2.x: a request or
//! result is a clear-signed deb822 `.changes` with `X-Mini-Buildd-*` fields and one or two files.
//!
//! Everything read is parsed from the payload that signature verification returned, and every
//! field is parsed into its type at once: what leaves this module is data, never text to paste.
//! Pure, but for reading and writing the files named.

pub mod key;
pub mod options;
pub mod qa;
pub mod remote;
pub mod request;
pub mod result;
pub mod settings;
pub mod tar;

pub use key::{BuildKey, KeyError, Timecode, UploadKey};
pub use qa::{Check, QaMode};
pub use request::{Backend, BuildRequest, Phase, Resolver};
pub use result::BuildResult;
pub use settings::{Blocks, BuildSettings, ToolOptions};

use crate::deb::Stanza;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a request or result is refused: always about the file (final), with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Gpg(#[from] crate::gpg::GpgError),
    #[error("{0}")]
    Control(#[from] crate::deb::control::ControlError),
    #[error("field {field}: {why}")]
    Field { field: String, why: String },
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("its tar: {0}")]
    Tar(String),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

pub(crate) fn field_err(field: &str, why: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Field { field: field.to_owned(), why: why.to_string() }
}

/// `X-Mini-Buildd-<name>`.
pub fn xfield(name: &str) -> String {
    format!("X-Mini-Buildd-{name}")
}

/// An `X-Mini-Buildd-<name>` field, if present.
fn get<'a>(st: &'a Stanza, name: &str) -> Option<&'a str> {
    st.get(&xfield(name)).map(str::trim).filter(|v| !v.is_empty())
}

/// An `X-Mini-Buildd-<name>` field parsed into its type, if present.
fn parse<T: std::str::FromStr>(st: &Stanza, name: &str) -> Result<Option<T>, ProtocolError>
where
    T::Err: std::fmt::Display,
{
    get(st, name).map(|v| v.parse::<T>().map_err(|e| field_err(&xfield(name), e))).transpose()
}

/// A URL of a peer, as a request names it (`Upload-To`, `Packager`): a scheme this protocol
/// uses, a host, and only URL characters.
pub fn check_url(field: &str, url: &str) -> Result<(), ProtocolError> {
    let ok_scheme = ["http://", "https://", "ftp://", "ftps://"].iter().any(|s| url.starts_with(s));
    let ok_chars = url.bytes().all(|c| c.is_ascii_alphanumeric() || b":/.-_~[]%@+".contains(&c));
    if ok_scheme && ok_chars && url.len() <= 512 {
        Ok(())
    } else {
        Err(field_err(field, format!("{url:?} is not a http(s) or ftp(s) URL")))
    }
}

/// The first uid of the build slots' user namespaces (nspawn machines): slot N's machine has
/// the 65536 uids from `BUILD_UID_BASE + N × 65536`, above every range systemd-nspawn picks.
pub const BUILD_UID_BASE: u32 = 0x7000_0000;

static LAST: AtomicU64 = AtomicU64::new(0);

/// Microseconds since the epoch, strictly increasing within the process (timecodes, spool ids).
pub fn fresh_micros() -> u64 {
    let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    if prev >= now { LAST.fetch_add(1, Ordering::SeqCst) + 1 } else { now }
}
