//! The second isolation backend: a build in an ephemeral `systemd-nspawn` machine of the chroot
//! image (debspawn's model): the image read-only under a tmpfs overlay that vanishes with it.
//! apt installs the build dependencies inside (the request's apt setup is sbuild's own
//! `apt_setup`), dpkg-buildpackage builds as an unprivileged user, without network unless the
//! distribution allows it, and the script prints sbuild's summary lines, so the result is made
//! exactly as for sbuild.

use crate::deb::Stanza;
use std::path::Path;

/// Where the build directory appears inside the machine.
const BUILD: &str = "/build";

/// A machine name for a build key (`source/version/timecode/arch`): what machinectl shows.
/// Letters, digits and dashes, at most 64 characters, unique per build by its timecode.
pub fn machine_name(bkey: &str) -> String {
    let parts: Vec<&str> = bkey.split('/').collect();
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
    };
    let (source, rest) = match parts.as_slice() {
        [source, _version, timecode, arch] => (clean(source), format!("{}-{}", clean(timecode), clean(arch))),
        _ => (String::new(), clean(bkey)),
    };
    let room = 64usize.saturating_sub("bb--".len() + rest.len());
    let source: String = source.chars().take(room).collect();
    let name = format!("bb-{source}-{rest}");
    name.chars().take(64).collect::<String>().trim_end_matches('-').to_owned()
}

/// The systemd-nspawn command line: `image` under a throwaway overlay, registered with machined
/// (when there is one) under the build's unit, the build directory bound to `/build`.
pub fn nspawn_argv(
    fields: &Stanza,
    image: &Path,
    dir: &Path,
    machine: &str,
    register: bool,
    env: &[String],
    apt_cache: Option<&Path>,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "systemd-nspawn".into(),
        "--quiet".into(),
        // Not --ephemeral: on a file system without reflinks or btrfs snapshots it copies the
        // whole image first (634 MB took six minutes here). A tmpfs overlay on the read-only
        // image is as ephemeral and instant; only what apt installs lands in memory.
        "--volatile=overlay".into(),
        "--pipe".into(),
        // Stay in the build unit's cgroup: its limits apply, and StopUnit takes the machine.
        "--keep-unit".into(),
        format!("--register={}", if register { "yes" } else { "no" }),
        format!("--machine={machine}"),
        format!("--directory={}", image.display()),
        // The build directory read-only (the host writes its logs and scripts there after the
        // machine ran), only `out` writable.
        format!("--bind-ro={}:{BUILD}", bind_path(dir)),
        format!("--bind={}:{BUILD}/out", bind_path(&dir.join("out"))),
        "--as-pid2".into(),
    ];
    if let Some(cache) = apt_cache {
        // The build slot's apt archive cache: what apt downloads stays for the next build.
        a.insert(a.len() - 1, format!("--bind={}:/var/cache/apt/archives", bind_path(cache)));
    }
    if fields.get("Architecture").is_some_and(|arch| ["i386", "armel", "armhf"].contains(&arch)) {
        a.push("--personality=x86".into());
    }
    for kv in env.iter().filter(|kv| !kv.starts_with("HOME=")) {
        a.push(format!("--setenv={kv}"));
    }
    a.extend(["/bin/sh".into(), format!("{BUILD}/.nspawn-build")]);
    a
}

/// A host path for `--bind`, which splits on `:` (a version's epoch is in the build directory).
fn bind_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "\\\\").replace(':', "\\:")
}

/// Where the machine unpacks and builds (inside its throwaway overlay).
const SRC: &str = "/srv/buildbay";

