//! Build slots. Each slot has its own unprivileged build user (the uid `debian/rules` runs as
//! under sbuild), its own range of 65536 uids for an nspawn machine (container root is the
//! range's first uid, which owns nothing on the host), and its own apt archive cache. No two
//! running builds share a slot, so no two builds share a uid.

use super::{BuilderError, io_err};
use std::path::{Path, PathBuf};

/// The first uid of slot 0's nspawn range: above every range systemd-nspawn picks for itself
/// (524288…1879048191), so a build's uids are its own.
pub const UID_BASE: u32 = crate::protocol::BUILD_UID_BASE;
/// uids per slot.
pub const UID_RANGE: u32 = 0x1_0000;

/// Who builds.
#[derive(Debug, Clone)]
pub enum Users {
    /// One system user per slot, `<prefix><slot>`, made when first needed (the daemon runs as
    /// root).
    PerSlot { prefix: String },
    /// The daemon is not root: builds run as the daemon's own user (a developer's laptop).
    Own,
}

/// One slot's identities and cache.
#[derive(Debug, Clone)]
pub struct Slot {
    pub index: usize,
    /// The user `debian/rules` runs as under sbuild; `None`: the daemon's own (not root).
    pub user: Option<String>,
    /// The first uid of the slot's nspawn range.
    pub uid_base: u32,
    pub apt_cache: PathBuf,
    /// Its sessions' own `/build` (sbuild).
    pub build_dir: PathBuf,
}

impl Slot {
    /// The slot's persistent directory of a chroot (mini-buildd's `%LIBDIR%`), beside its apt
    /// cache: what one build leaves for the next of the same chroot in the same slot.
    pub fn libdir(&self, chroot: &crate::chroot::Chroot) -> PathBuf {
        self.apt_cache.with_file_name(format!("{}-lib", self.index)).join(chroot.id())
    }
}

impl Users {
    /// Per-slot users when running as root, else the daemon's own user.
    pub fn detect(prefix: &str) -> Users {
        if nix::unistd::geteuid().is_root() {
            Users::PerSlot { prefix: prefix.to_owned() }
        } else {
            tracing::info!("not running as root: builds run as this user, not as per-slot build users");
            Users::Own
        }
    }

    /// Slot `index`, its user made if it does not exist yet, its cache directory made (0700:
    /// what a build's apt writes there is nobody else's to read).
    pub fn slot(&self, index: usize, caches: &Path, build_dir: PathBuf) -> Result<Slot, BuilderError> {
        use std::os::unix::fs::PermissionsExt;
        let apt_cache = caches.join(index.to_string());
        std::fs::create_dir_all(apt_cache.join("partial")).map_err(io_err(&apt_cache))?;
        std::fs::set_permissions(caches, std::fs::Permissions::from_mode(0o700)).map_err(io_err(caches))?;
        let user = match self {
            Users::PerSlot { prefix } => {
                let name = format!("{prefix}{index}");
                ensure_user(&name)?;
                Some(name)
            }
            Users::Own => None,
        };
        let uid_base = UID_BASE.saturating_add(UID_RANGE.saturating_mul(index.min(0x8000) as u32));
        Ok(Slot { index, user, uid_base, apt_cache, build_dir })
    }
}

/// A system user with no home, no shell and no password, in group `sbuild` (sbuild's `/build`
/// is that group's), made with `useradd` if missing.
fn ensure_user(name: &str) -> Result<(), BuilderError> {
    let sbuild = nix::unistd::Group::from_name("sbuild").ok().flatten();
    if let Some(u) = nix::unistd::User::from_name(name).ok().flatten() {
        let member = sbuild.as_ref().is_none_or(|g| g.mem.iter().any(|m| m == name) || g.gid == u.gid);
        if !member {
            let _ = std::process::Command::new("usermod").args(["-a", "-G", "sbuild", name]).status();
        }
        return Ok(());
    }
    let mut cmd = std::process::Command::new("useradd");
    cmd.args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
        .args(["--comment", "buildbay build slot"]);
    if sbuild.is_some() {
        cmd.args(["--groups", "sbuild"]);
    }
    let out = cmd.arg(name).output().map_err(|e| BuilderError::Users(format!("useradd {name}: {e}")))?;
    // Another daemon (or a test) may have made it meanwhile.
    if out.status.success() || nix::unistd::User::from_name(name).ok().flatten().is_some() {
        tracing::info!(user = name, "made the build user of a slot");
        return Ok(());
    }
    Err(BuilderError::Users(format!(
        "useradd {name} failed: {}; make the user by hand or pass --build-users",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_have_disjoint_uid_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let a = Users::Own.slot(0, dir.path(), dir.path().join("s0")).unwrap();
        let b = Users::Own.slot(1, dir.path(), dir.path().join("s1")).unwrap();
        assert_eq!(a.uid_base, 0x7000_0000);
        assert_eq!(b.uid_base - a.uid_base, UID_RANGE);
        assert!(a.apt_cache.join("partial").is_dir() && a.apt_cache != b.apt_cache);
    }
}
