//! Shared helpers for integration tests: a state directory, test packages built with dpkg tools,
//! a throwaway apt root.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_buildbay")
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The start of a benchmark that builds: `None` when cargo only lists the benchmarks; else (as
/// root, which real builds need) a scratch directory.
pub fn build_bench() -> Option<tempfile::TempDir> {
    if std::env::args().any(|a| a == "--list") {
        return None;
    }
    assert!(nix::unistd::geteuid().is_root(), "real builds need root; run the bench as root");
    Some(tempfile::tempdir().expect("tempdir"))
}

/// The median of some measurements.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Set up a state directory with bookworm/amd64 and repository `test` (what the benchmarks use).
pub fn setup_bench_state(bin: &str, state: &Path) {
    ok(Command::new(bin).arg("--state").arg(state).args([
        "setup",
        "--identity",
        "bench",
        "--distributions",
        "bookworm:amd64",
        "--repositories",
        "test:Default:bookworm",
    ]));
}

pub struct Instance {
    pub dir: tempfile::TempDir,
}

/// A local stand-in for deb.debian.org: `tests/fixtures/archive/debian/` (a copy of bookworm's
/// real InRelease, signed by Debian, which the host's debian-archive-keyring verifies) served on
/// loopback for the whole test process. Returns its archive URL.
pub fn fixture_archive() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/archive");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fixture archive");
        let addr = listener.local_addr().expect("its address");
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("the listener");
                warp::serve(warp::fs::dir(root)).incoming(listener).run().await
            })
        });
        format!("http://{addr}/debian/")
    })
    .clone()
}

impl Instance {
    /// A fresh state directory set up with bookworm/amd64 and repository `test`, its base
    /// source checked against the fixture archive: no network.
    pub fn new(key_algo: &str) -> Instance {
        Instance::set_up(key_algo, Some(&fixture_archive()))
    }

    /// The same, against Debian's archive (what builds need: their images and build
    /// dependencies come from there).
    pub fn online(key_algo: &str) -> Instance {
        Instance::set_up(key_algo, None)
    }

    fn set_up(key_algo: &str, archive: Option<&str>) -> Instance {
        let dir = tempfile::tempdir().expect("tempdir");
        let i = Instance { dir };
        let mut args = vec![
            "setup",
            "--identity",
            "ci",
            "--distributions",
            "bookworm:amd64",
            "--repositories",
            "test:Default:bookworm",
            "--key-algo",
            key_algo,
        ];
        if let Some(a) = archive {
            args.extend(["--archives", a]);
        }
        i.ok(&args);
        i
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--state").arg(self.state()).args(args);
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        ok(&mut self.cmd(args))
    }

    /// Run and expect failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = run(&mut self.cmd(args));
        assert!(
            !out.status.success(),
            "{args:?} should fail, but succeeded:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn repo(&self) -> PathBuf {
        self.state().join("repositories").join("test")
    }

    pub fn key_files(&self) -> (PathBuf, PathBuf) {
        let asc = self.dir.path().join("key.asc");
        std::fs::write(&asc, self.ok(&["pub-key"])).expect("write key");
        let gpg = self.dir.path().join("key.gpg");
        let out = run(Command::new("gpg").args(["--batch", "--yes", "--dearmor", "-o"]).arg(&gpg).arg(&asc));
        assert!(out.status.success(), "gpg --dearmor failed");
        (asc, gpg)
    }
}

/// Build a tiny native source package plus one arch-all binary with dpkg-source, dpkg-deb and
/// dpkg-genchanges. Returns the `.changes`.
pub fn make_pkg(dir: &Path, name: &str, version: &str) -> PathBuf {
    let work = dir.join(format!("{name}-{version}"));
    let tree = source_tree(&work, name, version, "bookworm-test-unstable", "3.0 (native)", "");
    let deb = build_deb(&work, &work, name, version);
    ok(Command::new("dpkg-distaddfile").args([&deb, "misc", "optional"]).current_dir(&tree));
    let changes = ok(Command::new("dpkg-genchanges").arg("-sa").current_dir(&tree));
    let path = work.join(format!("{name}_{version}_source+all.changes"));
    std::fs::write(&path, changes).expect("write");
    path
}

