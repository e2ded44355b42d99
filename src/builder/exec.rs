//! Process plumbing of a build: `buildbay builder-exec` (the unit's main process, which copies
//! the build's output to the build log and to the journal) and the child-process runner.

use super::Ended;
use super::backend::CheckRun;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// What runs after a successful build, once its result can go.
#[derive(Debug, Clone, Default)]
pub struct AfterStep {
    /// lintian in ignore mode on this chroot's fresh session…
    pub lintian_chroot: Option<String>,
    /// …as this user (the slot's build user)…
    pub user: Option<String>,
    /// …on copies in this directory, the session's `/build`…
    pub dir: PathBuf,
    /// …with these extra options (the distribution's `lintian_extra_options`).
    pub lintian_options: Vec<String>,
    /// The checks to run after a successful build (`backend::CHECKS_PLAN`): the gating ones
    /// into the build log before the result, the others after it, each into its own log.
    pub checks: Option<PathBuf>,
}

/// Copy standard input to `$1` without the lines the image's `/etc/apt/sources.list` has.
const APT_SOURCES_WITHOUT_THE_IMAGES: &str = r#"if [ -r /etc/apt/sources.list ]; then grep -vxF -f /etc/apt/sources.list > "$1"; [ $? -le 1 ]; else cat > "$1"; fi"#;

/// The relay of a build (`buildbay builder-exec --build-log …`): run the build command logged,
/// with its phases timed; record its end in `result` when given (child-process runner; under
/// systemd, ExecStopPost does that). When the build succeeded and there is an after step
/// (lintian in ignore mode), mark the build finished (`built`) first, so that its result goes
/// out at once, then run the step into its own log; its outcome does not change the build's.
pub fn relay(
    log: &Path,
    result: Option<&Path>,
    notes: &[String],
    after: &AfterStep,
    argv: &[String],
) -> std::io::Result<i32> {
    let code = run_logged(log, Some(&log.with_file_name(super::phases::FILE)), notes, argv)?;
    // Before anything says the build ended: what it left in out/ becomes plain regular files
    // that the daemon (which may not be root) can read.
    sanitise_out(log);
    if code == 0 {
        // Whatever happens to the checks and the after steps, the unit's end is still
        // recorded below.
        if let Err(e) = checks_and_after(log, after) {
            eprintln!("buildbay: the checks after the build failed to run: {e}");
        }
    }
    if let Some(result) = result {
        record_exit(result, code)?;
    }
    Ok(code)
}

/// The relay of a build's checks unit (`buildbay builder-exec --build-log … --checks-only`):
/// no command; the checks and the after steps of a build that succeeded, as [`relay`] runs
/// them after the build, into the build's logs.
pub fn relay_checks(log: &Path, after: &AfterStep) -> std::io::Result<i32> {
    checks_and_after(log, after)?;
    Ok(0)
}

/// After a successful build: the gating checks, each into the build log, their verdicts into
/// the build's `checks` file; then, when something runs after the result (lintian or a check in
/// ignore mode), the `built` marker, and each of those into its own log.
fn checks_and_after(log: &Path, after: &AfterStep) -> std::io::Result<()> {
    let checks = match &after.checks {
        Some(path) => read_checks(path)?,
        None => vec![],
    };
    let (gating, later): (Vec<CheckRun>, Vec<CheckRun>) = checks.into_iter().partition(|c| c.mode.gates());
    if !gating.is_empty() {
        // Where the build's own log ends: what the checks print after it is no summary.
        let end = std::fs::symlink_metadata(log)?.len();
        crate::store::write_file_synced(&log.with_file_name(super::BUILD_END), end.to_string().as_bytes())?;
    }
    let mut verdicts = String::new();
    for c in &gating {
        let verdict = run_check(log, c, true)?;
        verdicts.push_str(&format!("{}: {verdict}\n", c.check.field()));
    }
    if !verdicts.is_empty() {
        let mut f = append_to(&log.with_file_name(super::CHECKS))?;
        f.write_all(verdicts.as_bytes())?;
        f.sync_all()?;
    }
    if after.lintian_chroot.is_none() && later.is_empty() {
        return Ok(());
    }
    Ended::of_exit(0).write(&log.with_file_name(super::BUILT))?;
    if let Some(chroot) = &after.lintian_chroot
        && let Err(e) = run_after_lintian(log, chroot, after)
    {
        eprintln!("buildbay: lintian after the result failed to run: {e}");
    }
    for c in &later {
        run_check(&log.with_file_name(super::after_log(c.check)), c, false)?;
    }
    Ok(())
}

