//! The tar layout of requests and results: plain file names (and `.config/<name>` in a request),
//! regular files only, bounded in number and size, written and unpacked without following
//! any symlink, and never with the modes or owners the archive claims.

use super::ProtocolError;
use crate::deb::FileName;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How much a tar may hold.
#[derive(Debug, Clone, Copy)]
pub struct TarLimits {
    pub max_entries: usize,
    pub max_bytes: u64,
}

impl Default for TarLimits {
    fn default() -> TarLimits {
        TarLimits { max_entries: 1000, max_bytes: 8 << 30 }
    }
}

fn tar_err(why: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Tar(why.to_string())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProtocolError + '_ {
    move |source| ProtocolError::Io { path: path.to_owned(), source }
}

/// Open a file to read that must be a regular file, never through a symlink (a file a build
/// wrote). Returns it with its length.
pub fn open_regular(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)?;
    regular(f, &path.display())
}

/// An open file with its length, when it is a regular file (not a FIFO, a device, …).
fn regular(f: std::fs::File, name: &dyn std::fmt::Display) -> std::io::Result<(std::fs::File, u64)> {
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{name} is not a regular file")));
    }
    Ok((f, m.len()))
}

/// Open `rel` beneath `root` for reading: a regular file, reached through no symbolic link at
/// all and never above `root` (another instance's tree being taken over). Returns it with its
/// length.
pub fn open_regular_beneath(root: &Path, rel: &str) -> std::io::Result<(std::fs::File, u64)> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let dir = std::fs::File::open(root)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let f: std::fs::File = nix::fcntl::openat2(&dir, rel, how)
        .map_err(|e| std::io::Error::other(format!("{}/{rel}: {e} (symbolic links are not followed)", root.display())))?
        .into();
    regular(f, &format_args!("{}/{rel}", root.display()))
}

/// Writes a tar of regular files, each added from an open file (no symlink is followed).
pub struct Writer {
    tar: tar::Builder<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    mtime: u64,
}

impl Writer {
    /// A new tar at `path`, written to a temporary name until `finish`.
    pub fn create(path: &Path) -> Result<Writer, ProtocolError> {
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        Ok(Writer {
            tar: tar::Builder::new(file),
            tmp,
            path: path.to_owned(),
            mtime: chrono::Utc::now().timestamp().max(0) as u64,
        })
    }

    fn header(&self, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(self.mtime);
        h.set_entry_type(tar::EntryType::Regular);
        h
    }

    /// Add bytes under `name`.
    pub fn add_bytes(&mut self, name: &str, data: &[u8]) -> Result<(), ProtocolError> {
        let mut h = self.header(data.len() as u64);
        self.tar.append_data(&mut h, name, data).map_err(io(&self.tmp))
    }

    /// Add the regular file `from` under `name`; a symlink or anything else is refused.
    pub fn add_file(&mut self, name: &str, from: &Path) -> Result<(), ProtocolError> {
        let (f, len) = open_regular(from).map_err(io(from))?;
        let mut h = self.header(len);
        self.tar.append_data(&mut h, name, f.take(len)).map_err(io(from))
    }

    pub fn finish(self) -> Result<(), ProtocolError> {
        let file = self.tar.into_inner().map_err(io(&self.tmp))?;
        file.sync_all().map_err(io(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))
    }
}

/// Unpack a tar into the (new, empty) directory `out`: regular files with plain names only, and
/// `.config/<plain name>` when `with_config`. Other entry types are skipped; a name that is not
/// plain, a name given twice, or more than the limits allow refuses the whole tar. Files are
/// created fresh (never through an existing name) with mode 0644. Returns the names, in order.
pub fn unpack(tar_path: &Path, out: &Path, with_config: bool, limits: TarLimits) -> Result<Vec<String>, ProtocolError> {
    let (mut file, _) = open_regular(tar_path).map_err(io(tar_path))?;
    unpack_from(&mut file, out, with_config, limits)
}

