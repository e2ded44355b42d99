//! The nspawn backend (debspawn's model): an ephemeral `systemd-nspawn` machine of the chroot
//! image, in a user namespace of its own (the slot's 65536 uids: its root owns nothing on the
//! host). `buildbay builder-exec --nspawn-root` stacks a throwaway overlay on an id-mapped,
//! read-only view of the image, so the image is neither copied, chowned nor written. apt
//! installs the build dependencies inside (from the request's sources only), dpkg-buildpackage
//! builds as an unprivileged user, without network unless the distribution allows it, and the
//! script prints sbuild's section headers and summary lines, so the result is made exactly as
//! for sbuild.
//!
//! The in-machine script is a constant: its values arrive as `--setenv`.

use super::{Backend, Build, Plan, build_env, write_const};
use crate::builder::BuilderError;
use crate::protocol::Check;

pub struct Nspawn;

/// Where the build directory appears inside the machine.
const BUILD: &str = "/build";
/// The script's name in the build directory.
pub const SCRIPT: &str = ".nspawn-build";
/// The check machines' script.
pub const CHECK: &str = ".nspawn-check";
/// The summary the script writes as machine root into `out/`, which the build user cannot
/// write: the host takes the build's status from there, not from what the build printed.
pub const SUMMARY: &str = ".buildbay-summary";

/// The start of every script a machine runs: the shell's settings, sbuild's section headers,
/// the machine's line in the log.
const PRELUDE: &str = r#"#!/bin/sh
# buildbay: a build in an ephemeral nspawn machine; everything but /build/out vanishes with it.
set -u
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
rule=+------------------------------------------------------------------------------+
section() { printf '%s\n| %-76s |\n%s\n' "$rule" "$1" "$rule"; }
echo "buildbay: ephemeral machine $(hostname), $(. /etc/os-release; echo "$PRETTY_NAME") $(dpkg --print-architecture), uid 0 is $(set -- $(cat /proc/self/uid_map); echo "$2") outside"
"#;

/// `apt_setup`: the request's apt key, sources and preferences, then `apt-get update` of just
/// those sources (the image has the base distribution's lists), retried.
const APT_SETUP: &str = r#"apt_setup() {
  section 'Update chroot'
  cat /build/.config/apt_keys > /etc/apt/trusted.gpg.d/buildbay-buildrequest.asc
  # The lines the image has already (the base distribution, which a request names for
  # mini-buildd's builders) stay out: apt would see them twice.
  if [ -r /etc/apt/sources.list ]; then
    grep -vxF -f /etc/apt/sources.list /build/.config/apt_sources.list > /etc/apt/sources.list.d/buildbay.list
  else
    cat /build/.config/apt_sources.list > /etc/apt/sources.list.d/buildbay.list
  fi
  cat /build/.config/apt_preferences > /etc/apt/preferences.d/buildbay
  updated=
  for t in 10 40 80; do
    if timeout $t apt-get -q --error-on=any -o Dir::Etc::SourceList=/etc/apt/sources.list.d/buildbay.list -o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0 update; then updated=1; break; fi
    sleep 3  # e.g. the daemon restarting
  done
  [ -n "$updated" ] || given_back 'apt-get update of the build sources'
}
"#;

/// `resolve_with_aptitude`: sbuild's aptitude resolver. A package that depends on the build
/// dependencies (`BUILDBAY_BUILD_DEPS`) and conflicts with the build conflicts
/// (`BUILDBAY_BUILD_CONFLICTS`), both checked relation lines, in a local repository, installed
/// by aptitude, whose solver may take any alternative.
const APTITUDE: &str = r#"resolve_with_aptitude() {
  echo 'buildbay: build-dependency resolver: aptitude'
  need aptitude || return 1
  r=/srv/buildbay-resolver
  mkdir -p "$r/pkg/DEBIAN" || return 1
  {
    echo 'Package: buildbay-build-deps'
    echo 'Version: 1'
    echo 'Architecture: all'
    echo 'Maintainer: buildbay <root@localhost>'
    echo "Depends: $BUILDBAY_BUILD_DEPS"
    [ -z "$BUILDBAY_BUILD_CONFLICTS" ] || echo "Conflicts: $BUILDBAY_BUILD_CONFLICTS"
    echo 'Description: the build dependencies of the source being built'
  } > "$r/pkg/DEBIAN/control"
  dpkg-deb --build "$r/pkg" "$r/buildbay-build-deps.deb" >/dev/null || return 1
  (cd "$r" && dpkg-scanpackages . /dev/null 2>/dev/null | gzip -9 > Packages.gz) || return 1
  echo "deb [trusted=yes] file:$r ./" > /etc/apt/sources.list.d/buildbay-resolver.list
  apt-get -q -o Dir::Etc::SourceList=/etc/apt/sources.list.d/buildbay-resolver.list -o Dir::Etc::SourceParts=- \
    -o APT::Get::List-Cleanup=0 -o Acquire::CompressionTypes::Order::=gz update || return 1
  # aptitude keeps its lock there (/var/lock is /run/lock, which the machine's tmpfs lacks).
  mkdir -p /run/lock
  aptitude -q -y --without-recommends -o APT::Install-Recommends=false \
    -o Aptitude::CmdLine::Ignore-Trust-Violations=true -o Aptitude::ProblemResolver::StepScore=100 \
    install buildbay-build-deps
}
"#;