/// A log or the verdicts, opened to append (made if missing), never through a symlink.
fn append_to(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o644).custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

/// The checks' plan, as staging wrote it (bounded, never through a symlink).
fn read_checks(path: &Path) -> std::io::Result<Vec<CheckRun>> {
    let (f, _) = crate::protocol::tar::open_regular(path)?;
    let mut raw = Vec::new();
    f.take(1 << 20).read_to_end(&mut raw)?;
    serde_json::from_slice(&raw).map_err(std::io::Error::other)
}

/// Run one check's machine with its output into `log` (appended, or a log of its own), and end
/// with its verdict line.
fn run_check(log: &Path, c: &CheckRun, append: bool) -> std::io::Result<&'static str> {
    let name = c.check.field();
    let note = format!("{name} (mode {}) in a fresh machine of the image", c.mode);
    let code = if append {
        run_into(append_to(log)?, None, &[note], &c.argv)?
    } else {
        run_logged(log, None, &[note], &c.argv)?
    };
    let verdict = super::backend::nspawn::check_verdict(code);
    let mut f = append_to(log)?;
    writeln!(f, "buildbay: {name}: {verdict} (exit code {code})")?;
    f.sync_all()?;
    Ok(verdict)
}

/// Sanitise the output of the build beside a build's file (its log or its result).
fn sanitise_out(beside: &Path) {
    if let Err(e) = super::result::sanitise(beside.parent().unwrap_or(Path::new("."))) {
        eprintln!("buildbay: cannot sanitise the build's output: {e}");
    }
}

