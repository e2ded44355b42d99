//! One buildbay instance on its state directory: opens the store, owns the archive key, and runs
//! the configuration objects' lifecycle actions (prepare, check, activate) that touch the world.

use crate::archive::{Archive, ArchiveError};
use crate::chroot::Chroot;
use crate::config::{self, ArchOption, Daemon, Distribution, LayoutObject, Repository, Source, Status, kind};
use crate::deb::{Arch, Codename, Component, Identity, RepoId};
use crate::gpg::{ArchiveKey, GpgError, KeyAlgo};
use crate::layout::{self, Layout};
use crate::sources::{self, ArchiveUrl};
use crate::store::{self, CONFIG, ConfigObject, Store, StoreError};
use redb::ReadableTable;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("archive key: {0}")]
    Gpg(#[from] GpgError),
    #[error("the daemon is not prepared yet (no archive key); run `buildbay setup --identity <name> ...` first")]
    NotSetUp,
    #[error("setup: {0}")]
    Setup(String),
    /// A configuration action that cannot be done, and why.
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Lifecycle(#[from] config::LifecycleError),
}

crate::from_redb_errors!(InstanceError);

pub type Result<T> = std::result::Result<T, InstanceError>;

pub struct Instance {
    pub store: Store,
    key: std::sync::OnceLock<ArchiveKey>,
    archive_writer: std::sync::Mutex<()>,
    /// This instance's URL as its remotes reach it (`http://host:port`), set by the daemon: a
    /// remote's check looks for it in the remote's `status.remotes`.
    public_url: std::sync::OnceLock<crate::protocol::remote::RemoteUrl>,
    /// Our clear-signed handshake message, signed once (anyone may ask for it).
    handshake: std::sync::OnceLock<String>,
}

/// mini-buildd's `setup --update` and `--pca`: never (empty), `all`, or the objects whose
/// identity hashes (as an earlier run reported them) are listed, comma-separated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selection {
    Never,
    #[default]
    All,
    Hashes(std::collections::BTreeSet<String>),
}

impl Selection {
    pub fn parse(s: &str) -> Selection {
        match s.trim() {
            "" => Selection::Never,
            "all" => Selection::All,
            list => Selection::Hashes(
                list.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect(),
            ),
        }
    }

    pub fn selects(&self, kind: &str, id: &str) -> bool {
        match self {
            Selection::Never => false,
            Selection::All => true,
            Selection::Hashes(h) => h.contains(&identity_hash(kind, id)),
        }
    }
}

/// mini-buildd's `identity_hash` of a setup instance: the SHA-256 of its identity as JSON with
/// sorted keys, `{"class": "<class 'mini_buildd.models.<Model>'>", "identifiers": {"id": "'<id>'"}}`
/// (stable for an object of this instance; `--update` and `--pca` select by it).
pub fn identity_hash(kind: &str, id: &str) -> String {
    use sha2::Digest;
    let model = match kind {
        kind::APTKEY => "AptKey".to_owned(),
        kind::PRIORITYSOURCE => "PrioritySource".to_owned(),
        other => {
            let mut c = other.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        }
    };
    // Python's `json.dumps(…, sort_keys=True)`: ", " and ": " between items.
    let string = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let identity = format!(
        "{{\"class\": {}, \"identifiers\": {{\"id\": {}}}}}",
        string(&format!("<class 'mini_buildd.models.{model}'>")),
        string(&format!("'{id}'"))
    );
    hex::encode(sha2::Sha256::digest(identity.as_bytes()))
}

/// What `setup` asks for (mini-buildd's `setup` option names).
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// Which objects are created or changed (`--update`; the offline command: all).
    pub update: Selection,
    /// Which objects are prepared, checked and activated (`--pca`; the offline command: all).
    pub pca: Selection,
    pub identity: Option<Identity>,
    /// The releases' `Origin`: `buildbay`, `mini-buildd` (mini-buildd's form), or the text.
    pub archive_origin: Option<String>,
    /// `codename:arch0+arch1[:sbuild|nspawn|nspawn+network]`.
    pub distributions: Vec<String>,
    /// `id:layout:codename0+codename1`.
    pub repositories: Vec<String>,
    /// `codename:arch`: chroots to prepare (minutes each, the first time).
    pub chroots: Vec<String>,
    /// Archive URLs to add.
    pub archives: Vec<String>,
    /// Add the archives of this host's apt sources.
    pub archives_from_apt_sources: bool,
    /// Sources as `Origin:codename`, e.g. `Debian:bookworm-backports`.
    pub sources: Vec<String>,
    /// Origins (`Debian`, `Ubuntu`) whose keys (from the host's keyring package), main archive
    /// and current releases to add.
    pub from_origins: Vec<String>,
    /// mini-buildd's `--archives-from-origins` and `--sources-from-origins`: with either, the
    /// origins add only what is asked; with neither, both.
    pub archives_from_origins: bool,
    pub sources_from_origins: bool,
    /// Add the origins' archives through an apt-cacher-ng on this host (port 3142).
    pub archives_from_proxy: bool,
    /// mini-buildd's `--distributions-from-sources` and `--chroots-from-sources`: one for each
    /// release codename among the sources, for this host's architecture.
    pub distributions_from_sources: bool,
    pub chroots_from_sources: bool,
    /// mini-buildd's `--repositories-from-distributions`: `id[:layout]`, each over the
    /// codenames of this setup's distributions.
    pub repositories_from_distributions: Vec<String>,
    pub key_algo: KeyAlgo,
    /// Remotes to add (`http://host:port`, or mini-buildd's `tcp:host=H:port=P`): their key
    /// imported, then checked (a handshake both ways) and activated.
    pub remotes: Vec<String>,
    /// Where chroot images and schroot configs go.
    pub places: crate::chroot::Places,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupItem {
    pub kind: &'static str,
    pub id: String,
    /// mini-buildd's `identity_hash` (see [`identity_hash`]): what `--update` and `--pca` take.
    pub identity_hash: String,
    /// mini-buildd's `diff` of a CHANGED object: `{"setup": {"fields", "diff": {field: {"current",
    /// "target"}}}, "model": …}`, the fields setup sets and how they differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<serde_json::Value>,
    /// MISSING → created, EXISTS (unchanged), CHANGED (updated), ACTIVE after PCA, FAILED.
    pub status: String,
    pub message: Option<String>,
}

impl SetupItem {
    fn new(kind: &'static str, id: &str, status: &str, message: Option<String>) -> SetupItem {
        SetupItem {
            kind,
            id: id.to_owned(),
            identity_hash: identity_hash(kind, id),
            status: status.to_owned(),
            message,
            diff: None,
        }
    }

    /// A CHANGED object, with what setup changes in it (`(field, current, target)`).
    fn changed(kind: &'static str, id: &str, fields: &[(&str, String, String)]) -> SetupItem {
        let diff: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .filter(|(_, current, target)| current != target)
            .map(|(f, current, target)| (f.to_string(), serde_json::json!({"current": current, "target": target})))
            .collect();
        let names: Vec<&str> = fields.iter().map(|(f, _, _)| *f).collect();
        SetupItem {
            diff: Some(serde_json::json!({
                "setup": {"fields": names, "diff": diff},
                "model": {"fields": [], "diff": {}},
            })),
            ..SetupItem::new(kind, id, "CHANGED", None)
        }
    }
}

impl Instance {
    pub fn key_path(state: &Path) -> PathBuf {
        state.join("gnupg").join("archive-key.asc")
    }

    pub fn open(state: &Path) -> Result<Instance> {
        let store = Store::open(state)?;
        let tx = store.write()?;
        {
            let mut t = tx.open_table(CONFIG)?;
            for l in Layout::builtins() {
                if t.get((kind::LAYOUT, l.name.as_str()))?.is_none() {
                    let mut status = Status::default();
                    status.prepared();
                    status.checked(Ok(()), chrono::Utc::now());
                    status.activate(&l.name)?;
                    let obj = LayoutObject { layout: l.clone(), status };
                    t.insert((kind::LAYOUT, l.name.as_str()), store::encode(&obj).as_slice())?;
                }
            }
        }
        tx.commit()?;
        let key_path = Instance::key_path(state);
        let key = std::sync::OnceLock::new();
        if key_path.exists() {
            let _ = key.set(ArchiveKey::load(&key_path)?);
        }
        Ok(Instance {
            store,
            key,
            archive_writer: std::sync::Mutex::new(()),
            public_url: std::sync::OnceLock::new(),
            handshake: std::sync::OnceLock::new(),
        })
    }

