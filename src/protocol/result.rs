//! The build result (mini-buildd §5.3): what a builder reports back, signed by the builder.
//! `<src>_<ver>_mini-buildd-buildresult_<arch>.changes`, listing the build log and a tar with
//! sbuild's `.changes` and the packages it lists.

use super::{BuildKey, Check, ProtocolError, field_err, get, parse, xfield};
use crate::deb::{Dist, FileEntry, Stanza};
use crate::gpg::{ArchiveKey, Cert};
use std::path::Path;

/// The summary lines of an sbuild log that become `X-Mini-Buildd-Sbuild-<Name>` fields.
pub const SBUILD_FIELDS: &[&str] =
    &["Status", "Lintian", "Piuparts", "Autopkgtest", "Build-Time", "Package-Time", "Space", "Build-Space"];

/// A build result, every field typed.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildResult {
    pub key: BuildKey,
    pub distribution: Dist,
    /// The builder's identity.
    pub builder: String,
    /// `X-Mini-Buildd-Sbuild-<Name>` (see [`SBUILD_FIELDS`]): sbuild's summary, as reported.
    pub sbuild: Vec<(String, String)>,
    /// Why the builder could not build (no chroot, a limit, a lost unit).
    pub internal_error: Option<String>,
    pub canceled_by: Option<String>,
    /// Fields of the request the result carries back (mini-buildd copies them).
    pub upload_to: Option<String>,
    pub packager: Option<String>,
    /// The build log and the tar (`Files`).
    pub files: Vec<FileEntry>,
}

/// A field value a builder reports: one line, printable, bounded.
fn report_value(field: &str, v: &str) -> Result<String, ProtocolError> {
    if v.len() > 1024 || v.chars().any(|c| c.is_control()) {
        return Err(field_err(field, "a report value is one printable line of at most 1024 bytes"));
    }
    Ok(v.to_owned())
}

impl BuildResult {
    /// `<src>_<ver>_mini-buildd-buildresult_<arch>` (without `.changes`).
    pub fn base_name(key: &BuildKey) -> String {
        format!("{}_{}_mini-buildd-buildresult_{}", key.source(), key.version().without_epoch(), key.arch)
    }

    pub fn changes_name(key: &BuildKey) -> String {
        format!("{}.changes", Self::base_name(key))
    }

    pub fn tar_name(key: &BuildKey) -> String {
        format!("{}.changes.tar", Self::base_name(key))
    }

    /// The architecture of a result file name, if it is one.
    pub fn arch_of(name: &str) -> Option<&str> {
        let stem = name.strip_suffix(".changes")?;
        let (rest, arch) = stem.rsplit_once('_')?;
        rest.ends_with("_mini-buildd-buildresult").then_some(arch)
    }

