//! The HTTP face: repository delivery for apt, mini-buildd's API wire contract, its login flow,
//! and the event streams. Everything blocking runs on tokio's blocking pool.

mod buildlog;
mod events;
mod files;
mod login;
pub mod pages;
pub mod tls;

use crate::api::{self, ApiError, Args, calls::Origin, registry};
use crate::auth::{self, Principal};
use crate::daemon::Daemon;
use std::net::SocketAddr;
use std::sync::Arc;
use warp::http::{HeaderMap, Response, StatusCode};
use warp::{Filter, Rejection, Reply};

/// Longest query string accepted.
pub const MAX_QUERY: usize = 16 * 1024;
/// Most bytes of a request head accepted (hyper's read buffer; it answers 431 beyond).
pub const MAX_HEADERS: usize = 32 * 1024;
/// Largest form body accepted.
pub const MAX_FORM: u64 = 256 * 1024;
/// Connections served at once; past it, new ones wait to be accepted.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long a client may take to send a request's head (also the idle time of a kept-alive
/// connection between requests).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(Clone)]
pub struct Web {
    pub daemon: Arc<Daemon>,
    pub events: Arc<events::Attached>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub pages: Arc<pages::Templates>,
}

pub type Body = warp::reply::Response;

pub fn empty() -> Body {
    Response::new(Vec::new().into())
}

fn with<T: Clone + Send>(t: T) -> impl Filter<Extract = (T,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || t.clone())
}

/// A JSON or problem response.
pub fn json_response(status: StatusCode, content_type: &str, body: &serde_json::Value) -> Body {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(bytes.into())
        .unwrap_or_else(|_| empty())
}

pub fn problem(e: &ApiError) -> Body {
    json_response(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/problem+json",
        &e.problem(),
    )
}

pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#x27;"),
            c => o.push(c),
        }
    }
    o
}

pub fn html_page(status: StatusCode, title: &str, body_html: &str) -> Body {
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} — buildbay</title><link rel=\"stylesheet\" href=\"/static/buildbay.css\"></head><body>\n{body_html}\n</body></html>\n",
        html_escape(title)
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .body(page.into())
        .unwrap_or_else(|_| empty())
}

/// `http://host:port` (or `https://`) as the client addressed us (the Host header), for URLs
/// in answers.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) && !h.is_empty())
        .unwrap_or("localhost:8066");
    format!("{}://{host}", if is_https(headers) { "https" } else { "http" })
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all("cookie").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Who is asking: a bearer token, a session cookie, or nobody.
async fn principal(web: &Web, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let store_err = |e: auth::AuthError| ApiError::new(500, e.to_string());
    if let Some(authz) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let token = authz
            .strip_prefix("Bearer ")
            .ok_or_else(|| ApiError::new(401, "unsupported Authorization scheme; use Authorization: Bearer <token>"))?
            .trim()
            .to_owned();
        // The local administrator's token counts from this host only.
        let local = headers
            .get(PEER_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .is_some_and(|a| a.ip().is_loopback());
        if let Some(p) = web.daemon.local_admin.get().filter(|_| local).and_then(|l| l.principal(&token)) {
            return Ok(p);
        }
        let d = web.daemon.clone();
        let p = tokio::task::spawn_blocking(move || auth::token_principal(&d.inst.store, &token))
            .await
            .map_err(|e| ApiError::new(500, e.to_string()))?
            .map_err(store_err)?;
        return p
            .ok_or_else(|| ApiError::new(401, "the API token is unknown or revoked; create one with token_create"));
    }
    if let Some(sid) = cookie(headers, "sessionid").map(str::to_owned) {
        let d = web.daemon.clone();
        let p = tokio::task::spawn_blocking(move || auth::session_principal(&d.inst.store, &sid))
            .await
            .map_err(|e| ApiError::new(500, e.to_string()))?
            .map_err(store_err)?;
        if let Some(p) = p {
            return Ok(p);
        }
    }
    Ok(Principal::anonymous())
}