/// The build (after [`PRELUDE`] and [`APT_SETUP`]). Every value comes from its environment:
/// `BUILDBAY_DSC` (a plain file name), `BUILDBAY_BINARY` (`-b` or `-B`), `BUILDBAY_OFFLINE`,
/// `BUILDBAY_INSTALLED`, `BUILDBAY_ADD_DEPENDS` (a checked relation list),
/// `BUILDBAY_LINTIAN_FAIL_ON` and `BUILDBAY_LINTIAN_OPTS` (checked option words),
/// `BUILDBAY_SETUP_BLOCKS` (checked block names, see [`super::SETUP_BLOCKS_SH`]) and
/// `BUILDBAY_CCACHE` (where the slot's ccache directory is bound, for the ccache block). The
/// distribution's chroot setup script runs from the build's `.config`. It prints sbuild's
/// section headers, so its phases are timed the same way (see `phases`).
const BUILD_BODY: &str = r#"given_back() { echo "buildbay: $1 failed"; section 'Summary'; echo 'Status: given-back' | tee /build/out/.buildbay-summary; exit 1; }
cd /build || exit 1
# The setup blocks' names are checked words (see protocol::settings): split, never globbed.
set -f; set -- $BUILDBAY_SETUP_BLOCKS; set +f
if [ "$BUILDBAY_INSTALLED" != 1 ]; then
  setup_blocks apt "$@"
  apt_setup
fi
setup_blocks install "$@" || given_back 'the setup blocks'
if [ "$BUILDBAY_INSTALLED" != 1 ]; then
  if [ -s /build/.config/chroot_setup_script ]; then
    echo "buildbay: running the distribution's chroot setup script"
    install -m 0700 /build/.config/chroot_setup_script /root/buildbay-chroot-setup || given_back 'copying the chroot setup script'
    /root/buildbay-chroot-setup || given_back "the distribution's chroot setup script"
  fi
  section 'Install package build dependencies'
  if [ "${BUILDBAY_RESOLVER:-apt}" = aptitude ]; then
    resolve_with_aptitude || given_back 'installing the build dependencies (aptitude)'
  else
    apt-get -q -y --no-install-recommends build-dep "/build/$BUILDBAY_DSC" || given_back 'installing the build dependencies'
  fi
  if [ -n "$BUILDBAY_ADD_DEPENDS" ]; then
    apt-get -q -y --no-install-recommends satisfy "$BUILDBAY_ADD_DEPENDS" || given_back 'installing Add-Depends'
  fi
fi
section 'Build'
id builder >/dev/null 2>&1 || useradd --create-home --shell /bin/sh builder
# The ccache config block: the slot's ccache directory (bound there), ccache first in PATH.
ccache=
if [ -n "$BUILDBAY_CCACHE" ] && [ -d "$BUILDBAY_CCACHE" ]; then
  # What an earlier build's root may have left there: only files and directories, none setuid.
  find "$BUILDBAY_CCACHE" -xdev ! -type f ! -type d -delete
  find "$BUILDBAY_CCACHE" -xdev -perm /6000 -exec chmod ug-s {} +
  [ "$(stat -c %U "$BUILDBAY_CCACHE")" = builder ] || chown -R builder "$BUILDBAY_CCACHE"
  ccache="env PATH=/usr/lib/ccache:$PATH CCACHE_DIR=$BUILDBAY_CCACHE CCACHE_CONFIGPATH=$BUILDBAY_CCACHE_CONFIGPATH CCACHE_MAXSIZE=$BUILDBAY_CCACHE_MAXSIZE"
  echo "buildbay: ccache directory $BUILDBAY_CCACHE"
