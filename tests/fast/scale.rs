//! A repository big enough that its indices are many compressed chunks: apt reads them whole,
//! and an include recompresses only what changed.

use crate::common::*;

#[test]
fn apt_reads_chunked_indices_and_includes_stay_incremental() {
    let inst = Instance::new("ed25519");
    let incoming = inst.dir.path().join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let n = 1200;
    let changes: Vec<String> =
        (0..n).map(|i| synth::package(&incoming, i, "1.0~test12+1").display().to_string()).collect();
    let mut args = vec!["repo", "include", synth::DIST, "--force"];
    args.extend(changes.iter().map(String::as_str));
    inst.ok(&args);
    let manifest = inst.repo().join("dists").join(synth::DIST).join("main/binary-amd64/.Packages.chunks");
    let chunks: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert!(chunks.len() >= 8, "{} chunks: the index should be chunked", chunks.len());

    let (asc, gpg) = inst.key_files();
    verify_published(&inst.repo(), &gpg);
    let uri = format!("file://{}", inst.repo().display());
    let apt = AptRoot::new(inst.dir.path(), &uri, &[synth::DIST], &asc);
    apt.update();
    for i in [0, n / 2, n - 1] {
        assert!(apt.madison(&format!("synth{i:05}-data")).contains(synth::DIST), "synth{i:05}-data");
    }

    // One more package: the new indices reuse all but a few chunks, and apt still reads them whole.
    let extra = synth::package(&incoming, n, "1.0~test12+1");
    inst.ok(&["repo", "include", synth::DIST, extra.to_str().unwrap()]);
    let after: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let reused = after.iter().filter(|c| chunks.iter().any(|o| o["sha256"] == c["sha256"])).count();
    assert!(after.len() - reused <= 2, "{} of {} chunks are new", after.len() - reused, after.len());
    verify_published(&inst.repo(), &gpg);
    apt.update();
    assert!(apt.madison(&format!("synth{n:05}")).contains(synth::DIST));
    assert!(apt.madison(&format!("synth{:05}-data", n - 1)).contains(synth::DIST));
}