/// The CSRF token of a request without a session (the login form's, logout's): the csrftoken
/// cookie echoed in the X-CSRFToken header or the csrfmiddlewaretoken field.
pub(crate) fn csrf_token_ok(headers: &HeaderMap, form_token: Option<&str>) -> bool {
    let cookie_token = cookie(headers, "csrftoken");
    let sent = headers.get("x-csrftoken").and_then(|v| v.to_str().ok()).or(form_token);
    matches!((cookie_token, sent), (Some(c), Some(s)) if c.len() == 64 && c == s)
}

/// The session's own CSRF token, echoed in the X-CSRFToken header or the csrfmiddlewaretoken
/// field: only a page of this site, rendered for this session, has it (a cookie a sibling site
/// planted is not it).
fn session_token_ok(who: &Principal, headers: &HeaderMap, form_token: Option<&str>) -> bool {
    let sent = headers.get("x-csrftoken").and_then(|v| v.to_str().ok()).or(form_token);
    matches!((who.csrf(), sent), (Some(c), Some(s)) if c.len() == 64 && c == s)
}

/// Whether a request carries the marks every current browser puts on every request.
fn from_a_browser(headers: &HeaderMap) -> bool {
    headers.contains_key("sec-fetch-site") || headers.contains_key("sec-fetch-mode") || headers.contains_key("origin")
}

/// Proof of intent for a state change: a bearer token is one; a browser session needs the CSRF
/// token, whatever other headers come along; an API client's session (mini-buildd's client,
/// which has no way to send the token) needs it only when a browser carries it.
fn intent_ok(who: &Principal, headers: &HeaderMap, form_token: Option<&str>) -> bool {
    match who.via {
        auth::Via::Anonymous | auth::Via::Token => true,
        auth::Via::Browser => session_token_ok(who, headers, form_token),
        auth::Via::ApiSession => !from_a_browser(headers) || session_token_ok(who, headers, form_token),
    }
}

