//! Upstream archives and what they serve: the Archive, AptKey and Source checks, the host's apt
//! sources, and the built-in knowledge of origins (Debian, Ubuntu) with their keyrings.
//!
//! The parsing and matching are pure; fetching (`ping`, `fetch_release`) and reading the host's
//! files are the edges.

use crate::config::AptKey;
use crate::deb::Release;
use crate::gpg;
use chrono::{DateTime, Utc};
use sequoia_openpgp::Cert;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("unknown origin {0:?}: built in are Debian and Ubuntu")]
    UnknownOrigin(String),
    #[error("keyring {path}: {reason}; install the package {package} (it holds the origin's archive keys)")]
    Keyring { path: String, package: &'static str, reason: String },
    #[error("{0}")]
    Read(String),
}

pub use crate::deb::ArchiveUrl;

/// What buildbay knows of an origin without asking anyone: its main archive, the keyring
/// package that holds its archive keys, and its current releases.
#[derive(Debug)]
pub struct Origin {
    pub name: &'static str,
    pub archive: &'static str,
    pub keyring: &'static str,
    pub keyring_package: &'static str,
    /// Release origins signed with the same keys (`Debian Backports`).
    pub also: &'static [&'static str],
    /// Codenames (directories under `dists/`) that its main archive serves.
    pub releases: &'static [&'static str],
}

pub const ORIGINS: &[Origin] = &[
    Origin {
        name: "Debian",
        archive: "http://deb.debian.org/debian/",
        keyring: "/usr/share/keyrings/debian-archive-keyring.gpg",
        keyring_package: "debian-archive-keyring",
        also: &["Debian Backports"],
        releases: &["bullseye", "bookworm", "trixie", "forky", "sid"],
    },
    Origin {
        name: "Ubuntu",
        archive: "http://archive.ubuntu.com/ubuntu/",
        keyring: "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
        keyring_package: "ubuntu-keyring",
        also: &[],
        releases: &["jammy", "noble"],
    },
];

pub use crate::deb::names::valid_origin;

/// An origin by its name, or by a release origin signed with its keys (`Debian Backports`).
pub fn origin(name: &str) -> Result<&'static Origin, SourcesError> {
    ORIGINS
        .iter()
        .find(|o| o.name.eq_ignore_ascii_case(name) || o.also.iter().any(|a| a.eq_ignore_ascii_case(name)))
        .ok_or_else(|| SourcesError::UnknownOrigin(name.into()))
}

impl Origin {
    /// The origin's archive keys, from its keyring package on this host (no keyserver).
    pub fn keys(&self) -> Result<Vec<AptKey>, SourcesError> {
        let bad =
            |reason: String| SourcesError::Keyring { path: self.keyring.into(), package: self.keyring_package, reason };
        let data = std::fs::read(self.keyring).map_err(|e| bad(e.to_string()))?;
        let certs = gpg::read_keyring(&data).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("holds no key".into()));
        }
        // Keys that may no longer sign (expired, revoked) are left out.
        let keys: Vec<AptKey> = certs
            .iter()
            .filter(|c| gpg::usable(c).is_ok())
            .map(|c| AptKey::from_cert(c).map_err(|e| bad(e.to_string())))
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Err(bad("holds no key that may sign now (all expired or revoked)".into()));
        }
        Ok(keys)
    }
}

/// The archive URLs of apt sources, in the one-line (`sources.list`) or deb822 (`.sources`)
/// format: `deb` entries over http(s) only (no `deb-src`, `cdrom:`, `file:`).
pub fn apt_source_archives(text: &str, deb822: bool) -> Vec<ArchiveUrl> {
    let mut urls: Vec<ArchiveUrl> = Vec::new();
    let mut add = |u: &str| {
        if let Ok(u) = u.parse::<ArchiveUrl>()
            && !urls.contains(&u)
        {
            urls.push(u);
        }
    };
    if deb822 {
        for st in crate::deb::control::parse_stanzas(text).unwrap_or_default() {
            let is_deb = st.get("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
            let enabled = st.get("Enabled").is_none_or(|e| !e.trim().eq_ignore_ascii_case("no"));
            if is_deb && enabled {
                st.get("URIs").unwrap_or_default().split_whitespace().for_each(&mut add);
            }
        }
    } else {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace();
            if words.next() != Some("deb") {
                continue;
            }
            let mut url = words.next();
            if url.is_some_and(|u| u.starts_with('[')) {
                // Options: `[arch=amd64 signed-by=…]`, possibly over several words.
                let mut w = url;
                while let Some(x) = w
                    && !x.ends_with(']')
                {
                    w = words.next();
                }
                url = words.next();
            }
            if let Some(u) = url {
                add(u);
            }
        }
    }
    urls
}

