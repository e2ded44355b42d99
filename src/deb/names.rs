//! Validated Debian names: parse once at the boundary, use the type inside.

use std::fmt;
use std::str::FromStr;

/// A name that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {rule}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub rule: &'static str,
}

fn chars_ok(s: &str, first: fn(u8) -> bool, rest: fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= 255 && first(b[0]) && b[1..].iter().all(|&c| rest(c))
}

fn lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

macro_rules! name_type {
    ($(#[$m:meta])* $name:ident, $what:literal, $rule:literal, $valid:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                let valid: fn(&str) -> bool = $valid;
                if valid(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(NameError { what: $what, value: s.to_owned(), rule: $rule })
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A release codename such as `bookworm` or `sid`.
    Codename, "codename", "use lower-case letters and digits, starting with a letter",
    |s| chars_ok(s, |c| c.is_ascii_lowercase(), lower_alnum)
);
name_type!(
    /// A directory under an archive's `dists/`, as an apt sources line names it: `bookworm`,
    /// `sid`, `bookworm-backports`, `bookworm-security`.
    ArchiveSuite, "archive suite", "use lower-case letters, digits and '-', starting with a letter, e.g. bookworm-backports",
    |s| chars_ok(s, |c| c.is_ascii_lowercase(), |c| lower_alnum(c) || c == b'-')
);
name_type!(
    /// A repository identity such as `test` (mini-buildd: `[a-z0-9]+`).
    RepoId, "repository identity", "use lower-case letters and digits only",
    |s| chars_ok(s, lower_alnum, lower_alnum)
);
name_type!(
    /// A suite of a layout such as `unstable` (mini-buildd: `[a-z]+`).
    Suite, "suite", "use lower-case letters only",
    |s| chars_ok(s, |c| c.is_ascii_lowercase(), |c| c.is_ascii_lowercase())
);
name_type!(
    /// A Debian architecture such as `amd64`, or the pseudo-architecture `all`.
    Arch, "architecture", "use lower-case letters, digits and '-', e.g. amd64",
    |s| chars_ok(s, lower_alnum, |c| lower_alnum(c) || c == b'-') && s != "source"
);
name_type!(
    /// An archive component such as `main` or `non-free-firmware`.
    Component, "component", "use lower-case letters, digits and '-', e.g. main",
    |s| chars_ok(s, lower_alnum, |c| lower_alnum(c) || c == b'-')
);
name_type!(
    /// A source or binary package name (Debian policy 5.6.1).
    PackageName, "package name",
    "use at least two characters of lower-case letters, digits, '+', '-' and '.', starting with a letter or digit",
    |s| s.len() >= 2 && chars_ok(s, lower_alnum, |c| lower_alnum(c) || b"+-.".contains(&c))
);
name_type!(
    /// A plain file name as listed in a `.changes` or `.dsc`: no directories, no control characters.
    FileName, "file name",
    "use a plain file name of letters, digits and '.+~_-', with no directory part",
    |s| chars_ok(s, |c| c.is_ascii_alphanumeric(), |c| c.is_ascii_alphanumeric() || b".+~_-".contains(&c))
);
name_type!(
    /// A snapshot name (`[A-Za-z0-9._-]`, not starting with '.').
    SnapshotName, "snapshot name", "use letters, digits and '._-', not starting with '.'",
    |s| chars_ok(s, |c| c.is_ascii_alphanumeric(), |c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
);
name_type!(
    /// The identity of a buildbay instance (mini-buildd: `[a-zA-Z0-9-]`).
    Identity, "identity", "use letters, digits and '-'",
    |s| chars_ok(s, |c| c.is_ascii_alphanumeric(), |c| c.is_ascii_alphanumeric() || c == b'-')
);

impl Arch {
    pub fn is_all(&self) -> bool {
        self.0 == "all"
    }
}

impl PackageName {
    /// The pool prefix: `libfoo` → `libf`, `hello` → `h`.
    pub fn pool_prefix(&self) -> &str {
        if self.0.starts_with("lib") && self.0.len() > 3 { &self.0[..4] } else { &self.0[..1] }
    }
}

/// A distribution name `<codename>-<repo>-<suite>[-rollback<N>]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Dist {
    pub codename: Codename,
    pub repo: RepoId,
    pub suite: Suite,
    pub rollback: Option<u32>,
}

impl Dist {
    pub fn new(codename: Codename, repo: RepoId, suite: Suite) -> Dist {
        Dist { codename, repo, suite, rollback: None }
    }

    /// The rollback distribution number `n` of this (base) distribution.
    pub fn rollback(&self, n: u32) -> Dist {
        Dist { rollback: Some(n), ..self.clone() }
    }

    /// The distribution this one is a rollback of (itself if it is not a rollback).
    pub fn base(&self) -> Dist {
        Dist { rollback: None, ..self.clone() }
    }

    pub fn is_rollback(&self) -> bool {
        self.rollback.is_some()
    }
}

impl FromStr for Dist {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Dist, NameError> {
        let err = || NameError {
            what: "distribution",
            value: s.to_owned(),
            rule: "use <codename>-<repository>-<suite>[-rollback<N>], e.g. bookworm-test-unstable",
        };
        let parts: Vec<&str> = s.split('-').collect();
        let rollback = match parts.len() {
            3 => None,
            4 => {
                let n = parts[3].strip_prefix("rollback").ok_or_else(err)?;
                if n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) || n.len() > 4 {
                    return Err(err());
                }
                Some(n.parse().map_err(|_| err())?)
            }
            _ => return Err(err()),
        };
        Ok(Dist {
            codename: parts[0].parse().map_err(|_| err())?,
            repo: parts[1].parse().map_err(|_| err())?,
            suite: parts[2].parse().map_err(|_| err())?,
            rollback,
        })
    }
}

impl TryFrom<String> for Dist {
    type Error = NameError;
    fn try_from(s: String) -> Result<Dist, NameError> {
        s.parse()
    }
}

impl From<Dist> for String {
    fn from(d: Dist) -> String {
        d.to_string()
    }
}

impl fmt::Display for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.codename, self.repo, self.suite)?;
        if let Some(n) = self.rollback {
            write!(f, "-rollback{n}")?;
        }
        Ok(())
    }
}

