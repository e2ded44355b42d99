//! OpenPGP with sequoia: the archive key, signing `Release`, verifying signed uploads.
//!
//! Every clear-signed text is framed strictly first ([`cleartext`]), and what a caller parses
//! is the payload that verification returned, never the raw file.

pub mod cleartext;

pub use openpgp::Cert;
use openpgp::cert::prelude::*;
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationHelper, VerifierBuilder,
};
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Message, Signer};
use openpgp::serialize::{Serialize, SerializeInto};
use sequoia_openpgp as openpgp;
use std::io::{Read, Write};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum GpgError {
    #[error("OpenPGP: {0}")]
    Pgp(#[from] anyhow::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the archive key has no usable signing key (expired or revoked?); regenerate it")]
    NoSigningKey,
    #[error("signature does not verify: {0}")]
    Bad(String),
    #[error("not an OpenPGP public key ({0}); paste the ASCII-armored key (gpg --armor --export)")]
    NotAKey(String),
    #[error("give exactly one OpenPGP key, not {0}")]
    NotOneKey(usize),
    #[error("{0}")]
    Framing(#[from] cleartext::FramingError),
    #[error("the text is not clear-signed; sign it (debsign, or gpg --clearsign)")]
    NotSigned,
}

/// Which public-key algorithm the archive key uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum KeyAlgo {
    /// RSA-4096, v4: verifiable by apt and gpgv on old releases too.
    #[default]
    Rsa4096,
    /// Ed25519, v4: small and fast; needs gpgv ≥ 2.1 on the consumer.
    Ed25519,
}

/// The instance's archive key (secret included).
#[derive(Clone)]
pub struct ArchiveKey {
    cert: Cert,
}

fn policy() -> StandardPolicy<'static> {
    StandardPolicy::new()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GpgError + '_ {
    move |source| GpgError::Io { path: path.display().to_string(), source }
}

impl ArchiveKey {
    pub fn generate(userid: &str, algo: KeyAlgo) -> Result<ArchiveKey, GpgError> {
        let suite = match algo {
            KeyAlgo::Rsa4096 => CipherSuite::RSA4k,
            KeyAlgo::Ed25519 => CipherSuite::Cv25519,
        };
        let (cert, _revocation) = CertBuilder::new()
            .add_userid(userid)
            .set_cipher_suite(suite)
            .set_profile(openpgp::Profile::RFC4880)?
            .add_signing_subkey()
            .generate()?;
        Ok(ArchiveKey { cert })
    }

    /// Write the secret key, armored, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), GpgError> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        self.cert.as_tsk().armored().serialize(&mut f)?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }

    pub fn load(path: &Path) -> Result<ArchiveKey, GpgError> {
        let data = std::fs::read(path).map_err(io_err(path))?;
        Ok(ArchiveKey { cert: Cert::from_bytes(&data)? })
    }

    /// The keys of a secret keyring (`gpg --export-secret-keys`) that can sign here: an
    /// unencrypted, alive, unrevoked signing key (another instance's archive key, taken over).
    pub fn from_secret_keyring(data: &[u8]) -> Result<Vec<ArchiveKey>, GpgError> {
        Ok(read_keyring(data)?.into_iter().map(|cert| ArchiveKey { cert }).filter(|k| k.keypair().is_ok()).collect())
    }

    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    pub fn cert(&self) -> &Cert {
        &self.cert
    }

