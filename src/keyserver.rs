//! Uploader keys by id, as mini-buildd's `set_user_key` takes a one-line key: a fingerprint or
//! long key id, found among the keys this instance knows, else fetched from an HKP keyserver
//! (`serve --keyserver`).
//!
//! The keyserver is as hostile as any peer: its answer is read up to [`MAX_ANSWER`] bytes, and
//! only the key asked for is kept (a primary key or subkey whose fingerprint or long id it is);
//! anything else it sends is refused. The id is parsed once, to hex, before it reaches a URL.

use crate::gpg::Cert;
use std::time::Duration;

/// The most bytes a keyserver's answer is read to.
pub const MAX_ANSWER: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KeyserverError {
    #[error(
        "{0:?} is not a key id: give the key's fingerprint (40 hex digits) or long id (16), or the ASCII-armored key itself"
    )]
    NotAnId(String),
    #[error(
        "key {0} is not known here and no keyserver is set (serve --keyserver); give the ASCII-armored key instead"
    )]
    NoKeyserver(KeyId),
    #[error("the keyserver {server} cannot give key {id} now ({why}); try again later, or give the ASCII-armored key")]
    Unreachable { server: String, id: KeyId, why: String },
    #[error("the keyserver {server} has no key {id}; check the id, or give the ASCII-armored key")]
    NotFound { server: String, id: KeyId },
    #[error("the keyserver {server} answered with no key {id} ({why}); its answer is refused")]
    Mismatch { server: String, id: KeyId, why: String },
}

impl KeyserverError {
    /// Whether trying again later may help (the keyserver did not answer).
    pub fn is_retry(&self) -> bool {
        matches!(self, KeyserverError::Unreachable { .. })
    }
}

/// A fingerprint (40 hex digits) or long key id (16), upper-case. mini-buildd takes them
/// upper-case only; here `0x`, lower case and spaces (as gpg prints fingerprints) are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId(String);

impl std::str::FromStr for KeyId {
    type Err = KeyserverError;

    fn from_str(s: &str) -> Result<KeyId, KeyserverError> {
        let bad = || KeyserverError::NotAnId(s.chars().take(80).collect());
        let t = s.trim();
        let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
        let hex: String = t.chars().filter(|c| *c != ' ').collect();
        if !(hex.len() == 16 || hex.len() == 40) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(KeyId(hex.to_ascii_uppercase()))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `cert` is the key `id` names: its primary key or one of its subkeys, by fingerprint
/// or long id.
pub fn names(cert: &Cert, id: &KeyId) -> bool {
    cert.keys().any(|k| {
        let key = k.key();
        key.fingerprint().to_hex() == id.0 || key.keyid().to_hex() == id.0
    })
}

/// The key `id` names among `certs`.
pub fn select(certs: impl IntoIterator<Item = Cert>, id: &KeyId) -> Option<Cert> {
    certs.into_iter().find(|c| names(c, id))
}

/// Fetch the key `id` from an HKP keyserver (`http(s)://host[:port]`), the way gpg's
/// `--recv-keys` asks (`/pks/lookup?op=get&options=mr&search=0x<id>`).
pub fn fetch(keyserver: &str, id: &KeyId) -> Result<Cert, KeyserverError> {
    let server = keyserver.trim_end_matches('/').to_owned();
    let url = format!("{server}/pks/lookup?op=get&options=mr&search=0x{id}");
    let agent = crate::http::agent(Duration::from_secs(20), 10);
    let unreachable = |why: String| KeyserverError::Unreachable { server: server.clone(), id: id.clone(), why };
    let mut answer = agent.get(&url).call().map_err(|e| unreachable(e.to_string()))?;
    match answer.status().as_u16() {
        200 => {}
        404 => return Err(KeyserverError::NotFound { server, id: id.clone() }),
        code => return Err(unreachable(format!("it answered {code}"))),
    }
    let body = answer
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| unreachable(format!("{e} (an answer is read up to {MAX_ANSWER} bytes)")))?;
    let mismatch = |why: String| KeyserverError::Mismatch { server: server.clone(), id: id.clone(), why };
    let certs = crate::gpg::read_keyring(&body).map_err(|e| mismatch(format!("not an OpenPGP key: {e}")))?;
    let got: Vec<String> = certs.iter().map(|c| c.fingerprint().to_hex()).collect();
    select(certs, id)
        .ok_or_else(|| mismatch(format!("it sent {}", if got.is_empty() { "none".into() } else { got.join(", ") })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpg::{ArchiveKey, KeyAlgo};

    #[test]
    fn key_ids_are_hex_fingerprints_or_long_ids() {
        let fpr = "0123456789ABCDEF0123456789ABCDEF01234567";
        assert_eq!(fpr.parse::<KeyId>().unwrap().to_string(), fpr);
        assert_eq!(format!("0x{}", fpr.to_lowercase()).parse::<KeyId>().unwrap().to_string(), fpr);
        assert_eq!("0123 4567 89AB CDEF 0123  4567 89AB CDEF 0123 4567".parse::<KeyId>().unwrap().to_string(), fpr);
        assert_eq!("89abcdef01234567".parse::<KeyId>().unwrap().to_string(), "89ABCDEF01234567");
        for bad in ["", "hello", "ABCDEF01", "0123456789ABCDEF0", "0123456789ABCDEG", "0x", "ABCDEF0123456789&op=x"] {
            let e = bad.parse::<KeyId>().unwrap_err();
            assert!(matches!(e, KeyserverError::NotAnId(_)), "{bad:?}");
        }
    }

    #[test]
    fn only_the_key_asked_for_is_selected() {
        let a = ArchiveKey::generate("A <a@example.org>", KeyAlgo::Ed25519).unwrap();
        let b = ArchiveKey::generate("B <b@example.org>", KeyAlgo::Ed25519).unwrap();
        let by_fpr: KeyId = a.fingerprint().parse().unwrap();
        let by_long: KeyId = a.cert().keyid().to_hex().parse().unwrap();
        let mut ids = vec![by_fpr.clone(), by_long];
        ids.extend(a.cert().keys().subkeys().map(|k| k.key().fingerprint().to_hex().parse().unwrap()));
        for id in &ids {
            let got = select([b.cert().clone(), a.cert().clone()], id).unwrap();
            assert_eq!(got.fingerprint().to_hex(), a.fingerprint());
        }
        assert!(select([b.cert().clone()], &by_fpr).is_none(), "another key is not the one asked for");
    }
}
