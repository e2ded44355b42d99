//! Chroots are nspawn machine images: `/var/lib/machines/buildbay-<codename>-<arch>`, where
//! `machinectl list-images` sees them, plus a schroot config (a directory chroot with
//! `union-type=overlay`) so that sbuild starts every build from a pristine snapshot.
//!
//! The image is made once (mmdebstrap `--variant=buildd`, with debhelper and lintian already in
//! it) and kept upgraded by `check`; a build never writes into it.

use crate::deb::Arch;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {tail}")]
    Command { cmd: String, status: String, tail: String },
    #[error("chroot {0} is not prepared; run `buildbay api setup --chroots {0}` or remake_chroots")]
    Missing(String),
    #[error("{0}")]
    Helper(#[from] crate::rootops::RootOpsError),
}

type Result<T> = std::result::Result<T, ChrootError>;

pub use crate::config::{Chroot, DEFAULT_MIRROR, chroot_name as name};

/// Packages put into every image besides `--variant=buildd`: what each build would otherwise
/// install again (ccache and eatmydata for the default setup blocks). The check installs those
/// an older image lacks.
pub const EXTRA_PACKAGES: &[&str] = &["debhelper", "eatmydata", "ccache", "lintian", "fakeroot", "ca-certificates"];

/// Where images, schroot configs and the build slots' session directories go (the real places
/// by default; tests may move them).
#[derive(Debug, Clone)]
pub struct Places {
    pub machines: PathBuf,
    pub schroot_d: PathBuf,
    /// The build slots' own `/build` directories (root's, 0755).
    pub slots: PathBuf,
    /// The root helper's socket, when the daemon is not root: it prepares, checks and removes
    /// chroots (the same functions, run there).
    pub helper: Option<PathBuf>,
}

impl Default for Places {
    fn default() -> Places {
        Places {
            machines: "/var/lib/machines".into(),
            schroot_d: "/etc/schroot/chroot.d".into(),
            slots: "/var/lib/buildbay-build".into(),
            helper: None,
        }
    }
}

impl Places {
    pub fn image(&self, c: &Chroot) -> PathBuf {
        self.machines.join(c.name())
    }

    pub fn schroot_conf(&self, c: &Chroot) -> PathBuf {
        self.schroot_d.join(format!("{}.conf", c.name()))
    }

    /// Whether an image is complete (written last by `prepare`).
    pub fn is_prepared(&self, c: &Chroot) -> bool {
        self.image(c).join(MARKER).exists() && self.schroot_conf(c).exists()
    }

    /// A build slot's own directory, its sessions' `/build` (root's; sbuild makes it its own).
    pub fn slot_dir(&self, n: usize) -> PathBuf {
        self.slots.join(format!("slot{n}"))
    }

    /// Rewrite the schroot profiles of `slots` slots and the chroot's config where they are not
    /// what this version writes (an older buildbay's, fewer slots, or edited by hand).
    pub fn refresh(&self, c: &Chroot, slots: usize) -> Result<()> {
        let conf = self.schroot_conf(c);
        let have = std::fs::read_to_string(&conf).unwrap_or_default();
        // Never fewer slots than are configured already (another daemon on this host may use
        // them), up to a bound.
        let slots = slots.max(configured_slots(&have).min(MAX_SLOTS));
        write_profiles(self, slots)?;
        let want = schroot_conf(c, &self.image(c), slots);
        if have != want {
            crate::store::write_file_synced(&conf, want.as_bytes()).map_err(io_err(&conf))?;
        }
        Ok(())
    }
}

const MARKER: &str = "etc/buildbay-image";

/// The most build slots a chroot's schroot config keeps for other daemons on this host.
pub const MAX_SLOTS: usize = 64;

/// How many slots a schroot config of [`schroot_conf`] has: its `[<name>-unit-sN]` sections
/// (each slot's profile name holds `-unit-s` too, so only section headers count).
fn configured_slots(conf: &str) -> usize {
    conf.lines().filter(|l| l.starts_with('[') && l.contains("-unit-s")).count()
}

