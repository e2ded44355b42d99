//! `buildbay import` of a mini-buildd home, and of hostile ones. The home is made of a buildbay
//! instance's published tree, copied into the layout reprepro writes for mini-buildd (plain
//! `dists/<dist>/` directories with `InRelease`, `snapshots/<name>/`, and `pool/`), and a
//! `config.sqlite` with mini-buildd 2.2.8's real schema (tests/fixtures/mini-buildd/schema.sql).
//! tests/heavy/mini_buildd.rs takes over a real mini-buildd instance.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNSTABLE: &str = "bookworm-test-unstable";
/// Django's PBKDF2-SHA256 of "mbd-admin-password" (1,000 rounds).
const ADMIN_HASH: &str = "pbkdf2_sha256$1000$dCUA93c2hg5pBtwqeQ1zcc$b4QijvIvjakDn3RLaqAfOE1S7OAifYEAjcIp2i0AW2M=";

/// mini-buildd's configuration of `inst`'s setup (`ci`, bookworm:amd64, test:Default:bookworm),
/// as its Django models store it, plus a user whose password cannot be used and a repository
/// whose identity would climb out of the repositories directory.
fn config_sqlite(path: &Path) {
    let db = rusqlite::Connection::open(path).expect("sqlite");
    db.execute_batch(&std::fs::read_to_string("tests/fixtures/mini-buildd/schema.sql").expect("schema"))
        .expect("schema");
    db.execute_batch(&format!(
        r#"
        INSERT INTO mini_buildd_daemon VALUES (1, 2, '2026-12-07 11:51:05.336792', 'ci', 'mini-buildd@localhost', '', '', 'tcp6:port=8067', '', '.*@localhost', '', 500, 2, 0, 0);
        INSERT INTO mini_buildd_source (id, status, last_checked, origin, codename, description, codeversion, check_valid_until, extra_identifiers, remove_from_component, codeversion_guessed, codeversion_override)
            VALUES (1, 2, '2026-12-07 11:51:06.172459', 'Debian', 'bookworm', 'Debian 12', '12', 1, '{{}}', '', '12', '');
        INSERT INTO mini_buildd_source_components (source_id, component_id) VALUES (1, 'main');
        INSERT INTO mini_buildd_source_architectures (source_id, architecture_id) VALUES (1, 'amd64');
        INSERT INTO mini_buildd_distribution (id, build_dep_resolver, lintian_mode, lintian_extra_options, piuparts_mode, piuparts_extra_options, piuparts_root_arg, chroot_setup_script, sbuildrc_snippet, base_source_id, add_depends, autopkgtest_mode, deb_build_options, deb_build_profiles, internal_apt_priority, sbuild_config_blocks, sbuild_setup_blocks)
            VALUES (1, 1, 2, '--info', 0, '--info', 'sudo', '', '', 1, '', 0, '', '', 1, '', '');
        INSERT INTO mini_buildd_architectureoption (optional, build_architecture_all, architecture_id, distribution_id) VALUES (0, 1, 'amd64', 1);
        INSERT INTO mini_buildd_distribution_components (distribution_id, component_id) VALUES (1, 'main');
        INSERT INTO mini_buildd_repository VALUES (2, '2026-12-07 11:51:06.914985', 'test', 0, '', 0, 0, 0, '', 'Default');
        INSERT INTO mini_buildd_repository VALUES (2, '2026-12-07 11:51:06.914985', '../../evil', 0, '', 0, 0, 0, '', 'Default');
        INSERT INTO mini_buildd_repository_distributions (repository_id, distribution_id) VALUES ('test', 1);
        INSERT INTO auth_user (id, password, last_login, is_superuser, username, last_name, email, is_staff, is_active, date_joined, first_name)
            VALUES (1, '{ADMIN_HASH}', NULL, 1, 'admin', '', 'root@localhost', 1, 1, '2026-12-07 10:00:00', ''),
                   (2, '!unusable', NULL, 0, 'bob', '', '', 0, 1, '2026-12-07 10:00:00', '');
        "#
    ))
    .expect("rows");
}