/// This host's apt sources (`/etc/apt/sources.list`, `sources.list.d/*.list` and `*.sources`).
pub fn host_archives(etc_apt: &std::path::Path) -> Vec<ArchiveUrl> {
    let mut files = vec![(etc_apt.join("sources.list"), false)];
    if let Ok(dir) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<_> = dir
            .flatten()
            .map(|e| e.path())
            .filter_map(|p| match p.extension().and_then(|e| e.to_str()) {
                Some("list") => Some((p, false)),
                Some("sources") => Some((p, true)),
                _ => None,
            })
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut urls: Vec<ArchiveUrl> = Vec::new();
    for (path, deb822) in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for u in apt_source_archives(&text, deb822) {
            if !urls.contains(&u) {
                urls.push(u);
            }
        }
    }
    urls
}

/// Upstream archives: 30 s a request, redirects followed (ureq's default, 10).
fn agent() -> ureq::Agent {
    crate::http::agent(Duration::from_secs(30), 10)
}

/// mini-buildd's archive ping: `GET <url>dists/`; any answer below 500 means the archive is up
/// (a 403 or 404 for a directory listing is fine). Returns the milliseconds it took.
pub fn ping(url: &ArchiveUrl) -> Result<u64, String> {
    let t = Instant::now();
    let r = agent().get(format!("{url}dists/")).call().map_err(|e| format!("{url}: {e}"))?;
    if r.status().as_u16() >= 500 {
        return Err(format!("{url}dists/ answered {}; the archive is not serving", r.status()));
    }
    Ok(t.elapsed().as_millis() as u64)
}

/// A signed release as an archive serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedRelease {
    /// `InRelease`: clear-signed.
    InRelease(Vec<u8>),
    /// `Release` and its detached `Release.gpg` (an archive without `InRelease`, such as an
    /// older security mirror).
    Detached { release: Vec<u8>, signature: Vec<u8> },
}

/// Fetch `<url>dists/<codename>/InRelease`, or where it is missing (404), `Release` and
/// `Release.gpg`: each at most [`gpg::MAX_SIGNED`] bytes, one retry on a network error.
pub fn fetch_release(url: &ArchiveUrl, codename: &str) -> Result<(SignedRelease, Duration), String> {
    let agent = agent();
    let t = Instant::now();
    let get = |name: &str| -> Result<Option<Vec<u8>>, String> {
        let address = format!("{url}dists/{codename}/{name}");
        let mut last = String::new();
        for _ in 0..2 {
            match agent.get(&address).call() {
                Ok(mut r) if r.status().is_success() => {
                    let limit = gpg::MAX_SIGNED as u64;
                    return r
                        .body_mut()
                        .with_config()
                        .limit(limit)
                        .read_to_vec()
                        .map(Some)
                        .map_err(|e| format!("{address}: {e} (a release is read up to {limit} bytes)"));
                }
                Ok(r) if r.status().as_u16() == 404 => return Ok(None),
                Ok(r) => return Err(format!("{address} answered {}", r.status())),
                Err(e) => last = format!("{address}: {e}"),
            }
        }
        Err(last)
    };
    if let Some(body) = get("InRelease")? {
        return Ok((SignedRelease::InRelease(body), t.elapsed()));
    }
    match (get("Release")?, get("Release.gpg")?) {
        (Some(release), Some(signature)) => Ok((SignedRelease::Detached { release, signature }, t.elapsed())),
        _ => Err(format!(
            "{url}dists/{codename}/InRelease answered 404, and there is no Release with Release.gpg either; is {codename} in this archive?"
        )),
    }
}

