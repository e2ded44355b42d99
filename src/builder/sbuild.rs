//! From a signed build request to a build command line (sbuild, or the nspawn backend the
//! request names), and from the build's output to a signed build result (mini-buildd §5.3).

use super::{BuilderError, Ended, Job, Limits, Result, built_changes, io_err, nspawn, sbuild_fields};
use crate::chroot::{Chroot, Places};
use crate::deb::{Changes, Dist, Stanza, Version};
use crate::instance::Instance;
use crate::packager::BuildRequest;
use crate::packager::{set_file_fields, unpack_protocol_tar};
use std::path::{Path, PathBuf};

/// What `prepare` made of a request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub source: String,
    pub version: String,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    /// The nspawn backend's machine name (`machinectl list`).
    pub machine: Option<String>,
    /// Lines for the top of the build log: decisions made before the build started.
    pub notes: Vec<String>,
    /// The script the build's unit runs after a successful build, once its result can go
    /// (lintian in ignore mode).
    pub after: Option<PathBuf>,
}

/// The request's copy in the build directory.
const REQUEST: &str = "request.changes";

/// A build request's `X-Mini-Buildd-<name>` field.
pub(super) fn request_field<'a>(fields: &'a Stanza, name: &str) -> Option<&'a str> {
    fields.get(&format!("X-Mini-Buildd-{name}"))
}

fn bad(req: &BuildRequest, why: impl std::fmt::Display) -> BuilderError {
    BuilderError::Request { bkey: req.bkey.clone(), why: why.to_string() }
}