    pub fn key(&self) -> Result<&ArchiveKey> {
        self.key.get().ok_or(InstanceError::NotSetUp)
    }

    pub fn daemon(&self) -> Result<Option<Daemon>> {
        self.get("1")
    }

    pub fn get<T: ConfigObject>(&self, id: &str) -> Result<Option<T>> {
        let r = self.store.read()?;
        Ok(store::get_config(&r.open_table(CONFIG)?, id)?)
    }

    pub fn list<T: ConfigObject>(&self) -> Result<Vec<T>> {
        let r = self.store.read()?;
        Ok(store::list_config(&r.open_table(CONFIG)?)?)
    }

    /// Store an object as it is (no checks: [`Instance::save_object`] checks a user's edit).
    pub fn put<T: ConfigObject>(&self, id: &str, obj: &T) -> Result<()> {
        self.put_kind(T::KIND, id, obj)
    }

    fn put_kind<T: Serialize>(&self, k: &str, id: &str, obj: &T) -> Result<()> {
        let tx = self.store.write()?;
        tx.open_table(CONFIG)?.insert((k, id), store::encode(obj).as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub fn delete<T: ConfigObject>(&self, id: &str) -> Result<()> {
        self.delete_kind(T::KIND, id)
    }

    fn delete_kind(&self, k: &str, id: &str) -> Result<()> {
        let tx = self.store.write()?;
        tx.open_table(CONFIG)?.remove((k, id))?;
        tx.commit()?;
        Ok(())
    }

    pub fn archive(&self) -> Result<Archive<'_>> {
        let origin = self.daemon()?.ok_or(InstanceError::NotSetUp)?.archive_origin();
        Ok(Archive::new(&self.store, self.key()?, origin, &self.archive_writer))
    }

    /// The armored public archive key.
    pub fn pub_key(&self) -> Result<String> {
        Ok(self.key()?.public_armored()?)
    }

    /// Set this instance's URL as remotes reach it (once, by the daemon).
    pub fn set_public_url(&self, url: crate::protocol::remote::RemoteUrl) {
        let _ = self.public_url.set(url);
    }

    pub fn public_url(&self) -> Option<&crate::protocol::remote::RemoteUrl> {
        self.public_url.get()
    }

    /// The remotes that take part: active, or failed while active and armed to come back
    /// (mini-buildd's "active or auto-reactivating").
    pub fn remotes(&self) -> Result<Vec<config::Remote>> {
        Ok(self
            .list::<config::Remote>()?
            .into_iter()
            .filter(|r| r.status.is_active() || r.status.checked == config::Checked::Reactivate)
            .filter(|r| !r.key.is_empty())
            .collect())
    }

    /// The remotes whose keys are trusted: active, or armed to come back after a check with
    /// their current key once passed (a key only imported is not trusted yet).
    pub fn trusted_remotes(&self) -> Result<Vec<config::Remote>> {
        Ok(self.remotes()?.into_iter().filter(|r| r.status.is_active() || r.verified).collect())
    }

    /// The remotes a dispatch may hand requests to.
    pub fn active_remotes(&self) -> Result<Vec<config::Remote>> {
        Ok(self.remotes()?.into_iter().filter(|r| r.status.is_active()).collect())
    }

    /// mini-buildd's RemotesKeyring: our own key and the keys of the trusted remotes. Build
    /// requests a builder takes and build results a packager takes verify against it.
    pub fn remotes_keyring(&self) -> Result<Vec<sequoia_openpgp::Cert>> {
        let mut certs = vec![self.key()?.cert().clone()];
        for r in self.trusted_remotes()? {
            match crate::gpg::one_key(r.key.as_bytes()) {
                Ok(c) => certs.push(c),
                Err(e) => tracing::warn!(remote = %r.http, "the remote's key does not parse: {e}"),
            }
        }
        Ok(certs)
    }

    /// Where the daemon leaves the remotes' keys for the root helper, which verifies a remote's
    /// build request itself (beside the archive key, below the state directory).
    pub const REMOTES_KEYRING: &'static str = "gnupg/remotes-keyring.asc";

    /// Write the keys of the remotes that take part to [`Instance::REMOTES_KEYRING`].
    pub fn write_remotes_keyring(&self) -> Result<()> {
        let own = self.key()?.cert().fingerprint();
        let certs: Vec<_> = self.remotes_keyring()?.into_iter().filter(|c| c.fingerprint() != own).collect();
        let path = self.store.dir().join(Self::REMOTES_KEYRING);
        let text = crate::gpg::armored_keyring(&certs)?;
        store::write_file_synced(&path, text.as_bytes())
            .map_err(|e| InstanceError::Setup(format!("{}: {e}", path.display())))
    }

    /// The `handshake` call: a message clear-signed by one of our remotes' keys (any status,
    /// as mini-buildd tries them all) is answered with our own clear-signed handshake message.
    pub fn answer_handshake(&self, signed: &str) -> Result<String> {
        let remotes = self.list::<config::Remote>()?;
        let certs: Vec<sequoia_openpgp::Cert> =
            remotes.iter().filter_map(|r| crate::gpg::one_key(r.key.as_bytes()).ok()).collect();
        if certs.is_empty() {
            return Err(InstanceError::Config(
                "GnuPG handshake failed: this instance has no remotes; add the calling instance as a remote first"
                    .into(),
            ));
        }
        crate::gpg::verify_clearsigned(signed.as_bytes(), &certs).map_err(|e| {
            InstanceError::Config(format!("GnuPG handshake failed: no remote's key made this signature ({e}); add the calling instance as a remote and prepare it"))
        })?;
        self.signed_handshake()
    }

    /// Our clear-signed handshake message (signed once).
    fn signed_handshake(&self) -> Result<String> {
        use crate::protocol::remote::HANDSHAKE_MESSAGE;
        if let Some(s) = self.handshake.get() {
            return Ok(s.clone());
        }
        let signed = self.key()?.clearsign(format!("{HANDSHAKE_MESSAGE}\n").as_bytes())?;
        let signed =
            String::from_utf8(signed).map_err(|e| InstanceError::Config(format!("our signed handshake: {e}")))?;
        Ok(self.handshake.get_or_init(|| signed).clone())
    }

    /// Remote prepare: read its `status` (waking it if it has a wake command), import its key.
    fn prepare_remote(&self, r: &mut config::Remote) -> std::result::Result<(), String> {
        crate::remote::wake(&r.http, &r.wake_command, std::time::Duration::from_secs(5), 2)
            .map_err(|e| e.to_string())?;
        let key = crate::remote::pub_key(&r.http).map_err(|e| e.to_string())?;
        let cert = crate::gpg::one_key(key.as_bytes()).map_err(|e| format!("the key {} sent: {e}", r.http))?;
        crate::gpg::usable(&cert).map_err(|e| format!("the key {} sent: {e}", r.http))?;
        if self.key().is_ok_and(|k| k.cert().fingerprint() == cert.fingerprint()) {
            return Err(format!("{} is this instance itself (it has our key); a remote is another instance", r.http));
        }
        if r.key_fingerprint != cert.fingerprint().to_hex() {
            r.verified = false;
        }
        r.key_fingerprint = cert.fingerprint().to_hex();
        r.key = key;
        tracing::warn!(remote = %r.http, fingerprint = %r.key_fingerprint, "imported the remote's key from its pub_key call: verify this fingerprint with the remote's administrator before you activate it");
        Ok(())
    }

    /// Remote check: a signed handshake both ways, our URL among its remotes, and it started.
    fn check_remote(&self, r: &mut config::Remote) -> std::result::Result<(), String> {
        let cert = crate::gpg::one_key(r.key.as_bytes()).map_err(|e| format!("its key: {e}; prepare it again"))?;
        let status = crate::remote::wake(&r.http, &r.wake_command, std::time::Duration::from_secs(5), 2)
            .map_err(|e| e.to_string())?;
        let signed = self.signed_handshake().map_err(|e| e.to_string())?;
        let answer = crate::remote::handshake(&r.http, &signed).map_err(|e| e.to_string())?;
        crate::gpg::verify_clearsigned(answer.as_bytes(), std::slice::from_ref(&cert))
            .map_err(|e| format!("its handshake answer is not signed by its key {}: {e}", r.key_fingerprint))?;
        let ours = self.public_url().ok_or(
            "this instance's URL is not known offline; check the remote while the daemon runs (the configuration page, or `buildbay api config_action`)",
        )?;
        if !status.remotes.iter().any(|u| u.parse::<crate::protocol::remote::RemoteUrl>().is_ok_and(|u| &u == ours)) {
            r.last_status = Some(status);
            return Err(format!(
                "our instance ({ours}) is not activated on the remote; add it there as a remote and activate it, then check again"
            ));
        }
        if !status.is_started() {
            r.last_status = Some(status);
            return Err("the remote is stopped (load -1); start it, then check again".into());
        }
        r.last_status = Some(status);
        r.verified = true;
        Ok(())
    }

    /// Publish again the repositories' distributions whose `Origin` is not the daemon's now.
    fn refresh_origins(&self) -> Result<()> {
        let archive = self.archive()?;
        for r in self.list::<Repository>()?.iter().filter(|r| r.status.state != config::State::Removed) {
            archive.refresh_origin(&r.identity)?;
        }
        Ok(())
    }

    /// Take over another instance's archive key (an import), so its clients keep trusting the
    /// repositories. Refused when this instance has a key already.
    pub fn adopt_key(&self, key: ArchiveKey) -> Result<()> {
        let path = Instance::key_path(self.store.dir());
        if self.key.get().is_some() || path.exists() {
            return Err(InstanceError::Setup(format!(
                "this state directory has an archive key already ({}); import into a new state directory",
                path.display()
            )));
        }
        private_dir(&path)?;
        key.save(&path)?;
        let _ = self.key.set(key);
        Ok(())
    }

    /// Daemon prepare: generate the archive key once; never regenerate it.
    fn prepare_daemon(&self, d: &mut Daemon) -> Result<()> {
        if self.key.get().is_none() {
            let path = Instance::key_path(self.store.dir());
            private_dir(&path)?;
            let key = ArchiveKey::generate(&format!("{} <buildbay@{}>", d.archive_origin(), d.identity), d.key_algo)?;
            key.save(&path)?;
            tracing::info!(fingerprint = %key.fingerprint(), "generated archive key");
            let _ = self.key.set(key);
        }
        d.key_fingerprint = self.key.get().map(|k| k.fingerprint());
        d.status.prepared();
        Ok(())
    }

    /// Declaratively create or update objects, then prepare, check and activate them.
    pub fn setup(&self, opts: &SetupOptions) -> Result<Vec<SetupItem>> {
        let expanded = opts.expand(host_arch()).map_err(InstanceError::Setup)?;
        let opts = &expanded;
        let mut report = Vec::new();
        let now = chrono::Utc::now();
        let item = SetupItem::new;

        // Daemon.
        let stored_daemon = self.daemon()?;
        let mut daemon = match stored_daemon.clone() {
            Some(d) => d,
            None => {
                let identity = match &opts.identity {
                    Some(i) => i.clone(),
                    None => default_identity(),
                };
                report.push(item(kind::DAEMON, identity.as_str(), "MISSING", None));
                Daemon {
                    identity,
                    custom_archive_origin: None,
                    key_algo: opts.key_algo,
                    key_fingerprint: None,
                    mail: Default::default(),
                    status: Status::default(),
                }
            }
        };
        if let Some(i) = &opts.identity
            && &daemon.identity != i
        {
            report.push(SetupItem::changed(
                kind::DAEMON,
                i.as_str(),
                &[("identity", daemon.identity.to_string(), i.to_string())],
            ));
            daemon.identity = i.clone();
            daemon.status.changed();
        }
        if let Some(choice) = &opts.archive_origin {
            let before = daemon.custom_archive_origin.clone();
            daemon
                .set_archive_origin(choice, &host_fqdn())
                .map_err(|e| InstanceError::Setup(format!("--archive-origin: {e}")))?;
            if daemon.custom_archive_origin != before {
                report.push(SetupItem::changed(
                    kind::DAEMON,
                    daemon.identity.as_str(),
                    &[(
                        "custom_archive_origin",
                        before.unwrap_or_default(),
                        daemon.custom_archive_origin.clone().unwrap_or_default(),
                    )],
                ));
            }
        }
        let did = daemon.identity.to_string();
        let update = opts.update.selects(kind::DAEMON, &did);
        if !update && let Some(d) = &stored_daemon {
            daemon = d.clone();
        }
        let pca = opts.pca.selects(kind::DAEMON, &did);
        if update || (pca && stored_daemon.is_some()) {
            if pca {
                self.prepare_daemon(&mut daemon)?;
                let check = self.key()?.clearsign(b"check\n").map(|_| ()).map_err(|e| e.to_string());
                daemon.status.checked(check, now);
                daemon.status.activate("daemon")?;
            }
            self.put("1", &daemon)?;
            if self.key.get().is_some() {
                self.refresh_origins()?;
            }
        }

        // Origins: their keys, main archive and releases.
        let mut archives: Vec<ArchiveUrl> = Vec::new();
        let mut source_specs: Vec<(String, crate::deb::ArchiveSuite)> = Vec::new();
        let (origin_archives, origin_sources) = opts.origin_parts();
        if opts.archives_from_proxy && !proxy_answers() {
            return Err(InstanceError::Setup(format!(
                "--archives-from-proxy: no apt-cacher-ng answers on {PROXY}; install and start apt-cacher-ng, or give --archives"
            )));
        }
        for name in &opts.from_origins {
            let o = sources::origin(name).map_err(|e| InstanceError::Setup(e.to_string()))?;
            if origin_archives {
                archives.push(o.archive.parse().map_err(InstanceError::Setup)?);
            }
            if opts.archives_from_proxy {
                archives.push(proxied(o.archive).parse().map_err(InstanceError::Setup)?);
            }
            if origin_sources {
                for r in o.releases {
                    source_specs.push((
                        o.name.to_owned(),
                        r.parse().map_err(|e: crate::deb::names::NameError| InstanceError::Setup(e.to_string()))?,
                    ));
                }
            }
        }
        // Archives.
        for a in &opts.archives {
            archives.push(a.parse().map_err(InstanceError::Setup)?);
        }
        if opts.archives_from_apt_sources {
            let found = sources::host_archives(Path::new("/etc/apt"));
            if found.is_empty() {
                return Err(InstanceError::Setup(
                    "--archives-from-apt-sources: this host's apt sources name no http(s) archive; give --archives URL"
                        .into(),
                ));
            }
            archives.extend(found);
        }
        for url in archives {
            self.setup_object(opts, config::Object::Archive(config::Archive::new(url)), &mut report)?;
        }
        // Sources.
        for spec in &opts.sources {
            let bad = |why: String| {
                InstanceError::Setup(format!(
                    "source {spec:?}: {why}; use Origin:codename, e.g. Debian:bookworm-backports"
                ))
            };
            // mini-buildd's bare codename (`bookworm`, `bookworm-backports`): its origin is known.
            let (origin, codename) = spec.split_once(':').unwrap_or((bare_origin(spec), spec));
            sources::valid_origin(origin).map_err(bad)?;
            source_specs.push((
                origin.to_owned(),
                codename.parse().map_err(|e: crate::deb::names::NameError| bad(e.to_string()))?,
            ));
        }
        for (origin, codename) in &source_specs {
            self.setup_source(opts, origin, codename, &mut report)?;
        }

        // Distributions (each with its base source).
        for spec in &opts.distributions {
            let (codename, arches) = spec.split_once(':').ok_or_else(|| {
                InstanceError::Setup(format!(
                    "distribution {spec:?}: use codename:arch0+arch1[:sbuild|nspawn|nspawn+network], e.g. bookworm:amd64"
                ))
            })?;
            let (arches, backend) = arches.split_once(':').unwrap_or((arches, "sbuild"));
            let (backend, build_network) = match backend.strip_suffix("+network") {
                Some(b) => (b, true),
                None => (backend, false),
            };
            let build_backend: crate::config::BuildBackend =
                backend.parse().map_err(|e| InstanceError::Setup(format!("distribution {spec:?}: {e}")))?;
            if build_network && build_backend != crate::config::BuildBackend::Nspawn {
                return Err(InstanceError::Setup(format!(
                    "distribution {spec:?}: +network applies to the nspawn backend only (sbuild's builds have the network)"
                )));
            }
            let codename: Codename =
                codename.parse().map_err(|e: crate::deb::names::NameError| InstanceError::Setup(e.to_string()))?;
            let arches: Vec<Arch> = arches
                .split('+')
                .map(|a| a.parse::<Arch>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| InstanceError::Setup(format!("distribution {spec:?}: {e}")))?;
            if arches.is_empty() || arches.iter().any(Arch::is_all) {
                return Err(InstanceError::Setup(format!(
                    "distribution {spec:?}: list real architectures, e.g. amd64+i386"
                )));
            }
            let origin = layout::known_release(&codename).map_or("Debian", |(o, _)| o);
            let suite: crate::deb::ArchiveSuite =
                codename.as_str().parse().map_err(|e: crate::deb::names::NameError| {
                    InstanceError::Setup(format!("distribution {spec:?}: {e}"))
                })?;
            // A selected distribution brings its base source along.
            let source_opts = SetupOptions {
                update: if opts.update.selects(kind::DISTRIBUTION, codename.as_str()) {
                    Selection::All
                } else {
                    opts.update.clone()
                },
                pca: if opts.pca.selects(kind::DISTRIBUTION, codename.as_str()) {
                    Selection::All
                } else {
                    opts.pca.clone()
                },
                ..opts.clone()
            };
            let sid = self.setup_source(&source_opts, origin, &suite, &mut report)?;
            let main: Component = "main".parse().expect("valid");

            let wanted: Vec<ArchOption> = arches
                .iter()
                .enumerate()
                .map(|(i, a)| ArchOption { arch: a.clone(), optional: false, build_architecture_all: i == 0 })
                .collect();
            let dist = match self.get::<Distribution>(codename.as_str())? {
                Some(mut d) => {
                    if d.architectures != wanted || d.build_backend != build_backend || d.build_network != build_network
                    {
                        let arches =
                            |a: &[ArchOption]| a.iter().map(|o| o.arch.to_string()).collect::<Vec<_>>().join("+");
                        report.push(SetupItem::changed(
                            kind::DISTRIBUTION,
                            codename.as_str(),
                            &[
                                ("architectures", arches(&d.architectures), arches(&wanted)),
                                ("build_backend", format!("{:?}", d.build_backend), format!("{build_backend:?}")),
                                ("build_network", d.build_network.to_string(), build_network.to_string()),
                            ],
                        ));
                        d.architectures = wanted;
                        d.build_backend = build_backend;
                        d.build_network = build_network;
                        d.status.changed();
                    }
                    d
                }
                None => {
                    report.push(item(kind::DISTRIBUTION, codename.as_str(), "MISSING", None));
                    Distribution {
                        codename: codename.clone(),
                        base_source: sid,
                        architectures: wanted,
                        components: vec![main],
                        status: Status::default(),
                        build_backend,
                        build_network,
                        extra_sources: vec![],
                        build: Default::default(),
                    }
                }
            };
            if !opts.update.selects(kind::DISTRIBUTION, codename.as_str()) {
                // Not changed; still prepared, checked and activated when --pca selects it.
                if self.get::<Distribution>(codename.as_str())?.is_some() {
                    self.setup_pca(opts, config::Kind::Distribution, codename.as_str(), &mut report)?;
                }
                continue;
            }
            self.put(codename.as_str(), &dist)?;
            self.setup_pca(opts, config::Kind::Distribution, codename.as_str(), &mut report)?;
        }

        // Repositories.
        for spec in &opts.repositories {
            let parts: Vec<&str> = spec.splitn(3, ':').collect();
            let [id, layout_name, codenames] = parts[..] else {
                return Err(InstanceError::Setup(format!(
                    "repository {spec:?}: use id:layout:codename0+codename1, e.g. test:Default:bookworm"
                )));
            };
            let id: RepoId =
                id.parse().map_err(|e: crate::deb::names::NameError| InstanceError::Setup(e.to_string()))?;
            let layout_name =
                if layout_name.is_empty() && id.as_str() == "debdev" { "Debian Developer" } else { layout_name };
            let layout_name = if layout_name.is_empty() { "Default" } else { layout_name };
            if self.get::<LayoutObject>(layout_name)?.is_none() {
                return Err(InstanceError::Setup(format!(
                    "repository {id}: unknown layout {layout_name:?}; built in are: Default, Default (no rollbacks), Debian Developer"
                )));
            }
            let codenames: Vec<Codename> = codenames
                .split('+')
                .map(|c| c.parse::<Codename>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| InstanceError::Setup(format!("repository {spec:?}: {e}")))?;
            let update = opts.update.selects(kind::REPOSITORY, id.as_str());
            for c in codenames.iter().filter(|_| update) {
                if self.get::<Distribution>(c.as_str())?.is_none() {
                    return Err(InstanceError::Setup(format!(
                        "repository {id}: no distribution {c}; add it with --distributions {c}:<arch>"
                    )));
                }
            }
            let mut repo = match self.get::<Repository>(id.as_str())? {
                Some(mut r) => {
                    if r.layout != layout_name || r.distributions != codenames {
                        let join = |c: &[Codename]| c.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("+");
                        report.push(SetupItem::changed(
                            kind::REPOSITORY,
                            id.as_str(),
                            &[
                                ("layout", r.layout.clone(), layout_name.to_owned()),
                                ("distributions", join(&r.distributions), join(&codenames)),
                            ],
                        ));
                        r.layout = layout_name.to_owned();
                        r.distributions = codenames;
                        r.status.changed();
                    }
                    r
                }
                None => {
                    report.push(item(kind::REPOSITORY, id.as_str(), "MISSING", None));
                    Repository {
                        identity: id.clone(),
                        layout: layout_name.to_owned(),
                        distributions: codenames,
                        allow_unauthenticated_uploads: id.as_str() == "test",
                        unauthenticated_from_network: false,
                        extra_uploader_keyrings: if id.as_str() == "debdev" {
                            vec!["/usr/share/keyrings/debian-keyring.gpg".into()]
                        } else {
                            vec![]
                        },
                        mail: Default::default(),
                        status: Status::default(),
                    }
                }
            };
            if update {
                self.put(id.as_str(), &repo)?;
            } else {
                // Not changed; still prepared, checked and activated when --pca selects it.
                match self.get::<Repository>(id.as_str())? {
                    Some(stored) => repo = stored,
                    None => continue,
                }
            }
            if !opts.pca.selects(kind::REPOSITORY, id.as_str()) {
                if !update {
                    self.setup_report(config::Kind::Repository, id.as_str(), &mut report)?;
                }
                continue;
            }
            let was_prepared =
                repo.status.state != config::State::Removed && repo.status.checked != config::Checked::Changed;
            if !was_prepared {
                self.archive()?.prepare_repository(&id)?;
                repo.status.prepared();
            }
            let check = self.archive()?.check_repository(&id).map_err(|e| e.to_string());
            repo.status.checked(check, now);
            repo.status.activate(id.as_str())?;
            self.put(id.as_str(), &repo)?;
        }

        // Chroots: each one's failure is reported, and the others go on.
        for spec in &chroot_specs(&opts.chroots) {
            let c = self.chroot_spec(spec)?;
            let id = c.id();
            let stored = self.get::<Chroot>(&id)?;
            if stored.is_none() {
                report.push(item(kind::CHROOT, &id, "MISSING", None));
            }
            let (update, pca) = (opts.update.selects(kind::CHROOT, &id), opts.pca.selects(kind::CHROOT, &id));
            match (stored, update, pca) {
                (_, _, true) if update || self.get::<Chroot>(&id)?.is_some() => {
                    let c = self.make_chroot(&opts.places, c, false)?;
                    report.push(item(kind::CHROOT, &id, status_word(&c.status), c.status.message.clone()));
                }
                (None, true, false) => self.put(&id, &c)?,
                (Some(c), _, _) => {
                    report.push(item(kind::CHROOT, &id, status_word(&c.status), c.status.message.clone()))
                }
                _ => {}
            }
        }

        // Remotes: each one's failure (unreachable, no key yet) is reported, the others go on.
        // A remote whose check fails is armed to activate once a check passes (when the other
        // side has added this instance too).
        for spec in &opts.remotes {
            let http: crate::protocol::remote::RemoteUrl = spec
                .parse()
                .map_err(|e: crate::protocol::remote::RemoteUrlError| InstanceError::Setup(e.to_string()))?;
            let id = http.to_string();
            let remote = config::Remote {
                http,
                wake_command: String::new(),
                key: String::new(),
                key_fingerprint: String::new(),
                last_status: None,
                verified: false,
                status: Status::default(),
            };
            if let Err(e) = self.setup_object(opts, config::Object::Remote(remote), &mut report) {
                report.push(item(kind::REMOTE, &id, "FAILED", Some(e.to_string())));
            }
        }

        report.push(item(
            kind::DAEMON,
            daemon.identity.as_str(),
            status_word(&daemon.status),
            daemon.status.message.clone(),
        ));
        for r in self.list::<Repository>()? {
            report.push(item(kind::REPOSITORY, r.identity.as_str(), status_word(&r.status), r.status.message.clone()));
        }
        Ok(report)
    }
}

impl Instance {
    /// Store `obj` if it does not exist yet, then prepare, check and activate it; reports how
    /// it went. A failed check is reported, not returned.
    fn setup_object(
        &self,
        opts: &SetupOptions,
        obj: config::Object,
        report: &mut Vec<SetupItem>,
    ) -> Result<config::Object> {
        let (k, id) = (obj.kind(), obj.id());
        match self.object(k, &id)? {
            // Active stays as it is: a setup run offline must not deactivate what works.
            Some(o) if o.status().is_active() => {
                report.push(SetupItem::new(k.as_str(), &id, "ACTIVE", None));
                return Ok(o);
            }
            Some(_) => {}
            None => {
                report.push(SetupItem::new(k.as_str(), &id, "MISSING", None));
                if !opts.update.selects(k.as_str(), &id) {
                    return Ok(obj);
                }
                self.put_object(&id, &obj)?;
            }
        }
        self.setup_pca(opts, k, &id, report)
    }