/// What a Source check learns from its archive's release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The archives that serve it and verify, fastest first.
    pub archives: Vec<ArchiveUrl>,
    pub release: Release,
    /// The key that signed it (the fastest archive's).
    pub signer: String,
}

/// One archive's answer for a Source: verify the signed release against the Source's keys,
/// then match its Origin and Codename. Only what the signature covers is parsed. Pure.
pub fn verify_release(
    signed: &SignedRelease,
    certs: &[Cert],
    origin: &str,
    codename: &str,
    check_valid_until: bool,
    now: DateTime<Utc>,
) -> Result<(Release, String), String> {
    let (name, payload, signer) = match signed {
        SignedRelease::InRelease(body) => {
            let (payload, signer) = gpg::verify_clearsigned(body, certs)
                .map_err(|e| format!("its InRelease does not verify against the source's keys ({e})"))?;
            ("InRelease", payload, signer)
        }
        SignedRelease::Detached { release, signature } => {
            let signer = gpg::verify_detached(release, signature, certs)
                .map_err(|e| format!("its Release.gpg does not verify its Release against the source's keys ({e})"))?;
            ("Release", release.clone(), signer)
        }
    };
    let text = String::from_utf8(payload).map_err(|_| format!("its {name} is not UTF-8"))?;
    let release = Release::parse(&text).map_err(|e| format!("its {name} is not a Release file: {e}"))?;
    release.matches(origin, codename, check_valid_until, now)?;
    Ok((release, signer))
}

