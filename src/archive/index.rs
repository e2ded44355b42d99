//! Index entries: the `Sources` stanza of a `.dsc`, the `Packages` stanza of a `.deb`, the lines
//! of `Contents`, and `Release`.
//!
//! Pure: inputs are parsed stanzas and checksums, outputs are stanzas and text.

use crate::deb::{Checksums, Stanza};

/// The `Sources` entry for a source package in `directory` (`pool/main/h/hello`).
pub fn sources_entry(
    dsc: &Stanza,
    dsc_name: &str,
    dsc_sums: &Checksums,
    directory: &str,
    section: Option<&str>,
    priority: Option<&str>,
) -> Stanza {
    let mut s = dsc.clone();
    s.rename("Source", "Package");
    let append = |s: &mut Stanza, field: &str, line: String| {
        let old = s.get(field).unwrap_or_default().to_owned();
        s.set(field, format!("{old}\n{line}"));
    };
    append(&mut s, "Files", format!("{} {} {dsc_name}", dsc_sums.md5, dsc_sums.size));
    if s.get("Checksums-Sha1").is_some() {
        append(&mut s, "Checksums-Sha1", format!("{} {} {dsc_name}", dsc_sums.sha1, dsc_sums.size));
    }
    if s.get("Checksums-Sha256").is_some() {
        append(&mut s, "Checksums-Sha256", format!("{} {} {dsc_name}", dsc_sums.sha256, dsc_sums.size));
    }
    s.set("Directory", directory);
    if let Some(sec) = section.filter(|_| s.get("Section").is_none()) {
        s.set("Section", sec);
    }
    if let Some(pri) = priority.filter(|_| s.get("Priority").is_none()) {
        s.set("Priority", pri);
    }
    s.reorder_front(&["Package", "Binary", "Version", "Maintainer"]);
    s
}

/// The `Packages` entry for a `.deb` at `filename` (`pool/main/h/hello/hello_1.0_amd64.deb`).
pub fn packages_entry(
    control: &Stanza,
    filename: &str,
    sums: &Checksums,
    section: Option<&str>,
    priority: Option<&str>,
) -> Stanza {
    let mut s = control.clone();
    if let Some(sec) = section.filter(|_| s.get("Section").is_none()) {
        s.set("Section", sec);
    }
    if let Some(pri) = priority.filter(|_| s.get("Priority").is_none()) {
        s.set("Priority", pri);
    }
    s.set("Filename", filename);
    s.set("Size", sums.size.to_string());
    s.set("MD5sum", sums.md5.as_str());
    s.set("SHA1", sums.sha1.as_str());
    s.set("SHA256", sums.sha256.as_str());
    s.set("SHA512", sums.sha512.as_str());
    s.reorder_front(&["Package"]);
    s
}

/// The value of a single-line field of a stanza (`Filename`, `Section`), read without parsing
/// the whole stanza. Field names are case-insensitive, as deb822's are.
pub fn stanza_field<'a>(stanza: &'a [u8], field: &str) -> Option<&'a str> {
    stanza.split(|&b| b == b'\n').find_map(|line| {
        let (name, rest) = (line.get(..field.len())?, line.get(field.len()..)?);
        let rest = rest.strip_prefix(b":").filter(|_| name.eq_ignore_ascii_case(field.as_bytes()))?;
        std::str::from_utf8(rest).ok().map(str::trim)
    })
}

/// Whether a `Section` is one Debian's tools read: lower-case letters, digits, `+`, `-` and `.`,
/// with at most one area in front (`devel`, `contrib/net`). Anything else could forge the
/// owners of a `Contents` line (`admin/sudo,utils`).
pub fn valid_section(section: &str) -> bool {
    let part = |p: &str| {
        p.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    };
    match section.split_once('/') {
        Some((area, s)) => part(area) && part(s),
        None => part(section),
    }
}

/// Who installs a path, as `Contents` names it: `<section>/<package>` (`devel/hello`,
/// `contrib/net/foo`); a missing or invalid section is `unknown`.
pub fn contents_owner(section: Option<&str>, package: &str) -> String {
    format!("{}/{package}", section.filter(|s| valid_section(s)).unwrap_or("unknown"))
}

