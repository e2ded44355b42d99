//! Reading a `.deb`'s control fields: ar, then control.tar(.gz|.xz|.zst).

use super::control::{ControlError, Stanza};
use std::io::Read;
use std::path::Path;

/// Most a control member may unpack to; real ones are a few KiB.
const CONTROL_LIMIT: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("not a Debian binary package (bad ar archive): {0}")]
    Ar(std::io::Error),
    #[error("not a Debian binary package: first member is {0:?}, expected debian-binary")]
    NotDeb(String),
    #[error("no control.tar member; the .deb is truncated or corrupt")]
    NoControl,
    #[error("unsupported control member compression {0:?}")]
    Compression(String),
    #[error("control.tar cannot be read: {0}; the .deb is corrupt")]
    Tar(std::io::Error),
    #[error("control.tar has no ./control file")]
    NoControlFile,
    #[error("control member is larger than {CONTROL_LIMIT} bytes")]
    TooLarge,
    #[error("control file: {0}")]
    Control(#[from] ControlError),
}

/// The control stanza of a `.deb` file.
pub fn read_control(path: &Path) -> Result<Stanza, DebError> {
    let file = std::fs::File::open(path).map_err(DebError::Ar)?;
    read_control_from(file)
}

pub fn read_control_from(reader: impl Read) -> Result<Stanza, DebError> {
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
        let Some(comp) = name.strip_prefix("control.tar") else { continue };
        let limited = entry.take(CONTROL_LIMIT);
        let tar: Box<dyn Read> = match comp {
            "" => Box::new(limited),
            ".gz" => Box::new(flate2::read::GzDecoder::new(limited)),
            ".xz" => Box::new(liblzma::read::XzDecoder::new(limited)),
            ".zst" => Box::new(zstd::stream::read::Decoder::new(limited).map_err(DebError::Tar)?),
            other => return Err(DebError::Compression(other.to_owned())),
        };
        // The decompressed stream is bounded too: a small bomb stops at the limit, with an error.
        return control_from_tar(Capped { inner: tar, left: CONTROL_LIMIT }).map_err(|e| match e {
            DebError::Tar(io) if io.kind() == std::io::ErrorKind::FileTooLarge => DebError::TooLarge,
            other => other,
        });
    }
    if first { Err(DebError::NotDeb(String::new())) } else { Err(DebError::NoControl) }
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
                _ => {
                    Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "the control member unpacks to too much"))
                }
            };
        }
        let max = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn control_from_tar(reader: impl Read) -> Result<Stanza, DebError> {
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(DebError::Tar)? {
        let entry = entry.map_err(DebError::Tar)?;
        let path = entry.path().map_err(DebError::Tar)?;
        if path.as_os_str() == "./control" || path.as_os_str() == "control" {
            let mut text = String::new();
            entry.take(CONTROL_LIMIT).read_to_string(&mut text).map_err(DebError::Tar)?;
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
        assert!(matches!(r, Err(DebError::TooLarge)), "{r:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(30));
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(matches!(read_control_from(&b"hello world"[..]), Err(DebError::Ar(_))));
        assert!(read_control_from(&b""[..]).is_err());
    }
}
