//! A scratch directory where `nobody` unpacks what an uploader wrote (debdiff, ports): root's
//! (0755), with the sources copied in by root, and a `tmp` directory, the only one `nobody` may
//! write. Root never writes into a directory `nobody` can change, and never follows what
//! `nobody` left there. Removed on drop.

use super::{ArchiveError, Result, io_err, read_limited};
use crate::deb::Dsc;
use std::path::{Path, PathBuf};

pub struct Scratch {
    dir: PathBuf,
    /// `nobody`'s uid and gid, when running as root.
    owner: Option<(u32, u32)>,
    copied: std::cell::Cell<u64>,
    /// Most bytes of sources copied in.
    limit: u64,
}

impl Scratch {
    /// A fresh scratch directory `buildbay-<what>-…` in the temporary directory.
    pub fn new(what: &str, limit: u64) -> Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("buildbay-{what}-{}", crate::protocol::fresh_micros()));
        std::fs::DirBuilder::new().mode(0o755).create(&dir).map_err(io_err(&dir))?;
        let owner = if nix::unistd::geteuid().is_root() {
            // Root never unpacks an uploader's source itself.
            let nobody = nix::unistd::User::from_name("nobody").ok().flatten().ok_or_else(|| ArchiveError::Io {
                path: dir.clone(),
                source: std::io::Error::other("there is no user nobody to unpack as"),
            })?;
            Some((nobody.uid.as_raw(), nobody.gid.as_raw()))
        } else {
            None
        };
        let s = Scratch { dir, owner, copied: std::cell::Cell::new(0), limit };
        let tmp = s.tmp();
        std::fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(io_err(&tmp))?;
        if let Some((u, g)) = s.owner {
            nix::unistd::chown(&tmp, Some(nix::unistd::Uid::from_raw(u)), Some(nix::unistd::Gid::from_raw(g)))
                .map_err(|e| io_err(&tmp)(e.into()))?;
        }
        Ok(s)
    }

    /// Where `nobody` writes.
    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Run `cmd` as `nobody` (when root), with `tmp` as its home and temporary directory.
    pub fn as_owner(&self, cmd: &mut std::process::Command) {
        cmd.env("TMPDIR", self.tmp()).env("HOME", self.tmp()).stdin(std::process::Stdio::null());
        if let Some((uid, gid)) = self.owner {
            use std::os::unix::process::CommandExt;
            // std drops the supplementary groups when it sets the uid.
            cmd.uid(uid).gid(gid);
        }
    }

    /// The directory `sub` (made when missing), root's: for what root itself writes there.
    pub fn root_dir(&self, sub: &str) -> Result<PathBuf> {
        let to = self.dir.join(sub);
        std::fs::create_dir_all(&to).map_err(io_err(&to))?;
        Ok(to)
    }

    /// Write a file into the directory `sub` (made when missing), as root; returns its path.
    pub fn put(&self, sub: &str, name: &crate::deb::FileName, data: &[u8]) -> Result<PathBuf> {
        let to = self.dir.join(sub);
        std::fs::create_dir_all(&to).map_err(io_err(&to))?;
        self.copied.set(self.copied.get() + data.len() as u64);
        if self.copied.get() > self.limit {
            return Err(ArchiveError::TooLarge(format!("the sources are larger than {} bytes", self.limit)));
        }
        let path = to.join(name.as_str());
        std::fs::write(&path, data).map_err(io_err(&path))?;
        Ok(path)
    }

    /// Copy a pool `.dsc` and the files it lists into a directory of its own; returns the copy.
    pub fn copy_source(&self, dsc: &Path, sub: &str) -> Result<PathBuf> {
        let text = read_limited(dsc)?;
        let parsed =
            Dsc::parse(&text).map_err(|source| ArchiveError::Control { file: dsc.display().to_string(), source })?;
        let to = self.dir.join(sub);
        std::fs::create_dir(&to).map_err(io_err(&to))?;
        let from = dsc.parent().unwrap_or(Path::new("."));
        let name = dsc.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for n in std::iter::once(name.clone()).chain(parsed.files.iter().map(|f| f.name.to_string())) {
            let size = std::fs::symlink_metadata(from.join(&n)).map_err(io_err(from.join(&n)))?.len();
            self.copied.set(self.copied.get() + size);
            if self.copied.get() > self.limit {
                return Err(ArchiveError::TooLarge(format!("the sources are larger than {} bytes", self.limit)));
            }
            std::fs::copy(from.join(&n), to.join(&n)).map_err(io_err(to.join(&n)))?;
        }
        Ok(to.join(name))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
