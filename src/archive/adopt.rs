//! Adopting another archive's distribution (a mini-buildd instance being taken over): its
//! index entries become this archive's records. Each pool file is copied, through no symbolic
//! link and never from above the other archive's root, into a staging directory of this
//! repository; the copy must match its entry's size and SHA-256, and every `.dsc` and `.deb` is
//! read from the copy and checked as an include checks it. Only then are the copies moved into
//! the pool. The entries must come from an index whose signature the caller verified.

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

/// Where one file of an entry is read from: the pool's own copy (the same content, already
/// adopted), or a staged copy of the other archive's (moved into the pool at the end).
struct Got {
    /// Relative to the repository root.
    rel: String,
    sums: Checksums,
    /// The staged copy, when the pool has none yet.
    staged: Option<PathBuf>,
}

impl Got {
    /// The file to read: the staged copy, or the pool's.
    fn path(&self, root: &Path) -> PathBuf {
        self.staged.clone().unwrap_or_else(|| root.join(&self.rel))
    }
}

/// Get the file at `rel` of the other archive (`from`) when its size and SHA-256 are the listed
/// ones: the pool's copy when it has one with that content, else a copy in `staging`, made from
/// the one open file (so what is checked is what is kept).
fn stage(from: &Path, root: &Path, staging: &Path, rel: &str, size: u64, sha256: &str) -> Result<Got> {
    let mismatch = || bad(format!("{rel} does not match its index entry (size or SHA-256)"));
    let ours = root.join(rel);
    if ours.exists() {
        let s = Checksums::of_file(&ours).map_err(io_err(&ours))?;
        return if s.size == size && s.sha256.eq_ignore_ascii_case(sha256) {
            Ok(Got { rel: rel.to_owned(), sums: s, staged: None })
        } else {
            Err(ArchiveError::PoolConflict { path: rel.to_owned() })
        };
    }
    let (mut src, len) = crate::protocol::tar::open_regular_beneath(from, rel).map_err(io_err(from.join(rel)))?;
    if len != size {
        return Err(mismatch());
    }
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = staging.join(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string());
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path).map_err(io_err(&path))?;
    std::io::copy(&mut std::io::Read::take(&mut src, size + 1), &mut file).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    let s = Checksums::of_file(&path).map_err(io_err(&path))?;
    if s.size != size || !s.sha256.eq_ignore_ascii_case(sha256) {
        let _ = std::fs::remove_file(&path);
        return Err(mismatch());
    }
    Ok(Got { rel: rel.to_owned(), sums: s, staged: Some(path) })
}