/// Mark the build built, then run lintian on its files into its own log: in a fresh session of
/// the chroot, as the build user, on copies of the build's regular files (never through a
/// symlink it left) in the slot's `/build`. The copies are made through a directory descriptor
/// of a fresh directory, so nothing there is followed even if the directory is renamed meanwhile.
fn run_after_lintian(log: &Path, chroot: &str, after: &AfterStep) -> std::io::Result<()> {
    let (user, build) = (after.user.as_deref(), after.dir.as_path());
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    Ended::of_exit(0).write(&log.with_file_name(super::BUILT))?;
    let after_log = log.with_file_name(super::AFTER_LOG);
    let out = log.with_file_name(super::OUT);
    let name = format!("buildbay-lintian-{}", crate::protocol::fresh_micros());
    let scratch = build.join(&name);
    nix::unistd::mkdir(&scratch, Mode::S_IRWXU).map_err(std::io::Error::from)?;
    let copy = || -> std::io::Result<Vec<String>> {
        let dir = nix::fcntl::open(&scratch, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(std::io::Error::from)?;
        let mut changes = Vec::new();
        for e in std::fs::read_dir(&out)? {
            let e = e?;
            let Ok(file) = e.file_name().into_string() else { continue };
            if file.parse::<crate::deb::FileName>().is_err() {
                continue;
            }
            let Ok((mut from, _)) = crate::protocol::tar::open_regular(&e.path()) else { continue };
            let to = openat(
                &dir,
                file.as_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map_err(std::io::Error::from)?;
            std::io::copy(&mut from, &mut std::fs::File::from(to))?;
            if file.ends_with(".changes") {
                changes.push(file);
            }
        }
        nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(0o755)).map_err(std::io::Error::from)?;
        Ok(changes)
    };
    let changes = copy();
    let argv = match &changes {
        Ok(changes) => {
            let mut a: Vec<String> = vec!["schroot".into(), "-c".into(), chroot.to_owned(), "-d".into(), "/".into()];
            if let Some(u) = user {
                a.extend(["-u".to_owned(), u.to_owned()]);
            }
            a.extend([
                "--".into(),
                "lintian".into(),
                "--suppress-tags".into(),
                "bad-distribution-in-changes-file".into(),
            ]);
            a.extend(after.lintian_options.iter().cloned());
            a.extend(changes.iter().map(|c| format!("/build/{name}/{c}")));
            a
        }
        Err(e) => vec!["sh".into(), "-c".into(), format!("echo 'buildbay: cannot copy the build files: {e}'; exit 1")],
    };
    let code = run_logged(&after_log, None, &[], &argv);
    let _ = std::fs::remove_dir_all(&scratch);
    let code = code?;
    let text = std::fs::read_to_string(&after_log).unwrap_or_default();
    let count = |p: &str| text.lines().filter(|l| l.starts_with(p)).count();
    let mut f = std::fs::OpenOptions::new().append(true).open(&after_log)?;
    writeln!(
        f,
        "Lintian: {} errors, {} warnings (lintian exit code {code})\nbuildbay: exit code {code}; the build's result did not wait for this",
        count("E: "),
        count("W: ")
    )
}

/// What sbuild's pre-build command sets up in a session (`buildbay builder-exec --sbuild-setup
/// DIR --apt-cache CACHE --setup-blocks "…" [--installed] [--ccache HOSTDIR] -- EXEC…`).
pub struct SessionSetup<'a> {
    /// The build directory (its `.config` from the request).
    pub dir: &'a Path,
    /// The slot's apt archive cache.
    pub apt_cache: &'a Path,
    /// The request's setup blocks (checked words).
    pub blocks: &'a [String],
    /// The image has every build dependency: no apt setup, only the blocks' install phase.
    pub installed: bool,
    /// The slot's ccache directory, for the ccache config block.
    pub ccache: Option<&'a Path>,
}

