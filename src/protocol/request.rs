//! The build request (mini-buildd §5.2 step 5): what a packager asks a builder to build, signed
//! by the packager. `<src>_<ver>_mini-buildd-buildrequest_<arch>.changes` plus its tar.

use super::{Blocks, BuildKey, ProtocolError, QaMode, ToolOptions, field_err, get, parse, xfield};
use crate::deb::relations::{BuildOptions, BuildProfiles, Relations};
use crate::deb::{Dist, FileEntry, FileName, Stanza};
use crate::gpg::{ArchiveKey, Cert};
use std::path::Path;

/// How a builder isolates a build. mini-buildd knows only sbuild; `nspawn` is buildbay's own and
/// travels in `X-Mini-Buildd-Build-Backend`, which mini-buildd ignores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// sbuild on the chroot's schroot overlay (mini-buildd's way).
    #[default]
    Sbuild,
    /// An ephemeral systemd-nspawn machine of the chroot image (debspawn's way).
    Nspawn,
}

/// What a build's unit does now: a build request is built, then (an sbuild build in a systemd
/// unit with piuparts or autopkgtest) checked in a unit of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    /// The build itself (its unit is `buildbay-build-….service`).
    #[default]
    Build,
    /// Its checks, in a unit of their own after the build's ended (`buildbay-check-….service`).
    Checks,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sbuild => "sbuild",
            Backend::Nspawn => "nspawn",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sbuild" => Ok(Backend::Sbuild),
            "nspawn" => Ok(Backend::Nspawn),
            other => Err(format!("unknown build backend {other:?}: use sbuild or nspawn")),
        }
    }
}

/// sbuild's build-dependency resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolver {
    /// apt, which considers only the first alternative of each dependency.
    #[default]
    Apt,
    /// aptitude, which considers every alternative.
    Aptitude,
}

impl Resolver {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolver::Apt => "apt",
            Resolver::Aptitude => "aptitude",
        }
    }
}

impl std::str::FromStr for Resolver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "apt" => Ok(Resolver::Apt),
            "aptitude" => Ok(Resolver::Aptitude),
            other => Err(format!("unknown build-dependency resolver {other:?}: use apt or aptitude")),
        }
    }
}

/// A check tool's extra options from a request: only options the tool allows.
fn tool_options(st: &Stanza, field: &'static str, allowed: &[&str]) -> Result<ToolOptions, ProtocolError> {
    let o: ToolOptions = parse(st, field)?.unwrap_or_default();
    o.allowed_by(field, allowed).map_err(|e| field_err(&xfield(field), e))?;
    Ok(o)
}

/// A build request, every field typed.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildRequest {
    pub key: BuildKey,
    pub distribution: Dist,
    /// Where the builder uploads the result (the packager's FTP incoming).
    pub upload_to: String,
    /// The packager's HTTP URL.
    pub packager: String,
    /// The HTTP URL of the builder it is for (mini-buildd's builder needs it to answer).
    pub builder: Option<String>,
    /// This architecture also builds the architecture-independent packages.
    pub arch_all: bool,
    pub resolver: Resolver,
    pub config_blocks: Blocks,
    pub setup_blocks: Blocks,
    pub deb_build_options: Option<BuildOptions>,
    pub deb_build_profiles: Option<BuildProfiles>,
    pub add_depends: Option<Relations>,
    pub lintian: QaMode,
    pub lintian_extra_options: ToolOptions,
    pub piuparts: QaMode,
    pub piuparts_extra_options: ToolOptions,
    pub autopkgtest: QaMode,
    pub backend: Backend,
    /// The build step may use the network (the nspawn backend cuts it off otherwise).
    pub network: bool,
    /// The tar with the source and the apt configuration (the one entry of `Files`).
    pub tar: FileEntry,
}

impl BuildRequest {
    /// `<src>_<ver>_mini-buildd-buildrequest_<arch>` (without `.changes`).
    pub fn base_name(key: &BuildKey) -> String {
        format!("{}_{}_mini-buildd-buildrequest_{}", key.source(), key.version().without_epoch(), key.arch)
    }

    pub fn changes_name(key: &BuildKey) -> String {
        format!("{}.changes", Self::base_name(key))
    }