    /// Prepare, check and activate one object, when `--pca` selects it; else report its status.
    fn setup_pca(
        &self,
        opts: &SetupOptions,
        k: config::Kind,
        id: &str,
        report: &mut Vec<SetupItem>,
    ) -> Result<config::Object> {
        if !opts.pca.selects(k.as_str(), id) {
            return self.setup_report(k, id, report);
        }
        let done = self.lifecycle(&opts.places, k, id, config::Action::Pca)?;
        let s = done.status();
        report.push(SetupItem::new(k.as_str(), id, status_word(s), s.message.clone()));
        Ok(done)
    }

    /// Report an object as it is (not selected by `--update` or `--pca`).
    fn setup_report(&self, k: config::Kind, id: &str, report: &mut Vec<SetupItem>) -> Result<config::Object> {
        let reported_changed =
            report.last().is_some_and(|i| i.kind == k.as_str() && i.id == id && i.status == "CHANGED");
        match self.object(k, id)? {
            // Reported as CHANGED (with its diff) already, not applied.
            Some(o) if reported_changed => Ok(o),
            Some(o) => {
                // There, never prepared: mini-buildd's DEACTIVATED.
                let word = match o.status().state {
                    config::State::Removed => "DEACTIVATED",
                    _ => status_word(o.status()),
                };
                report.push(SetupItem::new(k.as_str(), id, word, o.status().message.clone()));
                Ok(o)
            }
            None => Err(InstanceError::Setup(format!("{k} {id} is not there; select it with --update"))),
        }
    }

