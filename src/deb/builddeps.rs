//! Are a source package's build dependencies already installed? Checked against a dpkg status
//! file, the way sbuild's resolvers would see it, and conservatively: whatever this cannot
//! decide for sure (an architecture wildcard, a virtual package, an unusual qualifier) counts as
//! "needs installing", so the caller falls back to a real resolver and loses only time.
//!
//! Relations are parsed by the `debian-control` crate; versions compare with [`Version`] (dpkg's
//! own ordering).

use super::{Stanza, Version};
use debian_control::lossy::{Relation, Relations};
use debian_control::relations::{BuildProfile, VersionConstraint};
use std::collections::HashMap;

/// The packages a dpkg status file says are installed: name → (version, architecture), and what
/// they provide: name → the provided versions (`None`: unversioned).
#[derive(Debug, Default)]
pub struct Installed {
    packages: HashMap<String, (Version, String)>,
    provides: HashMap<String, Vec<Option<Version>>>,
}

impl Installed {
    /// From the text of `/var/lib/dpkg/status`; paragraphs that are not `install ok installed`
    /// or do not parse are left out (they only make the check more conservative).
    pub fn from_status(text: &str) -> Installed {
        let mut installed = Installed::default();
        for para in text.split("\n\n") {
            let Ok(s) = Stanza::parse_one(para) else { continue };
            if s.get("Status") != Some("install ok installed") {
                continue;
            }
            let (Some(name), Some(version)) = (s.get("Package"), s.get("Version").and_then(|v| v.parse().ok())) else {
                continue;
            };
            installed.packages.insert(name.to_owned(), (version, s.get("Architecture").unwrap_or_default().to_owned()));
            let provides: Relations =
                s.get("Provides").unwrap_or_default().replace('\n', " ").parse().unwrap_or_default();
            for r in provides.iter().flatten() {
                let version = r.version.as_ref().and_then(|(_, v)| v.to_string().parse().ok());
                installed.provides.entry(r.name.clone()).or_default().push(version);
            }
        }
        installed
    }
}

/// What a check is for.
pub struct Target<'a> {
    /// The build's host architecture.
    pub arch: &'a str,
    /// The active build profiles (`DEB_BUILD_PROFILES`).
    pub profiles: &'a [&'a str],
    /// sbuild's apt resolver considers only the first alternative of each dependency; aptitude
    /// any of them.
    pub first_alternative_only: bool,
}

/// Nothing to install: every build dependency of `dsc` (`Build-Depends`, `-Arch` and `-Indep`,
/// plus sbuild's implicit `build-essential` and `fakeroot`) is installed, and no build conflict
/// is. Otherwise the first reason found, for the build log.
pub fn satisfied(dsc: &Stanza, installed: &Installed, target: &Target) -> Result<(), String> {
    let field = |name: &str| dsc.get(name).unwrap_or_default().replace('\n', " ");
    let depends = ["Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep"].map(field).join(", ");
    let depends = format!("build-essential, fakeroot, {depends}");
    let depends: Relations = depends.parse().map_err(|e| format!("cannot read the build dependencies: {e}"))?;
    for alternatives in depends.iter() {
        let applying: Vec<&Relation> = alternatives
            .into_iter()
            .map(|r| applies(r, target).map(|yes| yes.then_some(r)))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        let Some(first) = applying.first() else { continue };
        let candidates = if target.first_alternative_only { &applying[..1] } else { &applying[..] };
        let mut why = None;
        for r in candidates {
            match installed_match(r, installed) {
                Ok(()) => {
                    why = None;
                    break;
                }
                Err(e) => why = why.or(Some(e)),
            }
        }
        if let Some(why) = why {
            return Err(format!("{first} is not satisfied: {why}"));
        }
    }
    let conflicts = ["Build-Conflicts", "Build-Conflicts-Arch", "Build-Conflicts-Indep"].map(field).join(", ");
    let conflicts: Relations = conflicts.parse().map_err(|e| format!("cannot read the build conflicts: {e}"))?;
    for r in conflicts.iter().flatten() {
        if applies(r, target)? && installed_match(r, installed).is_ok() {
            return Err(format!("the build conflict {r} is installed"));
        }
    }
    Ok(())
}