/// mini-buildd's Source check: every archive is asked; those whose InRelease verifies and
/// matches serve the Source, fastest first. None is an error that says why for each archive.
pub fn check_source(
    archives: &[ArchiveUrl],
    certs: &[Cert],
    origin: &str,
    codename: &str,
    check_valid_until: bool,
) -> Result<Found, String> {
    if certs.is_empty() {
        return Err(format!(
            "source {origin}:{codename} has no apt keys to verify its archive with; add its keys (setup --from-origins {origin})"
        ));
    }
    if archives.is_empty() {
        return Err(
            "there is no active archive to look in; add one (setup --archives URL or --archives-from-apt-sources)"
                .into(),
        );
    }
    let now = Utc::now();
    let mut good: Vec<(Duration, ArchiveUrl, Release, String)> = Vec::new();
    let mut why = Vec::new();
    for url in archives {
        match fetch_release(url, codename).and_then(|(body, took)| {
            verify_release(&body, certs, origin, codename, check_valid_until, now).map(|(r, s)| (took, r, s))
        }) {
            Ok((took, release, signer)) => good.push((took, url.clone(), release, signer)),
            Err(e) => why.push(format!("{url}: {e}")),
        }
    }
    good.sort_by_key(|g| g.0);
    let mut good = good.into_iter();
    let Some((_, first, release, signer)) = good.next() else {
        return Err(format!("no archive serves {origin}:{codename}: {}", why.join("; ")));
    };
    let mut archives = vec![first];
    archives.extend(good.map(|g| g.1));
    Ok(Found { archives, release, signer })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpg::{ArchiveKey, KeyAlgo};

    #[test]
    fn archive_urls_have_one_trailing_slash() {
        let u: ArchiveUrl = "http://deb.debian.org/debian".parse().unwrap();
        assert_eq!(u.as_str(), "http://deb.debian.org/debian/");
        assert_eq!("http://deb.debian.org/debian//".parse::<ArchiveUrl>().unwrap(), u);
        assert_eq!(u.mirror(), "http://deb.debian.org/debian");
        for bad in ["ftp://x/", "http://", "deb.debian.org", "http:///x", "http://a b/"] {
            assert!(bad.parse::<ArchiveUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_apt_sources_in_both_formats() {
        let list = "# comment\ndeb http://deb.debian.org/debian bookworm main\n\
            deb [arch=amd64 signed-by=/k.gpg] https://example.org/apt/ stable main # x\n\
            deb-src http://src.example.org/ bookworm main\ndeb cdrom:[Debian]/ bookworm main\n\
            deb http://deb.debian.org/debian/ bookworm-updates main\n";
        let got: Vec<String> = apt_source_archives(list, false).into_iter().map(String::from).collect();
        assert_eq!(got, ["http://deb.debian.org/debian/", "https://example.org/apt/"]);
        let sources = "Types: deb deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\n\
            Types: deb-src\nURIs: http://only.src/\nSuites: x\n\n\
            Types: deb\nURIs: http://off.example/\nSuites: x\nEnabled: no\n";
        let got: Vec<String> = apt_source_archives(sources, true).into_iter().map(String::from).collect();
        assert_eq!(got, ["http://deb.debian.org/debian/"]);
    }

    #[test]
    fn a_release_must_verify_and_match() {
        let key = ArchiveKey::generate("Archive <a@example.org>", KeyAlgo::Ed25519).unwrap();
        let other = ArchiveKey::generate("Other <o@example.org>", KeyAlgo::Ed25519).unwrap();
        let release = b"Origin: Debian\nSuite: stable\nCodename: bookworm\nVersion: 12.8\n\
            Architectures: amd64 all\nComponents: main contrib\n";
        let signed = SignedRelease::InRelease(key.clearsign(release).unwrap());
        let now = Utc::now();
        let (r, signer) =
            verify_release(&signed, std::slice::from_ref(key.cert()), "Debian", "bookworm", true, now).unwrap();
        assert_eq!((r.version.as_deref(), signer), (Some("12.8"), key.fingerprint()));
        let e = verify_release(&signed, std::slice::from_ref(other.cert()), "Debian", "bookworm", true, now);
        assert!(e.unwrap_err().contains("does not verify"));
        let e = verify_release(&signed, std::slice::from_ref(key.cert()), "Debian", "trixie", true, now);
        assert!(e.unwrap_err().contains("Codename"));
        let unsigned = SignedRelease::InRelease(release.to_vec());
        let e = verify_release(&unsigned, std::slice::from_ref(key.cert()), "Debian", "bookworm", true, now);
        assert!(e.is_err(), "an unsigned release is refused");
        // Release with Release.gpg (no InRelease): the detached signature must cover it.
        let detached = |release: &[u8], signature: &[u8], signer: &ArchiveKey| {
            let signed = SignedRelease::Detached { release: release.to_vec(), signature: signature.to_vec() };
            verify_release(&signed, std::slice::from_ref(signer.cert()), "Debian", "bookworm", true, now)
        };
        let sig = key.detached_sign(release).unwrap();
        let (r, signer) = detached(release, &sig, &key).unwrap();
        assert_eq!((r.codename.as_str(), signer), ("bookworm", key.fingerprint()));
        let mut tampered = release.to_vec();
        tampered[0] = b'X';
        assert!(detached(&tampered, &sig, &key).unwrap_err().contains("Release.gpg does not verify"));
        assert!(detached(release, &sig, &other).unwrap_err().contains("Release.gpg does not verify"));
        let e = detached(release, b"garbage", &key);
        assert!(e.unwrap_err().contains("Release.gpg does not verify"), "garbage is no signature");
        assert!(check_source(&[], &[], "Debian", "bookworm", true).unwrap_err().contains("no apt keys"));
        let e = check_source(&[], std::slice::from_ref(key.cert()), "Debian", "bookworm", true).unwrap_err();
        assert!(e.contains("no active archive"));
        assert!(origin("debian").is_ok());
        assert_eq!(origin("Debian Backports").unwrap().name, "Debian");
        assert!(valid_origin("Debian Backports").is_ok());
        for bad in ["", " Debian", "Debian\nPin-Priority: 1001", "a,n=sid", "a:b", "a=b"] {
            assert!(valid_origin(bad).is_err(), "{bad:?}");
        }
        assert!(origin("Gentoo").unwrap_err().to_string().contains("Debian and Ubuntu"));
    }
}
