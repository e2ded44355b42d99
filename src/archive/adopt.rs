//! Adopting another archive's distribution (a mini-buildd instance being taken over): its
//! index entries become this archive's records, its pool files are linked in after their
//! checksums match the entries, and every `.dsc` and `.deb` is read and checked as an include
//! would. The entries must come from an index whose signature the caller verified.

use super::*;
use crate::deb::Stanza;

/// What one distribution of the other archive lists, per component.
#[derive(Debug, Default)]
pub struct Listed {
    /// `Sources` entries.
    pub sources: Vec<Stanza>,
    /// `Packages` entries (`.deb` and `.ddeb`) and `debian-installer` ones (`.udeb`).
    pub binaries: Vec<(PackageType, Stanza)>,
}

/// What an adoption took and what it left, with the reason.
#[derive(Debug, Default, serde::Serialize)]
pub struct Adopted {
    pub sources: usize,
    pub binaries: usize,
    pub skipped: Vec<String>,
}

fn bad(what: impl Into<String>) -> ArchiveError {
    ArchiveError::Inconsistent(what.into())
}

/// The `Checksums-Sha256` (name → size, sha256) of a `Sources` entry, names checked.
fn listed_files(st: &Stanza) -> Result<Vec<(FileName, u64, String)>> {
    let mut out = Vec::new();
    for line in st.get("Checksums-Sha256").unwrap_or_default().lines().filter(|l| !l.trim().is_empty()) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [sum, size, name] = w[..] else { return Err(bad(format!("Checksums-Sha256 line {line:?}"))) };
        let name: FileName = name.parse().map_err(|e: crate::deb::names::NameError| bad(e.to_string()))?;
        let size = size.parse().map_err(|_| bad(format!("size {size:?} of {name}")))?;
        out.push((name, size, sum.to_ascii_lowercase()));
    }
    if out.is_empty() {
        return Err(bad("a Sources entry without Checksums-Sha256"));
    }
    Ok(out)
}

/// The file at `rel` under `from`, when its size and SHA-256 are the listed ones.
fn checked(from: &Path, rel: &str, size: u64, sha256: &str) -> Result<Checksums> {
    let path = from.join(rel);
    let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
    if !meta.is_file() {
        return Err(bad(format!("{rel} is not a regular file")));
    }
    let s = Checksums::of_file(&path).map_err(io_err(&path))?;
    if s.size != size || !s.sha256.eq_ignore_ascii_case(sha256) {
        return Err(bad(format!("{rel} does not match its index entry (size or SHA-256)")));
    }
    Ok(s)
}