/// The setup of an sbuild session, run by sbuild as a pre-build command on the host with
/// `EXEC…`, the session's exec prefix (`schroot -d / -c <session> --run-session -u root -p --`,
/// in one argument or split into words):
/// - first, before anything runs in the session, the slot's apt archive cache is bound over the
///   session's `/var/cache/apt/archives` (schroot unmounts it with the session; without it, apt
///   just downloads), and the build's ccache directory at
///   [`CCACHE_IN_BUILD`](super::backend::CCACHE_IN_BUILD), both `nosuid,nodev`;
/// - unless `installed`: the setup blocks' apt options, the request's apt key, sources and
///   preferences from `DIR/.config`, and `apt-get update` of just those sources (the base
///   archive's lists come with the image);
/// - the setup blocks' install phase (ccache, eatmydata), then the distribution's chroot setup
///   script (see `backend::SETUP_BLOCKS_SH`).
///
/// No value reaches a shell line: block names are arguments of a constant script.
pub fn sbuild_setup(s: &SessionSetup<'_>, exec: &[String]) -> std::io::Result<i32> {
    let exec = exec.join(" ");
    if exec.contains(['\'', '"', '\\', '$', '`']) {
        return Err(std::io::Error::other(format!("unexpected session prefix {exec:?}")));
    }
    let prefix: Vec<&str> = exec.split_whitespace().collect();
    let session = prefix.windows(2).find(|w| w[0] == "-c").map(|w| w[1]).unwrap_or_default();
    if prefix.first() != Some(&"schroot") || session.is_empty() {
        return Err(std::io::Error::other(format!("unexpected session prefix {exec:?}")));
    }
    let in_session = |args: &[&str]| {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).args(args);
        c
    };
    let blocks = |phase: &str| -> std::io::Result<bool> {
        let script = format!("{}\nsetup_blocks \"$@\"", super::backend::SETUP_BLOCKS_SH);
        let mut args = vec!["sh", "-c", &script, "sh", phase];
        args.extend(s.blocks.iter().map(String::as_str));
        Ok(in_session(&args).status()?.success())
    };
    // The session's root on the host, to bind the caches into.
    let session = session.strip_prefix("session:").unwrap_or(session);
    let location = Command::new("schroot").args(["--location", "-c"]).arg(format!("session:{session}")).output();
    let location = location
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|l| !l.is_empty());
    // Both caches are bound before anything runs in the session (no maintainer script yet):
    // through a descriptor of the mount point, opened one component at a time without
    // following a symlink.
    let bind = |from: &Path, inside: &str| -> bool {
        let Some(root) = &location else { return false };
        let Ok(fd) = open_beneath(Path::new(root), inside) else { return false };
        use std::os::fd::AsRawFd;
        let at = format!("/proc/self/fd/{}", fd.as_raw_fd());
        use nix::mount::{MsFlags, mount};
        mount(Some(from), at.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>).is_ok()
            && mount(
                None::<&str>,
                &Path::new(root).join(inside.trim_start_matches('/')),
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                None::<&str>,
            )
            .is_ok()
    };
    if !s.installed {
        if bind(s.apt_cache, "/var/cache/apt/archives") {
            println!("buildbay: apt archive cache {}", s.apt_cache.display());
        } else {
            println!("buildbay: no apt archive cache for this session; apt downloads what it needs");
        }
    }
    if let Some(ccache) = s.ccache {
        let inside = super::backend::CCACHE_IN_BUILD;
        let made = in_session(&["mkdir", "-p", inside]).status()?.success();
        if made && bind(ccache, inside) {
            println!("buildbay: ccache directory {} at {inside}", ccache.display());
        } else {
            // ccache then keeps its cache in the session, which goes with it.
            in_session(&["chmod", "1777", inside]).status()?;
            println!("buildbay: no persistent ccache directory for this session; ccache starts empty");
        }
    }
    if !s.installed && (!blocks("apt")? || apt_setup(s.dir, &in_session)? != 0) {
        return Ok(1);
    }
    if !blocks("install")? {
        return Ok(1);
    }
    if s.blocks.iter().any(|b| b == "show-sbuildrc") {
        println!("buildbay: setup block show-sbuildrc:");
        print!("{}", std::fs::read_to_string(s.dir.join(".sbuildrc")).unwrap_or_default());
    }
    if s.installed { Ok(0) } else { run_setup_script(s.dir, &in_session) }
}

/// A directory `inside` below `root`, opened (`O_PATH`) one component at a time, never through
/// a symlink.
fn open_beneath(root: &Path, inside: &str) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = open(root, flags, Mode::empty())?;
    for part in inside.split('/').filter(|p| !p.is_empty()) {
        if part == ".." || part == "." {
            return Err(nix::errno::Errno::EINVAL);
        }
        fd = openat(&fd, part, flags, Mode::empty())?;
    }
    Ok(fd)
}

