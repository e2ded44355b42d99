//! A slot's apt archive cache, verified before each build.
//!
//! The cache is written by apt as root in a build's session, where the build dependencies'
//! maintainer scripts run too (a package of the repository itself may be one, uploaded by anyone
//! the repository admits). apt takes a cached `.deb` on its size alone, so before a build starts
//! every `.deb` in its slot's cache must be, to the byte (SHA256), one that the image's own
//! package lists name. Those lists are written only by the chroot's `check` (apt in a source
//! session, from the archives' signed releases), never by a build. Everything else is removed.
//!
//! What was verified is recorded by inode, size and ctime (which no build can set back) in a
//! file beside the cache, outside any build's reach, so each file is hashed once.

use super::{BuilderError, io_err};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

/// The longest package list read (bookworm's main for amd64 is about 45 MB).
const MAX_LIST: u64 = 1 << 30;

/// What a verification found.
#[derive(Debug, Default, PartialEq)]
pub struct Verified {
    /// `.deb`s kept (each the archive's own).
    pub kept: usize,
    /// What was removed (a name, and why).
    pub removed: Vec<String>,
}

/// A package as apt names its file in the cache: `<name>_<version>_<arch>.deb`, each part
/// %-quoted (an epoch's `:` is `%3a`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub package: String,
    pub version: String,
    pub arch: String,
}

impl Key {
    /// The package a cache file name stands for, if it is one.
    pub fn from_file_name(name: &str) -> Option<Key> {
        let parts: Vec<&str> = name.strip_suffix(".deb")?.split('_').collect();
        let [p, v, a] = parts.as_slice() else { return None };
        let unquote = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|s| s.into_owned());
        let key = Key { package: unquote(p)?, version: unquote(v)?, arch: unquote(a)? };
        [&key.package, &key.version, &key.arch].iter().all(|s| !s.is_empty()).then_some(key)
    }
}

/// What the archive says a package's file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    pub sha256: String,
}

/// The sizes and SHA256 sums that a `Packages` list gives for the packages in `wanted`: a scan
/// of the stanzas' `Package`, `Version`, `Architecture`, `Size` and `SHA256` fields (the list
/// is large and read once per build; only these five fields matter).
pub fn expected(list: impl BufRead, wanted: &HashSet<Key>, found: &mut HashMap<Key, Expected>) {
    #[derive(Default)]
    struct Stanza {
        package: String,
        version: String,
        arch: String,
        size: Option<u64>,
        sha256: String,
    }
    let mut s = Stanza::default();
    let mut finish = |s: &mut Stanza| {
        let st = std::mem::take(s);
        let key = Key { package: st.package, version: st.version, arch: st.arch };
        if let (Some(size), false) = (st.size, st.sha256.is_empty())
            && wanted.contains(&key)
        {
            found.insert(key, Expected { size, sha256: st.sha256 });
        }
    };
    for line in list.split(b'\n').map_while(Result::ok) {
        if line.is_empty() {
            finish(&mut s);
            continue;
        }
        let Ok(line) = std::str::from_utf8(&line) else { continue };
        let Some((field, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match field {
            "Package" => s.package = value.to_owned(),
            "Version" => s.version = value.to_owned(),
            "Architecture" => s.arch = value.to_owned(),
            "Size" => s.size = value.parse().ok(),
            "SHA256" => s.sha256 = value.to_ascii_lowercase(),
            _ => {}
        }
    }
    finish(&mut s);
}

/// How a file was when it was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stamp {
    ino: u64,
    size: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp { ino: m.ino(), size: m.size(), ctime: m.ctime(), ctime_nsec: m.ctime_nsec() }
    }
}

/// Where the stamps of `cache` are kept: beside it, where its builds cannot write.
fn stamps_file(cache: &Path) -> PathBuf {
    let name = cache.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    cache.with_file_name(format!("{name}.verified"))
}

/// Verify `cache` against the package lists in `lists` (an image's `/var/lib/apt/lists`):
/// keep the `.deb`s the lists name with their size and SHA256, empty `partial/`, remove the rest.
pub fn verify(cache: &Path, lists: &Path) -> Result<Verified, BuilderError> {
    let mut out = Verified::default();
    let stamps_path = stamps_file(cache);
    let old: HashMap<String, Stamp> =
        std::fs::read(&stamps_path).ok().and_then(|raw| serde_json::from_slice(&raw).ok()).unwrap_or_default();
    let mut stamps: HashMap<String, Stamp> = HashMap::new();
    let mut unverified: Vec<(String, Key)> = Vec::new();
    let rd = match std::fs::read_dir(cache) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(cache)(e)),
    };
    for e in rd {
        let e = e.map_err(io_err(cache))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = cache.join(&name);
        let m = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        match (name.as_str(), Key::from_file_name(&name)) {
            ("partial", _) if m.is_dir() => {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
                std::fs::create_dir(&path).map_err(io_err(&path))?;
            }
            ("lock", _) if m.file_type().is_file() => {}
            (_, Some(key)) if m.file_type().is_file() => match old.get(&name) {
                Some(s) if *s == Stamp::of(&m) => {
                    stamps.insert(name, *s);
                    out.kept += 1;
                }
                _ => unverified.push((name, key)),
            },
            _ => {
                remove(&path, &m)?;
                out.removed.push(format!("{name}: not a package file"));
            }
        }
    }
    if !unverified.is_empty() {
        let wanted: HashSet<Key> = unverified.iter().map(|(_, k)| k.clone()).collect();
        let expected = lists_expected(lists, &wanted);
        for (name, key) in unverified {
            let path = cache.join(&name);
            match check_file(&path, expected.get(&key)) {
                Ok(stamp) => {
                    stamps.insert(name, stamp);
                    out.kept += 1;
                }
                Err(why) => {
                    let _ = std::fs::remove_file(&path);
                    out.removed.push(format!("{name}: {why}"));
                }
            }
        }
    }
    if stamps != old {
        let raw = serde_json::to_vec(&stamps).unwrap_or_default();
        crate::store::write_file_synced(&stamps_path, &raw).map_err(io_err(&stamps_path))?;
    }
    Ok(out)
}

