//! Build backends: how a build request becomes a command. A backend writes its (constant) files
//! into the build directory and returns the command line, the environment and what runs after
//! the result; it never embeds a value in a script: every value is an argument or an
//! environment variable, already typed and checked by [`crate::protocol`].
//!
//! Each backend is one file: `sbuild` (schroot sessions, mini-buildd's way) and `nspawn` (an
//! ephemeral machine with its own uid range). Neither imports the other; what they share is here.

pub mod nspawn;
pub mod sbuild;

use super::slots::Slot;
use super::{BuilderError, io_err};
use crate::chroot::Chroot;
use crate::protocol::{Backend as Kind, BuildRequest, Check, QaMode};
use std::path::{Path, PathBuf};

/// The request's copy in the build directory.
pub const REQUEST: &str = "request.changes";

/// Everything a backend plans a build from.
pub struct Build<'a> {
    pub req: &'a BuildRequest,
    /// The build directory: the request's tar unpacked, `out/` for the build's files.
    pub dir: &'a Path,
    /// The `.dsc`'s file name in `dir`.
    pub dsc: &'a str,
    pub chroot: &'a Chroot,
    /// The schroot the build's sessions use (its `-unit` variant inside a sandboxed unit).
    pub schroot: String,
    /// The chroot's machine image.
    pub image: PathBuf,
    pub slot: &'a Slot,
    /// There is a systemd with machined (nspawn machines register).
    pub machined: bool,
    /// The running binary (`builder-exec`).
    pub exe: &'a Path,
    /// The request is this instance's own (signed with its key), not a remote's: its
    /// distribution's `.sbuildrc` snippet applies (a remote's perl never runs here).
    pub local: bool,
    /// The build's sanitised output, when `dir` is a fresh copy of the request's files rather
    /// than the build directory (the checks after an sbuild build, whose session root could
    /// write there): the check machines see it at `/build/out`.
    pub out: Option<&'a Path>,
}

/// The request's chroot setup script (`.config/chroot_setup_script`), if it has one.
pub(crate) fn setup_script(dir: &Path) -> Option<PathBuf> {
    let p = dir.join(".config/chroot_setup_script");
    std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() > 0).then_some(p)
}

/// Where a build sees its ccache directory (the slot's, per chroot and backend), in an sbuild
/// session and in an nspawn machine alike.
pub const CCACHE_IN_BUILD: &str = "/var/cache/buildbay-ccache";

/// The setup blocks a builder applies (mini-buildd's `sbuild_setup_blocks`): a shell function
/// both backends run as root in the build's session or machine, `setup_blocks PHASE BLOCK…`.
/// Phase `apt` (before the request's sources are updated): apt's options. Phase `install`
/// (after; also when the image has every build dependency, then nothing is downloaded): ccache
/// and eatmydata, installed if the image lacks them, eatmydata preloaded. `apt-setup` and
/// `apt-update` are the builders' own steps. The names are checked words (see
/// `protocol::settings::Blocks`); [`block_notes`] names those no phase applies.
pub const SETUP_BLOCKS_SH: &str = r#"apt_option() { printf '%s\n' "$2" > "/etc/apt/apt.conf.d/00buildbay-$1"; echo "buildbay: setup block $1: $2"; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q ' ok installed$'; }
need() { installed "$1" || apt-get -q -y --no-install-recommends install "$1"; }
setup_blocks() {
  phase=$1; shift
  for b in "$@"; do
    case "$phase:$b" in
    apt:apt-no-check-valid-until) apt_option "$b" 'Acquire::Check-Valid-Until "false";' ;;
    apt:apt-allow-unauthenticated) apt_option "$b" 'APT::Get::AllowUnauthenticated "true";' ;;
    apt:apt-force-yes) apt_option "$b" 'APT::Get::Force-Yes "true";' ;;
    apt:apt-no-cache) apt_option "$b" 'Acquire::http::No-Cache "true";' ;;
    apt:apt-no-pipelining) apt_option "$b" 'Acquire::http::Pipeline-Depth "0";' ;;
    install:ccache) need ccache || { echo 'buildbay: setup block ccache: installing ccache failed'; return 1; } ;;
    install:eatmydata)
      if need eatmydata; then
        so=$(dpkg -L libeatmydata1 eatmydata 2>/dev/null | grep '/libeatmydata[.]so$' | head -n 1)
        if [ -n "$so" ]; then
          printf ' %s' "$so" >> /etc/ld.so.preload
          echo "buildbay: setup block eatmydata: $so preloaded"
        else
          echo 'buildbay: setup block eatmydata: no libeatmydata.so (skipped)'
        fi
      else
        echo 'buildbay: setup block eatmydata: not installable (skipped)'
      fi ;;
    esac
  done
}
"#;

