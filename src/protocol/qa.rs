//! The QA checks of a build (lintian, piuparts, autopkgtest) and mini-buildd's modes for them.

use std::fmt;
use std::str::FromStr;

/// How a QA check counts (mini-buildd's `*-mode` upload options and Distribution fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QaMode {
    /// Not run.
    #[default]
    Disabled,
    /// Run and reported; never fails the build (buildbay runs it after the result).
    Ignore,
    /// Fails the build when the check fails.
    Errfail,
    /// Fails the build when the check fails or warns.
    Warnfail,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid QA mode {0:?}: use disabled, ignore, errfail or warnfail")]
pub struct QaModeError(pub String);

impl QaMode {
    pub const ALL: [QaMode; 4] = [QaMode::Disabled, QaMode::Ignore, QaMode::Errfail, QaMode::Warnfail];

    pub fn as_str(self) -> &'static str {
        match self {
            QaMode::Disabled => "disabled",
            QaMode::Ignore => "ignore",
            QaMode::Errfail => "errfail",
            QaMode::Warnfail => "warnfail",
        }
    }

    /// Whether a check's reported result lets the build pass (mini-buildd's rule): `pass` and
    /// `info` always, `warn` and `no tests` unless the mode is warnfail; anything else, no
    /// result at all included, fails a gating mode.
    pub fn passes(self, result: &str) -> bool {
        match self {
            QaMode::Disabled | QaMode::Ignore => true,
            QaMode::Errfail => matches!(result, "pass" | "info" | "warn" | "no tests"),
            QaMode::Warnfail => matches!(result, "pass" | "info"),
        }
    }

    /// Whether the check gates the build (runs before its result).
    pub fn gates(self) -> bool {
        matches!(self, QaMode::Errfail | QaMode::Warnfail)
    }

    /// lintian's `--fail-on` for a gating mode.
    pub fn lintian_fail_on(self) -> Option<&'static str> {
        match self {
            QaMode::Errfail => Some("error"),
            QaMode::Warnfail => Some("error,warning"),
            QaMode::Disabled | QaMode::Ignore => None,
        }
    }
}

impl FromStr for QaMode {
    type Err = QaModeError;
    fn from_str(s: &str) -> Result<QaMode, QaModeError> {
        // mini-buildd writes its modes in capitals (`ERRFAIL`) and reads any case.
        QaMode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| QaModeError(s.chars().take(64).collect()))
    }
}

impl fmt::Display for QaMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The QA checks, with their field names in build requests and results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Lintian,
    Piuparts,
    Autopkgtest,
}

impl Check {
    pub const ALL: [Check; 3] = [Check::Lintian, Check::Piuparts, Check::Autopkgtest];

    /// `Lintian`, as in `X-Mini-Buildd-Lintian-Mode` and `X-Mini-Buildd-Sbuild-Lintian`.
    pub fn field(self) -> &'static str {
        match self {
            Check::Lintian => "Lintian",
            Check::Piuparts => "Piuparts",
            Check::Autopkgtest => "Autopkgtest",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert!(QaMode::Disabled.passes("fail"));
        assert!(QaMode::Ignore.passes("fail"));
        assert!(!QaMode::Errfail.passes("fail"));
        assert!(QaMode::Errfail.passes("warn"));
        assert!(!QaMode::Warnfail.passes("warn"));
        assert!(QaMode::Warnfail.passes("pass"));
        assert!(!QaMode::Errfail.passes(""), "a gating check that reported nothing fails");
        assert!(!QaMode::Errfail.passes("error"));
        assert!(QaMode::Errfail.passes("no tests") && !QaMode::Warnfail.passes("no tests"));
        assert_eq!(QaMode::Warnfail.lintian_fail_on(), Some("error,warning"));
        assert_eq!(QaMode::Ignore.lintian_fail_on(), None);
        for m in QaMode::ALL {
            assert_eq!(m.as_str().parse::<QaMode>().unwrap(), m);
        }
        assert_eq!("ERRFAIL".parse::<QaMode>().unwrap(), QaMode::Errfail, "mini-buildd's spelling");
        assert!("loud".parse::<QaMode>().is_err());
        assert!("errfail ".parse::<QaMode>().is_err());
    }
}