    /// The public key, ASCII-armored (`pub_key`, apt `Signed-By: *.asc`).
    pub fn public_armored(&self) -> Result<String, GpgError> {
        let bytes = self.cert.armored().to_vec()?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The public key, binary (`gpgv --keyring`, apt `Signed-By: *.gpg`).
    pub fn public_binary(&self) -> Result<Vec<u8>, GpgError> {
        Ok(self.cert.to_vec()?)
    }

    fn keypair(&self) -> Result<openpgp::crypto::KeyPair, GpgError> {
        let p = policy();
        let key = self
            .cert
            .keys()
            .secret()
            .with_policy(&p, None)
            .supported()
            .alive()
            .revoked(false)
            .for_signing()
            .next()
            .ok_or(GpgError::NoSigningKey)?;
        Ok(key.key().clone().into_keypair()?)
    }

    /// Clear-sign (`InRelease`).
    pub fn clearsign(&self, data: &[u8]) -> Result<Vec<u8>, GpgError> {
        let mut out = Vec::new();
        let mut s = Signer::new(Message::new(&mut out), self.keypair()?)?.cleartext().build()?;
        s.write_all(data).map_err(|e| GpgError::Pgp(e.into()))?;
        s.finalize()?;
        Ok(out)
    }

    /// Armored detached signature (`Release.gpg`).
    pub fn detached_sign(&self, data: &[u8]) -> Result<Vec<u8>, GpgError> {
        let mut out = Vec::new();
        let m = Armorer::new(Message::new(&mut out)).kind(openpgp::armor::Kind::Signature).build()?;
        let mut s = Signer::new(m, self.keypair()?)?.detached().build()?;
        s.write_all(data).map_err(|e| GpgError::Pgp(e.into()))?;
        s.finalize()?;
        Ok(out)
    }
}

/// Read a keyring (binary or armored, one or more certificates).
pub fn read_keyring(data: &[u8]) -> Result<Vec<Cert>, GpgError> {
    Ok(CertParser::from_bytes(data)?.collect::<openpgp::Result<Vec<_>>>()?)
}

/// Public keys as one ASCII-armored keyring (one block; what apt reads from a
/// `trusted.gpg.d/*.asc`).
pub fn armored_keyring(certs: &[Cert]) -> Result<String, GpgError> {
    let mut out = Vec::new();
    let mut w = openpgp::armor::Writer::new(&mut out, openpgp::armor::Kind::PublicKey).map_err(anyhow::Error::from)?;
    for c in certs {
        c.serialize(&mut w)?;
    }
    w.finalize().map_err(anyhow::Error::from)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Public keys as one binary keyring (what gpgv reads with `--keyring`).
pub fn binary_keyring(certs: &[Cert]) -> Result<Vec<u8>, GpgError> {
    let mut out = Vec::new();
    for c in certs {
        c.serialize(&mut out)?;
    }
    Ok(out)
}

/// Exactly one public key (an uploader's), armored or binary.
pub fn one_key(data: &[u8]) -> Result<Cert, GpgError> {
    let mut certs = read_keyring(data).map_err(|e| GpgError::NotAKey(e.to_string()))?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        n => Err(GpgError::NotOneKey(n)),
    }
}

struct Helper<'a> {
    certs: &'a [Cert],
    /// Fingerprints of the certificate and of the (sub)key that made the good signature.
    signer: Option<(String, String)>,
}