/// apt options that turn off apt's checks: a remote's request gets them only in an nspawn
/// machine (in an sbuild session, apt runs maintainer scripts as root on this host).
const WEAKENING: [&str; 3] = ["apt-allow-unauthenticated", "apt-force-yes", "apt-no-check-valid-until"];

/// The setup blocks a build applies, and a note (for the top of the build log) for each one it
/// does not, with why: what a request asks for is never dropped silently.
pub fn blocks(b: &Build<'_>) -> (Vec<String>, Vec<String>) {
    const APPLIED: [&str; 9] = [
        "apt-setup",
        "apt-update",
        "apt-no-check-valid-until",
        "apt-allow-unauthenticated",
        "apt-force-yes",
        "apt-no-cache",
        "apt-no-pipelining",
        "ccache",
        "eatmydata",
    ];
    let req = b.req;
    let (mut applied, mut notes) = (Vec::new(), Vec::new());
    for name in req.setup_blocks.words() {
        let why = match name.as_str() {
            n if WEAKENING.contains(&n) && !b.local && req.backend == Kind::Sbuild => {
                "a remote's request does not turn off apt's checks in an sbuild session"
            }
            n if APPLIED.contains(&n) => {
                applied.push(name.clone());
                continue;
            }
            "show-sbuildrc" if req.backend == Kind::Sbuild => {
                applied.push(name.clone());
                continue;
            }
            "show-sbuildrc" => "the nspawn backend has no .sbuildrc",
            "apt-clear" => "the image's lists are the base of every build here; they are never cleared",
            _ => "unknown to this builder",
        };
        notes.push(format!("setup block {name} is not applied: {why}"));
    }
    for name in req.config_blocks.words() {
        match name.as_str() {
            "set-default-path" => {}
            "ccache" if !b.local => {
                notes.push("config block ccache is not applied: a remote's build gets no cache of this host".into())
            }
            "ccache" => {}
            _ => notes.push(format!("config block {name} is not applied: unknown to this builder")),
        }
    }
    (applied, notes)
}

/// The packages the request's setup blocks install (the image must have them for a build with
/// nothing to install).
fn block_packages(req: &BuildRequest) -> Vec<&'static str> {
    [("ccache", "ccache"), ("eatmydata", "eatmydata")]
        .into_iter()
        .filter(|(block, _)| req.setup_blocks.has(block))
        .map(|(_, package)| package)
        .collect()
}

/// The ccache directory of a build with the `ccache` config block (made, 0700), kept for the
/// next builds of the same source package from the same repository, in the same slot, chroot
/// and backend: a build can poison what its cache holds, so no other package ever reads it. A
/// remote's build gets none.
pub(crate) fn ccache_dir(b: &Build<'_>) -> Result<Option<PathBuf>, BuilderError> {
    use std::os::unix::fs::PermissionsExt;
    if !b.req.config_blocks.has("ccache") || !b.local {
        return Ok(None);
    }
    let base = b.slot.libdir(b.chroot).join(format!("ccache-{}", b.req.backend.as_str()));
    // Both names are checked Debian names: letters, digits and `.+-`, never `/` or a leading dot.
    let dir = base.join(format!("{}_{}", b.req.distribution.repo, b.req.key.source()));
    for d in [&base, &dir] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io_err(d))?;
    }
    Ok(Some(dir))
}

