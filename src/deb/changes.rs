//! `.changes` and `.dsc`: the fields buildbay needs, and the files they list with their checksums.

use super::checksum::Checksums;
use super::control::{ControlError, Stanza, strip_signature};
use super::names::{FileName, PackageName};
use super::version::Version;
use std::path::Path;

/// One file listed by a `.changes` or `.dsc`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub name: FileName,
    pub size: u64,
    pub md5: String,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    /// Section and priority, from a `.changes`' `Files` field.
    pub section: Option<String>,
    pub priority: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FileCheckError {
    #[error("{0}: listed but missing; upload every file the .changes lists")]
    Missing(FileName),
    #[error("{0}: not a regular file")]
    NotRegular(FileName),
    #[error("{name}: size is {actual} bytes, but the .changes says {listed}; the file is truncated or tampered")]
    Size { name: FileName, listed: u64, actual: u64 },
    #[error("{name}: {algo} checksum mismatch (listed {listed}, actual {actual}); the file is corrupt or tampered")]
    Digest { name: FileName, algo: &'static str, listed: String, actual: String },
    #[error("{0}: {1}")]
    Io(FileName, std::io::Error),
}

impl FileEntry {
    /// Check a file on disk against this entry; returns its full checksums.
    pub fn verify(&self, dir: &Path) -> Result<Checksums, FileCheckError> {
        let path = dir.join(self.name.as_str());
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FileCheckError::Missing(self.name.clone()));
            }
            Err(e) => return Err(FileCheckError::Io(self.name.clone(), e)),
        };
        if !meta.file_type().is_file() {
            return Err(FileCheckError::NotRegular(self.name.clone()));
        }
        if meta.len() != self.size {
            return Err(FileCheckError::Size { name: self.name.clone(), listed: self.size, actual: meta.len() });
        }
        let sums = Checksums::of_file(&path).map_err(|e| FileCheckError::Io(self.name.clone(), e))?;
        self.matches(&sums)?;
        Ok(sums)
    }

    /// Compare listed digests with actual ones.
    pub fn matches(&self, sums: &Checksums) -> Result<(), FileCheckError> {
        if sums.size != self.size {
            return Err(FileCheckError::Size { name: self.name.clone(), listed: self.size, actual: sums.size });
        }
        let pairs = [
            ("MD5", Some(&self.md5), &sums.md5),
            ("SHA1", self.sha1.as_ref(), &sums.sha1),
            ("SHA256", self.sha256.as_ref(), &sums.sha256),
        ];
        for (algo, listed, actual) in pairs {
            if let Some(listed) = listed
                && !listed.eq_ignore_ascii_case(actual)
            {
                return Err(FileCheckError::Digest {
                    name: self.name.clone(),
                    algo,
                    listed: listed.clone(),
                    actual: actual.clone(),
                });
            }
        }
        Ok(())
    }
}

fn field_err(field: &'static str, reason: impl Into<String>) -> ControlError {
    ControlError::Field { field, reason: reason.into() }
}

fn check_hex(field: &'static str, h: &str, len: usize) -> Result<String, ControlError> {
    if h.len() == len && h.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(field_err(field, format!("{h:?} is not a {len}-digit hex digest")))
    }
}

/// Parse `Files` plus `Checksums-Sha1`/`Checksums-Sha256` into entries, cross-checked.
fn file_entries(stanza: &Stanza, with_section: bool) -> Result<Vec<FileEntry>, ControlError> {
    let files = stanza.get("Files").ok_or(ControlError::Missing("Files"))?;
    let mut out: Vec<FileEntry> = Vec::new();
    for line in files.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (md5, size, section, priority, name) = match (with_section, w.as_slice()) {
            (true, [m, s, sec, pri, n]) => (*m, *s, Some(*sec), Some(*pri), *n),
            (false, [m, s, n]) => (*m, *s, None, None, *n),
            _ => return Err(field_err("Files", format!("malformed line {line:?}"))),
        };
        let name: FileName = name.parse().map_err(|e: super::names::NameError| field_err("Files", e.to_string()))?;
        if out.iter().any(|f| f.name == name) {
            return Err(field_err("Files", format!("{name} is listed twice")));
        }
        out.push(FileEntry {
            name,
            size: size.parse().map_err(|_| field_err("Files", format!("bad size {size:?}")))?,
            md5: check_hex("Files", md5, 32)?,
            sha1: None,
            sha256: None,
            section: section.map(str::to_owned),
            priority: priority.map(str::to_owned),
        });
    }
    if out.is_empty() {
        return Err(field_err("Files", "lists no files"));
    }
    for (field, len) in [("Checksums-Sha1", 40), ("Checksums-Sha256", 64)] {
        let Some(value) = stanza.get(field) else { continue };
        for line in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let [h, size, name] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                return Err(field_err(field, format!("malformed line {line:?}")));
            };
            let entry = out
                .iter_mut()
                .find(|f| f.name.as_str() == name)
                .ok_or_else(|| field_err(field, format!("{name:?} is not listed in Files")))?;
            if size.parse::<u64>().ok() != Some(entry.size) {
                return Err(field_err(field, format!("size of {name} disagrees with Files")));
            }
            let h = Some(check_hex(field, h, len)?);
            if len == 40 { entry.sha1 = h } else { entry.sha256 = h }
        }
    }
    Ok(out)
}

