//! Publishing a distribution's tree atomically.
//!
//! `dists/<dist>` is a symlink to a complete generation `dists/.gen/<dist>/<N>/`. A new generation
//! is built beside the current one (untouched indices hard-linked, touched ones regenerated,
//! `by-hash` files for this and the previous generation), signed, synced, and then swapped in with
//! one `rename` of the symlink. apt, or a crash, sees either the old tree or the new one, never a mix.

use super::compress;
use super::index::{self, HASHES, ReleaseFile, ReleaseMeta};
use crate::deb::Checksums;
use crate::gpg::ArchiveKey;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("signing Release: {0}")]
    Sign(#[from] crate::gpg::GpgError),
}

type Result<T> = std::result::Result<T, PublishError>;

pub fn io<P: AsRef<Path>>(path: P) -> impl FnOnce(std::io::Error) -> PublishError {
    let path = path.as_ref().to_owned();
    move |source| PublishError::Io { path, source }
}

/// What an index lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexKind {
    /// `<component>/binary-<arch>/Packages`: the `.deb`s (and `.ddeb`s) of an arch, with arch-all.
    Packages,
    /// `<component>/source/Sources`.
    Sources,
    /// `<component>/debian-installer/binary-<arch>/Packages`: the `.udeb`s, as reprepro's
    /// `UDebComponents` publishes them.
    Installer,
    /// `<component>/Contents-<arch>`: which package installs each path (compressed only).
    Contents,
}

/// One index of a distribution.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Part {
    pub component: String,
    /// `amd64`, … or `source` (for [`IndexKind::Sources`]): the part's key in the dirty table.
    pub arch: String,
    pub kind: IndexKind,
}

impl Part {
    /// The index's path in the distribution, without a compression extension.
    pub fn base(&self) -> String {
        let (c, a) = (&self.component, &self.arch);
        match self.kind {
            IndexKind::Packages => format!("{c}/binary-{a}/Packages"),
            IndexKind::Sources => format!("{c}/source/Sources"),
            IndexKind::Installer => format!("{c}/debian-installer/binary-{a}/Packages"),
            IndexKind::Contents => format!("{c}/Contents-{a}"),
        }
    }

    /// The directory the index is in.
    pub fn dir(&self) -> String {
        let base = self.base();
        base.rsplit_once('/').map_or(String::new(), |(d, _)| d.to_owned())
    }

    /// The files listed in `Release`: plain (`""`) and compressed.
    pub const EXTS: [&'static str; 3] = ["", ".gz", ".xz"];

    /// Whether the file with this extension is on disk. `Contents` is there compressed only;
    /// its plain form is listed all the same, as reprepro and Debian list it (apt fetches an
    /// index only when `Release` names its plain form).
    pub fn written(&self, ext: &str) -> bool {
        on_disk(&format!("{}{ext}", self.base()))
    }

    /// Every file of the index listed in `Release`, relative to the distribution directory.
    pub fn files(&self) -> Vec<String> {
        let base = self.base();
        Self::EXTS.iter().map(|ext| format!("{base}{ext}")).collect()
    }

    /// The index's `.gz`, which every index kind has on disk.
    pub fn gz(&self) -> String {
        format!("{}.gz", self.base())
    }

    /// How the index is cut into chunks for incremental compression.
    pub fn records(&self) -> compress::Records {
        match self.kind {
            IndexKind::Contents => compress::Records::Lines,
            _ => compress::Records::Stanzas,
        }
    }
}

/// Whether a file `Release` lists is on disk (all but the plain `Contents`).
pub fn on_disk(listed: &str) -> bool {
    let name = listed.rsplit('/').next().unwrap_or(listed);
    !name.starts_with("Contents-") || name.contains('.')
}

/// The checksums of a file `Release` lists, in `dist_dir`: a plain `Contents` from its `.gz`.
pub fn listed_sums(dist_dir: &Path, listed: &str) -> std::io::Result<Checksums> {
    if on_disk(listed) {
        return Checksums::of_file(&dist_dir.join(listed));
    }
    let gz = std::fs::File::open(dist_dir.join(format!("{listed}.gz")))?;
    Checksums::of_reader(flate2::read::GzDecoder::new(std::io::BufReader::new(gz)))
}

/// reprepro's compatibility link: `Contents-<arch>.gz` at the top of a tree (a distribution's
/// generation or a snapshot) is the first listed component's.
pub fn link_contents(tree: &Path, listed: &[ReleaseFile]) -> Result<()> {
    let mut linked = std::collections::BTreeSet::new();
    for f in listed {
        let Some((_, name)) = f.path.split_once('/') else { continue };
        if name.starts_with("Contents-") && name.ends_with(".gz") && !name.contains('/') && linked.insert(name) {
            let link = tree.join(name);
            std::os::unix::fs::symlink(&f.path, &link).map_err(io(&link))?;
        }
    }
    Ok(())
}

/// Whether a published `Release` lacks an index of `parts` (a tree from before that index kind).
pub fn lacks_parts(listed: &[ReleaseFile], parts: &[Part]) -> bool {
    parts.iter().any(|p| p.files().iter().any(|name| !listed.iter().any(|f| &f.path == name)))
}

/// Write a file and sync it; never leaves a partial file under `path`'s name.
pub fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    write_file_synced(path, data).map_err(io(path))
}

