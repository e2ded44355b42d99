//! The browser pages: handlebars templates (`templates/`, compiled in) over the data the API
//! calls answer. Reading goes through `api::calls::execute`, so a page shows exactly what the
//! API says; every action is a form that posts to the API call, behind a confirmation checkbox.
//! Templates escape everything they print (`{{…}}`), and no template uses the raw `{{{…}}}`.

use super::{Body, Web, base_url, cookie, empty};
use crate::api::{self, ApiError, Args, calls::Origin, registry};
use crate::auth::{self, Principal, Role};
use crate::config::{self, Kind};
use crate::daemon::Daemon;
use crate::events::{self, Event, EventType};
use handlebars::Handlebars;
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use warp::http::{HeaderMap, Response, StatusCode};
use warp::{Filter, Rejection, Reply};

/// Packages per page of a distribution listing.
pub const PAGE_SIZE: usize = 500;
/// Events shown on the events page (the newest).
const EVENTS_SHOWN: usize = 200;

const TEMPLATES: &[(&str, &str)] = &[
    ("layout", include_str!("../../templates/layout.hbs")),
    ("confirm", include_str!("../../templates/confirm.hbs")),
    ("events_table", include_str!("../../templates/events_table.hbs")),
    ("home", include_str!("../../templates/home.hbs")),
    ("repositories", include_str!("../../templates/repositories.hbs")),
    ("distribution", include_str!("../../templates/distribution.hbs")),
    ("source", include_str!("../../templates/source.hbs")),
    ("builds", include_str!("../../templates/builds.hbs")),
    ("crontab", include_str!("../../templates/crontab.hbs")),
    ("events", include_str!("../../templates/events.hbs")),
    ("config", include_str!("../../templates/config.hbs")),
    ("repository_form", include_str!("../../templates/repository_form.hbs")),
    ("setup", include_str!("../../templates/setup.hbs")),
    ("api", include_str!("../../templates/api.hbs")),
    ("account", include_str!("../../templates/account.hbs")),
    ("message", include_str!("../../templates/message.hbs")),
    ("login", include_str!("../../templates/login.hbs")),
    ("object_form", include_str!("../../templates/object_form.hbs")),
];

const STATIC: &[(&str, &str, &str)] = &[
    ("buildbay.css", "text/css; charset=utf-8", include_str!("../../templates/static/buildbay.css")),
    ("buildbay.js", "text/javascript; charset=utf-8", include_str!("../../templates/static/buildbay.js")),
];

/// One distribution's listing rows: (source, version, component, binaries).
type Listing = Arc<Vec<(String, String, String, String)>>;

/// The compiled templates, and the distribution listings, reused while the distribution's
/// published InRelease is unchanged (every change to a distribution republishes it).
pub struct Templates {
    hb: Handlebars<'static>,
    listings: Mutex<HashMap<String, (std::time::SystemTime, Listing)>>,
}

impl Templates {
    pub fn new() -> Templates {
        let mut h = Handlebars::new();
        for (name, text) in TEMPLATES {
            // The templates are part of the binary: a broken one is a build defect that the unit
            // test `every_template_compiles` catches.
            if let Err(e) = h.register_template_string(name, *text) {
                tracing::error!("template {name}: {e}");
            }
        }
        h.register_helper("json", Box::new(json_helper));
        h.register_helper("concat", Box::new(concat_helper));
        h.register_helper("object", Box::new(object_helper));
        Templates { hb: h, listings: Mutex::default() }
    }

    pub fn render(&self, name: &str, ctx: &Json) -> Result<String, handlebars::RenderError> {
        self.hb.render(name, ctx)
    }

    /// A distribution's packages, from the cache while its InRelease has not changed.
    fn listing(&self, d: &Daemon, dist: &crate::deb::Dist) -> Result<Listing, ApiError> {
        let inrelease = d
            .inst
            .store
            .dir()
            .join("repositories")
            .join(dist.repo.as_str())
            .join("dists")
            .join(dist.to_string())
            .join("InRelease");
        let stamp = std::fs::metadata(&inrelease).and_then(|m| m.modified()).ok();
        let key = dist.to_string();
        if let Some(stamp) = stamp
            && let Some((s, l)) = self.listings.lock().ok().and_then(|m| m.get(&key).cloned())
            && s == stamp
        {
            return Ok(l);
        }
        let rows: Vec<(String, String, String, String)> = d
            .inst
            .archive()?
            .list_dist(dist)?
            .iter()
            .map(|r| {
                let mut bins: Vec<String> = r.binaries.iter().map(|b| b.package.to_string()).collect();
                bins.dedup();
                (r.source.to_string(), r.version.to_string(), r.component.to_string(), bins.join(", "))
            })
            .collect();
        let rows = Arc::new(rows);
        if let (Some(stamp), Ok(mut m)) = (stamp, self.listings.lock()) {
            m.insert(key, (stamp, rows.clone()));
        }
        Ok(rows)
    }
}

impl Default for Templates {
    fn default() -> Templates {
        Templates::new()
    }
}

fn json_helper(
    h: &handlebars::Helper,
    _: &Handlebars,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let v = h.param(0).map(|p| p.value().clone()).unwrap_or(Json::Null);
    let text = match v {
        Json::String(s) => s,
        other => other.to_string(),
    };
    out.write(&handlebars::html_escape(&text))?;
    Ok(())
}

handlebars::handlebars_helper!(concat_helper: |*args| {
    args.iter().map(|a| match a { Json::String(s) => s.clone(), Json::Null => String::new(), o => o.to_string() }).collect::<String>()
});

handlebars::handlebars_helper!(object_helper: |**kwargs| {
    Json::Object(kwargs.iter().map(|(k, v)| ((*k).to_owned(), (*v).clone())).collect())
});

/// Who looks at a page, and what the layout needs to know about the request.
#[derive(Clone)]
struct Viewer {
    who: Principal,
    csrf: String,
    /// The csrftoken cookie is new and must be set.
    new_csrf: bool,
    path: String,
    base_url: String,
}

