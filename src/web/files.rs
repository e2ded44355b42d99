//! Repository delivery for apt: files with Range, conditional requests and ETags, directory
//! listings, and nothing reachable outside the repository tree.
//!
//! Published files never change under a name (a new generation is new files), so a file is
//! mapped and handed to the socket without a copy through user space or a blocking-pool hop.

use super::{Body, html_escape, html_page};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use warp::http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

/// The request path as a relative path below the root: decoded once, refusing hidden names
/// (`..`, `.gen`), backslashes and NUL. `tail` is still percent-encoded.
fn relative(tail: &str) -> Option<PathBuf> {
    let decoded = percent_decode(tail)?;
    let mut path = PathBuf::from(".");
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        if seg.starts_with('.') || seg.contains(['\\', '\0']) {
            return None;
        }
        path.push(seg);
    }
    Some(path)
}

/// The repository root, how to open a path strictly beneath it, and a cache of file contents.
struct Root {
    path: PathBuf,
    real: PathBuf,
    fd: Option<std::os::fd::OwnedFd>,
    cache: std::sync::Mutex<Cache>,
}

/// Contents of recently served files, by identity (device, inode, mtime, size). A published
/// file never changes under its inode, so a hit is always the file's current content; the
/// open and fstat before the lookup keep symlink swaps and containment exact.
#[derive(Default)]
struct Cache {
    files: std::collections::HashMap<(u64, u64, i64, u64), Cached>,
    bytes: u64,
}

#[derive(Clone)]
struct Cached {
    content: bytes::Bytes,
    etag: HeaderValue,
    last_modified: HeaderValue,
}

/// Most bytes the cache holds before it starts over.
const CACHE_LIMIT: u64 = 128 << 20;

impl Root {
    fn new(path: PathBuf) -> Root {
        let real = path.canonicalize().unwrap_or_else(|_| path.clone());
        let fd = nix::fcntl::open(
            &path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok();
        Root { path, real, fd, cache: Default::default() }
    }

    /// The whole content of an open file with its validators, from the cache or from disk.
    fn content(&self, file: &std::fs::File, meta: &std::fs::Metadata) -> Option<Cached> {
        use std::os::unix::fs::MetadataExt;
        let key = (meta.dev(), meta.ino(), meta.mtime_nsec() ^ (meta.mtime() << 30), meta.size());
        if let Some(c) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).files.get(&key) {
            return Some(c.clone());
        }
        let len = meta.len();
        let b = if len <= READ_LIMIT {
            use std::io::Read;
            let mut buf = Vec::with_capacity(len as usize);
            file.take(len).read_to_end(&mut buf).ok()?;
            (buf.len() as u64 == len).then(|| bytes::Bytes::from(buf))?
        } else {
            // SAFETY: published files are never modified or truncated in place; a new
            // generation is new files, and an unlinked file stays mapped until dropped.
            bytes::Bytes::from_owner(unsafe { memmap2::Mmap::map(file) }.ok()?)
        };
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let cached = Cached {
            content: b,
            etag: etag(meta).parse().ok()?,
            last_modified: httpdate::fmt_http_date(modified).parse().ok()?,
        };
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.bytes + len > CACHE_LIMIT {
            c.files.clear();
            c.bytes = 0;
        }
        if len <= CACHE_LIMIT / 4 {
            c.bytes += len;
            c.files.insert(key, cached.clone());
        }
        Some(cached)
    }

    /// Open `rel` for reading; symlinks are followed only while they stay beneath the root.
    fn open(&self, rel: &Path) -> Option<std::fs::File> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
        if let Some(fd) = &self.fd {
            let how = OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            match nix::fcntl::openat2(fd, rel, how) {
                Ok(f) => return Some(f.into()),
                Err(nix::errno::Errno::ENOSYS) => {}
                Err(_) => return None,
            }
        }
        // Kernels before 5.6: resolve and check the canonical path.
        let real = self.path.join(rel).canonicalize().ok()?;
        if real.starts_with(&self.real) { std::fs::File::open(real).ok() } else { None }
    }
}