/// [`unpack`] from an open file.
pub fn unpack_from(
    file: &mut std::fs::File,
    out: &Path,
    with_config: bool,
    limits: TarLimits,
) -> Result<Vec<String>, ProtocolError> {
    let mut ar = tar::Archive::new(file);
    let plain = |n: &str| n.parse::<FileName>().is_ok();
    let mut names: Vec<String> = Vec::new();
    let mut total: u64 = 0;
    for entry in ar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = {
            let raw = entry.path_bytes();
            std::str::from_utf8(&raw).map_err(|_| tar_err("a name is not UTF-8"))?.to_owned()
        };
        let config = with_config && name.strip_prefix(".config/").is_some_and(plain);
        if !plain(&name) && !config {
            let allowed = if with_config { "plain file names and .config/*" } else { "plain file names" };
            return Err(tar_err(format!("it holds {name:?}; only {allowed} are allowed")));
        }
        if names.contains(&name) {
            return Err(tar_err(format!("it holds {name} twice")));
        }
        if names.len() >= limits.max_entries {
            return Err(tar_err(format!("it holds more than {} files", limits.max_entries)));
        }
        let size = entry.header().size().map_err(tar_err)?;
        total = total.saturating_add(size);
        if total > limits.max_bytes {
            return Err(tar_err(format!("it holds more than {} bytes", limits.max_bytes)));
        }
        let dst = out.join(&name);
        if config {
            let d = out.join(".config");
            match std::fs::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&d)(e)),
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&dst)
            .map_err(io(&dst))?;
        let copied = std::io::copy(&mut (&mut entry).take(size), &mut f).map_err(io(&dst))?;
        if copied != size {
            return Err(tar_err(format!("{name} is truncated")));
        }
        f.flush().map_err(io(&dst))?;
        names.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_tar(path: &Path, entries: &[(&str, tar::EntryType, &[u8])]) {
        let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o4755);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/shadow").unwrap();
            }
            // Raw name bytes: the tar crate refuses to write `..` itself, an attacker's tar would not.
            let raw = &mut h.as_old_mut().name;
            raw.fill(0);
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap();
    }

    #[test]
    fn unpacks_plain_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.tar");
        raw_tar(
            &t,
            &[
                ("hello_1.0.dsc", tar::EntryType::Regular, b"dsc"),
                ("link", tar::EntryType::Symlink, b""),
                (".config/apt_keys", tar::EntryType::Regular, b"k"),
            ],
        );
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let names = unpack(&t, &out, true, TarLimits::default()).unwrap();
        assert_eq!(names, ["hello_1.0.dsc", ".config/apt_keys"]);
        assert!(!out.join("link").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(out.join("hello_1.0.dsc")).unwrap().permissions().mode() & 0o7777, 0o644);
        // Without config, .config/* is refused; paths always are.
        let out2 = dir.path().join("out2");
        std::fs::create_dir(&out2).unwrap();
        assert!(unpack(&t, &out2, false, TarLimits::default()).is_err());
        for bad in ["sub/evil", "../evil", "/etc/evil", ".config/../../evil"] {
            raw_tar(&t, &[(bad, tar::EntryType::Regular, b"x")]);
            let o = dir.path().join(format!("o{}", bad.len()));
            std::fs::create_dir(&o).unwrap();
            let e = unpack(&t, &o, true, TarLimits::default()).unwrap_err().to_string();
            assert!(e.contains("only plain file names"), "{bad}: {e}");
        }
    }

    #[test]
    fn limits_and_existing_names() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.tar");
        raw_tar(&t, &[("a.deb", tar::EntryType::Regular, b"12345"), ("b.deb", tar::EntryType::Regular, b"12345")]);
        let o = dir.path().join("o");
        std::fs::create_dir(&o).unwrap();
        let e = unpack(&t, &o, false, TarLimits { max_entries: 1, max_bytes: 100 }).unwrap_err();
        assert!(e.to_string().contains("more than 1 files"), "{e}");
        let o = dir.path().join("o2");
        std::fs::create_dir(&o).unwrap();
        let e = unpack(&t, &o, false, TarLimits { max_entries: 10, max_bytes: 8 }).unwrap_err();
        assert!(e.to_string().contains("more than 8 bytes"), "{e}");
        // A name already in the directory (a symlink planted there) is never written through.
        let o = dir.path().join("o3");
        std::fs::create_dir(&o).unwrap();
        std::os::unix::fs::symlink(dir.path().join("victim"), o.join("a.deb")).unwrap();
        assert!(unpack(&t, &o, false, TarLimits::default()).is_err());
        assert!(!dir.path().join("victim").exists());
    }

    #[test]
    fn the_writer_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("x.deb")).unwrap();
        let mut w = Writer::create(&dir.path().join("r.tar")).unwrap();
        assert!(w.add_file("x.deb", &dir.path().join("x.deb")).is_err());
        std::fs::write(dir.path().join("y.deb"), "y").unwrap();
        w.add_file("y.deb", &dir.path().join("y.deb")).unwrap();
        w.finish().unwrap();
        let o = dir.path().join("o");
        std::fs::create_dir(&o).unwrap();
        assert_eq!(unpack(&dir.path().join("r.tar"), &o, false, TarLimits::default()).unwrap(), ["y.deb"]);
    }
}