    /// A Source for setup: created if missing, with its origin's keys (from the host's keyring
    /// package) when it has none, and its origin's main archive when there is no archive at
    /// all; then prepared, checked against its archives, and activated. Returns its id.
    fn setup_source(
        &self,
        opts: &SetupOptions,
        origin: &str,
        codename: &crate::deb::ArchiveSuite,
        report: &mut Vec<SetupItem>,
    ) -> Result<String> {
        let known = sources::origin(origin).ok();
        let id = format!("{origin}:{codename}");
        // A selected source brings its keys and archive along.
        let deps = SetupOptions {
            update: if opts.update.selects(kind::SOURCE, &id) { Selection::All } else { opts.update.clone() },
            pca: if opts.pca.selects(kind::SOURCE, &id) { Selection::All } else { opts.pca.clone() },
            ..opts.clone()
        };
        let mut s = match self.get::<Source>(&id)? {
            Some(s) => s,
            None => {
                report.push(SetupItem::new(kind::SOURCE, &id, "MISSING", None));
                Source {
                    origin: origin.to_owned(),
                    codename: codename.clone(),
                    codeversion: layout::guess_codeversion(origin, None, codename.as_str()),
                    codeversion_override: None,
                    components: vec!["main".parse().expect("valid")],
                    architectures: vec![],
                    apt_keys: vec![],
                    check_valid_until: true,
                    archives: vec![],
                    description: String::new(),
                    valid_until: None,
                    status: Status::default(),
                }
            }
        };
        if s.status.is_active() && !s.apt_keys.is_empty() {
            report.push(SetupItem::new(kind::SOURCE, &id, "ACTIVE", None));
            return Ok(id);
        }
        if s.apt_keys.is_empty() {
            s.apt_keys = match known {
                Some(o) => {
                    let mut fps = Vec::new();
                    for k in o.keys().map_err(|e| InstanceError::Setup(e.to_string()))? {
                        fps.push(self.setup_object(&deps, config::Object::AptKey(k), report)?.id());
                    }
                    fps
                }
                None => self.list::<config::AptKey>()?.into_iter().map(|k| k.fingerprint).collect(),
            };
        }
        if let Some(o) = known
            && self.list::<config::Archive>()?.is_empty()
        {
            let url = o.archive.parse().map_err(InstanceError::Setup)?;
            self.setup_object(&deps, config::Object::Archive(config::Archive::new(url)), report)?;
        }
        if !opts.update.selects(kind::SOURCE, &id) {
            if self.get::<Source>(&id)?.is_some() {
                self.setup_pca(opts, config::Kind::Source, &id, report)?;
            }
            return Ok(id);
        }
        self.put(&id, &s)?;
        self.setup_pca(opts, config::Kind::Source, &id, report)?;
        Ok(id)
    }

