//! Incremental index compression.
//!
//! An index is cut into chunks on record boundaries (a stanza of `Packages` or `Sources`, a line
//! of `Contents`), content-defined: a chunk ends after a record whose first line hashes to 0 mod
//! the record kind's spread. Each chunk is compressed
//! on its own, as a raw-deflate segment ending in a sync flush and as one xz block. The `.gz` is
//! one gzip member (segments, a final empty block, the combined CRC-32) and the `.xz` one xz stream
//! (blocks, an index): both are ordinary files to any reader, apt's included (apt does not read
//! concatenated xz streams, so blocks it is). A manifest of the chunks lets the next publish copy
//! every unchanged chunk's bytes out of the previous files and compress only what changed.

use liblzma_sys as lz;
use sha2::{Digest, Sha256};
use std::io::Write;

/// What an index is made of, for cutting it into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// deb822 stanzas, each ending in a blank line (about 1 KiB each).
    Stanzas,
    /// Lines (about 60 bytes each).
    Lines,
}

impl Records {
    /// About one chunk boundary per this many records.
    fn spread(self) -> u64 {
        match self {
            Records::Stanzas => 128,
            Records::Lines => 2048,
        }
    }

    /// Whether a chunk ends after the record whose first line this is. FNV's low bits mix
    /// poorly over lines that differ in a few characters, so lines take its high bits.
    fn ends_chunk(self, first_line: &[u8]) -> bool {
        let h = fnv(first_line);
        match self {
            Records::Stanzas => h.is_multiple_of(self.spread()),
            Records::Lines => (h >> 32).is_multiple_of(self.spread()),
        }
    }

    /// End of the record starting at `pos`, past its separator.
    fn end(self, plain: &[u8], pos: usize) -> usize {
        let sep: &[u8] = match self {
            Records::Stanzas => b"\n\n",
            Records::Lines => b"\n",
        };
        plain[pos..].windows(sep.len()).position(|w| w == sep).map_or(plain.len(), |i| pos + i + sep.len())
    }
}

/// A chunk is cut at the next stanza boundary once it is this big, whatever the hashes say.
const MAX_CHUNK: usize = 1 << 20;
const GZ_LEVEL: u32 = 6;
const XZ_PRESET: u32 = 1;

/// One compressed chunk, as recorded in the manifest (offsets into the `.gz` and `.xz`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkMeta {
    pub sha256: String,
    pub plain_len: u64,
    pub crc32: u32,
    pub gz: (u64, u64),
    pub xz: (u64, u64),
    pub xz_unpadded: u64,
}

/// The previous generation of an index: its manifest and its compressed files.
pub struct Previous<'a> {
    pub chunks: &'a [ChunkMeta],
    pub gz: &'a [u8],
    pub xz: &'a [u8],
}

pub struct Compressed {
    pub gz: Vec<u8>,
    pub xz: Vec<u8>,
    pub chunks: Vec<ChunkMeta>,
    /// How many chunks were compressed anew (the rest were reused).
    pub fresh: usize,
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// Cut an index into chunks on record boundaries.
pub fn chunks(plain: &[u8], records: Records) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut pos) = (0, 0);
    while pos < plain.len() {
        let end = records.end(plain, pos);
        let first_line = &plain[pos..plain[pos..end].iter().position(|&b| b == b'\n').map_or(end, |i| pos + i)];
        pos = end;
        if records.ends_chunk(first_line) || pos - start >= MAX_CHUNK || pos == plain.len() {
            out.push(&plain[start..pos]);
            start = pos;
        }
    }
    out
}

fn deflate_segment(chunk: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(GZ_LEVEL), false);
    let mut out = Vec::with_capacity(chunk.len() / 3 + 64);
    loop {
        let consumed = c.total_in() as usize;
        out.reserve(chunk.len() / 3 + 64);
        c.compress_vec(&chunk[consumed..], &mut out, flate2::FlushCompress::Sync).expect("in-memory deflate");
        if c.total_in() as usize == chunk.len() && out.ends_with(&[0, 0, 0xff, 0xff]) {
            return out;
        }
    }
}

fn lzma_filters(opts: &mut lz::lzma_options_lzma) -> [lz::lzma_filter; 2] {
    // SAFETY: lzma_lzma_preset fills a plain C struct.
    let failed = unsafe { lz::lzma_lzma_preset(opts, XZ_PRESET) };
    assert!(failed == 0, "xz preset {XZ_PRESET} is valid");
    [
        lz::lzma_filter { id: lz::LZMA_FILTER_LZMA2, options: opts as *mut _ as *mut std::ffi::c_void },
        lz::lzma_filter { id: lz::LZMA_VLI_UNKNOWN, options: std::ptr::null_mut() },
    ]
}

