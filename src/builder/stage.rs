//! Staging a build: from a verified build request and its tar to a build directory and the unit
//! that builds there. The daemon stages its builds itself when it runs as root (or builds as
//! itself); otherwise the root helper does (`buildbay helper`), from the same code, after
//! verifying the request itself.

use super::backend::{self, Build};
use super::runner::Unit;
use super::slots::Users;
use super::{BuilderError, Job, JobState, Limits, OUT, WRITING, io_err, unit_name, writing_out};
use crate::chroot::{Chroot, Places};
use crate::gpg::Cert;
use crate::protocol::{BuildKey, BuildRequest};
use std::path::{Path, PathBuf};

/// Everything needed to stage builds on this host.
#[derive(Debug, Clone)]
pub struct Stager {
    /// Where build directories are made (`<root>/<bkey>`), root's.
    pub root: PathBuf,
    pub places: Places,
    pub limits: Limits,
    pub users: Users,
    /// The slots' apt archive caches (`<caches>/<slot>`).
    pub caches: PathBuf,
    /// The running binary, for `builder-exec`.
    pub exe: PathBuf,
    /// The daemon's state directory (hidden from build units).
    pub state: PathBuf,
}

/// A staged build, ready to start.
pub struct Staged {
    pub job: Job,
    pub unit: Unit,
    pub machine: Option<String>,
    pub backend: crate::protocol::Backend,
}

impl Stager {
    pub fn dir(&self, bkey: &BuildKey) -> PathBuf {
        self.root.join(bkey.rel_path())
    }

    /// A fresh build directory. The builds root itself is 0700 (0750 for the daemon's group
    /// when a helper stages): no local user reaches what a build leaves; the build directory is
    /// readable for the machine or session that builds.
    fn fresh_dir(&self, dir: &Path, group: Option<u32>) -> Result<(), BuilderError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.root).map_err(io_err(&self.root))?;
        let mode = if group.is_some() { 0o750 } else { 0o700 };
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(mode)).map_err(io_err(&self.root))?;
        if let Some(g) = group {
            nix::unistd::chown(&self.root, None, Some(nix::unistd::Gid::from_raw(g)))
                .map_err(|e| io_err(&self.root)(e.into()))?;
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(io_err(dir))?;
        std::fs::DirBuilder::new().mode(0o700).create(dir.join(WRITING)).map_err(io_err(dir))?;
        std::fs::DirBuilder::new().mode(0o755).create(writing_out(dir)).map_err(io_err(dir))?;
        // Empty until the output is sanitised and moved here; nspawn binds the output over it.
        std::fs::DirBuilder::new().mode(0o755).create(dir.join(OUT)).map_err(io_err(dir))?;
        Ok(())
    }

    /// Verify a request (its signed bytes) against `certs`, make its build directory from it
    /// and its tar, and plan the build in `slot`. `unit`: it runs in a sandboxed systemd unit
    /// (its schroot profile keeps the unit's read-only `/proc/sys`). `group`: the daemon's
    /// group, which reads the build directories when a helper stages them.
    #[allow(clippy::too_many_arguments)]
    pub fn stage(
        &self,
        bkey: &BuildKey,
        slot: usize,
        request: &[u8],
        tar: &mut std::fs::File,
        certs: &[Cert],
        unit: bool,
        group: Option<u32>,
    ) -> Result<Staged, BuilderError> {
        let bad = |why: String| BuilderError::Request { bkey: bkey.clone(), why };
        let (req, signer) = BuildRequest::verify(request, certs).map_err(|e| bad(format!("refused: {e}")))?;
        // The first key is this instance's own: its requests carry this instance's settings.
        let local = certs.first().is_some_and(|c| c.fingerprint().to_hex() == signer);
        if &req.key != bkey {
            return Err(bad(format!("the signed request is for {}, not {bkey}", req.key)));
        }
        if slot >= self.limits.slots {
            return Err(bad(format!(
                "slot {slot} does not exist here ({} slots; `serve --build-slots` sets how many)",
                self.limits.slots
            )));
        }
        let dir = self.dir(bkey);
        self.fresh_dir(&dir, group)?;
        crate::store::write_file_synced(&dir.join(backend::REQUEST), request).map_err(io_err(&dir))?;
        let names =
            crate::protocol::tar::unpack_from(tar, &dir, true, Default::default()).map_err(|e| bad(e.to_string()))?;
        let dsc = names.into_iter().find(|n| n.ends_with(".dsc")).ok_or_else(|| bad("its tar holds no .dsc".into()))?;
        let chroot = Chroot::new(req.distribution.codename.clone(), req.key.arch.clone());
        if !self.places.is_prepared(&chroot) {
            let id = chroot.id();
            return Err(bad(format!("no chroot {id} here; add it with `buildbay api setup --chroots {id}`")));
        }
        self.places.refresh(&chroot, self.limits.slots.max(1)).map_err(|e| BuilderError::Io {
            path: self.places.schroot_conf(&chroot),
            source: std::io::Error::other(e.to_string()),
        })?;
        let slot_info = self.users.slot(slot, &self.caches, self.places.slot_dir(slot))?;
        let lists = self.places.image(&chroot).join("var/lib/apt/lists");
        let verified = super::apt_cache::verify(&slot_info.apt_cache, &lists)?;
        for why in &verified.removed {
            tracing::warn!(%bkey, slot, "removed from the slot's apt cache: {why}");
        }
        let build = Build {
            req: &req,
            dir: &dir,
            dsc: &dsc,
            chroot: &chroot,
            schroot: crate::chroot::slot_schroot(&chroot, unit, slot),
            image: self.places.image(&chroot),
            slot: &slot_info,
            machined: unit,
            exe: &self.exe,
            local,
        };
        let plan = backend::plan(&build)?;
        let job = Job {
            bkey: bkey.clone(),
            distribution: req.distribution.clone(),
            unit: unit_name(bkey),
            dir: dir.clone(),
            state: JobState::Starting,
            pid: None,
            started: chrono::Utc::now(),
            slot,
        };
        let mut unit = Unit::for_build(&job, &plan, &self.limits, &self.exe);
        unit.state = Some(self.state.clone());
        Ok(Staged { job, unit, machine: plan.machine, backend: req.backend })
    }
}
