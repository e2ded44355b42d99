//! `buildbay serve`, assembled: the sockets (systemd's, or its own), the daemon, its builder, the
//! web server, the FTP drop box, the upload pipeline and the housekeeping tasks. The daemon's
//! composition root and its process edge (errors are `anyhow` here); `main.rs` only turns the
//! command line into [`Options`].

use crate::incoming::{self, Incoming};
use crate::instance::Instance;
use crate::systemd;
use anyhow::{Context, Result};
use std::time::Duration;

/// What `serve` was asked for.
pub struct Options {
    /// The HTTP address to bind when systemd passes no socket.
    pub http: std::net::SocketAddr,
    /// The FTP address to bind when systemd passes no socket (default: beside HTTP).
    pub ftp: Option<std::net::SocketAddr>,
    /// HTTPS: the address to bind when systemd passes no `https` socket (default with `tls`:
    /// the HTTP port + 2).
    pub https: Option<std::net::SocketAddr>,
    /// HTTPS: the PEM certificate chain and key.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Redirect plain HTTP to HTTPS (all but `/repositories/`).
    pub https_redirect: bool,
    /// The host name in build requests' URLs (default: this host's name).
    pub public_host: Option<String>,
    /// The HKP keyserver for `set_user_key` with a key id (`None`: none).
    pub keyserver: Option<String>,
    pub incoming: incoming::Limits,
    pub quota: incoming::ftp::Quota,
    pub ftp_options: incoming::ftp::FtpOptions,
    /// How long an upload may wait in PACKAGING.
    pub packaging_timeout: Duration,
    /// How long a remote may take to answer a build request handed to it.
    pub remote_deadline: Duration,
    pub keep_events_days: u32,
    /// Days finished uploads (their spool directories and records) and kept build logs stay.
    pub expire_builds_days: u32,
    /// Days added to the clock the job schedule reads (tests: a missed run).
    pub jobs_clock_offset_days: i64,
    pub hook_timeout: Duration,
    /// Where notification mail goes; `None`: no mail.
    pub smtp: Option<crate::mail::SmtpOptions>,
    /// The builds on this host.
    pub build: crate::builder::setup::Setup,
    /// Set up the embedded default on an empty state directory (see [`first_start`]).
    pub default_setup: bool,
}

/// Where the first start leaves the admin's one-time password, in the state directory.
pub const ADMIN_PASSWORD: &str = "admin-password";

/// On an empty state directory: the embedded default (this host's release and architecture, a
/// repository `test`), an account `admin` with a one-time password in [`ADMIN_PASSWORD`] (unless
/// there are users already: the package's postinst makes its own), and the chroot to make in
/// the background once the daemon runs. `None`: not a first start.
fn first_start(inst: &Instance, places: &crate::chroot::Places) -> Result<Option<String>> {
    let Some(report) = inst.default_setup_if_empty(places)? else { return Ok(None) };
    for i in report {
        tracing::info!(kind = i.kind, id = %i.id, status = %i.status, "setup");
    }
    if crate::auth::list_users(&inst.store)?.is_empty() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let password = crate::auth::random_token();
        let path = inst.store.dir().join(ADMIN_PASSWORD);
        // A fresh file only its owner reads; never through a name that is there already.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("writing the admin's one-time password to {}", path.display()))?;
        writeln!(f, "{password}").and_then(|()| f.sync_all()).with_context(|| path.display().to_string())?;
        crate::auth::add_user_with(&inst.store, "admin", &password, crate::auth::Role::Admin, true)?;
        tracing::info!(
            password_file = %path.display(),
            "created the account admin (role admin); its one-time password is in {} (change it at the first login, then delete the file)",
            path.display()
        );
    }
    Ok(Some(format!("{}:{}", crate::instance::host_codename(), crate::instance::host_arch())))
}

/// The host name build requests give builders: `--public-host` (with a warning when it does not
/// resolve here), else this host's name when it resolves to an address off loopback. A name that
/// only `/etc/hosts` maps to loopback (Debian's `127.0.1.1 <host>`) or none at all does not
/// resolve in a build's chroot or machine (they get the host's `resolv.conf`, not its hosts file),
/// so then `localhost`, which local builders reach.
fn public_host(given: Option<String>) -> String {
    use std::net::ToSocketAddrs;
    let addrs = |name: &str| (name, 0).to_socket_addrs().map(|a| a.map(|a| a.ip()).collect::<Vec<_>>());
    if let Some(h) = given {
        if !matches!(addrs(&h), Ok(a) if !a.is_empty()) {
            tracing::warn!(host = %h, "--public-host does not resolve here; builds cannot reach the repository by it");
        }
        return h;
    }
    let name = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    match addrs(&name) {
        Ok(a) if a.iter().any(|ip| !ip.is_loopback()) => name,
        Ok(a) if !a.is_empty() => {
            tracing::info!(host = %name, "this host's name is a loopback alias: build requests name localhost (give --public-host for remote builders)");
            "localhost".into()
        }
        _ => {
            tracing::warn!(host = %name, "this host's name does not resolve: build requests name localhost (give --public-host for remote builders)");
            "localhost".into()
        }
    }
}