/// Verify a request against our key, unpack it into a fresh `dir`, and plan its sbuild run.
///
/// `machined`: an nspawn build registers its machine (there is a systemd with machined).
/// `cache`: the build slot's apt archive cache, which the build's apt downloads into.
pub fn prepare(
    inst: &Instance,
    req: &BuildRequest,
    dir: &Path,
    places: &Places,
    machined: bool,
    cache: &Path,
) -> Result<Plan> {
    let raw = std::fs::read(&req.changes).map_err(io_err(&req.changes))?;
    crate::gpg::verify_clearsigned(&raw, std::slice::from_ref(inst.key()?.cert()))
        .map_err(|e| bad(req, format!("not signed by this instance: {e}")))?;
    let text = String::from_utf8(raw.clone()).map_err(|_| bad(req, "not UTF-8"))?;
    let changes = Changes::parse(&text).map_err(|e| bad(req, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    std::fs::create_dir_all(dir.join("out")).map_err(io_err(dir))?;
    std::fs::write(dir.join(REQUEST), &raw).map_err(io_err(dir))?;
    let from = req.changes.parent().unwrap_or(Path::new("."));
    let mut dsc = None;
    for f in &changes.files {
        f.verify(from).map_err(|e| bad(req, e))?;
        if f.name.as_str().ends_with(".tar") {
            let names = unpack_protocol_tar(&from.join(f.name.as_str()), dir, true).map_err(|e| bad(req, e))?;
            dsc = names.into_iter().find(|n| n.ends_with(".dsc")).or(dsc);
        }
    }
    let dsc = dsc.ok_or_else(|| bad(req, "its tar holds no .dsc"))?;
    let dist: Dist = changes.distribution.parse().map_err(|e| bad(req, e))?;
    let arch = req.arch.parse().map_err(|e| bad(req, e))?;
    let chroot = Chroot::new(dist.codename.clone(), arch);
    if !places.is_prepared(&chroot) {
        let id = chroot.id();
        return Err(bad(req, format!("no chroot {id} here; add it with `buildbay api setup --chroots {id}`")));
    }
    let fields = &changes.stanza;
    let mut notes = Vec::new();
    let mut env = vec![format!("HOME={}", dir.display())];
    for (field, var) in [("Deb-Build-Options", "DEB_BUILD_OPTIONS"), ("Deb-Build-Profiles", "DEB_BUILD_PROFILES")] {
        if let Some(v) = request_field(fields, field) {
            env.push(format!("{var}={v}"));
        }
    }
    let write_script = |name: &str, text: String| -> Result<()> {
        let path = dir.join(name);
        crate::archive::publish::write_file_synced(&path, text.as_bytes()).map_err(io_err(&path))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io_err(&path))
    };
    // Nothing to install (the image has it all): no apt session setup, no resolver run.
    let installed = match image_has_build_deps(fields, &dir.join(&dsc), &places.image(&chroot), &req.arch) {
        Ok(()) => true,
        Err(why) => {
            notes.push(format!("build dependencies to install: {why}"));
            false
        }
    };
    if installed {
        notes.push("the build dependencies are all in the chroot image: nothing to install".into());
    }
    let after = if request_field(fields, "Lintian-Mode") == Some("ignore") {
        notes.push(format!("lintian mode ignore: lintian runs after the result, into {}", super::AFTER_LOG));
        write_script(super::AFTER_SCRIPT, lintian_after_script(&chroot.name(), &dir.join("out")))?;
        Some(dir.join(super::AFTER_SCRIPT))
    } else {
        None
    };
    let (argv, machine) = match request_field(fields, "Build-Backend").unwrap_or("sbuild") {
        "sbuild" => {
            write_script(".setup", setup_script(&dir.join(".config"), cache))?;
            // sbuild reads $HOME/.sbuildrc (HOME is the build directory): keep what apt
            // downloads, in the slot's cache the setup binds over the session's.
            let rc = dir.join(".sbuildrc");
            crate::archive::publish::write_file_synced(&rc, b"$apt_keep_downloaded_packages = 1;\n1;\n")
                .map_err(io_err(&rc))?;
            (sbuild_argv(fields, &req.arch, &chroot.name(), dir, &dir.join(&dsc), installed), None)
        }
        "nspawn" => {
            write_script(".nspawn-build", nspawn::build_script(fields, &dsc, installed))?;
            let machine = nspawn::machine_name(&req.bkey);
            let cache = (!installed).then_some(cache);
            (nspawn::nspawn_argv(fields, &places.image(&chroot), dir, &machine, machined, &env, cache), Some(machine))
        }
        other => return Err(bad(req, format!("unknown build backend {other:?} (this builder has sbuild and nspawn)"))),
    };
    Ok(Plan {
        source: changes.source.to_string(),
        version: changes.version.to_string(),
        argv,
        env,
        machine,
        notes,
        after,
    })
}

/// Lintian on a finished build's files (`out`), in a fresh session of its chroot, reported and
/// not gating: the files are copied under sbuild's `/build`, the one host directory a session
/// sees.
pub fn lintian_after_script(chroot: &str, out: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         # buildbay: lintian after the build's result (lintian mode \"ignore\"): reported, not gating.\n\
         set -u\n\
         dir=$(mktemp -d /var/lib/sbuild/build/buildbay-lintian-XXXXXX) || exit 1\n\
         trap 'rm -rf \"$dir\"' EXIT\n\
         trap 'exit 143' INT TERM HUP\n\
         cp -lP '{out}'/* \"$dir\"/ 2>/dev/null || cp -P '{out}'/* \"$dir\"/ || exit 1\n\
         chmod 755 \"$dir\"\n\
         set --\n\
         for c in \"$dir\"/*.changes; do set -- \"$@\" \"/build/${{dir##*/}}/${{c##*/}}\"; done\n\
         schroot -c '{chroot}' -d / -- lintian --suppress-tags bad-distribution-in-changes-file \"$@\" > \"$dir/out\" 2>&1\n\
         rc=$?\n\
         cat \"$dir/out\"\n\
         echo \"Lintian: $(grep -c '^E: ' \"$dir/out\") errors, $(grep -c '^W: ' \"$dir/out\") warnings (lintian exit code $rc)\"\n\
         exit $rc\n",
        out = out.display()
    )
}

/// Whether the chroot image already holds every build dependency of the `.dsc`, as the
/// request's resolver would see it (see `deb::builddeps`); otherwise why not.
fn image_has_build_deps(fields: &Stanza, dsc: &Path, image: &Path, arch: &str) -> std::result::Result<(), String> {
    let f = |k: &str| request_field(fields, k).unwrap_or_default();
    if !f("Add-Depends").trim().is_empty() {
        return Err("the request adds dependencies (Add-Depends)".into());
    }
    let first_alternative_only = match f("Build-Dep-Resolver") {
        "apt" | "" => true,
        "aptitude" => false,
        other => return Err(format!("the {other} resolver decides")),
    };
    let text = std::fs::read_to_string(dsc).map_err(|e| format!("{}: {e}", dsc.display()))?;
    let dsc = crate::deb::control::strip_signature(&text)
        .and_then(|t| Stanza::parse_one(&t))
        .map_err(|e| format!("cannot read the .dsc: {e}"))?;
    let status_path = image.join("var/lib/dpkg/status");
    let status = std::fs::read_to_string(&status_path).map_err(|e| format!("{}: {e}", status_path.display()))?;
    let profiles: Vec<&str> = f("Deb-Build-Profiles").split_whitespace().collect();
    let indep = f("Arch-All") == "Yes";
    let target = crate::deb::builddeps::Target { arch, profiles: &profiles, first_alternative_only, indep };
    crate::deb::builddeps::satisfied(&dsc, &crate::deb::builddeps::Installed::from_status(&status), &target)
}

