//! The migration gate (beyond mini-buildd, whose `migrate` copies blindly). Before a source
//! package migrates to the next suite:
//!
//! - its binaries must be installable there, on every mandatory architecture: dose-debcheck
//!   over the chroot image's package lists of the base distribution plus the target suite's
//!   other binaries;
//! - the QA checks the distribution gates on (errfail, warnfail) must have passed for this
//!   version, as its INSTALLED event recorded them;
//! - it must have been in its suite for the suite's `min_age_days`.
//!
//! `migrate` refuses with every reason; an admin's `force` migrates anyway, and the MIGRATED
//! event records what was overridden. The rules are pure; dose-debcheck is the edge.

use crate::archive::{Archive, MigrationView};
use crate::deb::Arch;
use crate::events::{Event, EventType};
use crate::protocol::{BuildSettings, Check, QaMode};
use chrono::{DateTime, Utc};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The gate's verdict on one migration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Why it may not migrate yet (empty: it may).
    pub reasons: Vec<String>,
    /// What could not be checked, and why (no chroot image with the base's package lists; a
    /// version that was never built here, so has no QA record). These do not block.
    pub unchecked: Vec<String>,
    /// The version checked (`None`: a rollback's restore, which is not checked).
    pub version: Option<crate::deb::Version>,
}

/// Where a gated migration stopped: the distribution it could not leave, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub from: crate::deb::Dist,
    pub reasons: Vec<String>,
}

/// The gate over one instance's archive and chroot images.
pub struct Gate<'a> {
    pub inst: &'a crate::instance::Instance,
    pub archive: &'a Archive<'a>,
    pub places: &'a crate::chroot::Places,
}

impl Gate<'_> {
    /// Migrate `source` from `dist` through the gate, one step at a time (`full`: along the whole
    /// chain, each step checked): each step moves exactly the version its check saw. `force`
    /// overrides the reasons (recorded in the step's MIGRATED event). Returns the MIGRATED events,
    /// and where it stopped if a check refused.
    pub fn migrate(
        &self,
        source: &crate::deb::PackageName,
        dist: &crate::deb::Dist,
        version: Option<&crate::deb::Version>,
        full: bool,
        force: bool,
    ) -> anyhow::Result<(Vec<Event>, Option<Refused>)> {
        let archive = self.archive;
        let mut events = Vec::new();
        let mut from = dist.clone();
        let mut version = version.cloned();
        loop {
            let v = self.check(source, &from, version.as_ref())?;
            if !v.reasons.is_empty() && !force {
                return Ok((events, Some(Refused { from, reasons: v.reasons })));
            }
            let forced = if force { v.reasons } else { vec![] };
            let pinned = v.version.or(version);
            let step = archive.migrate(source, &from, false, pinned.as_ref(), (&forced, &v.unchecked))?;
            let next = step.last().and_then(|e| e.extra.get("migrated_to")?.as_str()?.parse::<crate::deb::Dist>().ok());
            events.extend(step);
            let more = archive
                .ctx(&from.repo)?
                .layout
                .suite(next.as_ref().map_or(&from.suite, |n| &n.suite))
                .is_some_and(|s| s.migrates_to.is_some());
            match next {
                Some(n) if full && more && !from.is_rollback() => {
                    from = n;
                    version = pinned;
                }
                _ => return Ok((events, None)),
            }
        }
    }

    /// The gate's verdict on `source` (of `version`, if given) migrating from `dist`. A
    /// rollback's restore is no migration: nothing to check.
    pub fn check(
        &self,
        source: &crate::deb::PackageName,
        dist: &crate::deb::Dist,
        version: Option<&crate::deb::Version>,
    ) -> anyhow::Result<Verdict> {
        let Some(view) = self.archive.migration_view(source, dist, version, true)? else {
            return Ok(Verdict::default());
        };
        let mut v = without_installability(self.inst, self.archive, &view, dist)?;
        v.version = Some(view.version.clone());
        let image = |a: &Arch| self.places.image(&crate::chroot::Chroot::new(dist.codename.clone(), a.clone()));
        let (reasons, unchecked) = installability(&view, image);
        v.reasons.extend(reasons);
        v.unchecked.extend(unchecked);
        Ok(v)
    }
}

/// The gate's cheap part, for the tracker page (no dose-debcheck run): the QA and the age.
pub fn quick(
    inst: &crate::instance::Instance,
    archive: &Archive,
    source: &crate::deb::PackageName,
    dist: &crate::deb::Dist,
) -> anyhow::Result<Vec<String>> {
    let Some(view) = archive.migration_view(source, dist, None, false)? else { return Ok(vec![]) };
    Ok(without_installability(inst, archive, &view, dist)?.reasons)
}