async fn api_call(
    method: warp::http::Method,
    name: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    web: Web,
) -> Result<Body, std::convert::Infallible> {
    let output = query.iter().find(|(k, _)| k == "output").map(|(_, v)| v.clone());
    let next = query.iter().find(|(k, _)| k == "next").map(|(_, v)| v.clone());
    let wants_html = match output.as_deref() {
        Some(o) => o.starts_with("html"),
        None => headers.get("accept").and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html")),
    };
    let result = async {
        let call = registry::find(name.trim_end_matches('/')).ok_or_else(|| match registry::not_supported(name.trim_end_matches('/')) {
            Some(why) => ApiError::new(501, format!("mini-buildd's call {name:?} is not supported: {why}")),
            None => ApiError::new(404, format!("no API call {name:?}; GET /mini_buildd/api/?output=json lists them")),
        })?;
        let who = principal(&web, &headers).await?;
        let confirm = query.iter().find(|(k, _)| k == "confirm").map(|(_, v)| v.as_str());
        api::admit(call, &who, web.daemon.is_running(), confirm)?;
        let base = base_url(&headers);
        let changes_state = call.auth > auth::Role::None || call.confirm;
        if changes_state {
            let form_token = query.iter().find(|(k, _)| k == "csrfmiddlewaretoken").map(|(_, v)| v.as_str());
            if !intent_ok(&who, &headers, form_token) {
                return Err(ApiError::new(
                    403,
                    "CSRF check failed: a signed-in browser changes things only through this site's own forms (or send the csrftoken cookie's value as X-CSRFToken)",
                ));
            }
        }
        if method == warp::http::Method::GET
            && let Some(a) = call.args.iter().find(|a| a.kind == registry::Kind::Secret && query.iter().any(|(k, _)| k == a.name))
        {
            return Err(ApiError::bad_request(format!(
                "argument {} is a secret: send it in a POST body, never in a URL (URLs end up in logs and histories)",
                a.name
            )));
        }
        let args = Args::from_query(call, query.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let d = web.daemon.clone();
        let origin = Origin { base_url: base };
        tokio::task::spawn_blocking(move || api::calls::execute(&d, &args, &who, &origin))
            .await
            .map_err(|e| ApiError::new(500, format!("call failed: {e}")))?
    }
    .await;
    if wants_html {
        let back = query.iter().find(|(k, _)| k == "back").map(|(_, v)| v.as_str());
        let answer = pages::Answer { call: name.trim_end_matches('/'), next: next.as_deref(), back };
        return Ok(pages::call_result(&web, &headers, result, answer).await);
    }
    Ok(match (result, output.as_deref()) {
        (Ok(v), Some("plain")) => Response::builder()
            .header("content-type", "text/plain; charset=utf-8")
            .body(result_text(&v).into())
            .unwrap_or_else(|_| empty()),
        (Ok(v), _) => json_response(StatusCode::OK, "application/json", &v),
        (Err(e), _) => problem(&e),
    })
}

/// A call's answer as text: a string as it is, anything else as pretty JSON.
pub fn result_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

/// The API index: every call with its auth level and arguments, from the registry (the API
/// page renders it as forms; `?output=json` gives it as JSON).
pub fn api_index_json() -> serde_json::Value {
    let calls: Vec<serde_json::Value> = registry::CALLS
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "group": c.group,
                "auth": c.auth.as_str(),
                "needs_running": c.needs_running,
                "confirm": c.confirm,
                "doc": c.doc,
                "args": c.args.iter().map(|a| serde_json::json!({
                    "name": a.name,
                    "flag": if a.positional { a.name.to_owned() } else { a.flag() },
                    "short": a.short.map(|s| format!("-{s}")),
                    "type": format!("{:?}", a.kind).to_lowercase(),
                    "required": a.default == registry::Default::Required,
                    "default": match a.default { registry::Default::Value(v) => Some(v), _ => None },
                    "choices": a.choices,
                    "doc": a.doc,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!(calls)
}

/// Refuse oversized query strings (headers are limited by hyper: 431).
fn limits() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|q: String| async move {
            if q.len() > MAX_QUERY {
                return Err(warp::reject::custom(TooLarge(StatusCode::URI_TOO_LONG)));
            }
            Ok(())
        })
        .untuple_one()
}

#[derive(Debug)]
struct TooLarge(StatusCode);
impl warp::reject::Reject for TooLarge {}

async fn recover(r: Rejection) -> Result<Body, Rejection> {
    if let Some(TooLarge(code)) = r.find::<TooLarge>() {
        return Ok(problem(&ApiError::new(code.as_u16(), "request too large")));
    }
    if r.is_not_found() {
        return Ok(problem(&ApiError::new(404, "not found")));
    }
    if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        return Ok(problem(&ApiError::new(405, "method not allowed")));
    }
    if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        return Ok(problem(&ApiError::new(413, "request body too large")));
    }
    if r.find::<warp::reject::InvalidQuery>().is_some() {
        return Ok(problem(&ApiError::bad_request("malformed query string")));
    }
    Err(r)
}

/// All routes of the daemon but repository delivery (see [`files::Files`]).
pub fn routes(web: Web) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let api_get = warp::get()
        .map(|| warp::http::Method::GET)
        .and(warp::path!("mini_buildd" / "api" / String))
        .and(warp::query::<Vec<(String, String)>>())
        .and(warp::header::headers_cloned())
        .and(with(web.clone()))
        .and_then(api_call);
    // Browser forms post the same arguments.
    let api_post = warp::post()
        .map(|| warp::http::Method::POST)
        .and(warp::path!("mini_buildd" / "api" / String))
        .and(warp::body::content_length_limit(MAX_FORM))
        .and(warp::body::form::<Vec<(String, String)>>())
        .and(warp::header::headers_cloned())
        .and(with(web.clone()))
        .and_then(api_call);
    let root = warp::get()
        .and(warp::path::end())
        .map(|| warp::redirect::see_other(warp::http::Uri::from_static("/mini_buildd/")));
    let counted = web.daemon.clone();
    let log = warp::log::custom(move |info| {
        tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http");
        counted.metrics.http(&route_of(info.path()), info.status().as_u16());
    });
    let metrics = warp::get().and(warp::path!("metrics")).and(with(web.clone())).and_then(metrics);
    limits()
        .and(
            api_get
                .or(api_post)
                .or(login::routes(web.clone()))
                .or(events::routes(web.clone()))
                .or(buildlog::routes(web.clone()))
                .or(pages::routes(web.clone()))
                .or(metrics)
                .or(root),
        )
        .recover(recover)
        .with(log)
}

