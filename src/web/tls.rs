//! HTTPS: the TLS side of the web server (rustls with the ring provider). The certificate chain
//! and key come from PEM files and are read again when either changes (a renewal needs no
//! restart); a renewal that does not load keeps the previous pair and says why in the log.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often a handshake may look at the files' times.
const RECHECK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {reason}; give a PEM certificate chain (--tls-cert)")]
    Cert { path: PathBuf, reason: String },
    #[error("TLS key {path}: {reason}; give the PEM private key of the certificate (--tls-key)")]
    Key { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// What identifies a version of a file: its modification time, size and inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
}

#[derive(Debug)]
struct Loaded {
    checked: Instant,
    stamps: (Stamp, Stamp),
    key: Arc<CertifiedKey>,
}

/// The certificate resolver that reloads its files.
#[derive(Debug)]
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl Reloading {
    pub fn new(cert: &Path, key: &Path) -> Result<Reloading, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamps = (stamp(cert), stamp(key));
        let loaded = load(cert, key, &provider)?;
        Ok(Reloading {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            loaded: Mutex::new(Loaded { checked: Instant::now(), stamps, key: Arc::new(loaded) }),
        })
    }

    /// The pair to hand out now, read again first when a file changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut l = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if l.checked.elapsed() >= RECHECK {
            l.checked = Instant::now();
            let stamps = (stamp(&self.cert), stamp(&self.key));
            if stamps != l.stamps {
                l.stamps = stamps;
                match load(&self.cert, &self.key, &self.provider) {
                    Ok(k) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                        l.key = Arc::new(k);
                    }
                    Err(e) => tracing::warn!("TLS certificate not reloaded, the previous one stays: {e}"),
                }
            }
        }
        l.key.clone()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load(cert: &Path, key: &Path, provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let bad_cert = |reason: String| TlsError::Cert { path: cert.to_owned(), reason };
    let bad_key = |reason: String| TlsError::Key { path: key.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad_cert(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad_cert(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad_cert("no certificate in it".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad_key(e.to_string()))?;
    let signing = provider.key_provider.load_private_key(der).map_err(|e| bad_key(e.to_string()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| bad_key(format!("it is not the certificate's key ({e})")))?;
    Ok(pair)
}

/// The acceptor of the HTTPS listener: TLS 1.2 and 1.3, HTTP/1.1.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let resolver = Reloading::new(cert, key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(resolver.provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