/// The request's apt key, sources and preferences into the session, and `apt-get update` of
/// just those sources, retried.
fn apt_setup(dir: &Path, in_session: &dyn Fn(&[&str]) -> Command) -> std::io::Result<i32> {
    let config = dir.join(".config");
    for (file, dest) in [
        ("apt_keys", "/etc/apt/trusted.gpg.d/buildbay-buildrequest.asc"),
        ("apt_sources.list", "/etc/apt/sources.list.d/buildbay.list"),
        ("apt_preferences", "/etc/apt/preferences.d/buildbay"),
    ] {
        let (from, _) = crate::protocol::tar::open_regular(&config.join(file))?;
        // The sources the image has already (the base distribution, which a request names for
        // mini-buildd's builders) stay out of the request's list: apt would see them twice.
        let write = if file == "apt_sources.list" { APT_SOURCES_WITHOUT_THE_IMAGES } else { "cat > \"$1\"" };
        let status = in_session(&["sh", "-c", write, "sh", dest]).stdin(Stdio::from(from)).status()?;
        if !status.success() {
            println!("buildbay: writing {dest} into the session failed ({status})");
            return Ok(1);
        }
    }
    for t in ["10", "40", "80"] {
        let status = in_session(&[
            "timeout",
            t,
            "apt-get",
            "-q",
            "--error-on=any",
            "-o",
            "Dir::Etc::SourceList=/etc/apt/sources.list.d/buildbay.list",
            "-o",
            "Dir::Etc::SourceParts=-",
            "-o",
            "APT::Get::List-Cleanup=0",
            "update",
        ])
        .status()?;
        if status.success() {
            return Ok(0);
        }
        // e.g. the daemon restarting
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    Ok(1)
}

/// The distribution's chroot setup script, if the request has one: copied into the session
/// through standard input (never through a symlink) and run there as root.
fn run_setup_script(dir: &Path, in_session: &dyn Fn(&[&str]) -> Command) -> std::io::Result<i32> {
    let Some(script) = super::backend::setup_script(dir) else { return Ok(0) };
    let (from, _) = crate::protocol::tar::open_regular(&script)?;
    println!("buildbay: running the distribution's chroot setup script");
    let run = r#"cat > "$1" && chmod 0700 "$1" && "$1""#;
    let status =
        in_session(&["sh", "-c", run, "sh", "/root/buildbay-chroot-setup"]).stdin(Stdio::from(from)).status()?;
    if !status.success() {
        println!("buildbay: the distribution's chroot setup script failed ({status})");
        return Ok(1);
    }
    Ok(0)
}

/// Run `argv`, copying its stdout and stderr, in order, to our stdout and to `log`, after the
/// `notes` (one `buildbay: …` line each). The section headers that pass are timed in `phases`,
/// when given. Returns the exit code to exit with (128 + signal when it was killed).
///
/// A stop signal (SIGTERM, SIGINT) is for the build, not for this relay: it keeps copying until
/// the build's output ends, so that sbuild can clean up its session and say so in the log.
pub fn run_logged(log: &Path, phases: Option<&Path>, notes: &[String], argv: &[String]) -> std::io::Result<i32> {
    run_into(std::fs::File::create(log)?, phases, notes, argv)
}

/// [`run_logged`] into an open file (a log to append to).
fn run_into(mut file: std::fs::File, phases: Option<&Path>, notes: &[String], argv: &[String]) -> std::io::Result<i32> {
    let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("no command given"))?;
    ignore_stop_signals();
    let mut phases = phases.map(super::phases::Recorder::create).transpose()?;
    let mut stdout = std::io::stdout().lock();
    for note in notes {
        let line = format!("buildbay: {note}\n");
        file.write_all(line.as_bytes())?;
        let _ = stdout.write_all(line.as_bytes());
    }
    let (read, write) = nix::unistd::pipe().map_err(std::io::Error::from)?;
    let mut child = {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::from(write.try_clone()?)).stderr(Stdio::from(write));
        // The relay ignores stop signals; the command must not inherit that, or a stop would
        // wait for SIGKILL and leave its sessions behind.
        // SAFETY: only async-signal-safe calls (signal(2)) between fork and exec.
        unsafe { cmd.pre_exec(default_stop_signals) };
        cmd.spawn().map_err(|e| std::io::Error::new(e.kind(), format!("{program}: {e}")))?
        // `cmd` drops here, closing our copies of the write end.
    };
    let mut read = std::fs::File::from(read);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match read.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        file.write_all(&buf[..n])?;
        if let Some(p) = phases.as_mut() {
            p.feed(&buf[..n])?;
        }
        // The journal may be gone (daemon side); the log file is what counts.
        let _ = stdout.write_all(&buf[..n]);
    }
    file.sync_all()?;
    let code = exit_code(child.wait()?);
    if let Some(p) = phases {
        p.finish()?;
    }
    Ok(code)
}

