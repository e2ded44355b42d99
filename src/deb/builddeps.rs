//! Are a source package's build dependencies already installed? Checked against a dpkg status
//! file, the way sbuild's resolvers and dpkg-checkbuilddeps would see it, and conservatively:
//! whatever this cannot decide for sure (an architecture wildcard, a `:native` qualifier, an
//! unreadable status paragraph when conflicts are asked) counts as "needs installing", so the
//! caller falls back to a real resolver and loses only time.
//!
//! Relations are parsed by the `debian-control` crate; versions compare with [`Version`] (dpkg's
//! own ordering).

use super::{Stanza, Version};
use debian_control::lossy::{Relation, Relations};
use debian_control::relations::{BuildProfile, VersionConstraint};
use std::collections::HashMap;

/// One installed package.
#[derive(Debug)]
struct Package {
    version: Version,
    arch: String,
    multi_arch: String,
}

/// The packages a dpkg status file says are installed, and what they provide: name → the
/// provided versions (`None`: unversioned).
#[derive(Debug, Default)]
pub struct Installed {
    packages: HashMap<String, Package>,
    provides: HashMap<String, Vec<Option<Version>>>,
    /// Paragraphs that could not be read: nothing is known of them.
    unreadable: usize,
}

impl Installed {
    /// Whether a package of this name is installed.
    pub fn has(&self, name: &str) -> bool {
        self.packages.contains_key(name)
    }

    /// From the text of `/var/lib/dpkg/status`: packages whose status is `… ok installed`
    /// (dpkg's own test; held packages too).
    pub fn from_status(text: &str) -> Installed {
        let mut installed = Installed::default();
        for para in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
            let Ok(s) = Stanza::parse_one(para) else {
                installed.unreadable += 1;
                continue;
            };
            if !s.get("Status").is_some_and(|st| st.ends_with(" ok installed")) {
                continue;
            }
            let (Some(name), Some(version)) = (s.get("Package"), s.get("Version").and_then(|v| v.parse().ok())) else {
                installed.unreadable += 1;
                continue;
            };
            let field = |k: &str| s.get(k).unwrap_or_default().to_owned();
            installed.packages.insert(
                name.to_owned(),
                Package { version, arch: field("Architecture"), multi_arch: field("Multi-Arch") },
            );
            let Ok(provides) = field("Provides").replace('\n', " ").parse::<Relations>() else {
                installed.unreadable += 1;
                continue;
            };
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
    /// The build's host architecture (the image's own: it has no foreign packages).
    pub arch: &'a str,
    /// The active build profiles (`DEB_BUILD_PROFILES`).
    pub profiles: &'a [&'a str],
    /// sbuild's apt resolver considers only the first alternative of each dependency; aptitude
    /// any of them.
    pub first_alternative_only: bool,
    /// Architecture-independent packages are built too (`Build-Depends-Indep` counts).
    pub indep: bool,
}

/// Whether an installed package satisfies a relation.
enum Match {
    Yes,
    No(String),
    /// Not decidable here.
    Unknown(String),
}

/// Nothing to install: every build dependency of `dsc` (`Build-Depends`, `-Arch`, `-Indep` when
/// `target.indep`, plus sbuild's implicit `build-essential` and `fakeroot`) is installed, and no
/// build conflict is. Otherwise the first reason found, for the build log.
pub fn satisfied(dsc: &Stanza, installed: &Installed, target: &Target) -> Result<(), String> {
    let (depends, conflicts) = relations(dsc, target)?;
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
                Match::Yes => {
                    why = None;
                    break;
                }
                Match::No(e) | Match::Unknown(e) => why = why.or(Some(e)),
            }
        }
        if let Some(why) = why {
            return Err(format!("{first} is not satisfied: {why}"));
        }
    }
    if !conflicts.is_empty() && installed.unreadable > 0 {
        return Err(format!(
            "{} paragraphs of the image's dpkg status are unreadable; its build conflicts are left to the resolver",
            installed.unreadable
        ));
    }
    for r in conflicts.iter().flatten() {
        if !applies(r, target)? {
            continue;
        }
        match installed_match(r, installed) {
            Match::Yes => return Err(format!("the build conflict {r} is installed")),
            Match::Unknown(why) => return Err(format!("the build conflict {r}: {why}")),
            Match::No(_) => {}
        }
    }
    Ok(())
}

