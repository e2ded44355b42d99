//! Remotes (mini-buildd §5.4): the wire side of builders shared between instances. Pure: the
//! URL of a remote as mini-buildd spells it, the `status` answer a dispatch reads, the handshake
//! message, and the choice of a builder. The network is the `remote` module's.

use crate::deb::{Arch, Codename};
use std::fmt;

/// What both sides clear-sign in a handshake (mini-buildd's `HANDSHAKE_MESSAGE`).
pub const HANDSHAKE_MESSAGE: &str = "Hand Shake";

/// The most a remote's `status` (or `pub_key`, `handshake`) answer may be.
pub const MAX_ANSWER: u64 = 1 << 20;

/// Where a remote's API is: `http://host:port` (or `https`), with no path and no trailing slash,
/// exactly as mini-buildd's `Remote.mbd_url()` and `status.remotes` spell it. Parsed from a URL
/// or from mini-buildd's client endpoint `tcp:host=H:port=P` (`tls:`/`ssl:` for https).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RemoteUrl {
    https: bool,
    host: String,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("remote {given:?}: {why}; give http://host:port (or mini-buildd's tcp:host=HOST:port=PORT)")]
pub struct RemoteUrlError {
    given: String,
    why: &'static str,
}

impl RemoteUrl {
    pub fn new(https: bool, host: &str, port: u16) -> Result<RemoteUrl, RemoteUrlError> {
        let err = |why| RemoteUrlError { given: host.to_owned(), why };
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let ok = !bare.is_empty()
            && bare.len() <= 253
            && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
            && !bare.starts_with(['-', '.']);
        if !ok {
            return Err(err("the host is not a host name or an IP address"));
        }
        if bare.contains(':') && bare.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err("the host is not a host name or an IP address"));
        }
        if port == 0 {
            return Err(err("the port is 0"));
        }
        Ok(RemoteUrl { https, host: bare.to_ascii_lowercase(), port })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` for a socket address (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL of one API call, as mini-buildd's client sends it.
    pub fn api(&self, call: &str, args: &[(&str, &str)]) -> String {
        let mut q: Vec<(&str, &str)> = args.to_vec();
        q.push(("output", "json"));
        let query = serde_urlencoded::to_string(&q).unwrap_or_default();
        format!("{self}/mini_buildd/api/{call}/?{query}")
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", if self.https { "https" } else { "http" }, self.authority())
    }
}

impl From<RemoteUrl> for String {
    fn from(u: RemoteUrl) -> String {
        u.to_string()
    }
}

impl TryFrom<String> for RemoteUrl {
    type Error = RemoteUrlError;
    fn try_from(s: String) -> Result<RemoteUrl, RemoteUrlError> {
        s.parse()
    }
}

impl std::str::FromStr for RemoteUrl {
    type Err = RemoteUrlError;
    fn from_str(s: &str) -> Result<RemoteUrl, RemoteUrlError> {
        let err = |why| RemoteUrlError { given: s.to_owned(), why };
        if s.len() > 300 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err("it is not one short line"));
        }
        let (https, host, port) = if let Some((scheme, rest)) = s.split_once("://") {
            let https = match scheme {
                "http" => false,
                "https" => true,
                _ => return Err(err("the scheme is not http or https")),
            };
            let authority = rest.strip_suffix('/').unwrap_or(rest);
            if authority.contains(['/', '?', '#', '@']) {
                return Err(err("a remote's URL has no path, query, or user"));
            }
            let (host, port) = match authority.rsplit_once(':').filter(|(h, _)| !h.ends_with(':')) {
                Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                    (h.to_owned(), p.parse::<u16>().map_err(|_| err("the port is not a number"))?)
                }
                _ if authority.contains(':') => {
                    return Err(err("an IPv6 address goes in brackets: http://[addr]:port"));
                }
                _ => (authority.to_owned(), if https { 443 } else { 8066 }),
            };
            (https, host, port)
        } else {
            // mini-buildd's client endpoint: `tcp:host=H:port=P`, `\:` escapes a colon.
            let parts = split_endpoint(s);
            let https = match parts.first().map(String::as_str) {
                Some("tcp" | "tcp6") => false,
                Some("tls" | "ssl") => true,
                _ => return Err(err("the endpoint type is not tcp, tcp6, tls or ssl")),
            };
            let (mut host, mut port) = (None, None);
            for p in &parts[1..] {
                match p.split_once('=') {
                    Some(("host", h)) => host = Some(h.to_owned()),
                    Some(("port", v)) => port = Some(v.parse::<u16>().map_err(|_| err("the port is not a number"))?),
                    _ => {}
                }
            }
            (https, host.ok_or_else(|| err("the endpoint has no host="))?, port.unwrap_or(8066))
        };
        RemoteUrl::new(https, &host, port).map_err(|e| RemoteUrlError { given: s.to_owned(), why: e.why })
    }
}

/// Split a Twisted endpoint string on unescaped `:`.
fn split_endpoint(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(l)) = (chars.next(), out.last_mut()) {
                    l.push(n);
                }
            }
            ':' => out.push(String::new()),
            c => {
                if let Some(l) = out.last_mut() {
                    l.push(c);
                }
            }
        }
    }
    out
}

/// An FTP incoming a builder or packager names (`incoming_url`, `Upload-To`): `ftp://host:port`,
/// or `ftps://host:port` (explicit FTPS: `AUTH TLS` on the same port).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FtpUrl {
    pub host: String,
    pub port: u16,
    /// FTPS: uploads go over TLS, the server's certificate verified.
    #[serde(default)]
    pub tls: bool,
}

