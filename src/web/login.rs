//! Django-compatible login (what mini-buildd's client scripts): a `csrftoken` cookie from
//! `GET /accounts/login/`, a form POST, a redirect to `next` with the `sessionid` cookie.
//!
//! Cookies are `SameSite=Strict` and `HttpOnly`. The login limiter takes its place before any
//! hash runs. mini-buildd's client posts `this_is_the_login_form` (Django's admin form field,
//! which buildbay's own form does not have): its session is an API client's (see
//! [`crate::auth::Via`]). Logout is a POST.

use super::{Web, cookie, html_page};
use crate::auth;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use warp::http::{HeaderMap, Response, StatusCode};
use warp::{Filter, Rejection, Reply};

fn login_form(web: &Web, status: StatusCode, csrf: &str, next: &str, error: Option<&str>) -> super::Body {
    super::pages::login_page(web, status, csrf, next, error)
}

fn valid_csrf(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where to go after login: a local path, or an absolute URL on this very host (made local).
pub(super) fn safe_next(next: &str, headers: &HeaderMap) -> String {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("");
    let local = if let Some(rest) = next.strip_prefix("http://").or_else(|| next.strip_prefix("https://")) {
        match rest.split_once('/') {
            Some((h, path)) if h == host => format!("/{path}"),
            _ => "/".into(),
        }
    } else {
        next.to_owned()
    };
    // Browsers drop tabs and newlines from URLs, so `/\t/evil` would become `//evil`.
    if local.starts_with('/')
        && !local.starts_with("//")
        && !local.contains('\\')
        && !local.chars().any(char::is_control)
    {
        local
    } else {
        "/".into()
    }
}

fn client_ip(remote: Option<SocketAddr>) -> IpAddr {
    remote.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip())
}

async fn post_login(
    form: HashMap<String, String>,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
    web: Web,
) -> Result<super::Body, std::convert::Infallible> {
    let ip = client_ip(remote);
    let next = safe_next(form.get("next").map_or("/", String::as_str), &headers);
    let csrf_cookie = cookie(&headers, "csrftoken").filter(|c| valid_csrf(c)).map(str::to_owned);
    let fresh = || auth::random_token();
    let Some(csrf) = csrf_cookie.clone().filter(|c| form.get("csrfmiddlewaretoken") == Some(c)) else {
        return Ok(login_form(
            &web,
            StatusCode::FORBIDDEN,
            &fresh(),
            &next,
            Some("CSRF verification failed: reload the login page and try again."),
        ));
    };
    let (user, password) =
        (form.get("username").cloned().unwrap_or_default(), form.get("password").cloned().unwrap_or_default());
    // Before anything is hashed: a place in every limiter bucket, and a hasher.
    let attempt = match web.daemon.limiter.reserve(ip, &user) {
        Ok(a) => a,
        Err(refusal) => {
            let (status, wait, why) = match refusal {
                auth::Refusal::Wait(w) => {
                    (StatusCode::TOO_MANY_REQUESTS, w, format!("Too many login attempts; try again in {w} s."))
                }
                auth::Refusal::Busy => {
                    (StatusCode::SERVICE_UNAVAILABLE, 1, "Too many logins at once; try again in a moment.".to_owned())
                }
            };
            let mut r = login_form(&web, status, &csrf, &next, Some(&why));
            if let Ok(v) = wait.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            return Ok(r);
        }
    };
    let api_client = form.contains_key("this_is_the_login_form");
    let d = web.daemon.clone();
    type Checked = Option<((String, String), bool)>;
    let checked = tokio::task::spawn_blocking(move || -> Result<Checked, auth::AuthError> {
        match auth::check_password(&d.inst.store, &user, &password)? {
            Some(u) => Ok(Some((auth::create_session(&d.inst.store, &u.name, api_client)?, u.must_change_password))),
            None => Ok(None),
        }
    })
    .await;
    match checked {
        Ok(Ok(Some(((session, session_csrf), must_change)))) => {
            attempt.succeeded();
            let age = auth::SESSION_LIFETIME.num_seconds();
            let cookie = format!("sessionid={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}");
            // The session's own CSRF token replaces the login form's.
            let csrf_cookie = format!("csrftoken={session_csrf}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}");
            // A one-time password is changed first (the browser is sent to the form for it).
            let next =
                if must_change && !api_client { "/accounts/profile/?change_password=1".to_owned() } else { next };
            Ok(Response::builder()
                .status(StatusCode::FOUND)
                .header("location", next)
                .header("set-cookie", cookie)
                .header("set-cookie", csrf_cookie)
                .body(Vec::new().into())
                .unwrap_or_else(|_| super::empty()))
        }
        Ok(Ok(None)) => {
            drop(attempt);
            tracing::info!(%ip, "failed login");
            Ok(login_form(&web, StatusCode::OK, &csrf, &next, Some("Wrong user name or password.")))
        }
        Ok(Err(e)) => Ok(super::problem(&crate::api::ApiError::new(500, e.to_string()))),
        Err(e) => Ok(super::problem(&crate::api::ApiError::new(500, e.to_string()))),
    }
}

