//! Repository delivery for apt: files with Range, conditional requests and ETags, directory
//! listings, and nothing reachable outside the repository tree.

use super::{Body, html_escape, html_page};
use std::path::{Path, PathBuf};
use warp::http::{HeaderMap, Response, StatusCode};
use warp::{Filter, Rejection, Reply};

#[derive(Debug)]
struct Hidden;
impl warp::reject::Reject for Hidden {}

/// Resolve a request path below `root`, refusing traversal, hidden names and symlinks that lead
/// outside. `tail` is still percent-encoded.
fn resolve(root: &Path, tail: &str) -> Option<PathBuf> {
    let decoded = percent_decode(tail)?;
    let mut path = root.to_owned();
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        if seg.starts_with('.') || seg.contains(['\\', '\0']) {
            return None;
        }
        path.push(seg);
    }
    let real = path.canonicalize().ok()?;
    let real_root = root.canonicalize().ok()?;
    real.starts_with(&real_root).then_some(path)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            let v = u8::from_str_radix(h, 16).ok()?;
            // An encoded slash or NUL is never a file name.
            if v == b'/' || v == 0 {
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn etag(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("\"{:x}-{:x}-{:x}\"", meta.ino(), meta.size(), meta.mtime_nsec() ^ (meta.mtime() << 20))
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

pub fn routes(root: PathBuf) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let root2 = root.clone();
    // Directories get a listing; files go on to warp's file server (Range, Last-Modified).
    let guard = warp::path("repositories")
        .and(warp::get().or(warp::head()).unify())
        .and(warp::path::tail())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and_then(move |tail: warp::path::Tail, full: warp::path::FullPath, headers: HeaderMap| {
            let root = root2.clone();
            async move {
                let Some(path) = resolve(&root, tail.as_str()) else {
                    return Err(warp::reject::custom(Hidden));
                };
                let meta = std::fs::metadata(&path).map_err(|_| warp::reject::custom(Hidden))?;
                if meta.is_dir() {
                    if !full.as_str().ends_with('/') {
                        let to = format!("{}/", full.as_str());
                        return Ok(Some(
                            Response::builder()
                                .status(StatusCode::MOVED_PERMANENTLY)
                                .header("location", to)
                                .body(Vec::new().into())
                                .unwrap_or_else(|_| super::empty()),
                        ));
                    }
                    return Ok(Some(listing(&path, full.as_str())));
                }
                let tag = etag(&meta);
                if headers
                    .get("if-none-match")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
                {
                    return Ok(Some(
                        Response::builder()
                            .status(StatusCode::NOT_MODIFIED)
                            .header("etag", tag)
                            .body(Vec::new().into())
                            .unwrap_or_else(|_| super::empty()),
                    ));
                }
                Ok(None)
            }
        });
    let files = warp::path("repositories").and(warp::fs::dir(root.clone())).map(|f: warp::fs::File| {
        let tag = std::fs::metadata(f.path()).ok().map(|m| etag(&m));
        let mut r = f.into_response();
        if let Some(tag) = tag.and_then(|t| t.parse().ok()) {
            r.headers_mut().insert("etag", tag);
        }
        r
    });
    guard.and_then(|r: Option<Body>| async move { r.ok_or_else(warp::reject::not_found) }).or(files).recover(
        |r: Rejection| async move {
            if r.find::<Hidden>().is_some() {
                Ok(super::problem(&crate::api::ApiError::new(404, "not found")))
            } else {
                Err(r)
            }
        },
    )
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
        assert!(resolve(&root, "test/dists").is_some());
        for bad in [
            "../secret",
            "test/../../secret",
            "test/%2e%2e/%2e%2e/secret",
            "test%2f..%2f..%2fsecret",
            "test/escape",
            "test/.hidden",
            "%00",
        ] {
            assert!(resolve(&root, bad).is_none(), "{bad}");
        }
    }
}
