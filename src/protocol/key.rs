//! The keys of mini-buildd's protocol: the timecode, an upload's key
//! `<source>/<version>/<timecode>` and a build's key `<source>/<version>/<timecode>/<arch>`.
//!
//! Every segment is validated when a key is parsed, so a key is safe as a path below a
//! directory (no segment is empty, `.`, `..` or holds a `/`), in a unit name, and as an argument.

use crate::deb::{Arch, PackageName, Version};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {why}")]
pub struct KeyError {
    pub what: &'static str,
    pub value: String,
    pub why: String,
}

fn key_err(what: &'static str, value: &str, why: impl Into<String>) -> KeyError {
    KeyError { what, value: value.chars().take(200).collect(), why: why.into() }
}

/// When an upload entered the pipeline, as its unique part of the key: `YYYYMMDD-HHMMSS-ffffff`
/// (buildbay) or `YYYYMMDD:HHMMSS:ffffff` (mini-buildd 2.x), UTC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timecode(String);

impl Timecode {
    /// A new timecode, unique within the process (strictly increasing microseconds).
    pub fn now() -> Timecode {
        let id = crate::protocol::fresh_micros();
        let t = chrono::DateTime::from_timestamp_micros(id as i64).unwrap_or_default();
        Timecode(t.format("%Y%m%d-%H%M%S-%6f").to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Timecode {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Timecode, KeyError> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        let ok = b.len() == 22
            && matches!(b[8], b'-' | b':')
            && b[15] == b[8]
            && digits(0..8)
            && digits(9..15)
            && digits(16..22);
        if ok { Ok(Timecode(s.to_owned())) } else { Err(key_err("timecode", s, "use YYYYMMDD-HHMMSS-ffffff")) }
    }
}

impl TryFrom<String> for Timecode {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Timecode, KeyError> {
        s.parse()
    }
}

impl From<Timecode> for String {
    fn from(t: Timecode) -> String {
        t.0
    }
}

impl fmt::Display for Timecode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `<source>/<version>/<timecode>`: one upload. Keys compare as text (`1.0` and `1.00` are
/// different keys, though dpkg orders them alike).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UploadKey {
    pub source: PackageName,
    pub version: Version,
    pub timecode: Timecode,
}

impl UploadKey {
    fn text(&self) -> (&str, &str, &str) {
        (self.source.as_str(), self.version.as_str(), self.timecode.as_str())
    }

    pub fn new(source: PackageName, version: Version, timecode: Timecode) -> UploadKey {
        UploadKey { source, version, timecode }
    }

    /// The key of this upload's build for `arch`.
    pub fn build(&self, arch: Arch) -> BuildKey {
        BuildKey { upload: self.clone(), arch }
    }
}

impl fmt::Display for UploadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.source, self.version, self.timecode)
    }
}

fn segments<'a>(what: &'static str, s: &'a str, n: usize) -> Result<Vec<&'a str>, KeyError> {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() != n {
        let form = if n == 3 { "<source>/<version>/<timecode>" } else { "<source>/<version>/<timecode>/<arch>" };
        return Err(key_err(what, s, format!("use {form}")));
    }
    Ok(parts)
}

fn upload_key(what: &'static str, s: &str, parts: &[&str]) -> Result<UploadKey, KeyError> {
    Ok(UploadKey {
        source: parts[0].parse().map_err(|e| key_err(what, s, format!("{e}")))?,
        version: parts[1].parse().map_err(|e| key_err(what, s, format!("{e}")))?,
        timecode: parts[2].parse().map_err(|e: KeyError| key_err(what, s, e.to_string()))?,
    })
}

impl FromStr for UploadKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<UploadKey, KeyError> {
        upload_key("upload key", s, &segments("upload key", s, 3)?)
    }
}

impl TryFrom<String> for UploadKey {
    type Error = KeyError;
    fn try_from(s: String) -> Result<UploadKey, KeyError> {
        s.parse()
    }
}

impl From<UploadKey> for String {
    fn from(k: UploadKey) -> String {
        k.to_string()
    }
}

macro_rules! textual_eq {
    ($t:ty) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.text() == other.text()
            }
        }
        impl Eq for $t {}
        impl PartialOrd for $t {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $t {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.text().cmp(&other.text())
            }
        }
        impl std::hash::Hash for $t {
            fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
                self.text().hash(h)
            }
        }
    };
}
textual_eq!(UploadKey);
textual_eq!(BuildKey);