/// A mini-buildd home holding `inst`'s repository `test` as reprepro lays it out.
fn home_of(inst: &Instance, home: &Path) {
    let repo = home.join("repositories/test");
    std::fs::create_dir_all(repo.join("dists")).expect("mkdir");
    ok(Command::new("cp").arg("-a").arg(inst.repo().join("pool")).arg(&repo));
    for e in std::fs::read_dir(inst.repo().join("dists")).expect("dists").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            // Plain directories, as reprepro writes them (buildbay's are links to generations).
            copy_deref(&e.path(), &repo.join("dists").join(&name));
        }
    }
    config_sqlite(&home.join("config.sqlite"));
}

/// Copy a tree, following its links (a dangling one, such as buildbay's `snapshots` link of a
/// distribution without snapshots, is left out).
fn copy_deref(from: &Path, to: &Path) {
    let Ok(meta) = std::fs::metadata(from) else { return };
    if meta.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read_dir").flatten() {
            copy_deref(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).expect("copy");
    }
}

/// `buildbay import` of `home` into a new state directory: (the state, its output, success).
fn import(work: &Path, name: &str, home: &Path, key: &Path) -> (PathBuf, String, bool) {
    let state = work.join(name);
    let out = run(Command::new(bin())
        .arg("--state")
        .arg(&state)
        .args(["--json", "import"])
        .arg(home)
        .arg("--archive-key")
        .arg(key));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (state, text, out.status.success())
}

