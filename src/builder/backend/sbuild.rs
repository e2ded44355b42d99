//! The sbuild backend (mini-buildd's way): sbuild on the chroot's schroot overlay, as root in the
//! build's unit, with `debian/rules` run as the slot's unprivileged build user (sbuild's
//! `$build_user`; fakeroot for the binary targets). The schroot profile (see `chroot`) mounts a
//! `/proc` of its own that hides every process of other users, and copies no password hashes.
//!
//! The `.sbuildrc` is a constant: it reads its values from the unit's environment. The session's
//! apt setup is `buildbay builder-exec --sbuild-setup`, run by sbuild as a pre-build command
//! with the session's exec prefix as its last arguments.

use super::{After, Backend, Build, Plan, build_env, write_const};
use crate::builder::BuilderError;
use crate::protocol::BuildRequest;
use std::path::Path;

pub struct Sbuild;

/// `$HOME/.sbuildrc` of every sbuild build (HOME is the build directory). No value is written
/// into it: each comes from the environment sbuild is started with.
pub const SBUILDRC: &str = r#"# buildbay: every value here comes from the build unit's environment.
$apt_keep_downloaded_packages = 1;
$build_user = $ENV{'BUILDBAY_BUILD_USER'} if length($ENV{'BUILDBAY_BUILD_USER'} // '');
# The session's setup (BUILDBAY_SETUP: "full", or "installed": the image has every build
# dependency, so only the setup blocks and the ccache mount). sbuild joins the words into a
# shell line: none of them has a space (the blocks are comma-separated).
if (length($ENV{'BUILDBAY_SETUP'} // '')) {
    my @setup = ($ENV{'BUILDBAY_EXE'}, 'builder-exec', '--sbuild-setup', $ENV{'BUILDBAY_BUILD_DIR'},
        '--apt-cache', $ENV{'BUILDBAY_APT_CACHE'});
    push(@setup, '--setup-blocks=' . $ENV{'BUILDBAY_SETUP_BLOCKS'}) if length($ENV{'BUILDBAY_SETUP_BLOCKS'} // '');
    push(@setup, '--installed') if $ENV{'BUILDBAY_SETUP'} eq 'installed';
    push(@setup, '--ccache', $ENV{'BUILDBAY_CCACHE_HOST'}) if length($ENV{'BUILDBAY_CCACHE_HOST'} // '');
    $external_commands = { 'pre-build-commands' => [[@setup, '--', '%SBUILD_CHROOT_EXEC']] };
}
my $default_path = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/games';
$path = $default_path if length($ENV{'BUILDBAY_DEFAULT_PATH'} // '');
# The ccache config block: ccache first in $path, its directory the slot's (mounted there).
if (length($ENV{'BUILDBAY_CCACHE'} // '')) {
    $path = '/usr/lib/ccache:' . ($path // $default_path);
    $build_environment = { %{$build_environment // {}}, 'CCACHE_DIR' => $ENV{'BUILDBAY_CCACHE'},
        'CCACHE_CONFIGPATH' => $ENV{'BUILDBAY_CCACHE_CONFIGPATH'}, 'CCACHE_MAXSIZE' => $ENV{'BUILDBAY_CCACHE_MAXSIZE'} };
}
# The distribution's own perl (this instance's requests only).
if (length($ENV{'BUILDBAY_SBUILDRC_SNIPPET'} // '')) {
    # A string eval, as sbuild reads .sbuildrc: the snippet sees sbuild's config variables.
    my $snippet = $ENV{'BUILDBAY_SBUILDRC_SNIPPET'};
    open(my $fh, '<', $snippet) or die("buildbay: cannot read the sbuildrc snippet $snippet: $!");
    my $code = do { local $/; <$fh> };
    close($fh);
    eval($code . "\n;1;") or die("buildbay: the distribution's sbuildrc snippet: $@");
}
1;
"#;

impl Backend for Sbuild {
    fn plan(&self, b: &Build<'_>, installed: bool) -> Result<Plan, BuilderError> {
        write_const(b.dir, ".sbuildrc", SBUILDRC, 0o644)?;
        let dir = b.dir.display().to_string();
        let mut env = vec![("HOME".to_owned(), dir.clone()), ("BUILDBAY_BUILD_DIR".to_owned(), dir)];
        env.push(("BUILDBAY_EXE".to_owned(), b.exe.display().to_string()));
        env.push(("BUILDBAY_APT_CACHE".to_owned(), b.slot.apt_cache.display().to_string()));
        if let Some(u) = &b.slot.user {
            env.push(("BUILDBAY_BUILD_USER".to_owned(), u.clone()));
        }
        if b.req.config_blocks.has("set-default-path") {
            env.push(("BUILDBAY_DEFAULT_PATH".to_owned(), "1".to_owned()));
        }
        let ccache = super::ccache_dir(b)?;
        if let Some(dir) = &ccache {
            // Written by debian/rules, as the slot's build user.
            if let Some(name) = b.slot.user.as_deref() {
                let user = nix::unistd::User::from_name(name).ok().flatten().ok_or_else(|| {
                    BuilderError::Users(format!("the build user {name} does not exist; its ccache has no owner"))
                })?;
                chown_tree(dir, user.uid)?;
            }
            env.push(("BUILDBAY_CCACHE_HOST".to_owned(), dir.display().to_string()));
            env.push(("BUILDBAY_CCACHE".to_owned(), super::CCACHE_IN_BUILD.to_owned()));
            env.extend(super::CCACHE_ENV.iter().map(|(k, v)| (format!("BUILDBAY_{k}"), v.to_string())));
        }
        let (blocks, _) = super::blocks(b);
        let block_work = blocks.iter().any(|w| ["ccache", "eatmydata", "show-sbuildrc"].contains(&w.as_str()));
        if !installed || block_work || ccache.is_some() {
            env.push(("BUILDBAY_SETUP".to_owned(), if installed { "installed" } else { "full" }.to_owned()));
            env.push(("BUILDBAY_SETUP_BLOCKS".to_owned(), blocks.join(",")));
        }
        let mut notes = vec![];
        if !installed {
            notes.push(format!("build-dependency resolver: {}", b.req.resolver.as_str()));
        }
        let snippet = b.dir.join(".config/sbuildrc_snippet");
        if std::fs::symlink_metadata(&snippet).is_ok_and(|m| m.is_file() && m.len() > 0) {
            if b.local {
                // mini-buildd's placeholder: the slot's persistent directory of this chroot.
                let text = read_setting(&snippet)?;
                let libdir = b.slot.libdir(b.chroot);
                std::fs::create_dir_all(&libdir).map_err(crate::builder::io_err(&libdir))?;
                let text = text.replace("%LIBDIR%", &libdir.display().to_string());
                let path = write_const(b.dir, ".sbuildrc-snippet", &text, 0o644)?;
                notes.push("the distribution's sbuildrc snippet is part of .sbuildrc".to_owned());
                env.push(("BUILDBAY_SBUILDRC_SNIPPET".to_owned(), path.display().to_string()));
            } else {
                notes.push("the request's sbuildrc snippet is a remote's: it does not run here".to_owned());
            }
        }
        env.extend(build_env(b.req));
        Ok(Plan {
            argv: sbuild_argv(b.req, &b.schroot, b.dir, &b.dir.join(b.dsc), installed),
            env,
            machine: None,
            notes,
            checks: vec![],
            separate_checks: false,
            after: None::<After>,
            network: super::Network::None,
            writable: vec![],
        })
    }
}

/// Give `dir` and what is in it to `uid` (a slot's ccache, after a slot's user changed), unless
/// it is that user's already. Symlinks are changed themselves, never followed.
fn chown_tree(dir: &Path, uid: nix::unistd::Uid) -> Result<(), BuilderError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(crate::builder::io_err(dir))?;
    if meta.uid() == uid.as_raw() {
        return Ok(());
    }
    let status = std::process::Command::new("chown")
        .args(["-R", "-h"])
        .arg(uid.as_raw().to_string())
        .arg("--")
        .arg(dir)
        .status()
        .map_err(crate::builder::io_err(dir))?;
    if !status.success() {
        return Err(crate::builder::io_err(dir)(std::io::Error::other(format!("chown -R: {status}"))));
    }
    Ok(())
}

/// A setting's file from the request's `.config` (a regular file, never through a symlink), as
/// the distribution's check bounds it.
fn read_setting(path: &Path) -> Result<String, BuilderError> {
    use std::io::Read;
    let (f, _) = crate::protocol::tar::open_regular(path).map_err(crate::builder::io_err(path))?;
    let mut text = String::new();
    f.take(crate::protocol::settings::MAX_SCRIPT as u64 + 1)
        .read_to_string(&mut text)
        .map_err(crate::builder::io_err(path))?;
    if text.len() > crate::protocol::settings::MAX_SCRIPT {
        let why = format!("longer than {} bytes", crate::protocol::settings::MAX_SCRIPT);
        return Err(crate::builder::io_err(path)(std::io::Error::other(why)));
    }
    Ok(text)
}

/// mini-buildd's sbuild command line, from the typed request.
///
/// `installed`: the chroot already has every build dependency, so sbuild's null resolver
/// installs nothing and the request's apt setup is skipped. Build dependencies are never purged:
/// the session's overlay goes with it.
pub fn sbuild_argv(req: &BuildRequest, chroot: &str, dir: &Path, dsc: &Path, installed: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "sbuild".into(),
        "--chroot-mode=schroot".into(),
        format!("--dist={}", req.distribution),
        format!("--arch={}", req.key.arch),
        format!("--chroot={chroot}"),
        format!("--build-dep-resolver={}", if installed { "null" } else { req.resolver.as_str() }),
        "--purge-deps=never".into(),
        "--nolog".into(),
        "--log-external-command-output".into(),
        "--log-external-command-error".into(),
        "--no-apt-update".into(),
        "--no-apt-upgrade".into(),
        "--no-apt-distupgrade".into(),
    ];
    a.push(if req.arch_all { "--arch-all".into() } else { "--no-arch-all".into() });
    for dep in req.add_depends.iter().flat_map(|r| r.items()) {
        a.push(format!("--add-depends={dep}"));
    }
    match req.lintian.lintian_fail_on() {
        // Disabled, or ignore: its verdict would not count, so it does not delay the build.
        None => a.push("--no-run-lintian".into()),
        Some(fail_on) => {
            a.push("--run-lintian".into());
            a.push("--lintian-opts=--suppress-tags=bad-distribution-in-changes-file".into());
            a.push(format!("--lintian-opts=--fail-on={fail_on}"));
            a.extend(req.lintian_extra_options.words().iter().map(|o| format!("--lintian-opt={o}")));
        }
    }
    // buildbay's own check machines run them (see `backend::checks`), never as root here.
    a.push("--no-run-piuparts".into());
    a.push("--no-run-autopkgtest".into());
    a.push(format!("--build-dir={}", crate::builder::writing_out(dir).display()));
    a.push(dsc.display().to_string());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QaMode;

    fn request() -> BuildRequest {
        crate::protocol::request::tests::sample()
    }

    #[test]
    fn sbuild_command_line_follows_the_request() {
        let dir = Path::new("/b");
        let mut req = request();
        let a = sbuild_argv(&req, "buildbay-bookworm-amd64", dir, Path::new("/b/hello_1.0.dsc"), false);
        for want in [
            "--chroot-mode=schroot",
            "--dist=bookworm-test-unstable",
            "--arch=amd64",
            "--chroot=buildbay-bookworm-amd64",
            "--build-dep-resolver=apt",
            "--arch-all",
            "--add-depends=libfoo-dev (>= 1)",
            "--add-depends=bar",
            "--run-lintian",
            "--lintian-opts=--fail-on=error",
            "--lintian-opt=--info",
            "--build-dir=/b/.writing/out",
            "--purge-deps=never",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert_eq!(a.last().map(String::as_str), Some("/b/hello_1.0.dsc"));
        req.lintian = QaMode::Ignore;
        req.arch_all = false;
        let b = sbuild_argv(&req, "c", dir, Path::new("/b/x.dsc"), false);
        assert!(b.contains(&"--no-arch-all".to_owned()) && b.contains(&"--no-run-lintian".to_owned()));
        req.lintian = QaMode::Warnfail;
        let w = sbuild_argv(&req, "c", dir, Path::new("/b/x.dsc"), false);
        assert!(w.contains(&"--lintian-opts=--fail-on=error,warning".to_owned()));
        // Everything already in the image: the null resolver.
        let fast = sbuild_argv(&req, "c", dir, Path::new("/b/x.dsc"), true);
        assert!(fast.contains(&"--build-dep-resolver=null".to_owned()), "{fast:?}");
    }

    #[test]
    fn the_sbuildrc_is_a_constant_that_reads_the_environment() {
        // No value of a request can be in it: it is a constant.
        for needle in ["hello", "bookworm", "/var/lib", "amd64"] {
            assert!(!SBUILDRC.contains(needle), "{needle}");
        }
        let perl = std::process::Command::new("perl").arg("-c").arg("-e").arg(SBUILDRC).output();
        if let Ok(out) = perl {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