/// One xz block (header, LZMA2 data, padding, CRC64) and its unpadded size.
fn xz_block(chunk: &[u8]) -> (Vec<u8>, u64) {
    // SAFETY: zeroed C structs are valid initial values; liblzma writes within `out`'s bound.
    unsafe {
        let mut opts: lz::lzma_options_lzma = std::mem::zeroed();
        let mut filters = lzma_filters(&mut opts);
        let mut block: lz::lzma_block = std::mem::zeroed();
        block.version = 0;
        block.check = lz::LZMA_CHECK_CRC64;
        block.filters = filters.as_mut_ptr();
        block.compressed_size = lz::LZMA_VLI_UNKNOWN;
        block.uncompressed_size = lz::LZMA_VLI_UNKNOWN;
        let bound = lz::lzma_block_buffer_bound(chunk.len());
        let mut out = vec![0u8; bound];
        let mut pos = 0usize;
        let ret = lz::lzma_block_buffer_encode(
            &mut block,
            std::ptr::null(),
            chunk.as_ptr(),
            chunk.len(),
            out.as_mut_ptr(),
            &mut pos,
            bound,
        );
        assert!(ret == lz::LZMA_OK, "lzma_block_buffer_encode failed ({ret})");
        out.truncate(pos);
        (out, lz::lzma_block_unpadded_size(&block))
    }
}

fn xz_stream_flags(backward_size: u64) -> lz::lzma_stream_flags {
    // SAFETY: a zeroed lzma_stream_flags is valid; we set the fields liblzma reads.
    let mut f: lz::lzma_stream_flags = unsafe { std::mem::zeroed() };
    f.version = 0;
    f.check = lz::LZMA_CHECK_CRC64;
    f.backward_size = backward_size;
    f
}

/// The xz stream header, index and footer around the given blocks.
fn xz_frame(blocks: &[(u64, u64)]) -> (Vec<u8>, Vec<u8>) {
    let hs = lz::LZMA_STREAM_HEADER_SIZE as usize;
    // SAFETY: buffers are sized as liblzma documents; the index is freed before returning.
    unsafe {
        let idx = lz::lzma_index_init(std::ptr::null());
        assert!(!idx.is_null(), "lzma_index_init");
        for &(unpadded, plain) in blocks {
            let ret = lz::lzma_index_append(idx, std::ptr::null(), unpadded, plain);
            assert!(ret == lz::LZMA_OK, "lzma_index_append failed ({ret})");
        }
        let isize = lz::lzma_index_size(idx) as usize;
        let mut index = vec![0u8; isize];
        let mut pos = 0usize;
        let ret = lz::lzma_index_buffer_encode(idx, index.as_mut_ptr(), &mut pos, isize);
        lz::lzma_index_end(idx, std::ptr::null());
        assert!(ret == lz::LZMA_OK && pos == isize, "lzma_index_buffer_encode failed ({ret})");
        let mut header = vec![0u8; hs];
        let ret = lz::lzma_stream_header_encode(&xz_stream_flags(isize as u64), header.as_mut_ptr());
        assert!(ret == lz::LZMA_OK, "lzma_stream_header_encode failed ({ret})");
        let mut footer = vec![0u8; hs];
        let ret = lz::lzma_stream_footer_encode(&xz_stream_flags(isize as u64), footer.as_mut_ptr());
        assert!(ret == lz::LZMA_OK, "lzma_stream_footer_encode failed ({ret})");
        index.extend_from_slice(&footer);
        (header, index)
    }
}

struct Piece {
    sha256: String,
    plain_len: u64,
    crc32: u32,
    gz: Vec<u8>,
    xz: Vec<u8>,
    unpadded: u64,
}

fn compress_chunk(chunk: &[u8], sha256: String) -> Piece {
    let (xz, unpadded) = xz_block(chunk);
    Piece {
        sha256,
        plain_len: chunk.len() as u64,
        crc32: crc32fast::hash(chunk),
        gz: deflate_segment(chunk),
        xz,
        unpadded,
    }
}

/// Reuse a chunk from the previous files, if it is there and its bytes are in range.
fn reuse(prev: &Previous<'_>, sha: &str) -> Option<Piece> {
    let m = prev.chunks.iter().find(|c| c.sha256 == sha)?;
    let gz = prev.gz.get(m.gz.0 as usize..(m.gz.0 + m.gz.1) as usize)?;
    let xz = prev.xz.get(m.xz.0 as usize..(m.xz.0 + m.xz.1) as usize)?;
    Some(Piece {
        sha256: m.sha256.clone(),
        plain_len: m.plain_len,
        crc32: m.crc32,
        gz: gz.to_vec(),
        xz: xz.to_vec(),
        unpadded: m.xz_unpadded,
    })
}