fi
mkdir -p /srv/buildbay && chown builder /srv/buildbay
runuser -u builder -- dpkg-source -x "/build/$BUILDBAY_DSC" /srv/buildbay/tree || given_back 'unpacking the source'
cd /srv/buildbay/tree || given_back 'unpacking the source'
start=$(date +%s)
offline=
[ "$BUILDBAY_OFFLINE" = 1 ] && offline='unshare --net'
if $offline runuser -u builder -- $ccache dpkg-buildpackage -us -uc "$BUILDBAY_BINARY"; then status=successful; else status=attempted; fi
build_time=$(( $(date +%s) - start ))
for f in /srv/buildbay/*; do [ -f "$f" ] && [ ! -L "$f" ] && cp "$f" /build/out/; done
lintian=
if [ -n "$BUILDBAY_LINTIAN_FAIL_ON" ] && [ "$status" = successful ]; then
  section 'Post Build'
  # The extra options are checked words (see protocol::settings): split, never globbed.
  set -f; set -- $BUILDBAY_LINTIAN_OPTS; set +f
  if runuser -u builder -- lintian --fail-on "$BUILDBAY_LINTIAN_FAIL_ON" --suppress-tags bad-distribution-in-changes-file "$@" /build/out/*.changes; then lintian=pass; else lintian=fail; fi
fi
section 'Summary'
# Also where no process of the build can write: the host reads the summary from there.
{ echo "Build-Time: $build_time"; [ -n "$lintian" ] && echo "Lintian: $lintian"; echo "Status: $status"; } | tee /build/out/.buildbay-summary
[ "$status" = successful ]
"#;

/// A QA check of a built package, in a machine of its own fresh from the image (after
/// [`PRELUDE`] and [`APT_SETUP`]): `BUILDBAY_CHECK` names it, `BUILDBAY_DSC` is the source.
/// The build directory is read-only here. The machine's exit code is the check's verdict (see
/// [`check_verdict`]); 99: the check could not run.
const CHECK_BODY: &str = r#"given_back() { echo "buildbay: $1 failed"; exit 99; }
cd /build || exit 99
if [ "$BUILDBAY_CHECK" = lintian ]; then
  # lintian in ignore mode, after the result: the image has it; as a user, without apt.
  section 'Run lintian'
  id tester >/dev/null 2>&1 || useradd --create-home --shell /bin/sh tester
  # The extra options are checked words (see protocol::settings): split, never globbed.
  set -f; set -- $BUILDBAY_LINTIAN_OPTS; set +f
  runuser -u tester -- lintian --suppress-tags bad-distribution-in-changes-file "$@" /build/out/*.changes
  case $? in 0) exit 0 ;; 1) exit 4 ;; *) exit 99 ;; esac
fi
apt_setup
set --
for f in /build/out/*.deb; do [ -f "$f" ] && set -- "$@" "$f"; done
[ $# -gt 0 ] || given_back 'finding the built packages'
case "$BUILDBAY_CHECK" in
autopkgtest)
  section 'Run autopkgtest'
  apt-get -q -y --no-install-recommends install autopkgtest || given_back 'installing autopkgtest'
  id tester >/dev/null 2>&1 || useradd --create-home --shell /bin/sh tester
  # Tests run as `tester` unless they need root: root of this throwaway machine, which is an
  # unprivileged uid outside.
  autopkgtest --user=tester --output-dir=/srv/autopkgtest "$@" "/build/$BUILDBAY_DSC" -- null
  code=$?
  # What each test printed (autopkgtest keeps it in its output directory).
  for f in /srv/autopkgtest/*-stdout /srv/autopkgtest/*-stderr; do
    [ -s "$f" ] && { echo "buildbay: ${f##*/}:"; cat "$f"; }
  done
  exit $code
  ;;
