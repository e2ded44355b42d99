//! Event streams: mini-buildd's long-poll (`/static/events.attach`, one event per request, a
//! queue per client connection), and Server-Sent Events for the browser (`/api/events`).

use super::Web;
use crate::api::ApiError;
use crate::events::{self, Event};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// Idle connections' queues are dropped after this.
const IDLE: Duration = Duration::from_secs(600);
/// At most this many attached connections (mini-buildd: 70).
const MAX_ATTACHED: usize = 256;
/// At most this many Server-Sent Events streams at once.
const MAX_STREAMS: usize = 256;
static STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_STREAMS);
/// At most this many stored events are replayed to a client, however old its `after` is.
pub const MAX_REPLAY: usize = 1000;

struct Conn {
    rx: broadcast::Receiver<Event>,
    queue: VecDeque<Event>,
    replayed: Vec<(DateTime<Utc>, String, String)>,
    touched: Instant,
}

/// The per-connection queues of long-poll clients, keyed by their TCP peer address: the client
/// keeps one connection and re-sends the same `after`, so the replay happens once per connection.
#[derive(Default)]
pub struct Attached {
    conns: Mutex<HashMap<SocketAddr, Conn>>,
}

fn key(e: &Event) -> (DateTime<Utc>, String, String) {
    (e.timestamp, e.kind.as_str().to_owned(), format!("{}/{}/{}", e.source, e.version, e.distribution))
}

fn parse_after(q: &HashMap<String, String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    match q.get("after").filter(|a| !a.is_empty()) {
        None => Ok(None),
        Some(a) => events::iso::parse(a).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("after={a:?} is not an aware ISO 8601 time, e.g. 2024-05-01T12:00:00+00:00"))
        }),
    }
}

/// Stored events strictly after `after` (none without `after`), at most [`MAX_REPLAY`] of the
/// newest.
async fn replay(web: &Web, after: Option<DateTime<Utc>>) -> Result<Vec<Event>, ApiError> {
    let Some(after) = after else { return Ok(vec![]) };
    let d = web.daemon.clone();
    tokio::task::spawn_blocking(move || events::replay(&d.inst.store, after, MAX_REPLAY))
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))?
        .map_err(|e| ApiError::new(500, e.to_string()))
}

async fn attach(
    q: HashMap<String, String>,
    remote: Option<SocketAddr>,
    web: Web,
) -> Result<super::Body, std::convert::Infallible> {
    let result = async {
        let after = parse_after(&q)?;
        let existing = remote.and_then(|r| web.events.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&r));
        let mut conn = match existing {
            Some(c) => c,
            None => {
                if web.events.conns.lock().unwrap_or_else(|p| p.into_inner()).len() >= MAX_ATTACHED {
                    return Err(ApiError::new(503, "too many attached event clients"));
                }
                let rx = web.daemon.bus.subscribe();
                let past = replay(&web, after).await?;
                Conn { rx, replayed: past.iter().map(key).collect(), queue: past.into(), touched: Instant::now() }
            }
        };
        let event = loop {
            if let Some(e) = conn.queue.pop_front() {
                break e;
            }
            let mut stop = web.shutdown.clone();
            tokio::select! {
                r = conn.rx.recv() => match r {
                    Ok(e) if conn.replayed.contains(&key(&e)) => continue,
                    Ok(e) => break e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "an event client fell behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(ApiError::new(503, "shutting down")),
                },
                _ = stop.wait_for(|s| *s) => return Err(ApiError::new(503, "shutting down")),
            }
        };
        if let Some(r) = remote {
            conn.touched = Instant::now();
            let mut map = web.events.conns.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, c| c.touched.elapsed() < IDLE);
            map.insert(r, conn);
        }
        Ok(event)
    }
    .await;
    Ok(match result {
        Ok(e) => super::json_response(StatusCode::OK, "application/json; charset=UTF-8", &serde_json::json!(e)),
        Err(e) => super::problem(&e),
    })
}

fn sse_event(e: &Event) -> warp::sse::Event {
    warp::sse::Event::default()
        .event(e.kind.as_str())
        .id(events::iso::format(&e.timestamp))
        .data(serde_json::to_string(e).unwrap_or_default())
}

pub fn routes(web: Web) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let attach = warp::get()
        .and(warp::path!("static" / "events.attach"))
        .and(warp::query::<HashMap<String, String>>())
        .and(super::peer())
        .and(super::with(web.clone()))
        .and_then(attach);
    let sse = warp::get()
        .and(warp::path!("api" / "events"))
        .and(warp::query::<HashMap<String, String>>())
        .and(super::with(web))
        .and_then(|q, web| async move { sse_reply(q, web).await });
    attach.or(sse)
}

async fn sse_reply(q: HashMap<String, String>, web: Web) -> Result<warp::reply::Response, std::convert::Infallible> {
    let after = match parse_after(&q) {
        Ok(a) => a,
        Err(e) => return Ok(super::problem(&e)),
    };
    let Ok(permit) = STREAMS.try_acquire() else {
        return Ok(super::problem(&ApiError::new(503, "too many event streams are open; try again later")));
    };
    let rx = web.daemon.bus.subscribe();
    let past = match replay(&web, after).await {
        Ok(p) => p,
        Err(e) => return Ok(super::problem(&e)),
    };
    let replayed: Vec<_> = past.iter().map(key).collect();
    let past = futures_util::stream::iter(past.into_iter().map(|e| Ok::<_, std::convert::Infallible>(sse_event(&e))));
    let stop = web.shutdown.clone();
    let live =
        futures_util::stream::unfold((rx, replayed, stop, permit), |(mut rx, replayed, mut stop, permit)| async move {
            loop {
                let r = tokio::select! {
                    r = rx.recv() => r,
                    _ = stop.wait_for(|s| *s) => return None,
                };
                match r {
                    Ok(e) if replayed.contains(&key(&e)) => continue,
                    Ok(e) => return Some((Ok(sse_event(&e)), (rx, replayed, stop, permit))),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
    use futures_util::StreamExt;
    Ok(warp::sse::reply(warp::sse::keep_alive().stream(past.chain(live))).into_response())
}