/// Largest signed text verified, in bytes: more than any `.changes`, `.dsc` or build request.
pub const MAX_SIGNED: usize = 4 << 20;

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[openpgp::KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self.certs.to_vec())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        let mut errors = Vec::new();
        for layer in structure.into_iter() {
            if let MessageLayer::Compression { .. } | MessageLayer::Encryption { .. } = layer {
                return Err(anyhow::anyhow!(
                    "the message holds compressed or encrypted data; only clear-signed text is accepted"
                ));
            }
            if let MessageLayer::SignatureGroup { results } = layer {
                for r in results {
                    match r {
                        Ok(good) => {
                            self.signer =
                                Some((good.ka.cert().fingerprint().to_hex(), good.ka.key().fingerprint().to_hex()));
                            return Ok(());
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
        }
        Err(anyhow::anyhow!(if errors.is_empty() { "no signature".to_string() } else { errors.join("; ") }))
    }
}

/// What verification proved: the signed text (the only text to parse) and who signed it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub payload: String,
    /// The signer's certificate fingerprint.
    pub signer: String,
}

/// Verify a clear-signed message against a keyring; returns the payload and the signer's
/// fingerprint. The framing is checked strictly first (see [`cleartext`]).
pub fn verify_clearsigned(data: &[u8], certs: &[Cert]) -> Result<(Vec<u8>, String), GpgError> {
    verify_inner(data, certs).map(|(payload, (cert, _))| (payload, cert))
}

/// Verify a detached signature (a `Release.gpg`) over `data` against a keyring; returns the
/// signer's certificate fingerprint. Both are bounded by [`MAX_SIGNED`].
pub fn verify_detached(data: &[u8], signature: &[u8], certs: &[Cert]) -> Result<String, GpgError> {
    if data.len() > MAX_SIGNED || signature.len() > MAX_SIGNED {
        return Err(GpgError::Bad(format!("the signed text or its signature is larger than {MAX_SIGNED} bytes")));
    }
    let p = policy();
    let helper = Helper { certs, signer: None };
    let mut v = DetachedVerifierBuilder::from_bytes(signature)
        .map_err(|e| GpgError::Bad(format!("not a signature: {e}")))?
        .with_policy(&p, None, helper)
        .map_err(|e| GpgError::Bad(e.to_string()))?;
    v.verify_bytes(data).map_err(|e| GpgError::Bad(e.to_string()))?;
    v.into_helper().signer.map(|(cert, _)| cert).ok_or_else(|| GpgError::Bad("no good signature".into()))
}

/// A key that may sign now: valid under the policy, neither revoked nor expired.
pub fn usable(cert: &Cert) -> Result<(), GpgError> {
    use openpgp::types::RevocationStatus;
    let fp = cert.fingerprint().to_hex();
    let p = policy();
    let vc = cert.with_policy(&p, None).map_err(|e| GpgError::Bad(format!("key {fp} is not valid now: {e}")))?;
    if let RevocationStatus::Revoked(_) = vc.revocation_status() {
        return Err(GpgError::Bad(format!("key {fp} is revoked")));
    }
    vc.alive().map_err(|e| GpgError::Bad(format!("key {fp} has expired ({e})")))?;
    Ok(())
}

/// Verify a signed upload: a well-framed clear-signed text with a good signature, by a key that
/// is valid now, neither expired nor revoked. Returns the payload, which is what the caller
/// parses, and the signer.
pub fn verify_upload(data: &[u8], certs: &[Cert]) -> Result<Verified, GpgError> {
    use openpgp::types::RevocationStatus;
    let (payload, (cert_fp, key_fp)) = verify_inner(data, certs)?;
    let cert = certs
        .iter()
        .find(|c| c.fingerprint().to_hex() == cert_fp)
        .ok_or_else(|| GpgError::Bad(format!("key {cert_fp} is not in the keyring")))?;
    usable(cert)?;
    let p = policy();
    let vc = cert.with_policy(&p, None).map_err(|e| GpgError::Bad(format!("key {cert_fp} is not valid now: {e}")))?;
    let key = vc
        .keys()
        .find(|k| k.key().fingerprint().to_hex() == key_fp)
        .ok_or_else(|| GpgError::Bad(format!("signing key {key_fp} of {cert_fp} is not valid now")))?;
    if let RevocationStatus::Revoked(_) = key.revocation_status() {
        return Err(GpgError::Bad(format!("signing key {key_fp} of {cert_fp} is revoked")));
    }
    key.alive().map_err(|e| GpgError::Bad(format!("signing key {key_fp} of {cert_fp} has expired ({e})")))?;
    let payload = String::from_utf8(payload).map_err(|_| cleartext::FramingError::NotText)?;
    Ok(Verified { payload, signer: cert_fp })
}

fn verify_inner(data: &[u8], certs: &[Cert]) -> Result<(Vec<u8>, (String, String)), GpgError> {
    if data.len() > MAX_SIGNED {
        return Err(GpgError::Bad(format!("the signed text is larger than {MAX_SIGNED} bytes")));
    }
    let text = std::str::from_utf8(data).map_err(|_| cleartext::FramingError::NotText)?;
    let framed = match cleartext::frame(text)? {
        cleartext::Framed::Unsigned(_) => return Err(GpgError::NotSigned),
        cleartext::Framed::ClearSigned { text } => text,
    };
    let p = policy();
    let helper = Helper { certs, signer: None };
    let mut v = VerifierBuilder::from_bytes(data)
        .map_err(|e| GpgError::Bad(e.to_string()))?
        .with_policy(&p, None, helper)
        .map_err(|e| GpgError::Bad(e.to_string()))?;
    let mut payload = Vec::new();
    (&mut v).take(MAX_SIGNED as u64 + 1).read_to_end(&mut payload).map_err(|e| GpgError::Bad(e.to_string()))?;
    if !v.message_processed() {
        return Err(GpgError::Bad("the signed text was not read to its end".into()));
    }
    let signer = v.into_helper().signer.ok_or_else(|| GpgError::Bad("no good signature".into()))?;
    // What sequoia verified is what the frame holds (up to the trailing white space of each
    // line, which the signature does not cover and which is dropped here).
    if strip_trailing(&payload) != strip_trailing(framed.as_bytes()) {
        return Err(GpgError::Bad("the verified text differs from the file's text".into()));
    }
    Ok((payload, signer))
}

/// Each line without its trailing spaces and tabs, and without trailing empty lines.
fn strip_trailing(b: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = b
        .split(|&c| c == b'\n')
        .map(|l| {
            let end = l.iter().rposition(|&c| !matches!(c, b' ' | b'\t' | b'\r')).map_or(0, |i| i + 1);
            l[..end].to_vec()
        })
        .collect();
    while lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyrings_are_one_armored_block_of_every_key() {
        let a = ArchiveKey::generate("A <a@example.org>", KeyAlgo::Ed25519).unwrap();
        let b = ArchiveKey::generate("B <b@example.org>", KeyAlgo::Ed25519).unwrap();
        let text = armored_keyring(&[a.cert().clone(), b.cert().clone()]).unwrap();
        assert_eq!(text.matches("-----BEGIN PGP PUBLIC KEY BLOCK-----").count(), 1, "{text}");
        let read = read_keyring(text.as_bytes()).unwrap();
        assert!(read.iter().all(|c| !c.is_tsk()), "no secret key material");
        let fps: Vec<String> = read.iter().map(|c| c.fingerprint().to_hex()).collect();
        assert_eq!(fps, [a.fingerprint(), b.fingerprint()]);
    }

    #[test]
    fn sign_and_verify_roundtrip() {
        let key = ArchiveKey::generate("Test <t@example.org>", KeyAlgo::Ed25519).unwrap();
        let signed = key.clearsign(b"Origin: x\n").unwrap();
        let (payload, signer) = verify_clearsigned(&signed, std::slice::from_ref(key.cert())).unwrap();
        assert_eq!(payload, b"Origin: x\n");
        assert_eq!(signer, key.fingerprint());
        let tampered = String::from_utf8(signed).unwrap().replace("Origin: x", "Origin: y");
        assert!(verify_clearsigned(tampered.as_bytes(), std::slice::from_ref(key.cert())).is_err());
        let other = ArchiveKey::generate("Other <o@example.org>", KeyAlgo::Ed25519).unwrap();
        let signed = key.clearsign(b"a\n").unwrap();
        assert!(verify_clearsigned(&signed, std::slice::from_ref(other.cert())).is_err());
        assert!(key.detached_sign(b"x").unwrap().starts_with(b"-----BEGIN PGP SIGNATURE-----"));
        assert_eq!(read_keyring(&key.public_binary().unwrap()).unwrap().len(), 1);
    }

    #[test]
    fn only_a_clean_frame_verifies_and_its_payload_is_returned() {
        let key = ArchiveKey::generate("Test <t@example.org>", KeyAlgo::Ed25519).unwrap();
        let certs = std::slice::from_ref(key.cert());
        let signed = String::from_utf8(key.clearsign(b"Source: hello\n-dash\n").unwrap()).unwrap();
        let v = verify_upload(signed.as_bytes(), certs).unwrap();
        assert_eq!(v.payload, "Source: hello\n-dash\n");
        assert_eq!(v.signer, key.fingerprint());
        let wrapped: Vec<(String, &str)> = vec![
            (format!(" {signed}"), "space prefix"),
            (signed.lines().map(|l| format!("> {l}\n")).collect(), "quoted"),
            (signed.lines().map(|l| format!("| {l}\n")).collect(), "piped"),
            (format!("Source: evil\n\n{signed}"), "garbage before"),
            (format!("{signed}Source: evil\n"), "garbage after"),
            (format!("{signed}{signed}"), "two blocks"),
            (signed.replacen("\n\n", "\n\u{a0}\n", 1), "NBSP blank line"),
            (signed.replace("- -dash", "-dash"), "dash-escaping undone"),
        ];
        for (text, what) in wrapped {
            let e = verify_upload(text.as_bytes(), certs).expect_err(what);
            assert!(matches!(e, GpgError::Framing(_)), "{what}: {e}");
        }
        assert!(matches!(verify_upload(b"Source: hello\n", certs), Err(GpgError::NotSigned)));
    }
}