pub fn routes(web: Web) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let get = warp::get()
        .and(warp::path!("accounts" / "login"))
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(super::with(web.clone()))
        .map(|q: HashMap<String, String>, headers: HeaderMap, web: Web| {
            let csrf = cookie(&headers, "csrftoken")
                .filter(|c| valid_csrf(c))
                .map(str::to_owned)
                .unwrap_or_else(auth::random_token);
            let next = safe_next(q.get("next").map_or("/", String::as_str), &headers);
            login_form(&web, StatusCode::OK, &csrf, &next, None)
        });
    let post = warp::post()
        .and(warp::path!("accounts" / "login"))
        .and(warp::body::content_length_limit(super::MAX_FORM))
        .and(warp::body::form::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(super::peer())
        .and(super::with(web.clone()))
        .and_then(post_login);
    let null = warp::get()
        .and(warp::path!("accounts" / "null"))
        .map(|| html_page(StatusCode::OK, "Logged in", "<p>Logged in.</p>"));
    // Logout changes state: a POST with the CSRF token (a link or an image cannot log anyone out).
    let logout = warp::post()
        .and(warp::path!("accounts" / "logout"))
        .and(warp::body::content_length_limit(super::MAX_FORM))
        .and(warp::body::form::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(super::with(web))
        .and_then(|form: HashMap<String, String>, headers: HeaderMap, web: Web| async move {
            let token = form.get("csrfmiddlewaretoken").map(String::as_str);
            if !super::csrf_token_ok(&headers, token) {
                return Ok::<_, std::convert::Infallible>(super::problem(&crate::api::ApiError::new(
                    403,
                    "CSRF check failed: log out with the button of a page of this site",
                )));
            }
            if let Some(sid) = cookie(&headers, "sessionid").map(str::to_owned) {
                let d = web.daemon.clone();
                let _ = tokio::task::spawn_blocking(move || auth::end_session(&d.inst.store, &sid)).await;
            }
            Ok(Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header("location", "/")
                .header("set-cookie", "sessionid=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
                .body(Vec::new().into())
                .unwrap_or_else(|_| super::empty()))
        });
    let logout_get = warp::get().and(warp::path!("accounts" / "logout")).map(|| {
        super::problem(&crate::api::ApiError::new(405, "log out with the Log out button (a POST), not a link"))
    });
    get.or(post).or(null).or(logout).or(logout_get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_kept_local() {
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:8066".parse().unwrap());
        assert_eq!(safe_next("http://127.0.0.1:8066/accounts/null/", &h), "/accounts/null/");
        assert_eq!(safe_next("/mini_buildd/", &h), "/mini_buildd/");
        assert_eq!(safe_next("http://evil.example/x", &h), "/");
        assert_eq!(safe_next("//evil.example/x", &h), "/");
        assert_eq!(safe_next("javascript:alert(1)", &h), "/");
        assert_eq!(safe_next("/\t/evil.example/x", &h), "/");
    }
}