fn default_stop_signals() -> std::io::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: SIG_DFL installs no handler code.
        unsafe { signal(sig, SigHandler::SigDfl) }.map_err(std::io::Error::from)?;
    }
    Ok(())
}

fn ignore_stop_signals() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; this process only relays output.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// Record how a command ended, as a child process runner (no systemd to say it).
pub fn record_exit(result: &Path, code: i32) -> std::io::Result<()> {
    Ended::of_exit(code).write(result)
}

/// ExecStopPost: record how the unit ended, from the variables systemd sets for it.
///
/// systemd reports `oom-kill` only on the unified hierarchy; on cgroup v1 (MemoryLimit=) the
/// kernel's kill shows as a plain failure. ExecStopPost still runs in the unit's cgroup, so its
/// OOM-kill counter says whether the memory limit ended the build.
pub fn stop_post(result: &Path) -> std::io::Result<()> {
    // A build stopped before its relay got to it (a timeout, a cancel).
    sanitise_out(result);
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "-".into());
    let mut service_result = var("SERVICE_RESULT");
    if service_result != "success" && own_cgroup_oom_kills() > 0 {
        service_result = "oom-kill".into();
    }
    Ended::new(&service_result, &var("EXIT_CODE"), &var("EXIT_STATUS")).write(result)
}

/// How many processes the kernel's OOM killer took in this process's memory cgroup.
fn own_cgroup_oom_kills() -> u64 {
    let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else { return 0 };
    memory_cgroup_files(&own)
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|text| oom_kill_count(&text))
        .max()
        .unwrap_or(0)
}

/// Where the memory controller's counters of the cgroup in `/proc/self/cgroup` live: v2
/// `memory.events`, v1 `memory.oom_control`.
fn memory_cgroup_files(proc_cgroup: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            out.push(root.join(rel).join("memory.events"));
        } else if controllers.split(',').any(|c| c == "memory") {
            out.push(root.join("memory").join(rel).join("memory.oom_control"));
        }
    }
    out
}

/// The `oom_kill N` line of `memory.events` or `memory.oom_control`.
fn oom_kill_count(text: &str) -> u64 {
    text.lines().filter_map(|l| l.strip_prefix("oom_kill ")).filter_map(|n| n.trim().parse().ok()).next().unwrap_or(0)
}

/// Start a build command as a child in its own process group, output to the build log only.
pub fn spawn_group(argv: &[String], dir: &Path, env: &[(String, String)]) -> std::io::Result<Child> {
    let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("no command given"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).process_group(0).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.spawn()
}

/// A child's exit status as an exit code (128 + N: killed by signal N), as a shell reports it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Stop a process group: SIGTERM, then SIGKILL after thirty seconds (sbuild ends its schroot
/// session on SIGTERM).
pub fn kill_group(pid: i32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let pg = Pid::from_raw(pid);
    if killpg(pg, Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..300 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if killpg(pg, None).is_err() {
            return;
        }
    }
    let _ = killpg(pg, Signal::SIGKILL);
}