/// Write a source tree `<work>/<name>-src` (changelog with `changes` lines, control, format,
/// rules) and build its source package with dpkg-source; returns the tree.
pub fn source_tree(work: &Path, name: &str, version: &str, dist: &str, format: &str, changes: &str) -> PathBuf {
    source_tree_with(work, name, version, dist, format, changes, "")
}

/// [`source_tree`] whose `debian/control` has `more` binary stanzas (each starting with a blank
/// line) after the arch-all package `name`.
pub fn source_tree_with(
    work: &Path,
    name: &str,
    version: &str,
    dist: &str,
    format: &str,
    changes: &str,
    more: &str,
) -> PathBuf {
    let tree = work.join(format!("{name}-src"));
    std::fs::create_dir_all(tree.join("debian/source")).expect("mkdir");
    std::fs::write(
        tree.join("debian/changelog"),
        format!("{name} ({version}) {dist}; urgency=medium\n\n  * Test package.\n{changes}\n -- Test User <test@example.org>  Mon, 01 Jan 2024 00:00:00 +0000\n"),
    )
    .expect("write");
    std::fs::write(
        tree.join("debian/control"),
        format!("Source: {name}\nSection: misc\nPriority: optional\nMaintainer: Test User <test@example.org>\nStandards-Version: 4.6.2\n\nPackage: {name}\nArchitecture: all\nDescription: buildbay test package\n Prints hello.\n{more}"),
    )
    .expect("write");
    std::fs::write(tree.join("debian/source/format"), format!("{format}\n")).expect("write");
    std::fs::write(tree.join("debian/rules"), "#!/usr/bin/make -f\n%:\n\tdh $@\n").expect("write");
    ok(Command::new("dpkg-source").arg("-b").arg(&tree).current_dir(work));
    tree
}

/// Build `<name>_<version>_all.deb` (a script printing hello) into `out`, staging under `work`;
/// returns its file name.
pub fn build_deb(work: &Path, out: &Path, name: &str, version: &str) -> String {
    let root = work.join("root");
    std::fs::create_dir_all(root.join("DEBIAN")).expect("mkdir");
    std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
    let script = root.join("usr/bin").join(name);
    std::fs::write(&script, format!("#!/bin/sh\necho hello from {name} {version}\n")).expect("write");
    ok(Command::new("chmod").arg("755").arg(&script));
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Test User <test@example.org>\nSection: misc\nPriority: optional\nDescription: buildbay test package\n Prints hello.\n"),
    )
    .expect("write");
    let deb = format!("{name}_{version}_all.deb");
    ok(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&root).arg(out.join(&deb)));
    deb
}

/// Build `<out>/<file>` from a control stanza and `(path, content)` files, with dpkg-deb.
pub fn deb_from(work: &Path, out: &Path, file: &str, control: &str, files: &[(&str, &str)]) {
    let root = work.join(format!("{file}.root"));
    std::fs::create_dir_all(root.join("DEBIAN")).expect("mkdir");
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
    }
    std::fs::write(root.join("DEBIAN/control"), control).expect("write");
    ok(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&root).arg(out.join(file)));
}

/// A throwaway apt root that uses the repository through `uri` with the key as Signed-By.
pub struct AptRoot {
    pub root: PathBuf,
}

impl AptRoot {
    pub fn new(base: &Path, uri: &str, suites: &[&str], key: &Path) -> AptRoot {
        let root = base.join("aptroot");
        for d in [
            "etc/apt/sources.list.d",
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/trusted.gpg.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/log",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join("var/lib/dpkg/status"), "").expect("write");
        let a = AptRoot { root };
        a.set_sources(uri, suites, key);
        a
    }

    pub fn set_sources(&self, uri: &str, suites: &[&str], key: &Path) {
        std::fs::write(
            self.root.join("etc/apt/sources.list.d/buildbay.sources"),
            format!(
                "Types: deb deb-src\nURIs: {uri}\nSuites: {}\nComponents: main\nSigned-By: {}\n",
                suites.join(" "),
                key.display()
            ),
        )
        .expect("write");
    }

    pub fn apt(&self, tool: &str, args: &[&str]) -> Output {
        let r = self.root.display().to_string();
        let mut c = Command::new(tool);
        c.arg(format!("-oDir={r}"))
            .arg(format!("-oDir::State::status={r}/var/lib/dpkg/status"))
            .args(["-oAPT::Architecture=amd64", "-oAPT::Architectures=amd64", "-oDebug::NoLocking=1"])
            .arg(format!("-oDpkg::Options::=--root={r}"))
            .arg(format!("-oDpkg::Options::=--admindir={r}/var/lib/dpkg"))
            .arg(format!("-oDpkg::Options::=--log={r}/var/log/dpkg.log"))
            .arg("-oDpkg::Options::=--force-not-root")
            .args(args);
        run(&mut c)
    }

    /// `apt-get update`; panics on failure or on any warning.
    pub fn update(&self) {
        let out = self.apt("apt-get", &["update"]);
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "apt-get update failed:\n{all}");
        assert!(
            !all.lines().any(|l| l.starts_with("W:") || l.starts_with("E:") || l.starts_with("N:")),
            "apt-get update warned:\n{all}"
        );
    }