/// The host-side setup, run by sbuild as a pre-build command with the chroot's exec prefix as
/// its arguments: the slot's apt archive `cache` is bound over the session's
/// `/var/cache/apt/archives` (schroot unmounts it with the session; without it, apt just
/// downloads), the request's apt key, sources and preferences go into the session, and apt
/// updates just those sources (the base archive's lists come with the image).
pub fn setup_script(config: &Path, cache: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         # buildbay: apt setup of a build session. \"$@\" runs a command inside the session as root.\n\
         set -e\n\
         session=$(\"$@\" printenv SCHROOT_SESSION_ID || true)\n\
         location=$(schroot --location -c \"session:$session\" 2>/dev/null || true)\n\
         if [ -n \"$location\" ] && mount --bind '{cache}' \"$location/var/cache/apt/archives\"; then\n\
         \x20 echo 'buildbay: apt archive cache {cache}'\n\
         else\n\
         \x20 echo 'buildbay: no apt archive cache for this session; apt downloads what it needs'\n\
         fi\n\
         {}\
         [ -n \"$updated\" ]\n",
        apt_setup("\"$@\" ", &config.display().to_string()),
        cache = cache.display()
    )
}

/// Shell lines that put a build request's apt key, sources and preferences (from `config`) in
/// place and update just those sources, with retries, each command run through `exec` (empty,
/// or a prefix ending in a space). `updated` is non-empty afterwards when the update worked.
/// Both backends use it: sbuild's session setup and the nspawn machine's script.
pub(super) fn apt_setup(exec: &str, config: &str) -> String {
    format!(
        "{exec}sh -c 'cat > /etc/apt/trusted.gpg.d/buildbay-buildrequest.asc' < '{config}/apt_keys'\n\
         {exec}sh -c 'cat > /etc/apt/sources.list.d/buildbay.list' < '{config}/apt_sources.list'\n\
         {exec}sh -c 'cat > /etc/apt/preferences.d/buildbay' < '{config}/apt_preferences'\n\
         updated=\n\
         for t in 10 40 80; do\n\
         \x20 if {exec}timeout $t apt-get -q --error-on=any -o Dir::Etc::SourceList=/etc/apt/sources.list.d/buildbay.list \
         -o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0 update; then updated=1; break; fi\n\
         \x20 sleep 3  # e.g. the daemon restarting\n\
         done\n"
    )
}

/// mini-buildd's sbuild command line, from the request's `X-Mini-Buildd-*` fields.
///
/// `installed`: the chroot already has every build dependency, so sbuild's null resolver
/// installs nothing and the request's apt setup is skipped. Build dependencies are never purged:
/// the session's overlay goes with it.
pub fn sbuild_argv(fields: &Stanza, arch: &str, chroot: &str, dir: &Path, dsc: &Path, installed: bool) -> Vec<String> {
    let f = |k: &str| request_field(fields, k);
    let mut a: Vec<String> = vec![
        "sbuild".into(),
        "--chroot-mode=schroot".into(),
        format!("--dist={}", fields.get("Distribution").unwrap_or_default()),
        format!("--arch={arch}"),
        format!("--chroot={chroot}"),
        format!("--build-dep-resolver={}", if installed { "null" } else { f("Build-Dep-Resolver").unwrap_or("apt") }),
        "--purge-deps=never".into(),
        "--nolog".into(),
        "--log-external-command-output".into(),
        "--log-external-command-error".into(),
        "--no-apt-update".into(),
        "--no-apt-upgrade".into(),
        "--no-apt-distupgrade".into(),
    ];
    if !installed {
        a.push(format!("--pre-build-commands={} %SBUILD_CHROOT_EXEC", dir.join(".setup").display()));
    }
    a.push(if f("Arch-All") == Some("Yes") { "--arch-all".into() } else { "--no-arch-all".into() });
    for dep in f("Add-Depends").unwrap_or_default().split(',').map(str::trim).filter(|d| !d.is_empty()) {
        a.push(format!("--add-depends={dep}"));
    }
    match f("Lintian-Mode").unwrap_or("disabled") {
        // ignore: its verdict would not count, so it does not delay the build.
        "disabled" | "ignore" => a.push("--no-run-lintian".into()),
        mode => {
            a.push("--run-lintian".into());
            a.push("--lintian-opts=--suppress-tags=bad-distribution-in-changes-file".into());
            let fail_on = if mode == "warnfail" { "error,warning" } else { "error" };
            a.push(format!("--lintian-opts=--fail-on={fail_on}"));
        }
    }
    a.push("--no-run-piuparts".into());
    a.push("--no-run-autopkgtest".into());
    a.push(format!("--build-dir={}", dir.join("out").display()));
    a.push(dsc.display().to_string());
    a
}