/// A page: which template, and its data.
type Page = Result<(&'static str, Json), ApiError>;

fn user_json(who: &Principal) -> Json {
    json!({
        "name": who.user,
        "role": who.role.as_str(),
        "staff": who.role >= Role::Staff,
        "admin": who.role >= Role::Admin,
        "must_change_password": who.must_change_password,
    })
}

/// Run an API call as `who` (reading only: pages never change anything themselves).
fn call(d: &Daemon, who: &Principal, base: &str, name: &str, query: &[(&str, &str)]) -> Result<Json, ApiError> {
    let c = registry::find(name).ok_or_else(|| ApiError::new(500, format!("no call {name}")))?;
    api::admit(c, who, d.is_running(), None)?;
    let args = Args::from_query(c, query.iter().copied())?;
    api::calls::execute(d, &args, who, &Origin { base_url: base.to_owned() })
}

fn event_json(e: &Event) -> Json {
    let mut v = serde_json::to_value(e).unwrap_or(Json::Null);
    if let Json::Object(m) = &mut v {
        m.insert("links".into(), Json::Array(arch_links(e)));
    }
    v
}

/// A check's verdict as a badge class: `ok` (pass, info), `warn` (warn, no tests), `bad`.
fn verdict_class(verdict: &str) -> &'static str {
    match verdict {
        "pass" | "info" => "ok",
        "warn" | "no tests" => "warn",
        _ => "bad",
    }
}

/// mini-buildd's per-architecture links of an event: for INSTALLED and FAILED, each
/// architecture's build log with its QA verdicts (a gating check's output is in the build log);
/// for BUILT, the build log and the logs of the checks that ran after the result.
fn arch_links(e: &Event) -> Vec<Json> {
    let log_of = |bkey: &crate::protocol::BuildKey| super::buildlog::url(&format!("{bkey}/{}", bkey.buildlog_name()));
    match e.kind {
        EventType::Installed | EventType::Failed => {
            let Some(key) = e.extra.get("key").and_then(Json::as_str) else { return vec![] };
            let Some(checks) = e.extra.get("checks").and_then(Json::as_object) else { return vec![] };
            checks
                .iter()
                .filter_map(|(arch, c)| {
                    let bkey: crate::protocol::BuildKey = format!("{key}/{arch}").parse().ok()?;
                    let verdicts: Vec<Json> = c
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(check, v)| {
                            let v = v.as_str().unwrap_or("");
                            json!({"check": check, "verdict": v, "class": verdict_class(v)})
                        })
                        .collect();
                    Some(json!({"arch": arch, "log_href": log_of(&bkey), "checks": verdicts, "logs": []}))
                })
                .collect()
        }
        EventType::Built => {
            let Some(bkey) =
                e.extra.get("bkey").and_then(Json::as_str).and_then(|b| b.parse::<crate::protocol::BuildKey>().ok())
            else {
                return vec![];
            };
            let logs: Vec<Json> = crate::protocol::Check::ALL
                .into_iter()
                .filter_map(|c| {
                    let field = c.field().to_ascii_lowercase();
                    let rel = e.extra.get(&field)?.as_str()?;
                    Some(json!({"name": format!("{field} (after the result)"), "href": super::buildlog::url(rel)}))
                })
                .collect();
            vec![json!({"arch": bkey.arch.as_str(), "log_href": log_of(&bkey), "checks": [], "logs": logs})]
        }
        _ => vec![],
    }
}

fn latest_events(d: &Daemon, keep: impl Fn(&Event) -> bool, n: usize) -> Result<Vec<Event>, ApiError> {
    events::newest(&d.inst.store, n, keep).map_err(|e| ApiError::new(500, e.to_string()))
}

fn fingerprint(d: &Daemon) -> Result<String, ApiError> {
    Ok(d.inst.daemon()?.and_then(|x| x.key_fingerprint).unwrap_or_default())
}

fn home(d: &Daemon, v: &Viewer) -> Page {
    let status = call(d, &v.who, &v.base_url, "status", &[])?;
    let events: Vec<Json> = latest_events(d, |_| true, 10)?.iter().map(event_json).collect();
    Ok((
        "home",
        json!({"title": "Home", "nav": "home", "status": status, "running": d.is_running(), "events": events, "fingerprint": fingerprint(d)?}),
    ))
}

