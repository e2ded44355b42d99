//! Debian versions, validated and ordered exactly as dpkg does it.
//!
//! This follows dpkg's `parseversion` and `verrevcmp` (lib/dpkg/version.c, parsehelp.c). The
//! `debversion` crate was the first choice, but it disagrees with dpkg: it orders `1.0.` below
//! `1.0.0` (dpkg treats a missing digit run as 0, so they are equal) and accepts `1:` and `1.0-`,
//! which dpkg rejects. `tests/fast/versions.rs` checks every pair of a tricky set against dpkg itself.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A Debian version (`[epoch:]upstream[-revision]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version {
    text: String,
    epoch: u32,
    /// Byte offsets of upstream within `text`, and of the revision (empty if none).
    upstream: (usize, usize),
    revision: (usize, usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {0:?}: {1}; a Debian version is [epoch:]upstream[-revision], upstream starting with a digit")]
pub struct VersionError(pub String, &'static str);

impl Version {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The version without its epoch, as it appears in file names.
    pub fn without_epoch(&self) -> &str {
        &self.text[self.upstream.0..]
    }

    /// The upstream part, without epoch and revision (names the `.orig.tar`).
    pub fn upstream(&self) -> &str {
        &self.text[self.upstream.0..self.upstream.1]
    }

    pub fn revision(&self) -> &str {
        &self.text[self.revision.0..self.revision.1]
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }
}

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Version, VersionError> {
        let err = |why| VersionError(s.to_owned(), why);
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s.len() > 255 {
            return Err(err("it is longer than 255 characters"));
        }
        if s.bytes().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
            return Err(err("it contains white space or control characters"));
        }
        let (epoch, up_start) = match s.find(':') {
            Some(i) => {
                let e = &s[..i];
                if e.is_empty() || !e.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(err("the epoch is not a number"));
                }
                (e.parse::<u32>().map_err(|_| err("the epoch is too big"))?, i + 1)
            }
            None => (0, 0),
        };
        if up_start == s.len() {
            return Err(err("nothing follows the epoch"));
        }
        let (upstream, revision) = match s[up_start..].rfind('-') {
            Some(i) => ((up_start, up_start + i), (up_start + i + 1, s.len())),
            None => ((up_start, s.len()), (s.len(), s.len())),
        };
        if revision.0 > 0 && revision.0 == s.len() && s.ends_with('-') {
            return Err(err("the revision is empty"));
        }
        let up = &s[upstream.0..upstream.1];
        if !up.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(err("the upstream version does not start with a digit"));
        }
        if !up.bytes().all(|c| c.is_ascii_alphanumeric() || b".-+~:".contains(&c)) {
            return Err(err("the upstream version has a character other than letters, digits and '.-+~:'"));
        }
        if !s[revision.0..revision.1].bytes().all(|c| c.is_ascii_alphanumeric() || b".+~".contains(&c)) {
            return Err(err("the revision has a character other than letters, digits and '.+~'"));
        }
        Ok(Version { text: s.to_owned(), epoch, upstream, revision })
    }
}

/// dpkg's character order: `~` first, then end of part, then letters, then everything else.
fn order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

/// dpkg's `verrevcmp`.
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let mut first_diff = 0;
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied());
            let bc = order(b.get(j).copied());
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == 0 {
                first_diff = a[i] as i32 - b[j] as i32;
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != 0 {
            return first_diff.cmp(&0);
        }
    }
    Ordering::Equal
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(self.upstream().as_bytes(), other.upstream().as_bytes()))
            .then_with(|| verrevcmp(self.revision().as_bytes(), other.revision().as_bytes()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl TryFrom<String> for Version {
    type Error = VersionError;
    fn try_from(s: String) -> Result<Version, VersionError> {
        s.parse()
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn ordering_basics() {
        assert!(v("1.0-1") < v("1.0-1+b1"));
        assert!(v("1.0~rc1-1") < v("1.0-1"));
        assert!(v("1:0.1") > v("9.9"));
        assert!(v("1.0-1~test12+1") < v("1.0-1"));
        assert!(v("1.0-1~test12+2") < v("1.0-1~test12+10"));
        assert_eq!(v("1.0"), v("1.0-0"));
        assert_eq!(v("1.0."), v("1.0.0"));
        assert!(v("1.0~") < v("1.0"));
        assert!(v("1.0a") < v("1.0+"));
    }

    #[test]
    fn parts() {
        assert_eq!(v("2:1.0-1").without_epoch(), "1.0-1");
        assert_eq!(v("2:1.0-1").upstream(), "1.0");
        assert_eq!(v("2:1.0-1").revision(), "1");
        assert_eq!(v("1.0").upstream(), "1.0");
        assert_eq!(v("1.0-1-2").upstream(), "1.0-1");
    }

    #[test]
    fn rejects() {
        for bad in ["", "a1.0", "1.0 beta", "1.0/2", "../1", "1.0\n", "1.0-", "1:", ":1", "x:1", "1.0-1:2", "1.0-a_b"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }
}