    /// A distribution's extra sources with their pin priorities: only those active (with their
    /// Source), so only a verified archive reaches a build.
    pub fn extra_sources(&self, d: &Distribution) -> Vec<(Source, i32)> {
        d.extra_sources
            .iter()
            .filter_map(|id| {
                let p: config::PrioritySource = self.get(id).ok().flatten()?;
                let s: Source = self.get(&p.source).ok().flatten()?;
                (p.status.is_active() && s.status.is_active()).then_some((s, p.priority))
            })
            .collect()
    }

    /// A Source's keys that exist, are active and may sign now: one expired key of a keyring
    /// does not fail the Source while another one signs its release.
    pub fn source_certs(&self, s: &Source) -> Result<Vec<sequoia_openpgp::Cert>> {
        let mut certs = Vec::new();
        for fp in &s.apt_keys {
            let key: Option<config::AptKey> = self.get(fp)?;
            let cert = key
                .filter(|k| k.status.is_active())
                .and_then(|k| crate::gpg::one_key(k.key.as_bytes()).ok())
                .filter(|c| crate::gpg::usable(c).is_ok());
            certs.extend(cert);
        }
        Ok(certs)
    }

    /// Ask the active archives for a Source's release, verified with its keys (its check,
    /// without recording anything).
    pub fn check_source(&self, s: &Source) -> std::result::Result<sources::Found, String> {
        let archives: Vec<ArchiveUrl> = self
            .list::<config::Archive>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|a| a.status.is_active())
            .map(|a| a.url)
            .collect();
        let certs = self.source_certs(s).map_err(|e| e.to_string())?;
        if certs.is_empty() && !s.apt_keys.is_empty() {
            return Err(format!(
                "none of its {} apt keys is active and usable now; activate one (the configuration page lists them)",
                s.apt_keys.len()
            ));
        }
        sources::check_source(&archives, &certs, &s.origin, s.codename.as_str(), s.check_valid_until)
    }