fn without_installability(
    inst: &crate::instance::Instance,
    archive: &Archive,
    view: &MigrationView,
    dist: &crate::deb::Dist,
) -> anyhow::Result<Verdict> {
    let settings =
        inst.get::<crate::config::Distribution>(dist.codename.as_str())?.map(|d| d.build).unwrap_or_default();
    let min_age = archive.ctx(&dist.repo)?.layout.suite(&dist.suite).map(|s| s.min_age_days).unwrap_or(0);
    // All of them (bounded by their expiry, `--keep-events-days`): a flood of other events
    // cannot push the version's INSTALLED out of sight.
    let events = crate::events::of_source(&inst.store, view.source.as_str(), usize::MAX)?;
    let (installed, since) = history(&events, view.version.as_str(), dist);
    let mut v = Verdict::default();
    match installed {
        Some(ev) => v.reasons.extend(qa_reasons(&settings, &view.mandatory, Some(ev))),
        None => v.unchecked.push("QA: this version was not built here (included or ported): no QA record".into()),
    }
    v.reasons.extend(age_reason(min_age, since, Utc::now()));
    Ok(v)
}

/// At most this much of dose-debcheck's output is read.
const MAX_DOSE_OUTPUT: u64 = 4 << 20;

/// At most this many reasons from one dose-debcheck run.
const MAX_REASONS: usize = 10;

/// Why the gating QA of this version did not pass: for each check the distribution gates on,
/// each mandatory architecture's verdict in the INSTALLED event must pass the mode.
pub fn qa_reasons(settings: &BuildSettings, mandatory: &[Arch], installed: Option<&Event>) -> Vec<String> {
    let gating: Vec<(Check, QaMode)> = [
        (Check::Lintian, settings.lintian_mode),
        (Check::Piuparts, settings.piuparts_mode),
        (Check::Autopkgtest, settings.autopkgtest_mode),
    ]
    .into_iter()
    .filter(|(_, m)| m.gates())
    .collect();
    if gating.is_empty() {
        return vec![];
    }
    let Some(ev) = installed else {
        return vec!["no INSTALLED event of this version records its QA results".into()];
    };
    let mut out = Vec::new();
    for (check, mode) in gating {
        for arch in mandatory {
            let got = ev
                .extra
                .get("checks")
                .and_then(|c| c.get(arch.as_str()))
                .and_then(|c| c.get(check.field()))
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if !mode.passes(got) {
                let got = if got.is_empty() { "no result" } else { got };
                out.push(format!("{} on {arch}: {got}, where the distribution's mode is {mode}", check.field()));
            }
        }
    }
    out
}

/// Why the version is too young for the suite's minimum age.
pub fn age_reason(min_days: u32, since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<String> {
    if min_days == 0 {
        return None;
    }
    let Some(since) = since else {
        return Some(format!("its arrival in the suite is not on record (the suite wants {min_days} days)"));
    };
    let age = now - since;
    (age < chrono::Duration::days(i64::from(min_days))).then(|| {
        format!("it has been in the suite {:.1} days; the suite wants {min_days}", age.num_hours() as f64 / 24.0)
    })
}

/// The newest INSTALLED event of `version` in `dist`'s repository and codename, and when that
/// version arrived in `dist` (its INSTALLED there, or its MIGRATED to there), from a source's
/// events, newest first.
pub fn history<'a>(
    events: &'a [Event],
    version: &str,
    dist: &crate::deb::Dist,
) -> (Option<&'a Event>, Option<DateTime<Utc>>) {
    let name = dist.to_string();
    let same_line =
        |d: &str| d.parse::<crate::deb::Dist>().is_ok_and(|d| d.codename == dist.codename && d.repo == dist.repo);
    let of_version = || events.iter().filter(move |e| e.version == version);
    let installed = of_version().find(|e| e.kind == EventType::Installed && same_line(&e.distribution));
    let arrived = of_version()
        .find(|e| {
            (e.kind == EventType::Installed && e.distribution == name)
                || (e.kind == EventType::Migrated
                    && e.extra.get("migrated_to").and_then(|v| v.as_str()) == Some(name.as_str()))
        })
        .map(|e| e.timestamp);
    (installed, arrived)
}

