//! Upload options: changelog lines of the top entry, `* MINI_BUILDD_OPTION: key[arch]=value`
//! (mini-buildd `PY/changes.py: Upload.Options`), each parsed into its type at once. Pure code.

use super::QaMode;
use crate::deb::Dist;
use crate::deb::relations::{BuildOptions, BuildProfiles, Relations};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("upload option {0:?} is unknown; known: {known}", known = KEYS.join(", "))]
    Unknown(String),
    #[error("upload option {0} is given twice; give it once")]
    Twice(String),
    #[error("upload option {key}: {value:?} is not valid: {why}")]
    Value { key: String, value: String, why: String },
    #[error("upload option line {0:?} is malformed; write `* MINI_BUILDD_OPTION: key[arch]=value`")]
    Malformed(String),
}

const KEYS: &[&str] = &[
    "lintian-mode",
    "piuparts-mode",
    "autopkgtest-mode",
    "internal-apt-priority",
    "auto-ports",
    "deb-build-options",
    "deb-build-profiles",
    "add-depends",
];
/// One option's value, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Mode(QaMode),
    Priority(i32),
    Dists(Vec<Dist>),
    BuildOptions(BuildOptions),
    Profiles(BuildProfiles),
    Relations(Relations),
}

/// Parsed options: `(key, arch)` → value; `arch` is empty for options that apply to every architecture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadOptions {
    values: BTreeMap<(String, String), Value>,
}

impl UploadOptions {
    /// Parse the `Changes:` field of a `.changes` (the top changelog entry).
    pub fn parse(changes_field: &str) -> Result<UploadOptions, OptionError> {
        let mut out = UploadOptions::default();
        for line in changes_field.lines() {
            let l = line.trim().trim_start_matches('*').trim();
            if let Some(rest) = l.strip_prefix("MINI_BUILDD_OPTION:") {
                let (k, v) = rest.split_once('=').ok_or_else(|| OptionError::Malformed(line.trim().to_owned()))?;
                out.set(k.trim(), v.trim())?;
            } else if let Some(rest) = l.strip_prefix("MINI_BUILDD:") {
                // Ancient syntax: `MINI_BUILDD: AUTO_BACKPORTS: a,b` and `MINI_BUILDD: BACKPORT_MODE`.
                let rest = rest.trim();
                if let Some(dists) = rest.strip_prefix("AUTO_BACKPORTS:") {
                    out.set("auto-ports", dists.trim())?;
                } else if rest.starts_with("BACKPORT_MODE") {
                    out.set("lintian-mode", "ignore")?;
                }
            }
        }
        Ok(out)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), OptionError> {
        let (name, arch) = match key.split_once('[') {
            Some((n, a)) => {
                let a = a.strip_suffix(']').ok_or_else(|| OptionError::Malformed(key.to_owned()))?;
                a.parse::<crate::deb::Arch>().map_err(|_| OptionError::Malformed(key.to_owned()))?;
                (n, a)
            }
            None => (key, ""),
        };
        // Deprecated keys, mapped as mini-buildd maps them.
        let (name, value) = match (name, value) {
            ("ignore-lintian", v) => ("lintian-mode", if bool_of(name, v)? { "ignore" } else { "errfail" }),
            ("run-lintian", v) => ("lintian-mode", if bool_of(name, v)? { "errfail" } else { "disabled" }),
            _ => (name, value),
        };
        if !KEYS.contains(&name) {
            return Err(OptionError::Unknown(name.to_owned()));
        }
        let bad =
            |why: String| OptionError::Value { key: name.to_owned(), value: value.chars().take(200).collect(), why };
        let typed = match name {
            "lintian-mode" | "piuparts-mode" | "autopkgtest-mode" => {
                Value::Mode(value.parse().map_err(|_| bad("use disabled, ignore, errfail or warnfail".into()))?)
            }
            "internal-apt-priority" => Value::Priority(
                value
                    .parse()
                    .ok()
                    .filter(|p: &i32| (-32768..=32767).contains(p))
                    .ok_or_else(|| bad("give an integer apt takes, -32768…32767".into()))?,
            ),
            "auto-ports" => Value::Dists(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(|d| d.parse::<Dist>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad("give distributions separated by commas".into()))?,
            ),
            "deb-build-options" => {
                Value::BuildOptions(value.parse().map_err(|e: crate::deb::relations::RelationError| bad(e.why))?)
            }
            "deb-build-profiles" => {
                Value::Profiles(value.parse().map_err(|e: crate::deb::relations::RelationError| bad(e.why))?)
            }
            "add-depends" => {
                Value::Relations(value.parse().map_err(|e: crate::deb::relations::RelationError| bad(e.why))?)
            }
            _ => return Err(OptionError::Unknown(name.to_owned())),
        };
        let k = (name.to_owned(), arch.to_owned());
        if self.values.contains_key(&k) {
            let shown = if arch.is_empty() { name.to_owned() } else { format!("{name}[{arch}]") };
            return Err(OptionError::Twice(shown));
        }
        self.values.insert(k, typed);
        Ok(())
    }

    /// The value for an architecture: its own, else the one for every architecture.
    pub fn get(&self, key: &str, arch: &str) -> Option<&Value> {
        self.values
            .get(&(key.to_owned(), arch.to_owned()))
            .or_else(|| self.values.get(&(key.to_owned(), String::new())))
    }