impl std::str::FromStr for FtpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<FtpUrl, String> {
        let bad = |why: &str| format!("{s:?} is not an ftp://host:port or ftps://host:port URL: {why}");
        let (tls, rest) = match (s.strip_prefix("ftp://"), s.strip_prefix("ftps://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return Err(bad("neither ftp:// nor ftps://")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let u = RemoteUrl::from_str(&format!("http://{rest}")).map_err(|e| bad(e.why))?;
        let port = if rest.rsplit_once(':').is_some_and(|(h, _)| !h.ends_with(':')) { u.port } else { 21 };
        Ok(FtpUrl { host: u.host, port, tls })
    }
}

impl FtpUrl {
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for FtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", if self.tls { "ftps" } else { "ftp" }, self.authority())
    }
}

/// What a dispatch reads of a builder's `status` answer (mini-buildd's fields; others ignored).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RemoteStatus {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub identity: String,
    pub url: String,
    pub incoming_url: String,
    /// Queued builds per slot; -1 when the remote's daemon is stopped.
    pub load: f64,
    /// `codename:arch` of its active chroots.
    #[serde(default)]
    pub chroots: Vec<String>,
    /// The URLs of the remotes it has activated.
    #[serde(default)]
    pub remotes: Vec<String>,
}

impl RemoteStatus {
    /// Parse a `status` answer (bounded by the caller to [`MAX_ANSWER`]).
    pub fn parse(body: &[u8]) -> Result<RemoteStatus, String> {
        let s: RemoteStatus =
            serde_json::from_slice(body).map_err(|e| format!("its status answer is not mini-buildd's status: {e}"))?;
        if s.chroots.len() > 4096 || s.remotes.len() > 4096 {
            return Err("its status answer lists more than 4096 chroots or remotes".into());
        }
        if !s.load.is_finite() {
            return Err("its status answer has no finite load".into());
        }
        Ok(s)
    }

    pub fn has_chroot(&self, codename: &Codename, arch: &Arch) -> bool {
        let want = format!("{codename}:{arch}");
        self.chroots.contains(&want)
    }

    /// Started, so it builds (mini-buildd: `load >= 0`).
    pub fn is_started(&self) -> bool {
        self.load >= 0.0
    }
}

/// A builder a dispatch may choose: this instance, or a remote.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Builder {
    Local,
    Remote(RemoteUrl),
}

impl fmt::Display for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Builder::Local => f.write_str("this instance"),
            Builder::Remote(u) => u.fmt(f),
        }
    }
}

