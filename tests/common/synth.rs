//! Synthetic Debian packages for scale tests and benchmarks: a source with one amd64 and one
//! all binary, written with the ar, tar and flate2 crates (fast; content is realistic in shape).

use buildbay::deb::Checksums;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DIST: &str = "bookworm-test-unstable";

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).and_then(|_| e.finish()).expect("gzip")
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("tar");
    }
    gz(&b.into_inner().expect("tar"))
}

/// A `.deb` of `pkg` installing a program, its copyright and its changelog (what `Contents`
/// lists of a small real package).
fn deb(control: &str, pkg: &str) -> Vec<u8> {
    let mut ar = ar::Builder::new(Vec::new());
    let data = tar_gz(&[
        (&format!("./usr/bin/{pkg}"), b"#!/bin/sh\n"),
        (&format!("./usr/share/doc/{pkg}/copyright"), b"synthetic\n"),
        (&format!("./usr/share/doc/{pkg}/changelog.Debian.gz"), b"synthetic\n"),
    ]);
    for (name, data) in [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.gz", tar_gz(&[("./control", control.as_bytes())])),
        ("data.tar.gz", data),
    ] {
        let h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
        ar.append(&h, data.as_slice()).expect("ar");
    }
    ar.into_inner().expect("ar")
}

fn write(dir: &Path, name: &str, data: &[u8]) -> (String, Checksums) {
    std::fs::write(dir.join(name), data).expect("write");
    (name.to_owned(), Checksums::of_bytes(data))
}

/// One synthetic source package with an amd64 and an all binary; returns its `.changes`.
pub fn package(dir: &Path, i: usize, version: &str) -> PathBuf {
    let src = format!("synth{i:05}");
    let desc = format!(
        "synthetic package {i}\n This is a synthetic package generated for the publishing benchmark.\n It carries a description of a realistic length so that the index has a\n realistic size."
    );
    let mut files = Vec::new();
    let tar = write(
        dir,
        &format!("{src}_{version}.tar.gz"),
        &tar_gz(&[(&format!("{src}/debian/source/format"), b"3.0 (native)\n")]),
    );
    let dsc = format!(
        "Format: 3.0 (native)\nSource: {src}\nBinary: {src}, {src}-data\nArchitecture: any all\nVersion: {version}\nMaintainer: Bench <bench@example.org>\nStandards-Version: 4.6.2\nChecksums-Sha1:\n {} {} {}\nChecksums-Sha256:\n {} {} {}\nFiles:\n {} {} {}\n",
        tar.1.sha1, tar.1.size, tar.0, tar.1.sha256, tar.1.size, tar.0, tar.1.md5, tar.1.size, tar.0
    );
    files.push(write(dir, &format!("{src}_{version}.dsc"), dsc.as_bytes()));
    files.push(tar);
    for (pkg, arch) in [(src.clone(), "amd64"), (format!("{src}-data"), "all")] {
        let control = format!(
            "Package: {pkg}\nSource: {src}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Bench <bench@example.org>\nInstalled-Size: 12\nDepends: libc6 (>= 2.36)\nSection: misc\nPriority: optional\nHomepage: https://example.org/{src}\nDescription: {desc}\n"
        );
        files.push(write(dir, &format!("{pkg}_{version}_{arch}.deb"), &deb(&control, &pkg)));
    }
    let list = |f: &dyn Fn(&Checksums) -> &str| {
        files.iter().map(|(n, c)| format!("\n {} {} {n}", f(c), c.size)).collect::<String>()
    };
    let changes = format!(
        "Format: 1.8\nDate: Mon, 01 Jan 2024 00:00:00 +0000\nSource: {src}\nBinary: {src} {src}-data\nArchitecture: source amd64 all\nVersion: {version}\nDistribution: {DIST}\nUrgency: medium\nMaintainer: Bench <bench@example.org>\nChanged-By: Bench <bench@example.org>\nDescription:\n {src} - synthetic\nChanges:\n {src} ({version}) {DIST}; urgency=medium\n .\n   * Synthetic.\nChecksums-Sha1:{}\nChecksums-Sha256:{}\nFiles:{}\n",
        list(&|c| &c.sha1),
        list(&|c| &c.sha256),
        files.iter().map(|(n, c)| format!("\n {} {} misc optional {n}", c.md5, c.size)).collect::<String>(),
    );
    let path = dir.join(format!("{src}_{version}_amd64.changes"));
    std::fs::write(&path, changes).expect("write");
    path
}
