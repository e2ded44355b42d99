//! `.changes` and `.dsc`: the fields buildbay needs, and the files they list with their checksums.

use super::checksum::Checksums;
use super::control::{ControlError, Stanza, strip_signature};
use super::names::{FileName, PackageName};
use super::version::Version;
use std::io::Read;
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

/// Largest `.changes` read, in bytes: far more than any real one (a thousand files fit in a
/// tenth of it). The scan of incoming and the packager read through the same bound.
pub const MAX_CHANGES: u64 = 1 << 20;
/// Most files a `.changes` or `.dsc` may list.
pub const MAX_FILES: usize = 1000;

/// Read a `.changes` (or a `.dsc`), refusing one larger than [`MAX_CHANGES`] at once, without
/// reading it all: the error says how large it is.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never blocks on a FIFO, and reads only a regular file (not a device, not a directory).
    let f =
        std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY).open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(format!("{} is not a regular file", path.display())));
    }
    let len = meta.len();
    let too_large = |n: u64| {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} is {n} bytes, more than the {MAX_CHANGES} a .changes may have", path.display()),
        )
    };
    if len > MAX_CHANGES {
        return Err(too_large(len));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(MAX_CHANGES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_CHANGES {
        return Err(too_large(buf.len() as u64));
    }
    Ok(buf)
}

/// Parse `Files` plus `Checksums-Sha1`/`Checksums-Sha256` into entries, cross-checked.
fn file_entries(stanza: &Stanza, with_section: bool) -> Result<Vec<FileEntry>, ControlError> {
    let files = stanza.get("Files").ok_or(ControlError::Missing("Files"))?;
    let mut out: Vec<FileEntry> = Vec::new();
    for line in files.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if out.len() >= MAX_FILES {
            return Err(field_err("Files", format!("lists more than {MAX_FILES} files")));
        }
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
    /// Parse a `.changes`, unsigned or in a strictly framed clear signature (which is not
    /// checked here: a caller that needs the signature parses the payload verification returned).
    pub fn parse(text: &str) -> Result<Changes, ControlError> {
        Changes::from_stanza(Stanza::parse_one(&strip_signature(text)?)?)
    }

    /// From a parsed stanza (a verified payload).
    pub fn from_stanza(stanza: Stanza) -> Result<Changes, ControlError> {
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
    /// Parse a `.dsc` and check what tools interpolate (sbuild puts `Architecture` into perl,
    /// the dependency fields into control files) against dpkg's grammar, and its files against
    /// dpkg's source file names: nothing else is ever built or published.
    pub fn parse(text: &str) -> Result<Dsc, ControlError> {
        let stanza = Stanza::parse_one(&strip_signature(text)?)?;
        let dsc = Dsc {
            source: stanza.parse_field("Source")?,
            version: stanza.parse_field("Version")?,
            files: file_entries(&stanza, false)?,
            stanza,
        };
        for a in dsc.stanza.require("Architecture")?.split_whitespace() {
            if !a.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') || a.starts_with('-') {
                return Err(field_err("Architecture", format!("{a:?} is not an architecture or wildcard")));
            }
        }
        dsc.binaries()?;
        for field in [
            "Build-Depends",
            "Build-Depends-Indep",
            "Build-Depends-Arch",
            "Build-Conflicts",
            "Build-Conflicts-Indep",
            "Build-Conflicts-Arch",
        ] {
            if let Some(v) = dsc.stanza.get(field) {
                let one_line = v.replace('\n', " ");
                if !one_line.trim().is_empty() {
                    one_line
                        .parse::<super::relations::Relations>()
                        .map_err(|e| field_err("Build-Depends", e.to_string()))?;
                }
            }
        }
        for f in &dsc.files {
            if !dsc.source_file_ok(f.name.as_str()) {
                return Err(field_err(
                    "Files",
                    format!(
                        "{} is not a source file name of {} {} (<source>_<version>.orig.tar.*, .debian.tar.*, .diff.gz, .tar.*)",
                        f.name, dsc.source, dsc.version
                    ),
                ));
            }
        }
        Ok(dsc)
    }

    /// The binary packages it declares (`Binary:`).
    pub fn binaries(&self) -> Result<Vec<PackageName>, ControlError> {
        binary_list(self.stanza.get("Binary").unwrap_or_default())
    }

    /// `<source>_<version without epoch>.dsc`
    pub fn file_name(&self) -> String {
        format!("{}_{}.dsc", self.source, self.version.without_epoch())
    }

    /// Whether a file the `.dsc` lists has one of dpkg's source file names.
    pub fn source_file_ok(&self, name: &str) -> bool {
        let Some(rest) = name.strip_prefix(&format!("{}_", self.source)) else { return false };
        let compressed = |s: &str| ["gz", "xz", "bz2", "lzma", "zst"].contains(&s);
        let full = self.version.without_epoch();
        let upstream = self.version.upstream();
        if let Some(ext) =
            rest.strip_prefix(&format!("{full}.debian.tar.")).or_else(|| rest.strip_prefix(&format!("{full}.tar.")))
        {
            return compressed(ext);
        }
        if rest == format!("{full}.diff.gz") {
            return true;
        }
        let Some(orig) = rest.strip_prefix(&format!("{upstream}.orig")) else { return false };
        let orig = orig.strip_suffix(".asc").unwrap_or(orig);
        let after_component = match orig.strip_prefix('-') {
            Some(c) => match c.split_once('.') {
                Some((comp, tail))
                    if !comp.is_empty() && comp.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
                {
                    format!(".{tail}")
                }
                _ => return false,
            },
            None => orig.to_owned(),
        };
        after_component.strip_prefix(".tar.").is_some_and(compressed)
    }
}

/// A `Binary:` list (`a, b` over one or more lines) as package names.
pub fn binary_list(v: &str) -> Result<Vec<PackageName>, ControlError> {
    v.split([',', ' ', '\n', '\t'])
        .filter(|s| !s.is_empty())
        .map(|b| b.parse::<PackageName>().map_err(|e| field_err("Binary", e.to_string())))
        .collect()
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
    fn dsc_grammar_and_source_file_names() {
        let dsc = |arch: &str, files: &str| {
            format!(
                "Format: 3.0 (quilt)\nSource: hello\nBinary: hello, hello-doc\nArchitecture: {arch}\nVersion: 1:2.10-3\nBuild-Depends: debhelper-compat (= 13)\nFiles:\n{files}"
            )
        };
        let f = |n: &str| format!(" 900150983cd24fb0d6963f7d28e17f72 3 {n}\n");
        let ok = format!(
            "{}{}{}",
            f("hello_2.10.orig.tar.gz"),
            f("hello_2.10.orig.tar.gz.asc"),
            f("hello_2.10-3.debian.tar.xz")
        );
        let d = Dsc::parse(&dsc("any all linux-any", &ok)).unwrap();
        assert_eq!(d.binaries().unwrap().len(), 2);
        assert_eq!(d.file_name(), "hello_2.10-3.dsc");
        assert!(d.source_file_ok("hello_2.10.orig-docs.tar.xz"));
        assert!(d.source_file_ok("hello_2.10-3.tar.xz"));
        assert!(d.source_file_ok("hello_2.10-3.diff.gz"));
        for bad in [
            "evil.html",
            "hello_2.10.orig.tar.gz.html",
            "hello_2.10-3.debian.tar.exe",
            "other_2.10.orig.tar.gz",
            "hello_2.10.orig-.tar.gz",
        ] {
            assert!(!d.source_file_ok(bad), "{bad}");
            assert!(Dsc::parse(&dsc("any", &f(bad))).is_err(), "{bad}");
        }
        for arch in ["any; system('id')", "$(id)", "any\x60id\x60", "(?{1})"] {
            assert!(Dsc::parse(&dsc(arch, &ok)).is_err(), "{arch}");
        }
        let evil = dsc("any", &ok).replace("debhelper-compat (= 13)", "debhelper'; system(\"id\"); '");
        assert!(Dsc::parse(&evil).is_err());
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