/// ccache's settings for a build: its configuration from a file no build writes (never the
/// cache's own `ccache.conf`, which a build could plant), and a bound on each cache's size.
pub const CCACHE_ENV: [(&str, &str); 2] =
    [("CCACHE_CONFIGPATH", "/etc/buildbay-ccache.conf"), ("CCACHE_MAXSIZE", "1G")];

/// What runs after a successful build, once its result can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// lintian in ignore mode, in a fresh session of the chroot, as the slot's build user, on
    /// copies of the build's files in the slot's own `/build` directory.
    Lintian { chroot: String, user: Option<String>, dir: PathBuf, options: Vec<String> },
}

/// A QA check that runs after a successful build, in a machine of its own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckRun {
    #[serde(with = "check_name")]
    pub check: crate::protocol::Check,
    pub mode: QaMode,
    pub argv: Vec<String>,
}

mod check_name {
    use crate::protocol::Check;
    pub fn serialize<S: serde::Serializer>(c: &Check, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.field())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Check, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(d)?;
        Check::ALL.into_iter().find(|c| c.field() == name).ok_or_else(|| serde::de::Error::custom("unknown check"))
    }
}

/// The checks' file in the build directory (JSON, written when the build is staged, read by
/// the relay after the build).
pub const CHECKS_PLAN: &str = ".checks.json";

/// What of the network a build may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// Nothing (nothing to install, and the build has no network).
    None,
    /// These hosts (the repository, the mirrors), and name service.
    Hosts(Vec<String>),
}

/// What a backend made of a build.
#[derive(Debug, Clone)]
pub struct Plan {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The nspawn backend's machine name (`machinectl list`).
    pub machine: Option<String>,
    /// Lines for the top of the build log: decisions made before the build started.
    pub notes: Vec<String>,
    /// piuparts and autopkgtest, each in a machine of its own after a successful build.
    pub checks: Vec<CheckRun>,
    /// The checks (and lintian after the result) run in a unit of their own after the build's
    /// unit ended (an sbuild build in a systemd unit), not in the build's.
    pub separate_checks: bool,
    pub after: Option<After>,
    pub network: Network,
    /// What the build's unit may write besides its build directory.
    pub writable: Vec<PathBuf>,
}

/// A build backend.
pub trait Backend: Sync {
    /// Write the backend's files into the build directory; return the command.
    fn plan(&self, b: &Build<'_>, installed: bool) -> Result<Plan, BuilderError>;
}

/// The backend a request names.
fn backend(kind: Kind) -> &'static dyn Backend {
    match kind {
        Kind::Sbuild => &sbuild::Sbuild,
        Kind::Nspawn => &nspawn::Nspawn,
    }
}