    /// Parse `codename:arch` into a chroot object (the stored one if it exists).
    pub fn chroot_spec(&self, spec: &str) -> Result<Chroot> {
        let bad = |why: String| {
            InstanceError::Setup(format!("chroot {spec:?}: {why}; use codename:arch, e.g. bookworm:amd64"))
        };
        let (codename, arch) = spec.split_once(':').ok_or_else(|| bad("no arch".into()))?;
        let codename: Codename = codename.parse().map_err(|e: crate::deb::names::NameError| bad(e.to_string()))?;
        let arch: Arch = arch.parse().map_err(|e: crate::deb::names::NameError| bad(e.to_string()))?;
        if arch.is_all() {
            return Err(bad("\"all\" is not a machine architecture".into()));
        }
        let id = format!("{codename}:{arch}");
        if let Some(c) = self.get::<Chroot>(&id)? {
            return Ok(c);
        }
        // A new image comes from the fastest archive its distribution's source was found in.
        let archive = self
            .get::<Distribution>(codename.as_str())?
            .map(|d| self.get::<Source>(&d.base_source))
            .transpose()?
            .flatten()
            .and_then(|s| s.archives.first().cloned());
        let mut c = Chroot::new(codename, arch);
        if let Some(mirror) = archive {
            c.mirror = mirror;
        }
        Ok(c)
    }

    /// Prepare (from scratch when `remake`), check and activate one chroot, and store how it went.
    /// A failure is recorded in its status, not returned: one chroot never stops the others.
    pub fn make_chroot(&self, places: &crate::chroot::Places, mut c: Chroot, remake: bool) -> Result<Chroot> {
        let id = c.id();
        let now = chrono::Utc::now();
        let made = (|| {
            if remake {
                crate::chroot::remove(places, &c)?;
                c.status.removed();
            }
            crate::chroot::prepare(places, &c)
        })();
        match made {
            Ok(()) => {
                c.status.prepared();
                let check = crate::chroot::check(places, &c).map_err(|e| e.to_string());
                c.status.checked(check, now);
                c.status.activate(&id)?;
            }
            Err(e) => {
                tracing::error!(chroot = %id, "preparing failed: {e}");
                c.status.removed();
                c.status.checked = config::Checked::Failed;
                c.status.message = Some(e.to_string());
            }
        }
        self.put(&id, &c)?;
        Ok(c)
    }
}

impl Instance {
    /// One configuration object, typed by its kind.
    pub fn object(&self, k: config::Kind, id: &str) -> Result<Option<config::Object>> {
        let r = self.store.read()?;
        let t = r.open_table(CONFIG)?;
        let v = t.get((k.as_str(), id))?;
        v.map(|v| decode_object(k, id, v.value())).transpose()
    }

    /// Every configuration object with its id, kind by kind.
    pub fn objects(&self) -> Result<Vec<(String, config::Object)>> {
        use config::{Kind, Object};
        let r = self.store.read()?;
        let t = r.open_table(CONFIG)?;
        let mut out = Vec::new();
        for k in Kind::ALL {
            out.extend(match k {
                Kind::Daemon => entries(&t, Object::Daemon)?,
                Kind::Layout => entries(&t, Object::Layout)?,
                Kind::AptKey => entries(&t, Object::AptKey)?,
                Kind::Archive => entries(&t, Object::Archive)?,
                Kind::Source => entries(&t, Object::Source)?,
                Kind::PrioritySource => entries(&t, Object::PrioritySource)?,
                Kind::Distribution => entries(&t, Object::Distribution)?,
                Kind::Repository => entries(&t, Object::Repository)?,
                Kind::Chroot => entries(&t, Object::Chroot)?,
                Kind::Uploader => entries(&t, Object::Uploader)?,
                Kind::Remote => entries(&t, Object::Remote)?,
            });
        }
        Ok(out)
    }

    /// Store any object as it is, under its kind and `id` (an edit, an import).
    pub fn put_object(&self, id: &str, obj: &config::Object) -> Result<()> {
        self.put_kind(obj.kind().as_str(), id, obj)
    }

    /// Run one lifecycle action on one object, and store its new status. A failed check is
    /// recorded in the status (its message says why), not returned.
    pub fn lifecycle(
        &self,
        places: &crate::chroot::Places,
        k: config::Kind,
        id: &str,
        action: config::Action,
    ) -> Result<config::Object> {
        use config::{Action, Object};
        let name = format!("{k} {id}");
        let mut obj = self.object(k, id)?.ok_or_else(|| {
            InstanceError::Config(format!("there is no {name}; the configuration page lists the objects"))
        })?;
        // What the action started from: its result is stored only over that (a check can take
        // minutes, and someone may save or act on the object meanwhile).
        let before = store::encode(&obj);
        let now = chrono::Utc::now();
        let steps: &[Action] = match action {
            Action::Pca => &[Action::Prepare, Action::Check, Action::Activate],
            _ => std::slice::from_ref(&action),
        };
        for step in steps {
            match step {
                Action::Prepare => {
                    match &mut obj {
                        Object::Repository(r) => self.archive()?.prepare_repository(&r.identity)?,
                        Object::Chroot(c) => crate::chroot::prepare(places, c)
                            .map_err(|e| InstanceError::Config(format!("{name}: {e}")))?,
                        Object::Remote(r) => {
                            self.prepare_remote(r).map_err(|e| InstanceError::Config(format!("{name}: {e}")))?
                        }
                        _ => {}
                    }
                    obj.status_mut().prepared();
                }
                Action::Check => {
                    obj.status().can_check(&name)?;
                    let result = config::check_dependencies(&obj, |(dk, did)| {
                        self.object(*dk, did).ok().flatten().map(|o| o.status().clone())
                    })
                    .and_then(|()| match &mut obj {
                        Object::AptKey(k) => crate::gpg::one_key(k.key.as_bytes())
                            .and_then(|c| crate::gpg::usable(&c))
                            .map_err(|e| format!("apt key {}: {e}", k.fingerprint)),
                        Object::Archive(a) => sources::ping(&a.url).map(|ms| a.ping_ms = Some(ms)),
                        Object::Source(s) => self.check_source(s).map(|found| s.learn(&found.archives, &found.release)),
                        Object::Repository(r) => {
                            self.archive().and_then(|a| Ok(a.check_repository(&r.identity)?)).map_err(|e| e.to_string())
                        }
                        Object::Chroot(c) => crate::chroot::check(places, c).map_err(|e| e.to_string()),
                        Object::Remote(r) => self.check_remote(r),
                        Object::Daemon(_) => self
                            .key()
                            .and_then(|k| Ok(k.clearsign(b"check\n")?))
                            .and_then(|_| self.refresh_origins())
                            .map_err(|e| e.to_string()),
                        _ => Ok(()),
                    });
                    obj.status_mut().checked(result, now);
                }
                Action::Activate => obj.status_mut().activate(&name)?,
                Action::Deactivate => obj.status_mut().deactivate(),
                Action::Remove => {
                    match &mut obj {
                        Object::Chroot(c) => crate::chroot::remove(places, c)
                            .map_err(|e| InstanceError::Config(format!("{name}: {e}")))?,
                        // Its key goes: a prepare imports it again, to be verified again.
                        Object::Remote(r) => {
                            r.key.clear();
                            r.key_fingerprint.clear();
                            r.last_status = None;
                            r.verified = false;
                        }
                        _ => {}
                    }
                    obj.status_mut().removed();
                }
                Action::Delete => {
                    if obj.status().state != config::State::Removed {
                        return Err(InstanceError::Config(format!("{name} is not removed; remove it first")));
                    }
                    if k == config::Kind::Daemon {
                        return Err(InstanceError::Config("the daemon object cannot be deleted".into()));
                    }
                    self.delete_kind(k.as_str(), id)?;
                    return Ok(obj);
                }
                Action::Pca => unreachable!("expanded above"),
            }
        }
        let tx = self.store.write()?;
        {
            let mut t = tx.open_table(CONFIG)?;
            let current = match t.get((k.as_str(), id))? {
                Some(v) => Some(store::encode(&decode_object(k, id, v.value())?)),
                None => None,
            };
            if current.as_deref() != Some(before.as_slice()) {
                return Err(InstanceError::Config(format!(
                    "{name} was changed while this action ran (saved, or another action on it); nothing of this action was stored: run it again"
                )));
            }
            t.insert((k.as_str(), id), store::encode(&obj).as_slice())?;
        }
        tx.commit()?;
        Ok(obj)
    }