/// The outcome of `result`.
pub struct Outcome {
    pub status: String,
    /// `<bkey>/<source>_<version>_<arch>.buildlog`
    pub buildlog: String,
}

/// Make the signed build result of a finished build and drop it into incoming: the tar (sbuild's
/// `.changes` and what it lists), the build log, then the result `.changes` last.
pub fn result(inst: &Instance, job: &Job, ended: &Ended, limits: &Limits, incoming: &Path) -> Result<Outcome> {
    let dir = &job.dir;
    let request = std::fs::read_to_string(dir.join(REQUEST)).ok().and_then(|t| Changes::parse(&t).ok());
    let version = job.version.parse::<Version>().map(|v| v.without_epoch().to_owned()).unwrap_or(job.version.clone());
    let base = format!("{}_{}_mini-buildd-buildresult_{}", job.source, version, job.arch);
    let log_name = format!("{}_{}_{}.buildlog", job.source, version, job.arch);
    let tar_name = format!("{base}.changes.tar");
    let log_text = std::fs::read_to_string(dir.join(super::LIVE_LOG)).unwrap_or_default();
    let mut log_out = log_text.clone();
    let fields = sbuild_fields(&log_text);
    let mut status = fields.iter().find(|(k, _)| k == "Status").map(|(_, v)| v.clone()).unwrap_or("error".into());

    let mut st = Stanza::new();
    st.set("Format", "1.8");
    st.set("Date", chrono::Utc::now().to_rfc2822());
    st.set("Source", job.source.as_str());
    st.set("Version", job.version.as_str());
    st.set("Distribution", job.distribution.as_str());
    st.set("Architecture", job.arch.as_str());
    if let Some(r) = &request {
        for (k, v) in r.stanza.fields() {
            if k.starts_with("X-Mini-Buildd-") {
                st.set(k, v);
            }
        }
    }
    let identity = inst.daemon().ok().flatten().map(|d| d.identity.to_string()).unwrap_or_default();
    st.set("X-Mini-Buildd-Builder", identity);
    for (k, v) in &fields {
        st.set(&format!("X-Mini-Buildd-Sbuild-{k}"), v.as_str());
    }
    let mut internal = std::fs::read_to_string(dir.join("internal-error")).ok();
    if internal.is_none() {
        internal = ended.limit_reason(limits);
    }
    if internal.is_none() && ended.service_result == "lost" {
        internal = Some("the build unit ended without recording how (was the machine rebooted?)".into());
    }
    if let Ok(by) = std::fs::read_to_string(dir.join("canceled")) {
        st.set("X-Mini-Buildd-Canceled-By", by.trim());
        status = "canceled".into();
        internal = None;
    }
    if let Some(why) = &internal {
        if status == "successful" {
            status = "error".into();
        }
        st.set("X-Mini-Buildd-Internal-Error", why.as_str());
        log_out.push_str(&format!("\nbuildbay: {why}\n"));
    }
    st.set("X-Mini-Buildd-Sbuild-Status", status.as_str());

    // The tar: sbuild's .changes and its files, when the build got that far.
    let tar_path = dir.join(&tar_name);
    {
        let file = std::fs::File::create(&tar_path).map_err(io_err(&tar_path))?;
        let mut tar = tar::Builder::new(file);
        if let Some((path, changes)) = built_changes(&dir.join("out")) {
            let out = dir.join("out");
            let mut names = vec![path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()];
            names.extend(changes.files.iter().map(|f| f.name.as_str().to_owned()));
            for n in names {
                tar.append_path_with_name(out.join(&n), &n).map_err(io_err(out.join(&n)))?;
            }
        }
        tar.into_inner().map_err(io_err(&tar_path))?.sync_all().map_err(io_err(&tar_path))?;
    }
    let log_path = dir.join(&log_name);
    crate::archive::publish::write_file_synced(&log_path, log_out.as_bytes()).map_err(io_err(&log_path))?;
    set_file_fields(&mut st, dir, &[log_name.clone(), tar_name.clone()]).map_err(io_err(dir))?;
    let mut text = st.to_string();
    text.push('\n');
    let signed = inst.key()?.clearsign(text.as_bytes())?;
    let changes_name = format!("{base}.changes");
    let changes_path = dir.join(&changes_name);
    crate::archive::publish::write_file_synced(&changes_path, &signed).map_err(io_err(&changes_path))?;
    for name in [&tar_name, &log_name, &changes_name] {
        deliver(&dir.join(name), &incoming.join(name))?;
    }
    Ok(Outcome { status, buildlog: format!("{}/{log_name}", job.bkey) })
}

