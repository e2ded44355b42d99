//! Uploads for tests: real gpg keys and signatures, source packages, build results, FTP through
//! Python's ftplib, and the event stream.

use super::{ok, run};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A throwaway GnuPG home, driven by the real gpg.
pub struct Gpg {
    pub home: PathBuf,
}

impl Gpg {
    pub fn new(dir: &Path) -> Gpg {
        let home = dir.join("gnupg");
        std::fs::create_dir_all(&home).expect("mkdir gnupg");
        ok(Command::new("chmod").arg("700").arg(&home));
        Gpg { home }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.arg("--homedir").arg(&self.home).args([
            "--batch",
            "--quiet",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    }

    /// A new Ed25519 signing key; `faked` is a gpg `--faked-system-time` (e.g. `20200101T000000`).
    pub fn generate(&self, uid: &str, expire: &str, faked: Option<&str>) {
        let mut c = self.cmd();
        if let Some(t) = faked {
            c.args(["--faked-system-time", t]);
        }
        ok(c.args(["--quick-gen-key", uid, "ed25519", "sign", expire]));
    }

    pub fn export(&self, uid: &str) -> String {
        ok(self.cmd().args(["--armor", "--export", uid]))
    }

    pub fn fingerprint(&self, uid: &str) -> String {
        let out = ok(self.cmd().args(["--with-colons", "--fingerprint", uid]));
        out.lines().find_map(|l| l.strip_prefix("fpr:")).map(|l| l.trim_matches(':').to_owned()).expect("fingerprint")
    }

    /// Clear-sign a file in place, as debsign does.
    pub fn clearsign(&self, uid: &str, file: &Path, faked: Option<&str>) {
        let out = file.with_extension("asc-tmp");
        let mut c = self.cmd();
        if let Some(t) = faked {
            c.args(["--faked-system-time", t]);
        }
        ok(c.args(["--yes", "--clearsign", "--local-user", uid, "--output"]).arg(&out).arg(file));
        std::fs::rename(&out, file).expect("rename");
    }

    /// Revoke a key with the revocation certificate gpg made when it generated the key.
    pub fn revoke(&self, uid: &str) {
        let fpr = self.fingerprint(uid);
        let rev = std::fs::read_to_string(self.home.join("openpgp-revocs.d").join(format!("{fpr}.rev"))).expect("rev");
        let cert = rev.replace(":-----BEGIN", "-----BEGIN");
        let path = self.home.join("revoke.asc");
        std::fs::write(&path, cert).expect("write");
        ok(self.cmd().arg("--import").arg(&path));
    }

    pub fn import(&self, key: &Path) {
        ok(self.cmd().arg("--import").arg(key));
    }
}

/// A source-only upload `<name>_<version>_source.changes` for `dist`, signed (the `.dsc`, then
/// the `.changes`, as debsign does) when a signer is given.
pub fn make_source(dir: &Path, name: &str, version: &str, dist: &str, signer: Option<(&Gpg, &str)>) -> PathBuf {
    make_source_with(dir, name, version, dist, signer, "")
}

/// [`make_source`] declaring `more` binary packages in its control (see `source_tree_with`).
pub fn make_source_with(
    dir: &Path,
    name: &str,
    version: &str,
    dist: &str,
    signer: Option<(&Gpg, &str)>,
    more: &str,
) -> PathBuf {
    let work = dir.join(format!("{name}-{version}-{dist}"));
    let tree = super::source_tree_with(
        &work,
        name,
        version,
        dist,
        "1.0",
        "  * MINI_BUILDD_OPTION: lintian-mode=ignore\n",
        more,
    );
    let upstream = version.split(':').next_back().unwrap_or(version);
    let dsc = work.join(format!("{name}_{upstream}.dsc"));
    if let Some((g, uid)) = signer {
        g.clearsign(uid, &dsc, None);
    }
    let changes = ok(Command::new("dpkg-genchanges").args(["-S", "-sa"]).current_dir(&tree));
    let path = work.join(format!("{name}_{upstream}_source.changes"));
    std::fs::write(&path, changes).expect("write");
    if let Some((g, uid)) = signer {
        g.clearsign(uid, &path, None);
    }
    path
}

/// Move an upload's files into incoming the way a finished transfer lands: the `.changes` last,
/// each by an atomic rename (no FTP: what the drop box's own checks would refuse gets in).
pub fn drop_into(incoming: &Path, tmp: &Path, changes: &Path) {
    std::fs::create_dir_all(tmp).expect("mkdir");
    for f in upload_files(changes) {
        let name = f.file_name().expect("name");
        std::fs::copy(&f, tmp.join(name)).expect("copy");
        std::fs::rename(tmp.join(name), incoming.join(name)).expect("rename");
    }
}

/// The files of an upload, the `.changes` last (as dput sends them).
pub fn upload_files(changes: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(changes).expect("read changes");
    let parsed = buildbay::deb::Changes::parse(&text).expect("parse changes");
    let dir = changes.parent().expect("dir");
    let mut v: Vec<PathBuf> = parsed.files.iter().map(|f| dir.join(f.name.as_str())).collect();
    v.push(changes.to_owned());
    v
}

pub fn ftp_client() -> String {
    format!("{}/tests/support/ftp_client.py", env!("CARGO_MANIFEST_DIR"))
}

/// Run the FTP helper; returns its JSON.
pub fn ftp(cmd: &str, hostport: &str, args: &[PathBuf]) -> serde_json::Value {
    let out = ok(Command::new("python3").arg(ftp_client()).arg(cmd).arg(hostport).args(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ftp helper printed {out:?}: {e}"))
}

/// Upload every file of a `.changes` over FTP; panics unless every transfer succeeded.
pub fn ftp_upload(hostport: &str, changes: &Path) {
    let r = ftp("upload", hostport, &upload_files(changes));
    for reply in r.as_array().expect("replies") {
        assert!(reply.as_str().unwrap_or("").starts_with("226"), "upload of {changes:?}: {r}");
    }
}

/// Every stored event, read from the SSE stream.
pub fn events(url: &str) -> Vec<serde_json::Value> {
    let out = run(Command::new("curl")
        .args(["-s", "-N", "--max-time", "0.5"])
        .arg(format!("{url}/api/events?after=1970-01-01T00:00:00%2B00:00")));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

/// Events of a source package, of one type.
pub fn of(events: &[serde_json::Value], source: &str, kind: &str) -> Vec<serde_json::Value> {
    events.iter().filter(|e| e["source"] == source && e["type"] == kind).cloned().collect()
}

/// Wait until an event of `kind` for `source` exists; returns it.
pub fn wait_event(url: &str, source: &str, kind: &str, timeout: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let all = events(url);
        if let Some(e) = of(&all, source, kind).pop() {
            return e;
        }
        assert!(
            start.elapsed() < timeout,
            "no {kind} event for {source} within {timeout:?}; events: {}",
            serde_json::to_string_pretty(&all).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET an API call as JSON.
pub fn api(url: &str, call: &str, query: &str) -> serde_json::Value {
    let out = ok(Command::new("curl")
        .args(["-s", "--max-time", "30"])
        .arg(format!("{url}/mini_buildd/api/{call}/?output=json&{query}")));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{call} answered {out:?}: {e}"))
}

/// A builder's result for a PACKAGING event (mini-buildd §5.3): the buildlog and a tar with a
/// binary-only `.changes` and its `.deb`, described by a result `.changes` signed with `signer`.
pub fn build_result(dir: &Path, packaging: &serde_json::Value, status: &str, signer: (&Gpg, &str)) -> PathBuf {
    build_result_with(dir, packaging, status, signer, &[])
}

/// [`build_result`] that also carries `more` binary files (`.deb`, `.udeb`, `.ddeb`) of amd64,
/// each with its section, in the build's `.changes`.
pub fn build_result_with(
    dir: &Path,
    packaging: &serde_json::Value,
    status: &str,
    signer: (&Gpg, &str),
    more: &[(&Path, &str)],
) -> PathBuf {
    use buildbay::deb::Checksums;
    let name = packaging["source"].as_str().expect("source");
    let version = packaging["version"].as_str().expect("version");
    let dist = packaging["distribution"].as_str().expect("distribution");
    let timecode = packaging["extra"]["timecode"].as_str().expect("timecode");
    let arch = "amd64";
    let work = dir.join(format!("result-{name}-{timecode}"));
    let out = work.join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let deb = super::build_deb(&work, &out, name, version);
    let mut files = vec![(deb, "misc".to_owned())];
    for (path, section) in more {
        let file = path.file_name().and_then(|n| n.to_str()).expect("file name").to_owned();
        std::fs::copy(path, out.join(&file)).expect("copy");
        files.push((file, section.to_string()));
    }
    let (mut sha256, mut md5) = (String::new(), String::new());
    for (file, section) in &files {
        let s = Checksums::of_file(&out.join(file)).expect("sums");
        sha256.push_str(&format!("\n {} {} {file}", s.sha256, s.size));
        md5.push_str(&format!("\n {} {} {section} optional {file}", s.md5, s.size));
    }
    let archs = if more.is_empty() { "all" } else { "all amd64" };
    let bin_changes = format!("{name}_{version}_{arch}.changes");
    std::fs::write(
        out.join(&bin_changes),
        format!(
            "Format: 1.8\nDate: Mon, 01 Jan 2024 00:00:00 +0000\nSource: {name}\nBinary: {name}\nArchitecture: {archs}\nVersion: {version}\nDistribution: {dist}\nMaintainer: Test User <test@example.org>\nChanged-By: Test User <test@example.org>\nDescription:\n {name} - test\nChanges:\n {name} ({version}) {dist}; urgency=medium\nChecksums-Sha256:{sha256}\nFiles:{md5}\n"
        ),
    )
    .expect("write");
    let tar = format!("{name}_{version}_mini-buildd-buildresult_{arch}.changes.tar");
    let upload = work.join("upload");
    std::fs::create_dir_all(&upload).expect("mkdir");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&out)
        .arg("-cf")
        .arg(upload.join(&tar))
        .arg(&bin_changes)
        .args(files.iter().map(|(f, _)| f)));
    let log = format!("{name}_{version}_{arch}.buildlog");
    std::fs::write(upload.join(&log), format!("Status: {status}\n")).expect("write");
    let (t, l) =
        (Checksums::of_file(&upload.join(&tar)).expect("sums"), Checksums::of_file(&upload.join(&log)).expect("sums"));
    let result = upload.join(format!("{name}_{version}_mini-buildd-buildresult_{arch}.changes"));
    std::fs::write(
        &result,
        format!(
            "Format: 1.8\nDate: Mon, 01 Jan 2024 00:00:00 +0000\nSource: {name}\nVersion: {version}\nDistribution: {dist}\nArchitecture: {arch}\nX-Mini-Buildd-Timecode: {timecode}\nX-Mini-Buildd-Sbuild-Status: {status}\nX-Mini-Buildd-Lintian-Mode: errfail\nX-Mini-Buildd-Sbuild-Lintian: pass\nFiles:\n {} {} mini-buildd extra {log}\n {} {} mini-buildd extra {tar}\n",
            l.md5, l.size, t.md5, t.size
        ),
    )
    .expect("write");
    signer.0.clearsign(signer.1, &result, None);
    result
}

/// A fresh gpg home with key `up@example.org`, registered as an active uploader of `repositories`.
pub fn register_uploader(inst: &super::Instance, dir: &Path, repositories: &str) -> Gpg {
    let g = Gpg::new(dir);
    g.generate("Uploader <up@example.org>", "1y", None);
    let key = dir.join("up.asc");
    std::fs::write(&key, g.export("up@example.org")).expect("write");
    inst.ok(&["uploader", "add", "up", "--key", key.to_str().expect("utf-8"), "--repositories", repositories]);
    g
}

/// A gpg home that holds the instance's archive key, to sign as a builder of this instance does.
pub fn instance_signer(dir: &Path, state: &Path) -> (Gpg, String) {
    let g = Gpg::new(&dir.join("instance-key"));
    g.import(&buildbay::instance::Instance::key_path(state));
    let out = ok(g.cmd().args(["--with-colons", "--list-secret-keys"]));
    let fpr = out.lines().find_map(|l| l.strip_prefix("fpr:")).map(|l| l.trim_matches(':').to_owned()).expect("fpr");
    (g, fpr)
}

/// A real source package sbuild can build (3.0 native, debhelper, clean for lintian's errors):
/// `/usr/bin/<name>` prints hello. `build` is the recipe of its build step, e.g. `exit 1` for a
/// failure to build or `sleep 6071` for a long build. Returns its unsigned `_source.changes`.
pub fn buildable_source(dir: &Path, name: &str, version: &str, dist: &str, build: &str) -> PathBuf {
    buildable_source_with(dir, name, version, dist, build, &[])
}

/// `buildable_source` with upload options (`MINI_BUILDD_OPTION: …` lines) in its changelog.
pub fn buildable_source_with(
    dir: &Path,
    name: &str,
    version: &str,
    dist: &str,
    build: &str,
    options: &[&str],
) -> PathBuf {
    buildable_source_for(dir, name, version, dist, build, options, "all")
}

/// `buildable_source_with` whose binary package has `Architecture: arch` (`any`: one build
/// per architecture of the distribution).
pub fn buildable_source_for(
    dir: &Path,
    name: &str,
    version: &str,
    dist: &str,
    build: &str,
    options: &[&str],
    arch: &str,
) -> PathBuf {
    source_with_files(dir, name, version, dist, build, options, arch, &[])
}

/// `buildable_source_with` with autopkgtests: each `(name, restrictions, script)` is a test in
/// `debian/tests` that depends on the built package.
pub fn tested_source(
    dir: &Path,
    name: &str,
    version: &str,
    dist: &str,
    options: &[&str],
    tests: &[(&str, &str, &str)],
) -> PathBuf {
    let mut control = String::new();
    let mut files = Vec::new();
    for (test, restrictions, script) in tests {
        control.push_str(&format!("Tests: {test}\nDepends: @\n"));
        if !restrictions.is_empty() {
            control.push_str(&format!("Restrictions: {restrictions}\n"));
        }
        control.push('\n');
        files.push((format!("debian/tests/{test}"), format!("#!/bin/sh\n{script}\n")));
    }
    files.push(("debian/tests/control".to_owned(), control));
    source_with_files(dir, name, version, dist, "true", options, "all", &files)
}

/// `buildable_source_for` with more files in its tree (executable), e.g. a `debian/postrm`.
#[allow(clippy::too_many_arguments)]
pub fn source_with_files(
    dir: &Path,
    name: &str,
    version: &str,
    dist: &str,
    build: &str,
    options: &[&str],
    arch: &str,
    extra: &[(String, String)],
) -> PathBuf {
    let options: String = options.iter().map(|o| format!("  * MINI_BUILDD_OPTION: {o}\n")).collect();
    let work = dir.join(format!("{name}-{version}"));
    let tree = work.join(name);
    std::fs::create_dir_all(tree.join("debian/source")).expect("mkdir");
    let files = [
        ("debian/source/format", "3.0 (native)\n".to_owned()),
        (
            "debian/changelog",
            format!("{name} ({version}) {dist}; urgency=medium\n\n  * Test package.\n{options}\n -- Test User <test@example.org>  Mon, 01 Jan 2024 00:00:00 +0000\n"),
        ),
        (
            "debian/control",
            format!("Source: {name}\nSection: misc\nPriority: optional\nMaintainer: Test User <test@example.org>\nBuild-Depends: debhelper-compat (= 13)\nStandards-Version: 4.6.2\nRules-Requires-Root: no\n\nPackage: {name}\nArchitecture: {arch}\nDepends: ${{misc:Depends}}\nDescription: buildbay test package\n Prints hello.\n"),
        ),
        (
            "debian/copyright",
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nCopyright: 2024 Test User\nLicense: CC0-1.0\n On Debian systems, the full text of the CC0 1.0 license is in\n /usr/share/common-licenses/CC0-1.0.\n".to_owned(),
        ),
        ("debian/rules", format!("#!/usr/bin/make -f\n%:\n\tdh $@\n\noverride_dh_auto_build:\n\t{build}\n")),
        ("debian/install", format!("{name} usr/bin\n")),
        (name, format!("#!/bin/sh\necho hello from {name} {version}\n")),
    ];
    for (path, text) in files {
        std::fs::write(tree.join(path), text).expect("write");
    }
    if !extra.is_empty() {
        std::fs::create_dir_all(tree.join("debian/tests")).expect("mkdir");
    }
    for (path, text) in extra {
        std::fs::write(tree.join(path), text).expect("write");
        ok(Command::new("chmod").arg("755").arg(tree.join(path)));
    }
    ok(Command::new("chmod").arg("755").arg(tree.join("debian/rules")).arg(tree.join(name)));
    ok(Command::new("dpkg-source").arg("-b").arg(name).current_dir(&work));
    let changes = ok(Command::new("dpkg-genchanges").args(["-S", "-sa"]).current_dir(&tree));
    let path = work.join(format!("{name}_{version}_source.changes"));
    std::fs::write(&path, changes).expect("write");
    path
}

/// Wait up to `wait` for the final event of an upload of `source`: INSTALLED, FAILED or REJECTED.
pub fn final_event_within(url: &str, source: &str, wait: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let all = events(url);
        if let Some(e) = all.iter().rev().find(|e| {
            e["source"] == source && ["INSTALLED", "FAILED", "REJECTED"].contains(&e["type"].as_str().unwrap_or(""))
        }) {
            return e.clone();
        }
        assert!(start.elapsed() < wait, "no final event for {source}: {all:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Call the API as `user` (password `<user>-password`), with --confirm.
pub fn api_as(url: &str, user: &str, call: &[&str]) -> std::process::Output {
    super::run(
        Command::new(super::bin())
            .args(["api", "--url", url, "--user", user, "--confirm"])
            .args(call)
            .env("BUILDBAY_PASSWORD", format!("{user}-password")),
    )
}

/// A python keyring backend that answers every lookup with `$BB_TEST_PASSWORD`.
const KEYRING_SHIM: &str = r#"import os
from keyring.backend import KeyringBackend
class Env(KeyringBackend):
    priority = 1
    def get_password(self, service, username):
        return os.environ.get("BB_TEST_PASSWORD")
    def set_password(self, service, username, password):
        pass
    def delete_password(self, service, username):
        pass
"#;

/// A call through the real mini-buildd client (`mini-buildd-api` from mini-buildd-utils), as
/// `user` (password `<user>-password`), confirmed, unchanged: its password comes from a python
/// keyring backend (a test shim naming the password) as a user's keyring would give it. The
/// answer is printed as JSON.
pub fn mbd_client_as(url: &str, user: &str, call: &str, args: &[&str]) -> std::process::Output {
    let shim = std::env::temp_dir().join(format!("bb-keyring-shim-{}", std::process::id()));
    std::fs::create_dir_all(&shim).expect("mkdir");
    std::fs::write(shim.join("bbtestkeyring.py"), KEYRING_SHIM).expect("write");
    let endpoint = url.replacen("://", &format!("://{user}@"), 1);
    super::run(
        Command::new("mini-buildd-api")
            .args(["--json", "--auto-confirm", "--script-mode", call, &endpoint])
            .args(args)
            .env("PYTHONPATH", &shim)
            .env("PYTHON_KEYRING_BACKEND", "bbtestkeyring.Env")
            .env("BB_TEST_PASSWORD", format!("{user}-password")),
    )
}

/// The last item of `kind` `id` in a `setup` answer's `instances`.
pub fn setup_item(out: &serde_json::Value, kind: &str, id: &str) -> serde_json::Value {
    out["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|i| i["kind"] == kind && i["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} {id} in {out}"))
}

/// Wall-clock seconds since the epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Follow a daemon's live event stream (`/api/events`, with curl): `on_event` gets each event's
/// arrival time (`now()`) and the event, on a thread of its own. Kill the child to stop.
pub fn watch_events(
    url: &str,
    mut on_event: impl FnMut(f64, serde_json::Value) + Send + 'static,
) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new("curl")
        .args(["-s", "-N"])
        .arg(format!("{url}/api/events"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let t = now();
            if let Some(v) =
                line.strip_prefix("data:").and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
            {
                on_event(t, v);
            }
        }
    });
    child
}

/// Every event's arrival, by (type, version) → (wall-clock seconds, event), from a live stream.
pub type Seen = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, String), (f64, serde_json::Value)>>>;

/// Follow a daemon's events into a [`Seen`] (benchmarks time them). Kill the child to stop.
pub fn watch_seen(url: &str) -> (std::process::Child, Seen) {
    let seen: Seen = Seen::default();
    let s = seen.clone();
    let child = watch_events(url, move |t, v| {
        let key =
            (v["type"].as_str().unwrap_or_default().to_owned(), v["version"].as_str().unwrap_or_default().to_owned());
        s.lock().expect("lock").insert(key, (t, v));
    });
    (child, seen)
}

/// Wait (at most 15 minutes) until an event of `kind` for `version` arrived.
pub fn wait_seen(seen: &Seen, kind: &str, version: &str) -> (f64, serde_json::Value) {
    let start = Instant::now();
    loop {
        if let Some(e) = seen.lock().expect("lock").get(&(kind.to_owned(), version.to_owned())) {
            return e.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(900), "no {kind} for {version}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A build step that compiles one C file (through ccache where the build's PATH has it) and
/// prints ccache's counters of the build's cache directory.
pub const CCACHE_BUILD: &str = "printf 'int f(void) { return 42; }\\n' > cc.c && gcc -c cc.c -o cc.o \
     && echo \"CC=$$(command -v gcc)\" && (ccache --print-stats || true)";

/// Two uploads of `CCACHE_BUILD` (versions `1.0~test12+1` and `+2` of `name`: a ccache is
/// per source package), one after the other, so both build in the lowest slot (without lintian,
/// whose ignore mode would hold the slot after the first one's result): each one's build log
/// and ccache hits (direct and preprocessed; `None`: ccache printed no counters).
pub fn two_ccache_builds(
    url: &str,
    ftp: &str,
    state: &Path,
    dir: &Path,
    name: &str,
    wait: Duration,
) -> [(String, Option<u64>); 2] {
    ["1.0~test12+1", "1.0~test12+2"].map(|version| {
        let source = buildable_source_with(
            dir,
            name,
            version,
            "bookworm-test-unstable",
            CCACHE_BUILD,
            &["lintian-mode=disabled"],
        );
        ftp_upload(ftp, &source);
        let start = Instant::now();
        let e = loop {
            let e = final_event_within(url, name, wait);
            if e["version"] == version {
                break e;
            }
            assert!(start.elapsed() < wait, "no final event of {name} {version}: {e}");
            std::thread::sleep(Duration::from_millis(500));
        };
        let logs = super::walk_named(&state.join("var/logs").join(name), &format!("{name}_{version}_amd64.buildlog"));
        let log = logs.first().map(|p| std::fs::read_to_string(p).expect("log")).unwrap_or_default();
        assert_eq!(e["type"], "INSTALLED", "{e}\n{log}");
        let counter = |k: &str| log.lines().find_map(|l| l.strip_prefix(k).and_then(|n| n.trim().parse::<u64>().ok()));
        let hits = counter("direct_cache_hit\t").zip(counter("preprocessed_cache_hit\t")).map(|(a, b)| a + b);
        (log, hits)
    })
}
