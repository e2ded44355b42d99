//! Layouts: suites, migration chains, rollbacks, version rules, meta-distributions (mini-buildd §4).
//!
//! Pure rules; the engine applies them.

use crate::deb::{Codename, RepoId, Suite, Version};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SuiteOption {
    pub suite: Suite,
    pub uploadable: bool,
    pub experimental: bool,
    pub migrates_to: Option<Suite>,
    pub rollback: u32,
    pub build_keyring_package: bool,
    pub not_automatic: bool,
    pub but_automatic_upgrades: bool,
    /// Days a version stays in this suite before `migrate` takes it on (buildbay's own; 0: no
    /// wait). `force` overrides.
    #[serde(default)]
    pub min_age_days: u32,
    /// Retention (buildbay's own; 0: no limit): keep at most this many rollback versions of a
    /// source.
    #[serde(default)]
    pub keep_versions: u32,
    /// Retention (buildbay's own; 0: no limit): drop rollback versions superseded more than
    /// this many days ago.
    #[serde(default)]
    pub keep_days: u32,
    /// Retention (buildbay's own; 0: no limit): keep at most this many snapshots of each
    /// distribution (manual and automatic).
    #[serde(default)]
    pub keep_snapshots: u32,
    /// Retention (buildbay's own; 0: no limit): drop snapshots made more than this many days ago.
    #[serde(default)]
    pub keep_snapshot_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    pub name: String,
    pub suites: Vec<SuiteOption>,
    pub default_version: String,
    pub mandatory_version_regex: String,
    pub experimental_default_version: String,
    pub experimental_mandatory_version_regex: String,
    /// Alias → `<codename>-<suite>`, expanded per repository.
    pub meta_distributions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "version {version} does not carry the mandatory appendix of suite {suite} (must match {regex:?}, e.g. {example}); fix the version in debian/changelog"
    )]
    Appendix { version: String, suite: Suite, regex: String, example: String },
    #[error("layout {layout}: version rule {regex:?} is not a valid regular expression: {reason}")]
    BadRegex { layout: String, regex: String, reason: String },
    #[error("layout {layout}: {reason}")]
    Invalid { layout: String, reason: String },
}

fn suite(name: &str, uploadable: bool, experimental: bool, migrates_to: Option<&str>, rollback: u32) -> SuiteOption {
    SuiteOption {
        suite: name.parse().expect("built-in suite names are valid"),
        uploadable,
        experimental,
        migrates_to: migrates_to.map(|s| s.parse().expect("built-in suite names are valid")),
        rollback,
        build_keyring_package: name == "unstable",
        not_automatic: true,
        but_automatic_upgrades: name != "experimental",
        min_age_days: 0,
        keep_versions: 0,
        keep_days: 0,
        keep_snapshots: 0,
        keep_snapshot_days: 0,
    }
}

impl Layout {
    /// mini-buildd's "Default" layout.
    pub fn default_layout() -> Layout {
        Layout {
            name: "Default".into(),
            suites: vec![
                suite("experimental", true, true, None, 6),
                suite("snapshot", true, true, None, 12),
                suite("unstable", true, false, Some("testing"), 9),
                suite("testing", false, false, Some("stable"), 3),
                suite("hotfix", true, false, Some("stable"), 4),
                suite("stable", false, false, None, 6),
            ],
            default_version: "~%IDENTITY%%CODEVERSION%+1".into(),
            mandatory_version_regex: r"~%IDENTITY%%CODEVERSION%\+[1-9]".into(),
            experimental_default_version: "~%IDENTITY%%CODEVERSION%+0".into(),
            experimental_mandatory_version_regex: r"~%IDENTITY%%CODEVERSION%\+0".into(),
            meta_distributions: BTreeMap::new(),
        }
    }

    /// "Default (no rollbacks)".
    pub fn default_no_rollbacks() -> Layout {
        let mut l = Layout::default_layout();
        l.name = "Default (no rollbacks)".into();
        l.suites.iter_mut().for_each(|s| s.rollback = 0);
        l
    }

