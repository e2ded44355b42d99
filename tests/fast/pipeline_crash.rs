//! The upload pipeline survives `kill -9` anywhere: uploads and build results are dropped into
//! incoming while the daemon is down, the daemon is started and killed at a random moment, 30+
//! times. In the end every upload ends in exactly one final state, with exactly one PACKAGING
//! and one INSTALLED event, and the repository verifies.

use crate::common::upload::*;
use crate::common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PACKAGES: usize = 12;
const KILLS: usize = 32;

/// Stored events, read from the state directory while no daemon runs.
fn stored_events(state: &Path) -> Vec<buildbay::events::Event> {
    let store = buildbay::store::Store::open(state).expect("open state");
    buildbay::events::since(&store, None).expect("events")
}

fn to_json(e: &buildbay::events::Event) -> serde_json::Value {
    serde_json::to_value(e).expect("json")
}

#[test]
fn kill_nine_anywhere_in_the_pipeline_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let inst = Instance::new("ed25519");
    let state = inst.state();
    let incoming = state.join("incoming");
    std::fs::create_dir_all(&incoming).expect("mkdir");
    let tmp = state.join("drop-tmp");
    let uploads: Vec<PathBuf> = (0..PACKAGES)
        .map(|i| make_source(d, &format!("crash{i}"), "1.0-1~test12+1", "bookworm-test-unstable", None))
        .collect();
    let (signer, fpr) = instance_signer(d, &state);
    let (http, ftp) = (free_port(), free_port());
    let start_server = || {
        Server::start(inst.cmd(&[
            "serve",
            "--http",
            &format!("127.0.0.1:{http}"),
            "--ftp",
            &format!("127.0.0.1:{ftp}"),
            "--no-default-setup",
            "--build-slots",
            "0",
        ]))
    };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };

    let mut dropped_uploads = 0;
    let mut results_sent: BTreeSet<String> = BTreeSet::new();
    let drop_results = |results_sent: &mut BTreeSet<String>| {
        for e in stored_events(&state) {
            let key = e.extra.get("key").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
            if e.kind == buildbay::events::EventType::Packaging && results_sent.insert(key) {
                let result = build_result(d, &to_json(&e), "successful", (&signer, &fpr));
                drop_into(&incoming, &tmp, &result);
            }
        }
    };
    for round in 0..KILLS {
        // While the daemon is down: new uploads, and results for what was packaged.
        for _ in 0..(1 + next() % 2) {
            if dropped_uploads < PACKAGES {
                drop_into(&incoming, &tmp, &uploads[dropped_uploads]);
                dropped_uploads += 1;
            }
        }
        drop_results(&mut results_sent);
        let mut srv = start_server();
        // Kill at a random moment: during startup recovery, claims, checks, packaging, installs.
        std::thread::sleep(Duration::from_millis(next() % 400));
        srv.child.kill().expect("kill -9");
        srv.child.wait().expect("wait");
        println!("round {round}: killed");
    }
    // The uploads not dropped yet, and the results still due; then let everything finish.
    while dropped_uploads < PACKAGES {
        drop_into(&incoming, &tmp, &uploads[dropped_uploads]);
        dropped_uploads += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        drop_results(&mut results_sent);
        let srv = start_server();
        std::thread::sleep(Duration::from_secs(2));
        assert!(srv.stop(), "the daemon did not stop cleanly");
        let events = stored_events(&state);
        let finals = events.iter().filter(|e| e.kind == buildbay::events::EventType::Installed).count();
        if finals >= PACKAGES {
            break;
        }
        assert!(Instant::now() < deadline, "only {finals}/{PACKAGES} installed: {events:#?}");
    }

    let events = stored_events(&state);
    for i in 0..PACKAGES {
        let n = format!("crash{i}");
        let mine: Vec<&buildbay::events::Event> = events.iter().filter(|e| e.source == n).collect();
        let count = |k: buildbay::events::EventType| mine.iter().filter(|e| e.kind == k).count();
        assert_eq!(count(buildbay::events::EventType::Packaging), 1, "{n}: {mine:#?}");
        assert_eq!(count(buildbay::events::EventType::Installed), 1, "{n}: {mine:#?}");
        assert_eq!(mine.len(), 2, "{n}: no other events: {mine:#?}");
    }
    // One upload record per package, each final; nothing pending; nothing left in incoming.
    {
        let store = buildbay::store::Store::open(&state).expect("open");
        let all = buildbay::incoming::list(&store).expect("uploads");
        let ups: Vec<_> = all.iter().filter(|u| u.kind == buildbay::incoming::Kind::Upload).collect();
        assert_eq!(ups.len(), PACKAGES, "{ups:#?}");
        assert!(ups.iter().all(|u| u.state == buildbay::incoming::UploadState::Installed), "{ups:#?}");
        assert!(buildbay::packager::pending(&store).expect("pending").is_empty());
        assert!(buildbay::packager::build_queue(&store).expect("queue").is_empty());
    }
    let left: Vec<_> = std::fs::read_dir(&incoming)
        .expect("incoming")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left in incoming: {left:?}");
    let list = inst.ok(&["repo", "list", "bookworm-test-unstable"]);
    for i in 0..PACKAGES {
        assert!(list.contains(&format!("crash{i} ")), "crash{i} is not in the repository:\n{list}");
    }
    let keyring = d.join("key.gpg");
    std::fs::write(&keyring, inst.ok(&["pub-key"])).expect("write");
    ok(std::process::Command::new("gpg")
        .args(["--batch", "--yes", "--dearmor", "--output"])
        .arg(d.join("key.kbx"))
        .arg(&keyring));
    verify_published(&state.join("repositories/test"), &d.join("key.kbx"));
}
