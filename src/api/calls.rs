//! What each call does. Blocking (redb, files): `web` runs it on a blocking thread.

use super::{ApiError, Args};
use crate::archive::ArchiveError;
use crate::auth::{self, Principal, Role};
use crate::chroot::Chroot;
use crate::config::{self, LayoutObject, Repository, Subscription, Uploader};
use crate::daemon::Daemon;
use crate::deb::{Codename, Dist, PackageName, RepoId, SnapshotName, Version};
use crate::events::Event;
use crate::instance::{InstanceError, Selection, SetupOptions};
use crate::layout::Layout;
use serde_json::{Value as Json, json};

/// Where the request came in: `http://host:port`, as the client addressed us.
#[derive(Debug, Clone)]
pub struct Origin {
    pub base_url: String,
}

impl Origin {
    /// The host the client named, without its port.
    pub fn host(&self) -> &str {
        let hp = self.base_url.split_once("://").map_or(self.base_url.as_str(), |(_, r)| r);
        match hp.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => hp,
        }
    }
}

impl From<ArchiveError> for ApiError {
    fn from(e: ArchiveError) -> ApiError {
        let status = match &e {
            ArchiveError::UnknownRepository(_)
            | ArchiveError::UnknownDistribution { .. }
            | ArchiveError::NotFound(..)
            | ArchiveError::NoSuchVersion { .. }
            | ArchiveError::NoSnapshot(..) => 404,
            ArchiveError::Store(_) | ArchiveError::Publish(_) | ArchiveError::Io { .. } => 500,
            _ => 400,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> ApiError {
        match e {
            InstanceError::Archive(a) => a.into(),
            InstanceError::Setup(_) | InstanceError::Config(_) | InstanceError::Lifecycle(_) => {
                ApiError::bad_request(e.to_string())
            }
            InstanceError::NotSetUp => ApiError::new(503, e.to_string()),
            _ => ApiError::new(500, e.to_string()),
        }
    }
}

impl From<auth::AuthError> for ApiError {
    fn from(e: auth::AuthError) -> ApiError {
        let status = match e {
            auth::AuthError::Store(_) | auth::AuthError::Hash(_) => 500,
            auth::AuthError::NoToken(..) | auth::AuthError::NoUser(_) => 404,
            _ => 400,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        ApiError::new(500, e.to_string())
    }
}

fn repositories(d: &Daemon) -> Result<Vec<Repository>, ApiError> {
    Ok(d.inst.list::<Repository>()?)
}

fn layout_of(d: &Daemon, r: &Repository) -> Result<Layout, ApiError> {
    d.inst
        .get::<LayoutObject>(&r.layout)?
        .map(|l| l.layout)
        .ok_or_else(|| ApiError::new(500, format!("repository {} uses unknown layout {}", r.identity, r.layout)))
}

/// Repositories selected by a `repositories` list argument (all when empty); unknown ids are an error.
fn selected_repos(d: &Daemon, args: &Args) -> Result<Vec<Repository>, ApiError> {
    let all = repositories(d)?;
    let want = args.list("repositories");
    for w in &want {
        if !all.iter().any(|r| r.identity.as_str() == w) {
            return Err(ApiError::new(404, format!("no repository {w}")));
        }
    }
    Ok(all.into_iter().filter(|r| want.is_empty() || want.iter().any(|w| w == r.identity.as_str())).collect())
}

fn who_name(who: &Principal) -> Result<&str, ApiError> {
    who.user.as_deref().ok_or_else(|| ApiError::new(401, "log in first"))
}

fn publish(d: &Daemon, events: &[Event]) {
    for e in events {
        d.bus.publish(e);
    }
}

/// Whether each distribution's keyring package ships the active key (empty, and logged, when
/// that cannot be told now: `status` must answer regardless).
pub fn keyring_states(d: &Daemon) -> Vec<crate::keyring::KeyringState> {
    crate::keyring::states(&d.inst).unwrap_or_else(|e| {
        tracing::warn!("cannot tell whether the keyring packages are current: {e}");
        vec![]
    })
}

/// Run `f` on the internal jobs with this daemon's settings (the `cronjob` call, the schedule).
pub fn with_jobs<T>(d: &Daemon, f: impl FnOnce(&crate::jobs::Ctx<'_>) -> T) -> T {
    let wake = || d.wake();
    let publish = |events: &[crate::events::Event]| d.publish(events);
    let chroot_upkeep = || d.chroot_upkeep();
    let ctx = crate::jobs::Ctx {
        inst: &d.inst,
        keep_events_days: d.keep_events_days,
        expire_builds_days: d.expire_builds_days,
        wake: &wake,
        publish: &publish,
        chroot_upkeep: &chroot_upkeep,
    };
    f(&ctx)
}

/// `set_user_key`'s key, as mini-buildd takes it: several lines are the ASCII-armored key; one
/// line is its fingerprint or long id, looked up among the keys this instance knows (apt keys,
/// uploaders'), else fetched from the keyserver. Returns the armored key and its certificate.
fn uploader_key(d: &Daemon, given: &str) -> Result<(String, crate::gpg::Cert), ApiError> {
    use crate::keyserver::KeyserverError;
    if given.trim().contains('\n') {
        let cert = crate::gpg::one_key(given.as_bytes()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        return Ok((given.to_owned(), cert));
    }
    let id: crate::keyserver::KeyId =
        given.parse().map_err(|e: KeyserverError| ApiError::bad_request(e.to_string()))?;
    let known = d
        .inst
        .list::<config::AptKey>()?
        .into_iter()
        .map(|k| k.key)
        .chain(d.inst.list::<Uploader>()?.into_iter().map(|u| u.key))
        .flat_map(|text| crate::gpg::read_keyring(text.as_bytes()).unwrap_or_default());
    let cert = match crate::keyserver::select(known, &id) {
        Some(cert) => cert,
        None => {
            let server = d
                .keyserver
                .as_deref()
                .ok_or_else(|| ApiError::bad_request(KeyserverError::NoKeyserver(id.clone()).to_string()))?;
            crate::keyserver::fetch(server, &id).map_err(|e| match &e {
                e if e.is_retry() => ApiError::new(503, e.to_string()),
                KeyserverError::NotFound { .. } => ApiError::new(404, e.to_string()),
                _ => ApiError::new(502, e.to_string()),
            })?
        }
    };
    let armored =
        crate::gpg::armored_keyring(std::slice::from_ref(&cert)).map_err(|e| ApiError::new(500, e.to_string()))?;
    Ok((armored, cert))
}

/// Run a call whose arguments and admission were checked.
pub fn execute(d: &Daemon, args: &Args, who: &Principal, origin: &Origin) -> Result<Json, ApiError> {
    let archive = || d.inst.archive().map_err(ApiError::from);
    match args.call.name {
        "status" => {
            let identity = d.inst.daemon()?.map(|x| x.identity.to_string()).unwrap_or_default();
            let queued = crate::packager::build_queue(&d.inst.store)?;
            // The load counts what this instance's builders have or will take, not what went
            // to a remote; a builder with no slots offers no chroot.
            let ours = queued
                .iter()
                .filter(|r| {
                    !matches!(r.handed.as_ref().map(|h| &h.builder), Some(crate::protocol::remote::Builder::Remote(_)))
                })
                .count();
            let queue: Vec<String> = queued.into_iter().map(|r| r.bkey.to_string()).collect();
            let slots = d.builder.get().map_or(0, |b| b.limits.slots);
            let chroots: Vec<String> = if slots == 0 {
                vec![]
            } else {
                d.inst.list::<Chroot>()?.iter().filter(|c| c.status.is_active()).map(Chroot::id).collect()
            };
            let free = crate::store::free_bytes(d.inst.store.dir());
            let mut s = json!({
                "version": env!("CARGO_PKG_VERSION"),
                "identity": identity,
                "url": origin.base_url,
                "incoming_url": format!("{}://{}:{}", d.ftp_scheme(), origin.host(), d.ftp_port),
                "load": d.load(ours),
                "chroots": chroots,
                "remotes": d.inst.remotes()?.iter().map(|r| r.http.to_string()).collect::<Vec<_>>(),
                "chroots_preparing": d.chroots_preparing(),
                "packaging": packaging(d)?,
                "build_queue": queue,
                "keyring_packages": keyring_states(d),
                "mail": {"on": d.mail_on, "queued": crate::mail::queued(&d.inst.store)?},
                "disk": {
                    "free_bytes": free,
                    "reserve_bytes": d.disk_reserve,
                    "low": crate::packager::low_disk(free, d.disk_reserve),
                },
            });
            if args.bool("with_repositories") {
                let mut repos = serde_json::Map::new();
                for r in repositories(d)? {
                    let layout = layout_of(d, &r)?;
                    let suites: serde_json::Map<String, Json> = layout
                        .suites
                        .iter()
                        .map(|s| {
                            (
                                s.suite.to_string(),
                                json!({"uploadable": s.uploadable, "experimental": s.experimental, "migrates_to": s.migrates_to}),
                            )
                        })
                        .collect();
                    repos.insert(r.identity.to_string(), json!({"codenames": r.distributions, "layout": suites}));
                }
                s["repositories"] = Json::Object(repos);
            }
            Ok(s)
        }
        "pub_key" => Ok(Json::String(d.inst.pub_key().unwrap_or_default())),
        "handshake" => {
            let signed = args.require::<String>("signed_message")?;
            Ok(Json::String(d.inst.answer_handshake(&signed)?))
        }
        "wake" => {
            let url: crate::protocol::remote::RemoteUrl = args.require("remote")?;
            let remote = d.inst.get::<config::Remote>(&url.to_string())?.ok_or_else(|| {
                ApiError::new(404, format!("there is no remote {url}; the configuration page lists the remotes"))
            })?;
            let sleep = std::time::Duration::from_secs(args.parse::<u64>("sleep")?.unwrap_or(5).min(300));
            let attempts = args.parse::<u32>("attempts")?.unwrap_or(3).clamp(1, 20);
            let status =
                crate::remote::wake(&remote.http, &remote.wake_command, sleep, attempts).map_err(|e| match e {
                    crate::remote::RemoteError::Unreachable(m) => ApiError::new(503, format!("{m}; try again later")),
                    crate::remote::RemoteError::Refused(m) => ApiError::new(502, m),
                })?;
            Ok(serde_json::to_value(status).unwrap_or_default())
        }
        "dput_conf" => {
            let identity = d.inst.daemon()?.map(|x| x.identity.to_string()).unwrap_or_default();
            let fqdn = format!("{}:{}", origin.host(), d.ftp_port);
            if args.bool("dput_ng_profile") {
                let p = json!({"method": d.ftp_scheme(), "fqdn": fqdn, "login": "anonymous", "incoming": "/incoming"});
                return Ok(Json::String(serde_json::to_string_pretty(&p).unwrap_or_default()));
            }
            let mut s = format!("[mini-buildd-{identity}]\n");
            for (k, v) in
                [("method", d.ftp_scheme()), ("fqdn", fqdn.as_str()), ("login", "anonymous"), ("incoming", "/incoming")]
            {
                s.push_str(&format!("{k:8} = {v}\n"));
            }
            if let Ok(extra) = std::fs::read_to_string(d.inst.store.dir().join("etc/dput.cf")) {
                s.push_str(&extra);
            }
            Ok(Json::String(s))
        }
        "sources_list" => sources_list(d, args, origin).map(Json::String),
        "debmirror" => {
            let destination = args.str("destination").unwrap_or(crate::mirror::DEFAULT_DESTINATION);
            let keyring = crate::gpg::read_keyring(d.inst.pub_key()?.as_bytes())
                .and_then(|c| crate::gpg::binary_keyring(&c))
                .map_err(|e| ApiError::new(500, format!("the archive key: {e}")))?;
            let mirror = crate::mirror::Mirror {
                state: d.inst.store.dir().to_owned(),
                // This instance over plain HTTP, by the name the caller reached it by (as
                // mini-buildd does): the signatures are checked.
                host: format!("{}:{}", origin.host(), d.http_port),
                keyring,
                architectures: args.str("architectures").unwrap_or_default().to_owned(),
                components: args.str("components").unwrap_or_default().to_owned(),
            };
            let mut answers = serde_json::Map::new();
            for (r, dists) in selected_dists(d, args)? {
                let dists: Vec<String> = dists.iter().map(|(dd, _)| dd.to_string()).collect();
                let done = mirror.run(&r.identity, &dists, destination).map_err(|e| match e {
                    crate::mirror::MirrorError::Bad(m) => ApiError::bad_request(m),
                    crate::mirror::MirrorError::Failed(m) => ApiError::new(502, m),
                    crate::mirror::MirrorError::Io(m) => ApiError::new(500, m),
                })?;
                answers.insert(r.identity.to_string(), serde_json::to_value(done).unwrap_or_default());
            }
            Ok(Json::Object(answers))
        }
        "retry" => {
            let bkey = args.require::<String>("bkey")?;
            let u = crate::packager::retry(&d.inst, &d.incoming, &bkey).map_err(|e| match e {
                crate::packager::RetryError::NotFound(_) | crate::packager::RetryError::NotFinished { .. } => {
                    ApiError::bad_request(e.to_string())
                }
                crate::packager::RetryError::Store(s) => ApiError::from(s),
            })?;
            d.wake();
            Ok(json!({"retried": bkey, "upload": u}))
        }
        "port" | "port_ext" => {
            let dists = |name: &str| dist_list(args, name);
            let options = crate::port::parse_options(args.str("options").unwrap_or(crate::port::DEFAULT_OPTIONS))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let drop = d.inst.store.dir().join(crate::incoming::RESULTS_DIR);
            let archive = archive()?;
            let done = if args.call.name == "port" {
                let req = crate::port::PortRequest {
                    source: args.require("source")?,
                    from: args.require("from_distribution")?,
                    to: dists("to_distributions")?,
                    version: args.parse("version")?,
                    options,
                };
                crate::port::port(&d.inst, &archive, &drop, &req, chrono::Utc::now())
            } else {
                let req = crate::port::ExtRequest {
                    url: args.require("dsc")?,
                    to: dists("distributions")?,
                    allow_unauthenticated: args.bool("allow_unauthenticated"),
                    options,
                };
                crate::port::port_ext(&d.inst, &archive, &drop, &req, chrono::Utc::now())
            };
            let done = done.map_err(|e| match e {
                crate::port::PortError::Bad(m) => ApiError::bad_request(m),
                e @ crate::port::PortError::Failed(_) => ApiError::new(500, e.to_string()),
            })?;
            d.wake();
            Ok(serde_json::to_value(done).unwrap_or_default())
        }
        "keyring_packages" => {
            let dists = dist_list(args, "distributions")?;
            let drop = d.inst.store.dir().join(crate::incoming::RESULTS_DIR);
            let base = format!("{}/repositories", origin.base_url);
            let wake = || d.wake();
            let (outcomes, events) = crate::keyring::build(
                &d.inst,
                &d.places(),
                &drop,
                &dists,
                args.bool("without_migration"),
                &base,
                chrono::Utc::now(),
                &wake,
            )
            .map_err(|e| match e {
                crate::keyring::KeyringError::Bad(m) => ApiError::bad_request(m),
                e @ crate::keyring::KeyringError::Failed(_) => ApiError::new(500, e.to_string()),
            })?;
            publish(d, &events);
            Ok(serde_json::to_value(outcomes).unwrap_or_default())
        }
        "test_packages" => {
            let req = crate::test_packages::Request {
                sources: args.list("sources"),
                dists: dist_list(args, "distributions")?,
                auto_ports: dist_list(args, "auto_ports")?,
                with_check: args.bool("with_check"),
            };
            let drop = d.inst.store.dir().join(crate::incoming::RESULTS_DIR);
            let wake = || d.wake();
            let (outcomes, wrong) = crate::test_packages::run(&d.inst, &drop, &req, chrono::Utc::now(), &wake)
                .map_err(|e| match e {
                    crate::port::PortError::Bad(m) => ApiError::bad_request(m),
                    e @ crate::port::PortError::Failed(_) => ApiError::new(500, e.to_string()),
                })?;
            if !wrong.is_empty() {
                return Err(ApiError::new(500, format!("the test packages' check failed: {}", wrong.join("; "))));
            }
            Ok(serde_json::to_value(outcomes).unwrap_or_default())
        }
        "cancel" => {
            let bkey = args.require::<crate::protocol::BuildKey>("bkey")?;
            let builder =
                d.builder.get().ok_or_else(|| ApiError::new(503, "the builders are not running yet; try again"))?;
            let by = who.user.clone().unwrap_or_else(|| "anonymous".into());
            let events = tokio::runtime::Handle::current().block_on(builder.cancel(&d.inst, &bkey, &by)).map_err(
                |e| match e {
                    crate::builder::BuilderError::NoSuchBuild(_) => ApiError::bad_request(e.to_string()),
                    e => ApiError::new(500, e.to_string()),
                },
            )?;
            publish(d, &events);
            d.wake();
            Ok(json!({"canceled": bkey.to_string()}))
        }
        "remake_chroots" => {
            let _lock = d.maintenance.try_lock().map_err(|_| {
                ApiError::new(
                    503,
                    "another maintenance call (setup, remake_chroots) is running; try again when it is done",
                )
            })?;
            let mut wanted = args.list("chroots");
            wanted.extend(args.list("keys"));
            let wanted = crate::instance::chroot_specs(&wanted);
            let all = d.inst.list::<Chroot>()?;
            let chosen: Vec<Chroot> = if wanted.is_empty() {
                all
            } else {
                wanted.iter().map(|s| d.inst.chroot_spec(s)).collect::<Result<_, _>>()?
            };
            let mut out = serde_json::Map::new();
            for c in chosen {
                let c = d.inst.make_chroot(&d.places(), c, true)?;
                out.insert(c.id(), json!({"active": c.status.is_active(), "message": c.status.message}));
            }
            Ok(Json::Object(out))
        }
        "ls" | "show" => ls(d, args, args.call.name == "show"),
        "debdiff" => {
            let source: PackageName = args.require("source")?;
            let repo: RepoId = args.require("repository")?;
            let (a, b): (Option<Version>, Option<Version>) = (args.parse("versiona")?, args.parse("versionb")?);
            // mini-buildd answers the diff's text.
            let (_, _, diff) = archive()?.debdiff(&repo, &source, a.as_ref(), b.as_ref())?;
            Ok(Json::String(diff))
        }
        "migrate" => {
            let source: PackageName = args.require("source")?;
            let dist: Dist = args.require("distribution")?;
            let version: Option<Version> = args.parse("version")?;
            let force = args.bool("force");
            if force && who.role < Role::Admin {
                return Err(ApiError::new(403, "only an admin forces a migration past its checks"));
            }
            let archive = archive()?;
            let places = d.places();
            let full = args.bool("full");
            let (events, refused) = crate::gate::Gate { inst: &d.inst, archive: &archive, places: &places }
                .migrate(&source, &dist, version.as_ref(), full, force)
                .map_err(|e| match e.downcast::<crate::archive::ArchiveError>() {
                    Ok(e) => ApiError::from(e),
                    Err(e) => ApiError::new(500, format!("the migration checks could not run: {e:#}; try again")),
                })?;
            publish(d, &events);
            if let Some(r) = refused {
                let moved = events.last().and_then(|e| e.extra.get("migrated_to")).and_then(Json::as_str);
                let moved = moved.map(|m| format!("It migrated to {m}, then stopped. ")).unwrap_or_default();
                return Err(ApiError::new(
                    409,
                    format!(
                        "{moved}{source} cannot migrate from {} yet: {}. Fix that, or an admin migrates it anyway with --force",
                        r.from,
                        r.reasons.join("; ")
                    ),
                ));
            }
            // mini-buildd's answer; what was forced or not checked is in the MIGRATED events.
            Ok(json!({}))
        }
        "remove" => {
            let source: PackageName = args.require("source")?;
            let dist: Dist = args.require("distribution")?;
            let version: Option<Version> = args.parse("version")?;
            let event = archive()?.remove(&source, &dist, args.bool("without_rollback"), version.as_ref())?;
            publish(d, &[event]);
            Ok(json!({}))
        }
        "snapshot_ls" => {
            let dist: Dist = args.require("distribution")?;
            archive()?.ctx(&dist.repo)?.check_dist(&dist)?;
            Ok(json!(archive()?.snapshot_ls(&dist)?.iter().map(|s| s.to_string()).collect::<Vec<_>>()))
        }
        "snapshot_create" => {
            let dist: Dist = args.require("distribution")?;
            let name: SnapshotName = args.require("name")?;
            archive()?.snapshot_create(&dist, &name)?;
            Ok(json!({}))
        }
        "snapshot_delete" => {
            let dist: Dist = args.require("distribution")?;
            let name: SnapshotName = args.require("name")?;
            archive()?.snapshot_delete(&dist, &name)?;
            Ok(json!({}))
        }
        "config_ls" => {
            let objects = d.inst.objects()?;
            let refs: Vec<(config::ObjRef, Vec<config::ObjRef>)> =
                objects.iter().map(|(id, o)| ((o.kind(), id.clone()), o.depends_on())).collect();
            let name = |r: &config::ObjRef| format!("{} {}", r.0, r.1);
            Ok(Json::Array(
                objects
                    .iter()
                    .zip(&refs)
                    .map(|((id, o), (me, depends_on))| {
                        let needed_by: Vec<String> =
                            refs.iter().filter(|(_, deps)| deps.contains(me)).map(|(r, _)| name(r)).collect();
                        let s = o.status();
                        json!({
                            "kind": o.kind(),
                            "id": id,
                            "state": s.word(),
                            "active": s.is_active(),
                            "checked": checked_word(&s.checked),
                            "message": s.message,
                            "depends_on": depends_on.iter().map(name).collect::<Vec<_>>(),
                            "needed_by": needed_by,
                            "fields": o.fields(),
                        })
                    })
                    .collect(),
            ))
        }
        "config_action" => {
            let _lock = d
                .maintenance
                .try_lock()
                .map_err(|_| ApiError::new(503, "another maintenance call is running; try again when it is done"))?;
            let k: config::Kind = args.require("kind")?;
            let id: String = args.require("id")?;
            let action: config::Action = args.require("action")?;
            let o = d.inst.lifecycle(&d.places(), k, &id, action)?;
            let s = o.status();
            Ok(
                json!({"kind": k, "id": id, "state": s.word(), "checked": checked_word(&s.checked), "message": s.message}),
            )
        }
        "config_set" => {
            let k: config::Kind = args.require("kind")?;
            let text: String = args.require("object")?;
            let fields: Json = serde_json::from_str(&text)
                .map_err(|e| ApiError::bad_request(format!("object: not JSON ({e}); config_ls shows the fields")))?;
            let obj =
                config::Object::from_fields(k, fields, config::Status::default()).map_err(ApiError::bad_request)?;
            let id = obj.id();
            if let Some(asked) = args.str("id").filter(|a| *a != id) {
                return Err(ApiError::bad_request(format!(
                    "the fields name {k} {id}, not {asked}; to rename, create {id} and delete {asked}"
                )));
            }
            let deactivated = d.inst.save_object(obj)?;
            Ok(json!({"kind": k, "id": id, "deactivated": deactivated, "message": saved_note(k, &id, deactivated)}))
        }
        "repository_set" => {
            let identity: crate::deb::RepoId = args.require("identity")?;
            let distributions: Vec<Codename> = args
                .list("distributions")
                .iter()
                .map(|c| c.parse().map_err(|e: crate::deb::names::NameError| ApiError::bad_request(e.to_string())))
                .collect::<Result<_, _>>()?;
            let repo = Repository {
                identity: identity.clone(),
                layout: args.str("layout").unwrap_or("Default").to_owned(),
                distributions,
                allow_unauthenticated_uploads: args.bool("allow_unauthenticated_uploads"),
                unauthenticated_from_network: false,
                extra_uploader_keyrings: vec![],
                mail: Default::default(),
                status: config::Status::default(),
            };
            let deactivated = d.inst.set_repository(repo)?;
            let note = saved_note(config::Kind::Repository, identity.as_str(), deactivated);
            Ok(json!({"identity": identity.to_string(), "deactivated": deactivated, "message": note}))
        }
        "uploaders" => {
            let uploaders = d.inst.list::<Uploader>()?;
            let mut out = serde_json::Map::new();
            for r in selected_repos(d, args)? {
                let keys: Vec<Json> = uploaders
                    .iter()
                    .filter(|u| u.status.is_active() && u.may_upload_to.contains(&r.identity))
                    .map(|u| json!({"user": u.user, "fingerprints": u.fingerprint.iter().collect::<Vec<_>>(), "key": u.key}))
                    .collect();
                out.insert(
                    r.identity.to_string(),
                    json!({"allow_unauthenticated_uploads": r.allow_unauthenticated_uploads, "uploaders": keys}),
                );
            }
            Ok(Json::Object(out))
        }
        "setup" => {
            let _lock = d.maintenance.try_lock().map_err(|_| {
                ApiError::new(503, "another maintenance call (setup) is running; try again when it is done")
            })?;
            let identity = args.parse("identity")?;
            // mini-buildd's: without --update nothing is created or changed, without --pca
            // nothing is prepared, checked or activated; the report says what is there.
            let opts = SetupOptions {
                update: Selection::parse(args.str("update").unwrap_or_default()),
                pca: Selection::parse(args.str("pca").unwrap_or_default()),
                identity,
                archive_origin: args.str("archive_origin").map(str::to_owned),
                distributions: args.list("distributions"),
                repositories: args.list("repositories"),
                chroots: args.list("chroots"),
                archives: args.list("archives"),
                archives_from_apt_sources: args.bool("archives_from_apt_sources"),
                sources: args.list("sources"),
                from_origins: args.list("from_origins"),
                archives_from_origins: args.bool("archives_from_origins"),
                sources_from_origins: args.bool("sources_from_origins"),
                archives_from_proxy: args.bool("archives_from_proxy"),
                distributions_from_sources: args.bool("distributions_from_sources"),
                chroots_from_sources: args.bool("chroots_from_sources"),
                repositories_from_distributions: args.list("repositories_from_distributions"),
                remotes: args.list("remotes"),
                key_algo: Default::default(),
                places: d.places(),
            };
            if let Some(b) = args.str("chroots_backend").filter(|b| *b != "Dir") {
                return Err(ApiError::bad_request(format!(
                    "chroots_backend {b}: buildbay keeps its chroots as machine images in /var/lib/machines with an overlay per build (mini-buildd's Dir); drop the option or give Dir"
                )));
            }
            let ftp_endpoint = args.str("ftp_endpoint").map(|e| {
                json!({"given": e, "applied": false, "listening": format!("{}:{}", origin.host(), d.ftp_port),
                       "why": "the FTP listener is `buildbay serve --ftp` or buildbay-ftp.socket (systemctl edit buildbay-ftp.socket)"})
            });
            let report = d.inst.setup(&opts)?;
            Ok(json!({
                "setup": {"identity": args.str("identity"), "from_origins": opts.from_origins, "archives": opts.archives,
                          "archives_from_apt_sources": opts.archives_from_apt_sources, "sources": opts.sources,
                          "distributions": opts.distributions, "repositories": opts.repositories, "chroots": opts.chroots,
                          "remotes": opts.remotes, "chroots_backend": "Dir", "ftp_endpoint": ftp_endpoint},
                "instances": report,
                "report": {"daemon": d.inst.daemon()?.map(|x| x.identity.to_string()), "repositories": repositories(d)?.iter().map(|r| r.identity.to_string()).collect::<Vec<_>>()},
            }))
        }
        "cronjob" => {
            let id = args.require::<String>("id")?;
            let record = with_jobs(d, |ctx| crate::jobs::run_now(ctx, &id)).map_err(|e| match e {
                e @ crate::jobs::JobError::Unknown(..) => ApiError::bad_request(e.to_string()),
                e => ApiError::new(500, e.to_string()),
            })?;
            Ok(json!({ id: record }))
        }
        "start" => {
            let daemon =
                d.inst.daemon()?.ok_or_else(|| ApiError::new(400, "the daemon is not set up; run setup first"))?;
            if !daemon.status.is_active() {
                return Err(ApiError::bad_request("the Daemon object is not active; check and activate it first"));
            }
            d.set_running(true);
            Ok(json!({}))
        }
        "stop" => {
            d.set_running(false);
            Ok(json!({}))
        }
        "set_user_key" => {
            let user = who_name(who)?;
            let (key, cert) = uploader_key(d, &args.require::<String>("key")?)?;
            let mut status = config::Status::default();
            status.prepared();
            status.checked(Ok(()), chrono::Utc::now());
            let prev: Option<Uploader> = d.inst.get(user)?;
            let up = Uploader {
                user: user.to_owned(),
                key,
                fingerprint: Some(cert.fingerprint().to_hex()),
                may_upload_to: prev.map(|p| p.may_upload_to).unwrap_or_default(),
                status,
            };
            d.inst.put(user, &up)?;
            Ok(json!({}))
        }
        "subscribe" | "unsubscribe" => {
            let user = who_name(who)?;
            let source = args.str("source").unwrap_or("").to_owned();
            let dist = args.str("distribution").unwrap_or("").to_owned();
            if !source.is_empty() {
                source.parse::<PackageName>().map_err(|e| ApiError::bad_request(e.to_string()))?;
            }
            if !dist.is_empty() {
                dist.parse::<Dist>().map_err(|e| ApiError::bad_request(e.to_string()))?;
            }
            let sub = Subscription { user: user.to_owned(), source: source.clone(), distribution: dist.clone() };
            if args.call.name == "subscribe" {
                let exists = d.inst.get::<Subscription>(&sub.id())?.is_some();
                d.inst.put(&sub.id(), &sub)?;
                Ok(json!({"created": !exists, "source": source, "distribution": dist}))
            } else {
                let mut removed = Vec::new();
                for s in d.inst.list::<Subscription>()? {
                    let matches = |want: &str, have: &str| want.is_empty() || want == have;
                    if s.user == user && matches(&source, &s.source) && matches(&dist, &s.distribution) {
                        d.inst.delete::<Subscription>(&s.id())?;
                        removed.push(json!({"source": s.source, "distribution": s.distribution}));
                    }
                }
                Ok(Json::Array(removed))
            }
        }
        "token_create" => {
            let user = who_name(who)?;
            let role = args.require::<Role>("role")?.min(who.role);
            let days = args.int("expires_days").filter(|d| *d > 0).map(|d| d.clamp(1, 36500) as u32);
            let (secret, token) = auth::create_token(&d.inst.store, user, role, args.str("label").unwrap_or(""), days)?;
            Ok(
                json!({"token": secret, "id": token.id, "role": token.role, "label": token.label, "expires": token.expires}),
            )
        }
        "token_ls" => Ok(json!(auth::list_tokens(&d.inst.store, who_name(who)?)?)),
        "token_revoke" => {
            auth::revoke_token(&d.inst.store, who_name(who)?, &args.require::<String>("id")?)?;
            Ok(json!({}))
        }
        "user_add" => {
            let name: String = args.require("name")?;
            let role: Role = args.require("role")?;
            let password = args.require::<String>("password")?;
            let u = auth::add_user_with(&d.inst.store, &name, &password, role, args.bool("one_time"))?;
            Ok(json!({"name": u.name, "role": u.role, "one_time": u.must_change_password}))
        }
        "set_user_email" => {
            let user = who_name(who)?;
            let email = match args.str("email").map(str::trim).filter(|e| !e.is_empty()) {
                None => None,
                Some(e) => {
                    let a = e.parse::<lettre::Address>().map_err(|err| {
                        ApiError::bad_request(format!(
                            "email: {e:?} is not a mail address ({err}); give one like you@example.org"
                        ))
                    })?;
                    let mail = d.inst.daemon()?.map(|x| x.mail).unwrap_or_default();
                    if !crate::mail::allows(&mail, &d.host, &a) {
                        return Err(ApiError::bad_request(format!(
                            "email: this instance mails only addresses its allow_emails_to ({}) matches; ask an administrator",
                            mail.allow_emails_to.unwrap_or_else(|| crate::mail::default_allow(&d.host))
                        )));
                    }
                    Some(a)
                }
            };
            let u = auth::set_email(&d.inst.store, user, email)?;
            Ok(json!({"user": user, "email": u.email}))
        }
        "password_change" => {
            let user = who_name(who)?;
            let (old, new) = (args.require::<String>("old_password")?, args.require::<String>("new_password")?);
            let keep = who.session.as_ref().map(|(digest, _)| digest.as_str());
            auth::change_password(&d.inst.store, user, &old, &new, keep)?;
            Ok(json!({"user": user, "message": "password changed"}))
        }
        "user_ls" => {
            let users: Vec<Json> = auth::list_users(&d.inst.store)?
                .into_iter()
                .map(|u| json!({"name": u.name, "role": u.role, "created": u.created, "one_time": u.must_change_password}))
                .collect();
            Ok(json!(users))
        }
        "user_role" => {
            let name: String = args.require("name")?;
            let u = auth::set_role(&d.inst.store, &name, args.require("role")?)?;
            Ok(json!({"name": u.name, "role": u.role}))
        }
        "user_password" => {
            let name: String = args.require("name")?;
            auth::reset_password(&d.inst.store, &name, &args.require::<String>("password")?)?;
            Ok(json!({"name": name, "one_time": true}))
        }
        "user_revoke" => {
            let me = who_name(who)?;
            let name = args.str("name").unwrap_or(me).to_owned();
            if name != me && who.role < Role::Admin {
                return Err(ApiError::new(403, "only an admin revokes another user's sessions and tokens"));
            }
            let (sessions, tokens) = auth::revoke_all(&d.inst.store, &name)?;
            Ok(json!({"name": name, "sessions": sessions, "tokens": tokens}))
        }
        "user_remove" => {
            let name: String = args.require("name")?;
            auth::remove_user(&d.inst.store, &name)?;
            Ok(json!({"removed": name}))
        }
        other => Err(ApiError::new(500, format!("call {other} is registered but not implemented"))),
    }
}

fn component_rank(c: &str) -> (usize, String) {
    let order = ["main", "contrib", "non-free", "non-free-firmware", "universe", "restricted", "multiverse"];
    (order.iter().position(|o| *o == c).unwrap_or(order.len()), c.to_owned())
}

/// A list argument of distributions, each parsed (a bad one: 400, naming it).
fn dist_list(args: &Args, name: &str) -> Result<Vec<Dist>, ApiError> {
    args.list(name)
        .iter()
        .map(|s| s.parse::<Dist>().map_err(|e| ApiError::bad_request(format!("{name} {s:?}: {e}"))))
        .collect()
}

/// Per repository, its selected distributions with their components.
type SelectedDists = Vec<(Repository, Vec<(Dist, Vec<String>)>)>;

/// The distributions `repositories`, `codenames`, `suites` and `rollbacks` select (a
/// distribution, then its rollbacks), per repository, with the distribution's components.
fn selected_dists(d: &Daemon, args: &Args) -> Result<SelectedDists, ApiError> {
    let codenames = args.list("codenames");
    let suites = args.list("suites");
    let rollbacks = args.int("rollbacks").unwrap_or(0);
    let mut out = Vec::new();
    for r in selected_repos(d, args)? {
        let ctx = d.inst.archive()?.ctx(&r.identity)?;
        let mut dists = Vec::new();
        for (codename, (dist, _)) in &ctx.dists {
            if !codenames.is_empty() && !codenames.contains(codename) {
                continue;
            }
            let mut comps: Vec<String> = dist.components.iter().map(|c| c.to_string()).collect();
            comps.sort_by_key(|c| component_rank(c));
            for s in &ctx.layout.suites {
                if !suites.is_empty() && !suites.iter().any(|x| x == s.suite.as_str()) {
                    continue;
                }
                let base_dist = Dist::new(dist.codename.clone(), r.identity.clone(), s.suite.clone());
                let n = if rollbacks < 0 { s.rollback } else { (rollbacks as u32).min(s.rollback) };
                for dd in std::iter::once(base_dist.clone()).chain((0..n).map(|k| base_dist.rollback(k))) {
                    dists.push((dd, comps.clone()));
                }
            }
        }
        out.push((r, dists));
    }
    Ok(out)
}

fn sources_list(d: &Daemon, args: &Args, origin: &Origin) -> Result<String, ApiError> {
    let types = args.list("types");
    let opts = args.str("options").unwrap_or("");
    let snapshot: Option<SnapshotName> = args.parse("snapshot")?;
    let base = args
        .str("mirror")
        .map(|m| m.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("{}/repositories", origin.base_url));
    let origin_name = d.inst.daemon()?.map(|x| x.archive_origin()).unwrap_or_default();
    let mut lines = Vec::new();
    for (r, dists) in selected_dists(d, args)? {
        for (dd, comps) in dists {
            let suite = match &snapshot {
                Some(name) => format!("{dd}/snapshots/{name}"),
                None => dd.to_string(),
            };
            for t in &types {
                if args.bool("with_comment") {
                    lines.push(format!("# {origin_name} '{dd}': release n={dd}, o={origin_name}"));
                }
                lines.push(format!("{t} [{opts}] {base}/{} {suite} {}", r.identity, comps.join(" ")));
            }
        }
    }
    Ok(lines.join("\n") + "\n")
}

fn ls(d: &Daemon, args: &Args, show: bool) -> Result<Json, ApiError> {
    let source: PackageName = args.require("source")?;
    let version: Option<Version> = args.parse("version")?;
    let min_version: Option<Version> = args.parse("min_version")?;
    let codenames: Vec<Codename> = args
        .list("codenames")
        .iter()
        .map(|c| c.parse().map_err(|e: crate::deb::names::NameError| ApiError::bad_request(e.to_string())))
        .collect::<Result<_, _>>()?;
    let archive = d.inst.archive()?;
    let mut out = serde_json::Map::new();
    for r in selected_repos(d, args)? {
        let layout = layout_of(d, &r)?;
        let mut dists = serde_json::Map::new();
        for e in archive.ls(&r.identity, &source)? {
            if !codenames.is_empty() && !codenames.contains(&e.distribution.codename) {
                continue;
            }
            if version.as_ref().is_some_and(|v| v != &e.version) || min_version.as_ref().is_some_and(|m| &e.version < m)
            {
                continue;
            }
            let mut info = json!({"version": e.version, "component": e.component, "architecture": "source"});
            if show {
                info["dsc_path"] = json!(format!(
                    "pool/{}/{}/{}/{}_{}.dsc",
                    e.component,
                    source.pool_prefix(),
                    source,
                    source,
                    e.version.without_epoch()
                ));
                info["binaries"] = json!(e.binaries);
            }
            let base = e.distribution.base().to_string();
            let entry = dists.entry(base.clone()).or_insert_with(|| json!({"rollbacks": {}}));
            if e.distribution.is_rollback() {
                entry["rollbacks"][e.distribution.to_string()] = info;
            } else if let (Json::Object(m), Json::Object(i)) = (entry, info) {
                m.extend(i);
            }
        }
        if show {
            for (name, entry) in dists.iter_mut() {
                let Ok(dist) = name.parse::<Dist>() else { continue };
                if let Some(s) = layout.suite(&dist.suite) {
                    entry["uploadable"] = json!(s.uploadable);
                    if let Some(to) = &s.migrates_to {
                        let target = Dist::new(dist.codename.clone(), dist.repo.clone(), to.clone()).to_string();
                        entry["migrates_to"] = json!(target);
                    }
                }
            }
        }
        if !dists.is_empty() {
            out.insert(r.identity.to_string(), Json::Object(dists));
        }
    }
    Ok(Json::Object(out))
}

/// Keys of the uploads the pipeline still works on (received, or packaging).
fn packaging(d: &Daemon) -> Result<Vec<String>, ApiError> {
    let tx = d.inst.store.read()?;
    let mut out = Vec::new();
    for id in crate::packager::pending(&d.inst.store)? {
        if let Some(u) = crate::incoming::get(&tx, id)? {
            out.push(u.key());
        }
    }
    Ok(out)
}

/// What saving an object did, and what to do next.
fn saved_note(k: config::Kind, id: &str, deactivated: bool) -> String {
    if deactivated {
        format!("{k} {id} changed and is no longer active: run pca on it to activate it again")
    } else {
        format!("{k} {id} saved; run pca on it to prepare, check and activate it")
    }
}

fn checked_word(c: &config::Checked) -> String {
    match c {
        config::Checked::Never => "never".into(),
        config::Checked::Changed => "changed since prepared".into(),
        config::Checked::Failed => "failed".into(),
        config::Checked::Reactivate => "activates when a check passes".into(),
        config::Checked::At(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    }
}