/// Nothing was written (nor left beside it), and a good home imports into it.
fn nothing_written(state: &Path, good: &Path, key: &Path) {
    assert!(!state.exists(), "{} was written", state.display());
    let beside: Vec<_> = std::fs::read_dir(state.parent().expect("parent"))
        .expect("read_dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("importing"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    let out = run(Command::new(bin()).arg("--state").arg(state).arg("import").arg(good).arg("--archive-key").arg(key));
    assert!(out.status.success(), "the state was half-written: {}", String::from_utf8_lossy(&out.stderr));
}

/// Rewrite a tree's `Sources` with `edit`, and sign it again with the instance's key (the
/// signature covers the hostile entry: it stays data).
fn resign(dist: &Path, gnupg: &Path, fpr: &str, edit: impl FnOnce(String) -> String) {
    let sources = dist.join("main/source/Sources");
    let new = edit(std::fs::read_to_string(&sources).expect("Sources"));
    std::fs::write(&sources, &new).expect("write");
    let sums = buildbay::deb::Checksums::of_bytes(new.as_bytes());
    let release = std::fs::read_to_string(dist.join("Release")).expect("Release");
    let mut section = String::new();
    let out: Vec<String> = release
        .lines()
        .map(|l| {
            if !l.starts_with(' ') {
                section = l.trim_end_matches(':').to_owned();
                return l.to_owned();
            }
            if !l.ends_with(" main/source/Sources") {
                return l.to_owned();
            }
            let sum = match section.as_str() {
                "MD5Sum" => &sums.md5,
                "SHA1" => &sums.sha1,
                "SHA256" => &sums.sha256,
                _ => &sums.sha512,
            };
            format!(" {sum} {} main/source/Sources", sums.size)
        })
        .collect();
    std::fs::write(dist.join("Release"), out.join("\n") + "\n").expect("write");
    std::fs::remove_file(dist.join("InRelease")).expect("rm");
    ok(Command::new("gpg")
        .env("GNUPGHOME", gnupg)
        .args(["--batch", "--yes", "--local-user", fpr, "--clearsign", "-o"])
        .arg(dist.join("InRelease"))
        .arg(dist.join("Release")));
}

#[test]
fn import_takes_over_a_mini_buildd_home_and_refuses_what_does_not_check_out() {
    let a = Instance::new("ed25519");
    let work = a.dir.path();
    let include = |name: &str, version: &str| {
        let pkg = make_pkg(work, name, version);
        a.ok(&["repo", "include", UNSTABLE, pkg.to_str().unwrap()]);
    };
    include("bbone", "1.0~test12+1");
    include("bbone", "1.1~test12+1");
    include("bbtwo", "1.0~test12+1");
    a.ok(&["repo", "migrate", "bbtwo", UNSTABLE]);
    a.ok(&["repo", "snapshot", "create", UNSTABLE, "s1"]);
    include("bbone", "1.2~test12+1");
    let key = a.state().join("gnupg/archive-key.asc");
    let (asc, gpg) = a.key_files();
    let home = work.join("mbd");
    home_of(&a, &home);

    // The takeover.
    let (b, out, success) = import(work, "b", &home, &key);
    assert!(success, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let carried = report["carried"].to_string();
    for want in [
        "daemon 1",
        "source Debian:bookworm",
        "distribution bookworm",
        "repository test",
        "user admin (admin)",
        "snapshot bookworm-test-unstable/s1: 2 sources",
        "bookworm-test-unstable: 2 sources",
        "bookworm-test-unstable-rollback0: 1 sources",
        "bookworm-test-unstable-rollback1: 1 sources",
        "bookworm-test-testing: 1 sources",
    ] {
        assert!(carried.contains(want), "{want} not carried: {report:#}");
    }
    let left = report["left"].to_string();
    assert!(
        left.contains("bob") && left.contains("pbkdf2_sha256"),
        "a user with an unusable password is listed: {left}"
    );
    assert!(left.contains("../../evil"), "{left}");
    assert!(!work.join("evil").exists() && !home.join("evil").exists());
    for source in ["bbone", "bbtwo"] {
        let ls =
            |state: &Path| ok(Command::new(bin()).arg("--state").arg(state).args(["--json", "repo", "ls", source]));
        assert_eq!(ls(&b), ls(&a.state()), "{source}: the same versions in every distribution");
    }
    // The same key signs, and apt reads every distribution and the snapshot.
    let b_repo = b.join("repositories/test");
    verify_published(&b_repo, &gpg);
    let uri = format!("file://{}", b_repo.display());
    let apt = AptRoot::new(
        work,
        &uri,
        &[UNSTABLE, "bookworm-test-unstable-rollback0", &format!("{UNSTABLE}/snapshots/s1"), "bookworm-test-testing"],
        &asc,
    );
    apt.update();
    let m = apt.madison("bbone");
    for (version, suite) in [
        ("1.2~test12+1", UNSTABLE.to_owned()),
        ("1.1~test12+1", "bookworm-test-unstable-rollback0".to_owned()),
        ("1.1~test12+1", format!("{UNSTABLE}/snapshots/s1")),
    ] {
        assert!(
            m.lines()
                .any(|l| l.contains(&format!(" {version} |")) && l.contains(&format!(" {suite}/main amd64 Packages"))),
            "{version} in {suite} not in\n{m}"
        );
    }
    let origin = |r: &Path| {
        std::fs::read_to_string(r.join(format!("dists/{UNSTABLE}/Release")))
            .expect("Release")
            .lines()
            .find(|l| l.starts_with("Origin:"))
            .map(str::to_owned)
    };
    assert_eq!(origin(&b_repo), origin(&a.repo()), "the Origin apt pins stays");
    // The admin's Django password logs in (and is replaced by argon2).
    let users = ok(Command::new(bin()).arg("--state").arg(&b).args(["user", "ls"]));
    assert!(users.contains("admin admin") && !users.contains("bob"), "{users}");
    // Not twice into one state directory.
    let again = run(Command::new(bin()).arg("--state").arg(&b).arg("import").arg(&home).arg("--archive-key").arg(&key));
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"), "{again:?}");

    // Hostile homes. 1: a pool file changed after its index was signed: that source is left
    // out, with the reason; the rest comes over.
    let h1 = work.join("h1");
    home_of(&a, &h1);
    let deb = h1.join("repositories/test/pool/main/b/bbtwo/bbtwo_1.0~test12+1_all.deb");
    let mut data = std::fs::read(&deb).expect("deb");
    data.extend_from_slice(b"trailing");
    std::fs::write(&deb, data).expect("write");
    let (s1, out, success) = import(work, "s1", &h1, &key);
    assert!(success, "{out}");
    assert!(out.contains("bbtwo") && out.contains("does not match its index entry"), "{out}");
    assert!(!s1.join("repositories/test/pool/main/b/bbtwo/bbtwo_1.0~test12+1_all.deb").exists());
    assert!(out.contains("bookworm-test-unstable: 1 sources"), "{out}");

    // 2: a tree signed by another key: nothing is written.
    let other = Instance::new("ed25519");
    let h2 = work.join("h2");
    home_of(&a, &h2);
    std::fs::copy(
        other.repo().join(format!("dists/{UNSTABLE}/InRelease")),
        h2.join(format!("repositories/test/dists/{UNSTABLE}/InRelease")),
    )
    .expect("copy");
    let (s2, out, success) = import(work, "s2", &h2, &key);
    assert!(!success && out.contains("is the archive key the one that signs it"), "{out}");
    nothing_written(&s2, &home, &key);

    // 3: an index that is not the one its Release lists: nothing is written.
    let h3 = work.join("h3");
    home_of(&a, &h3);
    let sources = h3.join(format!("repositories/test/dists/{UNSTABLE}/main/source/Sources"));
    let text = std::fs::read_to_string(&sources).expect("Sources");
    std::fs::write(&sources, text.replace("bbone", "bbevil")).expect("write");
    let (s3, out, success) = import(work, "s3", &h3, &key);
    assert!(!success && out.contains("does not match its Release"), "{out}");
    nothing_written(&s3, &home, &key);

    // 4: an InRelease that is a symbolic link (to a good one): not followed.
    let h4 = work.join("h4");
    home_of(&a, &h4);
    let dist = h4.join(format!("repositories/test/dists/{UNSTABLE}"));
    std::fs::rename(dist.join("InRelease"), h4.join("InRelease")).expect("mv");
    std::os::unix::fs::symlink(h4.join("InRelease"), dist.join("InRelease")).expect("ln");
    let (s4, out, success) = import(work, "s4", &h4, &key);
    assert!(!success && out.contains("InRelease"), "{out}");
    nothing_written(&s4, &home, &key);

    // 5: entries the key signed that would climb out of the pool: data, refused each.
    let gnupg = work.join("gnupg");
    std::fs::create_dir_all(&gnupg).expect("mkdir");
    ok(Command::new("chmod").arg("700").arg(&gnupg));
    ok(Command::new("gpg").env("GNUPGHOME", &gnupg).args(["--batch", "--import"]).arg(&key));
    let listed = ok(Command::new("gpg").env("GNUPGHOME", &gnupg).args(["--with-colons", "--list-secret-keys"]));
    let fpr = listed.lines().find_map(|l| l.strip_prefix("fpr:")).expect("fpr").trim_matches(':').to_owned();
    let h5 = work.join("h5");
    home_of(&a, &h5);
    resign(&h5.join(format!("repositories/test/dists/{UNSTABLE}")), &gnupg, &fpr, |s| {
        s.replace("Directory: pool/main/b/bbtwo", "Directory: pool/main/b/bbtwo/../../../../../../tmp")
    });
    let (s5, out, success) = import(work, "s5", &h5, &key);
    assert!(success, "{out}");
    assert!(out.contains("its Directory is not pool/main/b/bbtwo"), "{out}");
    assert!(out.contains("bookworm-test-unstable: 1 sources"), "{out}");
    assert!(!s5.join("tmp").exists());
}