/// Plan a build: decide whether anything must be installed, then ask its backend.
pub fn plan(b: &Build<'_>) -> Result<Plan, BuilderError> {
    let mut notes = Vec::new();
    // sbuild runs the chroot setup script as root in a schroot session, which is root on this
    // host: only this instance's own requests get that. A remote's script runs only in an
    // nspawn machine, whose root owns nothing here.
    if let Some(script) = setup_script(b.dir)
        && !b.local
        && b.req.backend == Kind::Sbuild
    {
        std::fs::remove_file(&script).map_err(io_err(&script))?;
        notes.push(
            "the request's chroot setup script is a remote's: it does not run as root in an sbuild session".into(),
        );
    }
    let installed = match image_has_build_deps(b) {
        Ok(()) => {
            notes.push("the build dependencies are all in the chroot image: nothing to install".to_owned());
            true
        }
        Err(why) => {
            notes.push(format!("build dependencies to install: {why}"));
            false
        }
    };
    let mut plan = backend(b.req.backend).plan(b, installed)?;
    plan.writable = vec![b.slot.apt_cache.clone(), b.slot.build_dir.clone()];
    plan.checks = checks(b, false)?;
    // In a systemd unit, an sbuild build's checks run in a unit of their own after it: the
    // build's unit forbids the namespaces a check machine needs.
    plan.separate_checks = b.machined && b.req.backend == Kind::Sbuild && !plan.checks.is_empty();
    if plan.separate_checks {
        notes.push(
            "piuparts and autopkgtest run after the build in a unit of their own (buildbay-check-…), each in a fresh machine of the image"
                .into(),
        );
    }
    plan.network = if installed && !b.req.network && (plan.checks.is_empty() || plan.separate_checks) {
        Network::None
    } else {
        check_network(b)
    };
    plan.after = after_lintian(b);
    if plan.after.is_some() {
        notes.push(format!("lintian mode ignore: lintian runs after the result, into {}", super::AFTER_LOG));
    }
    if let Some(u) = &b.slot.user {
        notes.push(format!("build slot {}: the build runs as {u}", b.slot.index));
    }
    for (k, v) in build_env(b.req) {
        notes.push(format!("{k}={v}"));
    }
    notes.extend(blocks(b).1);
    notes.append(&mut plan.notes);
    plan.notes = notes;
    Ok(plan)
}

/// piuparts and autopkgtest as the request asks for them, each in a fresh nspawn machine of the
/// image (in the slot's user namespace: root there owns nothing here), on either backend: the
/// check machines' script and the plan (`CHECKS_PLAN`) written into the build directory, afresh
/// (a planted file is replaced, never followed).
///
/// `lintian`: lintian in ignore mode runs in a check machine too (after the result), not in a
/// schroot session (the checks' own unit after an sbuild build opens none).
pub(crate) fn checks(b: &Build<'_>, lintian: bool) -> Result<Vec<CheckRun>, BuilderError> {
    let mut runs = Vec::new();
    for (check, mode) in [(Check::Piuparts, b.req.piuparts), (Check::Autopkgtest, b.req.autopkgtest)] {
        if mode != QaMode::Disabled {
            runs.push(CheckRun { check, mode, argv: nspawn::check_argv(b, check) });
        }
    }
    if lintian && b.req.lintian == QaMode::Ignore {
        runs.push(CheckRun {
            check: Check::Lintian,
            mode: QaMode::Ignore,
            argv: nspawn::check_argv(b, Check::Lintian),
        });
    }
    if !runs.is_empty() {
        write_const(b.dir, nspawn::CHECK, &nspawn::check_script(), 0o644)?;
        let json = serde_json::to_vec(&runs).map_err(|e| io_err(b.dir)(std::io::Error::other(e)))?;
        write_const(b.dir, CHECKS_PLAN, &String::from_utf8_lossy(&json), 0o644)?;
    }
    Ok(runs)
}

/// lintian in ignore mode: after the result, in a fresh session of the chroot.
pub(crate) fn after_lintian(b: &Build<'_>) -> Option<After> {
    (b.req.lintian == QaMode::Ignore).then(|| After::Lintian {
        chroot: b.schroot.clone(),
        user: b.slot.user.clone(),
        dir: b.slot.build_dir.clone(),
        options: b.req.lintian_extra_options.words().to_vec(),
    })
}

/// What the checks (and a build that installs) may reach: the hosts of the request's and the
/// image's apt sources.
pub(crate) fn check_network(b: &Build<'_>) -> Network {
    let mut hosts = apt_hosts(&b.dir.join(".config/apt_sources.list"));
    hosts.extend(apt_hosts(&b.image.join("etc/apt/sources.list")));
    hosts.sort();
    hosts.dedup();
    Network::Hosts(hosts)
}

