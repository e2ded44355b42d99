//! Reading a `.deb`: ar, then its control.tar (the control stanza) or its data.tar (the paths it
//! installs, for `Contents`). Both members may be plain, `.gz`, `.xz` or `.zst`.

use super::control::{ControlError, Stanza};
use std::io::Read;
use std::path::Path;

/// Most a control member may unpack to; real ones are a few KiB.
const CONTROL_LIMIT: u64 = 16 << 20;
/// Most a data member may unpack to (real packages reach a few GiB; an xz bomb stops here).
const DATA_LIMIT: u64 = 8 << 30;
/// Most memory an xz or lzma member's decoder may take (`xz -9` needs 65 MiB).
const XZ_MEMLIMIT: u64 = 256 << 20;
/// Most a GNU long name or a pax header inside a data member may hold.
const NAME_HEADER_LIMIT: u64 = 64 << 10;
/// Most paths a package may install (texlive's biggest lists about 100,000).
pub const MAX_PATHS: usize = 1 << 19;
/// Longest path a package may install, as Linux's PATH_MAX.
const MAX_PATH_LEN: usize = 4096;
/// Most bytes of paths a package may list (texlive's biggest lists about 10 MB).
pub const MAX_PATHS_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("not a Debian binary package (bad ar archive): {0}")]
    Ar(std::io::Error),
    #[error("not a Debian binary package: first member is {0:?}, expected debian-binary")]
    NotDeb(String),
    #[error("no {0} member; the .deb is truncated or corrupt")]
    NoMember(&'static str),
    #[error("unsupported {0} member compression {1:?}")]
    Compression(&'static str, String),
    #[error("{0} cannot be read: {1}; the .deb is corrupt")]
    Tar(&'static str, std::io::Error),
    #[error("control.tar has no ./control file")]
    NoControlFile,
    #[error("{0} member unpacks to more than {1} bytes")]
    TooLarge(&'static str, u64),
    #[error("data.tar lists more than {MAX_PATHS} paths, or more than {MAX_PATHS_BYTES} bytes of them")]
    TooManyPaths,
    #[error(
        "data.tar holds the path {0:?}: a path with a control character, over {MAX_PATH_LEN} bytes or not UTF-8 cannot be listed in Contents; rename it"
    )]
    BadPath(String),
    #[error("control file: {0}")]
    Control(#[from] ControlError),
}

/// The kind of a binary package file, by its name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageType {
    /// An ordinary `.deb`.
    #[default]
    Deb,
    /// A debian-installer package: indexed in `<component>/debian-installer/binary-<arch>/`.
    Udeb,
    /// Ubuntu's debug-symbols package: an ordinary package with another extension.
    Ddeb,
}

impl PackageType {
    pub fn of_file(name: &str) -> Option<PackageType> {
        let (_, ext) = name.rsplit_once('.')?;
        match ext {
            "deb" => Some(PackageType::Deb),
            "udeb" => Some(PackageType::Udeb),
            "ddeb" => Some(PackageType::Ddeb),
            _ => None,
        }
    }

    pub fn is_deb(&self) -> bool {
        *self == PackageType::Deb
    }

    /// Whether `file` is a package whose paths `Contents` lists: a `.deb` or a `.ddeb` (the
    /// installer's `.udeb`s are left out, as reprepro leaves them out for mini-buildd).
    pub fn in_contents(file: &str) -> bool {
        matches!(PackageType::of_file(file), Some(PackageType::Deb | PackageType::Ddeb))
    }
}

/// The control stanza of a `.deb` file.
pub fn read_control(path: &Path) -> Result<Stanza, DebError> {
    let file = std::fs::File::open(path).map_err(DebError::Ar)?;
    read_control_from(file)
}

pub fn read_control_from(reader: impl Read) -> Result<Stanza, DebError> {
    with_member(reader, "control.tar", CONTROL_LIMIT, |tar| control_from_tar(tar))
}

/// The paths a `.deb` installs, as `Contents` lists them: files, symlinks and hard links, without
/// directories or a leading `./`, in the member's order.
pub fn read_contents(path: &Path) -> Result<Vec<String>, DebError> {
    let file = std::fs::File::open(path).map_err(DebError::Ar)?;
    read_contents_from(std::io::BufReader::new(file))
}

pub fn read_contents_from(reader: impl Read) -> Result<Vec<String>, DebError> {
    with_member(reader, "data.tar", DATA_LIMIT, |tar| {
        let mut tar = tar::Archive::new(tar);
        let mut out = Vec::new();
        let mut bytes = 0;
        let err = |e| DebError::Tar("data.tar", e);
        // Raw entries: the tar crate would read a GNU long name or a pax header whole, whatever
        // size it declares; here each is bounded before it is read.
        let mut long_name: Option<Vec<u8>> = None;
        for entry in tar.entries().map_err(err)?.raw(true) {
            let mut entry = entry.map_err(err)?;
            let kind = entry.header().entry_type();
            if kind.is_gnu_longname()
                || kind.is_gnu_longlink()
                || kind.is_pax_local_extensions()
                || kind.is_pax_global_extensions()
            {
                if entry.header().size().map_err(err)? > NAME_HEADER_LIMIT {
                    return Err(DebError::TooLarge("data.tar name header", NAME_HEADER_LIMIT));
                }
                let mut data = Vec::new();
                (&mut entry).take(NAME_HEADER_LIMIT).read_to_end(&mut data).map_err(err)?;
                if kind.is_gnu_longname() {
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    long_name = Some(data[..end].to_vec());
                } else if kind.is_pax_local_extensions() {
                    for ext in tar::PaxExtensions::new(&data) {
                        let ext = ext.map_err(err)?;
                        if ext.key_bytes() == b"path" {
                            long_name = Some(ext.value_bytes().to_vec());
                        }
                    }
                }
                continue;
            }
            let raw = long_name.take().unwrap_or_else(|| entry.path_bytes().into_owned());
            if kind.is_dir() {
                continue;
            }
            let path = std::str::from_utf8(&raw)
                .ok()
                .filter(|p| p.len() <= MAX_PATH_LEN && !p.chars().any(char::is_control))
                .ok_or_else(|| DebError::BadPath(String::from_utf8_lossy(&raw).chars().take(200).collect()))?;
            let path = path.trim_start_matches("./").trim_start_matches('/');
            if path.is_empty() {
                continue;
            }
            bytes += path.len() + 1;
            if out.len() == MAX_PATHS || bytes > MAX_PATHS_BYTES {
                return Err(DebError::TooManyPaths);
            }
            out.push(path.to_owned());
        }
        Ok(out)
    })
}

/// Find the `<prefix>(.gz|.xz|.lzma|.zst)` member after `debian-binary` and read it, decompressed and
/// bounded at `limit` both ways (a small bomb stops at the limit, with an error).
fn with_member<T>(
    reader: impl Read,
    prefix: &'static str,
    limit: u64,
    read: impl FnOnce(Capped<Box<dyn Read + '_>>) -> Result<T, DebError>,
) -> Result<T, DebError> {
    let mut ar = ar::Archive::new(reader);
    let mut first = true;
    while let Some(entry) = ar.next_entry() {
        let entry = entry.map_err(DebError::Ar)?;
        let name = String::from_utf8_lossy(entry.header().identifier()).trim_end_matches('/').to_owned();
        if first {
            if name != "debian-binary" {
                return Err(DebError::NotDeb(name));
            }
            first = false;
            continue;
        }
        let Some(comp) = name.strip_prefix(prefix) else { continue };
        let limited = entry.take(limit);
        let tar: Box<dyn Read> = match comp {
            "" => Box::new(limited),
            ".gz" => Box::new(flate2::read::GzDecoder::new(limited)),
            ".xz" | ".lzma" => {
                let stream = match comp {
                    ".xz" => liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0),
                    _ => liblzma::stream::Stream::new_lzma_decoder(XZ_MEMLIMIT),
                };
                let stream = stream.map_err(|e| DebError::Tar(prefix, std::io::Error::other(e)))?;
                Box::new(liblzma::read::XzDecoder::new_stream(limited, stream))
            }
            ".zst" => Box::new(zstd::stream::read::Decoder::new(limited).map_err(|e| DebError::Tar(prefix, e))?),
            other => return Err(DebError::Compression(prefix, other.to_owned())),
        };
        return read(Capped { inner: tar, left: limit }).map_err(|e| match e {
            DebError::Tar(_, io) if io.kind() == std::io::ErrorKind::FileTooLarge => DebError::TooLarge(prefix, limit),
            other => other,
        });
    }
    if first { Err(DebError::NotDeb(String::new())) } else { Err(DebError::NoMember(prefix)) }
}

/// A reader that fails (not just ends) past `left` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "the member unpacks to too much")),
            };
        }
        let max = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn control_from_tar(reader: impl Read) -> Result<Stanza, DebError> {
    let err = |e| DebError::Tar("control.tar", e);
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(err)? {
        let entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?;
        if path.as_os_str() == "./control" || path.as_os_str() == "control" {
            let mut text = String::new();
            entry.take(CONTROL_LIMIT).read_to_string(&mut text).map_err(err)?;
            return Ok(Stanza::parse_one(&text)?);
        }
    }
    Err(DebError::NoControlFile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        use std::io::Write;
        // A control.tar with 64 MiB of zeros before ./control compresses to a few KiB of xz.
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        {
            let mut tar = tar::Builder::new(&mut xz);
            let mut h = tar::Header::new_gnu();
            h.set_size(64 << 20);
            h.set_mode(0o644);
            tar.append_data(&mut h, "./big", std::io::repeat(0).take(64 << 20)).unwrap();
            let control = b"Package: x\n";
            let mut h = tar::Header::new_gnu();
            h.set_size(control.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, "./control", &control[..]).unwrap();
            tar.finish().unwrap();
        }
        xz.flush().unwrap();
        let member = xz.finish().unwrap();
        assert!(member.len() < (1 << 20));
        let mut deb = Vec::new();
        {
            let mut ar = ar::Builder::new(&mut deb);
            ar.append(&ar::Header::new(b"debian-binary".to_vec(), 4), &b"2.0\n"[..]).unwrap();
            ar.append(&ar::Header::new(b"control.tar.xz".to_vec(), member.len() as u64), &member[..]).unwrap();
        }
        let t = std::time::Instant::now();
        let r = read_control_from(&deb[..]);
        assert!(matches!(r, Err(DebError::TooLarge("control.tar", _))), "{r:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(30));
    }

    /// A `.deb` of `debian-binary` and one member.
    fn deb_of(member: &str, data: &[u8]) -> Vec<u8> {
        let mut ar = ar::Builder::new(Vec::new());
        ar.append(&ar::Header::new(b"debian-binary".to_vec(), 4), &b"2.0\n"[..]).unwrap();
        ar.append(&ar::Header::new(member.as_bytes().to_vec(), data.len() as u64), data).unwrap();
        ar.into_inner().unwrap()
    }

    /// A data.tar.gz with these (path, type) entries; a path may hold any byte.
    fn data_tar(entries: &[(&[u8], tar::EntryType)]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        {
            let mut tar = tar::Builder::new(&mut gz);
            for (path, kind) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(*kind);
                h.set_size(0);
                h.set_mode(0o644);
                if kind.is_symlink() || kind.is_hard_link() {
                    h.set_link_name("usr/bin/target").unwrap();
                }
                // The raw name field: `set_path` would refuse what a hostile build writes.
                h.as_old_mut().name[..path.len()].copy_from_slice(path);
                h.set_cksum();
                tar.append(&h, std::io::empty()).unwrap();
            }
            tar.finish().unwrap();
        }
        gz.finish().unwrap()
    }

    #[test]
    fn contents_lists_files_and_links_not_directories() {
        use tar::EntryType as T;
        let tar = data_tar(&[
            (b"./", T::Directory),
            (b"./usr/", T::Directory),
            (b"./usr/bin/hello", T::Regular),
            (b"./usr/bin/hi", T::Symlink),
            (b"./usr/bin/hey", T::Link),
            (b"usr/share/doc/hello copy", T::Regular),
        ]);
        let paths = read_contents_from(&deb_of("data.tar.gz", &tar)[..]).unwrap();
        assert_eq!(paths, ["usr/bin/hello", "usr/bin/hi", "usr/bin/hey", "usr/share/doc/hello copy"]);
    }

    #[test]
    fn contents_refuses_a_path_that_would_forge_a_line() {
        use tar::EntryType as T;
        for evil in [&b"./usr/bin/x\nusr/bin/sudo"[..], b"./usr/bin/x\tadmin/sudo", b"./usr/\xff"] {
            let tar = data_tar(&[(b"./usr/bin/ok", T::Regular), (evil, T::Regular)]);
            let r = read_contents_from(&deb_of("data.tar.gz", &tar)[..]);
            assert!(matches!(r, Err(DebError::BadPath(_))), "{evil:?}: {r:?}");
        }
    }

    #[test]
    fn contents_stops_at_its_bound() {
        // 17,000 paths of 4,000 bytes: 68 MB of paths, past the 64 MiB bound, in a small member.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        {
            let mut tar = tar::Builder::new(&mut gz);
            let long = "x".repeat(3990);
            for i in 0..17_000 {
                let mut h = tar::Header::new_gnu();
                h.set_size(0);
                h.set_mode(0o644);
                tar.append_data(&mut h, format!("./{long}{i:05}"), std::io::empty()).unwrap();
            }
            tar.finish().unwrap();
        }
        let data = gz.finish().unwrap();
        let r = read_contents_from(&deb_of("data.tar.gz", &data)[..]);
        assert!(matches!(r, Err(DebError::TooManyPaths)), "{:?}", r.map(|p| p.len()));
    }

    #[test]
    fn contents_bounds_long_names_and_reads_them() {
        // A GNU long-name header declaring 1 GiB: refused before it is read.
        let mut tar = Vec::new();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_size(1 << 30);
        h.set_mode(0o644);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend(std::iter::repeat_n(b'a', 4096));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let r = read_contents_from(&deb_of("data.tar.gz", &gz.finish().unwrap())[..]);
        assert!(matches!(r, Err(DebError::TooLarge("data.tar name header", _))), "{r:?}");

        // Long names that are real (GNU and pax) are listed whole.
        let long = format!("usr/share/doc/pkg/{}", "n".repeat(300));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        {
            let mut tar = tar::Builder::new(&mut gz);
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o644);
            tar.append_data(&mut h, format!("./{long}"), std::io::empty()).unwrap();
            tar.append_pax_extensions([("path", format!("./{long}.pax").as_bytes())]).unwrap();
            let mut h = tar::Header::new_ustar();
            h.set_size(0);
            h.set_mode(0o644);
            h.set_path("./short").unwrap();
            h.set_cksum();
            tar.append(&h, std::io::empty()).unwrap();
            tar.finish().unwrap();
        }
        let paths = read_contents_from(&deb_of("data.tar.gz", &gz.finish().unwrap())[..]).unwrap();
        assert_eq!(paths, [long.clone(), format!("{long}.pax")]);
    }

    #[test]
    fn contents_needs_a_data_member() {
        let control = data_tar(&[(b"./control", tar::EntryType::Regular)]);
        let r = read_contents_from(&deb_of("control.tar.gz", &control)[..]);
        assert!(matches!(r, Err(DebError::NoMember("data.tar"))), "{r:?}");
        let r = read_contents_from(&deb_of("data.tar.lz4", b"x")[..]);
        assert!(matches!(r, Err(DebError::Compression("data.tar", _))), "{r:?}");
    }

    #[test]
    fn package_types_by_extension() {
        assert_eq!(PackageType::of_file("a_1_amd64.deb"), Some(PackageType::Deb));
        assert_eq!(PackageType::of_file("a-udeb_1_amd64.udeb"), Some(PackageType::Udeb));
        assert_eq!(PackageType::of_file("a-dbgsym_1_amd64.ddeb"), Some(PackageType::Ddeb));
        assert_eq!(PackageType::of_file("a_1.dsc"), None);
        assert_eq!(PackageType::of_file("deb"), None);
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(matches!(read_control_from(&b"hello world"[..]), Err(DebError::Ar(_))));
        assert!(read_control_from(&b""[..]).is_err());
    }
}
