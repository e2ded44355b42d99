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

/// Where the checks after an sbuild build find the request's files, unpacked again (in the
/// build directory).
pub const CHECKS_DIR: &str = ".checks";

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
        let (req, local) = self.verified(bkey, slot, request, certs)?;
        let dir = self.dir(bkey);
        self.fresh_dir(&dir, group)?;
        crate::store::write_file_synced(&dir.join(backend::REQUEST), request).map_err(io_err(&dir))?;
        let names =
            crate::protocol::tar::unpack_from(tar, &dir, true, Default::default()).map_err(|e| bad(e.to_string()))?;
        let dsc = names.into_iter().find(|n| n.ends_with(".dsc")).ok_or_else(|| bad("its tar holds no .dsc".into()))?;
        let chroot = self.chroot(&req)?;
        self.places.refresh(&chroot, self.limits.slots.max(1)).map_err(|e| BuilderError::Io {
            path: self.places.schroot_conf(&chroot),
            source: std::io::Error::other(e.to_string()),
        })?;
        let slot_info = self.verified_slot(bkey, slot, &chroot)?;
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
            out: None,
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
            checks_unit: plan.separate_checks,
            phase: super::Phase::Build,
        };
        let mut unit = Unit::for_build(&job, &plan, &self.limits, &self.exe);
        unit.state = Some(self.state.clone());
        Ok(Staged { job, unit, machine: plan.machine, backend: req.backend })
    }

    /// The checks of a build that succeeded (see [`super::Phase::Checks`]), from its request
    /// verified again. Root in the build's session could have changed anything in the build
    /// directory, so nothing there is used but the sanitised output (`out`, a real directory):
    /// the request's files are unpacked again from the queued tar into a fresh directory
    /// ([`CHECKS_DIR`]), with the checks' plan and the machines' script; the slot's apt cache is
    /// verified as before a build; what the checks' unit writes (their verdicts, `built`, their
    /// logs) starts out absent. Every refusal is final: the checks do not run.
    pub fn stage_checks(
        &self,
        bkey: &BuildKey,
        slot: usize,
        request: &[u8],
        tar: &mut std::fs::File,
        certs: &[Cert],
    ) -> Result<Staged, BuilderError> {
        let bad = |why: String| BuilderError::Request { bkey: bkey.clone(), why };
        let io = |p: &Path, e: std::io::Error| bad(format!("{}: {e}", p.display()));
        let (req, local) = self.verified(bkey, slot, request, certs)?;
        let dir = self.dir(bkey);
        if !super::build_succeeded(&dir) {
            return Err(bad("its build did not succeed: no checks run".into()));
        }
        let out = dir.join(OUT);
        if !std::fs::symlink_metadata(&out).is_ok_and(|m| m.is_dir()) {
            return Err(bad("its output is not a directory".into()));
        }
        // Sanitised again: the build's root may have added to it after the relay did.
        super::result::clean(&out).map_err(|e| bad(format!("its output: {e}")))?;
        let log = dir.join(super::LIVE_LOG);
        if std::fs::symlink_metadata(&log).is_ok_and(|m| !m.file_type().is_file()) {
            return Err(bad("its build log is not a regular file".into()));
        }
        let planted = [super::CHECKS, super::BUILT, super::BUILD_END, super::result::CANCELED, CHECKS_DIR];
        for name in planted.into_iter().chain(super::AFTER_LOGS) {
            crate::store::remove_any(&dir.join(name)).map_err(|e| io(&dir.join(name), e))?;
        }
        let src = dir.join(CHECKS_DIR);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o755).create(&src).map_err(|e| io(&src, e))?;
        }
        let names =
            crate::protocol::tar::unpack_from(tar, &src, true, Default::default()).map_err(|e| bad(e.to_string()))?;
        let dsc = names.into_iter().find(|n| n.ends_with(".dsc")).ok_or_else(|| bad("its tar holds no .dsc".into()))?;
        // Where the machines see the output (bound there; the copy itself is read-only to them).
        std::fs::create_dir(src.join(OUT)).map_err(|e| io(&src, e))?;
        let chroot = self.chroot(&req)?;
        let slot_info = self.verified_slot(bkey, slot, &chroot).map_err(|e| bad(format!("its slot: {e}")))?;
        let build = Build {
            req: &req,
            dir: &src,
            dsc: &dsc,
            chroot: &chroot,
            schroot: crate::chroot::slot_schroot(&chroot, true, slot),
            image: self.places.image(&chroot),
            slot: &slot_info,
            machined: true,
            exe: &self.exe,
            local,
            out: Some(&out),
        };
        let plan = backend::Plan {
            argv: vec![],
            env: vec![("HOME".into(), dir.display().to_string())],
            machine: None,
            notes: vec![],
            checks: backend::checks(&build, true)?,
            separate_checks: true,
            after: None,
            network: backend::check_network(&build),
            writable: vec![slot_info.apt_cache.clone()],
        };
        if plan.checks.is_empty() {
            return Err(bad("its request asks for no piuparts or autopkgtest".into()));
        }
        let job = Job {
            bkey: bkey.clone(),
            distribution: req.distribution.clone(),
            unit: super::check_unit_name(bkey),
            dir: dir.clone(),
            state: JobState::Running,
            pid: None,
            started: chrono::Utc::now(),
            slot,
            checks_unit: true,
            phase: super::Phase::Checks,
        };
        let mut unit = Unit::for_checks(&job, &plan, &src.join(backend::CHECKS_PLAN), &self.limits, &self.exe);
        unit.state = Some(self.state.clone());
        Ok(Staged { job, unit, machine: None, backend: req.backend })
    }

    /// A request verified against `certs`, for `bkey` in an existing slot; whether it is this
    /// instance's own (signed by the first key: it carries this instance's settings).
    fn verified(
        &self,
        bkey: &BuildKey,
        slot: usize,
        request: &[u8],
        certs: &[Cert],
    ) -> Result<(BuildRequest, bool), BuilderError> {
        let bad = |why: String| BuilderError::Request { bkey: bkey.clone(), why };
        let (req, signer) = BuildRequest::verify(request, certs).map_err(|e| bad(format!("refused: {e}")))?;
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
        Ok((req, local))
    }

    /// Slot `slot`'s identities and apt cache, the cache verified against the chroot image's
    /// package lists (what a build or a check could have planted there goes).
    fn verified_slot(&self, bkey: &BuildKey, slot: usize, chroot: &Chroot) -> Result<super::slots::Slot, BuilderError> {
        let slot_info = self.users.slot(slot, &self.caches, self.places.slot_dir(slot))?;
        let lists = self.places.image(chroot).join("var/lib/apt/lists");
        let verified = super::apt_cache::verify(&slot_info.apt_cache, &lists)?;
        for why in &verified.removed {
            tracing::warn!(%bkey, slot, "removed from the slot's apt cache: {why}");
        }
        Ok(slot_info)
    }

    /// The chroot a request builds in, which must be here.
    fn chroot(&self, req: &BuildRequest) -> Result<Chroot, BuilderError> {
        let chroot = Chroot::new(req.distribution.codename.clone(), req.key.arch.clone());
        if !self.places.is_prepared(&chroot) {
            let id = chroot.id();
            return Err(BuilderError::Request {
                bkey: req.key.clone(),
                why: format!("no chroot {id} here; add it with `buildbay api setup --chroots {id}`"),
            });
        }
        Ok(chroot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QaMode;

    /// What root in an sbuild build's session may have left in the build directory does not
    /// reach the checks' unit: the request's files are unpacked again into a fresh directory
    /// (a planted one, even a symlink, is removed, never followed), the plan and the machines'
    /// script written there, a forged verdict, `built` and `canceled` go; a build that did not
    /// succeed, an output that is not a directory, or a request another key signed gets no
    /// checks.
    #[test]
    fn the_checks_are_planned_afresh_over_a_hostile_build_directory() {
        let t = tempfile::tempdir().unwrap();
        let places = Places {
            machines: t.path().join("machines"),
            schroot_d: t.path().join("schroot.d"),
            slots: t.path().join("slots"),
            helper: None,
        };
        let mut req = crate::protocol::request::tests::sample();
        req.backend = crate::protocol::Backend::Sbuild;
        req.autopkgtest = QaMode::Errfail;
        req.piuparts = QaMode::Disabled;
        req.lintian = QaMode::Ignore;
        let chroot = Chroot::new(req.distribution.codename.clone(), req.key.arch.clone());
        std::fs::create_dir_all(places.image(&chroot).join("etc")).unwrap();
        std::fs::write(places.image(&chroot).join("etc/buildbay-image"), "").unwrap();
        std::fs::create_dir_all(places.image(&chroot).join("var/lib/apt/lists")).unwrap();
        std::fs::create_dir_all(&places.schroot_d).unwrap();
        std::fs::write(places.schroot_conf(&chroot), "").unwrap();
        let stager = Stager {
            root: t.path().join("builds"),
            places,
            limits: Limits { slots: 1, ..Limits::default() },
            users: Users::Own,
            caches: t.path().join("caches"),
            exe: "/usr/bin/buildbay".into(),
            state: t.path().join("state"),
        };
        // The queued request's tar: its .dsc and its apt sources.
        let tar_path = t.path().join("request.tar");
        {
            let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
            for (name, text) in [
                ("hello_1.0-1.dsc", "Source: hello\n"),
                (".config/apt_sources.list", "deb http://deb.debian.org/debian bookworm main\n"),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(text.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, name, text.as_bytes()).unwrap();
            }
            b.finish().unwrap();
        }
        let tar = || std::fs::File::open(&tar_path).unwrap();
        let key = crate::gpg::ArchiveKey::generate("B <b@example.org>", crate::gpg::KeyAlgo::Ed25519).unwrap();
        let signed = req.sign(&key).unwrap();
        let certs = [key.cert().clone()];
        let refused = |r: Result<Staged, BuilderError>| match r {
            Err(BuilderError::Request { why, .. }) => why,
            Err(e) => panic!("not a refusal: {e}"),
            Ok(_) => panic!("checks staged"),
        };
        let dir = stager.dir(&req.key);
        std::fs::create_dir_all(&dir).unwrap();
        let why = refused(stager.stage_checks(&req.key, 0, &signed, &mut tar(), &certs));
        assert!(why.contains("did not succeed"), "{why}");
        std::fs::write(dir.join(crate::builder::RESULT), "exit-code exited 2\n").unwrap();
        assert!(refused(stager.stage_checks(&req.key, 0, &signed, &mut tar(), &certs)).contains("did not succeed"));
        std::fs::write(dir.join(crate::builder::RESULT), "success exited 0\n").unwrap();
        // What the build's root planted.
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(OUT)).unwrap();
        assert!(refused(stager.stage_checks(&req.key, 0, &signed, &mut tar(), &certs)).contains("not a directory"));
        std::fs::remove_file(dir.join(OUT)).unwrap();
        std::fs::create_dir(dir.join(OUT)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(CHECKS_DIR)).unwrap();
        std::fs::create_dir_all(dir.join(".config")).unwrap();
        std::fs::write(dir.join(".config/apt_sources.list"), "deb [trusted=yes] http://evil.example/ ./\n").unwrap();
        let forged = r#"[{"check":"Autopkgtest","mode":"errfail","argv":["systemd-run","touch","/run/pwned"]}]"#;
        std::fs::write(dir.join(backend::CHECKS_PLAN), forged).unwrap();
        std::fs::write(dir.join(crate::builder::CHECKS), "Autopkgtest: pass\n").unwrap();
        std::fs::write(dir.join(crate::builder::BUILT), "success exited 0\n").unwrap();
        std::fs::write(dir.join(super::super::result::CANCELED), "nobody\n").unwrap();
        std::fs::write(dir.join(crate::builder::BUILD_END), "0\n").unwrap();
        nix::unistd::mkfifo(&dir.join(OUT).join("x.deb"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(crate::builder::AFTER_LOGS[2])).unwrap();
        let other = crate::gpg::ArchiveKey::generate("O <o@example.org>", crate::gpg::KeyAlgo::Ed25519).unwrap();
        let why = refused(stager.stage_checks(&req.key, 0, &req.sign(&other).unwrap(), &mut tar(), &certs));
        assert!(why.contains("refused"), "another key's request: {why}");
        assert!(
            refused(stager.stage_checks(&req.key, 3, &signed, &mut tar(), &certs)).contains("slot 3 does not exist")
        );

        let staged = stager.stage_checks(&req.key, 0, &signed, &mut tar(), &certs).unwrap();
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1, "the victim directory was written");
        assert_eq!(std::fs::read_to_string(victim.join("keep")).unwrap(), "untouched");
        let src = dir.join(CHECKS_DIR);
        assert!(std::fs::symlink_metadata(&src).unwrap().is_dir());
        assert!(std::fs::symlink_metadata(src.join(OUT)).unwrap().is_dir(), "the output's mount point");
        assert_eq!(std::fs::read_to_string(src.join("hello_1.0-1.dsc")).unwrap(), "Source: hello\n");
        assert_eq!(std::fs::read_to_string(src.join(backend::nspawn::CHECK)).unwrap(), backend::nspawn::check_script());
        let plan: Vec<backend::CheckRun> =
            serde_json::from_str(&std::fs::read_to_string(src.join(backend::CHECKS_PLAN)).unwrap()).unwrap();
        let checks: Vec<_> = plan.iter().map(|r| (r.check, r.mode)).collect();
        assert_eq!(
            checks,
            [(crate::protocol::Check::Autopkgtest, QaMode::Errfail), (crate::protocol::Check::Lintian, QaMode::Ignore)],
            "lintian after the result is a check machine here"
        );
        // systemd-nspawn's --bind splits on ':', so the version's epoch is escaped.
        let host = |p: &Path| p.display().to_string().replace(':', "\\:");
        for run in &plan {
            assert_eq!(run.argv[..3], ["/usr/bin/buildbay", "builder-exec", "--nspawn-root"]);
            let binds: Vec<&String> = run.argv.iter().filter(|a| a.starts_with("--bind")).collect();
            assert!(binds.contains(&&format!("--bind-ro={}:/build", host(&src))), "{binds:?}");
            assert!(binds.contains(&&format!("--bind-ro={}:/build/out", host(&dir.join(OUT)))), "{binds:?}");
        }
        assert!(std::fs::symlink_metadata(dir.join(OUT).join("x.deb")).is_err(), "a FIFO stayed in the output");
        for gone in [
            crate::builder::CHECKS,
            crate::builder::BUILT,
            crate::builder::BUILD_END,
            "canceled",
            crate::builder::AFTER_LOGS[2],
        ] {
            assert!(std::fs::symlink_metadata(dir.join(gone)).is_err(), "{gone} survived");
        }
        let unit = &staged.unit;
        assert!(unit.name.starts_with("buildbay-check-hello_"), "{}", unit.name);
        assert_eq!(staged.job.unit, unit.name);
        assert_eq!(staged.job.phase, crate::protocol::Phase::Checks);
        assert_eq!(unit.backend, crate::protocol::Backend::Nspawn, "the machines' sandbox");
        let plan_arg = src.join(backend::CHECKS_PLAN).display().to_string();
        assert!(unit.relay.windows(2).any(|w| w[0] == "--checks" && w[1] == plan_arg), "{:?}", unit.relay);
        assert!(unit.relay.iter().any(|a| a == "--checks-only"), "{:?}", unit.relay);
        assert!(!unit.relay.iter().any(|a| a == "--after-lintian" || a == "--"), "{:?}", unit.relay);
        match &unit.network {
            backend::Network::Hosts(hosts) => assert!(!hosts.iter().any(|h| h.contains("evil")), "{hosts:?}"),
            backend::Network::None => panic!("the checks install with apt"),
        }
    }
}
