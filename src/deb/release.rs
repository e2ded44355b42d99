//! An upstream archive's `Release` (the payload of its `InRelease`): what a Source check reads.

use super::control::{ControlError, Stanza};
use chrono::{DateTime, Utc};

/// The fields of a `Release` file that a Source is matched and filled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub origin: String,
    pub codename: String,
    pub suite: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    /// Components as apt names them: a path prefix such as `updates/` (debian-security) is
    /// removed, so `updates/main` is `main`.
    pub components: Vec<String>,
    pub architectures: Vec<String>,
    pub valid_until: Option<DateTime<Utc>>,
}

impl Release {
    pub fn parse(text: &str) -> Result<Release, ControlError> {
        let st = Stanza::parse_one(text)?;
        let opt = |k: &str| st.get(k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let words =
            |k: &str| -> Vec<String> { st.get(k).unwrap_or_default().split_whitespace().map(str::to_owned).collect() };
        let valid_until = match opt("Valid-Until") {
            None => None,
            Some(v) => Some(
                DateTime::parse_from_rfc2822(&v.replace("UTC", "+0000"))
                    .map_err(|e| ControlError::Field { field: "Valid-Until", reason: format!("{v:?}: {e}") })?
                    .with_timezone(&Utc),
            ),
        };
        Ok(Release {
            origin: st.require("Origin")?.to_owned(),
            codename: st.require("Codename")?.to_owned(),
            suite: opt("Suite"),
            version: opt("Version"),
            description: opt("Description"),
            components: words("Components")
                .into_iter()
                .map(|c| c.rsplit('/').next().unwrap_or_default().to_owned())
                .collect(),
            architectures: words("Architectures").into_iter().filter(|a| a != "all").collect(),
            valid_until,
        })
    }

    /// Whether this release is the one a Source names: its `Origin` and its `Codename` (the
    /// directory under `dists/` by its codename, as apt's `n=` pins name it; `unstable` is
    /// `sid`), and not past its `Valid-Until` when that is checked.
    pub fn matches(
        &self,
        origin: &str,
        codename: &str,
        check_valid_until: bool,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        if self.origin != origin {
            return Err(format!("its Origin is {:?}, not {origin:?}", self.origin));
        }
        if self.codename != codename {
            return Err(format!(
                "its Codename is {:?}, not {codename:?}; name the source by its codename ({}:{})",
                self.codename, self.origin, self.codename
            ));
        }
        if check_valid_until && let Some(until) = self.valid_until.filter(|u| *u < now) {
            return Err(format!("it expired at {until} (Valid-Until): the mirror is stale; use a current one"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECURITY: &str = "Origin: Debian\nLabel: Debian-Security\nSuite: stable-security\nVersion: 12\n\
        Codename: bookworm-security\nDate: Sat, 21 Nov 2026 10:00:00 UTC\nValid-Until: Sat, 28 Nov 2026 10:00:00 UTC\n\
        Architectures: amd64 arm64 i386 all\nComponents: updates/main updates/contrib\n\
        Description: Debian 12 - Security Updates\nSHA256:\n 0123 10 main/binary-amd64/Packages\n";

    #[test]
    fn reads_and_matches_a_release() {
        let r = Release::parse(SECURITY).unwrap();
        assert_eq!(r.components, ["main", "contrib"]);
        assert_eq!(r.architectures, ["amd64", "arm64", "i386"]);
        assert_eq!(r.version.as_deref(), Some("12"));
        let before = "2026-11-21T12:00:00Z".parse().unwrap();
        let after = "2026-12-01T00:00:00Z".parse().unwrap();
        assert!(r.matches("Debian", "bookworm-security", true, before).is_ok());
        assert!(r.matches("Debian", "stable-security", true, before).unwrap_err().contains("Debian:bookworm-security"));
        assert!(r.matches("Debian", "bookworm-security", true, after).unwrap_err().contains("Valid-Until"));
        assert!(r.matches("Debian", "bookworm-security", false, after).is_ok());
        assert!(r.matches("Ubuntu", "bookworm-security", true, before).unwrap_err().contains("Origin"));
        assert!(r.matches("Debian", "trixie", true, before).unwrap_err().contains("Codename"));
        assert!(Release::parse("Label: x\n").unwrap_err().to_string().contains("Origin"));
        let bad = SECURITY.replace("Sat, 28 Nov 2026 10:00:00 UTC", "soon");
        assert!(Release::parse(&bad).unwrap_err().to_string().contains("Valid-Until"));
    }
}