piuparts)
  section 'Run piuparts'
  apt-get -q -y --no-install-recommends install piuparts || given_back 'installing piuparts'
  # piuparts' base: a copy of the image (read-only at /srv/base) on a tmpfs, without its device
  # nodes (a user namespace cannot make them: /dev/null is a plain file there), with the
  # request's apt sources, so the package's dependencies from this archive install.
  b=/srv/piuparts/base
  mkdir "$b" || given_back 'making the base'
  tar -C /srv/base --exclude='./dev/*' -cf - . | tar -C "$b" -xf - || given_back 'copying the image'
  ln -s pts/ptmx "$b/dev/ptmx" && install -m 0666 /dev/null "$b/dev/null" || given_back 'the base /dev'
  cp /etc/apt/trusted.gpg.d/buildbay-buildrequest.asc "$b/etc/apt/trusted.gpg.d/" &&
    cp /etc/apt/sources.list.d/buildbay.list "$b/etc/apt/sources.list.d/" &&
    cp /etc/apt/preferences.d/buildbay "$b/etc/apt/preferences.d/" || given_back 'the base apt setup'
  # mini-buildd's options, then the distribution's (checked option words: split, never globbed).
  set -f
  piuparts --existing-chroot="$b" --hard-link --tmpdir=/srv/piuparts --no-eatmydata --log-level=info \
    --log-file=/srv/piuparts.log --keep-sources-list --dpkg-force-confdef --warn-on-debsums-errors \
    --warn-on-leftovers-after-purge --warn-on-others $BUILDBAY_PIUPARTS_OPTS "$@"
  code=$?
  set +f
  [ $code = 0 ] || exit 4
  # Passed, with warnings (what the --warn-on options turned from failures into warnings).
  grep -q ' WARN: ' /srv/piuparts.log && exit 3
  exit 0
  ;;
*)
  given_back "unknown check $BUILDBAY_CHECK"
  ;;
esac
"#;

/// The script of a build machine.
pub fn build_script() -> String {
    format!("{PRELUDE}{APT_SETUP}{}{APTITUDE}{BUILD_BODY}", super::SETUP_BLOCKS_SH)
}

/// The script of a check machine.
pub fn check_script() -> String {
    format!("{PRELUDE}{APT_SETUP}{CHECK_BODY}")
}

/// A check machine's exit code as the check's verdict, in sbuild's words: autopkgtest's exit
/// codes (0 all passed, 2 some skipped, 4 and 6 failures, 8 no tests), and 3 for piuparts'
/// warnings (the script maps piuparts' and lintian's outcomes onto these); anything else, the
/// check could not run.
pub fn check_verdict(code: i32) -> &'static str {
    match code {
        0 | 2 => "pass",
        3 => "warn",
        8 => "no tests",
        4 | 6 => "fail",
        _ => "error",
    }
}

/// A machine name for a build key: what machinectl shows. Letters, digits and dashes, at most
/// 64 characters, unique per build by its timecode.
pub fn machine_name(bkey: &crate::protocol::BuildKey) -> String {
    machine_name_for(bkey, "")
}

/// The machine name of a build's check: the build's with `-<tag>` after its architecture.
fn machine_name_for(bkey: &crate::protocol::BuildKey, tag: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
    };
    let mut rest = format!("{}-{}", clean(bkey.timecode().as_str()), clean(bkey.arch.as_str()));
    if !tag.is_empty() {
        rest = format!("{rest}-{}", clean(tag));
    }
    let room = 64usize.saturating_sub("bb--".len() + rest.len());
    let source: String = clean(bkey.source().as_str()).chars().take(room).collect();
    let name = format!("bb-{source}-{rest}");
    name.chars().take(64).collect::<String>().trim_end_matches('-').to_owned()
}

