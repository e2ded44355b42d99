//! Build logs over HTTP: `/mini_buildd/events-dir/<bkey>/<name>` (the address mini-buildd's
//! `Buildlog-Installed` field gives), plain text, and the same address with `?follow=1` as a
//! Server-Sent Events tail of a running build's live log that ends when the build does.
//!
//! Only log files are served: the live `buildlog` of a build directory, and the final
//! `*.buildlog` and the `lintian.log` of lintian's run after the result (ignore mode), kept under
//! `var/logs` once the build is done; nothing else of a build (the request, the debs).

use super::Web;
use crate::api::ApiError;
use crate::builder::{AFTER_LOGS, BUILDS_DIR, BUILT, LIVE_LOG, LOGS_DIR};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use warp::http::{HeaderMap, Response};
use warp::{Filter, Rejection, Reply};

/// At most this much of a log is sent at once; a follower starts this far from the end.
const CHUNK: u64 = 64 << 10;
/// How often a follower looks for new output.
const POLL: Duration = Duration::from_millis(500);

/// Where a build log is served, from its `<bkey>/<name>` (the BUILT event's `buildlog`).
pub fn url(rel: &str) -> String {
    format!("/mini_buildd/events-dir/{rel}")
}

/// A bkey (`<source>/<version>/<timecode>/<arch>`) and a log name from a URL tail, or why not.
pub fn log_path(builds: &Path, tail: &str) -> Result<PathBuf, ApiError> {
    let segs: Vec<&str> = tail.trim_matches('/').split('/').collect();
    let not_found =
        || ApiError::new(404, format!("{tail:?} is not a build log; the builds page links each build's log"));
    let [source, version, timecode, arch, name] = segs[..] else { return Err(not_found()) };
    let safe = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.~:_".contains(&b))
    };
    if ![source, version, timecode, arch, name].iter().all(|s| safe(s))
        || !(name == LIVE_LOG || AFTER_LOGS.contains(&name) || name.ends_with(".buildlog"))
    {
        return Err(not_found());
    }
    Ok(builds.join(source).join(version).join(timecode).join(arch).join(name))
}

/// At most this many followers at once.
const MAX_FOLLOWERS: usize = 64;
static FOLLOWERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_FOLLOWERS);

/// Open a log for reading: a regular file, never through a symlink, never blocking on a FIFO.
/// A build can write into its directory (an nspawn build has it bind-mounted), so what is there
/// is not trusted to be a log.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    crate::protocol::tar::open_regular(path).map(|(f, _)| f)
}

/// Read what was added to `path` after `from` (at most `CHUNK`), ending at a line end when
/// there is one, so that no line or UTF-8 sequence is split. Returns the text and the new offset.
fn read_from(path: &Path, from: u64) -> std::io::Result<(String, u64)> {
    let mut f = open_log(path)?;
    let len = f.metadata()?.len();
    if len <= from {
        return Ok((String::new(), from));
    }
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(CHUNK).read_to_end(&mut buf)?;
    if let Some(end) = buf.iter().rposition(|b| *b == b'\n') {
        buf.truncate(end + 1);
    }
    let n = buf.len() as u64;
    Ok((String::from_utf8_lossy(&buf).into_owned(), from + n))
}

/// At most this much of a log is answered at once: its end, after a line that says so.
pub const MAX_LOG: u64 = 32 << 20;

async fn plain(path: PathBuf) -> super::Body {
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut f = open_log(&path)?;
        let len = f.metadata()?.len();
        let mut bytes = Vec::new();
        if len > MAX_LOG {
            bytes.extend_from_slice(
                format!("buildbay: the log is {len} bytes; here are its last {MAX_LOG} (the whole log is in the build's directory)\n").as_bytes(),
            );
            f.seek(SeekFrom::Start(len - MAX_LOG))?;
        }
        f.take(MAX_LOG).read_to_end(&mut bytes)?;
        Ok(bytes)
    })
    .await;
    match read {
        Ok(Ok(bytes)) => Response::builder()
            .header("content-type", "text/plain; charset=utf-8")
            .header("x-content-type-options", "nosniff")
            .header("cache-control", "no-store")
            .body(bytes.into())
            .unwrap_or_else(|_| super::empty()),
        _ => super::problem(&ApiError::new(
            404,
            "no such build log (yet): a build's log appears when it starts; the builds page lists them",
        )),
    }
}