    /// "Debian Developer": Debian's suites, any version, `unstable`/`experimental` aliases for sid.
    pub fn debian_developer() -> Layout {
        let mut suites = vec![
            suite("experimental", true, true, None, 0),
            suite("unstable", true, false, Some("testing"), 0),
            suite("testing", false, false, Some("stable"), 0),
            suite("stable", false, false, None, 0),
        ];
        suites.iter_mut().for_each(|s| s.build_keyring_package = false);
        Layout {
            name: "Debian Developer".into(),
            suites,
            default_version: String::new(),
            mandatory_version_regex: ".*".into(),
            experimental_default_version: String::new(),
            experimental_mandatory_version_regex: ".*".into(),
            meta_distributions: [("unstable", "sid-unstable"), ("experimental", "sid-experimental")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
        }
    }

    pub fn builtins() -> Vec<Layout> {
        vec![Layout::default_layout(), Layout::default_no_rollbacks(), Layout::debian_developer()]
    }

    pub fn suite(&self, suite: &Suite) -> Option<&SuiteOption> {
        self.suites.iter().find(|s| &s.suite == suite)
    }

    /// mini-buildd's SuiteOption validation.
    pub fn validate(&self) -> Result<(), RuleError> {
        let invalid = |reason: String| Err(RuleError::Invalid { layout: self.name.clone(), reason });
        for s in &self.suites {
            if s.build_keyring_package && !s.uploadable {
                return invalid(format!("suite {} builds the keyring package, so it must be uploadable", s.suite));
            }
            if s.experimental && (!s.uploadable || s.migrates_to.is_some()) {
                return invalid(format!("experimental suite {} must be uploadable and must not migrate", s.suite));
            }
            if let Some(to) = &s.migrates_to {
                match self.suite(to) {
                    None => return invalid(format!("suite {} migrates to {to}, which is not in the layout", s.suite)),
                    Some(t) if t.uploadable => {
                        return invalid(format!("suite {} migrates to {to}, which must not be uploadable", s.suite));
                    }
                    _ => {}
                }
            }
        }
        for re in [&self.mandatory_version_regex, &self.experimental_mandatory_version_regex] {
            substituted_regex(self, re, &"x".parse().expect("valid"), "1")?;
        }
        Ok(())
    }

    /// Check the mandatory version appendix of a suite.
    pub fn check_version(
        &self,
        suite: &SuiteOption,
        repo: &RepoId,
        codeversion: &str,
        version: &Version,
    ) -> Result<(), RuleError> {
        let (re, default) = self.appendix(suite, repo, codeversion)?;
        if re.is_match(version.as_str()) {
            return Ok(());
        }
        Err(RuleError::Appendix {
            version: version.to_string(),
            suite: suite.suite.clone(),
            regex: re.as_str().to_owned(),
            example: format!("1.0-1{default}"),
        })
    }

    /// A suite's mandatory version appendix (as a regex) and its default appendix, for a
    /// repository and codeversion (`~test12\+[1-9]`, `~test12+1`).
    pub fn appendix(
        &self,
        suite: &SuiteOption,
        repo: &RepoId,
        codeversion: &str,
    ) -> Result<(regex::Regex, String), RuleError> {
        let (pattern, default) = if suite.experimental {
            (&self.experimental_mandatory_version_regex, &self.experimental_default_version)
        } else {
            (&self.mandatory_version_regex, &self.default_version)
        };
        Ok((substituted_regex(self, pattern, repo, codeversion)?, substitute(default, repo, codeversion)))
    }

    /// The suites a package in `suite` migrates through, in order (`unstable` → `testing`, `stable`).
    pub fn migration_chain(&self, from: &Suite) -> Vec<Suite> {
        let mut chain = Vec::new();
        let mut cur = self.suite(from).and_then(|s| s.migrates_to.clone());
        while let Some(s) = cur {
            if chain.contains(&s) {
                break;
            }
            cur = self.suite(&s).and_then(|o| o.migrates_to.clone());
            chain.push(s);
        }
        chain
    }

    /// Resolve a meta-distribution alias to `(codename, suite)`.
    pub fn meta(&self, alias: &str) -> Option<(Codename, Suite)> {
        let target = self.meta_distributions.get(alias)?;
        let (c, s) = target.split_once('-')?;
        Some((c.parse().ok()?, s.parse().ok()?))
    }
}

fn substitute(template: &str, repo: &RepoId, codeversion: &str) -> String {
    template.replace("%IDENTITY%", repo.as_str()).replace("%CODEVERSION%", codeversion)
}

fn substituted_regex(
    layout: &Layout,
    pattern: &str,
    repo: &RepoId,
    codeversion: &str,
) -> Result<regex::Regex, RuleError> {
    regex::Regex::new(&substitute(pattern, repo, codeversion)).map_err(|e| RuleError::BadRegex {
        layout: layout.name.clone(),
        regex: pattern.to_owned(),
        reason: e.to_string(),
    })
}

/// mini-buildd's `guess_codeversion`: from a Release file's `Origin` and `Version`.
pub fn guess_codeversion(origin: &str, version: Option<&str>, codename: &str) -> String {
    let Some(version) = version.map(str::trim).filter(|v| !v.is_empty()) else {
        return format!("~{}", codename.to_uppercase());
    };
    let mut parts = version.split('.');
    let leading_digits = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>();
    let major = leading_digits(parts.next().unwrap_or_default());
    let minor = leading_digits(parts.next().unwrap_or_default());
    if origin == "Ubuntu" {
        return format!("{major}{minor}");
    }
    match major.parse::<u32>() {
        Ok(m) if m >= 7 => major,
        Ok(_) => format!("{major}{minor}"),
        Err(_) => format!("~{}", codename.to_uppercase()),
    }
}

/// Built-in knowledge of releases: `(origin, codename, version)`; `None` = unversioned (testing/sid).
pub const KNOWN_RELEASES: &[(&str, &str, Option<&str>)] = &[
    ("Debian", "buster", Some("10")),
    ("Debian", "bullseye", Some("11")),
    ("Debian", "bookworm", Some("12")),
    ("Debian", "trixie", Some("13")),
    ("Debian", "forky", None),
    ("Debian", "sid", None),
    ("Ubuntu", "focal", Some("20.04")),
    ("Ubuntu", "jammy", Some("22.04")),
    ("Ubuntu", "noble", Some("24.04")),
];

/// Origin and codeversion of a known release.
pub fn known_release(codename: &Codename) -> Option<(&'static str, String)> {
    KNOWN_RELEASES
        .iter()
        .find(|(_, c, _)| *c == codename.as_str())
        .map(|(o, _, v)| (*o, guess_codeversion(o, *v, codename.as_str())))
}

/// A place a package version can sit in: the distribution itself, or one of its rollbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Base,
    Rollback(u32),
}