impl Backend for Nspawn {
    fn plan(&self, b: &Build<'_>, installed: bool) -> Result<Plan, BuilderError> {
        write_const(b.dir, SCRIPT, &build_script(), 0o644)?;
        let req = b.req;
        let machine = machine_name(&req.key);
        let mut setenv: Vec<(String, String)> = vec![
            ("BUILDBAY_DSC".into(), b.dsc.to_owned()),
            ("BUILDBAY_BINARY".into(), if req.arch_all { "-b" } else { "-B" }.into()),
            ("BUILDBAY_OFFLINE".into(), if req.network { "0" } else { "1" }.into()),
            ("BUILDBAY_INSTALLED".into(), if installed { "1" } else { "0" }.into()),
            ("BUILDBAY_ADD_DEPENDS".into(), req.add_depends.as_ref().map(|r| r.to_string()).unwrap_or_default()),
            ("BUILDBAY_LINTIAN_FAIL_ON".into(), req.lintian.lintian_fail_on().unwrap_or_default().into()),
            ("BUILDBAY_LINTIAN_OPTS".into(), req.lintian_extra_options.to_string()),
            ("BUILDBAY_SETUP_BLOCKS".into(), super::blocks(b).0.join(" ")),
        ];
        let ccache = super::ccache_dir(b)?;
        if ccache.is_some() {
            setenv.push(("BUILDBAY_CCACHE".into(), super::CCACHE_IN_BUILD.into()));
            setenv.extend(super::CCACHE_ENV.iter().map(|(k, v)| (format!("BUILDBAY_{k}"), v.to_string())));
        }
        let mut notes =
            vec![format!("nspawn machine in its own user namespace: uid 0 inside is uid {} outside", b.slot.uid_base)];
        if std::fs::symlink_metadata(b.dir.join(".config/sbuildrc_snippet")).is_ok_and(|m| m.len() > 0) {
            notes.push("the distribution's sbuildrc snippet is for sbuild: the nspawn backend has none".into());
        }
        if !installed {
            notes.push(match req.resolver {
                crate::protocol::Resolver::Apt => "build-dependency resolver: apt".to_owned(),
                crate::protocol::Resolver::Aptitude => match aptitude_dummy(b) {
                    Ok((depends, conflicts)) => {
                        setenv.push(("BUILDBAY_RESOLVER".into(), "aptitude".into()));
                        setenv.push(("BUILDBAY_BUILD_DEPS".into(), depends));
                        setenv.push(("BUILDBAY_BUILD_CONFLICTS".into(), conflicts));
                        "build-dependency resolver: aptitude (a package that depends on the build dependencies, as sbuild's)".to_owned()
                    }
                    Err(why) => format!("build-dependency resolver: apt (aptitude cannot stand in here: {why})"),
                },
            });
        }
        setenv.extend(build_env(req));
        let mut argv = root_argv(b);
        argv.extend(nspawn_argv(b, &machine, installed, None, &setenv));
        if let Some(dir) = &ccache {
            // Before the command (`/bin/sh` and the script are the last two words).
            let at = argv.len() - 2;
            argv.insert(at, format!("--bind={}:{}:idmap", bind_path(dir), super::CCACHE_IN_BUILD));
        }
        Ok(Plan {
            argv,
            env: vec![("HOME".into(), b.dir.display().to_string())],
            machine: Some(machine),
            notes,
            checks: vec![],
            separate_checks: false,
            after: None,
            network: super::Network::None,
            writable: vec![],
        })
    }
}

/// The systemd-nspawn command line (the root directory and the user namespace come from
/// `builder-exec --nspawn-root`): registered with machined when there is one, under the build's
/// unit, the build directory read-only at `/build` and only its `out` writable.
///
/// A check machine (`check`) has the whole build directory read-only, the built packages in
/// `out` included, and always the apt cache (it installs what the check needs).
fn nspawn_argv(
    b: &Build<'_>,
    machine: &str,
    installed: bool,
    check: Option<Check>,
    setenv: &[(String, String)],
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "systemd-nspawn".into(),
        "--quiet".into(),
        "--pipe".into(),
        // Stay in the build unit's cgroup: its limits apply, and StopUnit takes the machine.
        "--keep-unit".into(),
        format!("--register={}", if b.machined { "yes" } else { "no" }),
        format!("--machine={machine}"),
        // The build directory read-only (the host writes its logs and markers there after the
        // machine ran), only `out` writable, mapped so that machine root writes host-root files
        // there that only the host reads (the build directory is 0700).
        format!("--bind-ro={}:{BUILD}", bind_path(b.dir)),
        "--as-pid2".into(),
    ];
    if let (Some(out), Some(_)) = (b.out, check) {
        // The checks after an sbuild build: `b.dir` is a fresh copy of the request's files.
        a.push(format!("--bind-ro={}:{BUILD}/out", bind_path(out)));
    }
    match check {
        None => a.push(format!("--bind={}:{BUILD}/out:idmap", bind_path(&crate::builder::writing_out(b.dir)))),
        // piuparts copies the image, read-only and mapped to the machine's root, into a tmpfs.
        Some(Check::Piuparts) => {
            a.push(format!("--bind-ro={}:/srv/base:idmap", bind_path(&b.image)));
            a.push("--tmpfs=/srv/piuparts:mode=0700".into());
        }
        Some(_) => {}
    }
    if !installed || check.is_some_and(|c| c != Check::Lintian) {
        // The build slot's apt archive cache: what apt downloads stays for the next build.
        a.push(format!("--bind={}:/var/cache/apt/archives:idmap", bind_path(&b.slot.apt_cache)));
    }
    if ["i386", "armel", "armhf"].contains(&b.req.key.arch.as_str()) {
        a.push("--personality=x86".into());
    }
    for (k, v) in setenv {
        a.push(format!("--setenv={k}={v}"));
    }
    a.extend(["/bin/sh".into(), format!("{BUILD}/{}", if check.is_some() { CHECK } else { SCRIPT })]);
    a
}