/// A parsed `.changes`.
#[derive(Debug, Clone)]
pub struct Changes {
    pub stanza: Stanza,
    pub source: PackageName,
    pub version: Version,
    /// As written; it may be a meta-distribution, so it is resolved by the archive.
    pub distribution: String,
    pub architectures: Vec<String>,
    pub files: Vec<FileEntry>,
}

impl Changes {
    /// Parse a `.changes`, clear-signed or not (the signature is not checked here).
    pub fn parse(text: &str) -> Result<Changes, ControlError> {
        let stanza = Stanza::parse_one(&strip_signature(text)?)?;
        // "Source: hello (1.0-1)" names the source version of a binNMU.
        let source = stanza.require("Source")?.split_whitespace().next().unwrap_or_default();
        let source = source.parse().map_err(|e: super::names::NameError| field_err("Source", e.to_string()))?;
        let distribution = stanza.require("Distribution")?;
        if distribution.split_whitespace().count() != 1 {
            return Err(field_err("Distribution", "exactly one distribution is supported"));
        }
        Ok(Changes {
            source,
            version: stanza.parse_field("Version")?,
            distribution: distribution.to_owned(),
            architectures: stanza.require("Architecture")?.split_whitespace().map(str::to_owned).collect(),
            files: file_entries(&stanza, true)?,
            stanza,
        })
    }

    pub fn dsc(&self) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name.as_str().ends_with(".dsc"))
    }
}

/// A parsed `.dsc`.
#[derive(Debug, Clone)]
pub struct Dsc {
    pub stanza: Stanza,
    pub source: PackageName,
    pub version: Version,
    pub files: Vec<FileEntry>,
}

impl Dsc {
    pub fn parse(text: &str) -> Result<Dsc, ControlError> {
        let stanza = Stanza::parse_one(&strip_signature(text)?)?;
        Ok(Dsc {
            source: stanza.parse_field("Source")?,
            version: stanza.parse_field("Version")?,
            files: file_entries(&stanza, false)?,
            stanza,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const CHANGES: &str = "\
Format: 1.8
Date: Mon, 01 Jan 2024 00:00:00 +0000
Source: hello
Binary: hello
Architecture: source amd64
Version: 1.0-1~test12+1
Distribution: bookworm-test-unstable
Maintainer: A <a@example.org>
Changed-By: A <a@example.org>
Description:
 hello - test
Changes:
 hello (1.0-1~test12+1) bookworm-test-unstable; urgency=low
 .
   * Initial.
Checksums-Sha256:
 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad 3 hello_1.0-1~test12+1.dsc
Files:
 900150983cd24fb0d6963f7d28e17f72 3 devel optional hello_1.0-1~test12+1.dsc
";

    #[test]
    fn parse_changes() {
        let c = Changes::parse(CHANGES).unwrap();
        assert_eq!(c.source.as_str(), "hello");
        assert_eq!(c.version.as_str(), "1.0-1~test12+1");
        assert_eq!(c.architectures, ["source", "amd64"]);
        assert_eq!(c.files.len(), 1);
        assert_eq!(c.files[0].section.as_deref(), Some("devel"));
        assert!(c.files[0].sha256.is_some());
        c.files[0].matches(&Checksums::of_bytes(b"abc")).unwrap();
        assert!(c.files[0].matches(&Checksums::of_bytes(b"abd")).is_err());
        assert!(c.dsc().is_some());
    }

    #[test]
    fn hostile_file_names() {
        for bad in ["../x", "/etc/passwd", "a/../../b"] {
            let t = CHANGES.replace("devel optional hello_1.0-1~test12+1.dsc", &format!("devel optional {bad}"));
            let e = Changes::parse(&t).unwrap_err().to_string();
            assert!(e.contains("file name"), "{bad}: {e}");
        }
    }

    #[test]
    fn cross_checks() {
        let t = CHANGES.replace(" 3 hello_1.0-1~test12+1.dsc\nFiles", " 4 hello_1.0-1~test12+1.dsc\nFiles");
        assert!(Changes::parse(&t).is_err());
        let t = CHANGES.replace("Distribution: bookworm-test-unstable\n", "");
        assert!(Changes::parse(&t).unwrap_err().to_string().contains("Distribution"));
        let t = CHANGES.replace("900150983cd24fb0d6963f7d28e17f72", "xyz");
        assert!(Changes::parse(&t).is_err());
    }
}
