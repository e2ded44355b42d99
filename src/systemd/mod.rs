//! systemd integration: inherited sockets, sd_notify, the journal. Everything here degrades to
//! plain behaviour without systemd, and says so in the log.

pub mod bus;

use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::time::Duration;

/// Listening sockets handed over by systemd socket activation, by `FileDescriptorName=`.
#[derive(Debug, Default)]
pub struct Inherited {
    pub http: Option<TcpListener>,
    /// `buildbay-https.socket`, when enabled.
    pub https: Option<TcpListener>,
    pub ftp: Option<TcpListener>,
    /// The root helper's Unix socket (`buildbay-helper.socket`).
    pub helper: Option<std::os::unix::net::UnixListener>,
}

/// Take the sockets systemd passed (LISTEN_FDS, LISTEN_FDNAMES) and unset the variables so that
/// child processes do not inherit them.
///
/// # Safety
/// Must run before any other thread exists (it modifies the environment).
pub unsafe fn take_listeners() -> std::io::Result<Inherited> {
    // SAFETY: the caller guarantees single-threadedness.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env()? };
    let mut inherited = Inherited::default();
    for (fd, name) in fds {
        let tcp = || -> std::io::Result<TcpListener> {
            // SAFETY: systemd passed us this fd for our exclusive use.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            listener.set_nonblocking(true)?;
            Ok(listener)
        };
        match name.as_str() {
            "http" => inherited.http = Some(tcp()?),
            "https" => inherited.https = Some(tcp()?),
            "ftp" => inherited.ftp = Some(tcp()?),
            "helper" => {
                // SAFETY: as above.
                let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
                listener.set_nonblocking(true)?;
                inherited.helper = Some(listener);
            }
            other => tracing::warn!(name = other, "ignoring an inherited socket with an unknown name"),
        }
    }
    Ok(inherited)
}

/// Whether a service manager listens for sd_notify messages.
pub fn notify_socket() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]) {
        tracing::warn!("sd_notify READY failed: {e}");
    }
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Ping the watchdog at half its interval, if systemd asked for one.
pub fn spawn_watchdog(alive: impl Fn() -> bool + Send + 'static) {
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            let mut warned = false;
            loop {
                tick.tick().await;
                // Fed only while the pipeline and the builders get round: a hung loop gets the
                // daemon restarted by systemd.
                if alive() {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    warned = false;
                } else if !warned {
                    tracing::error!(
                        "the upload pipeline or the builders stopped getting round; the watchdog will restart the daemon"
                    );
                    warned = true;
                }
            }
        });
    }
}

/// Log to the journal when there is one, otherwise to stderr, and say which.
pub fn init_logging(filter: &str, prefer_journal: bool) {
    use tracing_subscriber::prelude::*;
    // libunftp logs every FTP command at info: keep it to warnings unless asked for.
    let filter =
        if filter.contains("libunftp") { filter.to_owned() } else { format!("{filter},libunftp=warn,unftp_core=warn") };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into());
    let (journald, journal_err) = if prefer_journal {
        match tracing_journald::layer() {
            Ok(l) => (Some(l.with_field_prefix(None).with_syslog_identifier("buildbay".into())), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let stderr =
        journald.is_none().then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false));
    tracing_subscriber::registry().with(filter).with(journald).with(stderr).init();
    if let Some(e) = journal_err {
        tracing::info!("no systemd journal here ({e}); logging to stderr");
    }
}

/// Wait for SIGTERM (systemd's stop signal) or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// How long in-flight requests get to finish after a stop signal.
pub const GRACE: Duration = Duration::from_secs(20);