fn repositories(d: &Daemon, v: &Viewer, t: &Templates) -> Page {
    let identity = d.inst.daemon()?.map(|x| x.identity.to_string()).unwrap_or_default();
    let archive = d.inst.archive()?;
    let mut repos = Vec::new();
    let keyring_states = crate::api::calls::keyring_states(d);
    for r in d.inst.list::<config::Repository>()? {
        let Ok(ctx) = archive.ctx(&r.identity) else { continue };
        let mut dists = Vec::new();
        let mut suites = Vec::new();
        for dist in ctx.all_dists() {
            if dist.is_rollback() {
                continue;
            }
            let suite = ctx.layout.suite(&dist.suite);
            let packages = t.listing(d, &dist).map(|l| l.len()).unwrap_or(0);
            suites.push(dist.to_string());
            dists.push(json!({
                "name": dist.to_string(),
                "uploadable": suite.is_some_and(|s| s.uploadable),
                "migrates_to": suite.and_then(|s| s.migrates_to.as_ref()).map(|to| crate::deb::Dist::new(dist.codename.clone(), dist.repo.clone(), to.clone()).to_string()),
                "rollbacks": suite.map_or(0, |s| s.rollback),
                "packages": packages,
            }));
        }
        let keyring = format!("/etc/apt/keyrings/{identity}.asc");
        let id = r.identity.to_string();
        let sources_list = call(
            d,
            &v.who,
            &v.base_url,
            "sources_list",
            &[("repositories", &id), ("options", &format!("signed-by={keyring}"))],
        )?;
        let components: Vec<String> = ctx
            .dists
            .values()
            .flat_map(|(dist, _)| dist.components.iter().map(|c| c.to_string()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let deb822 = format!(
            "Types: deb\nURIs: {}/repositories/{id}\nSuites: {}\nComponents: {}\nSigned-By: {keyring}\n",
            v.base_url,
            suites.join(" "),
            components.join(" ")
        );
        let keyring: Vec<&crate::keyring::KeyringState> = keyring_states
            .iter()
            .filter(|k| k.distribution.parse::<crate::deb::Dist>().is_ok_and(|d| d.repo == r.identity))
            .collect();
        repos.push(json!({
            "identity": id,
            "keyring": keyring,
            "layout": r.layout,
            "state": status_label(&r.status),
            "active": r.status.is_active(),
            "allow_unauthenticated_uploads": r.allow_unauthenticated_uploads,
            "dists": dists,
            "sources_list": sources_list,
            "sources_deb822": deb822,
        }));
    }
    Ok((
        "repositories",
        json!({"title": "Repositories", "nav": "repositories", "repositories": repos, "fingerprint": fingerprint(d)?,
               "pub_key": d.inst.pub_key().unwrap_or_default(), "base_url": v.base_url, "running": d.is_running()}),
    ))
}

fn status_label(s: &config::Status) -> &'static str {
    match (s.state, &s.checked) {
        (config::State::Active, _) => "active",
        (_, config::Checked::Failed) => "check failed",
        (config::State::Prepared, _) => "not active",
        (config::State::Removed, _) => "removed",
    }
}

/// One distribution's packages, filtered by `q` and paged.
fn distribution(d: &Daemon, t: &Templates, repo: &str, dist: &str, q: &HashMap<String, String>) -> Page {
    let dist: crate::deb::Dist = dist.parse().map_err(|e| ApiError::new(404, format!("{e}")))?;
    if dist.repo.as_str() != repo {
        return Err(ApiError::new(404, format!("{dist} is not in repository {repo}")));
    }
    d.inst.archive()?.ctx(&dist.repo)?.check_dist(&dist)?;
    let all = t.listing(d, &dist)?;
    let filter = q.get("q").map(|s| s.trim()).unwrap_or("");
    let matched: Vec<_> = all.iter().filter(|r| filter.is_empty() || r.0.contains(filter)).collect();
    let pages = matched.len().div_ceil(PAGE_SIZE).max(1);
    let page = q.get("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).clamp(1, pages);
    let packages: Vec<Json> = matched
        .iter()
        .skip((page - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .map(|(source, version, component, binaries)| {
            json!({"source": source, "version": version, "component": component, "binaries": binaries})
        })
        .collect();
    Ok((
        "distribution",
        json!({"title": dist.to_string(), "nav": "repositories", "dist": dist.to_string(), "repo": repo, "packages": packages,
               "total": all.len(), "matched": matched.len(), "q": filter, "page": page, "pages": pages,
               "prev": (page > 1).then(|| page - 1), "next": (page < pages).then(|| page + 1)}),
    ))
}

/// The package tracker: a source package in every distribution and rollback, its history and
/// the actions on it.
fn source(d: &Daemon, v: &Viewer, name: &str) -> Page {
    let source: crate::deb::PackageName =
        name.parse().map_err(|e| ApiError::new(404, format!("{e}; source package names are like hello-world")))?;
    let shown = call(d, &v.who, &v.base_url, "show", &[("source", source.as_str())])?;
    let mut repos = Vec::new();
    if let Json::Object(by_repo) = &shown {
        for (repo, dists) in by_repo {
            let Json::Object(dists) = dists else { continue };
            let rows: Vec<Json> = dists
                .iter()
                .map(|(dname, e)| {
                    let rollbacks: Vec<Json> = e["rollbacks"]
                        .as_object()
                        .map(|m| m.iter().map(|(rd, re)| json!({"dist": rd, "version": re["version"]})).collect())
                        .unwrap_or_default();
                    // Why it may not migrate yet (the gate's QA and age; installability is
                    // checked when it migrates).
                    let waits: Vec<String> = match (e.get("migrates_to"), dname.parse::<crate::deb::Dist>()) {
                        (Some(Json::String(_)), Ok(dist)) => d
                            .inst
                            .archive()
                            .ok()
                            .and_then(|a| crate::gate::quick(&d.inst, &a, &source, &dist).ok())
                            .unwrap_or_default(),
                        _ => vec![],
                    };
                    json!({"name": dname, "version": e.get("version"), "migrates_to": e.get("migrates_to"), "rollbacks": rollbacks, "waits": waits})
                })
                .collect();
            let mut versions: Vec<crate::deb::Version> = rows
                .iter()
                .flat_map(|r| {
                    let rb = r["rollbacks"].as_array().into_iter().flatten().map(|x| &x["version"]);
                    std::iter::once(&r["version"]).chain(rb)
                })
                .filter_map(|v| v.as_str()?.parse().ok())
                .collect();
            versions.sort_by(|a, b| b.cmp(a));
            versions.dedup();
            let back = format!("/mini_buildd/sources/{source}/");
            let debdiffs: Vec<Json> = versions
                .windows(2)
                .take(5)
                .map(|w| {
                    let q = serde_urlencoded::to_string([
                        ("source", source.as_str()),
                        ("repository", repo.as_str()),
                        ("versiona", &w[1].to_string()),
                        ("versionb", &w[0].to_string()),
                        ("output", "html"),
                        ("back", &back),
                    ])
                    .unwrap_or_default();
                    json!({"a": w[1], "b": w[0], "href": format!("/mini_buildd/api/debdiff/?{q}")})
                })
                .collect();
            repos.push(json!({"repo": repo, "dists": rows, "debdiffs": debdiffs}));
        }
    }
    let history =
        events::of_source(&d.inst.store, source.as_str(), 100).map_err(|e| ApiError::new(500, e.to_string()))?;
    let failed: Vec<Json> = history
        .iter()
        .filter(|e| matches!(e.kind, EventType::Failed | EventType::Rejected))
        .map(|e| json!({"type": e.kind.as_str(), "version": e.version, "distribution": e.distribution, "timestamp": events::iso::format(&e.timestamp), "bkey": e.extra.get("key")}))
        .collect();
    let built: Vec<Json> = history
        .iter()
        .filter(|e| e.kind == EventType::Built)
        .map(|e| {
            let status = e.extra.get("status").and_then(Json::as_str).unwrap_or("?");
            json!({"version": e.version, "distribution": e.distribution, "arch": e.arch(), "status": status, "ok": status == "successful",
                   "timestamp": events::iso::format(&e.timestamp), "log_href": e.extra.get("buildlog").and_then(Json::as_str).map(super::buildlog::url)})
        })
        .collect();
    let subscribed = match &v.who.user {
        Some(user) => {
            d.inst.list::<config::Subscription>()?.iter().any(|s| &s.user == user && s.source == source.as_str())
        }
        None => false,
    };
    Ok((
        "source",
        json!({"title": source.as_str(), "nav": "", "source": source.as_str(), "repositories": repos, "port_targets": port_targets(d)?,
               "events": history.iter().map(event_json).collect::<Vec<_>>(), "failed": failed, "builds": built, "subscribed": subscribed}),
    ))
}

/// Where a port may go: the uploadable distributions of the active repositories (none while the
/// daemon is stopped: `port` needs it running).
fn port_targets(d: &Daemon) -> Result<Vec<String>, ApiError> {
    if !d.is_running() {
        return Ok(vec![]);
    }
    let archive = d.inst.archive()?;
    let mut out = Vec::new();
    for r in d.inst.list::<config::Repository>()?.into_iter().filter(|r| r.status.is_active()) {
        let Ok(ctx) = archive.ctx(&r.identity) else { continue };
        for dist in ctx.all_dists().into_iter().filter(|d| !d.is_rollback()) {
            if ctx.layout.suite(&dist.suite).is_some_and(|s| s.uploadable) {
                out.push(dist.to_string());
            }
        }
    }
    Ok(out)
}

/// The internal jobs: schedule, last run (when, how long, the result) and next run.
fn crontab(d: &Daemon) -> Page {
    let jobs = crate::jobs::table(&d.inst).map_err(|e| ApiError::new(500, e.to_string()))?;
    let rows: Vec<Json> = jobs
        .iter()
        .map(|(def, r)| {
            json!({"id": def.id(), "period": def.period.name(), "doc": def.doc,
                   "last_run": r.as_ref().and_then(|r| r.last_run).map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
                   "seconds": r.as_ref().map(|r| format!("{:.1}", r.seconds)),
                   "ok": r.as_ref().is_none_or(|r| r.ok), "result": r.as_ref().map(|r| r.result.clone()),
                   "next_run": r.as_ref().map(|r| r.next_run.format("%Y-%m-%d %H:%M UTC").to_string())})
        })
        .collect();
    Ok(("crontab", json!({"title": "Crontab", "nav": "crontab", "jobs": rows})))
}

fn builds(d: &Daemon, v: &Viewer) -> Page {
    let status = call(d, &v.who, &v.base_url, "status", &[])?;
    let finished: Vec<Json> = latest_events(d, |e| e.kind == EventType::Built, EVENTS_SHOWN)?
        .iter()
        .map(|e| {
            let status = e.extra.get("status").and_then(Json::as_str).unwrap_or("?");
            json!({
                "source": e.source, "version": e.version, "distribution": e.distribution, "arch": e.arch(),
                "status": status, "ok": status == "successful",
                "duration": e.extra.get("duration").and_then(Json::as_i64).map(|s| format!("{s} s")),
                "timestamp": events::iso::format(&e.timestamp),
                "log_href": e.extra.get("buildlog").and_then(Json::as_str).map(super::buildlog::url),
            })
        })
        .collect();
    let mut running: Vec<crate::builder::Job> = crate::builder::jobs(&d.inst.store)?
        .into_iter()
        .filter(|j| j.state != crate::builder::JobState::Finished)
        .collect();
    running.sort_by_key(|j| j.started);
    let backend = |dist: &crate::deb::Dist| -> Option<&'static str> {
        let x = d.inst.get::<config::Distribution>(dist.codename.as_str()).ok()??;
        Some(x.build_backend.as_str())
    };
    let ongoing: Vec<Json> = running
        .iter()
        .map(|j| {
            json!({"source": j.bkey.source().as_str(), "version": j.bkey.version().as_str(), "distribution": j.distribution.to_string(),
                   "arch": j.bkey.arch.as_str(), "bkey": j.bkey.to_string(),
                   "backend": backend(&j.distribution), "timestamp": events::iso::format(&j.started),
                   "log_href": super::buildlog::url(&format!("{}/{}", j.bkey, crate::builder::LIVE_LOG))})
        })
        .collect();
    // The builders: this instance's slots, and each remote with what it was handed.
    let queue = crate::packager::build_queue(&d.inst.store)?;
    let remotes: Vec<Json> = d
        .inst
        .list::<config::Remote>()?
        .iter()
        .map(|r| {
            let handed: Vec<Json> = queue
                .iter()
                .filter(|q| {
                    q.handed.as_ref().is_some_and(|h| h.builder == crate::protocol::remote::Builder::Remote(r.http.clone()))
                })
                .map(|q| {
                    json!({"bkey": q.bkey.to_string(),
                           "log_href": format!("{}/mini_buildd/builds-dir/{}/{}", r.http, q.bkey, q.bkey.buildlog_name())})
                })
                .collect();
            json!({"url": r.http.to_string(), "state": r.status.word(), "active": r.status.is_active(), "message": r.status.message,
                   "load": r.last_status.as_ref().map(|s| s.load), "chroots": r.last_status.as_ref().map(|s| s.chroots.clone()),
                   "fingerprint": r.key_fingerprint, "handed": handed})
        })
        .collect();
    let slots = d.builder.get().map_or(0, |b| b.limits.slots);
    Ok((
        "builds",
        json!({"title": "Builds", "nav": "builds", "status": status, "ongoing": ongoing, "finished": finished,
               "slots": slots, "remotes": remotes}),
    ))
}

fn events_page(d: &Daemon, q: &HashMap<String, String>) -> Page {
    let get = |k: &str| q.get(k).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let (t, dist, src) = (get("type"), get("distribution"), get("source"));
    let shown = latest_events(
        d,
        |e| {
            t.as_deref().is_none_or(|t| e.kind.as_str() == t)
                && dist.as_deref().is_none_or(|x| e.distribution == x)
                && src.as_deref().is_none_or(|x| e.source == x)
        },
        EVENTS_SHOWN,
    )?;
    let types = [
        EventType::Rejected,
        EventType::Packaging,
        EventType::Building,
        EventType::Built,
        EventType::Installed,
        EventType::Failed,
        EventType::Migrated,
        EventType::Removed,
    ]
    .map(EventType::as_str);
    Ok((
        "events",
        json!({"title": "Events", "nav": "events", "events": shown.iter().map(event_json).collect::<Vec<_>>(), "types": types,
               "filter": {"type": t, "distribution": dist, "source": src, "any": t.is_some() || dist.is_some() || src.is_some()}}),
    ))
}

fn config_page(d: &Daemon, v: &Viewer) -> Page {
    let objects = call(d, &v.who, &v.base_url, "config_ls", &[])?;
    let list = objects.as_array().cloned().unwrap_or_default();
    let kinds: Vec<Json> = Kind::ALL
        .iter()
        .map(|k| {
            let title = match k {
                Kind::Daemon => "Daemon",
                Kind::Layout => "Layouts",
                Kind::AptKey => "Apt keys",
                Kind::Archive => "Archives",
                Kind::Source => "Sources",
                Kind::PrioritySource => "Priority sources",
                Kind::Distribution => "Distributions",
                Kind::Repository => "Repositories",
                Kind::Chroot => "Chroots",
                Kind::Uploader => "Uploaders",
                Kind::Remote => "Remotes",
            };
            let objs: Vec<Json> = list
                .iter()
                .filter(|o| o["kind"] == json!(k))
                .map(|o| {
                    let mut o = o.clone();
                    o["edit"] = json!(edit_url(*k, o["id"].as_str().unwrap_or_default()));
                    o
                })
                .collect();
            json!({"kind": k, "title": title, "objects": objs, "creatable": *k != Kind::Daemon})
        })
        .collect();
    Ok(("config", json!({"title": "Configuration", "nav": "config", "kinds": kinds})))
}

fn repository_form(d: &Daemon, id: Option<&str>) -> Page {
    let existing = match id {
        Some(id) => Some(
            d.inst
                .get::<config::Repository>(id)?
                .ok_or_else(|| ApiError::new(404, format!("no repository {id}; the configuration page lists them")))?,
        ),
        None => None,
    };
    let layouts: Vec<String> = d.inst.list::<config::LayoutObject>()?.into_iter().map(|l| l.layout.name).collect();
    let distributions: Vec<Json> = d
        .inst
        .list::<config::Distribution>()?
        .iter()
        .map(|x| {
            let checked = existing.as_ref().is_some_and(|r| r.distributions.contains(&x.codename));
            json!({"name": x.codename.to_string(), "checked": checked})
        })
        .collect();
    let repo = existing.as_ref().map_or_else(|| json!({"layout": "Default"}), |r| json!(r));
    Ok((
        "repository_form",
        json!({"title": "Repository", "nav": "config", "existing": existing.is_some(),
               "active": existing.as_ref().is_some_and(|r| r.status.is_active()),
               "repo": repo, "layouts": layouts, "distributions": distributions}),
    ))
}

/// Where a configuration object's form is.
fn edit_url(k: Kind, id: &str) -> String {
    format!(
        "/mini_buildd/config/{k}/{}/",
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
    )
}

/// The fields of a new object of a kind, to start from.
fn example(k: Kind) -> Json {
    match k {
        Kind::Daemon => json!({}),
        Kind::Layout => json!({"layout": {"name": "Custom", "suites": []}}),
        Kind::AptKey => json!({"key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\n…"}),
        Kind::Archive => json!({"url": "http://deb.debian.org/debian/"}),
        Kind::Source => {
            json!({"origin": "Debian", "codename": "trixie", "codeversion": "13", "codeversion_override": null,
                               "components": ["main"], "architectures": ["amd64"], "apt_keys": [], "check_valid_until": true})
        }
        Kind::PrioritySource => json!({"source": "Debian:bookworm-backports", "priority": 1}),
        Kind::Distribution => json!({"codename": "trixie", "base_source": "Debian:trixie",
                                     "architectures": [{"arch": "amd64", "optional": false, "build_architecture_all": true}],
                                     "components": ["main"], "build_backend": "sbuild", "build_network": false,
                                     "extra_sources": []}),
        Kind::Repository => json!({}),
        Kind::Chroot => json!({"codename": "trixie", "arch": "amd64", "mirror": crate::chroot::DEFAULT_MIRROR}),
        Kind::Uploader => {
            json!({"user": "NAME", "key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\n…", "may_upload_to": ["test"]})
        }
        Kind::Remote => json!({"http": "http://HOST:8066", "wake_command": ""}),
    }
}

/// Any configuration object's form: its fields as JSON, saved by `config_set`.
fn object_form(d: &Daemon, k: Kind, id: Option<&str>) -> Page {
    let existing = match id {
        Some(id) => Some(d.inst.object(k, id)?.ok_or_else(|| {
            ApiError::new(404, format!("there is no {k} {id}; the configuration page lists the objects"))
        })?),
        None if k == Kind::Daemon => {
            return Err(ApiError::new(400, "there is one daemon object; set it up with `buildbay setup`"));
        }
        None => None,
    };
    let fields = match (&existing, k) {
        (Some(o), _) => o.fields(),
        // A new layout starts as a copy of the default one.
        (None, Kind::Layout) => d.inst.object(k, "Default")?.map_or_else(
            || example(k),
            |o| {
                let mut f = o.fields();
                f["layout"]["name"] = json!("Custom");
                f
            },
        ),
        (None, _) => example(k),
    };
    let text = serde_json::to_string_pretty(&fields).unwrap_or_default();
    let needs: Vec<String> =
        existing.as_ref().map(|o| o.depends_on().iter().map(|(k, i)| format!("{k} {i}")).collect()).unwrap_or_default();
    Ok((
        "object_form",
        json!({"title": format!("{k} {}", id.unwrap_or("(new)")), "nav": "config", "kind": k, "id": id,
               "existing": existing.is_some(), "active": existing.as_ref().is_some_and(|o| o.status().is_active()),
               "state": existing.as_ref().map(|o| o.status().word()), "fields": text,
               "rows": text.lines().count().clamp(6, 40), "needs": needs}),
    ))
}

/// The setup page: what `setup` would create or change, object by object, before it runs.
fn setup_page(d: &Daemon, q: &HashMap<String, String>) -> Page {
    let get = |k: &str| q.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
    let ask =
        json!({"distributions": get("distributions"), "repositories": get("repositories"), "chroots": get("chroots")});
    let specs = |k: &str| -> Vec<String> {
        get(k).split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
    };
    let objects = d.inst.objects()?;
    let now = |k: Kind, id: &str| {
        objects.iter().find(|(oid, o)| o.kind() == k && oid == id).map(|(_, o)| {
            let what = match o {
                config::Object::Distribution(x) => format!(
                    "{}:{}",
                    x.arches().map(|a| a.as_str()).collect::<Vec<_>>().join("+"),
                    x.build_backend.as_str()
                ),
                config::Object::Repository(x) => {
                    format!("{}:{}", x.layout, x.distributions.iter().map(|c| c.as_str()).collect::<Vec<_>>().join("+"))
                }
                _ => String::new(),
            };
            format!("{what} ({})", status_label(o.status()))
        })
    };
    let mut plan = Vec::new();
    for (k, key) in
        [(Kind::Distribution, "distributions"), (Kind::Repository, "repositories"), (Kind::Chroot, "chroots")]
    {
        for spec in specs(key) {
            let id = if k == Kind::Chroot { spec.clone() } else { spec.split(':').next().unwrap_or("").to_owned() };
            let rest =
                if k == Kind::Chroot { String::new() } else { spec.split_once(':').map_or("", |x| x.1).to_owned() };
            let (change, current) = match now(k, &id) {
                None => ("new", "does not exist".to_owned()),
                Some(c)
                    if k != Kind::Chroot
                        && !c.starts_with(&format!("{rest}:"))
                        && !c.starts_with(&format!("{rest} ")) =>
                {
                    ("changed", c)
                }
                Some(c) => ("same", c),
            };
            let after = match k {
                Kind::Chroot => "prepared, checked and active (a minute the first time)".to_owned(),
                _ => format!("{rest} (active)"),
            };
            plan.push(json!({"kind": k, "id": id, "now": current, "after": after, "change": change}));
        }
    }
    let mut cli = String::from("buildbay api setup --update all --pca all");
    for key in ["distributions", "repositories", "chroots"] {
        let s = specs(key);
        if !s.is_empty() {
            cli.push_str(&format!(" --{key} {}", s.join(" ")));
        }
    }
    cli.push_str(" --confirm");
    let presets: Vec<serde_json::Value> = crate::instance::BOOTSTRAP_ORIGINS
        .iter()
        .map(|origin| {
            let args = crate::instance::bootstrap_preset(origin);
            let line = args.iter().fold(String::from("buildbay api setup"), |mut l, (k, v)| {
                l.push_str(&format!(" --{}", k.replace('_', "-")));
                if v != "true" {
                    l.push_str(&format!(" {v}"));
                }
                l
            });
            let args: Vec<serde_json::Value> = args.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
            json!({"origin": origin, "args": args, "cli": format!("{line} --confirm")})
        })
        .collect();
    Ok(("setup", json!({"title": "Setup", "nav": "setup", "ask": ask, "plan": plan, "cli": cli, "presets": presets})))
}

/// Every call of the registry as a form: the API index plus what the page needs to know.
fn api_page(who: &Principal) -> Page {
    let index = super::api_index_json();
    let calls: Vec<Json> = registry::CALLS
        .iter()
        .zip(index.as_array().into_iter().flatten())
        .map(|(c, entry)| {
            let mut cli = format!("buildbay api {}", c.name);
            for a in c.args.iter().filter(|a| a.default == registry::Default::Required) {
                cli.push(' ');
                cli.push_str(&if a.positional { a.name.to_uppercase() } else { format!("{} …", a.flag()) });
            }
            if c.confirm {
                cli.push_str(" --confirm");
            }
            let mut entry = entry.clone();
            entry["allowed"] = json!(who.role >= c.auth);
            entry["changes"] = json!(c.auth > Role::None || c.confirm);
            entry["cli"] = json!(cli);
            entry
        })
        .collect();
    let mut groups: Vec<&str> = registry::CALLS.iter().map(|c| c.group).collect();
    groups.sort();
    groups.dedup();
    let groups: Vec<Json> = groups
        .iter()
        .map(|g| json!({"name": g, "calls": calls.iter().filter(|c| c["group"] == json!(g)).collect::<Vec<_>>()}))
        .collect();
    Ok(("api", json!({"title": "API", "nav": "api", "groups": groups})))
}

fn account(d: &Daemon, v: &Viewer) -> Page {
    let user = v.who.user.clone().unwrap_or_default();
    let uploader = d.inst.get::<config::Uploader>(&user)?.map(|u| {
        json!({"fingerprint": u.fingerprint, "state": status_label(&u.status), "active": u.status.is_active(), "may_upload_to": u.may_upload_to})
    });
    let subscriptions: Vec<config::Subscription> =
        d.inst.list::<config::Subscription>()?.into_iter().filter(|s| s.user == user).collect();
    let tokens: Vec<Json> = auth::list_tokens(&d.inst.store, &user)?
        .iter()
        .map(|t| json!({"id": t.id, "label": t.label, "role": t.role.as_str(), "created": t.created.format("%Y-%m-%d %H:%M").to_string()}))
        .collect();
    let users: Vec<Json> = if v.who.role >= Role::Admin {
        auth::list_users(&d.inst.store)?
            .iter()
            .map(|u| {
                json!({"name": u.name, "role": u.role.as_str(), "created": u.created.format("%Y-%m-%d").to_string(),
                            "one_time": u.must_change_password, "me": u.name == user})
            })
            .collect()
    } else {
        vec![]
    };
    let roles: Vec<&str> =
        [Role::Login, Role::Staff, Role::Admin].iter().filter(|r| **r <= v.who.role).map(|r| r.as_str()).collect();
    let email = auth::get_user(&d.inst.store, &user)?.and_then(|u| u.email).map(|a| a.to_string());
    Ok((
        "account",
        json!({"title": "Account", "nav": "account", "uploader": uploader, "subscriptions": subscriptions, "tokens": tokens, "users": users, "roles": roles,
               "email": email, "mail_on": d.mail_on}),
    ))
}

/// Render a page into the layout, with the viewer's identity and CSRF token.
fn respond(web: &Web, v: &Viewer, status: StatusCode, page: Page) -> Body {
    let (status, name, mut ctx) = match page {
        Ok((name, ctx)) => (status, name, ctx),
        Err(e) => {
            let login = e.status == 401 || (e.status == 403 && v.who.user.is_none());
            (
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "message",
                json!({"title": e.title(), "heading": e.title(), "detail": e.detail, "error": true, "login": login, "back": "/mini_buildd/"}),
            )
        }
    };
    let identity = web.daemon.inst.daemon().ok().flatten().map(|x| x.identity.to_string()).unwrap_or_default();
    if let Json::Object(m) = &mut ctx {
        m.insert("identity".into(), json!(identity));
        m.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        m.insert("user".into(), user_json(&v.who));
        m.insert("csrf".into(), json!(v.csrf));
        m.insert("path".into(), json!(v.path));
    }
    let html = match web.pages.render(name, &ctx) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("rendering {name}: {e}");
            return super::problem(&ApiError::new(500, format!("rendering the page failed: {e}")));
        }
    };
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header("content-security-policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
        .body(html.into())
        .unwrap_or_else(|_| empty());
    if v.new_csrf
        && let Ok(c) = format!("csrftoken={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31449600", v.csrf).parse()
    {
        r.headers_mut().append("set-cookie", c);
    }
    r
}

/// The login form in the layout, with the CSRF token it was given (the caller sets its cookie).
pub fn login_page(web: &Web, status: StatusCode, csrf: &str, next: &str, error: Option<&str>) -> Body {
    let v = Viewer {
        who: Principal::anonymous(),
        csrf: csrf.to_owned(),
        new_csrf: true,
        path: "/accounts/login/".into(),
        base_url: String::new(),
    };
    respond(web, &v, status, Ok(("login", json!({"title": "Log in", "nav": "login", "next": next, "error": error}))))
}

async fn viewer(web: &Web, headers: &HeaderMap, path: String) -> Result<Viewer, ApiError> {
    let who = super::principal(web, headers).await?;
    let existing = cookie(headers, "csrftoken").filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()));
    // A session's pages carry its own token; a page without a session the cookie's.
    let (csrf, new_csrf) = match who.csrf() {
        Some(c) => (c.to_owned(), existing != Some(c)),
        None => (existing.map_or_else(auth::random_token, str::to_owned), existing.is_none()),
    };
    Ok(Viewer { who, csrf, new_csrf, path, base_url: base_url(headers) })
}