pub use crate::store::write_file_synced;

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// The chunk manifest of an index, kept beside it (not listed in `Release`).
fn manifest_name(index: &str) -> String {
    match index.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/.{base}.chunks"),
        None => format!(".{index}.chunks"),
    }
}

/// Compress an index, reusing the chunks of the current generation's files; hash it meanwhile.
fn compress_index(
    plain: &[u8],
    current: Option<&Path>,
    name: &str,
    records: compress::Records,
) -> (compress::Compressed, Checksums) {
    let prev = current.and_then(|cur| {
        let manifest: Vec<compress::ChunkMeta> =
            serde_json::from_slice(&std::fs::read(cur.join(manifest_name(name))).ok()?).ok()?;
        let gz = std::fs::read(cur.join(format!("{name}.gz"))).ok()?;
        let xz = std::fs::read(cur.join(format!("{name}.xz"))).ok()?;
        Some((manifest, gz, xz))
    });
    std::thread::scope(|s| {
        let sums = s.spawn(|| Checksums::of_bytes(plain));
        let prev = prev.as_ref().map(|(m, gz, xz)| compress::Previous { chunks: m, gz, xz });
        let c = compress::compress(plain, prev.as_ref(), records);
        (c, sums.join().expect("hash thread"))
    })
}

/// The generation directory a distribution's symlink points at, if published.
pub fn current_generation(dists: &Path, dist: &str) -> Option<(u64, PathBuf)> {
    let target = std::fs::read_link(dists.join(dist)).ok()?;
    let n = target.file_name()?.to_str()?.parse().ok()?;
    Some((n, dists.join(target)))
}

