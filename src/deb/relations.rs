//! Values an uploader may put into a build's environment or command line, checked against
//! dpkg's grammar and kept in canonical form: a relation list (`add-depends`),
//! `DEB_BUILD_OPTIONS` and `DEB_BUILD_PROFILES`. What passes holds only the characters that
//! grammar allows: no quotes, no `$`, no `;`, no newline.

use super::names::{Arch, PackageName};
use super::version::Version;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {why}")]
pub struct RelationError {
    pub what: &'static str,
    pub value: String,
    pub why: String,
}

fn err(what: &'static str, value: &str, why: impl Into<String>) -> RelationError {
    RelationError { what, value: value.chars().take(200).collect(), why: why.into() }
}

/// Longest value accepted.
const MAX: usize = 4096;

fn profile_name_ok(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".+-".contains(&c))
}

fn arch_token_ok(a: &str) -> bool {
    let a = a.strip_prefix('!').unwrap_or(a);
    a.parse::<Arch>().is_ok() || a == "any"
}

/// A dependency relation list (`foo (>= 1.0) [amd64] <!nocheck>, bar | baz`), as dpkg writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Relations(String);

impl Relations {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Each comma-separated relation, canonical (`foo (>= 1.0)`).
    pub fn items(&self) -> impl Iterator<Item = &str> {
        self.0.split(", ").filter(|s| !s.is_empty())
    }
}

impl FromStr for Relations {
    type Err = RelationError;
    fn from_str(s: &str) -> Result<Relations, RelationError> {
        const WHAT: &str = "relation list";
        if s.len() > MAX {
            return Err(err(WHAT, s, format!("longer than {MAX} bytes")));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(err(WHAT, s, "it holds control characters (a newline?)"));
        }
        let parsed: debian_control::lossy::Relations = s.parse().map_err(|e: String| err(WHAT, s, e))?;
        for alt in parsed.iter() {
            for r in alt {
                r.name.parse::<PackageName>().map_err(|e| err(WHAT, s, e.to_string()))?;
                if let Some(q) = &r.archqual
                    && !(q == "any" || q == "native" || q.parse::<Arch>().is_ok())
                {
                    return Err(err(WHAT, s, format!("architecture qualifier {q:?}")));
                }
                if let Some((_, v)) = &r.version {
                    v.to_string().parse::<Version>().map_err(|e| err(WHAT, s, e.to_string()))?;
                }
                if let Some(archs) = &r.architectures
                    && let Some(a) = archs.iter().find(|a| !arch_token_ok(a))
                {
                    return Err(err(WHAT, s, format!("architecture {a:?}")));
                }
                for group in &r.profiles {
                    for p in group {
                        let name = match p {
                            debian_control::relations::BuildProfile::Enabled(n) => n,
                            debian_control::relations::BuildProfile::Disabled(n) => n,
                        };
                        if !profile_name_ok(name) {
                            return Err(err(WHAT, s, format!("build profile {name:?}")));
                        }
                    }
                }
            }
        }
        let canonical = parsed.to_string();
        // What the grammar allows, and nothing else.
        if let Some(c) = canonical.chars().find(|c| !(c.is_ascii_alphanumeric() || " .+-~:,|()<>=![]".contains(*c))) {
            return Err(err(WHAT, s, format!("character {c:?}")));
        }
        Ok(Relations(canonical))
    }
}

/// A space-separated list of tokens of one grammar: `DEB_BUILD_OPTIONS` or `DEB_BUILD_PROFILES`.
macro_rules! token_list {
    ($(#[$m:meta])* $name:ident, $what:literal, $rule:literal, $ok:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn tokens(&self) -> impl Iterator<Item = &str> {
                self.0.split(' ').filter(|t| !t.is_empty())
            }
        }

        impl FromStr for $name {
            type Err = RelationError;
            fn from_str(s: &str) -> Result<$name, RelationError> {
                if s.len() > MAX {
                    return Err(err($what, s, format!("longer than {MAX} bytes")));
                }
                let ok: fn(&str) -> bool = $ok;
                let tokens: Vec<&str> = s.split_ascii_whitespace().collect();
                if let Some(bad) = tokens.iter().find(|t| !ok(t)) {
                    return Err(err($what, s, format!("{bad:?}: {}", $rule)));
                }
                if s.chars().any(|c| c.is_control() && c != '\t') {
                    return Err(err($what, s, "it holds control characters"));
                }
                Ok($name(tokens.join(" ")))
            }
        }

        impl TryFrom<String> for $name {
            type Error = RelationError;
            fn try_from(s: String) -> Result<$name, RelationError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

token_list!(
    /// `DEB_BUILD_OPTIONS`: `nocheck parallel=4`.
    BuildOptions,
    "DEB_BUILD_OPTIONS",
    "use name or name=value of letters, digits and '_-.,+:'",
    |t| {
        let (name, value) = t.split_once('=').unwrap_or((t, ""));
        !name.is_empty()
            && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-".contains(&c))
            && value.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-.,+:".contains(&c))
    }
);
token_list!(
    /// `DEB_BUILD_PROFILES`: `nocheck nodoc`.
    BuildProfiles,
    "DEB_BUILD_PROFILES",
    "use profile names of lower-case letters, digits and '.+-'",
    profile_name_ok
);

impl TryFrom<String> for Relations {
    type Error = RelationError;
    fn try_from(s: String) -> Result<Relations, RelationError> {
        s.parse()
    }
}

impl From<Relations> for String {
    fn from(r: Relations) -> String {
        r.0
    }
}

impl fmt::Display for Relations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_are_canonical_and_refuse_what_is_not_dpkg() {
        let r: Relations = "libfoo-dev (>= 1.0) [amd64 !i386] <!nocheck>,bar|baz:any".parse().unwrap();
        assert_eq!(r.as_str(), "libfoo-dev (>= 1.0) [amd64 !i386] <!nocheck>, bar | baz:any");
        assert_eq!(r.items().collect::<Vec<_>>(), ["libfoo-dev (>= 1.0) [amd64 !i386] <!nocheck>", "bar | baz:any"]);
        for bad in [
            "foo; rm -rf /",
            "foo $(id)",
            "foo\nbar",
            "foo`id`",
            "foo'",
            "Foo",
            "foo (>= $x)",
            "foo [am\"d64]",
            "foo <no'check>",
        ] {
            assert!(bad.parse::<Relations>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn build_options_and_profiles() {
        let o: BuildOptions = " nocheck  parallel=4 ".parse().unwrap();
        assert_eq!(o.as_str(), "nocheck parallel=4");
        assert_eq!(o.tokens().collect::<Vec<_>>(), ["nocheck", "parallel=4"]);
        for bad in ["noc'heck", "a=$(id)", "x;y", "a=b c=\"d\"", "a\nb"] {
            assert!(bad.parse::<BuildOptions>().is_err(), "{bad:?}");
        }
        let p: BuildProfiles = "nocheck nodoc pkg.foo.bar".parse().unwrap();
        assert_eq!(p.tokens().count(), 3);
        assert!("no=check".parse::<BuildProfiles>().is_err());
        assert!("NODOC".parse::<BuildProfiles>().is_err());
    }
}
