//! The FTP drop box (libunftp): anonymous uploads into `/incoming`, nothing else.
//!
//! libunftp binds its own listener only from an address, so the daemon accepts on its socket
//! (systemd's `ftp` socket or its own) and hands each connection to `Server::service`; this
//! module builds the per-connection server. The storage back end refuses every read, delete,
//! rename and directory operation, writes each file under `.part/` and links it into place
//! only when the transfer ended within the limits, never over an existing name, then wakes the
//! incoming scan. Each file carries who sent it (an extended attribute). Every peer has a
//! quota of bytes waiting in incoming, all of them together another, and a reserve of free disk
//! is kept: a transfer past any of them is cut off with 552 and the reason.

use async_trait::async_trait;
use std::fmt::Debug;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use unftp_core::auth::DefaultUser;
use unftp_core::storage::{Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend};

/// FTP settings.
#[derive(Debug, Clone)]
pub struct FtpOptions {
    pub passive_ports: std::ops::RangeInclusive<u16>,
    /// FTPS: PEM certificate chain and key. Without them FTP is plain, as dput expects.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for FtpOptions {
    fn default() -> Self {
        FtpOptions { passive_ports: 49152..=49407, tls: None }
    }
}

/// How much may wait in incoming.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Bytes one peer may have in incoming (landed and in transfer).
    pub per_peer: u64,
    /// Bytes everyone may have in incoming.
    pub total: u64,
    /// Free bytes the file system keeps; a transfer stops before it.
    pub reserve: u64,
}

impl Default for Quota {
    fn default() -> Quota {
        Quota { per_peer: 8 << 30, total: 32 << 30, reserve: 1 << 30 }
    }
}

/// What every connection's back end shares.
pub struct DropBox {
    pub incoming: PathBuf,
    pub part: PathBuf,
    pub max_file: u64,
    pub quota: Quota,
    /// Called after a file landed in incoming.
    pub landed: Box<dyn Fn() + Send + Sync>,
    /// Bytes in transfer now, per peer.
    pub in_flight: std::sync::Mutex<std::collections::HashMap<IpAddr, u64>>,
}

impl DropBox {
    pub fn new(
        incoming: PathBuf,
        part: PathBuf,
        max_file: u64,
        quota: Quota,
        landed: Box<dyn Fn() + Send + Sync>,
    ) -> DropBox {
        DropBox { incoming, part, max_file, quota, landed, in_flight: Default::default() }
    }

    /// Bytes in incoming now: `peer`'s and everyone's.
    fn landed(&self, peer: IpAddr) -> (u64, u64) {
        let (mut mine, mut all) = (0u64, 0u64);
        if let Ok(rd) = std::fs::read_dir(&self.incoming) {
            for e in rd.flatten() {
                let Ok(m) = e.metadata() else { continue };
                if m.is_file() {
                    all += m.len();
                    if super::peer_of(&e.path()).is_some_and(|p| quota_key(p.ip) == peer) {
                        mine += m.len();
                    }
                }
            }
        }
        (mine, all)
    }

    /// Which limit a transfer of `peer` that has sent `sent` bytes passes now, if any: counted
    /// with everything in transfer now, so parallel transfers share their quota.
    fn over(&self, peer: IpAddr, sent: u64, landed: (u64, u64), check_disk: bool) -> Option<&'static str> {
        if sent > self.max_file {
            return Some("the file size limit");
        }
        let (flying_mine, flying_all) = {
            let flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            (flight.get(&peer).copied().unwrap_or(0), flight.values().sum::<u64>())
        };
        if landed.0 + flying_mine > self.quota.per_peer {
            return Some("this address's quota of bytes waiting in incoming");
        }
        if landed.1 + flying_all > self.quota.total {
            return Some("the quota of bytes waiting in incoming");
        }
        if check_disk {
            let free = crate::store::free_bytes(&self.incoming).unwrap_or(u64::MAX);
            if free < self.quota.reserve {
                return Some("the free disk the server keeps");
            }
        }
        None
    }

    fn flight(&self, peer: IpAddr, delta: i64) {
        let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let v = f.entry(peer).or_default();
        *v = if delta < 0 { v.saturating_sub(delta.unsigned_abs()) } else { v.saturating_add(delta as u64) };
        if *v == 0 {
            f.remove(&peer);
        }
    }
}

