//! Process plumbing of a build: `buildbay builder-exec` (the unit's main process, which copies
//! the build's output to the build log and to the journal) and the child-process runner.

use super::Ended;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// The relay of a build (`buildbay builder-exec --build-log …`): run the build command logged,
/// with its phases timed; record its end in `result` when given (child-process runner; under
/// systemd, ExecStopPost does that). When the build succeeded and there is an `after` script
/// (lintian in ignore mode), mark the build finished (`built`) first, so that its result goes
/// out at once, then run the script into its own log; its outcome does not change the build's.
pub fn relay(
    log: &Path,
    result: Option<&Path>,
    notes: &[String],
    after: Option<&Path>,
    argv: &[String],
) -> std::io::Result<i32> {
    let code = run_logged(log, Some(&log.with_file_name(super::phases::FILE)), notes, argv)?;
    if let (0, Some(script)) = (code, after) {
        // Whatever happens to the after script, the unit's end is still recorded below.
        if let Err(e) = run_after(log, script) {
            eprintln!("buildbay: the after script {} failed to run: {e}", script.display());
        }
    }
    if let Some(result) = result {
        record_exit(result, code)?;
    }
    Ok(code)
}

/// Mark the build built, then run the after script into its own log.
fn run_after(log: &Path, script: &Path) -> std::io::Result<()> {
    Ended::of_exit(0).write(&log.with_file_name(super::BUILT))?;
    let after_log = log.with_file_name(super::AFTER_LOG);
    let after_code = run_logged(&after_log, None, &[], &[script.display().to_string()])?;
    let mut f = std::fs::OpenOptions::new().append(true).open(&after_log)?;
    writeln!(f, "buildbay: exit code {after_code}; the build's result did not wait for this")
}

/// Run `argv`, copying its stdout and stderr, in order, to our stdout and to `log`, after the
/// `notes` (one `buildbay: …` line each). The section headers that pass are timed in `phases`,
/// when given. Returns the exit code to exit with (128 + signal when it was killed).
///
/// A stop signal (SIGTERM, SIGINT) is for the build, not for this relay: it keeps copying until
/// the build's output ends, so that sbuild can clean up its session and say so in the log.
pub fn run_logged(log: &Path, phases: Option<&Path>, notes: &[String], argv: &[String]) -> std::io::Result<i32> {
    let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("no command given"))?;
    ignore_stop_signals();
    let mut file = std::fs::File::create(log)?;
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
pub fn spawn_group(argv: &[String], dir: &Path, env: &[String]) -> std::io::Result<Child> {
    let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("no command given"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).process_group(0).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    for kv in env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
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
        assert!(phases.starts_with("0.000\t(start)\n") && phases.ends_with("\t(end)\n"), "{phases}");
    }

    #[test]
    fn the_after_script_runs_once_the_build_is_marked_built() {
        let dir = tempfile::tempdir().unwrap();
        let (log, result) = (dir.path().join(super::super::LIVE_LOG), dir.path().join("result"));
        let script = dir.path().join("after");
        // The script sees the build marked built, and its failure does not fail the build.
        let built = dir.path().join(super::super::BUILT);
        std::fs::write(&script, format!("#!/bin/sh\ntest -e {} && echo saw built; exit 3\n", built.display())).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let ok: Vec<String> = ["sh", "-c", "echo building"].map(String::from).to_vec();
        let code = relay(&log, Some(&result), &[], Some(&script), &ok);
        assert_eq!(code.unwrap(), 0);
        assert_eq!(Ended::parse(&std::fs::read_to_string(&result).unwrap()).service_result, "success");
        let after = std::fs::read_to_string(dir.path().join(super::super::AFTER_LOG)).unwrap();
        assert!(after.starts_with("saw built\n") && after.contains("exit code 3"), "{after}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "building\n");
        // A failed build: no after script, no built mark.
        std::fs::remove_file(dir.path().join(super::super::BUILT)).unwrap();
        std::fs::remove_file(dir.path().join(super::super::AFTER_LOG)).unwrap();
        let bad: Vec<String> = ["sh", "-c", "exit 2"].map(String::from).to_vec();
        assert_eq!(relay(&log, Some(&result), &[], Some(&script), &bad).unwrap(), 2);
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