pub(super) fn percent_decode(s: &str) -> Option<String> {
    // An encoded slash or NUL is never a file name.
    let lower = s.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%00") {
        return None;
    }
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(std::borrow::Cow::into_owned)
}

fn etag(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("\"{:x}-{:x}-{:x}\"", meta.ino(), meta.size(), meta.mtime_nsec() ^ (meta.mtime() << 20))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gz") => "application/gzip",
        Some("xz") => "application/x-xz",
        Some("deb" | "udeb") => "application/vnd.debian.binary-package",
        Some("dsc" | "changes" | "buildinfo") => "text/plain; charset=utf-8",
        Some("asc" | "gpg") => "application/pgp-keys",
        _ => match path.file_name().and_then(|n| n.to_str()) {
            Some("Release" | "InRelease" | "Packages" | "Sources") => "text/plain; charset=utf-8",
            Some("Release.gpg") => "application/pgp-signature",
            _ => "application/octet-stream",
        },
    }
}

fn listing(dir: &Path, url_path: &str) -> Body {
    let mut entries: Vec<(String, bool)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    (!name.starts_with('.')).then(|| (name, e.path().is_dir()))
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    let mut html = format!("<h1>Index of {}</h1>\n<ul>\n<li><a href=\"../\">../</a></li>\n", html_escape(url_path));
    for (name, is_dir) in entries {
        let shown = if is_dir { format!("{name}/") } else { name };
        html.push_str(&format!("<li><a href=\"{0}\">{0}</a></li>\n", html_escape(&shown)));
    }
    html.push_str("</ul>");
    html_page(StatusCode::OK, url_path, &html)
}

fn status(code: StatusCode) -> Body {
    let mut r = Response::new(Vec::new().into());
    *r.status_mut() = code;
    r
}

/// Parse a single `bytes=a-b` range against a length.
fn range(spec: &str, len: u64) -> Option<(u64, u64)> {
    let spec = spec.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, len.checked_sub(1)?),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(len.checked_sub(1)?)),
    };
    (start <= end && end < len).then_some((start, end))
}

/// Files up to this size are read; larger ones are mapped.
const READ_LIMIT: u64 = 256 * 1024;

fn serve_file(
    root: &Root,
    file: std::fs::File,
    path: &Path,
    meta: &std::fs::Metadata,
    method: &Method,
    headers: &HeaderMap,
) -> Body {
    let Some(c) = root.content(&file, meta) else { return status(StatusCode::NOT_FOUND) };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let not_modified = match header("if-none-match") {
        Some(inm) => c.etag.to_str().is_ok_and(|tag| inm.split(',').any(|t| t.trim() == tag || t.trim() == "*")),
        None => header("if-modified-since").and_then(|s| httpdate::parse_http_date(s).ok()).is_some_and(|since| {
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH).duration_since(since).map_or(true, |d| d.as_secs() == 0)
        }),
    };
    let mut r = if not_modified {
        status(StatusCode::NOT_MODIFIED)
    } else {
        let len = meta.len();
        let (code, start, end) = match header("range").map(|s| range(s, len)) {
            Some(None) => {
                let mut r = status(StatusCode::RANGE_NOT_SATISFIABLE);
                if let Ok(v) = format!("bytes */{len}").parse() {
                    r.headers_mut().insert("content-range", v);
                }
                return r;
            }
            Some(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
            None => (StatusCode::OK, 0, len),
        };
        let body =
            if *method == Method::HEAD { bytes::Bytes::new() } else { c.content.slice(start as usize..end as usize) };
        let mut r = Response::new(body.into());
        *r.status_mut() = code;
        let h = r.headers_mut();
        h.insert("content-length", HeaderValue::from(end - start));
        if code == StatusCode::PARTIAL_CONTENT
            && let Ok(v) = format!("bytes {start}-{}/{len}", end - 1).parse()
        {
            h.insert("content-range", v);
        }
        h.insert("content-type", HeaderValue::from_static(content_type(path)));
        h.insert("accept-ranges", HeaderValue::from_static("bytes"));
        r
    };
    r.headers_mut().insert("etag", c.etag);
    r.headers_mut().insert("last-modified", c.last_modified);
    r
}