/// Serve until a shutdown signal: HTTP on `opts.http` (or systemd's socket), FTP beside it.
pub fn run(inst: Instance, opts: Options, inherited: systemd::Inherited) -> Result<()> {
    let default_chroot = if opts.default_setup { first_start(&inst, &opts.build.places)? } else { None };
    // A writer killed between its commit and its publish left dists behind: repair first.
    if let Ok(archive) = inst.archive() {
        for r in inst.list::<crate::config::Repository>()? {
            let n = archive.publish_dirty(&r.identity)?;
            if n > 0 {
                tracing::info!(repository = %r.identity, distributions = n, "republished after an interrupted write");
            }
        }
    }
    let incoming =
        Incoming::new(inst.store.dir(), opts.incoming.clone()).context("preparing the incoming directory")?;
    let dropped = incoming.recover(&inst.store).context("recovering the spool")?;
    if dropped > 0 {
        tracing::info!(dropped, "dropped spool entries of claims that did not commit; their files are claimed again");
    }
    let host = public_host(opts.public_host.clone());
    let mailer = opts.smtp.as_ref().map(|o| crate::mail::Mailer::new(o, &host)).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let http = opts.http;
        let http_inherited = inherited.http.is_some();
        let listener = match inherited.http {
            Some(l) => {
                tracing::info!("serving HTTP on the socket systemd passed");
                tokio::net::TcpListener::from_std(l).context("using the inherited http socket")?
            }
            None => {
                tracing::info!(%http, "no socket from systemd: binding HTTP myself");
                tokio::net::TcpListener::bind(http).await.with_context(|| {
                    format!("binding {http}; is another daemon running there? choose one with --http")
                })?
            }
        };
        let addr = listener.local_addr().context("reading the HTTP address")?;
        let https = https_listener(&opts, inherited.https, addr).await?;
        let ftp_listener = match inherited.ftp {
            Some(l) => {
                tracing::info!("serving FTP on the socket systemd passed");
                Some(tokio::net::TcpListener::from_std(l).context("using the inherited ftp socket")?)
            }
            None => {
                // mini-buildd's default: FTP on the HTTP port + 1 (any free port beside an ephemeral HTTP port).
                let port = if http.port() == 0 && !http_inherited { 0 } else { addr.port().wrapping_add(1) };
                let a = opts
                    .ftp
                    .unwrap_or_else(|| std::net::SocketAddr::new(incoming::ftp::bind_ip_beside(http.ip()), port));
                tracing::info!(ftp = %a, "no ftp socket from systemd: binding FTP myself");
                match tokio::net::TcpListener::bind(a).await {
                    Ok(l) => Some(l),
                    // systemd passed HTTP only: keep serving the repositories, without uploads.
                    Err(e) if http_inherited && opts.ftp.is_none() => {
                        tracing::error!(
                            "uploads are off: cannot bind FTP on {a}: {e}; enable buildbay-ftp.socket or pass --ftp"
                        );
                        None
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "binding FTP on {a}; is another daemon running there? choose one with --ftp"
                        )));
                    }
                }
            }
        };
        let ftp_addr = match &ftp_listener {
            Some(l) => Some(l.local_addr().context("reading the FTP address")?),
            None => None,
        };
        if let Some(warning) = ftp_addr.and_then(incoming::ftp::ipv6_warning) {
            tracing::warn!("{warning}");
        }
        if !systemd::notify_socket() {
            tracing::info!("no service manager (NOTIFY_SOCKET unset): running in the foreground");
        }
        let daemon = std::sync::Arc::new(
            crate::daemon::Daemon::new(
                inst,
                addr.port(),
                ftp_addr.map_or(addr.port().wrapping_add(1), |a| a.port()),
                host,
                incoming.clone(),
            )
            .with_packaging_deadline(opts.packaging_timeout)
            .with_remote_deadline(opts.remote_deadline)
            .with_retention(opts.keep_events_days, opts.expire_builds_days)
            .with_jobs_clock_offset(opts.jobs_clock_offset_days)
            .with_mail(mailer.is_some())
            .with_ftps(opts.ftp_options.tls.is_some())
            .with_disk_reserve(opts.quota.reserve)
            .with_keyserver(opts.keyserver.clone()),
        );
        // Local administration: the API on loopback, with a credential only root and the
        // daemon's user read.
        let loopback = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
            std::net::SocketAddr::new(
                if addr.is_ipv6() {
                    std::net::Ipv6Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv4Addr::LOCALHOST.into()
                },
                addr.port(),
            )
        } else {
            addr
        };
        match crate::auth::LocalAdmin::create(daemon.inst.store.dir(), &format!("http://{loopback}")) {
            Ok(l) => {
                let _ = daemon.local_admin.set(l);
            }
            Err(e) => tracing::warn!("`buildbay user` and `uploader` cannot reach this daemon: {e}"),
        }
        match crate::protocol::remote::RemoteUrl::new(false, &daemon.host, daemon.http_port) {
            Ok(url) => daemon.inst.set_public_url(url),
            Err(e) => tracing::warn!("remotes cannot reach this instance: {e}"),
        }
        let builder = opts.build.builder(daemon.incoming.results.clone()).await.context("setting up the builder")?;
        tracing::info!(slots = builder.limits.slots, "builder ready");
        if daemon.builder.set(builder).is_err() {
            anyhow::bail!("the builder was set up twice");
        }
        if let Some(spec) = default_chroot {
            daemon.prepare_chroot_in_background(spec);
        }
        tokio::spawn(daemon.clone().run_builders());
        let watched = daemon.clone();
        let started = chrono::Utc::now().timestamp();
        systemd::spawn_watchdog(move || watched.heartbeats.alive(started, crate::daemon::HEARTBEAT_GRACE));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(crate::web::serve(listener, https, daemon.clone(), stop_rx.clone()));
        let waker = daemon.clone();
        let dropbox = std::sync::Arc::new(incoming::ftp::DropBox::new(
            incoming.dir.clone(),
            incoming.part_dir(),
            opts.incoming.max_file,
            opts.quota,
            Box::new(move || waker.wake()),
        ));
        if let Some(l) = ftp_listener {
            tokio::spawn(incoming::ftp::serve(l, dropbox, opts.ftp_options.clone(), stop_rx));
        }
        let pipeline = daemon.clone();
        std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || pipeline.run_pipeline())
            .context("starting the upload pipeline")?;
        let dispatch = daemon.clone();
        std::thread::Builder::new()
            .name("dispatch".into())
            .spawn(move || dispatch.run_dispatch())
            .context("starting the dispatcher")?;
        let recheck = daemon.clone();
        std::thread::Builder::new()
            .name("recheck".into())
            .spawn(move || recheck.run_recheck())
            .context("starting the remotes' re-check")?;
        daemon.wake();
        spawn_housekeeping(daemon.clone(), opts.hook_timeout);
        spawn_mail(daemon.clone(), mailer);
        let status = match ftp_addr {
            Some(f) => format!("serving http://{addr}/repositories/ and ftp://{f}/incoming"),
            None => format!("serving http://{addr}/repositories/ (uploads off)"),
        };
        tracing::info!(running = daemon.is_running(), "{status}");
        systemd::notify_ready(&status);
        systemd::shutdown_signal().await;
        systemd::notify_stopping();
        let _ = stop_tx.send(true);
        if tokio::time::timeout(systemd::GRACE, server).await.is_err() {
            tracing::warn!("in-flight requests did not finish within {:?}", systemd::GRACE);
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// The HTTPS listener: systemd's `https` socket or `--https`, or beside HTTP (its port + 2)
/// when only the certificate is given; `None` without a certificate.
async fn https_listener(
    opts: &Options,
    inherited: Option<std::net::TcpListener>,
    http: std::net::SocketAddr,
) -> Result<Option<crate::web::Https>> {
    let Some((cert, key)) = &opts.tls else {
        if inherited.is_some() || opts.https.is_some() {
            anyhow::bail!("HTTPS needs a certificate: give --tls-cert and --tls-key (PEM files)");
        }
        return Ok(None);
    };
    let acceptor = crate::web::tls::acceptor(cert, key)?;
    let listener = match inherited {
        Some(l) => {
            tracing::info!("serving HTTPS on the socket systemd passed");
            tokio::net::TcpListener::from_std(l).context("using the inherited https socket")?
        }
        None => {
            let a = opts.https.unwrap_or_else(|| {
                let port = if http.port() == 0 { 0 } else { http.port().wrapping_add(2) };
                std::net::SocketAddr::new(http.ip(), port)
            });
            tracing::info!(https = %a, "no https socket from systemd: binding HTTPS myself");
            tokio::net::TcpListener::bind(a).await.with_context(|| {
                format!("binding HTTPS on {a}; is another daemon running there? choose one with --https")
            })?
        }
    };
    let at = listener.local_addr().context("reading the HTTPS address")?;
    tracing::info!(cert = %cert.display(), "HTTPS listens on https://{at}/");
    Ok(Some(crate::web::Https { listener, acceptor, redirect: opts.https_redirect }))
}

/// Notification mail: after each event (and at least every minute, or at the retry interval),
/// the pending events' mail is queued and what is due is sent. Without `--smtp`, the marks are
/// taken and nothing is sent.
fn spawn_mail(daemon: std::sync::Arc<crate::daemon::Daemon>, mailer: Option<crate::mail::Mailer>) {
    match &mailer {
        Some(m) => tracing::info!(server = %m.server, "notification mail goes to {}", m.server),
        None => tracing::info!("no --smtp: notification mail is off"),
    }
    let period = mailer.as_ref().map_or(Duration::from_secs(60), |m| m.retry.min(Duration::from_secs(60)));
    let mut rx = daemon.bus.subscribe();
    let rejected = std::sync::Arc::new(std::sync::Mutex::new(crate::mail::RejectedLimit::default()));
    tokio::spawn(async move {
        loop {
            let d = daemon.clone();
            let with_mail = mailer.is_some();
            let rejected = rejected.clone();
            let collected = tokio::task::spawn_blocking(move || {
                // With mail on, the marks are taken only with the configuration read: a
                // notification is not lost to a failed read.
                let sender = match (with_mail, d.inst.daemon()) {
                    (false, _) => None,
                    (true, Ok(Some(c))) => Some(crate::mail::Sender {
                        identity: c.identity.to_string(),
                        host: d.host.clone(),
                        from: c
                            .mail
                            .email_address
                            .clone()
                            .unwrap_or_else(|| crate::mail::default_from(c.identity.as_str(), &d.host)),
                        url: d
                            .inst
                            .public_url()
                            .map_or_else(|| format!("http://{}:{}", d.host, d.http_port), |u| u.to_string()),
                    }),
                    (true, Ok(None)) => return Ok(crate::mail::Collected::default()),
                    (true, Err(e)) => return Err(crate::mail::MailError::Instance(e)),
                };
                let mut limit = rejected.lock().unwrap_or_else(|p| p.into_inner());
                crate::mail::collect(&d.inst, sender.as_ref(), chrono::Utc::now(), &mut limit)
            })
            .await;
            match collected {
                Ok(Ok(c)) if c.queued > 0 || c.dropped > 0 => {
                    if let Some(m) = &mailer {
                        m.wake();
                    }
                    tracing::debug!(
                        events = c.events,
                        queued = c.queued,
                        dropped = c.dropped,
                        "notification mail queued"
                    )
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("cannot queue notification mail now: {e}"),
                Err(e) => tracing::warn!("the mail task failed: {e}"),
            }
            if let Some(m) = &mailer {
                match m.send_due(&daemon.inst.store, chrono::Utc::now()).await {
                    Ok(s) => daemon.metrics.mails(&s.outcomes()),
                    Err(e) => tracing::warn!("cannot send notification mail now: {e}"),
                }
            }
            tokio::select! {
                r = rx.recv() => if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    tokio::time::sleep(period).await
                },
                _ = tokio::time::sleep(period) => {}
            }
        }
    });
}

/// Event hooks for every event, and the internal jobs (`jobs`): those due, or missed while the
/// daemon was down, run at the start and then whenever due (checked every minute).
fn spawn_housekeeping(daemon: std::sync::Arc<crate::daemon::Daemon>, hook_timeout: std::time::Duration) {
    let state = daemon.inst.store.dir().to_owned();
    let hooks = crate::events::Hooks {
        dir: state.join("etc/event-hooks"),
        events_dir: state.join("var/events"),
        timeout: hook_timeout,
    };
    let mut rx = daemon.bus.subscribe();
    let metrics_daemon = daemon.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    metrics_daemon.metrics.event(&event);
                    hooks.run(&event).await
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("event hooks fell behind and skipped {n} events")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            let d = daemon.clone();
            let ran = tokio::task::spawn_blocking(move || {
                let now = chrono::Utc::now() + d.jobs_clock_offset;
                crate::api::calls::with_jobs(&d, |ctx| crate::jobs::run_due(ctx, now))
            })
            .await;
            match ran {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("the internal jobs cannot run now: {e}"),
                Err(e) => tracing::warn!("the internal jobs' task failed: {e}"),
            }
        }
    });
}
