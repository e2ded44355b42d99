//! A distribution's build settings (mini-buildd's Distribution fields of the same names), and
//! the typed values they and a build request carry: a check tool's extra options, sbuild's
//! config and setup block names, the chroot setup script, the `.sbuildrc` snippet. Pure.
//!
//! Every value is checked here, once: an option is one argument of the tool (never shell
//! text, never a path), a block is one of the names a builder knows.

use super::{QaMode, Resolver};
use crate::deb::relations::{BuildOptions, BuildProfiles, Relations};
use std::fmt;
use std::str::FromStr;

/// Why a setting is refused (final: fix the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?}: {why}")]
pub struct SettingError {
    pub what: &'static str,
    pub value: String,
    pub why: String,
}

fn err(what: &'static str, value: &str, why: impl Into<String>) -> SettingError {
    SettingError { what, value: value.chars().take(80).collect(), why: why.into() }
}

/// Bytes a script or snippet may have.
pub const MAX_SCRIPT: usize = 64 * 1024;
const MAX_OPTIONS: usize = 1024;

/// Extra options of a check tool (`lintian_extra_options`, `piuparts_extra_options`): words,
/// each one option (`-I`, `--info`, `--tag-display-limit=0`), given to the tool as one
/// argument each, and each one of the options the tool allows ([`LINTIAN_OPTIONS`],
/// [`PIUPARTS_OPTIONS`]): none loads code or configuration from a file, none ends the run
/// early (`--help`, `--version` would pass a gate).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ToolOptions(Vec<String>);

impl ToolOptions {
    pub fn words(&self) -> &[String] {
        &self.0
    }