/// Drop the staged copies of an entry that is not adopted.
fn unstage(got: &[Got]) {
    for g in got {
        if let Some(p) = &g.staged {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Archive<'_> {
    /// Make `dist` hold exactly what `listed` lists (one entry per source: what is not listed
    /// leaves it), with the files taken from the other archive's root `from`. An entry whose
    /// files or fields do not check out is skipped, with the reason; the rest is adopted.
    pub fn adopt(&self, dist: &Dist, from: &Path, listed: &BTreeMap<Component, Listed>) -> Result<Adopted> {
        let ctx = self.ctx(&dist.repo)?;
        let (distribution, _, _) = ctx.check_dist(dist)?;
        let root = self.repo_root(&dist.repo);
        let staging = root.join(".adopt");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        let mut report = Adopted::default();
        let mut entries: Vec<(Entry, Vec<Got>)> = Vec::new();
        for (component, l) in listed {
            if !distribution.components.contains(component) {
                if !l.sources.is_empty() {
                    report.skipped.push(format!("{dist}: component {component} is not configured here"));
                }
                continue;
            }
            for st in &l.sources {
                let mut got = Vec::new();
                match adopt_source(component, from, &root, &staging, st, &l.binaries, &mut got) {
                    Ok(e) => entries.push((e, got)),
                    Err(e) => {
                        unstage(&got);
                        report.skipped.push(format!(
                            "{dist}: source {} {}: {e}",
                            st.get("Package").unwrap_or("?"),
                            st.get("Version").unwrap_or("?")
                        ))
                    }
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
        // The staged copies go into the pool (a copy of a file already there is dropped).
        for g in entries.iter().flat_map(|(_, got)| got) {
            let Some(staged) = &g.staged else { continue };
            let dst = root.join(&g.rel);
            if dst.exists() {
                std::fs::remove_file(staged).map_err(io_err(staged))?;
                continue;
            }
            let parent = dst.parent().expect("pool paths have a parent");
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            std::fs::rename(staged, &dst).map_err(io_err(&dst))?;
        }
        std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
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
}

/// One source and its binaries, checked as an include checks them; the files it got are
/// pushed to `got` as they are (so a refused entry's copies can be dropped).
fn adopt_source(
    component: &Component,
    from: &Path,
    root: &Path,
    staging: &Path,
    st: &Stanza,
    binaries: &[(PackageType, Stanza)],
    got: &mut Vec<Got>,
) -> Result<Entry> {
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
    let mut dsc = None;
    for (name, size, sha256) in listed_files(st)? {
        got.push(stage(from, root, staging, &format!("{pooldir}/{name}"), size, &sha256)?);
        if name.as_str().ends_with(".dsc") {
            dsc = Some((name, got.len() - 1));
        }
    }
    let Some((dsc_name, i)) = dsc else { return Err(bad("no .dsc is listed")) };
    let dsc_sums = got[i].sums.clone();
    let parsed = Dsc::parse(&read_limited(&got[i].path(root))?)
        .map_err(|source| ArchiveError::Control { file: dsc_name.to_string(), source })?;
    if parsed.source != source || parsed.version != version || parsed.file_name() != dsc_name.as_str() {
        return Err(bad(format!("its .dsc is {} {}", parsed.source, parsed.version)));
    }
    for f in &parsed.files {
        let have = got.iter().find(|g| g.rel.rsplit('/').next() == Some(f.name.as_str()));
        let Some(g) = have else { return Err(bad(format!("{} of the .dsc is not listed", f.name))) };
        f.matches(&g.sums)?;
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
        let (key, stanza) = adopt_binary(from, root, staging, &pooldir, *kind, b, got)?;
        let debug =
            key.package.as_str().strip_suffix("-dbgsym").is_some_and(|s| declared.iter().any(|d| d.as_str() == s));
        if !declared.contains(&key.package) && !debug {
            return Err(bad(format!("binary {} is not in its .dsc's Binary field", key.package)));
        }
        if !bins.iter().any(|(k, _)| k == &key) {
            bins.push((key, stanza));
        }
    }
    let mut files: Vec<PoolFile> = Vec::new();
    for g in got.iter() {
        if !files.iter().any(|f| f.path == g.rel) {
            files.push(PoolFile { path: g.rel.clone(), size: g.sums.size, sha256: g.sums.sha256.clone() });
        }
    }
    let record = SourceRecord {
        source,
        version,
        component: component.clone(),
        files,
        binaries: bins.iter().map(|(k, _)| k.clone()).collect(),
        superseded: None,
    };
    Ok(Entry {
        record,
        dsc: Some(dsc_stanza.to_string().into_bytes()),
        binaries: bins.into_iter().map(|(_, s)| s).collect(),
    })
}

/// One binary package: its file matches the entry, its control the entry's fields.
fn adopt_binary(
    from: &Path,
    root: &Path,
    staging: &Path,
    pooldir: &str,
    kind: PackageType,
    b: &Stanza,
    got: &mut Vec<Got>,
) -> Result<(BinaryKey, Vec<u8>)> {
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
    let g = match got.iter().find(|g| g.rel == rel) {
        Some(g) if g.sums.sha256.eq_ignore_ascii_case(field("SHA256")?) => None,
        Some(_) => return Err(bad(format!("{name} is listed twice, with different SHA-256"))),
        None => Some(stage(from, root, staging, &rel, size, field("SHA256")?)?),
    };
    if let Some(g) = g {
        got.push(g);
    }
    let g = got.iter().find(|g| g.rel == rel).expect("just got");
    let control = crate::deb::debfile::read_control(&g.path(root))
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
    let arch: Arch = field("Architecture")?.parse().map_err(|e: crate::deb::names::NameError| bad(e.to_string()))?;
    let stanza = index::packages_entry(&control, &rel, &g.sums, b.get("Section"), b.get("Priority"));
    if let Some(section) = stanza.get("Section").filter(|s| !index::valid_section(s)) {
        return Err(bad(format!("{name}: Section {section:?} is not a Debian section")));
    }
    Ok((BinaryKey { arch, package, version, kind }, stanza.to_string().into_bytes()))
}
