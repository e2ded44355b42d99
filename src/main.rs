//! The `buildbay` command: the daemon and its offline administration commands.

use anyhow::{Context, Result, bail};
use buildbay::auth::Role;
use buildbay::deb::{Dist, Identity, PackageName, RepoId, SnapshotName, Version};
use buildbay::gpg::KeyAlgo;
use buildbay::instance::{Instance, SetupOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "buildbay", version, about = "Debian package build daemon: incoming, builds, signed APT repositories")]
struct Cli {
    /// State directory (configuration, keys, repositories).
    #[arg(long, global = true, env = "BUILDBAY_STATE", default_value = "/var/lib/buildbay")]
    state: PathBuf,
    /// Log filter, e.g. `info` or `debug,libunftp=warn`.
    #[arg(long, global = true, env = "BUILDBAY_LOG", default_value = "info")]
    log: String,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of `serve`'s options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon: serve the repositories over HTTP (systemd socket activation, or its own port).
    Serve {
        /// Address to bind when systemd passes no `http` socket.
        #[arg(long, default_value = "[::]:8066")]
        http: std::net::SocketAddr,
        /// Do not set up the embedded default on an empty state directory.
        #[arg(long)]
        no_default_setup: bool,
        #[command(flatten)]
        ftp: FtpArgs,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// The root helper of a daemon that is not root (buildbay-helper.service): it stages,
    /// starts and stops build units and makes chroots, on a fixed set of requests over a Unix
    /// socket that only root and the daemon's group open. Give it the daemon's build options.
    Helper {
        /// The socket to listen on when systemd passes none.
        #[arg(long, default_value = buildbay::rootops::SOCKET)]
        socket: PathBuf,
        /// The daemon's user: only it (and root) may ask; its group reads the build directories.
        #[arg(long, default_value = "buildbay")]
        daemon_user: String,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Run one build step (the main process and ExecStopPost of a build unit, sbuild's session
    /// setup, an nspawn machine's root); not for humans.
    #[command(hide = true)]
    BuilderExec {
        /// Copy the command's output to this file and to stdout.
        #[arg(long, required_unless_present_any = ["stop_post", "sbuild_setup", "nspawn_root"])]
        build_log: Option<PathBuf>,
        /// Record how the unit ended ($SERVICE_RESULT, $EXIT_CODE, $EXIT_STATUS) in this file.
        #[arg(long, conflicts_with = "build_log")]
        stop_post: Option<PathBuf>,
        /// With --build-log: record how the command ended in this file (child-process builds).
        #[arg(long, requires = "build_log")]
        result: Option<PathBuf>,
        /// With --build-log: a line for the top of the log (repeatable).
        #[arg(long, requires = "build_log")]
        note: Vec<String>,
        /// With --build-log: after a successful build, mark it built and run lintian on its
        /// files in a fresh session of this chroot, into its own log.
        #[arg(long, requires = "build_log")]
        after_lintian: Option<String>,
        /// With --after-lintian: the build user lintian runs as.
        #[arg(long, requires = "after_lintian")]
        after_user: Option<String>,
        /// With --after-lintian: the slot's own /build directory, where lintian reads copies.
        #[arg(long, requires = "after_lintian")]
        after_dir: Option<PathBuf>,
        /// With --after-lintian: one extra lintian option (repeatable; `--after-lintian-opt=--info`).
        #[arg(long, requires = "after_lintian", allow_hyphen_values = true)]
        after_lintian_opt: Vec<String>,
        /// With --build-log: the checks to run after a successful build (a JSON plan).
        #[arg(long, requires = "build_log")]
        checks: Option<PathBuf>,
        /// With --checks: the build ran in another unit and succeeded; run only the checks and
        /// the after steps (no command).
        #[arg(long, requires = "checks")]
        checks_only: bool,
        /// sbuild's pre-build command: the apt setup of the session of this build directory;
        /// the command is the session's exec prefix.
        #[arg(long, conflicts_with = "build_log", requires = "apt_cache")]
        sbuild_setup: Option<PathBuf>,
        /// With --sbuild-setup: the slot's apt archive cache.
        #[arg(long)]
        apt_cache: Option<PathBuf>,
        /// With --sbuild-setup: the request's setup blocks (names, comma-separated).
        #[arg(long, requires = "sbuild_setup", default_value = "")]
        setup_blocks: String,
        /// With --sbuild-setup: the image has every build dependency (no apt setup).
        #[arg(long, requires = "sbuild_setup")]
        installed: bool,
        /// With --sbuild-setup: the slot's ccache directory, bound into the session.
        #[arg(long, requires = "sbuild_setup")]
        ccache: Option<PathBuf>,
        /// Run the command (systemd-nspawn) on an id-mapped overlay of this image.
        #[arg(long, conflicts_with = "build_log", requires = "uid_base")]
        nspawn_root: Option<PathBuf>,
        /// With --nspawn-root: the first uid of the machine's user namespace.
        #[arg(long)]
        uid_base: Option<u32>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Print the API reference (Markdown) from the call registry: every call, its auth level and
    /// its arguments.
    ApiReference,
    /// Write the man pages (one per command) into a directory; for packaging.
    #[command(hide = true)]
    Man {
        /// The directory to write `buildbay.1`, `buildbay-serve.1`, … into.
        dir: PathBuf,
    },
    /// Create and activate configuration objects offline (mini-buildd's `setup` conventions).
    Setup {
        /// Instance identity (default: the host name).
        #[arg(long)]
        identity: Option<Identity>,
        /// The releases' Origin (what apt pins name): `buildbay` (`Buildbay archive <identity>`,
        /// the default), `mini-buildd` (`Mini-Buildd archive <identity> on <host>`, as a
        /// mini-buildd instance's clients pin it), or the text itself.
        #[arg(long)]
        archive_origin: Option<String>,
        /// Origins (`Debian`, `Ubuntu`): their archive keys (from the keyring package on this
        /// host), main archive and current releases.
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        from_origins: Vec<String>,
        /// Archive URLs, e.g. `http://deb.debian.org/debian/`.
        #[arg(long, short = 'A', num_args = 1.., value_delimiter = ',')]
        archives: Vec<String>,
        /// Add the archives of this host's apt sources.
        #[arg(long)]
        archives_from_apt_sources: bool,
        /// Sources as `Origin:codename`, e.g. `Debian:bookworm-backports`; each is checked against
        /// the archives (its InRelease, verified with its keys).
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        sources: Vec<String>,
        /// Distributions as `codename:arch0+arch1[:backend]`, e.g. `bookworm:amd64+i386`; the build
        /// backend is `sbuild` (default), `nspawn`, or `nspawn+network`.
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        distributions: Vec<String>,
        /// Repositories as `id:layout:codename0+codename1`, e.g. `test:Default:bookworm`.
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        repositories: Vec<String>,
        /// Chroots to prepare, check and activate, as `codename:arch` (minutes each, the first time).
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        chroots: Vec<String>,
        /// Archive key algorithm, used when the key is first generated.
        #[arg(long, value_enum, default_value_t = KeyAlgo::Rsa4096)]
        key_algo: KeyAlgo,
    },
    /// Take over a stopped mini-buildd 2.x instance into this (new) state directory: its
    /// configuration, archive key, users and uploaders, and every package, rollback and
    /// snapshot of its repositories (pool files are hard-linked where they can be). Prints what
    /// came over and what did not, with the reason.
    Import {
        /// mini-buildd's home, usually /var/lib/mini-buildd.
        home: PathBuf,
        /// The archive key (`gpg --export-secret-keys`, unencrypted), when gpg cannot export it
        /// from the home's .gnupg.
        #[arg(long)]
        archive_key: Option<PathBuf>,
    },
    /// Print the armored archive public key.
    PubKey,
    /// Users of the web and API.
    #[command(subcommand)]
    User(UserCommand),
    /// Call the API of a running instance: `buildbay api <call> [args]` (see `buildbay api --help`).
    Api {
        /// The instance's URL.
        #[arg(long, env = "BUILDBAY_URL", default_value = "http://localhost:8066")]
        url: String,
        /// An API token (see the token_create call).
        #[arg(long, env = "BUILDBAY_TOKEN", conflicts_with = "user")]
        token: Option<String>,
        /// Log in as this user; the password comes from $BUILDBAY_PASSWORD or is asked for.
        #[arg(long)]
        user: Option<String>,
        /// Confirm calls that need it.
        #[arg(long)]
        confirm: bool,
        /// The call and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        call: Vec<String>,
    },
    /// Repository maintenance.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Uploader keys: who may upload to which repositories.
    #[command(subcommand)]
    Uploader(UploaderCommand),
}

#[derive(Subcommand)]
enum UploaderCommand {
    /// Register (or replace) a user's uploader key, active at once.
    Add {
        user: String,
        /// The ASCII-armored public key (gpg --armor --export).
        #[arg(long)]
        key: PathBuf,
        /// Repositories the key may upload to.
        #[arg(long, value_delimiter = ',', required = true)]
        repositories: Vec<RepoId>,
    },
}

/// Builds: how many at once, their limits, who runs them.
#[derive(clap::Args)]
struct BuildArgs {
    /// Parallel builds (default: the number of cores). 0: build nothing here, delegate every
    /// build request to the active remotes (with none, requests wait for one).
    #[arg(long)]
    build_slots: Option<usize>,
    /// MemoryMax of each build unit, in bytes (default: no limit).
    #[arg(long)]
    build_memory_max: Option<u64>,
    /// RuntimeMaxSec of each build unit.
    #[arg(long, default_value_t = 6 * 3600)]
    build_runtime_max: u64,
    /// Build users: each build slot N builds as the system user PREFIXN (made when first
    /// needed, in group sbuild). Only when the daemon runs as root; otherwise it builds as itself.
    #[arg(long, default_value = "buildbay-build")]
    build_users: String,
    /// Seconds an upload may wait in PACKAGING for its build results before it ends FAILED.
    #[arg(long, default_value_t = 8 * 3600)]
    packaging_timeout: u64,
    /// Seconds a remote may take to send the result of a build request handed to it; then the
    /// request goes to another builder, and the remote's late result is refused.
    #[arg(long, default_value_t = 7 * 3600)]
    remote_deadline: u64,
    /// Replaced by the job `cronjob_chroot_upkeep (DAILY)`: accepted so that an older
    /// configuration still starts, and ignored with a warning.
    #[arg(long, hide = true)]
    chroot_upgrade_interval: Option<u64>,
    /// Where chroot machine images go.
    #[arg(long, default_value = "/var/lib/machines")]
    machines_dir: PathBuf,
    /// Where schroot configs of the chroots go.
    #[arg(long, default_value = "/etc/schroot/chroot.d")]
    schroot_dir: PathBuf,
    /// Where each build slot's own /build directory (its sbuild sessions') goes.
    #[arg(long, default_value = "/var/lib/buildbay-build")]
    slots_dir: PathBuf,
    /// `systemd` (transient units over D-Bus), `child` (child processes), or `auto`.
    #[arg(long, value_enum, default_value_t = RunnerChoice::Auto)]
    build_runner: RunnerChoice,
    /// Leave the root work (starting and stopping builds, making chroots) to the buildbay
    /// helper on this socket: the daemon is not root (the packaged service).
    #[arg(long)]
    helper: Option<PathBuf>,
    /// Where build directories go (default: <state>/var/builds; with a helper,
    /// /var/lib/buildbay-builds).
    #[arg(long)]
    builds_dir: Option<PathBuf>,
    /// Where the build slots' apt archive caches go (default: <state>/var/cache/apt-archives;
    /// with a helper, /var/cache/buildbay/apt-archives).
    #[arg(long)]
    apt_cache_dir: Option<PathBuf>,
}

impl BuildArgs {
    /// The library's build setup from these options.
    fn setup(&self, state: &std::path::Path) -> buildbay::builder::setup::Setup {
        use buildbay::builder::setup::{RunnerKind, Setup};
        let mut limits = buildbay::builder::Limits {
            memory_max: self.build_memory_max,
            runtime_max_sec: self.build_runtime_max,
            ..Default::default()
        };
        if let Some(n) = self.build_slots {
            limits.slots = n;
        }
        Setup {
            state: state.to_owned(),
            limits,
            build_users: self.build_users.clone(),
            places: buildbay::chroot::Places {
                machines: self.machines_dir.clone(),
                schroot_d: self.schroot_dir.clone(),
                slots: self.slots_dir.clone(),
                helper: self.helper.clone(),
            },
            builds: self.builds_dir.clone(),
            caches: self.apt_cache_dir.clone(),
            runner: match self.build_runner {
                RunnerChoice::Auto => RunnerKind::Auto,
                RunnerChoice::Systemd => RunnerKind::Systemd,
                RunnerChoice::Child => RunnerKind::Child,
            },
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RunnerChoice {
    Auto,
    Systemd,
    Child,
}

/// The FTP drop box and the upload pipeline.
#[derive(clap::Args)]
struct FtpArgs {
    /// FTP address to bind when systemd passes no `ftp` socket (default: the HTTP port + 1).
    #[arg(long)]
    ftp: Option<std::net::SocketAddr>,
    /// Passive FTP data ports, `FIRST-LAST`.
    #[arg(long, default_value = "49152-49407", value_parser = parse_port_range)]
    ftp_passive_ports: std::ops::RangeInclusive<u16>,
    /// HTTPS: the address to bind when systemd passes no `https` socket (default with
    /// --tls-cert: beside HTTP, its port + 2).
    #[arg(long, requires = "tls_cert")]
    https: Option<std::net::SocketAddr>,
    /// HTTPS: PEM certificate chain (with --tls-key); read again when it changes.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// HTTPS: PEM private key (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Redirect plain HTTP requests to HTTPS, except /repositories/ (apt verifies InRelease).
    #[arg(long, requires = "tls_cert")]
    https_redirect: bool,
    /// FTPS: PEM certificate chain (with --ftp-key).
    #[arg(long, requires = "ftp_key")]
    ftp_cert: Option<PathBuf>,
    /// FTPS: PEM private key (with --ftp-cert).
    #[arg(long, requires = "ftp_cert")]
    ftp_key: Option<PathBuf>,
    /// Largest file an upload may contain, in bytes.
    #[arg(long, default_value_t = 2 << 30)]
    max_file_size: u64,
    /// Largest upload (everything its .changes lists), in bytes.
    #[arg(long, default_value_t = 8 << 30)]
    max_upload_size: u64,
    /// Seconds after which files that never became a complete upload are swept.
    #[arg(long, default_value_t = 3600)]
    incoming_timeout: u64,
    /// Bytes one FTP peer may have waiting in incoming (default: --max-upload-size).
    #[arg(long)]
    ftp_quota_per_peer: Option<u64>,
    /// Bytes all FTP peers together may have waiting in incoming (default: 4 × --max-upload-size).
    #[arg(long)]
    ftp_quota_total: Option<u64>,
    /// Free disk bytes FTP transfers leave on the state directory's file system.
    #[arg(long, default_value_t = 1 << 30)]
    disk_reserve: u64,
    /// The host name in the URLs of build requests (default: this host's name when it resolves
    /// to an address off loopback, else localhost, which local builders reach).
    #[arg(long)]
    public_host: Option<String>,
    /// The HKP keyserver `set_user_key` fetches a one-line key id from (mini-buildd's
    /// `gnupg_keyserver`); an empty value: none.
    #[arg(long, default_value = "https://keyserver.ubuntu.com")]
    keyserver: String,
    /// Days to keep events.
    #[arg(long, default_value_t = 365)]
    keep_events_days: u32,
    /// Days finished uploads (spool directories, records) and kept build logs stay
    /// (mini-buildd's `expire_builds_after`).
    #[arg(long, default_value_t = 5)]
    expire_builds_days: u32,
    /// Days added to the clock the job schedule reads (for tests of missed runs).
    #[arg(long, default_value_t = 0, hide = true)]
    jobs_clock_offset_days: i64,
    /// Seconds an event hook may run before it is killed.
    #[arg(long, default_value_t = 60)]
    hook_timeout: u64,
    /// Send notification mail through this SMTP server:
    /// `smtp://[user@]host[:port]?tls=required` (STARTTLS), `smtps://…` (TLS), or `smtp://…`
    /// (plain, for a relay on this host). Without it, no mail is sent.
    #[arg(long, env = "BUILDBAY_SMTP", hide_env_values = true)]
    smtp: Option<String>,
    /// A file with the SMTP password (for the URL's user), so that it is on no command line.
    #[arg(long, requires = "smtp")]
    smtp_password_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for the SMTP server, besides the public roots.
    #[arg(long, requires = "smtp")]
    smtp_ca: Option<PathBuf>,
    /// Seconds before the first retry of mail the server did not take (doubling, up to 32×).
    #[arg(long, default_value_t = 60, hide = true)]
    mail_retry_seconds: u64,
}

fn parse_port_range(s: &str) -> std::result::Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = s.split_once('-').ok_or("give FIRST-LAST, e.g. 49152-49407")?;
    let (a, b): (u16, u16) = (a.parse().map_err(|e| format!("{a}: {e}"))?, b.parse().map_err(|e| format!("{b}: {e}"))?);
    if a > b || a == 0 {
        return Err(format!("{s}: the first port must be between 1 and the last"));
    }
    Ok(a..=b)
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Include uploads (`.changes` with `.dsc` and `.deb`s) into a distribution; several are published once.
    Include {
        distribution: Dist,
        #[arg(required = true)]
        changes: Vec<PathBuf>,
        /// Skip the layout's version rules (admin import).
        #[arg(long)]
        force: bool,
    },
    /// Migrate a source package to the next suite; from a rollback distribution, restore it.
    /// Refused with the reasons unless its binaries are installable there, the distribution's
    /// gating QA passed for this version and the suite's minimum age passed.
    Migrate {
        source: PackageName,
        distribution: Dist,
        /// Follow the whole migration chain.
        #[arg(long)]
        full: bool,
        #[arg(long)]
        version: Option<Version>,
        /// Migrate despite the checks; the MIGRATED event records what was overridden.
        #[arg(long)]
        force: bool,
    },
    /// Remove a source package from a distribution (into its rollbacks, unless --without-rollback).
    Remove {
        source: PackageName,
        distribution: Dist,
        #[arg(long)]
        without_rollback: bool,
        #[arg(long)]
        version: Option<Version>,
    },
    /// List a source package in every distribution of the repositories.
    Ls {
        source: PackageName,
        /// Repositories to look in (default: all).
        #[arg(long, value_delimiter = ',')]
        repositories: Vec<RepoId>,
    },
    /// Like ls, with every binary package and its architecture.
    Show {
        source: PackageName,
        #[arg(long, value_delimiter = ',')]
        repositories: Vec<RepoId>,
    },
    /// List the source packages of a distribution.
    List { distribution: Dist },
    /// Snapshots of a distribution, served at dists/<dist>/snapshots/<name>/.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Verify every published distribution against its index and signature (republishing what is behind).
    Check { repository: RepoId },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is asked for, or read from standard input.
    Add {
        name: String,
        #[arg(long, value_enum, default_value_t = Role::Login)]
        role: Role,
    },
    /// List users.
    Ls,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    Create { distribution: Dist, name: SnapshotName },
    Ls { distribution: Dist },
    Delete { distribution: Dist, name: SnapshotName },
}

fn print<T: serde::Serialize>(json: bool, value: &T, plain: impl FnOnce(&T) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        let text = plain(value);
        if !text.is_empty() {
            println!("{text}");
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. } | Command::Helper { .. });
    // Before any thread exists: take systemd's sockets and clear LISTEN_* for our children.
    // SAFETY: single-threaded here.
    let inherited = if serving { unsafe { buildbay::systemd::take_listeners() } } else { Ok(Default::default()) };
    buildbay::systemd::init_logging(&cli.log, serving);
    let result = match inherited {
        Ok(inherited) => run(cli, inherited),
        Err(e) => Err(anyhow::anyhow!("reading sockets passed by systemd: {e}")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("buildbay: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, inherited: buildbay::systemd::Inherited) -> Result<()> {
    let json = cli.json;
    if let Command::Api { url, token, user, confirm, call } = &cli.command {
        return api_client(url, token.clone(), user.as_deref(), *confirm, json, call);
    }
    if let Command::ApiReference = &cli.command {
        print!("{}", buildbay::api::registry::markdown());
        return Ok(());
    }
    if let Command::Man { dir } = &cli.command {
        use clap::CommandFactory;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        return clap_mangen::generate_to(Cli::command(), dir)
            .with_context(|| format!("writing man pages into {}", dir.display()));
    }
    if let Command::BuilderExec {
        build_log: log,
        stop_post,
        result,
        note,
        after_lintian,
        after_user,
        after_dir,
        after_lintian_opt,
        checks,
        checks_only,
        sbuild_setup,
        apt_cache,
        setup_blocks,
        installed,
        ccache,
        nspawn_root,
        uid_base,
        command,
    } = &cli.command
    {
        use buildbay::builder::exec;
        if let Some(result) = stop_post {
            return exec::stop_post(result).with_context(|| format!("writing {}", result.display()));
        }
        if let (Some(dir), Some(cache)) = (sbuild_setup, apt_cache) {
            let blocks = buildbay::protocol::settings::Blocks::parse_any(&setup_blocks.replace(',', " "))
                .context("--setup-blocks")?;
            let setup = exec::SessionSetup {
                dir,
                apt_cache: cache,
                blocks: blocks.words(),
                installed: *installed,
                ccache: ccache.as_deref(),
            };
            let code = exec::sbuild_setup(&setup, command).context("the session's setup")?;
            std::process::exit(code);
        }
        if let (Some(image), Some(base)) = (nspawn_root, uid_base) {
            let code = buildbay::builder::machine_root::run(image, *base, command)
                .with_context(|| format!("the machine root on {}", image.display()))?;
            std::process::exit(code);
        }
        let log = log.as_ref().context("--build-log is required")?;
        let after = exec::AfterStep {
            lintian_chroot: after_lintian.clone(),
            user: after_user.clone(),
            dir: after_dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/sbuild/build")),
            lintian_options: after_lintian_opt.clone(),
            checks: checks.clone(),
        };
        let code = if *checks_only {
            exec::relay_checks(log, &after).context("the checks after the build")?
        } else {
            exec::relay(log, result.as_deref(), note, &after, command)
                .with_context(|| format!("running {command:?}"))?
        };
        std::process::exit(code);
    }
    if let Command::Helper { socket, daemon_user, build } = &cli.command {
        return helper(&cli.state, socket, daemon_user, build, inherited);
    }
    if let Command::Import { home, archive_key } = &cli.command {
        // As root (mini-buildd's home is its user's); the result goes to the owner of the
        // (empty) state directory, when it is not root.
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&cli.state).ok().map(|m| (m.uid(), m.gid())).filter(|(u, _)| *u != 0);
        let report = buildbay::import::import_into(&cli.state, home, archive_key.as_deref())?;
        if let Some((uid, gid)) = owner {
            chown_tree(&cli.state, uid, gid).with_context(|| format!("giving {} to its owner", cli.state.display()))?;
        }
        print(cli.json, &report, |r| {
            let mut out: Vec<String> = r.carried.iter().map(|c| format!("carried over: {c}")).collect();
            out.extend(r.left.iter().map(|l| format!("not carried over: {l}")));
            out.join("\n")
        });
        return Ok(());
    }
    // Files the caller names are read as the caller, before working as the state's owner.
    let key_text = match &cli.command {
        Command::Uploader(UploaderCommand::Add { key, .. }) => {
            Some(std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?)
        }
        _ => None,
    };
    let owner = become_state_owner(&cli.state)?;
    let inst = match Instance::open(&cli.state) {
        // A running daemon holds the state: users and uploaders go through its API.
        Err(buildbay::instance::InstanceError::Store(buildbay::store::StoreError::InUse(_)))
            if matches!(cli.command, Command::User(_) | Command::Uploader(_)) =>
        {
            return via_daemon(&cli.state, cli.command, key_text, json);
        }
        other => other.with_context(|| format!("opening state directory {}", cli.state.display()))?,
    };
    match cli.command {
        Command::BuilderExec { .. }
        | Command::Man { .. }
        | Command::ApiReference
        | Command::Helper { .. }
        | Command::Import { .. } => {
            unreachable!("handled before the state directory is opened")
        }
        Command::Serve { http, no_default_setup, ftp, build } => {
            let opts = buildbay::serve::Options {
                http,
                ftp: ftp.ftp,
                https: ftp.https,
                tls: ftp.tls_cert.clone().zip(ftp.tls_key.clone()),
                https_redirect: ftp.https_redirect,
                public_host: ftp.public_host.clone(),
                keyserver: Some(ftp.keyserver.trim().to_owned()).filter(|k| !k.is_empty()),
                incoming: buildbay::incoming::Limits {
                    max_file: ftp.max_file_size,
                    max_upload: ftp.max_upload_size,
                    timeout: std::time::Duration::from_secs(ftp.incoming_timeout),
                },
                quota: buildbay::incoming::ftp::Quota {
                    per_peer: ftp.ftp_quota_per_peer.unwrap_or(ftp.max_upload_size),
                    total: ftp.ftp_quota_total.unwrap_or(ftp.max_upload_size.saturating_mul(4)),
                    reserve: ftp.disk_reserve,
                },
                ftp_options: buildbay::incoming::ftp::FtpOptions {
                    passive_ports: ftp.ftp_passive_ports.clone(),
                    tls: ftp.ftp_cert.clone().zip(ftp.ftp_key.clone()),
                },
                packaging_timeout: std::time::Duration::from_secs(build.packaging_timeout),
                remote_deadline: std::time::Duration::from_secs(build.remote_deadline),
                keep_events_days: ftp.keep_events_days,
                expire_builds_days: ftp.expire_builds_days,
                jobs_clock_offset_days: ftp.jobs_clock_offset_days,
                hook_timeout: std::time::Duration::from_secs(ftp.hook_timeout),
                smtp: ftp.smtp.clone().map(|url| buildbay::mail::SmtpOptions {
                    url,
                    ca: ftp.smtp_ca.clone(),
                    password_file: ftp.smtp_password_file.clone(),
                    retry: std::time::Duration::from_secs(ftp.mail_retry_seconds.max(1)),
                }),
                build: build.setup(&cli.state),
                default_setup: !no_default_setup,
            };
            if build.chroot_upgrade_interval.is_some() {
                tracing::warn!(
                    "--chroot-upgrade-interval is ignored: the job `cronjob_chroot_upkeep (DAILY)` upgrades the chroots now (see the crontab page); remove the option"
                );
            }
            buildbay::serve::run(inst, opts, inherited)?;
        }
        Command::Setup {
            identity,
            archive_origin,
            from_origins,
            archives,
            archives_from_apt_sources,
            sources,
            distributions,
            repositories,
            chroots,
            key_algo,
        } => {
            let report = inst.setup(&SetupOptions {
                identity,
                archive_origin,
                distributions,
                repositories,
                chroots,
                archives,
                archives_from_apt_sources,
                sources,
                from_origins,
                // Remotes need the running daemon (its URL): `buildbay api setup --remotes`.
                remotes: vec![],
                key_algo,
                // mini-buildd's other spellings (the --*-from-* options): `buildbay api setup`.
                // Working as the state's owner (not root): chroots are the helper's work.
                places: buildbay::chroot::Places {
                    helper: owner.and_then(|_| {
                        let socket = PathBuf::from(buildbay::rootops::SOCKET);
                        socket.exists().then_some(socket)
                    }),
                    ..Default::default()
                },
                ..Default::default()
            })?;
            print(json, &report, |r| {
                r.iter()
                    .map(|i| {
                        format!(
                            "{:<12} {:<24} {}{}",
                            i.kind,
                            i.id,
                            i.status,
                            i.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::PubKey => print!("{}", inst.pub_key()?),
        Command::User(UserCommand::Add { name, role }) => {
            let password = read_password(&format!("Password for {name}: "))?;
            let u = buildbay::auth::add_user(&inst.store, &name, &password, role)?;
            println!("created user {} ({})", u.name, u.role.as_str());
        }
        Command::User(UserCommand::Ls) => {
            let users = buildbay::auth::list_users(&inst.store)?;
            let list: Vec<serde_json::Value> =
                users.iter().map(|u| serde_json::json!({"name": u.name, "role": u.role})).collect();
            print(json, &list, |l| {
                l.iter()
                    .map(|u| format!("{} {}", u["name"].as_str().unwrap_or(""), u["role"].as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Api { .. } => unreachable!("handled before opening the state directory"),
        Command::Repo(cmd) => repo(&inst, json, cmd)?,
        Command::Uploader(UploaderCommand::Add { user, key, repositories }) => {
            let text = key_text.with_context(|| format!("reading {}", key.display()))?;
            let cert = buildbay::gpg::one_key(text.as_bytes()).with_context(|| key.display().to_string())?;
            use buildbay::config::{Action, Kind, Object, Uploader};
            let up = Uploader {
                user: user.clone(),
                key: text,
                fingerprint: None,
                may_upload_to: repositories,
                status: Default::default(),
            };
            // The checks an edit on the configuration page gets, then prepare, check, activate.
            inst.save_object(Object::Uploader(up))?;
            let done = inst.lifecycle(&buildbay::chroot::Places::default(), Kind::Uploader, &user, Action::Pca)?;
            if !done.status().is_active() {
                anyhow::bail!(
                    "uploader {user}: not activated: {}",
                    done.status().message.as_deref().unwrap_or("its check failed")
                );
            }
            println!("uploader {user}: key {} is active", cert.fingerprint());
        }
    }
    Ok(())
}

/// `buildbay user …` and `buildbay uploader …` while the daemon runs: the same changes through
/// its API, as the local administrator (`<state>/run/local-admin`, which only root and the
/// daemon's user read).
fn via_daemon(state: &std::path::Path, command: Command, key_text: Option<String>, json: bool) -> Result<()> {
    use buildbay::{api::registry, client};
    let (url, token) = buildbay::auth::LocalAdmin::read(state).with_context(|| {
        format!(
            "{} is in use by a running daemon, and its local administration file cannot be read; run this as root or as the daemon's user",
            state.display()
        )
    })?;
    let api = client::Client::new(&url, Some(token));
    let call = |argv: Vec<String>| -> Result<serde_json::Value> {
        let name = argv[0].clone();
        let c = registry::find(&name).with_context(|| format!("no API call {name}"))?;
        let m = client::command(c).try_get_matches_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        let args = client::args_from_matches(c, &m).map_err(|e| anyhow::anyhow!("{e}"))?;
        api.call(&args, true).with_context(|| format!("{name} through the running daemon at {url}"))
    };
    match command {
        Command::User(UserCommand::Add { name, role }) => {
            let password = read_password(&format!("Password for {name}: "))?;
            call(vec![
                "user_add".into(),
                name.clone(),
                "--role".into(),
                role.as_str().into(),
                // `--password=…`: a password that starts with '-' is a value, never an option.
                format!("--password={password}"),
            ])?;
            println!("created user {name} ({}) through the running daemon", role.as_str());
        }
        Command::User(UserCommand::Ls) => {
            let users = call(vec!["user_ls".into()])?;
            print!("{}", client::render(&users, json));
        }
        Command::Uploader(UploaderCommand::Add { user, key, repositories }) => {
            let text = key_text.with_context(|| format!("reading {}", key.display()))?;
            let cert = buildbay::gpg::one_key(text.as_bytes()).with_context(|| key.display().to_string())?;
            let fields = serde_json::json!({"user": user, "key": text, "may_upload_to": repositories});
            call(vec!["config_set".into(), "uploader".into(), fields.to_string()])?;
            let done = call(vec!["config_action".into(), "uploader".into(), user.clone(), "pca".into()])?;
            if done["state"] != "ACTIVE" {
                anyhow::bail!(
                    "uploader {user}: not activated: {}",
                    done["message"].as_str().unwrap_or("its check failed")
                );
            }
            println!("uploader {user}: key {} is active (through the running daemon)", cert.fingerprint());
        }
        _ => unreachable!("only users and uploaders go through the daemon"),
    }
    Ok(())
}

/// As root, on a state directory that another user owns (the packaged daemon's `buildbay`),
/// work as that user, so that nothing in it becomes root's. Returns the user's name if so.
/// Give a tree to `uid:gid`, never through a symbolic link.
fn chown_tree(path: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn become_state_owner(state: &std::path::Path) -> Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let Ok(meta) = std::fs::metadata(state) else { return Ok(None) };
    if meta.uid() == 0 {
        return Ok(None);
    }
    let uid = nix::unistd::Uid::from_raw(meta.uid());
    let user = nix::unistd::User::from_uid(uid)
        .context("looking up the state directory's owner")?
        .with_context(|| format!("{} belongs to uid {uid}, which is no user; chown it", state.display()))?;
    nix::unistd::setgroups(&[user.gid]).context("dropping root's groups")?;
    nix::unistd::setgid(user.gid).context("becoming the state's group")?;
    nix::unistd::setuid(user.uid).context("becoming the state's owner")?;
    tracing::info!(user = %user.name, "working as {}, the owner of {}", user.name, state.display());
    Ok(Some(user.name))
}

/// `buildbay helper`: answer the daemon's root requests until stopped.
fn helper(
    state: &std::path::Path,
    socket: &std::path::Path,
    daemon_user: &str,
    build: &BuildArgs,
    inherited: buildbay::systemd::Inherited,
) -> Result<()> {
    use buildbay::systemd;
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "the buildbay helper does root's work: run it as root");
    let user =
        nix::unistd::User::from_name(daemon_user).context("looking up the daemon's user")?.with_context(|| {
            format!("there is no user {daemon_user}; the package's sysusers.d makes it, or pass --daemon-user")
        })?;
    let mut setup = build.setup(state);
    setup.places.helper = None;
    let stager = setup.stager(true).context("setting up the build stager")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let bus = systemd::bus::Systemd::connect()
            .await
            .context("the helper starts build units: connecting to systemd over D-Bus")?;
        let listener = match inherited.helper {
            Some(l) => {
                tracing::info!("answering on the socket systemd passed");
                tokio::net::UnixListener::from_std(l).context("using the inherited helper socket")?
            }
            None => bind_helper_socket(socket, user.gid.as_raw())?,
        };
        let helper = std::sync::Arc::new(buildbay::helper::Helper {
            state: state.to_owned(),
            daemon_uid: user.uid.as_raw(),
            daemon_gid: user.gid.as_raw(),
            runner: buildbay::builder::runner::systemd::SystemdRunner::new(bus, stager.clone()),
            stager,
            chroots: Default::default(),
            chroots_queued: tokio::sync::Semaphore::new(buildbay::helper::MAX_CHROOT_OPS),
        });
        tracing::info!(user = daemon_user, "buildbay helper ready");
        systemd::notify_ready("answering the daemon");
        tokio::select! {
            _ = helper.serve(listener) => {}
            _ = systemd::shutdown_signal() => {}
        }
        systemd::notify_stopping();
        Ok(())
    })
}

/// The helper's own socket (no systemd): 0660, root and the daemon's group.
fn bind_helper_socket(socket: &std::path::Path, gid: u32) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(anyhow::Error::new(e).context(format!("removing the old socket {}", socket.display())));
        }
        _ => {}
    }
    let l = tokio::net::UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    nix::unistd::chown(socket, None, Some(nix::unistd::Gid::from_raw(gid)))
        .with_context(|| format!("giving {} to the daemon's group", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "no socket from systemd: listening myself");
    Ok(l)
}

/// Read a password: from $BUILDBAY_PASSWORD, from a terminal without echo, or a line of stdin.
fn read_password(prompt: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    if let Ok(p) = std::env::var("BUILDBAY_PASSWORD") {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    let saved = if stdin.is_terminal() {
        eprint!("{prompt}");
        std::io::stderr().flush().ok();
        let t = nix::sys::termios::tcgetattr(&stdin).ok();
        if let Some(t) = &t {
            let mut quiet = t.clone();
            quiet.local_flags.remove(nix::sys::termios::LocalFlags::ECHO);
            let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &quiet);
        }
        t
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &t);
        eprintln!();
    }
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn api_client(
    url: &str,
    token: Option<String>,
    user: Option<&str>,
    confirm: bool,
    json: bool,
    call: &[String],
) -> Result<()> {
    use buildbay::client;
    let argv = std::iter::once("buildbay api".to_owned()).chain(call.iter().cloned());
    let matches = match client::api_command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            print!("{e}");
            return Ok(());
        }
        Err(e) => bail!("{e}"),
    };
    let (name, sub) = matches.subcommand().context("no call given")?;
    let reg = buildbay::api::registry::find(name).context("unknown call")?;
    let args = client::args_from_matches(reg, sub).map_err(|e| anyhow::anyhow!(e.detail))?;
    let mut c = client::Client::new(url, token);
    if let Some(u) = user {
        let password = read_password(&format!("Password for {u} at {url}: "))?;
        c.login(u, &password)?;
    }
    let result = c.call(&args, confirm)?;
    println!("{}", client::render(&result, json));
    Ok(())
}

fn repos_or_all(inst: &Instance, repos: Vec<RepoId>) -> Result<Vec<RepoId>> {
    if !repos.is_empty() {
        return Ok(repos);
    }
    Ok(inst.list::<buildbay::config::Repository>()?.into_iter().map(|r| r.identity).collect())
}

fn repo(inst: &Instance, json: bool, cmd: RepoCommand) -> Result<()> {
    let archive = inst.archive()?;
    match cmd {
        RepoCommand::Include { distribution, changes, force } => {
            let results = archive.include_many(&distribution, &changes, force);
            let mut failed = 0;
            for (path, r) in changes.iter().zip(results) {
                match r {
                    Ok(rep) => print(json, &rep, |r| {
                        format!("{}: included {} {} into {}", path.display(), r.source, r.version, r.distribution)
                    }),
                    Err(e) => {
                        failed += 1;
                        eprintln!("buildbay: {}: {e}", path.display());
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} uploads were not included; the repository is unchanged for those", changes.len());
            }
        }
        RepoCommand::Migrate { source, distribution, full, version, force } => {
            let places = buildbay::chroot::Places::default();
            let gate = buildbay::gate::Gate { inst, archive: &archive, places: &places };
            let (events, refused) = gate.migrate(&source, &distribution, version.as_ref(), full, force)?;
            for ev in &events {
                ev.log();
                for u in ev.extra.get("unchecked").and_then(|u| u.as_array()).into_iter().flatten() {
                    eprintln!("buildbay: not checked: {}", u.as_str().unwrap_or_default());
                }
                print(json, ev, |e| {
                    format!(
                        "migrated {} {} from {} to {}",
                        e.source,
                        e.version,
                        e.distribution,
                        e.extra["migrated_to"].as_str().unwrap_or("?")
                    )
                });
            }
            if let Some(r) = refused {
                bail!(
                    "{source} cannot migrate from {} yet: {}. Fix that, or migrate it anyway with --force",
                    r.from,
                    r.reasons.join("; ")
                );
            }
        }
        RepoCommand::Remove { source, distribution, without_rollback, version } => {
            let ev = archive.remove(&source, &distribution, without_rollback, version.as_ref())?;
            ev.log();
            print(json, &ev, |e| format!("removed {} {} from {}", e.source, e.version, e.distribution));
        }
        RepoCommand::Ls { source, repositories } | RepoCommand::Show { source, repositories } if json => {
            let mut all = Vec::new();
            for r in repos_or_all(inst, repositories)? {
                all.extend(archive.ls(&r, &source)?);
            }
            print(true, &all, |_| String::new());
        }
        RepoCommand::Ls { source, repositories } => {
            for r in repos_or_all(inst, repositories)? {
                for e in archive.ls(&r, &source)? {
                    println!(
                        "{:<20} {:<28} {:<40} {}",
                        e.source,
                        e.version.to_string(),
                        e.distribution.to_string(),
                        e.component
                    );
                }
            }
        }
        RepoCommand::Show { source, repositories } => {
            for r in repos_or_all(inst, repositories)? {
                for e in archive.ls(&r, &source)? {
                    println!("{} {} in {} ({})", e.source, e.version, e.distribution, e.component);
                    for b in &e.binaries {
                        println!("  {} {} {}", b.package, b.version, b.arch);
                    }
                }
            }
        }
        RepoCommand::List { distribution } => {
            let list = archive.list_dist(&distribution)?;
            print(json, &list, |l| {
                l.iter().map(|r| format!("{} {}", r.source, r.version)).collect::<Vec<_>>().join("\n")
            });
        }
        RepoCommand::Snapshot(SnapshotCommand::Create { distribution, name }) => {
            archive.snapshot_create(&distribution, &name)?;
            println!("created snapshot {name} of {distribution}");
        }
        RepoCommand::Snapshot(SnapshotCommand::Ls { distribution }) => {
            let names = archive.snapshot_ls(&distribution)?;
            print(json, &names, |n| n.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n"));
        }
        RepoCommand::Snapshot(SnapshotCommand::Delete { distribution, name }) => {
            archive.snapshot_delete(&distribution, &name)?;
            println!("deleted snapshot {name} of {distribution}");
        }
        RepoCommand::Check { repository } => {
            archive.check_repository(&repository)?;
            println!("repository {repository}: every distribution verifies");
        }
    }
    Ok(())
}