/// A bounded name for a request's path, for the HTTP metrics: `api:<call>` for a call, the page,
/// and fixed names for the rest (a client's own path never becomes a name).
fn route_of(path: &str) -> String {
    const PAGES: &[&str] = &["repositories", "sources", "builds", "events", "config", "setup", "api", "crontab"];
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs[..] {
        ["mini_buildd", "api", call, ..] if registry::find(call).is_some() => format!("api:{call}"),
        ["mini_buildd", "api", ..] => "api:other".into(),
        ["mini_buildd", "events-dir", ..] => "logs".into(),
        ["mini_buildd"] => "page:home".into(),
        ["mini_buildd", page, ..] if PAGES.contains(&page) => format!("page:{page}"),
        ["api", "events", ..] => "events".into(),
        ["accounts", ..] => "accounts".into(),
        ["metrics"] => "metrics".into(),
        ["static", ..] | ["mini_buildd", "static", ..] => "static".into(),
        _ => "other".into(),
    }
}

/// `GET /metrics`: Prometheus's text format (see [`crate::metrics`]).
async fn metrics(web: Web) -> Result<Body, Rejection> {
    let d = web.daemon.clone();
    let gauges = tokio::task::spawn_blocking(move || {
        let state = d.inst.store.dir().to_owned();
        let running = crate::builder::jobs(&d.inst.store)
            .map(|j| j.iter().filter(|j| j.state != crate::builder::JobState::Finished).count())
            .unwrap_or(0);
        crate::metrics::Gauges {
            build_queue: crate::packager::build_queue(&d.inst.store).map(|q| q.len()).unwrap_or(0),
            packaging: crate::packager::pending(&d.inst.store).map(|p| p.len()).unwrap_or(0),
            running_builds: running,
            redb_bytes: std::fs::metadata(state.join("buildbay.redb")).map(|m| m.len()).unwrap_or(0),
            disk_free_bytes: crate::store::free_bytes(&state).unwrap_or(0),
            mail_queued: crate::mail::queued(&d.inst.store).unwrap_or(0),
        }
    })
    .await
    .unwrap_or_default();
    Ok(Response::builder()
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(web.daemon.metrics.render(&gauges).into())
        .unwrap_or_else(|_| empty()))
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The header through which the accept loop tells the routes who the peer is. It is overwritten
/// on every request, so a client cannot forge it.
pub const PEER_HEADER: &str = "x-buildbay-peer";

/// The TCP peer of this request, as the accept loop recorded it.
pub fn peer() -> impl Filter<Extract = (Option<SocketAddr>,), Error = std::convert::Infallible> + Clone {
    warp::header::optional::<SocketAddr>(PEER_HEADER).or(warp::any().map(|| None)).unify()
}

/// The HTTPS listener and its TLS acceptor (see [`tls`]).
pub struct Https {
    pub listener: tokio::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Send plain HTTP requests there (all but `/repositories/`, which apt may fetch over HTTP:
    /// its InRelease is signed).
    pub redirect: bool,
}

/// How long a client may take for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve until `shutdown` is set, then let in-flight requests finish: HTTP on `listener`, and
/// HTTPS on `https` when given, with the same routes and the same connection bound.
///
/// The accept loop is ours rather than warp's so that every connection gets TCP_NODELAY (warp
/// writes a file's headers and body separately, and without it each small file waits out the
/// client's 40 ms delayed ACK) and so that the routes learn the peer address and the scheme.
pub async fn serve(
    listener: tokio::net::TcpListener,
    https: Option<Https>,
    daemon: Arc<Daemon>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let files = Arc::new(files::Files::new(daemon.inst.store.dir().join("repositories")));
    let web = Web {
        daemon,
        events: Arc::new(events::Attached::default()),
        shutdown: shutdown.clone(),
        pages: Arc::new(pages::Templates::new()),
    };
    let shared = Arc::new(Shared {
        counted: web.daemon.clone(),
        routes: routes(web),
        files,
        graceful: hyper_util::server::graceful::GracefulShutdown::new(),
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
    });
    let redirect = match &https {
        Some(h) if h.redirect => h.listener.local_addr().ok().map(|a| a.port()),
        _ => None,
    };
    let plain = accept_loop(shared.clone(), listener, None, redirect, shutdown.clone());
    match https {
        Some(h) => {
            // With the redirect, browsers are told to come back over HTTPS only (HSTS).
            let tls = Tls { acceptor: h.acceptor, hsts: h.redirect };
            tokio::join!(plain, accept_loop(shared.clone(), h.listener, Some(tls), None, shutdown));
        }
        None => plain.await,
    }
    match Arc::try_unwrap(shared) {
        Ok(s) => s.graceful.shutdown().await,
        Err(_) => tracing::warn!("the web server's state is still shared at shutdown"),
    }
}

/// What both listeners share.
struct Shared<R> {
    counted: Arc<Daemon>,
    routes: R,
    files: Arc<files::Files>,
    graceful: hyper_util::server::graceful::GracefulShutdown,
    slots: Arc<tokio::sync::Semaphore>,
}

/// The header through which the accept loop tells the routes that the connection is HTTPS. It
/// is overwritten on every request, so a client cannot forge it.
pub const SCHEME_HEADER: &str = "x-buildbay-scheme";

/// The scheme of this request, as the accept loop recorded it.
pub fn is_https(headers: &HeaderMap) -> bool {
    headers.get(SCHEME_HEADER).is_some_and(|v| v == "https")
}

/// Over HTTPS, every cookie is `Secure`: a browser never sends it over plain HTTP.
fn secure_cookies(headers: &mut HeaderMap) {
    let cookies: Vec<warp::http::HeaderValue> = headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| format!("{v}; Secure").parse().ok())
        .collect();
    if !cookies.is_empty() {
        headers.remove("set-cookie");
        for c in cookies {
            headers.append("set-cookie", c);
        }
    }
}

/// `308` to the same path over HTTPS on `port`, at the host the client named.
fn to_https(headers: &HeaderMap, uri: &warp::http::Uri, port: u16) -> Body {
    let origin = Origin { base_url: base_url(headers) };
    let host = origin.host();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header("location", format!("https://{host}:{port}{path}"))
        .body(Vec::new().into())
        .unwrap_or_else(|_| empty())
}

/// The TLS side of a listener.
#[derive(Clone)]
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Send `Strict-Transport-Security`.
    hsts: bool,
}

