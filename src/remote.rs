//! Talking to remotes (mini-buildd §5.4): their `status`, `pub_key` and `handshake` calls over
//! HTTP (anonymous GETs, as mini-buildd's client makes them), the wake command, and FTP uploads
//! of build requests and results into a builder's or packager's incoming. Every answer is
//! bounded and parsed into its type here; what a remote says is data, never a command or a
//! path. The wire types and the choice of a builder are `protocol::remote`'s (pure).

use crate::protocol::remote::{FtpUrl, MAX_ANSWER, RemoteStatus, RemoteUrl};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// Why talking to a remote did not work.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Not reachable, or not answering now: try again later.
    #[error("{0}")]
    Unreachable(String),
    /// It answered, and the answer is no (an API error, a bad answer): final for this attempt.
    #[error("{0}")]
    Refused(String),
}

/// How long one API call to a remote may take (mini-buildd's status uses 2 s; a handshake
/// signs and verifies on the other side).
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an FTP upload may wait on a silent peer, per operation.
pub const FTP_TIMEOUT: Duration = Duration::from_secs(60);

fn agent(timeout: Duration) -> ureq::Agent {
    crate::http::agent(timeout, 0)
}

/// One anonymous API call; its JSON answer, at most [`MAX_ANSWER`] bytes.
pub fn call(url: &RemoteUrl, name: &str, args: &[(&str, &str)], timeout: Duration) -> Result<Vec<u8>, RemoteError> {
    let address = url.api(name, args);
    let shown = format!("{url} ({name})");
    let mut r = agent(timeout).get(&address).call().map_err(|e| RemoteError::Unreachable(format!("{shown}: {e}")))?;
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| RemoteError::Unreachable(format!("{shown}: reading its answer: {e}")))?;
    match status {
        200..=299 => Ok(body),
        502..=504 => Err(RemoteError::Unreachable(format!("{shown} answered {status}"))),
        _ => {
            // mini-buildd's and buildbay's errors are RFC 7807 problems: show their detail.
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(printable));
            Err(RemoteError::Refused(format!("{shown} answered {status}: {}", detail.unwrap_or_default())))
        }
    }
}

/// At most 300 printable characters of what a remote said, for a message.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

/// A call whose answer is one JSON string (`pub_key`, `handshake`).
fn call_string(url: &RemoteUrl, name: &str, args: &[(&str, &str)]) -> Result<String, RemoteError> {
    let body = call(url, name, args, API_TIMEOUT)?;
    serde_json::from_slice::<String>(&body)
        .map_err(|_| RemoteError::Refused(format!("{url} ({name}): the answer is not a JSON string")))
}

/// The remote's `status`.
pub fn status(url: &RemoteUrl, timeout: Duration) -> Result<RemoteStatus, RemoteError> {
    let body = call(url, "status", &[], timeout)?;
    RemoteStatus::parse(&body).map_err(|e| RemoteError::Refused(format!("{url}: {e}")))
}

/// The remote's armored public key (`pub_key`).
pub fn pub_key(url: &RemoteUrl) -> Result<String, RemoteError> {
    let key = call_string(url, "pub_key", &[])?;
    if key.trim().is_empty() {
        return Err(RemoteError::Refused(format!("{url} has no key yet (its pub_key is empty); set it up first")));
    }
    Ok(key)
}

/// Send our clear-signed handshake message; the remote answers with its own.
pub fn handshake(url: &RemoteUrl, signed: &str) -> Result<String, RemoteError> {
    call_string(url, "handshake", &[("signed_message", signed)])
}

/// Run a remote's wake command (split as a shell would, run without one), at most 60 s.
pub fn run_wake_command(command: &str) -> Result<(), String> {
    let argv = shlex::split(command).filter(|a| !a.is_empty()).ok_or_else(|| {
        format!(
            "the wake command {command:?} does not split into words (an unclosed quote?); fix the remote's wake_command"
        )
    })?;
    let mut child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("the wake command {:?} cannot run: {e}", argv[0]))?;
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("the wake command {:?} failed: {s}", argv[0])),
            Ok(None) if started.elapsed() > Duration::from_secs(60) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the wake command {:?} ran longer than 60 s and was killed", argv[0]));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("the wake command {:?}: {e}", argv[0])),
        }
    }
}

/// `status`, waking the remote with its command when it does not answer: up to `attempts`
/// runs of the command, `sleep` apart (mini-buildd's `wake`).
pub fn wake(url: &RemoteUrl, command: &str, sleep: Duration, attempts: u32) -> Result<RemoteStatus, RemoteError> {
    match status(url, API_TIMEOUT) {
        Err(RemoteError::Unreachable(first)) if !command.trim().is_empty() => {
            let mut last = first;
            for _ in 0..attempts.max(1) {
                run_wake_command(command).map_err(RemoteError::Refused)?;
                std::thread::sleep(sleep);
                match status(url, API_TIMEOUT) {
                    Err(RemoteError::Unreachable(e)) => last = e,
                    other => return other,
                }
            }
            Err(RemoteError::Unreachable(format!("{last} (still, after {} wake attempts)", attempts.max(1))))
        }
        other => other,
    }
}

/// One file of an FTP upload: its name in incoming, and where its bytes come from.
pub enum Part<'a> {
    File { name: &'a str, path: &'a Path },
    Bytes { name: &'a str, data: &'a [u8] },
}