/// Whether a relation applies to the target (its `[arch]` and `<profile>` restrictions).
fn applies(r: &Relation, target: &Target) -> Result<bool, String> {
    if let Some(archs) = &r.architectures {
        let wildcard = |a: &str| a.contains("any") || a.contains('-');
        if archs.iter().any(|a| wildcard(a.trim_start_matches('!'))) {
            return Err(format!("{r}: architecture wildcards are left to the resolver"));
        }
        let negated = archs.iter().filter(|a| a.starts_with('!')).count();
        let hit = archs.iter().any(|a| a.trim_start_matches('!') == target.arch);
        let applies = match negated {
            0 => hit,
            n if n == archs.len() => !hit,
            _ => return Err(format!("{r}: mixes negated and plain architectures")),
        };
        if !applies {
            return Ok(false);
        }
    }
    if r.profiles.is_empty() {
        return Ok(true);
    }
    // <a b> <c>: any of the groups, each group all of its terms.
    Ok(r.profiles.iter().any(|group| {
        group.iter().all(|p| match p {
            BuildProfile::Enabled(name) => target.profiles.contains(&name.as_str()),
            BuildProfile::Disabled(name) => !target.profiles.contains(&name.as_str()),
        })
    }))
}

/// Whether an installed package satisfies one relation, itself or by what it provides (a
/// versioned relation only by a versioned `Provides`).
fn installed_match(r: &Relation, installed: &Installed) -> Result<(), String> {
    let provided = || -> bool {
        let versions = installed.provides.get(&r.name).map(Vec::as_slice).unwrap_or_default();
        r.archqual.as_deref().is_none_or(|q| q == "any" || q == "native")
            && versions.iter().any(|v| match (&r.version, v) {
                (None, _) => true,
                (Some((constraint, want)), Some(v)) => meets(v, constraint, want).unwrap_or(false),
                (Some(_), None) => false,
            })
    };
    let Some((version, arch)) = installed.packages.get(&r.name) else {
        return if provided() { Ok(()) } else { Err(format!("{} is not installed", r.name)) };
    };
    match r.archqual.as_deref() {
        None | Some("any") | Some("native") => {}
        Some(q) if q == arch => {}
        Some(q) => return Err(format!("{} is installed for {arch}, not {q}", r.name)),
    }
    let Some((constraint, want)) = &r.version else { return Ok(()) };
    if meets(version, constraint, want)? || provided() {
        Ok(())
    } else {
        Err(format!("{} {version} is installed", r.name))
    }
}

