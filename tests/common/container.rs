//! A booted systemd container for tests: `systemd-nspawn -b` on a Debian tree, sharing the
//! host's network, with commands run inside through `nsenter`.

use super::{ok, run};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tree made once by `make` (a debootstrap or mmdebstrap command line, the target appended
/// last, then the mirror), kept for later runs by a marker file.
pub fn tree(tree: &Path, make: &[&str]) -> PathBuf {
    let done = tree.join("etc/buildbay-test-tree");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(tree);
        std::fs::create_dir_all(tree.parent().expect("parent")).expect("mkdir");
        ok(Command::new(make[0]).args(&make[1..]).arg(tree).arg("http://deb.debian.org/debian"));
        std::fs::write(&done, "").expect("write");
    }
    tree.to_owned()
}

/// A booted container: systemd-nspawn -b, sharing the host's network.
pub struct Booted {
    nspawn: Child,
    pub leader: i32,
}

impl Booted {
    pub fn boot(tree: &Path, binds: &[&str]) -> Booted {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args(["-q", "--register=no", "--keep-unit", "-b", "-D"]).arg(tree);
        for b in binds {
            cmd.arg(format!("--bind={b}"));
        }
        let nspawn =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("systemd-nspawn");
        let start = Instant::now();
        let leader = loop {
            assert!(start.elapsed() < Duration::from_secs(60), "the container did not start");
            if let Some(pid) = child_of(nspawn.id() as i32) {
                break pid;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let b = Booted { nspawn, leader };
        // Wait for the boot to finish (degraded is fine: some units do not apply in a container).
        let out = loop {
            let out = b.run("systemctl is-system-running --wait");
            let state = String::from_utf8_lossy(&out.stdout);
            // "offline" (or nothing): its bus is not up yet.
            if state.contains("running") || state.contains("degraded") || start.elapsed() > Duration::from_secs(60) {
                break out;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let state = String::from_utf8_lossy(&out.stdout);
        assert!(
            state.contains("running") || state.contains("degraded"),
            "boot: {state} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        b.writable_memory_controller();
        b
    }

    /// On a host with the legacy (v1) or hybrid hierarchy, nspawn mounts the container's memory
    /// controller read-only, and every MemoryMax= in it is silently ignored. Mount it writable
    /// and have systemd re-execute, so the container's units get their memory limits as on a
    /// real host. (A unified-hierarchy host has no `/sys/fs/cgroup/memory`: nothing to do.)
    pub fn writable_memory_controller(&self) {
        let v1 = PathBuf::from(format!("/proc/{}/root/sys/fs/cgroup/memory", self.leader));
        if v1.join("cgroup.procs").exists() {
            self.ok("umount -l /sys/fs/cgroup/memory && \
                     mount -t cgroup -o rw,nosuid,nodev,noexec,memory cgroup /sys/fs/cgroup/memory && \
                     systemctl daemon-reexec");
        }
    }

    /// A unit's ControlGroup as the host sees it: the unified hierarchy, or systemd's named
    /// hierarchy on a v1 or hybrid host.
    pub fn cgroup_dir(&self, cg: &str) -> PathBuf {
        let root = PathBuf::from(format!("/proc/{}/root/sys/fs/cgroup", self.leader));
        let rel = cg.trim_start_matches('/');
        ["unified", "systemd", ""]
            .iter()
            .map(|h| root.join(h).join(rel))
            .find(|d| d.join("cgroup.procs").exists())
            .unwrap_or_else(|| panic!("no cgroup directory for {cg} under {}", root.display()))
    }

    /// `script` inside the container, through nsenter.
    fn cmd(&self, script: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.leader.to_string(), "-a", "sh", "-c", script]);
        cmd
    }

    pub fn run(&self, script: &str) -> Output {
        run(&mut self.cmd(script))
    }

    pub fn ok(&self, script: &str) -> String {
        ok(&mut self.cmd(script))
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = self.run("systemctl poweroff");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

fn child_of(parent: i32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid …: comm may hold spaces, so split after the last ')'.
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        // The container's init, once it is systemd (not a short-lived fork of nspawn).
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if ppid == Some(parent) && comm.trim() == "systemd" {
            return Some(pid);
        }
    }
    None
}