/// One step of a rollback shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShiftOp {
    /// Make `to` hold what `from` holds (or nothing, if `from` is empty).
    Copy { from: Slot, to: Slot },
}

/// mini-buildd's `_mbd_package_shift_rollbacks`: before the base slot's package is overwritten,
/// migrated onto or removed, move it into rollback0, pushing older ones down and the oldest out.
///
/// `base` is the version in the distribution; `rollbacks[k]` is the version in rollback k.
/// Nothing shifts if the base is empty, there are no rollbacks, or the version already sits in a rollback.
pub fn shift_plan<V: PartialEq>(base: Option<&V>, rollbacks: &[Option<V>]) -> Vec<ShiftOp> {
    let Some(v) = base else { return vec![] };
    if rollbacks.is_empty() || rollbacks.iter().any(|r| r.as_ref() == Some(v)) {
        return vec![];
    }
    let n = rollbacks.len() as u32;
    let mut ops: Vec<ShiftOp> =
        (1..n).rev().map(|k| ShiftOp::Copy { from: Slot::Rollback(k - 1), to: Slot::Rollback(k) }).collect();
    ops.push(ShiftOp::Copy { from: Slot::Base, to: Slot::Rollback(0) });
    ops
}

/// A retention rule: keep at most `keep` items, none older than `days` (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep: u32,
    pub days: u32,
    /// The suite's fields they come from, to name the rule.
    pub names: (&'static str, &'static str),
}

/// Why retention drops an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Beyond the newest `keep`.
    TooMany(&'static str, u32),
    /// Older than `days`.
    TooOld(&'static str, u32),
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dropped::TooMany(field, n) => write!(f, "{field}={n}: beyond the newest {n}"),
            Dropped::TooOld(field, d) => write!(f, "{field}={d}: older than {d} days"),
        }
    }
}

impl SuiteOption {
    /// Retention of its rollbacks.
    pub fn rollback_retention(&self) -> Retention {
        Retention { keep: self.keep_versions, days: self.keep_days, names: ("keep_versions", "keep_days") }
    }