/// `<source>/<version>/<timecode>/<arch>`: one build of an upload (mini-buildd's `bkey`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BuildKey {
    pub upload: UploadKey,
    pub arch: Arch,
}

impl BuildKey {
    fn text(&self) -> ((&str, &str, &str), &str) {
        (self.upload.text(), self.arch.as_str())
    }

    pub fn source(&self) -> &PackageName {
        &self.upload.source
    }

    pub fn version(&self) -> &Version {
        &self.upload.version
    }

    pub fn timecode(&self) -> &Timecode {
        &self.upload.timecode
    }

    /// The key as a relative path (`source/version/timecode/arch`): every segment is a plain
    /// name, so it stays below the directory it is joined to.
    pub fn rel_path(&self) -> std::path::PathBuf {
        [self.upload.source.as_str(), self.upload.version.as_str(), self.upload.timecode.as_str(), self.arch.as_str()]
            .iter()
            .collect()
    }

    /// `<source>_<version without epoch>_<arch>.buildlog`
    pub fn buildlog_name(&self) -> String {
        format!("{}_{}_{}.buildlog", self.upload.source, self.upload.version.without_epoch(), self.arch)
    }
}

impl fmt::Display for BuildKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.upload, self.arch)
    }
}

impl FromStr for BuildKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<BuildKey, KeyError> {
        let parts = segments("build key", s, 4)?;
        Ok(BuildKey {
            upload: upload_key("build key", s, &parts[..3])?,
            arch: parts[3].parse().map_err(|e| key_err("build key", s, format!("{e}")))?,
        })
    }
}

impl TryFrom<String> for BuildKey {
    type Error = KeyError;
    fn try_from(s: String) -> Result<BuildKey, KeyError> {
        s.parse()
    }
}

impl From<BuildKey> for String {
    fn from(k: BuildKey) -> String {
        k.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timecodes_are_digits_in_either_spelling() {
        let t = Timecode::now();
        assert!(t.as_str().parse::<Timecode>().is_ok(), "{t}");
        assert!("20261121-130030-234930".parse::<Timecode>().is_ok());
        assert!("20261121:130030:234930".parse::<Timecode>().is_ok(), "mini-buildd 2.x's spelling");
        for bad in [
            "",
            "a';system(\"id>/tmp/x\");'",
            "20261121-130030-23493",
            "20261121-130030:234930",
            "20261121-130030-234930/..",
            "../../../../etc/passwd",
            "2026112a-130030-234930",
            "20261121-130030-234930\n",
        ] {
            assert!(bad.parse::<Timecode>().is_err(), "{bad:?}");
        }
        assert!(Timecode::now() < Timecode::now(), "strictly increasing");
    }

    #[test]
    fn build_keys_round_trip_and_refuse_bad_segments() {
        let k: BuildKey = "hello/1:1.0-1~bb12+1/20261121-130030-234930/amd64".parse().unwrap();
        assert_eq!(k.to_string(), "hello/1:1.0-1~bb12+1/20261121-130030-234930/amd64");
        assert_eq!(k.rel_path(), std::path::Path::new("hello/1:1.0-1~bb12+1/20261121-130030-234930/amd64"));
        assert_eq!(k.buildlog_name(), "hello_1.0-1~bb12+1_amd64.buildlog");
        assert_eq!(k.upload.to_string(), "hello/1:1.0-1~bb12+1/20261121-130030-234930");
        for bad in [
            "hello/1.0/20261121-130030-234930",
            "hello/1.0/20261121-130030-234930/amd64/x",
            "../1.0/20261121-130030-234930/amd64",
            "hello/../20261121-130030-234930/amd64",
            "hello/1.0/../amd64",
            "hello/1.0/20261121-130030-234930/..",
            "hello/1.0/20261121-130030-234930/source",
            "hello/1.0/a';system(\"id\");'/amd64",
            "hello/1.0//amd64",
        ] {
            assert!(bad.parse::<BuildKey>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<BuildKey>(&json).unwrap(), k);
        assert!(serde_json::from_str::<BuildKey>("\"a/b/c/d\"").is_err());
    }
}