impl Debug for DropBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropBox").field("incoming", &self.incoming).field("max_file", &self.max_file).finish()
    }
}

static PART_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The per-connection storage back end: the shared drop box and the peer of this connection.
#[derive(Debug, Clone)]
pub struct Storage(Arc<DropBox>, IpAddr, super::Peer);

#[derive(Debug, Clone)]
pub struct Meta {
    dir: bool,
}

impl Metadata for Meta {
    fn len(&self) -> u64 {
        0
    }
    fn is_dir(&self) -> bool {
        self.dir
    }
    fn is_file(&self) -> bool {
        !self.dir
    }
    fn is_symlink(&self) -> bool {
        false
    }
    fn modified(&self) -> Result<SystemTime> {
        Ok(SystemTime::UNIX_EPOCH)
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
}

fn denied(what: &str) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!("{what} is not allowed: this server only takes uploads into /incoming"),
    )
}

/// Where a path points, lexically: `/`, `/incoming`, a file in `/incoming`, or elsewhere.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Root,
    Incoming,
    File(String),
    Outside,
}

fn target(path: &Path) -> Target {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => match p.to_str() {
                Some(s) => parts.push(s),
                None => return Target::Outside,
            },
            Component::ParentDir | Component::Prefix(_) => return Target::Outside,
        }
    }
    match parts.as_slice() {
        [] => Target::Root,
        ["incoming"] => Target::Incoming,
        ["incoming", name] => Target::File((*name).to_owned()),
        _ => Target::Outside,
    }
}

impl Storage {
    pub fn new(dropbox: Arc<DropBox>, peer: super::Peer) -> Storage {
        Storage(dropbox, quota_key(peer.ip), peer)
    }

    /// Copy into a fresh part file marked with the peer while every limit holds; Err (with
    /// the limit's name) as soon as one is passed.
    async fn receive<R: AsyncRead + Unpin>(&self, mut input: R, part: &Path) -> std::io::Result<u64> {
        let mut out = tokio::fs::OpenOptions::new().write(true).create_new(true).open(part).await?;
        let std_file = out.try_clone().await?.into_std().await;
        super::set_peer(&std_file, self.2)?;
        let landed = self.0.landed(self.1);
        if let Some(which) = self.0.over(self.1, 0, landed, true) {
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, which));
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut total: u64 = 0;
        loop {
            let n = input.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let before = total;
            total += n as u64;
            self.0.flight(self.1, n as i64);
            // The disk every 16 MiB; the quotas with every chunk.
            if let Some(which) = self.0.over(self.1, total, landed, before >> 24 != total >> 24) {
                return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, which));
            }
            out.write_all(&buf[..n]).await?;
        }
        out.sync_all().await?;
        Ok(total)
    }
}

#[async_trait]
impl StorageBackend<DefaultUser> for Storage {
    type Metadata = Meta;