/// The command of a check machine for `check` (a fresh machine of the image, in the slot's
/// user namespace, like an nspawn build's), after a build on either backend.
pub(super) fn check_argv(b: &Build<'_>, check: crate::protocol::Check) -> Vec<String> {
    let name = check.field().to_ascii_lowercase();
    let machine = machine_name_for(&b.req.key, &name[..1]);
    let setenv = [
        ("BUILDBAY_DSC".to_owned(), b.dsc.to_owned()),
        ("BUILDBAY_CHECK".to_owned(), name),
        ("BUILDBAY_PIUPARTS_OPTS".to_owned(), b.req.piuparts_extra_options.to_string()),
        ("BUILDBAY_LINTIAN_OPTS".to_owned(), b.req.lintian_extra_options.to_string()),
    ];
    let mut argv = root_argv(b);
    argv.extend(nspawn_argv(b, &machine, false, Some(check), &setenv));
    argv
}

/// The `Depends` and `Conflicts` of the package aptitude installs for the build dependencies.
fn aptitude_dummy(b: &Build<'_>) -> Result<(String, String), String> {
    let dsc = super::read_dsc(b)?;
    super::with_target(b.req, |target| crate::deb::builddeps::for_dummy(&dsc, target))
}

/// `builder-exec --nspawn-root`: the machine's root directory and user namespace.
fn root_argv(b: &Build<'_>) -> Vec<String> {
    vec![
        b.exe.display().to_string(),
        "builder-exec".into(),
        "--nspawn-root".into(),
        b.image.display().to_string(),
        "--uid-base".into(),
        b.slot.uid_base.to_string(),
        "--".into(),
    ]
}

/// A host path for `--bind`, which splits on `:` (a version's epoch is in the build directory).
fn bind_path(p: &std::path::Path) -> String {
    p.display().to_string().replace('\\', "\\\\").replace(':', "\\:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_exit_codes_are_verdicts() {
        assert_eq!(check_verdict(0), "pass");
        assert_eq!(check_verdict(2), "pass", "some tests skipped");
        assert_eq!(check_verdict(4), "fail");
        assert_eq!(check_verdict(8), "no tests");
        assert_eq!(check_verdict(3), "warn", "piuparts' warnings");
        for code in [1, 12, 16, 99, 137] {
            assert_eq!(check_verdict(code), "error", "{code}");
        }
        let k: crate::protocol::BuildKey = "hello/1.0-1/20261121-130030-234930/amd64".parse().unwrap();
        assert_eq!(machine_name_for(&k, "a"), "bb-hello-20261121-130030-234930-amd64-a");
    }

    #[test]
    fn machine_names_are_short_hostnames() {
        let k: crate::protocol::BuildKey = "hello/1.0-1/20261121-130030-234930/amd64".parse().unwrap();
        assert_eq!(machine_name(&k), "bb-hello-20261121-130030-234930-amd64");
        let long: crate::protocol::BuildKey =
            format!("{}/1.0/20261121-130030-234930/amd64", "x".repeat(90)).parse().unwrap();
        let n = machine_name(&long);
        assert!(n.len() <= 64 && n.ends_with("-20261121-130030-234930-amd64"), "{n}");
    }

    #[test]
    fn the_script_is_a_constant_and_valid_shell() {
        for script in [build_script(), check_script()] {
            for needle in ["hello", "bookworm", "amd64"] {
                assert!(!script.contains(needle), "{needle}");
            }
            let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        // nspawn splits --bind on ':'; an epoch in the path is escaped.
        assert_eq!(bind_path(std::path::Path::new("/s/b/hello/1:1.0-1/t/amd64")), "/s/b/hello/1\\:1.0-1/t/amd64");
    }

    #[test]
    fn the_script_prints_sections_the_phases_recognise() {
        let dir = tempfile::tempdir().unwrap();
        let section_fn = PRELUDE
            .lines()
            .filter(|l| l.starts_with("rule=") || l.starts_with("section()"))
            .collect::<Vec<_>>()
            .join("\n");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{section_fn}\nsection 'Install package build dependencies'"))
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(crate::builder::phases::header(lines[0], lines[1]), Some("Install package build dependencies"));
    }
}