/// Compress an index into `.gz` and `.xz`, reusing what `prev` already compressed.
pub fn compress(plain: &[u8], prev: Option<&Previous<'_>>, records: Records) -> Compressed {
    let parts = chunks(plain, records);
    let shas: Vec<String> = parts.iter().map(|c| hex::encode(Sha256::digest(c))).collect();
    let mut pieces: Vec<Option<Piece>> = shas.iter().map(|s| prev.and_then(|p| reuse(p, s))).collect();
    let todo: Vec<usize> = (0..parts.len()).filter(|&i| pieces[i].is_none()).collect();
    // Compress what is new on every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(todo.len().max(1));
    let done: Vec<(usize, Piece)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let todo = &todo;
                let parts = &parts;
                let shas = &shas;
                s.spawn(move || {
                    todo.iter()
                        .skip(t)
                        .step_by(threads)
                        .map(|&i| (i, compress_chunk(parts[i], shas[i].clone())))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("compression thread")).collect()
    });
    let fresh = done.len();
    for (i, p) in done {
        pieces[i] = Some(p);
    }
    let pieces: Vec<Piece> = pieces.into_iter().map(|p| p.expect("every chunk compressed or reused")).collect();

    // gzip: one member.
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let mut crc = crc32fast::Hasher::new();
    let mut chunks_meta = Vec::with_capacity(pieces.len());
    let mut gz_offsets = Vec::with_capacity(pieces.len());
    for p in &pieces {
        gz_offsets.push((gz.len() as u64, p.gz.len() as u64));
        gz.extend_from_slice(&p.gz);
        crc.combine(&crc32fast::Hasher::new_with_initial_len(p.crc32, p.plain_len));
    }
    gz.extend_from_slice(&[0x03, 0x00]); // final, empty, fixed-Huffman block
    gz.write_all(&crc.finalize().to_le_bytes()).expect("vec");
    gz.write_all(&(plain.len() as u32).to_le_bytes()).expect("vec");

    // xz: one stream of blocks.
    let (header, trailer) = xz_frame(&pieces.iter().map(|p| (p.unpadded, p.plain_len)).collect::<Vec<_>>());
    let mut xz = header;
    for (p, g) in pieces.iter().zip(gz_offsets) {
        chunks_meta.push(ChunkMeta {
            sha256: p.sha256.clone(),
            plain_len: p.plain_len,
            crc32: p.crc32,
            gz: g,
            xz: (xz.len() as u64, p.xz.len() as u64),
            xz_unpadded: p.unpadded,
        });
        xz.extend_from_slice(&p.xz);
    }
    xz.extend_from_slice(&trailer);
    Compressed { gz, xz, chunks: chunks_meta, fresh }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn index(n: usize, skip: Option<usize>) -> Vec<u8> {
        let mut s = String::new();
        for i in (0..n).filter(|i| Some(*i) != skip) {
            s.push_str(&format!(
                "Package: pkg{i}\nVersion: 1.{i}\nDescription: synthetic {i}\n more text {}\n\n",
                i * 7919
            ));
        }
        s.into_bytes()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap();
        out
    }

    fn unxz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        liblzma::read::XzDecoder::new(data).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn roundtrip_and_reuse() {
        let before = index(3000, Some(1500));
        let c1 = compress(&before, None, Records::Stanzas);
        assert!(c1.chunks.len() > 5, "{} chunks", c1.chunks.len());
        assert_eq!(gunzip(&c1.gz), before);
        assert_eq!(unxz(&c1.xz), before);
        // Adding one stanza recompresses one or two chunks and reuses the rest.
        let after = index(3000, None);
        let prev = Previous { chunks: &c1.chunks, gz: &c1.gz, xz: &c1.xz };
        let c2 = compress(&after, Some(&prev), Records::Stanzas);
        assert!(c2.fresh <= 2, "{} of {} chunks recompressed", c2.fresh, c2.chunks.len());
        assert_eq!(gunzip(&c2.gz), after);
        assert_eq!(unxz(&c2.xz), after);
    }

    #[test]
    fn empty_index() {
        let c = compress(b"", None, Records::Lines);
        assert!(gunzip(&c.gz).is_empty());
        assert!(unxz(&c.xz).is_empty());
    }

    #[test]
    fn chunks_cover_everything_on_stanza_boundaries() {
        let data = index(1000, None);
        let parts = chunks(&data, Records::Stanzas);
        assert_eq!(parts.concat(), data);
        assert!(parts.iter().all(|c| c.ends_with(b"\n\n")));
    }

    #[test]
    fn contents_is_cut_on_lines_and_reused() {
        let lines = |skip: Option<usize>| {
            (0..40_000)
                .filter(|i| Some(*i) != skip)
                .map(|i| format!("usr/share/doc/pkg{i}/copyright\t    misc/pkg{i}\n"))
                .collect::<String>()
                .into_bytes()
        };
        let before = lines(Some(20_000));
        let parts = chunks(&before, Records::Lines);
        assert!(parts.len() > 5, "{} chunks", parts.len());
        assert_eq!(parts.concat(), before);
        assert!(parts.iter().all(|c| c.ends_with(b"\n")));
        let c1 = compress(&before, None, Records::Lines);
        let after = lines(None);
        let prev = Previous { chunks: &c1.chunks, gz: &c1.gz, xz: &c1.xz };
        let c2 = compress(&after, Some(&prev), Records::Lines);
        assert!(c2.fresh <= 2, "{} of {} chunks recompressed", c2.fresh, c2.chunks.len());
        assert_eq!(gunzip(&c2.gz), after);
        assert_eq!(unxz(&c2.xz), after);
    }
}