    async fn metadata<P: AsRef<Path> + Send + Debug>(&self, _user: &DefaultUser, path: P) -> Result<Meta> {
        match target(path.as_ref()) {
            Target::Root | Target::Incoming => Ok(Meta { dir: true }),
            _ => Err(Error::from(ErrorKind::PermanentFileNotAvailable)),
        }
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, Meta>>> {
        match target(path.as_ref()) {
            // Other people's uploads are not listed.
            Target::Root => Ok(vec![Fileinfo { path: PathBuf::from("incoming"), metadata: Meta { dir: true } }]),
            Target::Incoming => Ok(vec![]),
            _ => Err(denied("listing")),
        }
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        _path: P,
        _start_pos: u64,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>> {
        Err(denied("downloading"))
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: tokio::io::AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        _user: &DefaultUser,
        input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64> {
        let Target::File(name) = target(path.as_ref()) else {
            return Err(Error::new(ErrorKind::PermissionDenied, "uploads go into /incoming only"));
        };
        if name.parse::<crate::deb::FileName>().is_err() {
            return Err(Error::from(ErrorKind::FileNameNotAllowedError));
        }
        if start_pos != 0 {
            return Err(Error::from(ErrorKind::CommandNotImplemented));
        }
        let dst = self.0.incoming.join(&name);
        if tokio::fs::symlink_metadata(&dst).await.is_ok() {
            return Err(Error::new(
                ErrorKind::FileNameNotAllowedError,
                format!(
                    "{name} is already in incoming; a name is never replaced (it is swept if it never becomes part of a complete upload)"
                ),
            ));
        }
        let seq = PART_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let part = self.0.part.join(format!("{name}.{}.{seq}", std::process::id()));
        let received = self.receive(input, &part).await;
        let sent = match &received {
            Ok(n) => *n,
            Err(_) => tokio::fs::metadata(&part).await.map_or(0, |m| m.len()),
        };
        let landed = match received {
            Ok(n) => {
                // A hard link never replaces a name (rename would).
                let linked = tokio::fs::hard_link(&part, &dst).await;
                let _ = tokio::fs::remove_file(&part).await;
                match linked {
                    Ok(()) => Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::new(
                        ErrorKind::FileNameNotAllowedError,
                        format!("{name} arrived in incoming meanwhile; a name is never replaced"),
                    )),
                    Err(e) => {
                        tracing::warn!(file = %name, "cannot move an upload into incoming: {e}");
                        Err(Error::from(ErrorKind::LocalError))
                    }
                }
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                if e.kind() == std::io::ErrorKind::FileTooLarge {
                    let which = e.to_string();
                    tracing::warn!(file = %name, peer = %self.1, "refused a transfer over {which}");
                    Err(Error::new(
                        ErrorKind::ExceededStorageAllocationError,
                        format!("{name}: the transfer passed {which}; try again when earlier uploads were processed"),
                    ))
                } else {
                    Err(Error::new(ErrorKind::ConnectionClosed, e))
                }
            }
        };
        self.0.flight(self.1, -(sent as i64));
        let n = landed?;
        tracing::debug!(file = %name, bytes = n, peer = %self.1, "received");
        (self.0.landed)();
        Ok(n)
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, _user: &DefaultUser, _path: P) -> Result<()> {
        Err(denied("deleting"))
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, _user: &DefaultUser, _path: P) -> Result<()> {
        Err(denied("creating directories"))
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(&self, _user: &DefaultUser, _from: P, _to: P) -> Result<()> {
        Err(denied("renaming"))
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, _user: &DefaultUser, _path: P) -> Result<()> {
        Err(denied("removing directories"))
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, _user: &DefaultUser, path: P) -> Result<()> {
        match target(path.as_ref()) {
            Target::Root | Target::Incoming => Ok(()),
            _ => Err(Error::from(ErrorKind::PermanentDirectoryNotAvailable)),
        }
    }
}

/// The address to bind FTP on beside HTTP's. libunftp answers PASV with IPv4 only and fails the
/// session when the control connection's local address is IPv6, which a dual-stack `[::]` socket
/// gives IPv4 clients too (`::ffff:a.b.c.d`): so an IPv6 wildcard or loopback becomes IPv4's.
pub fn bind_ip_beside(http: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match http {
        IpAddr::V6(a) if a == Ipv6Addr::UNSPECIFIED => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(a) if a == Ipv6Addr::LOCALHOST => IpAddr::V4(Ipv4Addr::LOCALHOST),
        other => other,
    }
}

/// What to tell the administrator about an FTP socket on an IPv6 address (see `bind_ip_beside`).
pub fn ipv6_warning(addr: std::net::SocketAddr) -> Option<String> {
    addr.is_ipv6().then(|| {
        format!(
            "FTP listens on {addr}, an IPv6 address: passive mode (PASV) works for IPv4 only, so uploads \
             over it fail; listen on an IPv4 address (ListenStream=0.0.0.0:8067, or --ftp 0.0.0.0:8067)"
        )
    })
}

/// The address a peer's quota and session count are kept by: IPv4 as it is, IPv6 by its /64.
fn quota_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

/// FTP sessions at once, and per peer address.
pub const MAX_SESSIONS: usize = 512;
pub const MAX_SESSIONS_PER_PEER: usize = 128;

/// Sessions per peer now.
static PER_PEER: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>> =
    std::sync::LazyLock::new(Default::default);

/// A session's place, given back when it ends.
struct SessionSlot(IpAddr, #[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut m = PER_PEER.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.0);
            }
        }
    }
}