    /// Retention of its distributions' snapshots.
    pub fn snapshot_retention(&self) -> Retention {
        Retention {
            keep: self.keep_snapshots,
            days: self.keep_snapshot_days,
            names: ("keep_snapshots", "keep_snapshot_days"),
        }
    }
}

impl Retention {
    pub fn is_set(&self) -> bool {
        self.keep > 0 || self.days > 0
    }

    /// Of items ordered newest first, with the time each was superseded or made (`None`: not
    /// known, never too old), which go and why. Both limits apply: an item goes when it is
    /// beyond the newest `keep`, or older than `days`.
    pub fn drops(
        &self,
        newest_first: &[Option<chrono::DateTime<chrono::Utc>>],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Vec<(usize, Dropped)> {
        let too_old = |t: &Option<chrono::DateTime<chrono::Utc>>| {
            self.days > 0 && t.is_some_and(|t| now - t > chrono::Duration::days(i64::from(self.days)))
        };
        // An item is at least as old as any newer one, so what goes is always the oldest.
        let mut oldest: Option<chrono::DateTime<chrono::Utc>> = None;
        newest_first
            .iter()
            .map(|t| {
                oldest = match (oldest, *t) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                oldest
            })
            .enumerate()
            .filter_map(|(i, t)| {
                if self.keep > 0 && i >= self.keep as usize {
                    Some((i, Dropped::TooMany(self.names.0, self.keep)))
                } else if too_old(&t) {
                    Some((i, Dropped::TooOld(self.names.1, self.days)))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// Removing from rollback `k` compacts the chain: k+1 moves to k, …, and the last slot empties.
pub fn compact_plan(k: u32, rollbacks: u32) -> Vec<(Slot, Option<Slot>)> {
    (k..rollbacks).map(|i| (Slot::Rollback(i), (i + 1 < rollbacks).then_some(Slot::Rollback(i + 1)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoId {
        "test".parse().unwrap()
    }

    fn check(layout: &Layout, suite: &str, version: &str) -> bool {
        let s = layout.suite(&suite.parse().unwrap()).unwrap();
        layout.check_version(s, &repo(), "12", &version.parse().unwrap()).is_ok()
    }

    #[test]
    fn retention_drops_beyond_the_count_and_the_age() {
        let t = |d: i64| Some(chrono::Utc::now() - chrono::Duration::days(d));
        let now = chrono::Utc::now();
        let mut s = suite("unstable", true, false, Some("testing"), 9);
        let items = [t(1), t(5), None, t(40), t(50)];
        assert!(!s.rollback_retention().is_set() && s.rollback_retention().drops(&items, now).is_empty());
        s.keep_versions = 2;
        let gone: Vec<usize> = s.rollback_retention().drops(&items, now).iter().map(|(i, _)| *i).collect();
        assert_eq!(gone, [2, 3, 4]);
        assert!(s.snapshot_retention().drops(&items, now).is_empty(), "snapshots have their own limits");
        s.keep_versions = 0;
        s.keep_days = 30;
        let dropped = s.rollback_retention().drops(&items, now);
        let old = Dropped::TooOld("keep_days", 30);
        assert_eq!(dropped, [(3, old), (4, old)], "unknown age is never too old");
        s.keep_versions = 4;
        assert_eq!(s.rollback_retention().drops(&items, now), [(3, old), (4, Dropped::TooMany("keep_versions", 4))]);
        assert_eq!(old.to_string(), "keep_days=30: older than 30 days");
        // A newer item's time bounds an older one's: only ever the oldest go.
        s.keep_versions = 0;
        assert_eq!(s.rollback_retention().drops(&[t(40), t(1), None], now).len(), 3);
        s.keep_snapshots = 1;
        assert_eq!(s.snapshot_retention().drops(&items, now)[0], (1, Dropped::TooMany("keep_snapshots", 1)));
    }

    #[test]
    fn builtins_are_valid() {
        for l in Layout::builtins() {
            l.validate().unwrap();
        }
        let d = Layout::default_layout();
        let rollbacks: Vec<u32> = d.suites.iter().map(|s| s.rollback).collect();
        assert_eq!(rollbacks, [6, 12, 9, 3, 4, 6]);
        assert_eq!(d.suites.iter().map(|s| s.rollback as usize + 1).sum::<usize>(), 46);
        let exp = d.suite(&"experimental".parse().unwrap()).unwrap();
        assert!(exp.not_automatic && !exp.but_automatic_upgrades);
    }

    /// mini-buildd's examples (inventory §4, consumer manual).
    #[test]
    fn version_appendix_examples() {
        let d = Layout::default_layout();
        assert!(check(&d, "experimental", "1.0-1~test12+0"));
        assert!(check(&d, "snapshot", "1.0-1~test12+0"));
        assert!(check(&d, "unstable", "1.0-1~test12+3"));
        assert!(check(&d, "unstable", "1.0-1~test12+1"));
        assert!(check(&d, "hotfix", "1.0-1~test12+2+hotfix1"));
        assert!(!check(&d, "unstable", "1.0-1~test12+0"));
        assert!(!check(&d, "unstable", "1.0-1"));
        assert!(!check(&d, "unstable", "1.0-1~test11+1"));
        assert!(!check(&d, "unstable", "1.0-1~other12+1"));
        assert!(!check(&d, "experimental", "1.0-1~test12+1"));
        let dd = Layout::debian_developer();
        assert!(check(&dd, "unstable", "1.0-1"));
        let err = d
            .check_version(d.suite(&"unstable".parse().unwrap()).unwrap(), &repo(), "12", &"1.0-1".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("1.0-1~test12+1"), "{err}");
    }

    #[test]
    fn codeversion_guess() {
        let c = |s: &str| s.parse::<Codename>().unwrap();
        assert_eq!(guess_codeversion("Debian", Some("7.1"), "wheezy"), "7");
        assert_eq!(guess_codeversion("Debian", Some("12.5"), "bookworm"), "12");
        assert_eq!(guess_codeversion("Debian", Some("6.0.6"), "squeeze"), "60");
        assert_eq!(guess_codeversion("Debian", Some("3.1r8"), "sarge"), "31");
        assert_eq!(guess_codeversion("Ubuntu", Some("12.10"), "quantal"), "1210");
        assert_eq!(guess_codeversion("Debian", None, "sid"), "~SID");
        assert_eq!(known_release(&c("bookworm")), Some(("Debian", "12".into())));
        assert_eq!(known_release(&c("jammy")), Some(("Ubuntu", "2204".into())));
    }

    #[test]
    fn chains_and_meta() {
        let d = Layout::default_layout();
        let chain: Vec<String> =
            d.migration_chain(&"unstable".parse().unwrap()).iter().map(|s| s.to_string()).collect();
        assert_eq!(chain, ["testing", "stable"]);
        assert!(d.migration_chain(&"stable".parse().unwrap()).is_empty());
        let dd = Layout::debian_developer();
        assert_eq!(dd.meta("unstable").map(|(c, s)| format!("{c}-{s}")).as_deref(), Some("sid-unstable"));
        assert!(d.meta("unstable").is_none());
    }

    #[test]
    fn invalid_layouts() {
        let mut l = Layout::default_layout();
        l.suites[3].uploadable = true; // testing is a migration target
        assert!(l.validate().is_err());
        let mut l = Layout::default_layout();
        l.mandatory_version_regex = "(".into();
        assert!(matches!(l.validate(), Err(RuleError::BadRegex { .. })));
    }

    #[test]
    fn rollback_shift() {
        let v = |s: &str| Some(s.to_owned());
        // Base 3 moves into rollback0; rollback0 into 1; the oldest falls out.
        let plan = shift_plan(Some(&"3".to_owned()), &[v("2"), v("1")]);
        assert_eq!(
            plan,
            [
                ShiftOp::Copy { from: Slot::Rollback(0), to: Slot::Rollback(1) },
                ShiftOp::Copy { from: Slot::Base, to: Slot::Rollback(0) }
            ]
        );
        assert!(shift_plan::<String>(None, &[v("2")]).is_empty());
        assert!(shift_plan(Some(&"2".to_owned()), &[None, v("2")]).is_empty());
        assert!(shift_plan(Some(&"2".to_owned()), &[]).is_empty());
        assert_eq!(compact_plan(1, 3), [(Slot::Rollback(1), Some(Slot::Rollback(2))), (Slot::Rollback(2), None)]);
    }
}