    /// Each word is an option of `allowed` (by its name before `=`).
    pub fn allowed_by(&self, tool: &'static str, allowed: &[&str]) -> Result<(), SettingError> {
        for w in &self.0 {
            let name = w.split_once('=').map_or(w.as_str(), |(n, _)| n);
            if !allowed.contains(&name) {
                return Err(err(
                    tool,
                    w,
                    format!("not an option buildbay passes on; these are: {}", allowed.join(" ")),
                ));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for ToolOptions {
    type Err = SettingError;
    fn from_str(s: &str) -> Result<ToolOptions, SettingError> {
        const WHAT: &str = "extra options";
        if s.len() > MAX_OPTIONS {
            return Err(err(WHAT, s, format!("longer than {MAX_OPTIONS} bytes")));
        }
        let mut words = Vec::new();
        for w in s.split_ascii_whitespace() {
            if !w.starts_with('-') {
                return Err(err(WHAT, s, format!("{w:?} is not an option (each word starts with '-')")));
            }
            if let Some(c) = w.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_=,.:+".contains(*c))) {
                return Err(err(WHAT, s, format!("{w:?} holds {c:?} (options are letters, digits and -_=,.:+)")));
            }
            words.push(w.to_owned());
        }
        if s.chars().any(|c| c.is_control() && c != '\t') {
            return Err(err(WHAT, s, "it holds control characters"));
        }
        Ok(ToolOptions(words))
    }
}

impl TryFrom<String> for ToolOptions {
    type Error = SettingError;
    fn try_from(s: String) -> Result<ToolOptions, SettingError> {
        s.parse()
    }
}

impl From<ToolOptions> for String {
    fn from(o: ToolOptions) -> String {
        o.to_string()
    }
}

impl fmt::Display for ToolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// lintian's options a distribution or a request may add: what lintian reports and how.
pub const LINTIAN_OPTIONS: [&str; 19] = [
    "-i",
    "--info",
    "-I",
    "--display-info",
    "-E",
    "--display-experimental",
    "--pedantic",
    "-L",
    "--display-level",
    "--suppress-tags",
    "--tag-display-limit",
    "--no-tag-display-limit",
    "--show-overrides",
    "--hide-overrides",
    "--profile",
    "-q",
    "--quiet",
    "-v",
    "--verbose",
];

/// piuparts' options a distribution or a request may add: which warnings fail and which tests
/// run.
pub const PIUPARTS_OPTIONS: [&str; 10] = [
    "--warn-on-others",
    "--warn-on-leftovers-after-purge",
    "--warn-on-debsums-errors",
    "--skip-minimize",
    "--no-upgrade-test",
    "--skip-logrotatefiles-test",
    "--fail-if-inadequate",
    "--pedantic-purge-test",
    "--install-recommends",
    "--dpkg-force-confdef",
];

/// sbuild's config blocks (mini-buildd's `sbuild_config_blocks`): what the `.sbuildrc` sets.
pub const CONFIG_BLOCKS: [(&str, &str); 2] = [
    ("set-default-path", "set $path to sbuild's default, so later blocks may add to it"),
    ("ccache", "put ccache first in $path, its cache kept per build slot and chroot"),
];

/// The setup blocks (mini-buildd's `sbuild_setup_blocks`): what runs as root in the build's
/// chroot before the build dependencies are installed.
pub const SETUP_BLOCKS: [(&str, &str); 11] = [
    ("apt-setup", "the request's apt keys, sources and preferences"),
    ("apt-update", "apt-get update, retried"),
    ("ccache", "install ccache (with the ccache config block, builds use it)"),
    ("eatmydata", "install eatmydata and preload it (dpkg and the build skip fsync)"),
    ("show-sbuildrc", "print the build's .sbuildrc into the log"),
    ("apt-no-check-valid-until", "apt: Acquire::Check-Valid-Until false"),
    ("apt-allow-unauthenticated", "apt: APT::Get::AllowUnauthenticated true"),
    ("apt-force-yes", "apt: APT::Get::Force-Yes true"),
    ("apt-no-cache", "apt: Acquire::http::No-Cache true"),
    ("apt-no-pipelining", "apt: Acquire::http::Pipeline-Depth 0"),
    ("apt-clear", "remove apt's lists and cache first"),
];

/// A list of block names of one kind, in the order they apply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Blocks(Vec<String>);

impl Blocks {
    /// mini-buildd's default config blocks.
    pub fn default_config() -> Blocks {
        Blocks(vec!["set-default-path".into(), "ccache".into()])
    }

    /// mini-buildd's default setup blocks.
    pub fn default_setup() -> Blocks {
        Blocks(["apt-setup", "apt-update", "ccache", "eatmydata"].map(String::from).to_vec())
    }

    /// Names as a request carries them: any well-formed name (a builder skips those it does
    /// not know, and says so in the log).
    pub fn parse_any(s: &str) -> Result<Blocks, SettingError> {
        let mut out = Vec::new();
        for b in s.split_whitespace() {
            if b.len() > 64 || !b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                return Err(err("block name", b, "letters, digits and '-', at most 64"));
            }
            out.push(b.to_owned());
        }
        Ok(Blocks(out))
    }

    /// Names as a distribution is configured with: each one a block of `known`.
    pub fn parse_known(s: &str, known: &[(&str, &str)]) -> Result<Blocks, SettingError> {
        let b = Blocks::parse_any(s)?;
        if let Some(bad) = b.0.iter().find(|n| !known.iter().any(|(k, _)| k == n)) {
            let names: Vec<&str> = known.iter().map(|(k, _)| *k).collect();
            return Err(err("block", bad, format!("unknown; the blocks are {}", names.join(", "))));
        }
        Ok(b)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }

    /// The names, in order.
    pub fn words(&self) -> &[String] {
        &self.0
    }
}

impl FromStr for Blocks {
    type Err = SettingError;
    fn from_str(s: &str) -> Result<Blocks, SettingError> {
        Blocks::parse_any(s)
    }
}

impl TryFrom<String> for Blocks {
    type Error = SettingError;
    fn try_from(s: String) -> Result<Blocks, SettingError> {
        Blocks::parse_any(&s)
    }
}

impl From<Blocks> for String {
    fn from(b: Blocks) -> String {
        b.to_string()
    }
}

impl fmt::Display for Blocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// A distribution's chroot setup script (mini-buildd's `chroot_setup_script`): empty, or a
/// script with its interpreter line, at most 64 KiB, run as root in the build's chroot (the
/// nspawn backend: as the root of the machine's user namespace) after the setup blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SetupScript(String);

impl SetupScript {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

fn text_ok(what: &'static str, s: &str) -> Result<(), SettingError> {
    if s.len() > MAX_SCRIPT {
        return Err(err(what, &s[..0], format!("longer than {MAX_SCRIPT} bytes")));
    }
    if s.contains('\0') {
        return Err(err(what, "", "it holds a NUL byte"));
    }
    Ok(())
}

impl TryFrom<String> for SetupScript {
    type Error = SettingError;
    fn try_from(s: String) -> Result<SetupScript, SettingError> {
        text_ok("chroot setup script", &s)?;
        let s = s.replace("\r\n", "\n");
        if !s.trim().is_empty() && !s.starts_with("#!/") {
            return Err(err("chroot setup script", &s, "starts with its interpreter line, like #!/bin/sh"));
        }
        Ok(SetupScript(if s.trim().is_empty() { String::new() } else { s }))
    }
}

impl From<SetupScript> for String {
    fn from(s: SetupScript) -> String {
        s.0
    }
}

/// Perl lines added to the `.sbuildrc` of an sbuild build (mini-buildd's `sbuildrc_snippet`;
/// `%LIBDIR%` stands for the build slot's persistent directory of the chroot). At most 64 KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SbuildrcSnippet(String);

impl SbuildrcSnippet {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl TryFrom<String> for SbuildrcSnippet {
    type Error = SettingError;
    fn try_from(s: String) -> Result<SbuildrcSnippet, SettingError> {
        text_ok("sbuildrc snippet", &s)?;
        Ok(SbuildrcSnippet(s.replace("\r\n", "\n")))
    }
}

impl From<SbuildrcSnippet> for String {
    fn from(s: SbuildrcSnippet) -> String {
        s.0
    }
}

fn errfail() -> QaMode {
    QaMode::Errfail
}
fn info() -> ToolOptions {
    ToolOptions(vec!["--info".into()])
}
fn sudo() -> String {
    "sudo".into()
}
fn one() -> i32 {
    1
}

/// A distribution's build settings, with mini-buildd's field names and defaults (but the
/// resolver: apt, see docs/admin.md). Upload options override the modes, the apt priority,
/// `DEB_BUILD_OPTIONS`, `DEB_BUILD_PROFILES` and `Add-Depends`, as mini-buildd's do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildSettings {
    #[serde(default)]
    pub build_dep_resolver: Resolver,
    #[serde(default = "errfail")]
    pub lintian_mode: QaMode,
    #[serde(default = "info")]
    pub lintian_extra_options: ToolOptions,
    #[serde(default)]
    pub piuparts_mode: QaMode,
    #[serde(default)]
    pub piuparts_extra_options: ToolOptions,
    /// mini-buildd runs piuparts through this command (`sudo`); kept so that a mini-buildd
    /// configuration imports, but buildbay never uses it: piuparts runs as the root of a
    /// build machine's user namespace.
    #[serde(default = "sudo")]
    pub piuparts_root_arg: String,
    #[serde(default)]
    pub autopkgtest_mode: QaMode,
    /// The pin of this instance's own repository in the builds' apt (1: only what a build
    /// needs from it; 500: prefer its packages).
    #[serde(default = "one")]
    pub internal_apt_priority: i32,
    #[serde(default)]
    pub deb_build_options: Option<BuildOptions>,
    #[serde(default)]
    pub deb_build_profiles: Option<BuildProfiles>,
    #[serde(default)]
    pub add_depends: Option<Relations>,
    #[serde(default = "Blocks::default_config")]
    pub sbuild_config_blocks: Blocks,
    #[serde(default = "Blocks::default_setup")]
    pub sbuild_setup_blocks: Blocks,
    #[serde(default)]
    pub chroot_setup_script: SetupScript,
    #[serde(default)]
    pub sbuildrc_snippet: SbuildrcSnippet,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            build_dep_resolver: Resolver::default(),
            lintian_mode: errfail(),
            lintian_extra_options: info(),
            piuparts_mode: QaMode::Disabled,
            piuparts_extra_options: ToolOptions::default(),
            piuparts_root_arg: sudo(),
            autopkgtest_mode: QaMode::Disabled,
            internal_apt_priority: one(),
            deb_build_options: None,
            deb_build_profiles: None,
            add_depends: None,
            sbuild_config_blocks: Blocks::default_config(),
            sbuild_setup_blocks: Blocks::default_setup(),
            chroot_setup_script: SetupScript::default(),
            sbuildrc_snippet: SbuildrcSnippet::default(),
        }
    }
}

impl BuildSettings {
    /// What a configured distribution may not hold, beyond each value's own type: blocks of
    /// the right kind, a priority apt takes, a root command of one word.
    pub fn check(&self) -> Result<(), SettingError> {
        self.lintian_extra_options.allowed_by("lintian_extra_options", &LINTIAN_OPTIONS)?;
        self.piuparts_extra_options.allowed_by("piuparts_extra_options", &PIUPARTS_OPTIONS)?;
        Blocks::parse_known(&self.sbuild_config_blocks.to_string(), &CONFIG_BLOCKS)?;
        Blocks::parse_known(&self.sbuild_setup_blocks.to_string(), &SETUP_BLOCKS)?;
        if !(-32768..=32767).contains(&self.internal_apt_priority) {
            return Err(err(
                "internal_apt_priority",
                &self.internal_apt_priority.to_string(),
                "apt takes -32768…32767",
            ));
        }
        if self.piuparts_root_arg.len() > 64
            || !self.piuparts_root_arg.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_/".contains(&c))
        {
            return Err(err("piuparts_root_arg", &self.piuparts_root_arg, "one command name"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_tool_options_are_refused() {
        for bad in [
            "--include-dir=/tmp/evil",
            "--cfg /etc/shadow",
            "--info; id",
            "--x=$(id)",
            "`id`",
            "--a\n--b",
            "--x='a b'",
            "-I *",
            "--profile=../../x",
        ] {
            assert!(bad.parse::<ToolOptions>().is_err(), "{bad:?} accepted");
        }
        let ok: ToolOptions = "--info  --tag-display-limit=0 -I --suppress-tags=a,b".parse().unwrap();
        assert_eq!(ok.words(), ["--info", "--tag-display-limit=0", "-I", "--suppress-tags=a,b"]);
        assert_eq!(ok.to_string(), "--info --tag-display-limit=0 -I --suppress-tags=a,b");
        assert!("".parse::<ToolOptions>().unwrap().is_empty());
        assert!("-x ".repeat(400).parse::<ToolOptions>().is_err(), "bounded");
        // Well-formed but not allowed: loads code from a relative path, or ends lintian early.
        for bad in ["--include-dir=.", "--include-dir=hello-1.0", "--cfg=x", "--help", "-V", "--print-version"] {
            let o: ToolOptions = bad.parse().unwrap();
            assert!(o.allowed_by("lintian", &LINTIAN_OPTIONS).is_err(), "{bad} allowed");
        }
        assert!(ok.allowed_by("lintian", &LINTIAN_OPTIONS).is_ok());
        let p: ToolOptions = "--warn-on-others --bindmount=proc".parse().unwrap();
        assert!(p.allowed_by("piuparts", &PIUPARTS_OPTIONS).is_err());
    }

    #[test]
    fn blocks_are_known_names() {
        assert!(Blocks::parse_known("apt-setup apt-update eatmydata", &SETUP_BLOCKS).is_ok());
        let e = Blocks::parse_known("apt-setup rm-rf", &SETUP_BLOCKS).unwrap_err();
        assert!(e.to_string().contains("unknown") && e.to_string().contains("apt-update"), "{e}");
        assert!(Blocks::parse_known("apt-setup", &CONFIG_BLOCKS).is_err(), "a setup block is no config block");
        assert!(Blocks::parse_any("apt-setup $(id)").is_err());
        assert!(Blocks::parse_any("../x").is_err());
        assert!(Blocks::parse_any("sun-java6-license").is_ok(), "a request may name any well-formed block");
    }

    #[test]
    fn scripts_need_an_interpreter_line_and_a_bound() {
        assert!(SetupScript::try_from("echo hi\n".to_owned()).is_err());
        assert!(SetupScript::try_from("#!/bin/sh\necho hi\n".to_owned()).is_ok());
        assert!(SetupScript::try_from("  \n".to_owned()).unwrap().is_empty());
        assert!(SetupScript::try_from(format!("#!/bin/sh\n{}", "#".repeat(MAX_SCRIPT))).is_err());
        assert!(SetupScript::try_from("#!/bin/sh\0".to_owned()).is_err());
        assert!(SbuildrcSnippet::try_from("$x = 1;\0".to_owned()).is_err());
    }

    #[test]
    fn settings_default_like_mini_buildd_and_parse_from_json() {
        let d: BuildSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(d, BuildSettings::default());
        assert_eq!(d.lintian_mode, QaMode::Errfail);
        assert_eq!(d.lintian_extra_options.to_string(), "--info");
        assert_eq!(d.sbuild_setup_blocks.to_string(), "apt-setup apt-update ccache eatmydata");
        let s: BuildSettings = serde_json::from_value(serde_json::json!({
            "build_dep_resolver": "aptitude", "autopkgtest_mode": "errfail", "deb_build_options": "nocheck parallel=2",
            "internal_apt_priority": 500, "chroot_setup_script": "#!/bin/sh\ntrue\n"
        }))
        .unwrap();
        assert_eq!(s.build_dep_resolver, Resolver::Aptitude);
        assert_eq!(s.deb_build_options.unwrap().to_string(), "nocheck parallel=2");
        for bad in [
            serde_json::json!({"lintian_extra_options": "--include-dir=/x"}),
            serde_json::json!({"deb_build_options": "nocheck $(id)"}),
            serde_json::json!({"chroot_setup_script": "rm -rf /"}),
            serde_json::json!({"build_dep_resolver": "internal"}),
        ] {
            assert!(serde_json::from_value::<BuildSettings>(bad.clone()).is_err(), "{bad}");
        }
        let s = BuildSettings { internal_apt_priority: 100_000, ..Default::default() };
        assert!(s.check().is_err());
        let blocks = Blocks::parse_any("apt-setup sun-java6-license").unwrap();
        let s = BuildSettings { sbuild_setup_blocks: blocks, ..Default::default() };
        assert!(s.check().is_err(), "an obsolete block is not configurable");
        let s = BuildSettings { piuparts_root_arg: "sudo -u x".into(), ..Default::default() };
        assert!(s.check().is_err());
    }
}