/// The candidates for one build, in the order to try them: lowest load first; builders of equal
/// load take turns (`turn` counts the choices made so far), instead of collapsing into one as
/// mini-buildd's dict keyed by load does.
pub fn order(mut candidates: Vec<(Builder, f64)>, turn: usize) -> Vec<Builder> {
    candidates.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let Some(lowest) = candidates.first().map(|c| c.1) else { return vec![] };
    let ties = candidates.iter().take_while(|c| c.1 == lowest).count();
    candidates[..ties].rotate_left(turn % ties);
    candidates.into_iter().map(|c| c.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_as_mini_buildd_spells_them() {
        for (given, want) in [
            ("http://build.example.org:8066", "http://build.example.org:8066"),
            ("http://Build.Example.org:8066/", "http://build.example.org:8066"),
            ("https://b:443", "https://b:443"),
            ("http://b", "http://b:8066"),
            ("tcp:host=b.example.org:port=8066", "http://b.example.org:8066"),
            ("tls:host=b:port=9000", "https://b:9000"),
            ("tcp6:host=fd00\\:\\:1:port=8066", "http://[fd00::1]:8066"),
            ("http://[::1]:8066", "http://[::1]:8066"),
            ("http://127.0.0.1:1", "http://127.0.0.1:1"),
        ] {
            let u: RemoteUrl = given.parse().unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(u.to_string(), want, "{given}");
            assert_eq!(u.to_string().parse::<RemoteUrl>().unwrap(), u);
        }
    }

    #[test]
    fn hostile_remote_urls_are_refused() {
        for bad in [
            "",
            "ftp://b:8066",
            "file:///etc/passwd",
            "http://user@b:8066",
            "http://b:8066/mini_buildd/api",
            "http://b:8066?x=1",
            "http://b:99999",
            "http://b:0",
            "http://-b:8066",
            "http://b c:8066",
            "http://b;id:8066",
            "http://b\n:8066",
            "unix:path=/run/x",
            "tcp:port=8066",
            "http://fe80::1:8066",
        ] {
            assert!(bad.parse::<RemoteUrl>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn api_urls_encode_their_arguments() {
        let u: RemoteUrl = "http://b:8066".parse().unwrap();
        assert_eq!(u.api("status", &[]), "http://b:8066/mini_buildd/api/status/?output=json");
        let signed = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nHand Shake\n";
        let url = u.api("handshake", &[("signed_message", signed)]);
        assert!(url.starts_with("http://b:8066/mini_buildd/api/handshake/?signed_message=-----BEGIN+PGP"), "{url}");
        assert!(!url.contains('\n') && url.ends_with("&output=json"), "{url}");
    }

    #[test]
    fn ftp_urls() {
        assert_eq!("ftp://h:8067/".parse::<FtpUrl>().unwrap().to_string(), "ftp://h:8067");
        assert_eq!("ftp://h".parse::<FtpUrl>().unwrap().port, 21);
        assert_eq!("ftp://[::1]:8067".parse::<FtpUrl>().unwrap().authority(), "[::1]:8067");
        let tls = "ftps://h:8067".parse::<FtpUrl>().unwrap();
        assert!(tls.tls && tls.port == 8067 && tls.to_string() == "ftps://h:8067", "{tls:?}");
        assert!(!"ftp://h:8067".parse::<FtpUrl>().unwrap().tls);
        for bad in
            ["http://h:8067", "ftp://u@h:8067", "ftp://h:8067/incoming", "ftpss://h:8067", "ftp://h;x:1", "ftps://"]
        {
            assert!(bad.parse::<FtpUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn status_answers() {
        let s = RemoteStatus::parse(
            br#"{"version":"2.2.8","identity":"b","url":"http://b:8066","incoming_url":"ftp://b:8067","load":0.5,"chroots":["bookworm:amd64"],"remotes":["http://a:8066"],"extra":1}"#,
        )
        .unwrap();
        assert!(s.has_chroot(&"bookworm".parse().unwrap(), &"amd64".parse().unwrap()));
        assert!(!s.has_chroot(&"bookworm".parse().unwrap(), &"i386".parse().unwrap()));
        assert!(s.is_started());
        for bad in [&b"[]"[..], b"{}", b"{\"url\":1}", b"not json"] {
            assert!(RemoteStatus::parse(bad).is_err());
        }
    }

    #[test]
    fn equal_loads_take_turns() {
        let a = Builder::Remote("http://a:1".parse().unwrap());
        let b = Builder::Remote("http://b:1".parse().unwrap());
        let c = vec![(a.clone(), 0.5), (Builder::Local, 1.0), (b.clone(), 0.5)];
        assert_eq!(order(c.clone(), 0), vec![a.clone(), b.clone(), Builder::Local]);
        assert_eq!(order(c.clone(), 1), vec![b.clone(), a.clone(), Builder::Local]);
        assert_eq!(order(c.clone(), 2), vec![a.clone(), b.clone(), Builder::Local]);
        assert_eq!(order(vec![(b.clone(), 0.0), (a.clone(), 0.1)], 1), vec![b, a]);
        assert!(order(vec![], 3).is_empty());
    }
}