/// Upload files into `/incoming` of an FTP incoming, anonymously and passive, in the order
/// given (the `.changes` last, as mini-buildd and dput do, so an incoming that processes on
/// arrival sees it complete).
pub fn ftp_put(to: &FtpUrl, parts: &[Part<'_>]) -> Result<(), RemoteError> {
    ftp_put_trusting(to, parts, &ca_bundle())
}

/// The CA certificates an FTPS server's certificate is verified against: `$SSL_CERT_FILE` (as
/// OpenSSL reads it), else Debian's bundle (`update-ca-certificates` adds a local CA to it).
pub fn ca_bundle() -> std::path::PathBuf {
    std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into())
}

/// [`ftp_put`], verifying an FTPS server against the CA certificates in `bundle` (PEM).
pub fn ftp_put_trusting(to: &FtpUrl, parts: &[Part<'_>], bundle: &std::path::Path) -> Result<(), RemoteError> {
    use std::net::ToSocketAddrs;
    let down = |e: &dyn std::fmt::Display| RemoteError::Unreachable(format!("{to}: {e}"));
    let addr = to
        .authority()
        .to_socket_addrs()
        .map_err(|e| down(&e))?
        .next()
        .ok_or_else(|| RemoteError::Unreachable(format!("{to}: the host has no address")))?;
    let control = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| down(&e))?;
    let _ = control.set_read_timeout(Some(FTP_TIMEOUT));
    let _ = control.set_write_timeout(Some(FTP_TIMEOUT));
    if !to.tls {
        return put_on(suppaftp::FtpStream::connect_with_stream(control).map_err(|e| down(&e))?, to, addr.ip(), parts);
    }
    let config = tls_client(bundle).map_err(|e| RemoteError::Refused(format!("{to}: {e}")))?;
    let ftp = suppaftp::RustlsFtpStream::connect_with_stream(control)
        .and_then(|f| f.into_secure(suppaftp::RustlsConnector::from(config), &to.host))
        .map_err(|e| down(&format!("FTPS: {e}")))?;
    put_on(ftp, to, addr.ip(), parts)
}

/// A TLS client that trusts the CA certificates in `bundle`.
fn tls_client(bundle: &std::path::Path) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(bundle).map_err(|e| format!("CA bundle {}: {e}", bundle.display()))?;
    for c in certs.flatten() {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(format!("no CA certificate in {}", bundle.display()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Log in anonymously on a connected control channel and store each part in `/incoming`.
fn put_on<T: suppaftp::TlsStream>(
    ftp: suppaftp::ImplFtpStream<T>,
    to: &FtpUrl,
    host: std::net::IpAddr,
    parts: &[Part<'_>],
) -> Result<(), RemoteError> {
    let down = |e: &dyn std::fmt::Display| RemoteError::Unreachable(format!("{to}: {e}"));
    // The data connection goes to the control connection's host, whatever address PASV names
    // (no FTP bounce to another host), and is bounded like the control connection.
    let mut ftp = ftp.passive_stream_builder(move |pasv: std::net::SocketAddr| {
        let data = std::net::SocketAddr::new(host, pasv.port());
        let s = std::net::TcpStream::connect_timeout(&data, Duration::from_secs(10))
            .map_err(suppaftp::FtpError::ConnectionError)?;
        s.set_read_timeout(Some(FTP_TIMEOUT)).map_err(suppaftp::FtpError::ConnectionError)?;
        s.set_write_timeout(Some(FTP_TIMEOUT)).map_err(suppaftp::FtpError::ConnectionError)?;
        Ok(s)
    });
    ftp.login("anonymous", "anonymous@").map_err(|e| down(&e))?;
    ftp.transfer_type(suppaftp::types::FileType::Binary).map_err(|e| down(&e))?;
    ftp.cwd("/incoming").map_err(|e| down(&e))?;
    for part in parts {
        let (name, mut reader): (&str, Box<dyn Read>) = match part {
            Part::File { name, path } => {
                let (f, _) = crate::protocol::tar::open_regular(path)
                    .map_err(|e| RemoteError::Refused(format!("{}: {e}", path.display())))?;
                (name, Box::new(f))
            }
            Part::Bytes { name, data } => (name, Box::new(*data)),
        };
        ftp.put_file(name, &mut reader).map_err(|e| down(&format!("STOR {name}: {e}")))?;
    }
    let _ = ftp.quit();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_commands_run_as_words_never_through_a_shell() {
        assert!(run_wake_command("true").is_ok());
        assert!(run_wake_command("false").unwrap_err().contains("failed"));
        // A shell's metacharacters are words like any other: `true` gets them as arguments.
        assert!(run_wake_command("true ; false").is_ok());
        assert!(run_wake_command("true $(false) | false").is_ok());
        assert!(run_wake_command("echo 'unclosed").unwrap_err().contains("does not split"));
        assert!(run_wake_command("").unwrap_err().contains("does not split"));
        assert!(run_wake_command("/nonexistent/wake").unwrap_err().contains("cannot run"));
    }

    #[test]
    fn an_unreachable_remote_is_unreachable_not_refused() {
        // Port 1 on loopback: nothing listens there.
        let url: RemoteUrl = "http://127.0.0.1:1".parse().unwrap();
        assert!(matches!(status(&url, Duration::from_secs(2)), Err(RemoteError::Unreachable(_))));
        let to: FtpUrl = "ftp://127.0.0.1:1".parse().unwrap();
        assert!(matches!(ftp_put(&to, &[]), Err(RemoteError::Unreachable(_))));
    }
}