/// The script the machine runs, from the request's fields and its `.dsc`. It prints sbuild's
/// section headers, so its phases are timed the same way (see `phases`).
///
/// `installed`: the image already has every build dependency; apt is not touched at all.
pub fn build_script(fields: &Stanza, dsc: &str, installed: bool) -> String {
    let f = |k: &str| super::sbuild::request_field(fields, k);
    let binary = if f("Arch-All") == Some("Yes") { "-b" } else { "-B" };
    let offline = if f("Build-Network") == Some("Yes") { "" } else { "unshare --net " };
    let add_depends: Vec<&str> =
        f("Add-Depends").unwrap_or_default().split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    let install_add = if add_depends.is_empty() {
        String::new()
    } else {
        format!(
            "apt-get -q -y --no-install-recommends install {} || given_back 'installing Add-Depends'\n",
            add_depends.join(" ")
        )
    };
    let lintian = match f("Lintian-Mode").unwrap_or("disabled") {
        "disabled" | "ignore" => String::new(),
        mode => {
            let fail_on = if mode == "warnfail" { "error,warning" } else { "error" };
            format!(
                "if [ \"$status\" = successful ]; then\n\
                 \x20 section 'Post Build'\n\
                 \x20 if lintian --fail-on {fail_on} --suppress-tags bad-distribution-in-changes-file {BUILD}/out/*.changes; \
                 then echo 'Lintian: pass'; else echo 'Lintian: fail'; fi\n\
                 fi\n"
            )
        }
    };
    let dependencies = if installed {
        String::new()
    } else {
        format!(
            "section 'Update chroot'\n\
             {apt_setup}\
             [ -n \"$updated\" ] || given_back 'apt-get update of the build sources'\n\
             section 'Install package build dependencies'\n\
             apt-get -q -y --no-install-recommends build-dep {BUILD}/{dsc} || given_back 'installing the build dependencies'\n\
             {install_add}",
            apt_setup = super::sbuild::apt_setup("", &format!("{BUILD}/.config"))
        )
    };
    format!(
        "#!/bin/sh\n\
         # buildbay: a build in an ephemeral nspawn machine; everything but {BUILD} vanishes with it.\n\
         set -u\n\
         export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8\n\
         rule=+------------------------------------------------------------------------------+\n\
         section() {{ printf '%s\\n| %-76s |\\n%s\\n' \"$rule\" \"$1\" \"$rule\"; }}\n\
         given_back() {{ echo \"buildbay: $1 failed\"; echo 'Status: given-back'; exit 1; }}\n\
         echo \"buildbay: ephemeral machine $(hostname), $(. /etc/os-release; echo \"$PRETTY_NAME\") $(dpkg --print-architecture)\"\n\
         cd {BUILD} || exit 1\n\
         {dependencies}\
         section 'Build'\n\
         id builder >/dev/null 2>&1 || useradd --create-home --shell /bin/sh builder\n\
         mkdir -p {SRC} && chown builder {SRC} {BUILD}/out\n\
         runuser -u builder -- dpkg-source -x {BUILD}/{dsc} {SRC}/tree || given_back 'unpacking the source'\n\
         cd {SRC}/tree\n\
         start=$(date +%s)\n\
         if {offline}runuser -u builder -- dpkg-buildpackage -us -uc {binary}; then status=successful; else status=attempted; fi\n\
         echo \"Build-Time: $(( $(date +%s) - start ))\"\n\
         for f in {SRC}/*; do [ -f \"$f\" ] && mv \"$f\" {BUILD}/out/; done\n\
         {lintian}\
         section 'Summary'\n\
         echo \"Status: $status\"\n\
         [ \"$status\" = successful ]\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &[(&str, &str)]) -> Stanza {
        let mut st = Stanza::new();
        st.set("Distribution", "bookworm-test-unstable");
        st.set("Architecture", "amd64");
        st.set("X-Mini-Buildd-Lintian-Mode", "errfail");
        for (k, v) in extra {
            st.set(&format!("X-Mini-Buildd-{k}"), *v);
        }
        st
    }

    #[test]
    fn machine_names_are_short_hostnames() {
        assert_eq!(machine_name("hello/1.0-1/20261121-130030-234930/amd64"), "bb-hello-20261121-130030-234930-amd64");
        let long = machine_name(&format!("{}/1.0/20261121-130030-234930/amd64", "x".repeat(90)));
        assert!(long.len() <= 64 && long.ends_with("-20261121-130030-234930-amd64"), "{long}");
        assert!(machine_name("lib++/1/2/i386").bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }

    #[test]
    fn the_machine_is_ephemeral_registered_and_bound() {
        let a = nspawn_argv(
            &request(&[]),
            Path::new("/var/lib/machines/buildbay-bookworm-amd64"),
            Path::new("/s/var/builds/k"),
            "bb-hello",
            true,
            &["HOME=/s".into(), "DEB_BUILD_OPTIONS=nocheck".into()],
            Some(Path::new("/s/var/cache/apt-archives/0")),
        );
        for want in [
            "--volatile=overlay",
            "--keep-unit",
            "--register=yes",
            "--machine=bb-hello",
            "--directory=/var/lib/machines/buildbay-bookworm-amd64",
            "--bind-ro=/s/var/builds/k:/build",
            "--bind=/s/var/builds/k/out:/build/out",
            "--setenv=DEB_BUILD_OPTIONS=nocheck",
            "--bind=/s/var/cache/apt-archives/0:/var/cache/apt/archives",
        ] {
            assert!(a.contains(&want.to_owned()), "{want} missing from {a:?}");
        }
        assert!(!a.iter().any(|x| x.contains("HOME=")));
        assert_eq!(a.last().map(String::as_str), Some("/build/.nspawn-build"));
        // nspawn splits --bind on ':'; an epoch in the path is escaped.
        assert_eq!(bind_path(Path::new("/s/b/hello/1:1.0-1/t/amd64")), "/s/b/hello/1\\:1.0-1/t/amd64");
    }

    #[test]
    fn the_script_builds_offline_as_a_user_and_reports_like_sbuild() {
        let s =
            build_script(&request(&[("Arch-All", "Yes"), ("Add-Depends", "libfoo-dev, bar")]), "hello_1.0.dsc", false);
        assert!(s.contains("build-dep /build/hello_1.0.dsc"));
        assert!(s.contains("install libfoo-dev bar"));
        assert!(s.contains("unshare --net runuser -u builder -- dpkg-buildpackage -us -uc -b"));
        assert!(s.contains("lintian --fail-on error "));
        assert!(s.contains("echo \"Status: $status\""));
        let online = build_script(&request(&[("Build-Network", "Yes"), ("Lintian-Mode", "disabled")]), "h.dsc", false);
        assert!(online.contains("then status=successful") && !online.contains("unshare"));
        assert!(online.contains("dpkg-buildpackage -us -uc -B") && !online.contains("lintian --fail-on"));
        // Everything already in the image: apt is not touched.
        let fast = build_script(&request(&[]), "h.dsc", true);
        assert!(!fast.contains("apt-get") && fast.contains("section 'Build'"), "{fast}");
    }

    #[test]
    fn the_script_prints_sections_the_phases_recognise() {
        let dir = tempfile::tempdir().unwrap();
        let script = build_script(&request(&[]), "h.dsc", false);
        let section_fn = script
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
        assert_eq!(super::super::phases::header(lines[0], lines[1]), Some("Install package build dependencies"));
    }
}