/// Every page, parsed from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PageId {
    Home,
    Repositories,
    Distribution(String, String),
    /// `/mini_buildd/sources/?source=…` (the search box).
    FindSource,
    Source(String),
    Builds,
    Events,
    Config,
    /// A configuration object's form: `None` makes a new one.
    Object(Kind, Option<String>),
    Setup,
    Api,
    Account,
    Crontab,
}

impl PageId {
    fn parse(path: &str) -> Option<PageId> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        Some(match segs[..] {
            ["mini_buildd"] => PageId::Home,
            ["mini_buildd", "repositories"] => PageId::Repositories,
            ["mini_buildd", "repositories", repo, dist] => PageId::Distribution(repo.into(), dist.into()),
            ["mini_buildd", "sources"] => PageId::FindSource,
            ["mini_buildd", "sources", name] => PageId::Source(name.into()),
            ["mini_buildd", "builds"] => PageId::Builds,
            ["mini_buildd", "events"] => PageId::Events,
            ["mini_buildd", "config"] => PageId::Config,
            ["mini_buildd", "config", kind, "new"] => PageId::Object(kind.parse().ok()?, None),
            ["mini_buildd", "config", kind, id] => {
                PageId::Object(kind.parse().ok()?, Some(super::files::percent_decode(id)?))
            }
            ["mini_buildd", "setup"] => PageId::Setup,
            ["mini_buildd", "api"] => PageId::Api,
            ["mini_buildd", "crontab"] => PageId::Crontab,
            ["accounts", "profile"] => PageId::Account,
            _ => return None,
        })
    }

    /// Who may see it.
    fn needs(&self) -> Role {
        match self {
            PageId::Config | PageId::Object(..) | PageId::Setup => Role::Admin,
            PageId::Account => Role::Login,
            _ => Role::None,
        }
    }

    fn build(&self, d: &Daemon, t: &Templates, v: &Viewer, q: &HashMap<String, String>) -> Page {
        match self {
            PageId::Home => home(d, v),
            PageId::Repositories => repositories(d, v, t),
            PageId::Distribution(repo, dist) => distribution(d, t, repo, dist, q),
            PageId::Source(name) => source(d, v, name),
            PageId::FindSource => Err(ApiError::new(404, "give a source package name")),
            PageId::Builds => builds(d, v),
            PageId::Events => events_page(d, q),
            PageId::Config => config_page(d, v),
            PageId::Object(Kind::Repository, id) => repository_form(d, id.as_deref()),
            PageId::Object(k, id) => object_form(d, *k, id.as_deref()),
            PageId::Setup => setup_page(d, q),
            PageId::Api => api_page(&v.who),
            PageId::Account => account(d, v),
            PageId::Crontab => crontab(d),
        }
    }
}