/// The build dependencies (`Build-Depends`, `-Arch`, `-Indep` when `target.indep`, plus sbuild's
/// implicit `build-essential` and `fakeroot`) and the build conflicts of `dsc`.
fn relations(dsc: &Stanza, target: &Target) -> Result<(Relations, Relations), String> {
    let field = |name: &str| dsc.get(name).unwrap_or_default().replace('\n', " ");
    let fields = |names: [&str; 3]| -> String {
        let n = if target.indep { 3 } else { 2 };
        names[..n].iter().map(|f| field(f)).collect::<Vec<_>>().join(", ")
    };
    let depends = format!(
        "build-essential, fakeroot, {}",
        fields(["Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep"])
    );
    let depends: Relations = depends.parse().map_err(|e| format!("cannot read the build dependencies: {e}"))?;
    let conflicts = fields(["Build-Conflicts", "Build-Conflicts-Arch", "Build-Conflicts-Indep"]);
    let conflicts: Relations = conflicts.parse().map_err(|e| format!("cannot read the build conflicts: {e}"))?;
    Ok((depends, conflicts))
}

/// The build dependencies and conflicts of `dsc` that apply to `target`, as the `Depends` and
/// `Conflicts` of a package that stands for them (sbuild's dummy package, which aptitude then
/// installs): restrictions resolved and dropped, `:native` dropped (an image has its own
/// architecture only). Each is one line of package relations only (checked: nothing else can
/// reach the control file it goes into); what cannot be decided here is an error.
pub fn for_dummy(dsc: &Stanza, target: &Target) -> Result<(String, String), String> {
    let (depends, conflicts) = relations(dsc, target)?;
    let render = |alternatives: &[&Relation]| -> Result<Option<String>, String> {
        let mut kept = Vec::new();
        for r in alternatives {
            if applies(r, target)? {
                let mut plain = Relation::clone(r);
                plain.architectures = None;
                plain.profiles = vec![];
                if plain.archqual.as_deref() == Some("native") {
                    plain.archqual = None;
                }
                kept.push(plain.to_string());
            }
        }
        Ok((!kept.is_empty()).then(|| kept.join(" | ")))
    };
    let mut deps = Vec::new();
    for alternatives in depends.iter() {
        deps.extend(render(&alternatives)?);
    }
    let mut conf = Vec::new();
    for r in conflicts.iter().flatten() {
        conf.extend(render(&[r])?);
    }
    let (deps, conf) = (deps.join(", "), conf.join(", "));
    let plain = |s: &str| s.bytes().all(|c| c.is_ascii_alphanumeric() || b" .+-:~,|()<>=".contains(&c));
    if !plain(&deps) || !plain(&conf) {
        return Err("the build dependencies have characters no package relation has".into());
    }
    Ok((deps, conf))
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

/// Whether an installed package satisfies one relation, itself or (unqualified only) by what it
/// provides; a versioned relation only by a versioned `Provides`. Qualifiers as dpkg has them:
/// `:any` needs `Multi-Arch: allowed`; `:native` is left to the resolver.
fn installed_match(r: &Relation, installed: &Installed) -> Match {
    let provided = || -> Result<bool, String> {
        if r.archqual.is_some() {
            return Ok(false);
        }
        for v in installed.provides.get(&r.name).map(Vec::as_slice).unwrap_or_default() {
            let hit = match (&r.version, v) {
                (None, _) => true,
                (Some((constraint, want)), Some(v)) => meets(v, constraint, want)?,
                (Some(_), None) => false,
            };
            if hit {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let by_provides = |why: String| match provided() {
        Ok(true) => Match::Yes,
        Ok(false) => Match::No(why),
        Err(e) => Match::Unknown(e),
    };
    let Some(p) = installed.packages.get(&r.name) else {
        return by_provides(format!("{} is not installed", r.name));
    };
    match r.archqual.as_deref() {
        None => {}
        Some("any") if p.multi_arch == "allowed" => {}
        Some("any") => {
            return Match::No(format!("{} is not Multi-Arch: allowed, so {}:any is not met", r.name, r.name));
        }
        Some("native") => return Match::Unknown(format!("{}:native is left to the resolver", r.name)),
        Some(q) if q == p.arch => {}
        Some(q) => return Match::No(format!("{} is installed for {}, not {q}", r.name, p.arch)),
    }
    let Some((constraint, want)) = &r.version else { return Match::Yes };
    match meets(&p.version, constraint, want) {
        Ok(true) => Match::Yes,
        Ok(false) => by_provides(format!("{} {} is installed", r.name, p.version)),
        Err(e) => Match::Unknown(e),
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
        Package: build-essential\nStatus: hold ok installed\nVersion: 12.9\nArchitecture: amd64\n\n\
        Package: perl\nStatus: install ok installed\nVersion: 5.36.0-7\nArchitecture: amd64\nMulti-Arch: allowed\n\n\
        Package: fakeroot\nStatus: install ok installed\nVersion: 1.31-1.2\nArchitecture: amd64\n\n\
        Package: dh-python\nStatus: deinstall ok config-files\nVersion: 5.20230130\nArchitecture: all\n\n\
        Package: libc6-dev\nStatus: install ok installed\nVersion: 2.36-9+deb12u14\nArchitecture: amd64\n";

    fn check(fields: &str, profiles: &[&str], first_only: bool) -> Result<(), String> {
        let dsc = Stanza::parse_one(&format!("Source: x\n{fields}")).expect("dsc");
        let target = Target { arch: "amd64", profiles, first_alternative_only: first_only, indep: true };
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
        assert!(check("Build-Depends: libc6-dev:amd64, perl:any\n", &[], true).is_ok());
        assert!(check("Build-Depends: libc6-dev:i386\n", &[], true).is_err());
        // dpkg's rules: :any needs Multi-Arch: allowed; :native is not decided here.
        assert!(check("Build-Depends: debhelper:any\n", &[], true).unwrap_err().contains("Multi-Arch: allowed"));
        assert!(check("Build-Depends: perl:native\n", &[], true).unwrap_err().contains("left to the resolver"));
        assert!(
            check("Build-Depends: debhelper-compat:any (= 13)\n", &[], true).is_err(),
            "qualified: not by Provides"
        );
        let conflict = check("Build-Conflicts: fakeroot\n", &[], true).unwrap_err();
        assert!(conflict.contains("build conflict fakeroot"), "{conflict}");
        assert_eq!(check("Build-Conflicts: fakeroot (<< 1)\n", &[], true), Ok(()));
        assert_eq!(check("Build-Conflicts: dh-python\n", &[], true), Ok(()));
    }

    #[test]
    fn indep_dependencies_count_only_for_arch_all_builds() {
        let dsc = Stanza::parse_one("Source: x\nBuild-Depends-Indep: dh-python\nBuild-Conflicts-Indep: fakeroot\n")
            .expect("dsc");
        let installed = Installed::from_status(STATUS);
        let arch_only = Target { arch: "amd64", profiles: &[], first_alternative_only: true, indep: false };
        assert_eq!(satisfied(&dsc, &installed, &arch_only), Ok(()));
        let with_indep = Target { indep: true, ..arch_only };
        assert!(satisfied(&dsc, &installed, &with_indep).is_err());
    }

    #[test]
    fn unreadable_status_leaves_conflicts_to_the_resolver() {
        let status = format!("{STATUS}\nthis is not a paragraph\n");
        let installed = Installed::from_status(&status);
        let target = Target { arch: "amd64", profiles: &[], first_alternative_only: true, indep: true };
        let plain = Stanza::parse_one("Source: x\nBuild-Depends: debhelper\n").expect("dsc");
        assert_eq!(satisfied(&plain, &installed, &target), Ok(()));
        let conflicting = Stanza::parse_one("Source: x\nBuild-Conflicts: foo\n").expect("dsc");
        assert!(satisfied(&conflicting, &installed, &target).unwrap_err().contains("unreadable"));
    }

    #[test]
    fn a_dummy_package_stands_for_what_applies() {
        let dsc = Stanza::parse_one(
            "Source: x\nBuild-Depends: debhelper-compat (= 13), libfoo-dev [i386], perl:native,\n \
             libbar-dev [amd64] | libbaz-dev <!nocheck>, check <!nocheck>\n\
             Build-Depends-Indep: python3:any\nBuild-Conflicts: libold-dev (<< 2) [amd64], other [i386]\n",
        )
        .expect("dsc");
        let target = Target { arch: "amd64", profiles: &["nocheck"], first_alternative_only: false, indep: false };
        let (deps, conflicts) = for_dummy(&dsc, &target).expect("dummy");
        assert_eq!(deps, "build-essential, fakeroot, debhelper-compat (= 13), perl, libbar-dev");
        assert_eq!(conflicts, "libold-dev (<< 2)");
        let all = Target { profiles: &[], indep: true, ..target };
        let (deps, _) = for_dummy(&dsc, &all).expect("dummy");
        assert!(deps.ends_with("libbar-dev | libbaz-dev, check, python3:any"), "{deps}");
        let wild = Stanza::parse_one("Source: x\nBuild-Depends: libfoo-dev [linux-any]\n").expect("dsc");
        assert!(for_dummy(&wild, &all).unwrap_err().contains("wildcards"));
    }

    #[test]
    fn implicit_dependencies_are_checked() {
        let dsc = Stanza::parse_one("Source: x\nBuild-Depends: debhelper\n").expect("dsc");
        let target = Target { arch: "amd64", profiles: &[], first_alternative_only: true, indep: true };
        let bare = Installed::from_status(
            "Package: debhelper\nStatus: install ok installed\nVersion: 13\nArchitecture: all\n",
        );
        let why = satisfied(&dsc, &bare, &target).unwrap_err();
        assert!(why.contains("build-essential is not installed"), "{why}");
    }
}