/// An archive's URL: `http(s)://…` with exactly one trailing `/` (mini-buildd's rule), so that
/// `dists/` appends to it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArchiveUrl(String);

impl ArchiveUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL without its trailing `/`, as apt sources lines and mmdebstrap write it.
    pub fn mirror(&self) -> &str {
        self.0.trim_end_matches('/')
    }
}

impl std::str::FromStr for ArchiveUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<ArchiveUrl, String> {
        let rest = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://"));
        let ok = rest.is_some_and(|r| {
            !r.is_empty() && !r.starts_with('/') && r.bytes().all(|b| b.is_ascii_graphic() && !b"\"'<>\\`".contains(&b))
        });
        if !ok {
            return Err(format!(
                "archive URL {s:?}: use http:// or https:// and a host, e.g. http://deb.debian.org/debian/"
            ));
        }
        Ok(ArchiveUrl(format!("{}/", s.trim_end_matches('/'))))
    }
}

impl TryFrom<String> for ArchiveUrl {
    type Error = String;
    fn try_from(s: String) -> Result<ArchiveUrl, String> {
        s.parse()
    }
}

impl From<ArchiveUrl> for String {
    fn from(u: ArchiveUrl) -> String {
        u.0
    }
}

impl std::fmt::Display for ArchiveUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Release `Origin` as a Source names it: it goes into apt preferences (`o=…`) and the
/// Source's id (`Origin:codename`), so no control characters, `,`, `:` or `=`.
pub fn valid_origin(origin: &str) -> Result<(), String> {
    if origin.trim().is_empty() || origin.trim() != origin {
        return Err(format!("origin {origin:?}: give the release's Origin, e.g. Debian"));
    }
    if origin.chars().any(|c| c.is_control() || matches!(c, ',' | ':' | '=')) {
        return Err(format!(
            "origin {origin:?}: no control characters, ',', ':' or '=' (it is the release's Origin, e.g. Debian)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dist_roundtrip() {
        for s in ["bookworm-test-unstable", "bookworm-test-stable-rollback5", "sid-debdev-experimental"] {
            let d: Dist = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        let d: Dist = "bookworm-test-stable-rollback5".parse().unwrap();
        assert_eq!(d.rollback, Some(5));
        assert_eq!(d.base().to_string(), "bookworm-test-stable");
        assert_eq!(d.base().rollback(0).to_string(), "bookworm-test-stable-rollback0");
    }

    #[test]
    fn dist_rejects() {
        for s in [
            "",
            "bookworm",
            "bookworm-test",
            "bookworm-test-unstable-rb1",
            "bookworm-test-unstable-rollback",
            "bookworm-Test-unstable",
            "bookworm-test-unst4ble",
            "a-b-c-rollback1-x",
            "../x-y-z",
            "bookworm-te_st-unstable",
        ] {
            assert!(s.parse::<Dist>().is_err(), "{s} should not parse");
        }
    }

    #[test]
    fn file_names() {
        assert!("hello_1.0-1~test12+1_amd64.deb".parse::<FileName>().is_ok());
        for bad in ["../x", "/etc/passwd", "a/b", ".hidden", "a\0b", "a\nb", "", "a b"] {
            assert!(bad.parse::<FileName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn package_names_and_prefix() {
        let p: PackageName = "libfoo".parse().unwrap();
        assert_eq!(p.pool_prefix(), "libf");
        let p: PackageName = "hello".parse().unwrap();
        assert_eq!(p.pool_prefix(), "h");
        assert!("a".parse::<PackageName>().is_err());
        assert!("Hello".parse::<PackageName>().is_err());
        assert!("<script>".parse::<PackageName>().is_err());
    }
}