    pub fn madison(&self, pkg: &str) -> String {
        String::from_utf8_lossy(&self.apt("apt-cache", &["madison", pkg]).stdout).into_owned()
    }
}

/// Every file under `dir` (following nothing) with its content hash and symlink targets:
/// a fingerprint of the tree that changes if any byte does.
pub fn tree_fingerprint(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).expect("under base").display().to_string();
            let ft = e.file_type().expect("file type");
            if ft.is_symlink() {
                out.push((rel, format!("-> {}", std::fs::read_link(&p).expect("link").display())));
            } else if ft.is_dir() {
                out.push((rel.clone(), "dir".into()));
                walk(base, &p, out);
            } else {
                let data = std::fs::read(&p).expect("read");
                out.push((rel, buildbay::deb::Checksums::of_bytes(&data).sha256));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Verify every published distribution: gpgv on InRelease and Release.gpg, and every listed file's checksum.
pub fn verify_published(repo: &Path, keyring: &Path) {
    verify_published_since(repo, keyring, &mut Default::default());
}

/// Like [`verify_published`], skipping distributions whose generation was verified before
/// (a generation directory is never modified once it is published).
pub fn verify_published_since(repo: &Path, keyring: &Path, seen: &mut std::collections::HashMap<String, PathBuf>) {
    let dists = repo.join("dists");
    for e in std::fs::read_dir(&dists).expect("dists").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let d = e.path();
        let target = std::fs::read_link(&d).unwrap_or_else(|err| panic!("{name} is not a generation symlink: {err}"));
        if seen.get(&name) == Some(&target) {
            continue;
        }
        for args in [vec![d.join("InRelease")], vec![d.join("Release.gpg"), d.join("Release")]] {
            let out = run(Command::new("gpgv").arg("--keyring").arg(keyring).args(&args));
            assert!(out.status.success(), "gpgv {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let release = std::fs::read_to_string(d.join("Release")).expect("Release");
        for f in buildbay::archive::index::release_files(&release) {
            let sums = match std::fs::read(d.join(&f.path)) {
                Ok(bytes) => buildbay::deb::Checksums::of_bytes(&bytes),
                // Listed, not on disk, as reprepro does it: the plain Contents; its .gz is checked.
                Err(_) if f.path.rsplit('/').next().is_some_and(|n| n.starts_with("Contents-") && !n.contains('.')) => {
                    let out = run(Command::new("gzip").arg("-dc").arg(d.join(format!("{}.gz", f.path))));
                    assert!(out.status.success(), "{name}/{}.gz", f.path);
                    buildbay::deb::Checksums::of_bytes(&out.stdout)
                }
                Err(e) => panic!("{name}/{}: {e}", f.path),
            };
            assert_eq!(sums.sha256, f.sums.sha256, "{name}/{} does not match Release", f.path);
            assert_eq!(sums.size, f.sums.size, "{name}/{}", f.path);
            let by_hash = d.join(buildbay::archive::index::by_hash_path(&f.path, &f.sums, "SHA256"));
            assert!(by_hash.exists() || !d.join(&f.path).exists(), "{name}: by-hash file for {} missing", f.path);
        }
        // The compressed indices are the plain one (or, for `Contents`, published compressed
        // only, each other), by the real gzip and xz.
        let files = buildbay::archive::index::release_files(&release);
        for f in &files {
            for (ext, tool) in [(".gz", "gzip"), (".xz", "xz")] {
                let Some(base) = f.path.strip_suffix(ext) else { continue };
                let unpack = |path: &str| {
                    let out = run(Command::new(tool).arg("-dc").arg(d.join(path)));
                    assert!(out.status.success(), "{tool} -dc {name}/{path}: {}", String::from_utf8_lossy(&out.stderr));
                    out.stdout
                };
                let unpacked = unpack(&f.path);
                let expected = match std::fs::read(d.join(base)) {
                    Ok(plain) => plain,
                    Err(_) if ext == ".xz" && files.iter().any(|g| g.path == format!("{base}.gz")) => {
                        run(Command::new("gzip").arg("-dc").arg(d.join(format!("{base}.gz")))).stdout
                    }
                    Err(_) if ext == ".gz" => continue,
                    Err(e) => panic!("{name}/{base}: {e}"),
                };
                assert_eq!(unpacked, expected, "{name}/{} decompresses to its plain index", f.path);
            }
        }
        seen.insert(name, target);
    }
}

pub mod container;
pub mod synth;
pub mod upload;

/// A running `buildbay serve` on an ephemeral port; stopped with SIGTERM when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
    /// `host:port` of the FTP drop box.
    pub ftp: String,
    /// What it logged before it served.
    pub log: Vec<String>,
}

impl Server {
    /// Start `serve` and wait for its "serving http://ADDR/" line.
    pub fn start(mut cmd: Command) -> Server {
        use std::io::BufRead;
        let mut child =
            cmd.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().expect("spawn serve");
        let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut log = Vec::new();
        let (url, ftp) = loop {
            let line = lines.next().expect("serve exited early").expect("read");
            log.push(line.clone());
            if let Some(rest) = line.split("serving ").nth(1) {
                let url =
                    rest.split_whitespace().next().unwrap_or_default().trim_end_matches("/repositories/").to_owned();
                let ftp = rest.split("ftp://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default().to_owned();
                break (url, ftp);
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server { child, url, ftp, log }
    }

    /// Stop with SIGTERM and return whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// A test CA (openssl) and server certificates for 127.0.0.1 and localhost signed by it.
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let dir = dir.join("ca");
        std::fs::create_dir_all(&dir).expect("mkdir");
        ok(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=buildbay test CA", "-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign"])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.pem")));
        TestCa { dir }
    }

    /// The CA's certificate (PEM).
    pub fn pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A new server certificate and key, `<name>.pem` and `<name>.key`.
    pub fn server(&self, name: &str) -> (PathBuf, PathBuf) {
        let p = |ext: &str| self.dir.join(format!("{name}.{ext}"));
        ok(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(p("key"))
            .arg("-out")
            .arg(p("csr")));
        std::fs::write(p("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
            .expect("write");
        ok(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("csr"))
            .arg("-CA")
            .arg(self.pem())
            .arg("-CAkey")
            .arg(self.dir.join("ca.key"))
            .arg("-extfile")
            .arg(p("ext"))
            .arg("-out")
            .arg(p("pem")));
        (p("pem"), p("key"))
    }
}

/// `serve` on loopback at ephemeral HTTP and FTP ports, building nothing here (build requests
/// wait for a result the test sends), with `extra` options.
pub fn serve_local(inst: &Instance, extra: &[&str]) -> Server {
    let mut args = vec!["serve", "--http", "127.0.0.1:0", "--ftp", "127.0.0.1:0", "--build-slots", "0"];
    args.extend_from_slice(extra);
    Server::start(inst.cmd(&args))
}

/// A free TCP port on loopback (for a daemon that must come back on the same one).
/// A static file server on a free loopback port for `dir`: (its base URL, the process).
pub fn http_server(dir: &std::path::Path) -> (String, std::process::Child) {
    let port = free_port();
    let child = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (url, child)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `serve` on 127.0.0.1 at fixed ports with `slots` build slots, its builds as child processes
/// (this host has no systemd) and build requests naming 127.0.0.1, plus `extra` options.
pub fn serve_builds(inst: &Instance, ports: (u16, u16), slots: &str, extra: &[&str]) -> Server {
    let (http, ftp) = (format!("127.0.0.1:{}", ports.0), format!("127.0.0.1:{}", ports.1));
    let mut args = vec![
        "serve",
        "--http",
        &http,
        "--ftp",
        &ftp,
        "--public-host",
        "127.0.0.1",
        "--build-runner",
        "child",
        "--build-slots",
        slots,
    ];
    args.extend_from_slice(extra);
    Server::start(inst.cmd(&args))
}

/// Every file below `dir` whose path ends with `suffix`.
pub fn walk_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out
}