/// The hosts of the `deb` lines of an apt sources file (a regular file, never through a
/// symlink, its first 64 KiB).
fn apt_hosts(path: &Path) -> Vec<String> {
    use std::io::Read;
    let mut text = String::new();
    if let Ok((f, _)) = crate::protocol::tar::open_regular(path) {
        let _ = f.take(64 << 10).read_to_string(&mut text);
    }
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "deb").then_some(())?;
            let mut url = w.next()?;
            if url.starts_with('[') {
                url = w.find(|x| x.ends_with(']')).and_then(|_| w.next())?;
            }
            let rest = url.split_once("://")?.1;
            let host = rest.split(['/', ':']).next()?;
            (!host.is_empty() && host.bytes().all(|c| c.is_ascii_alphanumeric() || b".-".contains(&c)))
                .then(|| host.to_owned())
        })
        .collect()
}

/// The environment every backend gives the build: `DEB_BUILD_OPTIONS`, `DEB_BUILD_PROFILES`.
pub(crate) fn build_env(req: &BuildRequest) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(v) = &req.deb_build_options {
        env.push(("DEB_BUILD_OPTIONS".to_owned(), v.to_string()));
    }
    if let Some(v) = &req.deb_build_profiles {
        env.push(("DEB_BUILD_PROFILES".to_owned(), v.to_string()));
    }
    env
}