fn redirect(to: &str) -> Body {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("location", to)
        .body(Vec::new().into())
        .unwrap_or_else(|_| empty())
}

/// Render one page for this request (the benchmark calls this directly).
pub async fn page(web: &Web, path: &str, q: HashMap<String, String>, headers: &HeaderMap) -> Option<Body> {
    let id = PageId::parse(path)?;
    if id == PageId::Api && q.get("output").is_some_and(|o| o == "json") {
        return Some(super::json_response(StatusCode::OK, "application/json", &super::api_index_json()));
    }
    if id == PageId::FindSource
        && let Some(name) = q.get("source").map(|s| s.trim()).filter(|s| !s.is_empty())
    {
        let clean: String =
            name.chars().filter(|c| c.is_ascii_alphanumeric() || "+-.".contains(*c)).collect::<String>().to_lowercase();
        return Some(redirect(&format!("/mini_buildd/sources/{clean}/")));
    }
    let v = match viewer(web, headers, path.to_owned()).await {
        Ok(v) => v,
        Err(e) => return Some(super::problem(&e)),
    };
    let refused = match (id.needs(), v.who.role) {
        (need, have) if have >= need => None,
        (_, Role::None) => Some(ApiError::new(401, "this page needs you to log in")),
        (need, _) => {
            Some(ApiError::new(403, format!("this page is for the role {}; your account has less", need.as_str())))
        }
    };
    if let Some(e) = refused {
        return Some(respond(web, &v, StatusCode::OK, Err(e)));
    }
    let d = web.daemon.clone();
    let v2 = v.clone();
    let t = web.pages.clone();
    let page = tokio::task::spawn_blocking(move || id.build(&d, &t, &v2, &q))
        .await
        .unwrap_or_else(|e| Err(ApiError::new(500, format!("the page failed: {e}"))));
    Some(respond(web, &v, StatusCode::OK, page))
}