    /// Create or change one configuration object (the configuration editor, `config_set`,
    /// `repository_set`). Everything it depends on must exist. A change to a prepared object
    /// marks it changed, so an active one stops being active until prepared, checked and
    /// activated again; the returned flag says whether that happened. Saving the same fields
    /// again changes nothing.
    pub fn save_object(&self, mut obj: config::Object) -> Result<bool> {
        use config::Object;
        let (k, id) = (obj.kind(), obj.id());
        for (dk, did) in obj.depends_on() {
            if self.object(dk, &did)?.is_none() {
                return Err(InstanceError::Config(format!(
                    "{k} {id} needs {dk} {did:?}, which does not exist; create it first (the configuration page lists what exists)"
                )));
            }
        }
        let old = self.object(k, &id)?;
        if k == config::Kind::Daemon && old.is_none() {
            return Err(InstanceError::Config(
                "the daemon object is made by `buildbay setup` (with its key), not saved from fields".into(),
            ));
        }
        match (&mut obj, &old) {
            (Object::Daemon(new), Some(Object::Daemon(old))) => {
                if new.identity != old.identity || new.key_algo != old.key_algo {
                    return Err(InstanceError::Config(
                        "the daemon's identity and key algorithm are fixed once its key exists; set up a new instance to change them".into(),
                    ));
                }
                new.key_fingerprint = old.key_fingerprint.clone();
            }
            (Object::Uploader(new), old) => {
                let same_key = matches!(old, Some(Object::Uploader(o)) if o.key == new.key);
                if !same_key {
                    let cert = crate::gpg::one_key(new.key.as_bytes())
                        .map_err(|e| InstanceError::Config(format!("uploader {id}: {e}")))?;
                    new.fingerprint = Some(cert.fingerprint().to_hex());
                } else if let Some(Object::Uploader(o)) = old {
                    new.fingerprint = o.fingerprint.clone();
                }
            }
            (Object::Layout(new), _) => {
                new.layout.validate().map_err(|e| InstanceError::Config(format!("{e}; nothing was saved")))?;
            }
            (Object::Source(new), old) => {
                // What the check learnt is not the editor's to set: an archive reaches builds.
                let (archives, description, valid_until) = match old {
                    Some(Object::Source(o)) => (o.archives.clone(), o.description.clone(), o.valid_until),
                    _ => (vec![], String::new(), None),
                };
                new.archives = archives;
                new.description = description;
                new.valid_until = valid_until;
            }
            (Object::Remote(new), old) => {
                // Its key comes from its prepare only, and its last status from its check.
                let (key, fingerprint, last, verified) = match old {
                    Some(Object::Remote(o)) => {
                        (o.key.clone(), o.key_fingerprint.clone(), o.last_status.clone(), o.verified)
                    }
                    _ => (String::new(), String::new(), None, false),
                };
                (new.key, new.key_fingerprint, new.last_status, new.verified) = (key, fingerprint, last, verified);
            }
            _ => {}
        }
        let deactivated = match &old {
            Some(old) if old.fields() == obj.fields() => return Ok(false),
            // Only its mail settings changed: nothing it serves or builds changes.
            Some(old) if old.fields_but_mail() == obj.fields_but_mail() => {
                *obj.status_mut() = old.status().clone();
                false
            }
            Some(old) => {
                *obj.status_mut() = old.status().clone();
                let was_active = old.status().is_active();
                obj.status_mut().changed();
                was_active
            }
            None => {
                *obj.status_mut() = Status::default();
                false
            }
        };
        self.put_object(&id, &obj)?;
        Ok(deactivated)
    }

    /// Create or change a repository from its form: [`Instance::save_object`], keeping what the
    /// form does not show (the extra uploader keyrings, the mail settings).
    pub fn set_repository(&self, mut repo: Repository) -> Result<bool> {
        if let Some(old) = self.get::<Repository>(repo.identity.as_str())? {
            repo.extra_uploader_keyrings = old.extra_uploader_keyrings;
            repo.mail = old.mail;
        }
        self.save_object(config::Object::Repository(repo))
    }
}

/// Chroot specs as mini-buildd takes them: `codename:arch`, or several architectures of one
/// codename as `codename:arch+arch`.
/// Create the directory of the key at `path`, readable by its owner only.
fn private_dir(path: &Path) -> Result<()> {
    let dir = path.parent().expect("key path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| InstanceError::Setup(format!("{}: {e}", dir.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| InstanceError::Setup(format!("{}: {e}", dir.display())))
}

pub fn chroot_specs(specs: &[String]) -> Vec<String> {
    specs
        .iter()
        .flat_map(|s| match s.split_once(':') {
            Some((codename, archs)) if archs.contains('+') => {
                archs.split('+').map(|a| format!("{codename}:{a}")).collect::<Vec<_>>()
            }
            _ => vec![s.clone()],
        })
        .collect()
}

/// Where `--archives-from-proxy` looks for apt-cacher-ng.
const PROXY: &str = "127.0.0.1:3142";

fn proxy_answers() -> bool {
    PROXY.parse().is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok())
}

/// An archive URL through apt-cacher-ng: `http://deb.debian.org/debian/` →
/// `http://127.0.0.1:3142/deb.debian.org/debian/`.
fn proxied(archive: &str) -> String {
    let rest = archive.split_once("://").map_or(archive, |(_, r)| r);
    format!("http://{PROXY}/{rest}")
}

/// The origin of a bare source codename (`bookworm-backports` → Debian, `noble` → Ubuntu).
fn bare_origin(codename: &str) -> &'static str {
    let base = codename.split('-').next().unwrap_or(codename);
    sources::ORIGINS.iter().find(|o| o.releases.contains(&base)).map_or("Debian", |o| o.name)
}

/// The origins with a bootstrap preset (mini-buildd's `SETUP_BOOTSTRAP`).
pub const BOOTSTRAP_ORIGINS: &[&str] = &["Debian", "Ubuntu"];