/// Whether a process (group leader) still exists.
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_to_the_log_in_order_and_the_code_through() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let argv: Vec<String> = ["sh", "-c", "echo one; echo two >&2; echo three; exit 4"].map(String::from).to_vec();
        let phases = dir.path().join(super::super::phases::FILE);
        assert_eq!(run_logged(&log, Some(&phases), &["a note".into()], &argv).unwrap(), 4);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "buildbay: a note\none\ntwo\nthree\n");
        let killed: Vec<String> = ["sh", "-c", "kill -9 $$"].map(String::from).to_vec();
        assert_eq!(run_logged(&log, None, &[], &killed).unwrap(), 137);
        // The relay ignores SIGTERM, the command does not (it can be stopped).
        let term: Vec<String> = ["sh", "-c", "kill -TERM $$; echo survived"].map(String::from).to_vec();
        assert_eq!(run_logged(&log, None, &[], &term).unwrap(), 128 + 15);
        assert!(!std::fs::read_to_string(&log).unwrap().contains("survived"));
        let phases = std::fs::read_to_string(&phases).unwrap();
        // The start is stamped as the relay begins: milliseconds, not exactly zero, on a busy
        // machine (one run stamped 0.001).
        let start: Option<f64> = phases
            .strip_suffix('\n')
            .and_then(|p| p.lines().next())
            .and_then(|l| l.strip_suffix("\t(start)").and_then(|t| t.parse().ok()));
        assert!(start.is_some_and(|t| t < 0.5) && phases.ends_with("\t(end)\n"), "{phases}");
    }

    #[test]
    fn a_successful_build_is_marked_built_before_its_after_step() {
        let dir = tempfile::tempdir().unwrap();
        let (log, result) = (dir.path().join(super::super::LIVE_LOG), dir.path().join("result"));
        std::fs::create_dir_all(super::super::writing_out(dir.path())).unwrap();
        let after = AfterStep {
            lintian_chroot: Some("buildbay-no-such-chroot".into()),
            user: None,
            dir: dir.path().to_owned(),
            lintian_options: vec!["--info".into()],
            checks: None,
        };
        let ok: Vec<String> = ["sh", "-c", "echo building"].map(String::from).to_vec();
        assert_eq!(relay(&log, Some(&result), &[], &after, &ok).unwrap(), 0);
        assert_eq!(Ended::parse(&std::fs::read_to_string(&result).unwrap()).service_result, "success");
        assert!(dir.path().join(super::super::BUILT).exists(), "built before lintian ran (and failed)");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "building\n");
        // A failed build: no after step, no built mark.
        std::fs::remove_file(dir.path().join(super::super::BUILT)).unwrap();
        let _ = std::fs::remove_file(dir.path().join(super::super::AFTER_LOG));
        let bad: Vec<String> = ["sh", "-c", "exit 2"].map(String::from).to_vec();
        assert_eq!(relay(&log, Some(&result), &[], &after, &bad).unwrap(), 2);
        assert!(!dir.path().join(super::super::BUILT).exists() && !dir.path().join(super::super::AFTER_LOG).exists());
    }

    #[test]
    fn group_kill_takes_the_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let argv: Vec<String> =
            vec!["sh".into(), "-c".into(), format!("sleep 300 & echo $! > {}; wait", pidfile.display())];
        let mut child = spawn_group(&argv, dir.path(), &[]).unwrap();
        let mut grandchild = None;
        for _ in 0..100 {
            if let Some(p) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
                grandchild = Some(p);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let grandchild = grandchild.expect("the shell started its sleep");
        assert!(alive(grandchild));
        kill_group(child.id() as i32);
        let status = child.wait().unwrap();
        assert_eq!(Ended::of_exit(exit_code(status)).service_result, "signal");
        // The grandchild is gone (or a zombie of init for a moment).
        std::thread::sleep(std::time::Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "sleep survived: {state}");
    }

    #[test]
    fn the_memory_counters_of_the_own_cgroup_on_either_hierarchy() {
        let hybrid = "9:name=systemd:/system.slice/b.service\n4:memory:/system.slice/b.service\n\
                      0::/system.slice/b.service\n";
        assert_eq!(
            memory_cgroup_files(hybrid),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/system.slice/b.service/memory.oom_control"),
                PathBuf::from("/sys/fs/cgroup/system.slice/b.service/memory.events"),
            ]
        );
        assert_eq!(memory_cgroup_files("1:cpu,cpuacct:/x\n"), Vec::<PathBuf>::new());
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), 2);
        assert_eq!(oom_kill_count("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n"), 1);
        assert_eq!(oom_kill_count("low 0\n"), 0);
    }
}