impl Archive<'_> {
    /// Make `dist` hold exactly what `listed` lists (one entry per source: what is not listed
    /// leaves it), with the files taken from the other archive's root `from`. An entry whose
    /// files or fields do not check out is skipped, with the reason; the rest is adopted.
    pub fn adopt(&self, dist: &Dist, from: &Path, listed: &BTreeMap<Component, Listed>) -> Result<Adopted> {
        let ctx = self.ctx(&dist.repo)?;
        let (distribution, _, _) = ctx.check_dist(dist)?;
        let mut report = Adopted::default();
        let mut entries: Vec<(Entry, Vec<(String, Checksums)>)> = Vec::new();
        for (component, l) in listed {
            if !distribution.components.contains(component) {
                if !l.sources.is_empty() {
                    report.skipped.push(format!("{dist}: component {component} is not configured here"));
                }
                continue;
            }
            for st in &l.sources {
                match self.adopt_source(component, from, st, &l.binaries) {
                    Ok(e) => entries.push(e),
                    Err(e) => report.skipped.push(format!(
                        "{dist}: source {} {}: {e}",
                        st.get("Package").unwrap_or("?"),
                        st.get("Version").unwrap_or("?")
                    )),
                }
            }
            let adopted: BTreeSet<&str> = entries.iter().map(|(e, _)| e.record.source.as_str()).collect();
            for (_, b) in &l.binaries {
                let src = b.get("Source").and_then(|s| s.split_whitespace().next()).or(b.get("Package"));
                if !src.is_some_and(|s| adopted.contains(s)) {
                    report.skipped.push(format!(
                        "{dist}: binary {} {} {}: its source is not adopted",
                        b.get("Package").unwrap_or("?"),
                        b.get("Version").unwrap_or("?"),
                        b.get("Architecture").unwrap_or("?")
                    ));
                }
            }
        }
        let root = self.repo_root(&dist.repo);
        for (_, files) in &entries {
            for (rel, sums) in files {
                link_in(&from.join(rel), &root.join(rel), sums)?;
            }
        }
        let _w = self.lock();
        let mut gc = Vec::new();
        let tx = self.store.write()?;
        let mut held: Vec<PackageName> = Vec::new();
        store::scan_prefix(&tx.open_table(DIST_SOURCES)?, &format!("{dist}/"), |k, v| {
            held.push(store::decode::<SourceRecord>(k, v)?.source);
            Ok(())
        })?;
        for s in held.iter().filter(|s| !entries.iter().any(|(e, _)| &e.record.source == *s)) {
            delete_entry(&tx, &ctx, dist, s, &mut gc)?;
        }
        for (e, _) in &entries {
            put_entry(&tx, &ctx, dist, e, &mut gc)?;
            report.sources += 1;
            report.binaries += e.record.binaries.len();
        }
        tx.commit()?;
        self.finish(&ctx, gc)?;
        Ok(report)
    }

    /// One source and its binaries, checked as an include checks them.
    fn adopt_source(
        &self,
        component: &Component,
        from: &Path,
        st: &Stanza,
        binaries: &[(PackageType, Stanza)],
    ) -> Result<(Entry, Vec<(String, Checksums)>)> {
        let field =
            |k: &'static str| st.require(k).map_err(|source| ArchiveError::Control { file: "Sources".into(), source });
        let source: PackageName =
            field("Package")?.parse().map_err(|e: crate::deb::names::NameError| bad(e.to_string()))?;
        let version: Version =
            field("Version")?.parse().map_err(|e: crate::deb::version::VersionError| bad(e.to_string()))?;
        let pooldir = format!("pool/{component}/{}/{source}", source.pool_prefix());
        if field("Directory")? != pooldir {
            return Err(bad(format!("its Directory is not {pooldir}")));
        }
        let mut copies = Vec::new();
        let mut dsc = None;
        for (name, size, sha256) in listed_files(st)? {
            let rel = format!("{pooldir}/{name}");
            let sums = checked(from, &rel, size, &sha256)?;
            if name.as_str().ends_with(".dsc") {
                dsc = Some((name.clone(), sums.clone()));
            }
            copies.push((rel, sums));
        }
        let Some((dsc_name, dsc_sums)) = dsc else { return Err(bad("no .dsc is listed")) };
        let parsed = Dsc::parse(&read_limited(&from.join(format!("{pooldir}/{dsc_name}")))?)
            .map_err(|source| ArchiveError::Control { file: dsc_name.to_string(), source })?;
        if parsed.source != source || parsed.version != version || parsed.file_name() != dsc_name.as_str() {
            return Err(bad(format!("its .dsc is {} {}", parsed.source, parsed.version)));
        }
        for f in &parsed.files {
            let have = copies.iter().find(|(p, _)| p.rsplit('/').next() == Some(f.name.as_str()));
            let Some((_, s)) = have else { return Err(bad(format!("{} of the .dsc is not listed", f.name))) };
            f.matches(s)?;
        }
        let dsc_stanza = index::sources_entry(
            &parsed.stanza,
            dsc_name.as_str(),
            &dsc_sums,
            &pooldir,
            st.get("Section"),
            st.get("Priority"),
        );
        let declared = crate::deb::changes::binary_list(parsed.stanza.get("Binary").unwrap_or_default())
            .map_err(|source| ArchiveError::Control { file: dsc_name.to_string(), source })?;
        let mut bins: Vec<(BinaryKey, Vec<u8>)> = Vec::new();
        for (kind, b) in binaries {
            let src = b.get("Source").and_then(|s| s.split_whitespace().next()).or(b.get("Package"));
            if src != Some(source.as_str()) {
                continue;
            }
            let (key, stanza, rel, sums) = self.adopt_binary(from, &pooldir, *kind, b)?;
            let debug =
                key.package.as_str().strip_suffix("-dbgsym").is_some_and(|s| declared.iter().any(|d| d.as_str() == s));
            if !declared.contains(&key.package) && !debug {
                return Err(bad(format!("binary {} is not in its .dsc's Binary field", key.package)));
            }
            if bins.iter().any(|(k, _)| k == &key) {
                continue; // listed under several architectures (arch all)
            }
            bins.push((key, stanza));
            copies.push((rel, sums));
        }
        let record = SourceRecord {
            source,
            version,
            component: component.clone(),
            files: copies
                .iter()
                .map(|(p, s)| PoolFile { path: p.clone(), size: s.size, sha256: s.sha256.clone() })
                .collect(),
            binaries: bins.iter().map(|(k, _)| k.clone()).collect(),
            superseded: None,
        };
        let entry = Entry {
            record,
            dsc: Some(dsc_stanza.to_string().into_bytes()),
            binaries: bins.into_iter().map(|(_, s)| s).collect(),
        };
        Ok((entry, copies))
    }

    /// One binary package: its file matches the entry, its control the entry's fields.
    fn adopt_binary(
        &self,
        from: &Path,
        pooldir: &str,
        kind: PackageType,
        b: &Stanza,
    ) -> Result<(BinaryKey, Vec<u8>, String, Checksums)> {
        let field =
            |k: &'static str| b.require(k).map_err(|source| ArchiveError::Control { file: "Packages".into(), source });
        let rel = field("Filename")?.to_owned();
        let name: FileName = rel
            .strip_prefix(&format!("{pooldir}/"))
            .ok_or_else(|| bad(format!("{rel} is not in {pooldir}")))?
            .parse()
            .map_err(|e: crate::deb::names::NameError| bad(e.to_string()))?;
        if PackageType::of_file(name.as_str()) != Some(kind) {
            return Err(bad(format!("{name} is not a {kind:?} package")));
        }
        let size = field("Size")?.parse().map_err(|_| bad(format!("the Size of {name}")))?;
        let sums = checked(from, &rel, size, field("SHA256")?)?;
        let control = crate::deb::debfile::read_control(&from.join(&rel))
            .map_err(|source| ArchiveError::Deb { file: name.to_string(), source })?;
        for k in ["Package", "Version", "Architecture"] {
            if control.get(k) != b.get(k) {
                return Err(bad(format!("{name}: its {k} is not its index entry's")));
            }
        }
        let package: PackageName =
            field("Package")?.parse().map_err(|e: crate::deb::names::NameError| bad(e.to_string()))?;
        let version: Version =
            field("Version")?.parse().map_err(|e: crate::deb::version::VersionError| bad(e.to_string()))?;
        let arch: Arch =
            field("Architecture")?.parse().map_err(|e: crate::deb::names::NameError| bad(e.to_string()))?;
        let stanza = index::packages_entry(&control, &rel, &sums, b.get("Section"), b.get("Priority"));
        if let Some(section) = stanza.get("Section").filter(|s| !index::valid_section(s)) {
            return Err(bad(format!("{name}: Section {section:?} is not a Debian section")));
        }
        Ok((BinaryKey { arch, package, version, kind }, stanza.to_string().into_bytes(), rel, sums))
    }
}

/// Put a checked file at `dst`: a hard link when both are on one file system, else a copy
/// (written beside it, then renamed in). A file already there must have the same content.
fn link_in(src: &Path, dst: &Path, sums: &Checksums) -> Result<()> {
    if dst.exists() {
        let have = Checksums::of_file(dst).map_err(io_err(dst))?;
        return if have.sha256 == sums.sha256 {
            Ok(())
        } else {
            Err(ArchiveError::PoolConflict { path: dst.display().to_string() })
        };
    }
    let parent = dst.parent().expect("pool paths have a parent");
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    let tmp = parent.join(format!(".{}.tmp", dst.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    std::fs::copy(src, &tmp).map_err(io_err(&tmp))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, dst).map_err(io_err(dst))
}