/// mini-buildd's bootstrap preset for an origin, as `setup`'s arguments: the origin's keys,
/// archive and current releases, a distribution per release, repository `test` over them, and a
/// chroot per release for this host's architecture (minutes each, the first time).
pub fn bootstrap_preset(origin: &str) -> Vec<(&'static str, String)> {
    [
        ("update", "all"),
        ("pca", "all"),
        ("from_origins", origin),
        ("archives_from_origins", "true"),
        ("sources_from_origins", "true"),
        ("distributions_from_sources", "true"),
        ("repositories_from_distributions", "test"),
        ("chroots_from_sources", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

impl SetupOptions {
    /// Which parts the origins add: (archives, sources).
    pub fn origin_parts(&self) -> (bool, bool) {
        if self.archives_from_origins || self.sources_from_origins {
            (self.archives_from_origins, self.sources_from_origins)
        } else {
            (true, true)
        }
    }

    /// mini-buildd's `--*-from-*` options made explicit (pure): distributions and chroots for
    /// each release codename among the sources (`native`: this host's architecture), then
    /// repositories over every distribution's codename.
    pub fn expand(&self, native: &str) -> std::result::Result<SetupOptions, String> {
        let mut out = self.clone();
        let mut codenames: Vec<String> = Vec::new();
        let mut add = |c: &str| {
            // Releases only: `bookworm-backports` is a source of bookworm, not a distribution.
            if !c.contains('-') && !codenames.iter().any(|x| x == c) {
                codenames.push(c.to_owned());
            }
        };
        for spec in &self.sources {
            add(spec.split_once(':').map_or(spec.as_str(), |(_, c)| c));
        }
        if self.origin_parts().1 {
            for name in &self.from_origins {
                sources::origin(name).map_err(|e| e.to_string())?.releases.iter().for_each(|c| add(c));
            }
        }
        let has = |specs: &[String], c: &str| specs.iter().any(|s| s.split(':').next() == Some(c));
        for c in &codenames {
            if self.distributions_from_sources && !has(&out.distributions, c) {
                out.distributions.push(format!("{c}:{native}"));
            }
            if self.chroots_from_sources && !out.chroots.iter().any(|s| s == &format!("{c}:{native}")) {
                out.chroots.push(format!("{c}:{native}"));
            }
        }
        if !self.repositories_from_distributions.is_empty() {
            let all: Vec<&str> = out.distributions.iter().filter_map(|s| s.split(':').next()).collect();
            if all.is_empty() {
                return Err("--repositories-from-distributions: there are no distributions to use; give --distributions or --distributions-from-sources".into());
            }
            for r in &self.repositories_from_distributions {
                // No layout: the repository's default (Debian Developer for debdev, else Default).
                let (id, layout) = r.split_once(':').unwrap_or((r.as_str(), ""));
                out.repositories.push(format!("{id}:{layout}:{}", all.join("+")));
            }
        }
        Ok(out)
    }
}

/// A stored configuration object, typed by its kind.
fn decode_object(k: config::Kind, id: &str, bytes: &[u8]) -> Result<config::Object> {
    use config::{Kind, Object};
    let key = format!("{k} {id}");
    Ok(match k {
        Kind::Daemon => Object::Daemon(store::decode(&key, bytes)?),
        Kind::Layout => Object::Layout(store::decode(&key, bytes)?),
        Kind::AptKey => Object::AptKey(store::decode(&key, bytes)?),
        Kind::Archive => Object::Archive(store::decode(&key, bytes)?),
        Kind::Source => Object::Source(store::decode(&key, bytes)?),
        Kind::PrioritySource => Object::PrioritySource(store::decode(&key, bytes)?),
        Kind::Distribution => Object::Distribution(store::decode(&key, bytes)?),
        Kind::Repository => Object::Repository(store::decode(&key, bytes)?),
        Kind::Chroot => Object::Chroot(store::decode(&key, bytes)?),
        Kind::Uploader => Object::Uploader(store::decode(&key, bytes)?),
        Kind::Remote => Object::Remote(store::decode(&key, bytes)?),
    })
}

fn entries<T: ConfigObject>(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    wrap: fn(T) -> config::Object,
) -> Result<Vec<(String, config::Object)>> {
    Ok(store::list_config_entries::<T>(t)?.into_iter().map(|(id, v)| (id, wrap(v))).collect())
}

fn status_word(s: &Status) -> &'static str {
    match (s.state, &s.checked) {
        (config::State::Active, _) => "ACTIVE",
        (_, config::Checked::Failed) => "FAILED",
        // Failed, and armed to activate once a check passes.
        (_, config::Checked::Reactivate) if s.message.is_some() => "FAILED",
        (config::State::Prepared, _) => "DEACTIVATED",
        (config::State::Removed, _) => "MISSING",
    }
}

impl Instance {
    /// The embedded default for a fresh state directory: this host's identity, its release and
    /// architecture, and a repository `test` (which accepts unsigned uploads).
    pub fn default_setup_if_empty(&self, places: &crate::chroot::Places) -> Result<Option<Vec<SetupItem>>> {
        if self.daemon()?.is_some() {
            return Ok(None);
        }
        let codename = host_codename();
        let arch = host_arch();
        tracing::info!(%codename, arch, "empty state directory: setting up the embedded default (repository test)");
        let opts = SetupOptions {
            identity: None,
            // Repository test takes unsigned uploads (from this host): its builds run in nspawn
            // machines, whose root is a user namespace's, not the host's.
            distributions: vec![format!("{codename}:{arch}:nspawn")],
            repositories: vec![format!("test:Default:{codename}")],
            key_algo: KeyAlgo::default(),
            places: places.clone(),
            ..Default::default()
        };
        self.setup(&opts).map(Some)
    }
}

/// This host's name, as mini-buildd's Origin names it.
fn host_fqdn() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

/// This host's release codename (`/etc/os-release`), or bookworm.
pub fn host_codename() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(|c| c.trim_matches('"').to_owned()))
        })
        .filter(|c| c.parse::<Codename>().is_ok())
        .unwrap_or_else(|| "bookworm".into())
}

/// This host's Debian architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "i386",
        "aarch64" => "arm64",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        other => other,
    }
}

/// The host name, made into a valid identity.
pub fn default_identity() -> Identity {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let cleaned: String = host.trim().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    cleaned.trim_matches('-').parse().unwrap_or_else(|_| "buildbay".parse().expect("valid identity"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_hashes_and_selections_are_mini_buildds() {
        use super::{Selection, identity_hash};
        // Python: sha256(json.dumps({"class": "<class 'mini_buildd.models.Repository'>",
        // "identifiers": {"id": repr("test")}}, sort_keys=True)).
        let h = identity_hash("repository", "test");
        assert_eq!(h, "33b605e867312da725e9d6413b62dbb25189483ecbc96f3684f8cc3ea546d4b2");
        assert_ne!(identity_hash("distribution", "test"), h, "the kind is part of it");
        assert_eq!(Selection::parse(""), Selection::Never);
        assert_eq!(Selection::parse(" all "), Selection::All);
        let some = Selection::parse(&format!("{}, other", h.to_uppercase()));
        assert!(some.selects("repository", "test"));
        assert!(!some.selects("repository", "other-repo"));
        assert!(!Selection::Never.selects("repository", "test"));
        assert!(Selection::All.selects("chroot", "bookworm:i386"));
    }

    #[test]
    fn from_options_expand_like_mini_buildds() {
        let opts = super::SetupOptions {
            sources: vec!["bookworm".into(), "Debian:bookworm-backports".into(), "Ubuntu:noble".into()],
            distributions: vec!["bookworm:amd64+i386".into()],
            distributions_from_sources: true,
            chroots_from_sources: true,
            repositories_from_distributions: vec!["test".into(), "debdev:Debian Developer".into()],
            ..Default::default()
        };
        let x = opts.expand("amd64").unwrap();
        assert_eq!(x.distributions, ["bookworm:amd64+i386", "noble:amd64"], "the given one kept, backports no release");
        assert_eq!(x.chroots, ["bookworm:amd64", "noble:amd64"]);
        assert_eq!(x.repositories, ["test::bookworm+noble", "debdev:Debian Developer:bookworm+noble"]);
        // With neither flag, the origins add archives and sources; with one, only that.
        let o = super::SetupOptions { from_origins: vec!["Debian".into()], ..Default::default() };
        assert_eq!(o.origin_parts(), (true, true));
        let o = super::SetupOptions { archives_from_origins: true, ..o };
        assert_eq!(o.origin_parts(), (true, false));
        assert!(o.expand("amd64").unwrap().distributions.is_empty());
        let none = super::SetupOptions { repositories_from_distributions: vec!["test".into()], ..Default::default() };
        assert!(none.expand("amd64").unwrap_err().contains("no distributions"));
        assert_eq!(super::bare_origin("noble"), "Ubuntu");
        assert_eq!(super::bare_origin("bookworm-backports"), "Debian");
        assert_eq!(super::proxied("http://deb.debian.org/debian/"), "http://127.0.0.1:3142/deb.debian.org/debian/");
    }

    #[test]
    fn chroot_specs_take_mini_buildds_plus() {
        let specs = ["bookworm:amd64+i386".to_owned(), "trixie:arm64".to_owned(), "bad".to_owned()];
        assert_eq!(super::chroot_specs(&specs), ["bookworm:amd64", "bookworm:i386", "trixie:arm64", "bad"]);
    }
}