/// The live log as SSE: `log` events (JSON text, id = the byte offset after it), then one `end`
/// event once the build has finished (or its directory is gone) and everything was sent.
fn follow(path: PathBuf, from: Option<u64>, web: &Web, kept: bool) -> super::Body {
    let dir = path.parent().map(Path::to_owned).unwrap_or_default();
    if !dir.is_dir() {
        return super::problem(&ApiError::new(404, "no such build; the builds page lists the ongoing ones"));
    }
    let Ok(permit) = FOLLOWERS.try_acquire() else {
        return super::problem(&ApiError::new(503, "too many build log followers; try again later"));
    };
    let start = from.unwrap_or_else(|| std::fs::metadata(&path).map_or(0, |m| m.len().saturating_sub(CHUNK)));
    // The build log ends with the build (`built`: lintian may still run after it); lintian's
    // log with the unit (`result`).
    let ends_with: &'static [&'static str] = if path.ends_with(LIVE_LOG) { &[BUILT, "result"] } else { &["result"] };
    let state = (path, start, false, web.shutdown.clone(), permit);
    let stream = futures_util::stream::unfold(state, move |(live, offset, ended, mut stop, permit)| async move {
        if ended {
            return None;
        }
        let dir = live.parent().map(Path::to_owned).unwrap_or_default();
        loop {
            let finished = kept || ends_with.iter().any(|f| dir.join(f).exists()) || !dir.is_dir();
            let l = live.clone();
            let read = tokio::task::spawn_blocking(move || read_from(&l, offset)).await;
            let (text, next) = match read {
                Ok(Ok(r)) => r,
                _ => (String::new(), offset),
            };
            if !text.is_empty() {
                let ev = warp::sse::Event::default()
                    .event("log")
                    .id(next.to_string())
                    .data(serde_json::Value::String(text).to_string());
                return Some((Ok::<_, std::convert::Infallible>(ev), (live, next, false, stop, permit)));
            }
            if finished {
                let ev = warp::sse::Event::default().event("end").data("\"the build has finished\"");
                return Some((Ok(ev), (live, next, true, stop, permit)));
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    });
    warp::sse::reply(warp::sse::keep_alive().stream(stream)).into_response()
}

/// A build's live `buildlog`, once the build ended, is kept as `<source>_<version>_<arch>.buildlog`.
fn kept_name(kept: PathBuf, tail: &str) -> PathBuf {
    let bkey = tail.rsplit_once('/').and_then(|(k, _)| k.parse::<crate::protocol::BuildKey>().ok());
    match bkey {
        Some(k) if kept.ends_with(LIVE_LOG) && !kept.exists() => kept.with_file_name(k.buildlog_name()),
        _ => kept,
    }
}

/// A running build's `<source>_<version>_<arch>.buildlog` (the name `Buildlog-Building` gives)
/// is its live log until the build ends and the log gets that name.
fn live_if_running(path: PathBuf, tail: &str) -> PathBuf {
    if !path.exists() && tail.ends_with(".buildlog") { path.with_file_name(LIVE_LOG) } else { path }
}

pub fn routes(web: Web) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::get()
        // `builds-dir` is where a build request's `Buildlog-Building` points (mini-buildd's
        // builder's address for a build while it runs): the same logs.
        .and(warp::path!("mini_buildd" / "events-dir" / ..).or(warp::path!("mini_buildd" / "builds-dir" / ..)).unify())
        .and(warp::path::tail())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(super::with(web))
        .and_then(|tail: warp::path::Tail, q: HashMap<String, String>, h: HeaderMap, web: Web| async move {
            // A finished build's logs are kept (its directory goes); a running one's are in its
            // build directory (the builder's, which may be the root helper's).
            let state = web.daemon.inst.store.dir();
            let builds = web.daemon.builder.get().map_or_else(|| state.join(BUILDS_DIR), |b| b.root.clone());
            let following = q.contains_key("follow");
            // Following a build that ended (its directory gone) streams its kept log, then ends.
            let kept = log_path(&state.join(LOGS_DIR), tail.as_str()).map(|k| kept_name(k, tail.as_str()));
            let live = log_path(&builds, tail.as_str()).map(|p| live_if_running(p, tail.as_str()));
            let ended = live.as_ref().is_ok_and(|p| !p.parent().is_some_and(Path::is_dir));
            let use_kept = kept.as_ref().is_ok_and(|k| k.exists() && (!following || ended));
            let path = if use_kept { kept } else { live };
            Ok::<_, Rejection>(match path {
                Err(e) => super::problem(&e),
                Ok(path) if following => {
                    let resume = h.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                    follow(path, resume, &web, use_kept)
                }
                Ok(path) => plain(path).await,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_builds_live_log_is_its_kept_log() {
        let kept = Path::new("/nonexistent/logs/hello/1.0-1/20261121-101010-000001/amd64/buildlog").to_owned();
        let tail = "hello/1.0-1/20261121-101010-000001/amd64/buildlog";
        assert!(kept_name(kept.clone(), tail).ends_with("amd64/hello_1.0-1_amd64.buildlog"));
        let other = kept.with_file_name("lintian.log");
        assert_eq!(kept_name(other.clone(), "hello/1.0-1/20261121-101010-000001/amd64/lintian.log"), other);
        let running = Path::new("/nonexistent/builds/hello/1.0-1/t/amd64/hello_1.0-1_amd64.buildlog").to_owned();
        assert!(live_if_running(running, "hello/1.0-1/t/amd64/hello_1.0-1_amd64.buildlog").ends_with("amd64/buildlog"));
    }

    #[test]
    fn only_log_files_of_a_build_are_served() {
        let b = Path::new("/s/var/builds");
        let ok = log_path(b, "hello/1.0-1/20261121-101010-000001/amd64/hello_1.0-1_amd64.buildlog").unwrap();
        assert_eq!(ok, b.join("hello/1.0-1/20261121-101010-000001/amd64/hello_1.0-1_amd64.buildlog"));
        assert!(log_path(b, "hello/1:1.0-1/t/amd64/buildlog").is_ok(), "epochs are fine");
        assert!(log_path(b, "hello/1.0-1/t/amd64/lintian.log").is_ok(), "lintian's report after the result");
        for bad in [
            "hello/1.0-1/t/amd64/request.changes",
            "hello/1.0-1/t/amd64/out",
            "hello/../../../etc/amd64/x.buildlog",
            "hello/1.0-1/t/amd64/..buildlog",
            "hello/1.0-1/t/buildlog",
            "hello/1.0-1/t/amd64/x/buildlog",
            "hello/1.0-1/t/am d64/buildlog",
        ] {
            assert_eq!(log_path(b, bad).map_err(|e| e.status), Err(404), "{bad}");
        }
    }

    #[test]
    fn a_planted_symlink_or_fifo_is_not_a_log() {
        let dir = std::env::temp_dir().join(format!("bb-log-plant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("x.buildlog");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        assert!(open_log(&link).is_err(), "a symlink is not followed");
        let fifo = dir.join("buildlog");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(open_log(&fifo).is_err(), "a FIFO is refused without blocking");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_whole_lines_from_an_offset() {
        let dir = std::env::temp_dir().join(format!("bb-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("buildlog");
        std::fs::write(&p, "one\ntwo\npart").unwrap();
        assert_eq!(read_from(&p, 0).unwrap(), ("one\ntwo\n".to_owned(), 8));
        assert_eq!(read_from(&p, 8).unwrap(), ("part".to_owned(), 12), "a last line without its end still comes");
        assert_eq!(read_from(&p, 12).unwrap(), (String::new(), 12));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