    /// `Sbuild-<name>`, as reported.
    pub fn sbuild(&self, name: &str) -> Option<&str> {
        self.sbuild.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// sbuild's status (`successful`, `skipped`, `failed`, `given-back`, `error`, …).
    pub fn status(&self) -> &str {
        self.sbuild("Status").unwrap_or("error")
    }

    /// A check's reported result (`pass`, `fail`, `warn`, …).
    pub fn check(&self, c: Check) -> &str {
        self.sbuild(c.field()).unwrap_or("")
    }

    pub fn to_stanza(&self) -> Stanza {
        let mut st = Stanza::new();
        st.set("Format", "1.8");
        st.set("Date", chrono::Utc::now().to_rfc2822());
        st.set("Source", self.key.source().as_str());
        st.set("Version", self.key.version().as_str());
        st.set("Distribution", self.distribution.to_string());
        st.set("Architecture", self.key.arch.as_str());
        st.set(&xfield("Timecode"), self.key.timecode().to_string());
        st.set(&xfield("Builder"), self.builder.as_str());
        st.set(&xfield("Buildlog"), format!("{}/{}", self.key, self.key.buildlog_name()));
        if let Some(u) = &self.upload_to {
            st.set(&xfield("Upload-To"), u.as_str());
        }
        if let Some(p) = &self.packager {
            st.set(&xfield("Packager"), p.as_str());
            st.set(
                &xfield("Buildlog-Installed"),
                format!("{}/mini_buildd/events-dir/{}/{}", p.trim_end_matches('/'), self.key, self.key.buildlog_name()),
            );
        }
        for (k, v) in &self.sbuild {
            st.set(&xfield(&format!("Sbuild-{k}")), v.as_str());
        }
        if let Some(e) = &self.internal_error {
            st.set(&xfield("Internal-Error"), e.as_str());
        }
        if let Some(by) = &self.canceled_by {
            st.set(&xfield("Canceled-By"), by.as_str());
        }
        let (mut files, mut sha) = (String::new(), String::new());
        for f in &self.files {
            files.push_str(&format!("\n {} {} mini-buildd extra {}", f.md5, f.size, f.name));
            if let Some(s) = &f.sha256 {
                sha.push_str(&format!("\n {s} {} {}", f.size, f.name));
            }
        }
        st.set("Files", files);
        if !sha.is_empty() {
            st.set("Checksums-Sha256", sha);
        }
        st
    }

    pub fn from_stanza(st: &Stanza) -> Result<BuildResult, ProtocolError> {
        let changes = crate::deb::Changes::from_stanza(st.clone())?;
        let arch: crate::deb::Arch = st.parse_field("Architecture")?;
        let timecode = parse(st, "Timecode")?.ok_or_else(|| field_err(&xfield("Timecode"), "missing"))?;
        let key = BuildKey { upload: super::UploadKey::new(changes.source, changes.version, timecode), arch };
        let distribution: Dist = changes.distribution.parse().map_err(|e| field_err("Distribution", e))?;
        if changes.files.len() > 2 {
            return Err(field_err("Files", "a build result lists its build log and its tar, nothing else"));
        }
        let mut sbuild = Vec::new();
        for name in SBUILD_FIELDS {
            let field = xfield(&format!("Sbuild-{name}"));
            if let Some(v) = st.get(&field).map(str::trim) {
                sbuild.push(((*name).to_owned(), report_value(&field, v)?));
            }
        }
        let text = |k: &str| get(st, k).map(|v| report_value(&xfield(k), v)).transpose();
        let url = |k: &str| -> Result<Option<String>, ProtocolError> {
            let v = get(st, k);
            if let Some(v) = v {
                super::check_url(&xfield(k), v)?;
            }
            Ok(v.map(str::to_owned))
        };
        Ok(BuildResult {
            builder: text("Builder")?.unwrap_or_default(),
            internal_error: text("Internal-Error")?,
            canceled_by: text("Canceled-By")?,
            upload_to: url("Upload-To")?,
            packager: url("Packager")?,
            sbuild,
            files: changes.files,
            key,
            distribution,
        })
    }

    pub fn sign(&self, key: &ArchiveKey) -> Result<Vec<u8>, ProtocolError> {
        let mut text = self.to_stanza().to_string();
        text.push('\n');
        Ok(key.clearsign(text.as_bytes())?)
    }

    /// Verify a result against the keys of the builders this packager uses; parse what was signed.
    pub fn verify(raw: &[u8], certs: &[Cert]) -> Result<(BuildResult, String), ProtocolError> {
        let v = crate::gpg::verify_upload(raw, certs)?;
        let st = Stanza::parse_one(&v.payload)?;
        Ok((Self::from_stanza(&st)?, v.signer))
    }

    /// The tar entry, if the build got that far.
    pub fn tar(&self) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name.as_str().ends_with(".tar"))
    }

    /// Check every listed file in `dir` against its sizes and digests.
    pub fn verify_files(&self, dir: &Path) -> Result<(), ProtocolError> {
        for f in &self.files {
            f.verify(dir).map_err(|e| ProtocolError::Tar(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_result_round_trips_and_names_parse() {
        let key = ArchiveKey::generate("B <b@example.org>", crate::gpg::KeyAlgo::Ed25519).unwrap();
        let bkey: BuildKey = "hello/1.0-1/20261121:130030:234930/amd64".parse().unwrap();
        let r = BuildResult {
            key: bkey.clone(),
            distribution: "bookworm-test-unstable".parse().unwrap(),
            builder: "ci".into(),
            sbuild: vec![("Status".into(), "successful".into()), ("Lintian".into(), "pass".into())],
            internal_error: None,
            canceled_by: None,
            upload_to: Some("ftp://h:8067/".into()),
            packager: Some("http://h:8066/".into()),
            files: vec![FileEntry {
                name: bkey.buildlog_name().parse().unwrap(),
                size: 3,
                md5: "900150983cd24fb0d6963f7d28e17f72".into(),
                sha1: None,
                sha256: Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()),
                section: Some("mini-buildd".into()),
                priority: Some("extra".into()),
            }],
        };
        let signed = r.sign(&key).unwrap();
        let (back, _) = BuildResult::verify(&signed, std::slice::from_ref(key.cert())).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.status(), "successful");
        assert_eq!(back.check(Check::Lintian), "pass");
        assert_eq!(BuildResult::arch_of(&BuildResult::changes_name(&bkey)), Some("amd64"));
        assert_eq!(BuildResult::arch_of("hello_1.0-1_source.changes"), None);
    }
}
