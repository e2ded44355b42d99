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
        return control_from_tar(tar);
    }
    if first { Err(DebError::NotDeb(String::new())) } else { Err(DebError::NoControl) }
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
    fn garbage_is_rejected() {
        assert!(matches!(read_control_from(&b"hello world"[..]), Err(DebError::Ar(_))));
        assert!(read_control_from(&b""[..]).is_err());
    }
}