/// Where a form's answer goes: the call, the page to go back to after a change (`next`), and
/// the page a shown answer links back to (`back`).
pub struct Answer<'a> {
    pub call: &'a str,
    pub next: Option<&'a str>,
    pub back: Option<&'a str>,
}

/// The result page of a form sent to an API call (see `web::api_call`): a redirect back to
/// the form's page, or the answer rendered in the layout.
pub async fn call_result(web: &Web, headers: &HeaderMap, result: Result<Json, ApiError>, a: Answer<'_>) -> Body {
    let v = match viewer(web, headers, "/mini_buildd/api/".into()).await {
        Ok(v) => v,
        Err(e) => return super::problem(&e),
    };
    let back =
        a.next.or(a.back).map(|n| super::login::safe_next(n, headers)).unwrap_or_else(|| "/mini_buildd/api/".into());
    match (result, a.next) {
        (Ok(_), Some(next)) => redirect(&super::login::safe_next(next, headers)),
        (Ok(value), None) => {
            let text = super::result_text(&value);
            respond(
                web,
                &v,
                StatusCode::OK,
                Ok(("message", json!({"title": a.call, "heading": a.call, "result": text, "back": back}))),
            )
        }
        (Err(e), _) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let login = e.status == 401;
            respond(
                web,
                &v,
                status,
                Ok((
                    "message",
                    json!({"title": e.title(), "heading": e.title(), "detail": e.detail, "error": true, "login": login, "back": back}),
                )),
            )
        }
    }
}