async fn accept_loop<R>(
    shared: Arc<Shared<R>>,
    listener: tokio::net::TcpListener,
    tls: Option<Tls>,
    redirect: Option<u16>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) where
    R: Filter + Clone + Send + Sync + 'static,
    R::Extract: warp::Reply,
{
    let mut stopped = std::pin::pin!(stopped(shutdown));
    let https = tls.is_some();
    let hsts = tls.as_ref().is_some_and(|t| t.hsts);
    loop {
        let slot = tokio::select! {
            s = shared.slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = &mut stopped => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let filtered = warp::service(shared.routes.clone());
        let peer_value = peer.to_string().parse::<warp::http::HeaderValue>().ok();
        let files = shared.files.clone();
        let counted = shared.counted.clone();
        let svc = hyper::service::service_fn(move |mut req: warp::http::Request<hyper::body::Incoming>| {
            use futures_util::future::{Either, ready};
            if let Some(response) = files.handle(req.method(), req.uri().path(), req.headers()) {
                counted.metrics.http("repositories", response.status().as_u16());
                return Either::Left(ready(Ok(response)));
            }
            if https {
                req.headers_mut().insert(SCHEME_HEADER, warp::http::HeaderValue::from_static("https"));
            } else {
                req.headers_mut().remove(SCHEME_HEADER);
            }
            // Local administration (its token, from this host) is answered on plain HTTP too.
            let local_admin = peer.ip().is_loopback()
                && req.headers().get("authorization").is_some_and(|v| v.as_bytes().starts_with(b"Bearer bbl_"));
            if let Some(port) = redirect.filter(|_| !local_admin) {
                counted.metrics.http("redirect", 308);
                return Either::Left(ready(Ok(to_https(req.headers(), req.uri(), port))));
            }
            match &peer_value {
                Some(v) => req.headers_mut().insert(PEER_HEADER, v.clone()),
                None => req.headers_mut().remove(PEER_HEADER),
            };
            let mut filtered = filtered.clone();
            Either::Right(async move {
                let mut r = tower_service::Service::call(&mut filtered, req).await?;
                if https {
                    secure_cookies(r.headers_mut());
                    if hsts {
                        r.headers_mut().insert(
                            "strict-transport-security",
                            warp::http::HeaderValue::from_static("max-age=31536000"),
                        );
                    }
                }
                Ok::<_, std::convert::Infallible>(r)
            })
        });
        let watcher = shared.graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // Bounds the request head: hyper answers 431 beyond it, and closes a connection
            // whose head does not arrive in time.
            builder
                .http1()
                .max_buf_size(MAX_HEADERS)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let ended = match tls {
                None => watcher.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc)).await,
                Some(tls) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        watcher.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc)).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn csrf_rules() {
        let token = "a".repeat(64);
        let with_token = headers(&[("cookie", &format!("csrftoken={token}")), ("x-csrftoken", &token)]);
        let browser = |via| Principal {
            user: Some("u".into()),
            role: auth::Role::Admin,
            via,
            must_change_password: false,
            session: Some(("digest".into(), "a".repeat(64))),
        };
        // A browser session: the token, whatever other headers say.
        assert!(intent_ok(&browser(auth::Via::Browser), &with_token, None));
        for h in [
            headers(&[]),
            headers(&[("sec-fetch-site", "same-origin")]),
            headers(&[("origin", "http://h:8066")]),
            headers(&[("cookie", &format!("csrftoken={token}"))]),
        ] {
            assert!(!intent_ok(&browser(auth::Via::Browser), &h, None), "{h:?}");
        }
        assert!(intent_ok(
            &browser(auth::Via::Browser),
            &headers(&[("cookie", &format!("csrftoken={token}"))]),
            Some(&token)
        ));
        // A planted cookie with a matching header is not the session's token.
        let planted = "b".repeat(64);
        let h = headers(&[("cookie", &format!("csrftoken={planted}")), ("x-csrftoken", &planted)]);
        assert!(!intent_ok(&browser(auth::Via::Browser), &h, None));
        // mini-buildd's client: no browser marks, no token needed; with them, the token is.
        assert!(intent_ok(&browser(auth::Via::ApiSession), &headers(&[]), None));
        assert!(!intent_ok(&browser(auth::Via::ApiSession), &headers(&[("sec-fetch-site", "cross-site")]), None));
        assert!(intent_ok(&browser(auth::Via::Token), &headers(&[("origin", "http://evil")]), None));
    }

    #[test]
    fn host_and_cookies() {
        assert_eq!(base_url(&headers(&[("host", "127.0.0.1:8066")])), "http://127.0.0.1:8066");
        assert_eq!(base_url(&headers(&[("host", "evil<script>")])), "http://localhost:8066");
        assert_eq!(cookie(&headers(&[("cookie", "a=1; sessionid=xyz")]), "sessionid"), Some("xyz"));
        assert_eq!(html_escape("<a href='x'>&"), "&lt;a href=&#x27;x&#x27;&gt;&amp;");
    }
}