/// dose-debcheck's explanation (`-e -f` YAML) as one line per broken package.
pub fn parse_dose(yaml: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut package: Option<(String, String)> = None;
    let field = |line: &str, name: &str| line.trim().strip_prefix(name).map(|v| v.trim().to_owned());
    for line in yaml.lines() {
        // A report item's own package is at two spaces; reasons are deeper.
        if line.starts_with("  package: ") {
            package = field(line, "package:").map(|p| (p, String::new()));
        } else if line.starts_with("  version: ")
            && let (Some((_, v)), Some(ver)) = (package.as_mut(), field(line, "version:"))
        {
            *v = ver;
        } else if let Some(dep) = field(line, "unsat-dependency:") {
            let (p, v) = package.clone().unwrap_or_default();
            out.push(format!("{p} {v} is not installable: {dep} is not available"));
        } else if let Some(c) = field(line, "unsat-conflict:") {
            let (p, v) = package.clone().unwrap_or_default();
            out.push(format!("{p} {v} is not installable: it conflicts with {c}"));
        }
        if out.len() >= MAX_REASONS {
            out.push("… (more)".into());
            break;
        }
    }
    out.dedup();
    out
}

/// The `Packages` lists an image's apt has (`var/lib/apt/lists/*_Packages`).
fn image_lists(image: &Path) -> Vec<PathBuf> {
    let dir = image.join("var/lib/apt/lists");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("_Packages")))
        .collect();
    v.sort();
    v
}

/// Why the migrating binaries would not be installable in the target suite: for each mandatory
/// architecture, dose-debcheck with the binaries of that architecture (and `all`) in the
/// foreground, the base distribution (the lists of `image_of(arch)`) and the target's other
/// binaries in the background. Binaries that do not migrate leave nothing to check.
///
/// Returns the reasons, and what could not be checked.
pub fn installability(view: &MigrationView, image_of: impl Fn(&Arch) -> PathBuf) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut unchecked = Vec::new();
    for arch in &view.mandatory {
        let of_arch = |list: &[(Arch, Vec<u8>)]| -> Vec<u8> {
            let mut text = Vec::new();
            for (_, st) in list.iter().filter(|(a, _)| a == arch || a.is_all()) {
                text.extend_from_slice(st);
                if !st.ends_with(b"\n\n") {
                    text.extend_from_slice(if st.ends_with(b"\n") { b"\n" } else { b"\n\n" });
                }
            }
            text
        };
        let fg = of_arch(&view.candidates);
        if fg.is_empty() {
            continue;
        }
        let lists = image_lists(&image_of(arch));
        if lists.is_empty() {
            unchecked.push(format!(
                "installability on {arch}: no chroot image with the base distribution's package lists (`setup --chroots`)"
            ));
            continue;
        }
        match run_dose(arch, &fg, &of_arch(&view.others), &lists) {
            Ok(reasons) => out.extend(reasons.into_iter().map(|r| format!("on {arch}: {r} in {}", view.to))),
            Err(e) => out.push(format!("cannot check installability on {arch}: {e}")),
        }
    }
    (out, unchecked)
}