fn static_file(name: String) -> Body {
    match STATIC.iter().find(|(n, _, _)| *n == name) {
        Some((_, ty, text)) => Response::builder()
            .header("content-type", *ty)
            .header("cache-control", "max-age=3600")
            .body((*text).into())
            .unwrap_or_else(|_| empty()),
        None => super::problem(&ApiError::new(404, format!("no static file {name}"))),
    }
}

pub fn routes(web: Web) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let pages = warp::get()
        .and(warp::path::full())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(super::with(web))
        .and_then(|p: warp::path::FullPath, q, h: HeaderMap, w: Web| async move {
            page(&w, p.as_str(), q, &h).await.ok_or_else(warp::reject::not_found)
        });
    let statics = warp::get().and(warp::path!("static" / String)).map(static_file);
    pages.or(statics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_escapes() {
        let mut h = Handlebars::new();
        for (name, text) in TEMPLATES {
            h.register_template_string(name, *text).unwrap_or_else(|e| panic!("template {name}: {e}"));
            assert!(!text.contains("{{{"), "template {name} prints something unescaped");
        }
        let t = Templates::new();
        let evil = "<script>alert(1)</script>";
        let ctx = json!({"title": evil, "heading": evil, "detail": evil, "identity": evil, "user": {"name": evil}, "path": "/"});
        let html = t.render("message", &ctx).expect("render");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn build_pages_link_the_logs() {
        // `log` is a handlebars helper: a field of that name would print nothing.
        let t = Templates::new();
        let ctx = json!({"title": "Builds", "user": {}, "path": "/", "status": {"chroots": []},
            "ongoing": [{"source": "a", "bkey": "a/1/t/amd64", "log_href": "/mini_buildd/events-dir/a/1/t/amd64/buildlog"}],
            "finished": [{"source": "b", "ok": true, "log_href": "/mini_buildd/events-dir/b/1/t/amd64/b_1_amd64.buildlog"}],
            "remotes": [{"url": "http://r:8066", "state": "ACTIVE", "active": true, "load": 0.5, "chroots": ["bookworm:i386"],
                         "handed": [{"bkey": "c/1/t/i386", "log_href": "http://r:8066/mini_buildd/builds-dir/c/1/t/i386/c_1_i386.buildlog"}]}]});
        let html = t.render("builds", &ctx).expect("render");
        assert!(html.contains(r#"href="http://r:8066/mini_buildd/builds-dir/c/1/t/i386/c_1_i386.buildlog""#), "{html}");
        assert!(html.contains("<code>bookworm:i386</code>"), "{html}");
        assert!(html.contains(r#"href="/mini_buildd/events-dir/a/1/t/amd64/buildlog""#), "{html}");
        assert!(html.contains(r#"data-log-follow="/mini_buildd/events-dir/a/1/t/amd64/buildlog?follow=1""#), "{html}");
        assert!(html.contains(r#"href="/mini_buildd/events-dir/b/1/t/amd64/b_1_amd64.buildlog""#), "{html}");
        let ctx = json!({"title": "t", "user": {}, "path": "/", "source": "b", "repositories": [], "events": [],
            "builds": [{"version": "1", "ok": true, "log_href": "/mini_buildd/events-dir/b/1/t/amd64/b_1_amd64.buildlog"}]});
        let html = t.render("source", &ctx).expect("render");
        assert!(html.contains(r#"href="/mini_buildd/events-dir/b/1/t/amd64/b_1_amd64.buildlog""#), "{html}");
    }

    #[test]
    fn paths_name_pages_and_their_roles() {
        assert_eq!(PageId::parse("/mini_buildd/"), Some(PageId::Home));
        assert_eq!(
            PageId::parse("/mini_buildd/repositories/test/bookworm-test-unstable/"),
            Some(PageId::Distribution("test".into(), "bookworm-test-unstable".into()))
        );
        assert_eq!(PageId::parse("/mini_buildd/config/repository/new/"), Some(PageId::Object(Kind::Repository, None)));
        assert_eq!(
            PageId::parse("/mini_buildd/config/layout/Default%20(no%20rollbacks)/"),
            Some(PageId::Object(Kind::Layout, Some("Default (no rollbacks)".into())))
        );
        assert_eq!(PageId::parse("/mini_buildd/config/nosuchkind/new/"), None);
        assert_eq!(PageId::parse("/mini_buildd/api/migrate/"), None, "API calls are not pages");
        assert_eq!(PageId::parse("/mini_buildd/setup/").map(|p| p.needs()), Some(Role::Admin));
        assert_eq!(PageId::parse("/accounts/profile/").map(|p| p.needs()), Some(Role::Login));
        assert_eq!(PageId::parse("/mini_buildd/sources/hello/").map(|p| p.needs()), Some(Role::None));
    }
}
