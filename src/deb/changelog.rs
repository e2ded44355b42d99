//! `debian/changelog`: the top entry, as the packager needs it.

use super::names::PackageName;
use super::version::Version;

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("debian/changelog does not parse: {0}")]
    Syntax(String),
    #[error("debian/changelog has no entries")]
    Empty,
    #[error("debian/changelog top entry: {0}")]
    Field(String),
}

/// The newest entry of a changelog.
#[derive(Debug, Clone)]
pub struct ChangelogEntry {
    pub package: PackageName,
    pub version: Version,
    pub distributions: Vec<String>,
    /// The change lines of the entry, as written.
    pub changes: Vec<String>,
    pub maintainer: Option<String>,
}

/// Parse a changelog and return its top entry.
pub fn top_entry(text: &str) -> Result<ChangelogEntry, ChangelogError> {
    let cl = debian_changelog::ChangeLog::parse(text).to_result().map_err(|e| ChangelogError::Syntax(e.to_string()))?;
    let entry = cl.iter().next().ok_or(ChangelogError::Empty)?;
    let package = entry.package().ok_or_else(|| ChangelogError::Field("no package name".into()))?;
    let version = entry
        .try_version()
        .ok_or_else(|| ChangelogError::Field("no version".into()))?
        .map_err(|e| ChangelogError::Field(e.to_string()))?;
    Ok(ChangelogEntry {
        package: package.parse().map_err(|e: super::names::NameError| ChangelogError::Field(e.to_string()))?,
        version: version
            .to_string()
            .parse()
            .map_err(|e: super::version::VersionError| ChangelogError::Field(e.to_string()))?,
        distributions: entry.distributions().unwrap_or_default(),
        changes: entry.change_lines().collect(),
        maintainer: entry.maintainer(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_top_entry() {
        let text = "hello (1.0-2~test12+1) bookworm-test-unstable; urgency=medium\n\n  * New.\n  * MINI_BUILDD_OPTION: lintian-mode=ignore\n\n -- A B <a@example.org>  Mon, 01 Jan 2024 00:00:00 +0000\n\nhello (1.0-1) unstable; urgency=low\n\n  * Old.\n\n -- A B <a@example.org>  Sun, 31 Dec 2023 00:00:00 +0000\n";
        let e = top_entry(text).unwrap();
        assert_eq!(e.package.as_str(), "hello");
        assert_eq!(e.version.as_str(), "1.0-2~test12+1");
        assert_eq!(e.distributions, ["bookworm-test-unstable"]);
        assert!(e.changes.iter().any(|l| l.contains("MINI_BUILDD_OPTION")));
        assert_eq!(e.maintainer.as_deref(), Some("A B"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(top_entry("").is_err());
    }
}