/// Publish one distribution. `fresh` holds the regenerated plain index text of the touched parts;
/// all other parts of `parts` are carried over from the current generation.
pub fn publish(
    dists: &Path,
    dist: &str,
    meta: &ReleaseMeta,
    parts: &[Part],
    fresh: Vec<(Part, Vec<u8>)>,
    key: &ArchiveKey,
) -> Result<()> {
    let gens = dists.join(".gen").join(dist);
    std::fs::create_dir_all(&gens).map_err(io(&gens))?;
    let current = current_generation(dists, dist);
    let prev_files: Vec<ReleaseFile> = current
        .as_ref()
        .and_then(|(_, dir)| std::fs::read_to_string(dir.join("Release")).ok())
        .map(|r| index::release_files(&r))
        .unwrap_or_default();
    // Pick a generation number above anything on disk, even leftovers of a crashed run.
    let mut next = current.as_ref().map_or(0, |(n, _)| *n) + 1;
    for e in std::fs::read_dir(&gens).map_err(io(&gens))?.flatten() {
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
            next = next.max(n + 1);
        }
    }
    let gen_dir = gens.join(next.to_string());
    std::fs::create_dir_all(&gen_dir).map_err(io(&gen_dir))?;

    let mut files: Vec<ReleaseFile> = Vec::new();
    let mut fresh = fresh;
    for part in parts {
        let dir = gen_dir.join(part.dir());
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let base = part.base();
        let names = part.files();
        let regenerated = fresh.iter().position(|(p, _)| p == part).map(|i| fresh.swap_remove(i).1);
        let carried =
            regenerated.is_none() && current.is_some() && names.iter().all(|n| prev_files.iter().any(|f| &f.path == n));
        let manifest = manifest_name(&base);
        if carried {
            let (_, cur) = current.as_ref().expect("checked");
            for (name, ext) in names.iter().zip(Part::EXTS) {
                if part.written(ext) {
                    std::fs::hard_link(cur.join(name), gen_dir.join(name)).map_err(io(gen_dir.join(name)))?;
                }
                let f = prev_files.iter().find(|f| &f.path == name).expect("checked");
                files.push(f.clone());
            }
            // Without its manifest the next publish just compresses everything again.
            let _ = std::fs::hard_link(cur.join(&manifest), gen_dir.join(&manifest));
        } else {
            let plain = regenerated.unwrap_or_default();
            let t = std::time::Instant::now();
            let (c, plain_sums) =
                compress_index(&plain, current.as_ref().map(|(_, d)| d.as_path()), &base, part.records());
            tracing::debug!(
                part = %base,
                bytes = plain.len(),
                chunks = c.chunks.len(),
                fresh = c.fresh,
                ms = t.elapsed().as_millis() as u64,
                "compressed"
            );
            for ext in Part::EXTS {
                let (data, sums) = match ext {
                    "" => (plain.as_slice(), plain_sums.clone()),
                    ".gz" => (c.gz.as_slice(), Checksums::of_bytes(&c.gz)),
                    _ => (c.xz.as_slice(), Checksums::of_bytes(&c.xz)),
                };
                let name = format!("{base}{ext}");
                if part.written(ext) {
                    write_synced(&gen_dir.join(&name), data)?;
                }
                files.push(ReleaseFile { path: name, sums });
            }
            let m = serde_json::to_vec(&c.chunks).expect("manifest serializes");
            write_synced(&gen_dir.join(&manifest), &m)?;
        }
    }
    link_contents(&gen_dir, &files)?;

    // by-hash: this generation's files, plus the previous generation's, for clients mid-update.
    for (f, from_prev) in files.iter().map(|f| (f, false)).chain(prev_files.iter().map(|f| (f, true))) {
        if from_prev && files.iter().any(|g| g.sums.sha256 == f.sums.sha256 && g.path == f.path) {
            continue;
        }
        let dir_exists = gen_dir.join(f.path.rsplit_once('/').map_or("", |(d, _)| d)).is_dir();
        if !dir_exists {
            continue;
        }
        for (field, _) in HASHES {
            let rel = index::by_hash_path(&f.path, &f.sums, field);
            let dst = gen_dir.join(&rel);
            if dst.exists() {
                continue;
            }
            let src = match (from_prev, &current) {
                (false, _) => gen_dir.join(&f.path),
                (true, Some((_, cur))) => cur.join(&rel),
                (true, None) => continue,
            };
            if !src.exists() {
                continue;
            }
            let parent = dst.parent().expect("by-hash path has a parent");
            std::fs::create_dir_all(parent).map_err(io(parent))?;
            std::fs::hard_link(&src, &dst).map_err(io(&dst))?;
        }
    }

    let release = index::release(meta, chrono::Utc::now(), &files);
    write_synced(&gen_dir.join("Release"), release.as_bytes())?;
    write_synced(&gen_dir.join("InRelease"), &key.clearsign(release.as_bytes())?)?;
    write_synced(&gen_dir.join("Release.gpg"), &key.detached_sign(release.as_bytes())?)?;
    let snapshots = gen_dir.join("snapshots");
    std::os::unix::fs::symlink(format!("../../../.snapshots/{dist}"), &snapshots).map_err(io(&snapshots))?;
    for part in parts {
        sync_dir(&gen_dir.join(part.dir()))?;
    }
    sync_dir(&gen_dir)?;

    // The swap: one rename makes the new generation visible.
    let link_tmp = dists.join(format!(".{dist}.link"));
    let _ = std::fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(format!(".gen/{dist}/{next}"), &link_tmp).map_err(io(&link_tmp))?;
    std::fs::rename(&link_tmp, dists.join(dist)).map_err(io(dists.join(dist)))?;
    sync_dir(dists)?;

    // Old generations are unreachable now.
    for e in std::fs::read_dir(&gens).map_err(io(&gens))?.flatten() {
        if e.file_name().to_str() != Some(next.to_string().as_str()) {
            std::fs::remove_dir_all(e.path()).map_err(io(e.path()))?;
        }
    }
    Ok(())
}

/// Remove a distribution's published tree entirely.
pub fn unpublish(dists: &Path, dist: &str) -> Result<()> {
    let link = dists.join(dist);
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).map_err(io(&link))?;
    }
    for dir in [dists.join(".gen").join(dist), dists.join(".snapshots").join(dist)] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_from_before_contents_lacks_parts() {
        let part = |arch: &str, kind| Part { component: "main".into(), arch: arch.into(), kind };
        let parts = [part("amd64", IndexKind::Packages), part("amd64", IndexKind::Contents)];
        let listed = |parts: &[Part]| -> Vec<ReleaseFile> {
            parts
                .iter()
                .flat_map(|p| p.files())
                .map(|path| ReleaseFile { path, sums: Checksums::of_bytes(b"") })
                .collect()
        };
        assert!(!lacks_parts(&listed(&parts), &parts));
        assert!(lacks_parts(&listed(&parts[..1]), &parts), "no Contents yet");
        assert_eq!(parts[1].files(), ["main/Contents-amd64", "main/Contents-amd64.gz", "main/Contents-amd64.xz"]);
        assert!(!on_disk("main/Contents-amd64") && on_disk("main/Contents-amd64.gz"));
        assert!(on_disk("main/binary-amd64/Packages"));
        assert_eq!(parts[1].gz(), "main/Contents-amd64.gz");
        let udeb = part("amd64", IndexKind::Installer);
        assert_eq!(udeb.dir(), "main/debian-installer/binary-amd64");
    }
}