/// Write a constant file of a backend into the build directory.
pub(crate) fn write_const(dir: &Path, name: &str, text: &str, mode: u32) -> Result<PathBuf, BuilderError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    crate::store::write_file_synced(&path, text.as_bytes()).map_err(io_err(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
    Ok(path)
}

/// Whether the chroot image already holds every build dependency of the `.dsc`, as the
/// request's resolver would see it (see `deb::builddeps`); otherwise why not.
fn image_has_build_deps(b: &Build<'_>) -> Result<(), String> {
    let req = b.req;
    if req.add_depends.is_some() {
        return Err("the request adds dependencies (Add-Depends)".into());
    }
    if setup_script(b.dir).is_some() {
        return Err("the distribution has a chroot setup script".into());
    }
    let status_path = b.image.join("var/lib/dpkg/status");
    let status = std::fs::read_to_string(&status_path).map_err(|e| format!("{}: {e}", status_path.display()))?;
    let installed = crate::deb::builddeps::Installed::from_status(&status);
    if let Some(p) = block_packages(req).into_iter().find(|p| !installed.has(p)) {
        return Err(format!("the setup block {p} installs {p}, which the image lacks"));
    }
    let dsc = read_dsc(b)?;
    with_target(req, |target| crate::deb::builddeps::satisfied(&dsc, &installed, target))
}

/// The build's `.dsc` (its signed part), as the build directory has it.
pub(crate) fn read_dsc(b: &Build<'_>) -> Result<crate::deb::Stanza, String> {
    let dsc_path = b.dir.join(b.dsc);
    let raw = crate::deb::changes::read_bounded(&dsc_path).map_err(|e| format!("{}: {e}", dsc_path.display()))?;
    let text = String::from_utf8(raw).map_err(|_| "the .dsc is not UTF-8".to_owned())?;
    crate::deb::control::strip_signature(&text)
        .and_then(|t| crate::deb::Stanza::parse_one(&t))
        .map_err(|e| format!("cannot read the .dsc: {e}"))
}

/// What the request's build dependencies are resolved for: its architecture, its build
/// profiles, its resolver (apt takes only the first alternative), whether `-Indep` counts.
pub(crate) fn with_target<T>(req: &BuildRequest, f: impl FnOnce(&crate::deb::builddeps::Target) -> T) -> T {
    let profiles: Vec<&str> = req.deb_build_profiles.as_ref().map(|p| p.tokens().collect()).unwrap_or_default();
    f(&crate::deb::builddeps::Target {
        arch: req.key.arch.as_str(),
        profiles: &profiles,
        first_alternative_only: req.resolver == crate::protocol::Resolver::Apt,
        indep: req.arch_all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::settings::Blocks;

    #[test]
    fn blocks_no_phase_applies_are_named_in_the_log() {
        let mut req = crate::protocol::request::tests::sample();
        req.setup_blocks =
            Blocks::parse_any("apt-setup apt-clear show-sbuildrc ccache x-unheard-of apt-allow-unauthenticated")
                .unwrap();
        req.config_blocks = Blocks::parse_any("set-default-path ccache x-other").unwrap();
        req.backend = Kind::Sbuild;
        let dir = tempfile::tempdir().unwrap();
        let slot = crate::builder::slots::Users::Own.slot(0, dir.path(), dir.path().join("s0")).unwrap();
        let chroot: Chroot = crate::chroot::Chroot::new("bookworm".parse().unwrap(), "amd64".parse().unwrap());
        let mut b = Build {
            req: &req,
            dir: dir.path(),
            dsc: "hello_1.0-1.dsc",
            chroot: &chroot,
            schroot: String::new(),
            image: dir.path().join("image"),
            slot: &slot,
            machined: false,
            exe: Path::new("/usr/bin/buildbay"),
            local: true,
            out: None,
        };
        let (applied, notes) = blocks(&b);
        assert_eq!(applied, ["apt-setup", "show-sbuildrc", "ccache", "apt-allow-unauthenticated"]);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].starts_with("setup block apt-clear is not applied: "), "{notes:?}");
        assert_eq!(notes[1], "setup block x-unheard-of is not applied: unknown to this builder");
        assert_eq!(notes[2], "config block x-other is not applied: unknown to this builder");
        let own = ccache_dir(&b).unwrap().expect("a cache");
        assert!(own.ends_with("ccache-sbuild/test_hello"), "{own:?}");
        // A remote's request: no apt weakening in an sbuild session, no cache.
        b.local = false;
        let (applied, notes) = blocks(&b);
        assert!(!applied.iter().any(|a| a == "apt-allow-unauthenticated"), "{applied:?}");
        assert!(notes.iter().any(|n| n.contains("does not turn off apt's checks")), "{notes:?}");
        assert!(notes.iter().any(|n| n.starts_with("config block ccache is not applied")), "{notes:?}");
        assert_eq!(ccache_dir(&b).unwrap(), None);
        let mut on_nspawn = req.clone();
        on_nspawn.backend = Kind::Nspawn;
        let b = Build { req: &on_nspawn, ..b };
        assert!(blocks(&b).1.iter().any(|n| n.starts_with("setup block show-sbuildrc is not applied")));
        assert!(blocks(&b).0.iter().any(|a| a == "apt-allow-unauthenticated"), "a machine's apt may");
        assert_eq!(block_packages(&req), ["ccache"]);
    }

    /// The shell function dispatches each block to its phase (its actions stubbed: they write
    /// into /etc and run apt).
    #[test]
    fn setup_blocks_run_in_their_phase() {
        let run = |phase: &str| -> String {
            let script = format!(
                "{SETUP_BLOCKS_SH}\napt_option() {{ echo \"option $1 $2\"; }}\nneed() {{ echo \"need $1\"; return 1; }}\nsetup_blocks \"$@\""
            );
            let out = std::process::Command::new("sh")
                .args(["-c", &script, "sh", phase])
                .args(["apt-setup", "apt-no-pipelining", "ccache", "eatmydata", "apt-clear", "$(touch x)", "*"])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(run("apt"), "option apt-no-pipelining Acquire::http::Pipeline-Depth \"0\";\n");
        // ccache's install fails: the phase fails there (eatmydata is not reached).
        assert_eq!(run("install"), "need ccache\nbuildbay: setup block ccache: installing ccache failed\n");
    }
}
