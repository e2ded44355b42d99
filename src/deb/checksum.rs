//! File checksums as Debian lists them (MD5, SHA1, SHA256, SHA512).

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use std::io::{self, Read};
use std::path::Path;

/// All the digests apt knows, of one file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checksums {
    pub size: u64,
    pub md5: String,
    pub sha1: String,
    pub sha256: String,
    pub sha512: String,
}

#[derive(Default)]
struct Hashers {
    size: u64,
    md5: Md5,
    sha1: Sha1,
    sha256: Sha256,
    sha512: Sha512,
}

impl Hashers {
    fn update(&mut self, buf: &[u8]) {
        self.size += buf.len() as u64;
        self.md5.update(buf);
        self.sha1.update(buf);
        self.sha256.update(buf);
        self.sha512.update(buf);
    }

    fn finish(self) -> Checksums {
        Checksums {
            size: self.size,
            md5: hex::encode(self.md5.finalize()),
            sha1: hex::encode(self.sha1.finalize()),
            sha256: hex::encode(self.sha256.finalize()),
            sha512: hex::encode(self.sha512.finalize()),
        }
    }
}

impl Checksums {
    pub fn of_bytes(data: &[u8]) -> Checksums {
        let mut h = Hashers::default();
        h.update(data);
        h.finish()
    }

    pub fn of_reader(mut r: impl Read) -> io::Result<Checksums> {
        let mut h = Hashers::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(h.finish());
            }
            h.update(&buf[..n]);
        }
    }

    pub fn of_file(path: &Path) -> io::Result<Checksums> {
        Checksums::of_reader(std::fs::File::open(path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let c = Checksums::of_bytes(b"abc");
        assert_eq!(c.size, 3);
        assert_eq!(c.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(c.sha1, "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(c.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(c.sha512.starts_with("ddaf35a193617aba"));
    }
}