/// What the `*_Packages` lists in `lists` say of `wanted`.
fn lists_expected(lists: &Path, wanted: &HashSet<Key>) -> HashMap<Key, Expected> {
    let mut found = HashMap::new();
    let Ok(rd) = std::fs::read_dir(lists) else { return found };
    for e in rd.flatten() {
        if found.len() == wanted.len() {
            break;
        }
        if !e.file_name().to_string_lossy().ends_with("_Packages") {
            continue;
        }
        if let Ok((f, _)) = crate::protocol::tar::open_regular(&e.path()) {
            expected(std::io::BufReader::new(f.take(MAX_LIST)), wanted, &mut found);
        }
    }
    found
}

/// The file is the archive's (its size, then its SHA256): its stamp, or why not.
fn check_file(path: &Path, expected: Option<&Expected>) -> Result<Stamp, String> {
    use sha2::Digest;
    let expected = expected.ok_or("not in the image's package lists")?;
    let (mut f, _) = crate::protocol::tar::open_regular(path).map_err(|e| e.to_string())?;
    let m = f.metadata().map_err(|e| e.to_string())?;
    if m.len() != expected.size {
        return Err(format!("{} bytes, the archive's are {}", m.len(), expected.size));
    }
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| e.to_string())?;
    let sum = hex::encode(hasher.finalize());
    if sum != expected.sha256 {
        return Err(format!("SHA256 {sum}, the archive's is {}", expected.sha256));
    }
    Ok(Stamp::of(&m))
}

fn remove(path: &Path, m: &std::fs::Metadata) -> Result<(), BuilderError> {
    if m.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }.map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn sha(data: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(data))
    }

    #[test]
    fn cache_names_are_apt_s() {
        let k = Key::from_file_name("libc6_2.36-9%2bdeb12u4_amd64.deb").unwrap();
        assert_eq!((k.package.as_str(), k.version.as_str(), k.arch.as_str()), ("libc6", "2.36-9+deb12u4", "amd64"));
        assert_eq!(Key::from_file_name("dpkg_1%3a1.21_all.deb").unwrap().version, "1:1.21");
        for bad in ["lock", "a_b.deb", "a_b_c_d.deb", "a__all.deb", "a_1_all.udeb"] {
            assert_eq!(Key::from_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_archives_own_files_stay() {
        let d = tempfile::tempdir().unwrap();
        let (lists, cache) = (d.path().join("lists"), d.path().join("caches/0"));
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::create_dir_all(cache.join("partial")).unwrap();
        let (good, evil) = (b"the archive's own".as_slice(), b"a trojan of its size".as_slice());
        let list = format!(
            "Package: good\nVersion: 1:1.0\nArchitecture: amd64\nSize: {}\nSHA256: {}\n\n\
             Package: poisoned\nArchitecture: all\nVersion: 2\nSHA256: {}\nSize: {}\n",
            good.len(),
            sha(good),
            sha(&good[..evil.len().min(good.len())]),
            evil.len()
        );
        std::fs::write(lists.join("deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"), list).unwrap();
        std::fs::write(cache.join("good_1%3a1.0_amd64.deb"), good).unwrap();
        std::fs::write(cache.join("poisoned_2_all.deb"), evil).unwrap();
        std::fs::write(cache.join("unknown_1_all.deb"), "?").unwrap();
        std::fs::write(cache.join("partial/half_1_all.deb"), "?").unwrap();
        std::fs::write(cache.join("lock"), "").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", cache.join("link_1_all.deb")).unwrap();
        std::fs::create_dir(cache.join("dir")).unwrap();

        let v = verify(&cache, &lists).unwrap();
        assert_eq!(v.kept, 1, "{v:?}");
        assert_eq!(v.removed.len(), 4, "{v:?}");
        let mut left: Vec<String> =
            std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["good_1%3a1.0_amd64.deb", "lock", "partial"]);
        assert_eq!(std::fs::read_dir(cache.join("partial")).unwrap().count(), 0);

        // Verified once, then known by its stamp; rewritten (same size), it is hashed again.
        assert_eq!(verify(&cache, &lists).unwrap(), Verified { kept: 1, removed: vec![] });
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(cache.join("good_1%3a1.0_amd64.deb"), b"the archive's 0wn").unwrap();
        let v = verify(&cache, &lists).unwrap();
        assert_eq!(v.kept, 0);
        assert!(v.removed[0].contains("SHA256"), "{v:?}");
    }
}