/// Put a file into incoming atomically (a hard link, or a copy renamed into place).
fn deliver(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    let tmp: PathBuf = to.with_file_name(format!(".{}.tmp", to.file_name().unwrap_or_default().to_string_lossy()));
    std::fs::copy(from, &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, to).map_err(io_err(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &[(&str, &str)]) -> Stanza {
        let mut st = Stanza::new();
        st.set("Distribution", "bookworm-test-unstable");
        st.set("X-Mini-Buildd-Build-Dep-Resolver", "apt");
        st.set("X-Mini-Buildd-Lintian-Mode", "errfail");
        for (k, v) in extra {
            st.set(&format!("X-Mini-Buildd-{k}"), *v);
        }
        st
    }

    #[test]
    fn sbuild_command_line_follows_the_request() {
        let dir = Path::new("/b");
        let a = sbuild_argv(
            &request(&[("Arch-All", "Yes"), ("Add-Depends", "libfoo-dev, bar")]),
            "amd64",
            "buildbay-bookworm-amd64",
            dir,
            Path::new("/b/hello_1.0.dsc"),
            false,
        );
        for want in [
            "--chroot-mode=schroot",
            "--dist=bookworm-test-unstable",
            "--arch=amd64",
            "--chroot=buildbay-bookworm-amd64",
            "--build-dep-resolver=apt",
            "--arch-all",
            "--add-depends=libfoo-dev",
            "--add-depends=bar",
            "--run-lintian",
            "--lintian-opts=--fail-on=error",
            "--pre-build-commands=/b/.setup %SBUILD_CHROOT_EXEC",
            "--build-dir=/b/out",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert_eq!(a.last().map(String::as_str), Some("/b/hello_1.0.dsc"));
        let b = sbuild_argv(
            &request(&[("Lintian-Mode", "ignore")]),
            "i386",
            "buildbay-bookworm-i386",
            dir,
            Path::new("/b/x.dsc"),
            false,
        );
        assert!(b.contains(&"--no-arch-all".to_owned()) && b.contains(&"--no-run-lintian".to_owned()));
        let w = sbuild_argv(&request(&[("Lintian-Mode", "warnfail")]), "amd64", "c", dir, Path::new("/b/x.dsc"), false);
        assert!(w.contains(&"--lintian-opts=--fail-on=error,warning".to_owned()));
        // Everything already in the image: the null resolver, and no apt setup in the session.
        let fast = sbuild_argv(&request(&[]), "amd64", "c", dir, Path::new("/b/x.dsc"), true);
        assert!(fast.contains(&"--build-dep-resolver=null".to_owned()), "{fast:?}");
        assert!(!fast.iter().any(|x| x.starts_with("--pre-build-commands")), "{fast:?}");
        assert!(a.contains(&"--purge-deps=never".to_owned()) && fast.contains(&"--purge-deps=never".to_owned()));
    }

    #[test]
    fn setup_script_runs_everything_through_the_session_prefix() {
        let s = setup_script(Path::new("/b/.config"), Path::new("/s/var/cache/apt-archives/1"));
        assert!(s.contains("mount --bind '/s/var/cache/apt-archives/1' \"$location/var/cache/apt/archives\""), "{s}");
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(
            s.contains("\"$@\" sh -c 'cat > /etc/apt/sources.list.d/buildbay.list' < '/b/.config/apt_sources.list'")
        );
        assert!(s.contains("Dir::Etc::SourceParts=-"));
    }

    #[test]
    fn request_tar_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("r.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "sub/evil", &b"x"[..]).unwrap();
        b.into_inner().unwrap();
        let err = unpack_protocol_tar(&tar_path, &dir.path().join("out"), true).unwrap_err();
        assert!(err.contains("only plain file names"), "{err}");
    }
}