    pub fn tar_name(key: &BuildKey) -> String {
        format!("{}.changes.tar", Self::base_name(key))
    }

    /// The architecture of a request file name, if it is one.
    pub fn arch_of(name: &str) -> Option<&str> {
        let stem = name.strip_suffix(".changes")?;
        let (rest, arch) = stem.rsplit_once('_')?;
        rest.ends_with("_mini-buildd-buildrequest").then_some(arch)
    }

    /// `<bkey>/<buildlog>`, as mini-buildd's `Buildlog` field.
    pub fn buildlog(&self) -> String {
        format!("{}/{}", self.key, self.key.buildlog_name())
    }

    /// The deb822 form (unsigned).
    pub fn to_stanza(&self) -> Stanza {
        let mut st = Stanza::new();
        st.set("Format", "1.8");
        st.set("Date", chrono::Utc::now().to_rfc2822());
        st.set("Source", self.key.source().as_str());
        st.set("Version", self.key.version().as_str());
        st.set("Distribution", self.distribution.to_string());
        st.set("Architecture", self.key.arch.as_str());
        let mut x = |k: &str, v: String| st.set(&xfield(k), v);
        x("Timecode", self.key.timecode().to_string());
        x("Upload-To", self.upload_to.clone());
        x("Packager", self.packager.clone());
        x("Build-Dep-Resolver", self.resolver.as_str().to_owned());
        x("Sbuild-Config-Blocks", self.config_blocks.to_string());
        x("Sbuild-Setup-Blocks", self.setup_blocks.to_string());
        x("Lintian-Mode", self.lintian.to_string());
        x("Lintian-Extra-Options", self.lintian_extra_options.to_string());
        x("Piuparts-Mode", self.piuparts.to_string());
        x("Piuparts-Extra-Options", self.piuparts_extra_options.to_string());
        x("Autopkgtest-Mode", self.autopkgtest.to_string());
        x("Buildlog", self.buildlog());
        if let Some(b) = &self.builder {
            x("Builder", b.clone());
            x("Buildlog-Building", format!("{}/mini_buildd/builds-dir/{}", b.trim_end_matches('/'), self.buildlog()));
        }
        x(
            "Buildlog-Installed",
            format!("{}/mini_buildd/events-dir/{}", self.packager.trim_end_matches('/'), self.buildlog()),
        );
        if self.arch_all {
            x("Arch-All", "Yes".to_owned());
        }
        // buildbay's own (mini-buildd ignores them): only when the distribution leaves sbuild.
        if self.backend != Backend::Sbuild {
            x("Build-Backend", self.backend.as_str().to_owned());
            x("Build-Network", if self.network { "Yes" } else { "No" }.to_owned());
        }
        if let Some(v) = &self.deb_build_options {
            x("Deb-Build-Options", v.to_string());
        }
        if let Some(v) = &self.deb_build_profiles {
            x("Deb-Build-Profiles", v.to_string());
        }
        if let Some(v) = &self.add_depends {
            x("Add-Depends", v.to_string());
        }
        let f = &self.tar;
        st.set("Files", format!("\n {} {} mini-buildd extra {}", f.md5, f.size, f.name));
        if let Some(sha) = &f.sha256 {
            st.set("Checksums-Sha256", format!("\n {sha} {} {}", f.size, f.name));
        }
        st
    }