/// Render `Contents` from `(path, owner)` pairs: one line per path, sorted by path, its owners
/// comma-separated, in reprepro's layout (`path`, a tab and four spaces, the owners).
pub fn contents<O: AsRef<str> + Ord>(mut entries: Vec<(String, O)>) -> Vec<u8> {
    entries.sort_unstable();
    entries.dedup();
    let mut out = Vec::with_capacity(entries.iter().map(|(p, o)| p.len() + o.as_ref().len() + 6).sum());
    let mut i = 0;
    while i < entries.len() {
        let path = &entries[i].0;
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b"\t    ");
        let mut first = true;
        while i < entries.len() && &entries[i].0 == path {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(entries[i].1.as_ref().as_bytes());
            first = false;
            i += 1;
        }
        out.push(b'\n');
    }
    out
}

/// One file listed in a `Release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseFile {
    /// Relative to the distribution directory, e.g. `main/binary-amd64/Packages.xz`.
    pub path: String,
    pub sums: Checksums,
}

/// The `Release` fields of a distribution, apart from the file lists.
#[derive(Debug, Clone)]
pub struct ReleaseMeta {
    pub origin: String,
    pub label: String,
    pub suite: String,
    pub codename: String,
    pub description: String,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    pub not_automatic: bool,
    pub but_automatic_upgrades: bool,
}

pub const HASHES: [(&str, &str); 4] =
    [("MD5Sum", "MD5Sum"), ("SHA1", "SHA1"), ("SHA256", "SHA256"), ("SHA512", "SHA512")];

fn digest<'a>(sums: &'a Checksums, field: &str) -> &'a str {
    match field {
        "MD5Sum" => &sums.md5,
        "SHA1" => &sums.sha1,
        "SHA256" => &sums.sha256,
        _ => &sums.sha512,
    }
}

/// The `by-hash` path of a file for one hash field.
pub fn by_hash_path(path: &str, sums: &Checksums, field: &str) -> String {
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    format!("{dir}/by-hash/{field}/{}", digest(sums, field))
}

/// Render a `Release` file.
pub fn release(meta: &ReleaseMeta, date: chrono::DateTime<chrono::Utc>, files: &[ReleaseFile]) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut s = Stanza::new();
    s.set("Origin", meta.origin.as_str());
    s.set("Label", meta.label.as_str());
    s.set("Suite", meta.suite.as_str());
    s.set("Codename", meta.codename.as_str());
    s.set("Date", date.format("%a, %d %b %Y %H:%M:%S UTC").to_string());
    s.set("Architectures", meta.architectures.join(" "));
    s.set("Components", meta.components.join(" "));
    s.set("Description", meta.description.as_str());
    s.set("NotAutomatic", yes_no(meta.not_automatic));
    s.set("ButAutomaticUpgrades", yes_no(meta.but_automatic_upgrades));
    s.set("Acquire-By-Hash", "yes");
    let width = files.iter().map(|f| f.sums.size.to_string().len()).max().unwrap_or(1);
    for (field, _) in HASHES {
        let lines: String =
            files.iter().map(|f| format!("\n{} {:>width$} {}", digest(&f.sums, field), f.sums.size, f.path)).collect();
        s.set(field, lines);
    }
    s.to_string()
}

