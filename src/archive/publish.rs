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

/// One index directory of a distribution: `(component, "binary-<arch>" | "source")`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Part {
    pub component: String,
    /// `amd64`, … or `source`.
    pub arch: String,
}

impl Part {
    pub fn dir(&self) -> String {
        if self.arch == "source" {
            format!("{}/source", self.component)
        } else {
            format!("{}/binary-{}", self.component, self.arch)
        }
    }

    pub fn base_name(&self) -> &'static str {
        if self.arch == "source" { "Sources" } else { "Packages" }
    }
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
fn compress_index(plain: &[u8], current: Option<&Path>, name: &str) -> (compress::Compressed, Checksums) {
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
        let c = compress::compress(plain, prev.as_ref());
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
        let names = ["", ".gz", ".xz"].map(|ext| format!("{}/{}{ext}", part.dir(), part.base_name()));
        let regenerated = fresh.iter().position(|(p, _)| p == part).map(|i| fresh.swap_remove(i).1);
        let carried =
            regenerated.is_none() && current.is_some() && names.iter().all(|n| prev_files.iter().any(|f| &f.path == n));
        let manifest = manifest_name(&names[0]);
        if carried {
            let (_, cur) = current.as_ref().expect("checked");
            for name in &names {
                std::fs::hard_link(cur.join(name), gen_dir.join(name)).map_err(io(gen_dir.join(name)))?;
                let f = prev_files.iter().find(|f| &f.path == name).expect("checked");
                files.push(f.clone());
            }
            // Without its manifest the next publish just compresses everything again.
            let _ = std::fs::hard_link(cur.join(&manifest), gen_dir.join(&manifest));
        } else {
            let plain = regenerated.unwrap_or_default();
            let t = std::time::Instant::now();
            let (c, plain_sums) = compress_index(&plain, current.as_ref().map(|(_, d)| d.as_path()), &names[0]);
            tracing::debug!(
                part = %part.dir(),
                bytes = plain.len(),
                chunks = c.chunks.len(),
                fresh = c.fresh,
                ms = t.elapsed().as_millis() as u64,
                "compressed"
            );
            write_synced(&gen_dir.join(&names[0]), &plain)?;
            files.push(ReleaseFile { path: names[0].clone(), sums: plain_sums });
            for (name, data) in names[1..].iter().zip([&c.gz, &c.xz]) {
                write_synced(&gen_dir.join(name), data)?;
                files.push(ReleaseFile { path: name.clone(), sums: Checksums::of_bytes(data) });
            }
            let m = serde_json::to_vec(&c.chunks).expect("manifest serializes");
            write_synced(&gen_dir.join(&manifest), &m)?;
        }
    }

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