    /// A QA mode (`lintian-mode`, …) for an architecture.
    pub fn mode(&self, key: &str, arch: &str) -> Option<QaMode> {
        match self.get(key, arch) {
            Some(Value::Mode(m)) => Some(*m),
            _ => None,
        }
    }

    pub fn apt_priority(&self, arch: &str) -> Option<i32> {
        match self.get("internal-apt-priority", arch) {
            Some(Value::Priority(p)) => Some(*p),
            _ => None,
        }
    }

    pub fn build_options(&self, arch: &str) -> Option<&BuildOptions> {
        match self.get("deb-build-options", arch) {
            Some(Value::BuildOptions(o)) => Some(o),
            _ => None,
        }
    }

    pub fn build_profiles(&self, arch: &str) -> Option<&BuildProfiles> {
        match self.get("deb-build-profiles", arch) {
            Some(Value::Profiles(o)) => Some(o),
            _ => None,
        }
    }

    pub fn add_depends(&self, arch: &str) -> Option<&Relations> {
        match self.get("add-depends", arch) {
            Some(Value::Relations(r)) => Some(r),
            _ => None,
        }
    }

    pub fn auto_ports(&self) -> &[Dist] {
        match self.get("auto-ports", "") {
            Some(Value::Dists(d)) => d,
            _ => &[],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

fn bool_of(key: &str, v: &str) -> Result<bool, OptionError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(OptionError::Value { key: key.to_owned(), value: v.to_owned(), why: "give true or false".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_per_arch() {
        let text = "\n hello (1.0-1) unstable; urgency=medium\n .\n   * MINI_BUILDD_OPTION: lintian-mode=ignore\n   \
                    * MINI_BUILDD_OPTION: deb-build-options[i386]=nocheck\n   * MINI_BUILDD_OPTION: auto-ports=bookworm-test-unstable\n";
        let o = UploadOptions::parse(text).unwrap();
        assert_eq!(o.mode("lintian-mode", "amd64"), Some(QaMode::Ignore));
        assert_eq!(o.build_options("i386").map(|b| b.as_str()), Some("nocheck"));
        assert_eq!(o.build_options("amd64"), None);
        assert_eq!(o.auto_ports(), ["bookworm-test-unstable".parse::<Dist>().unwrap()]);
    }

    #[test]
    fn deprecated_and_ancient_keys_map() {
        let o = UploadOptions::parse("* MINI_BUILDD_OPTION: ignore-lintian=true").unwrap();
        assert_eq!(o.mode("lintian-mode", "amd64"), Some(QaMode::Ignore));
        let o = UploadOptions::parse("* MINI_BUILDD_OPTION: run-lintian=false").unwrap();
        assert_eq!(o.mode("lintian-mode", "amd64"), Some(QaMode::Disabled));
        let o = UploadOptions::parse("* MINI_BUILDD: AUTO_BACKPORTS: bookworm-test-unstable").unwrap();
        assert_eq!(o.auto_ports().len(), 1);
        let o = UploadOptions::parse("* MINI_BUILDD: BACKPORT_MODE").unwrap();
        assert_eq!(o.mode("lintian-mode", ""), Some(QaMode::Ignore));
    }

    #[test]
    fn refuses_unknown_twice_and_bad_values() {
        assert!(matches!(UploadOptions::parse("* MINI_BUILDD_OPTION: nope=1"), Err(OptionError::Unknown(_))));
        let twice = "* MINI_BUILDD_OPTION: lintian-mode=ignore\n* MINI_BUILDD_OPTION: lintian-mode=errfail";
        assert!(matches!(UploadOptions::parse(twice), Err(OptionError::Twice(_))));
        let per_arch = "* MINI_BUILDD_OPTION: lintian-mode=ignore\n* MINI_BUILDD_OPTION: lintian-mode[i386]=errfail";
        assert!(UploadOptions::parse(per_arch).is_ok());
        assert!(matches!(
            UploadOptions::parse("* MINI_BUILDD_OPTION: lintian-mode=loud"),
            Err(OptionError::Value { .. })
        ));
        assert!(matches!(
            UploadOptions::parse("* MINI_BUILDD_OPTION: internal-apt-priority=high"),
            Err(OptionError::Value { .. })
        ));
        assert!(matches!(UploadOptions::parse("* MINI_BUILDD_OPTION: lintian-mode"), Err(OptionError::Malformed(_))));
        assert!(UploadOptions::parse("* just a normal changelog line").unwrap().is_empty());
        // What reaches a build's command line is typed: no shell or perl text gets through.
        for bad in [
            "* MINI_BUILDD_OPTION: add-depends=foo; id",
            "* MINI_BUILDD_OPTION: add-depends=foo $(id)",
            "* MINI_BUILDD_OPTION: deb-build-options=nocheck';system(\"id\");'",
            "* MINI_BUILDD_OPTION: deb-build-profiles=a`id`",
        ] {
            assert!(matches!(UploadOptions::parse(bad), Err(OptionError::Value { .. })), "{bad}");
        }
        let o = UploadOptions::parse("* MINI_BUILDD_OPTION: add-depends=libfoo-dev (>= 1.0),bar").unwrap();
        assert_eq!(o.add_depends("amd64").map(|r| r.as_str()), Some("libfoo-dev (>= 1.0), bar"));
    }
}