/// Read the file list back from a `Release` (the on-disk truth of what apt sees).
pub fn release_files(release: &str) -> Vec<ReleaseFile> {
    let Ok(s) = Stanza::parse_one(release) else { return vec![] };
    let mut files: Vec<ReleaseFile> = Vec::new();
    for (field, _) in HASHES {
        for line in s.get(field).unwrap_or_default().lines() {
            let [hash, size, path] = line.split_whitespace().collect::<Vec<_>>()[..] else { continue };
            let idx = match files.iter().position(|f| f.path == path) {
                Some(i) => i,
                None => {
                    files.push(ReleaseFile {
                        path: path.to_owned(),
                        sums: Checksums {
                            size: size.parse().unwrap_or(0),
                            md5: String::new(),
                            sha1: String::new(),
                            sha256: String::new(),
                            sha512: String::new(),
                        },
                    });
                    files.len() - 1
                }
            };
            let sums = &mut files[idx].sums;
            let slot = match field {
                "MD5Sum" => &mut sums.md5,
                "SHA1" => &mut sums.sha1,
                "SHA256" => &mut sums.sha256,
                _ => &mut sums.sha512,
            };
            *slot = hash.to_owned();
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_roundtrip() {
        let meta = ReleaseMeta {
            origin: "O".into(),
            label: "d".into(),
            suite: "d".into(),
            codename: "d".into(),
            description: "d".into(),
            architectures: vec!["amd64".into()],
            components: vec!["main".into()],
            not_automatic: true,
            but_automatic_upgrades: false,
        };
        let files = vec![ReleaseFile { path: "main/binary-amd64/Packages".into(), sums: Checksums::of_bytes(b"") }];
        let text = release(&meta, chrono::Utc::now(), &files);
        assert!(text.contains("NotAutomatic: yes\nButAutomaticUpgrades: no\nAcquire-By-Hash: yes\n"));
        assert!(text.contains("\nSHA512:\n "));
        assert_eq!(release_files(&text), files);
        assert_eq!(
            by_hash_path("main/binary-amd64/Packages", &files[0].sums, "SHA256"),
            format!("main/binary-amd64/by-hash/SHA256/{}", files[0].sums.sha256)
        );
    }

    #[test]
    fn packages_entry_fields() {
        let control =
            Stanza::parse_one("Package: hello\nVersion: 1.0\nArchitecture: amd64\nDescription: hi\n there\n").unwrap();
        let e = packages_entry(
            &control,
            "pool/main/h/hello/hello_1.0_amd64.deb",
            &Checksums::of_bytes(b"x"),
            Some("devel"),
            Some("optional"),
        );
        let t = e.to_string();
        assert!(t.starts_with("Package: hello\n"));
        assert!(t.contains("Filename: pool/main/h/hello/hello_1.0_amd64.deb\nSize: 1\n"));
        assert!(t.contains("Section: devel\n"));
        assert!(t.contains("Description: hi\n there\n"));
    }

    #[test]
    fn contents_lines_sorted_and_shared_paths_merged() {
        let e = |p: &str, o: &str| (p.to_owned(), o.to_owned());
        let text = contents(vec![
            e("usr/share/doc/b/copyright", "devel/b"),
            e("usr/bin/hello", "devel/hello"),
            e("etc/shared.conf", "net/b"),
            e("etc/shared.conf", "contrib/net/a"),
            e("usr/bin/hello", "devel/hello"),
        ]);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "etc/shared.conf\t    contrib/net/a,net/b\nusr/bin/hello\t    devel/hello\nusr/share/doc/b/copyright\t    devel/b\n"
        );
        assert!(contents::<String>(vec![]).is_empty());
        assert_eq!(contents_owner(Some("devel"), "hello"), "devel/hello");
        assert_eq!(contents_owner(Some("contrib/net"), "a"), "contrib/net/a");
        assert_eq!(contents_owner(None, "hello"), "unknown/hello");
        for forged in ["admin/sudo,utils", "a b", "x/y/z", "", "Devel", "/net", "net/"] {
            assert!(!valid_section(forged), "{forged:?}");
            assert_eq!(contents_owner(Some(forged), "evil"), "unknown/evil", "{forged:?}");
        }
        for good in ["devel", "non-free-firmware/kernel", "debian-installer", "libs", "c++"] {
            assert!(valid_section(good), "{good}");
        }
    }

    #[test]
    fn stanza_fields_without_a_parse() {
        let st = b"Package: hello\nSection: devel\nFilename: pool/main/h/hello/hello_1_amd64.deb\nDescription: x\n Filename: no\n";
        assert_eq!(stanza_field(st, "Filename"), Some("pool/main/h/hello/hello_1_amd64.deb"));
        assert_eq!(stanza_field(st, "Section"), Some("devel"));
        assert_eq!(stanza_field(st, "Priority"), None);
        assert_eq!(stanza_field(st, "Package"), Some("hello"));
        assert_eq!(stanza_field(b"package: x\nsource: evil\n", "Source"), Some("evil"), "case-insensitive");
        assert_eq!(stanza_field(b"Package-Type: udeb\n", "Package"), None);
    }
}