    /// Parse the payload of a verified request.
    pub fn from_stanza(st: &Stanza) -> Result<BuildRequest, ProtocolError> {
        let changes = crate::deb::Changes::from_stanza(st.clone())?;
        let arch: crate::deb::Arch = st.parse_field("Architecture")?;
        let timecode = parse(st, "Timecode")?.ok_or_else(|| field_err(&xfield("Timecode"), "missing"))?;
        let key = BuildKey { upload: super::UploadKey::new(changes.source, changes.version, timecode), arch };
        let distribution: Dist = changes.distribution.parse().map_err(|e| field_err("Distribution", e))?;
        let url = |k: &str| -> Result<String, ProtocolError> {
            let v = get(st, k).ok_or_else(|| field_err(&xfield(k), "missing"))?;
            super::check_url(&xfield(k), v)?;
            Ok(v.to_owned())
        };
        let mode = |k: &str| -> Result<QaMode, ProtocolError> { Ok(parse(st, k)?.unwrap_or_default()) };
        let tar_name = Self::tar_name(&key);
        let [tar] = <[FileEntry; 1]>::try_from(changes.files).map_err(|f| {
            field_err("Files", format!("lists {} files; a build request lists exactly its tar", f.len()))
        })?;
        if tar.name.as_str() != tar_name {
            return Err(field_err("Files", format!("lists {}, not {tar_name}", tar.name)));
        }
        Ok(BuildRequest {
            upload_to: url("Upload-To")?,
            packager: url("Packager")?,
            builder: get(st, "Builder").is_some().then(|| url("Builder")).transpose()?,
            arch_all: get(st, "Arch-All") == Some("Yes"),
            resolver: parse(st, "Build-Dep-Resolver")?.unwrap_or_default(),
            config_blocks: parse(st, "Sbuild-Config-Blocks")?.unwrap_or_else(Blocks::default_config),
            setup_blocks: parse(st, "Sbuild-Setup-Blocks")?.unwrap_or_else(Blocks::default_setup),
            deb_build_options: parse(st, "Deb-Build-Options")?,
            deb_build_profiles: parse(st, "Deb-Build-Profiles")?,
            add_depends: parse(st, "Add-Depends")?,
            lintian: mode("Lintian-Mode")?,
            lintian_extra_options: tool_options(st, "Lintian-Extra-Options", &super::settings::LINTIAN_OPTIONS)?,
            piuparts: mode("Piuparts-Mode")?,
            piuparts_extra_options: tool_options(st, "Piuparts-Extra-Options", &super::settings::PIUPARTS_OPTIONS)?,
            autopkgtest: mode("Autopkgtest-Mode")?,
            backend: parse(st, "Build-Backend")?.unwrap_or_default(),
            network: get(st, "Build-Network") == Some("Yes"),
            tar,
            key,
            distribution,
        })
    }

    /// The signed request, as written to disk.
    pub fn sign(&self, key: &ArchiveKey) -> Result<Vec<u8>, ProtocolError> {
        let mut text = self.to_stanza().to_string();
        // An extra newline, as debsign and mini-buildd write it.
        text.push('\n');
        Ok(key.clearsign(text.as_bytes())?)
    }

    /// Verify a signed request against the builder's trusted keys and parse what was signed.
    pub fn verify(raw: &[u8], certs: &[Cert]) -> Result<(BuildRequest, String), ProtocolError> {
        let v = crate::gpg::verify_upload(raw, certs)?;
        let st = Stanza::parse_one(&v.payload)?;
        Ok((Self::from_stanza(&st)?, v.signer))
    }

    /// Read and verify a request file (bounded), and check its tar beside it.
    pub fn read(path: &Path, certs: &[Cert]) -> Result<(BuildRequest, String), ProtocolError> {
        let raw = crate::deb::changes::read_bounded(path)
            .map_err(|source| ProtocolError::Io { path: path.to_owned(), source })?;
        let (req, signer) = Self::verify(&raw, certs)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        req.tar.verify(dir).map_err(|e| ProtocolError::Tar(e.to_string()))?;
        Ok((req, signer))
    }

    /// The tar's path beside the request file.
    pub fn tar_path(&self, dir: &Path) -> std::path::PathBuf {
        dir.join(self.tar.name.as_str())
    }
}