/// Serve FTP on a listener until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dropbox: Arc<DropBox>,
    opts: FtpOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let sessions = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
    loop {
        let (stream, peer_addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, a)) => (s, a),
                Err(e) => {
                    tracing::warn!("FTP accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let peer = quota_key(peer_addr.ip());
        // Who owns the client's socket, when it is on this host (a build is not a local user).
        let uid = if peer_addr.ip().to_canonical().is_loopback() {
            stream.local_addr().ok().and_then(|l| super::socket_uid(peer_addr, l))
        } else {
            None
        };
        let who = super::Peer { ip: peer_addr.ip().to_canonical(), uid };
        // Past a bound the connection gets a 421 and is closed at once.
        let slot = {
            let mut m = PER_PEER.lock().unwrap_or_else(|p| p.into_inner());
            let mine = m.get(&peer).copied().unwrap_or(0);
            match sessions.clone().try_acquire_owned() {
                Ok(permit) if mine < MAX_SESSIONS_PER_PEER => {
                    *m.entry(peer).or_default() += 1;
                    Some(SessionSlot(peer, permit))
                }
                _ => None,
            }
        };
        let Some(slot) = slot else {
            use tokio::io::AsyncWriteExt;
            let mut stream = stream;
            tracing::warn!(%peer, "refused an FTP session: too many sessions");
            let _ = stream.write_all(b"421 Too many FTP sessions; try again later.\r\n").await;
            continue;
        };
        let db = dropbox.clone();
        let mut b = libunftp::ServerBuilder::new(Box::new(move || Storage::new(db.clone(), who)))
            .greeting("buildbay ready for uploads to /incoming")
            .passive_ports(opts.passive_ports.clone())
            .idle_session_timeout(600);
        if let Some((cert, key)) = &opts.tls {
            b = b.ftps(cert.clone(), key.clone());
        }
        match b.build() {
            Ok(server) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = server.service(stream).await {
                        tracing::debug!("FTP session ended with an error: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::error!("cannot start an FTP session: {e}; check --ftp-cert and --ftp-key");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ftp_binds_ipv4_beside_an_ipv6_wildcard_or_loopback() {
        use std::net::IpAddr;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(bind_ip_beside(ip("::")), ip("0.0.0.0"));
        assert_eq!(bind_ip_beside(ip("::1")), ip("127.0.0.1"));
        assert_eq!(bind_ip_beside(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(bind_ip_beside(ip("2001:db8::1")), ip("2001:db8::1"));
        assert!(ipv6_warning("[::]:8067".parse().unwrap()).is_some_and(|w| w.contains("0.0.0.0:8067")));
        assert!(ipv6_warning("0.0.0.0:8067".parse().unwrap()).is_none());
    }

    #[test]
    fn paths_resolve_lexically() {
        assert_eq!(target(Path::new("/")), Target::Root);
        assert_eq!(target(Path::new("/incoming")), Target::Incoming);
        assert_eq!(target(Path::new("/incoming/./")), Target::Incoming);
        assert_eq!(target(Path::new("/incoming/a.dsc")), Target::File("a.dsc".into()));
        assert_eq!(target(Path::new("/incoming/../etc/passwd")), Target::Outside);
        assert_eq!(target(Path::new("/incoming/../incoming/a")), Target::Outside);
        assert_eq!(target(Path::new("/etc/passwd")), Target::Outside);
        assert_eq!(target(Path::new("/incoming/sub/a")), Target::Outside);
        assert_eq!(target(Path::new("a")), Target::Outside);
    }
}