/// Repository delivery, outside warp's routing (it is the hot path): `GET`/`HEAD` of
/// `/repositories/…`. `None` for any other request.
pub struct Files {
    root: Root,
}

impl Files {
    pub fn new(root: PathBuf) -> Files {
        Files { root: Root::new(root) }
    }

    /// The answer to a request under `/repositories/`, if it is one: never a page that runs
    /// anything (no file is `text/html`; every answer is `nosniff` and sandboxed).
    pub fn handle(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Body> {
        let mut r = self.answer(method, path, headers)?;
        let h = r.headers_mut();
        h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        h.insert("content-security-policy", HeaderValue::from_static("sandbox; default-src 'none'; style-src 'self'"));
        Some(r)
    }

    fn answer(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Body> {
        let tail = path.strip_prefix("/repositories")?;
        if !tail.is_empty() && !tail.starts_with('/') {
            return None;
        }
        if method != Method::GET && method != Method::HEAD {
            return Some(super::problem(&crate::api::ApiError::new(
                405,
                "the repositories are read-only: use GET or HEAD",
            )));
        }
        let not_found = || super::problem(&crate::api::ApiError::new(404, "not found"));
        let Some(rel) = relative(tail.trim_start_matches('/')) else { return Some(not_found()) };
        let Some(file) = self.root.open(&rel) else { return Some(not_found()) };
        let Ok(meta) = file.metadata() else { return Some(not_found()) };
        let fs_path = self.root.path.join(&rel);
        if meta.is_dir() {
            if !path.ends_with('/') {
                let mut r = status(StatusCode::MOVED_PERMANENTLY);
                if let Ok(v) = format!("{path}/").parse() {
                    r.headers_mut().insert("location", v);
                }
                return Some(r);
            }
            return Some(listing(&fs_path, path));
        }
        Some(serve_file(&self.root, file, &fs_path, &meta, method, headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repositories");
        std::fs::create_dir_all(root.join("test/dists")).unwrap();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("test/escape")).unwrap();
        std::fs::write(root.join("test/dists/Release"), "r").unwrap();
        std::os::unix::fs::symlink("dists", root.join("test/inside")).unwrap();
        let r = Root::new(root.clone());
        let open = |t: &str| relative(t).and_then(|p| r.open(&p)).is_some();
        assert!(open("test/dists/Release"));
        assert!(open("test/inside/Release"), "symlinks within the tree are followed");
        for bad in [
            "../secret",
            "test/../../secret",
            "test/%2e%2e/%2e%2e/secret",
            "test%2f..%2f..%2fsecret",
            "test/escape",
            "test/.hidden",
            "%00",
        ] {
            assert!(!open(bad), "{bad}");
        }
    }

    #[test]
    fn no_file_is_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repositories");
        std::fs::create_dir_all(root.join("test/pool")).unwrap();
        std::fs::write(root.join("test/pool/evil.html"), "<script>alert(1)</script>").unwrap();
        let f = Files::new(root);
        for path in ["/repositories/test/pool/evil.html", "/repositories/test/pool/", "/repositories/test/nothing"] {
            let r = f.handle(&Method::GET, path, &HeaderMap::new()).unwrap();
            let h = r.headers();
            assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
            assert!(h["content-security-policy"].to_str().unwrap().starts_with("sandbox"), "{path}");
            if path.ends_with(".html") {
                assert_eq!(h["content-type"], "application/octet-stream");
            }
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(range("bytes=100-", 100), None);
        assert_eq!(range("bytes=0-1,5-6", 100), None);
        assert_eq!(range("items=0-1", 100), None);
    }
}