/// `linux32` for 32-bit architectures on a 64-bit host (mini-buildd's personality).
pub fn personality(arch: &Arch) -> &'static str {
    match arch.as_str() {
        "i386" | "armhf" | "armel" | "mipsel" | "powerpc" => "linux32",
        _ => "linux",
    }
}

/// The schroot config of an image: directory chroots under an overlay, root's only. `<name>`
/// (profile `buildbay`) serves the chroot checks; each build slot N has `<name>-sN` (builds
/// without systemd) and `<name>-unit-sN` (builds inside a sandboxed unit, whose read-only
/// `/proc/sys` and `/sys` its profile keeps: recursive binds, which only a unit's own mount
/// namespace can clean up). A slot's profiles bind its own build directory at `/build`, so no
/// session sees another slot's build.
pub fn schroot_conf(c: &Chroot, image: &Path, slots: usize) -> String {
    let name = c.name();
    let mut entries = vec![(name.clone(), PROFILE.to_owned())];
    for n in 0..slots {
        entries.push((format!("{name}-s{n}"), slot_profile(false, n)));
        entries.push((format!("{name}-unit-s{n}"), slot_profile(true, n)));
    }
    entries
        .iter()
        .map(|(entry, profile)| {
            format!(
                "[{entry}]\n\
                 description=buildbay chroot {codename}/{arch} (machine image {image})\n\
                 type=directory\n\
                 directory={image}\n\
                 union-type=overlay\n\
                 profile={profile}\n\
                 groups=root\n\
                 root-groups=root\n\
                 source-root-groups=root\n\
                 personality={personality}\n",
                codename = c.codename,
                arch = c.arch,
                image = image.display(),
                personality = personality(&c.arch),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The schroot profile of the chroot checks.
pub const PROFILE: &str = "buildbay";

/// The schroot profile of build slot `n`, for a sandboxed unit or not.
pub fn slot_profile(unit: bool, n: usize) -> String {
    if unit { format!("buildbay-unit-s{n}") } else { format!("buildbay-s{n}") }
}

/// The schroot chroot a build in slot `n` uses.
pub fn slot_schroot(c: &Chroot, unit: bool, n: usize) -> String {
    if unit { format!("{}-unit-s{n}", c.name()) } else { format!("{}-s{n}", c.name()) }
}

/// The files of a schroot profile: sbuild's, but the session copies no password hashes
/// (`shadow`, `gshadow`) from the host, in a unit `/proc` and `/sys` are bound recursively, and
/// `/build` is `build` (a slot's own directory; `None`: sbuild's shared one, for checks).
pub fn profile_files(recursive: bool, build: Option<&Path>) -> Vec<(&'static str, String)> {
    let bind = if recursive { "rw,rbind" } else { "rw,bind" };
    let build = build.map_or("/var/lib/sbuild/build".to_owned(), |b| b.display().to_string());
    vec![
        (
            "fstab",
            format!(
                "# buildbay: written by buildbay, which rewrites it.\n\
                 /proc           /proc           none    {bind}         0       0\n\
                 /sys            /sys            none    {bind}         0       0\n\
                 /dev/pts        /dev/pts        none    rw,bind         0       0\n\
                 tmpfs           /dev/shm        tmpfs   defaults        0       0\n\
                 {build}  /build   none    rw,bind         0       0\n"
            ),
        ),
        ("copyfiles", "/etc/resolv.conf\n".into()),
        ("nssdatabases", "passwd\ngroup\n".into()),
    ]
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ChrootError {
    let path = path.into();
    move |source| ChrootError::Io { path, source }
}

/// Run a command; on failure, the error carries the end of its output.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    tracing::debug!("running {shown}");
    let out = cmd.output().map_err(|e| ChrootError::Command {
        cmd: shown.clone(),
        status: "not started".into(),
        tail: format!("{e}; is it installed?"),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n");
    Err(ChrootError::Command { cmd: shown, status: out.status.to_string(), tail })
}

/// A chroot operation through the root helper, if the daemon has one.
fn by_helper(places: &Places, op: crate::rootops::ChrootOp, c: &Chroot) -> Option<Result<()>> {
    let socket = places.helper.as_ref()?;
    let client = crate::rootops::Client { socket: socket.clone() };
    Some(client.call(&crate::rootops::Request::Chroot { op, chroot: c.clone() }).map(|_| ()).map_err(Into::into))
}

/// Make the image (unless it is complete already) and write its schroot config.
pub fn prepare(places: &Places, c: &Chroot) -> Result<()> {
    if let Some(done) = by_helper(places, crate::rootops::ChrootOp::Prepare, c) {
        return done;
    }
    let image = places.image(c);
    if !image.join(MARKER).exists() {
        let tmp = places.machines.join(format!(".{}.tmp", c.name()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        if image.exists() {
            std::fs::remove_dir_all(&image).map_err(io_err(&image))?;
        }
        std::fs::create_dir_all(&places.machines).map_err(io_err(&places.machines))?;
        let started = std::time::Instant::now();
        tracing::info!(chroot = %c.id(), image = %image.display(), "mmdebstrap --variant=buildd (takes a minute)");
        // mmdebstrap, not debootstrap: apt resolves the dependencies (debootstrap cannot resolve
        // virtual packages, and fails on lintian's perl-openssl-abi-3), and it is faster here
        // (38 s against 59 s for the bare buildd variant).
        run(Command::new("mmdebstrap")
            .arg("--variant=buildd")
            .args(DISTRO_KEYRINGS.iter().filter(|k| Path::new(k).exists()).map(|k| format!("--keyring={k}")))
            .arg(format!("--arch={}", c.arch))
            .arg(format!("--include={}", EXTRA_PACKAGES.join(",")))
            // No option after this: the image's name and mirror are never read as options.
            .arg("--")
            .arg(c.codename.as_str())
            .arg(&tmp)
            .arg(c.mirror.mirror()))?;
        configure_image(&tmp, c)?;
        std::fs::rename(&tmp, &image).map_err(io_err(&image))?;
        tracing::info!(chroot = %c.id(), secs = started.elapsed().as_secs(), "image ready");
    }
    write_profiles(places, 0)?;
    let conf = places.schroot_conf(c);
    std::fs::create_dir_all(&places.schroot_d).map_err(io_err(&places.schroot_d))?;
    crate::store::write_file_synced(&conf, schroot_conf(c, &image, 0).as_bytes()).map_err(io_err(&conf))
}

/// Write the schroot profiles (beside `chroot.d`): the checks' and those of `slots` build
/// slots, and make the slots' directories.
pub fn write_profiles(places: &Places, slots: usize) -> Result<()> {
    let etc = places.schroot_d.parent().unwrap_or(Path::new("/etc/schroot"));
    let mut profiles = vec![(PROFILE.to_owned(), false, None)];
    for n in 0..slots {
        let dir = places.slot_dir(n);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        profiles.push((slot_profile(false, n), false, Some(dir.clone())));
        profiles.push((slot_profile(true, n), true, Some(dir)));
    }
    for (profile, recursive, build) in profiles {
        let dir = etc.join(&profile);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for (name, text) in profile_files(recursive, build.as_deref()) {
            let p = dir.join(name);
            if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
                crate::store::write_file_synced(&p, text.as_bytes()).map_err(io_err(&p))?;
            }
        }
    }
    Ok(())
}

/// The keys an image's release must be signed with: the distributions' own (a mirror is the
/// daemon's word; the host's other apt keys, such as a third-party repository's, do not count).
/// Those installed are used; with none, mmdebstrap's default (the host's apt keys).
const DISTRO_KEYRINGS: &[&str] =
    &["/usr/share/keyrings/debian-archive-keyring.gpg", "/usr/share/keyrings/ubuntu-archive-keyring.gpg"];

/// apt inside the image: its sources, no recommends, no translations; the marker last.
fn configure_image(root: &Path, c: &Chroot) -> Result<()> {
    let write = |rel: &str, text: String| {
        let p = root.join(rel);
        crate::store::write_file_synced(&p, text.as_bytes()).map_err(io_err(&p))
    };
    write("etc/apt/sources.list", format!("deb {} {} main\n", c.mirror.mirror(), c.codename))?;
    write(
        "etc/apt/apt.conf.d/90buildbay",
        "APT::Install-Recommends \"false\";\nAcquire::Languages \"none\";\nAPT::Get::Assume-Yes \"true\";\n".into(),
    )?;
    write("etc/hostname", format!("{}\n", c.name()))?;
    write(MARKER, format!("{}\n", c.id()))
}

/// mini-buildd's check: in a source session (writes go to the image), update and upgrade
/// (after finishing what an interrupted upgrade left half-configured).
pub fn check(places: &Places, c: &Chroot) -> Result<()> {
    if let Some(done) = by_helper(places, crate::rootops::ChrootOp::Check, c) {
        return done;
    }
    if !places.is_prepared(c) {
        return Err(ChrootError::Missing(c.id()));
    }
    run(Command::new("schroot")
        .arg("--chroot")
        .arg(format!("source:{}", c.name()))
        .args(["--user", "root", "--directory", "/", "--"])
        .args(["sh", "-c"])
        .arg(
            "export DEBIAN_FRONTEND=noninteractive; dpkg --configure -a && apt-get -q update \
             && apt-get -q -y --ignore-missing dist-upgrade \
             && apt-get -q -y --no-install-recommends install \"$@\" && apt-get -q -y autoremove && apt-get clean",
        )
        .arg("sh")
        .args(EXTRA_PACKAGES))
}

/// Remove the schroot config, then the image.
pub fn remove(places: &Places, c: &Chroot) -> Result<()> {
    if let Some(done) = by_helper(places, crate::rootops::ChrootOp::Remove, c) {
        return done;
    }
    let conf = places.schroot_conf(c);
    if conf.exists() {
        std::fs::remove_file(&conf).map_err(io_err(&conf))?;
    }
    let image = places.image(c);
    if image.exists() {
        std::fs::remove_dir_all(&image).map_err(io_err(&image))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schroot_config_is_an_overlay_directory_chroot() {
        let c = Chroot::new("bookworm".parse().unwrap(), "i386".parse().unwrap());
        let places = Places::default();
        assert_eq!(places.image(&c), Path::new("/var/lib/machines/buildbay-bookworm-i386"));
        assert_eq!(places.schroot_conf(&c), Path::new("/etc/schroot/chroot.d/buildbay-bookworm-i386.conf"));
        let conf = schroot_conf(&c, &places.image(&c), 2);
        assert!(conf.starts_with("[buildbay-bookworm-i386]\n"));
        // Counted back as written: a refresh never grows it (it once doubled on every build).
        assert_eq!(configured_slots(&conf), 2);
        assert_eq!(configured_slots(&schroot_conf(&c, &places.image(&c), 5)), 5);
        for line in [
            "type=directory",
            "directory=/var/lib/machines/buildbay-bookworm-i386",
            "union-type=overlay",
            "personality=linux32",
            "profile=buildbay",
            "[buildbay-bookworm-i386-unit-s1]",
            "profile=buildbay-unit-s1",
            "[buildbay-bookworm-i386-s0]",
            "root-groups=root",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing from\n{conf}");
        }
        assert!(!conf.contains("sbuild"), "no group but root may open these sessions: {conf}");
        let files = profile_files(false, Some(Path::new("/var/lib/buildbay-build/slot3")));
        assert!(!files.iter().any(|(_, t)| t.contains("shadow")), "no password hashes in a session");
        assert!(files[0].1.contains("/var/lib/buildbay-build/slot3  /build"), "each slot its own /build");
        assert!(profile_files(true, None)[0].1.contains("/proc           /proc           none    rw,rbind"));
        assert_eq!(c.id(), "bookworm:i386");
    }

    #[test]
    fn failing_command_reports_its_output() {
        let e = run(Command::new("sh").args(["-c", "echo first; echo reason >&2; exit 3"])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("exit status: 3") && msg.contains("reason"), "{msg}");
    }
}