fn run_dose(arch: &Arch, fg: &[u8], target: &[u8], lists: &[PathBuf]) -> std::io::Result<Vec<String>> {
    // A fresh directory of our own (mkdir fails on anything already there, a symlink included).
    let dir =
        std::env::temp_dir().join(format!("buildbay-gate-{}-{}", std::process::id(), crate::protocol::fresh_micros()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let result = dose_in(&dir, arch, fg, target, lists);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn dose_in(dir: &Path, arch: &Arch, fg: &[u8], target: &[u8], lists: &[PathBuf]) -> std::io::Result<Vec<String>> {
    let (fg_path, target_path) = (dir.join("fg"), dir.join("target"));
    std::fs::write(&fg_path, fg)?;
    std::fs::write(&target_path, target)?;
    let mut cmd = Command::new("timeout");
    cmd.args(["300", "dose-debcheck", "-e", "-f"]).arg(format!("--deb-native-arch={arch}"));
    for l in lists.iter().chain(std::iter::once(&target_path)) {
        cmd.arg(format!("--bg={}", l.display()));
    }
    cmd.arg(format!("--fg={}", fg_path.display()));
    // Its explanations are bounded: at most 4 MiB of them are read (the reasons are the first
    // few), its errors go to a file in the scratch directory.
    let err_path = dir.join("stderr");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path)?);
    let mut child = cmd.spawn().map_err(|e| {
        std::io::Error::new(e.kind(), format!("dose-debcheck: {e} (install the dose-distcheck package)"))
    })?;
    let mut stdout = Vec::new();
    if let Some(out) = child.stdout.take() {
        use std::io::Read;
        out.take(MAX_DOSE_OUTPUT).read_to_end(&mut stdout)?;
    }
    if stdout.len() as u64 >= MAX_DOSE_OUTPUT {
        // Anything beyond the bound is not waited for.
        let _ = child.kill();
    }
    let status = child.wait()?;
    let text = String::from_utf8_lossy(&stdout);
    let stderr = std::fs::read(&err_path).unwrap_or_default();
    match status.code() {
        Some(0) => Ok(vec![]),
        Some(1) => {
            let reasons = parse_dose(&text);
            Ok(if reasons.is_empty() { vec!["dose-debcheck found a broken package".into()] } else { reasons })
        }
        // Killed at the bound with reasons read: they are the verdict.
        _ if !parse_dose(&text).is_empty() => Ok(parse_dose(&text)),
        _ => Err(std::io::Error::other(format!(
            "dose-debcheck failed ({status}): {}",
            String::from_utf8_lossy(&stderr).chars().take(300).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(checks: serde_json::Value) -> Event {
        Event::new(EventType::Installed, "bookworm-test-unstable", "hello", "1.0").with("checks", checks)
    }

    #[test]
    fn gating_qa_must_have_passed_on_every_mandatory_arch() {
        let arches: Vec<Arch> = vec!["amd64".parse().unwrap(), "i386".parse().unwrap()];
        let s = BuildSettings { autopkgtest_mode: QaMode::Errfail, ..Default::default() };
        let ok = installed(serde_json::json!({
            "amd64": {"Lintian": "pass", "Autopkgtest": "pass"},
            "i386": {"Lintian": "pass", "Autopkgtest": "no tests"}
        }));
        assert!(qa_reasons(&s, &arches, Some(&ok)).is_empty());
        let bad = installed(
            serde_json::json!({"amd64": {"Lintian": "pass", "Autopkgtest": "fail"}, "i386": {"Lintian": "pass"}}),
        );
        let r = qa_reasons(&s, &arches, Some(&bad));
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            r[0].contains("Autopkgtest on amd64: fail") && r[1].contains("Autopkgtest on i386: no result"),
            "{r:?}"
        );
        assert!(!qa_reasons(&s, &arches, None).is_empty(), "no record is no pass");
        let none = BuildSettings { lintian_mode: QaMode::Ignore, ..Default::default() };
        assert!(qa_reasons(&none, &arches, None).is_empty(), "nothing gates: nothing to have passed");
    }

    #[test]
    fn the_minimum_age() {
        let now = Utc::now();
        assert_eq!(age_reason(0, None, now), None);
        assert_eq!(age_reason(2, Some(now - chrono::Duration::days(3)), now), None);
        let young = age_reason(5, Some(now - chrono::Duration::hours(36)), now).unwrap();
        assert!(young.contains("1.5 days") && young.contains("wants 5"), "{young}");
        assert!(age_reason(1, None, now).is_some());
    }

    #[test]
    fn history_finds_the_version_and_its_arrival() {
        let t0 = Utc::now() - chrono::Duration::days(2);
        let mut inst = installed(serde_json::json!({}));
        inst.timestamp = t0;
        let mut mig = Event::new(EventType::Migrated, "bookworm-test-unstable", "hello", "1.0")
            .with("migrated_to", "bookworm-test-testing");
        mig.timestamp = t0 + chrono::Duration::days(1);
        let other = Event::new(EventType::Installed, "bookworm-test-unstable", "hello", "2.0");
        let elsewhere = Event::new(EventType::Installed, "bookworm-other-unstable", "hello", "1.0")
            .with("checks", serde_json::json!({"amd64": {"Autopkgtest": "pass"}}));
        let events = vec![elsewhere, other, mig, inst];
        let unstable: crate::deb::Dist = "bookworm-test-unstable".parse().unwrap();
        let (ev, since) = history(&events, "1.0", &unstable);
        assert_eq!(ev.map(|e| e.distribution.as_str()), Some("bookworm-test-unstable"), "not another repository's");
        assert_eq!(since, Some(t0));
        let (_, since) = history(&events, "1.0", &"bookworm-test-testing".parse().unwrap());
        assert_eq!(since, Some(t0 + chrono::Duration::days(1)));
    }

    #[test]
    fn dose_explanations_become_reasons() {
        let yaml = "output-version: 1.2\nreport:\n -\n  package: qamig\n  version: 1.0\n  architecture: all\n  status: broken\n  reasons:\n   -\n    missing:\n     pkg:\n      package: qamig\n      version: 1.0\n      architecture: all\n      unsat-dependency: libdoesnotexist1:amd64\n -\n  package: qaconf\n  version: 2\n  reasons:\n   -\n    conflict:\n     pkg1:\n      package: qaconf\n      unsat-conflict: bash\n";
        let r = parse_dose(yaml);
        assert_eq!(
            r,
            [
                "qamig 1.0 is not installable: libdoesnotexist1:amd64 is not available",
                "qaconf 2 is not installable: it conflicts with bash"
            ]
        );
    }
}
