//! Fuzzing (proptest; cargo-fuzz needs a nightly toolchain this machine does not have): the
//! `.changes`/`.dsc` and `Release` parsers, apt sources, the upload options, and the whole check pipeline on mutated
//! uploads. Bounded case counts keep it within seconds in CI; `PROPTEST_CASES` raises them.

use proptest::prelude::*;

const CHANGES: &str = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nFormat: 1.8\nDate: Mon, 01 Jan 2024 00:00:00 +0000\nSource: hello\nArchitecture: source\nVersion: 1.0-1~test12+1\nDistribution: bookworm-test-unstable\nMaintainer: Test <t@example.org>\nChanged-By: Test <t@example.org>\nChanges:\n hello (1.0-1~test12+1) bookworm-test-unstable; urgency=medium\n .\n   * MINI_BUILDD_OPTION: lintian-mode=ignore\nChecksums-Sha1:\n 8843d7f92416211de9ebb963ff4ce28125932878 6 hello_1.0-1~test12+1.dsc\nChecksums-Sha256:\n a6a5b3b2d1c1c3f2d4a1d8e1f0f3b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8 6 hello_1.0-1~test12+1.dsc\nFiles:\n 3858f62230ac3c915f300c664312c63f 6 misc optional hello_1.0-1~test12+1.dsc\n-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n";

/// A mutation of a valid text: bytes replaced, inserted or removed at random places.
fn mutated() -> impl Strategy<Value = String> {
    proptest::collection::vec((0usize..CHANGES.len(), 0u8..3, any::<char>(), 0usize..40), 1..8).prop_map(|edits| {
        let mut s: Vec<char> = CHANGES.chars().collect();
        for (pos, op, c, n) in edits {
            let pos = pos.min(s.len());
            match op {
                0 => s.insert(pos, c),
                1 => {
                    let end = (pos + n).min(s.len());
                    s.drain(pos..end);
                }
                _ => {
                    if pos < s.len() {
                        s[pos] = c;
                    }
                }
            }
        }
        s.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_any_text(text in ".{0,600}") {
        let _ = buildbay::deb::Changes::parse(&text);
        let _ = buildbay::deb::Dsc::parse(&text);
        let _ = buildbay::protocol::options::UploadOptions::parse(&text);
        let _ = buildbay::deb::Release::parse(&text);
        let _ = buildbay::sources::apt_source_archives(&text, false);
        let _ = buildbay::sources::apt_source_archives(&text, true);
    }

    #[test]
    fn parsers_never_panic_on_mutated_changes(text in mutated()) {
        if let Ok(c) = buildbay::deb::Changes::parse(&text) {
            // What parses is what the checks then rely on: names are plain file names.
            for f in &c.files {
                prop_assert!(!f.name.as_str().contains('/') && !f.name.as_str().starts_with('.'));
            }
            let _ = buildbay::incoming::readiness(&c, &buildbay::incoming::Limits::default(), |_| Some(6));
        }
        let _ = buildbay::deb::Dsc::parse(&text);
        let _ = buildbay::protocol::options::UploadOptions::parse(&text);
    }
}

/// The claim and every check, on mutated uploads, through the real pipeline: each one ends
/// claimed and in a state (never a panic), and nothing is left in incoming.
#[test]
fn the_check_pipeline_survives_mutated_uploads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = crate::common::Instance::new("ed25519");
    let state = inst.state();
    let changes =
        crate::common::upload::make_source(dir.path(), "fuzz", "1.0-1~test12+1", "bookworm-test-unstable", None);
    let files = crate::common::upload::upload_files(&changes);
    let original = std::fs::read_to_string(&changes).expect("read");
    let instance = buildbay::instance::Instance::open(&state).expect("open");
    let incoming = buildbay::incoming::Incoming::new(&state, buildbay::incoming::Limits::default()).expect("incoming");
    let daemon = buildbay::daemon::Daemon::new(instance, 8066, 8067, "localhost".into(), incoming.clone());
    let cases: u32 = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(150);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
    let strategy = proptest::collection::vec((0usize..original.len(), any::<char>()), 1..6);
    runner
        .run(&strategy, |edits| {
            let mut s: Vec<char> = original.chars().collect();
            for (pos, c) in edits {
                let pos = pos.min(s.len().saturating_sub(1));
                s[pos] = c;
            }
            let text: String = s.into_iter().collect();
            for f in &files[..files.len() - 1] {
                std::fs::copy(f, incoming.dir.join(f.file_name().expect("name"))).expect("copy");
            }
            std::fs::write(incoming.dir.join(changes.file_name().expect("name")), &text).expect("write");
            daemon.pipeline_pass();
            // Whatever the mutation, the .changes was taken out of incoming (claimed, or swept as invalid)
            // unless it still waits for files it lists under other names.
            let waiting = std::fs::read_dir(&incoming.dir)
                .expect("incoming")
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".changes"))
                .count();
            if waiting > 0 {
                for e in std::fs::read_dir(&incoming.dir).expect("incoming").flatten() {
                    if e.path().is_file() {
                        std::fs::remove_file(e.path()).expect("rm");
                    }
                }
            }
            Ok(())
        })
        .expect("no panic");
    let store = &daemon.inst.store;
    let ups = buildbay::incoming::list(store).expect("uploads");
    assert!(!ups.is_empty());
    use buildbay::incoming::UploadState::{Packaging, Rejected};
    assert!(ups.iter().all(|u| matches!(u.state, Packaging | Rejected)), "every claimed upload was checked: {ups:#?}");
    assert!(ups.iter().any(|u| u.state == Rejected) && ups.iter().any(|u| u.state == Packaging));
}