/// Whether `version` meets `constraint want`.
fn meets(version: &Version, constraint: &VersionConstraint, want: &dyn std::fmt::Display) -> Result<bool, String> {
    let want: Version = want.to_string().parse().map_err(|e| format!("{e}"))?;
    let order = version.cmp(&want);
    use std::cmp::Ordering::*;
    Ok(match constraint {
        VersionConstraint::LessThan => order == Less,
        VersionConstraint::LessThanEqual => order != Greater,
        VersionConstraint::Equal => order == Equal,
        VersionConstraint::GreaterThan => order == Greater,
        VersionConstraint::GreaterThanEqual => order != Less,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: debhelper\nStatus: install ok installed\nVersion: 13.11.4\nArchitecture: all\n\
        Provides: debhelper-compat (= 9), debhelper-compat (= 13), dh-sequence-foo\n\n\
        Package: build-essential\nStatus: install ok installed\nVersion: 12.9\nArchitecture: amd64\n\n\
        Package: fakeroot\nStatus: install ok installed\nVersion: 1.31-1.2\nArchitecture: amd64\n\n\
        Package: dh-python\nStatus: deinstall ok config-files\nVersion: 5.20230130\nArchitecture: all\n\n\
        Package: libc6-dev\nStatus: install ok installed\nVersion: 2.36-9+deb12u14\nArchitecture: amd64\n";

    fn check(fields: &str, profiles: &[&str], first_only: bool) -> Result<(), String> {
        let dsc = Stanza::parse_one(&format!("Source: x\n{fields}")).expect("dsc");
        let target = Target { arch: "amd64", profiles, first_alternative_only: first_only };
        satisfied(&dsc, &Installed::from_status(STATUS), &target)
    }

    #[test]
    fn installed_versions_satisfy_or_not() {
        assert_eq!(check("Build-Depends: debhelper (>= 13), libc6-dev\n", &[], true), Ok(()));
        assert_eq!(check("Build-Depends: debhelper (>= 13.11.4)\n", &[], true), Ok(()));
        let too_old = check("Build-Depends: debhelper (>= 13.12)\n", &[], true).unwrap_err();
        assert!(too_old.contains("debhelper 13.11.4 is installed"), "{too_old}");
        assert!(check("Build-Depends: debhelper (<< 13)\n", &[], true).is_err());
        assert!(check("Build-Depends: debhelper (= 13.11.4)\n", &[], true).is_ok());
        // Removed but configured is not installed.
        assert!(
            check("Build-Depends-Indep: dh-python\n", &[], true).unwrap_err().contains("dh-python is not installed")
        );
        // Provided: versioned only by a versioned Provides.
        assert_eq!(check("Build-Depends: debhelper-compat (= 13), dh-sequence-foo\n", &[], true), Ok(()));
        assert!(check("Build-Depends: debhelper-compat (= 14)\n", &[], true).is_err());
        assert!(check("Build-Depends: dh-sequence-foo (>= 1)\n", &[], true).is_err());
        // Multi-line fields, as in real .dsc files.
        assert_eq!(check("Build-Depends: debhelper,\n libc6-dev\n", &[], true), Ok(()));
    }

    #[test]
    fn alternatives_follow_the_resolver() {
        let deps = "Build-Depends: python3-foo | debhelper\n";
        assert!(check(deps, &[], true).is_err(), "apt's resolver installs the first alternative");
        assert_eq!(check(deps, &[], false), Ok(()));
    }

    #[test]
    fn restrictions_and_conflicts() {
        assert_eq!(check("Build-Depends: libfoo-dev [i386], debhelper [amd64]\n", &[], true), Ok(()));
        assert_eq!(check("Build-Depends: libfoo-dev [!amd64]\n", &[], true), Ok(()));
        assert!(check("Build-Depends: libfoo-dev [!i386]\n", &[], true).is_err());
        assert!(check("Build-Depends: libfoo-dev [linux-any]\n", &[], true).unwrap_err().contains("wildcards"));
        assert_eq!(check("Build-Depends: libfoo-dev <!nocheck>\n", &["nocheck"], true), Ok(()));
        assert!(check("Build-Depends: libfoo-dev <!nocheck>\n", &[], true).is_err());
        assert!(check("Build-Depends: libfoo-dev <stage1>\n", &["stage1"], true).is_err());
        assert!(check("Build-Depends: libc6-dev:amd64, debhelper:native\n", &[], true).is_ok());
        assert!(check("Build-Depends: libc6-dev:i386\n", &[], true).is_err());
        let conflict = check("Build-Conflicts: fakeroot\n", &[], true).unwrap_err();
        assert!(conflict.contains("build conflict fakeroot"), "{conflict}");
        assert_eq!(check("Build-Conflicts: fakeroot (<< 1)\n", &[], true), Ok(()));
        assert_eq!(check("Build-Conflicts: dh-python\n", &[], true), Ok(()));
    }

    #[test]
    fn implicit_dependencies_are_checked() {
        let dsc = Stanza::parse_one("Source: x\nBuild-Depends: debhelper\n").expect("dsc");
        let target = Target { arch: "amd64", profiles: &[], first_alternative_only: true };
        let bare = Installed::from_status(
            "Package: debhelper\nStatus: install ok installed\nVersion: 13\nArchitecture: all\n",
        );
        let why = satisfied(&dsc, &bare, &target).unwrap_err();
        assert!(why.contains("build-essential is not installed"), "{why}");
    }
}