/// The file entry of a file in `dir` (size, MD5, SHA-256), for `Files`.
pub fn file_entry(dir: &Path, name: &str) -> Result<FileEntry, ProtocolError> {
    let path = dir.join(name);
    let sums = crate::deb::Checksums::of_file(&path).map_err(|source| ProtocolError::Io { path, source })?;
    Ok(FileEntry {
        name: name.parse::<FileName>().map_err(|e| field_err("Files", e))?,
        size: sums.size,
        md5: sums.md5,
        sha1: None,
        sha256: Some(sums.sha256),
        section: Some("mini-buildd".into()),
        priority: Some("extra".into()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> BuildRequest {
        let key: BuildKey = "hello/1:1.0-1/20261121-130030-234930/amd64".parse().unwrap();
        BuildRequest {
            tar: FileEntry {
                name: BuildRequest::tar_name(&key).parse().unwrap(),
                size: 3,
                md5: "900150983cd24fb0d6963f7d28e17f72".into(),
                sha1: None,
                sha256: Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()),
                section: Some("mini-buildd".into()),
                priority: Some("extra".into()),
            },
            key,
            distribution: "bookworm-test-unstable".parse().unwrap(),
            upload_to: "ftp://h:8067/".into(),
            packager: "http://h:8066/".into(),
            builder: None,
            arch_all: true,
            resolver: Resolver::Apt,
            config_blocks: Blocks::default_config(),
            setup_blocks: Blocks::parse_any("apt-setup apt-update").unwrap(),
            deb_build_options: Some("nocheck".parse().unwrap()),
            deb_build_profiles: None,
            add_depends: Some("libfoo-dev (>= 1), bar".parse().unwrap()),
            lintian: QaMode::Errfail,
            lintian_extra_options: "--info".parse().unwrap(),
            piuparts: QaMode::Disabled,
            piuparts_extra_options: ToolOptions::default(),
            autopkgtest: QaMode::Disabled,
            backend: Backend::Nspawn,
            network: false,
        }
    }

    #[test]
    fn a_signed_request_round_trips() {
        let key = ArchiveKey::generate("P <p@example.org>", crate::gpg::KeyAlgo::Ed25519).unwrap();
        let req = sample();
        let signed = req.sign(&key).unwrap();
        let text = String::from_utf8(signed.clone()).unwrap();
        assert!(text.contains("X-Mini-Buildd-Timecode: 20261121-130030-234930\n"), "{text}");
        assert!(text.contains(
            "X-Mini-Buildd-Buildlog: hello/1:1.0-1/20261121-130030-234930/amd64/hello_1.0-1_amd64.buildlog\n"
        ));
        assert!(text.contains(" 900150983cd24fb0d6963f7d28e17f72 3 mini-buildd extra hello_1.0-1_mini-buildd-buildrequest_amd64.changes.tar\n"));
        let (back, signer) = BuildRequest::verify(&signed, std::slice::from_ref(key.cert())).unwrap();
        assert_eq!(back, req);
        assert_eq!(signer, key.fingerprint());
        let other = ArchiveKey::generate("O <o@example.org>", crate::gpg::KeyAlgo::Ed25519).unwrap();
        assert!(BuildRequest::verify(&signed, std::slice::from_ref(other.cert())).is_err());
    }

    #[test]
    fn hostile_fields_are_refused() {
        let key = ArchiveKey::generate("P <p@example.org>", crate::gpg::KeyAlgo::Ed25519).unwrap();
        let good = sample().to_stanza();
        for (field, value) in [
            ("X-Mini-Buildd-Timecode", "a';system(\"id>/tmp/x\");'"),
            ("X-Mini-Buildd-Timecode", "../../x"),
            ("X-Mini-Buildd-Add-Depends", "foo; id"),
            ("X-Mini-Buildd-Deb-Build-Options", "nocheck $(id)"),
            ("X-Mini-Buildd-Lintian-Mode", "loud"),
            ("X-Mini-Buildd-Build-Backend", "docker"),
            ("X-Mini-Buildd-Build-Dep-Resolver", "internal"),
            ("X-Mini-Buildd-Upload-To", "ftp://h/'; id #"),
            ("X-Mini-Buildd-Sbuild-Setup-Blocks", "apt-setup $(id)"),
            ("X-Mini-Buildd-Lintian-Extra-Options", "--include-dir=/tmp/x"),
            ("X-Mini-Buildd-Lintian-Extra-Options", "--include-dir=."),
            ("X-Mini-Buildd-Lintian-Extra-Options", "--help"),
            ("X-Mini-Buildd-Piuparts-Extra-Options", "--info; id"),
            ("Architecture", "amd64 i386"),
            ("Files", "\n 900150983cd24fb0d6963f7d28e17f72 3 mini-buildd extra other.tar"),
        ] {
            let mut st = good.clone();
            st.set(field, value);
            if field == "Files" {
                st.remove("Checksums-Sha256");
            }
            let mut text = st.to_string();
            text.push('\n');
            let signed = key.clearsign(text.as_bytes()).unwrap();
            let e = BuildRequest::verify(&signed, std::slice::from_ref(key.cert()));
            assert!(e.is_err(), "{field}: {value:?} was accepted");
        }
    }
}
