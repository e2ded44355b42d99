//! The hostile suite (docs/security.md): every attack of the issue "Security first", tried for
//! real through the daemon, sbuild and nspawn, dput, curl and gpg. Each assertion fails on a
//! buildbay without the defence it names. Needs root (builds, FTP peers) and Debian's archive.

use crate::common::upload::*;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const UNSTABLE: &str = "bookworm-test-unstable";
const WAIT: Duration = Duration::from_secs(600);

fn serve_on(inst: &Instance, http: &str, ftp: &str, extra: &[&str]) -> Server {
    let mut args = vec!["serve", "--http", http, "--ftp", ftp, "--public-host", "127.0.0.1", "--build-runner", "child"];
    args.extend_from_slice(extra);
    Server::start(inst.cmd(&args))
}

/// A unique marker path on the host, which nothing may create.
fn marker(what: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/buildbay-hostile-{what}-{}-{}", std::process::id(), buildbay::protocol::fresh_micros()))
}

/// The build log of the newest build of `source` (kept under var/logs once it is done).
fn build_log(inst: &Instance, source: &str) -> String {
    let root = inst.state().join("var/logs").join(source);
    let mut logs: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|n| n == "buildlog") {
                logs.push(p);
            }
        }
    }
    logs.sort();
    logs.last().map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default()
}

/// Wait for the final event of an upload of `source`.
fn final_event(url: &str, source: &str) -> serde_json::Value {
    final_event_within(url, source, WAIT)
}

fn reason(e: &serde_json::Value) -> String {
    e["extra"]["error"]["detail"].as_str().unwrap_or_default().to_owned()
}

fn curl(args: &[&str]) -> (u16, String, String) {
    let out = run(Command::new("curl").args(["-s", "-D", "-", "--max-time", "30"]).args(args));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

/// Builds never run as root and never reach the host, under both backends; uploader text never
/// becomes a path, a shell line or perl; a build's symlinks are not followed; a source cannot
/// take another's binary package; the only clear-signed text used is one cleanly framed.
#[test]
fn hostile_uploads_and_builds() {
    assert!(nix::unistd::geteuid().is_root(), "the hostile suite needs root (builds, FTP peers)");
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::online("ed25519");
    inst.ok(&["setup", "--repositories", "sec:Default:bookworm", "--chroots", "bookworm:amd64"]);
    let g = register_uploader(&inst, dir.path(), "sec");
    let (http, ftp) = (format!("127.0.0.1:{}", free_port()), format!("0.0.0.0:{}", free_port()));
    let ftp_port = ftp.rsplit(':').next().unwrap_or_default().to_owned();
    let mut srv = serve_on(&inst, &http, &ftp, &["--build-slots", "2"]);
    srv.ftp = format!("127.0.0.1:{ftp_port}");

    // 0. (sbuild, no unit: the build has the host's network) A build that uploads over loopback
    //    FTP is no local user: its unsigned upload to `test` is refused as a build's.
    let up = edited_source(dir.path(), "hostilebuilder", "perl debian/up.pl", |tree| {
        std::fs::write(tree.join("debian/up.pl"), uploader_script(&ftp_port)).expect("write");
    });
    ftp_upload(&srv.ftp, &up);
    let e = final_event(&srv.url, "hostilebuildup");
    assert_eq!(e["type"], "REJECTED", "{e}");
    assert!(reason(&e).contains("a build"), "{e}");
    assert_eq!(final_event(&srv.url, "hostilebuilder")["type"], "INSTALLED");

    for backend in ["sbuild", "nspawn"] {
        if backend == "nspawn" {
            assert!(srv.stop());
            inst.ok(&["setup", "--distributions", "bookworm:amd64:nspawn"]);
            srv = serve_on(&inst, &http, &ftp, &["--build-slots", "2"]);
            srv.ftp = format!("127.0.0.1:{ftp_port}");
        }
        // 1. debian/rules runs as an unprivileged user: it fails the build if it is root.
        let name = format!("hostileid{backend}");
        let pkg = buildable_source(dir.path(), &name, "1.0~test12+1", UNSTABLE, "id; test \"$$(id -u)\" != 0");
        ftp_upload(&srv.ftp, &pkg);
        let e = final_event(&srv.url, &name);
        let log = build_log(&inst, &name);
        assert_eq!(e["type"], "INSTALLED", "{backend}: the build ran as root? {e}\n{log}");
        assert!(!log.contains("uid=0(root)"), "{backend}: {log}");

        // 2. A double-chroot escape from debian/rules writes nothing on the host.
        let escaped = marker(&format!("escape-{backend}"));
        let perl = format!(
            "perl -e 'mkdir \"x\"; chroot \"x\" or print \"chroot: $$!\\\\n\"; chdir \"..\" for 1..64; chroot \".\"; open(F, \">{}\") and print F \"escaped\"' || true",
            escaped.display()
        );
        let name = format!("hostileesc{backend}");
        let pkg = buildable_source(dir.path(), &name, "1.0~test12+1", UNSTABLE, &perl);
        ftp_upload(&srv.ftp, &pkg);
        let e = final_event(&srv.url, &name);
        let log = build_log(&inst, &name);
        assert!(log.contains("chroot: Operation not permitted") || log.contains("chroot:"), "{backend}: {log}");
        assert!(!escaped.exists(), "{backend}: the build escaped its chroot and wrote {}: {e}", escaped.display());
    }

    // 3. A symlink a build leaves (nspawn: machine root writes out/) is not followed: the result
    //    does not carry what it points to, and the upload fails with the reason.
    let name = "hostilelink";
    let pkg = symlinked_deb_source(dir.path(), name);
    ftp_upload(&srv.ftp, &pkg);
    let e = final_event(&srv.url, name);
    assert_eq!(e["type"], "FAILED", "{e}");
    assert!(reason(&e).contains("not a regular file"), "{e}");
    let key = std::fs::read_to_string(buildbay::instance::Instance::key_path(&inst.state())).expect("key");
    // A line from the middle of the secret key material.
    let lines: Vec<&str> = key.lines().filter(|l| l.len() >= 60 && !l.contains(' ')).collect();
    let secret_line = lines[lines.len() / 2].to_owned();
    for p in walk(&inst.state().join("spool")) {
        let data = std::fs::read(&p).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&data).contains(&secret_line), "the archive key leaked into {}", p.display());
    }

    // 4. The uploader's timecode is ignored: it names no path, reaches no perl, picks no key.
    let ran = marker("timecode");
    let evil = format!("a';system(\"id>{}\");'/../../x", ran.display());
    let pkg = buildable_source(dir.path(), "hostiletc", "1.0~test12+1", UNSTABLE, "true");
    let text = std::fs::read_to_string(&pkg).expect("read");
    std::fs::write(&pkg, text.replace("Changes:", &format!("X-Mini-Buildd-Timecode: {evil}\nChanges:")))
        .expect("write");
    ftp_upload(&srv.ftp, &pkg);
    let e = final_event(&srv.url, "hostiletc");
    assert_eq!(e["type"], "INSTALLED", "{e}");
    let tc = e["extra"]["timecode"].as_str().expect("timecode").to_owned();
    assert!(tc.parse::<buildbay::protocol::Timecode>().is_ok() && !tc.contains("system"), "{tc}");
    assert!(!ran.exists(), "the uploader's timecode ran as perl");
    assert!(
        walk(&inst.state().join("var")).iter().all(|p| !p.to_string_lossy().contains("system(")),
        "a path holds the timecode"
    );

    // 5. A binary package another source owns is refused.
    let owner = buildable_source(dir.path(), "hostileown", "1.0~test12+1", UNSTABLE, "true");
    ftp_upload(&srv.ftp, &owner);
    assert_eq!(final_event(&srv.url, "hostileown")["type"], "INSTALLED");
    let thief = hijacking_source(dir.path(), "hostilethief", "hostileown");
    ftp_upload(&srv.ftp, &thief);
    let e = final_event(&srv.url, "hostilethief");
    assert_eq!(e["type"], "FAILED", "{e}");
    assert!(reason(&e).contains("belongs to source hostileown"), "{e}");

    // 6. A .dsc that lists a file outside dpkg's source names (an HTML page for the pool) is
    //    refused before anything is built.
    let pkg = make_source(dir.path(), "hostilehtml", "1.0~test12+1", UNSTABLE, None);
    let pkg = add_to_dsc(&pkg, "evil.html", b"<script>alert(1)</script>");
    ftp_upload(&srv.ftp, &pkg);
    let e = final_event(&srv.url, "hostilehtml");
    assert_eq!(e["type"], "REJECTED", "{e}");
    assert!(reason(&e).contains("is not a source file name"), "{e}");

    // 7. Wrapped signatures: only a cleanly framed clear-signed text is accepted, and each
    //    variant is REJECTED with the reason.
    let ok_pkg =
        make_source(dir.path(), "hostilesig", "1.0~sec12+1", "bookworm-sec-unstable", Some((&g, "up@example.org")));
    ftp_upload(&srv.ftp, &ok_pkg);
    let e = final_event(&srv.url, "hostilesig");
    assert_ne!(e["type"], "REJECTED", "a cleanly signed upload is accepted: {e}");
    type Wrap = fn(&str) -> String;
    let variants: [(&str, Wrap); 8] = [
        ("space", |t| t.lines().map(|l| format!(" {l}\n")).collect()),
        ("quoted", |t| t.lines().map(|l| format!("> {l}\n")).collect()),
        ("piped", |t| t.lines().map(|l| format!("| {l}\n")).collect()),
        ("nbsp", |t| t.replacen("\n\n", "\n\u{a0}\n", 1)),
        ("before", |t| format!("Source: evil\nDistribution: bookworm-sec-unstable\n\n{t}")),
        ("after", |t| format!("{t}Source: evil\n")),
        ("twice", |t| format!("{t}{t}")),
        ("dashes", |t| t.replacen("\n\n", "\n\n-Source: evil\n", 1)),
    ];
    for (i, (what, wrap)) in variants.iter().enumerate() {
        let name = format!("hostilewrap{i}");
        let pkg = make_source(dir.path(), &name, "1.0~sec12+1", "bookworm-sec-unstable", Some((&g, "up@example.org")));
        let text = std::fs::read_to_string(&pkg).expect("read");
        let files = upload_files(&pkg);
        std::fs::write(&pkg, wrap(&text)).expect("write");
        crate::common::upload::ftp("upload", &srv.ftp, &files);
        let e = final_event(&srv.url, &name);
        assert_eq!(e["type"], "REJECTED", "{what}: {e}");
        let why = reason(&e);
        assert!(
            why.contains("armor")
                || why.contains("signed")
                || why.contains("dash-escaped")
                || why.contains("frame")
                || why.contains("signature"),
            "{what}: the reason says what is wrong: {why}"
        );
    }
    // An unsigned upload to a repository that wants signatures.
    let pkg = make_source(dir.path(), "hostileunsigned", "1.0~sec12+1", "bookworm-sec-unstable", None);
    ftp_upload(&srv.ftp, &pkg);
    let e = final_event(&srv.url, "hostileunsigned");
    assert_eq!(e["type"], "REJECTED");
    assert!(reason(&e).contains("not signed by an active uploader"), "{e}");

    // 8. The test repository takes unsigned uploads from this host only: the same upload from
    //    the host's network address is refused.
    let ip = host_address();
    let pkg = make_source(dir.path(), "hostileremote", "1.0~test12+1", UNSTABLE, None);
    ftp_upload(&format!("{ip}:{ftp_port}"), &pkg);
    let e = final_event(&srv.url, "hostileremote");
    assert_eq!(e["type"], "REJECTED", "{e}");
    assert!(reason(&e).contains("only from this host"), "{e}");
    // The same over loopback, with dput, is taken.
    let conf = dir.path().join("dput.cf");
    std::fs::write(
        &conf,
        format!("[local]\nfqdn = 127.0.0.1:{ftp_port}\nmethod = ftp\nincoming = /incoming\nlogin = anonymous\n"),
    )
    .expect("write");
    let pkg = make_source(dir.path(), "hostilelocal", "1.0~test12+1", UNSTABLE, None);
    ok(Command::new("dput").arg("-u").arg("-c").arg(&conf).arg("local").arg(&pkg));
    assert_ne!(final_event(&srv.url, "hostilelocal")["type"], "REJECTED");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The first non-loopback IPv4 address of this host.
fn host_address() -> String {
    let out = ok(Command::new("hostname").arg("-I"));
    out.split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .expect("this host has a non-loopback IPv4 address")
        .to_owned()
}

/// A source whose build replaces its .deb by a symlink to the build's own request after
/// dh_builddeb (dpkg-genchanges still lists it).
fn symlinked_deb_source(dir: &Path, name: &str) -> PathBuf {
    let recipe = format!(
        "true\n\noverride_dh_builddeb:\n\tdh_builddeb\n\tln -sf /build/request.changes ../{name}_1.0~test12+1_all.deb"
    );
    buildable_source_with(dir, name, "1.0~test12+1", UNSTABLE, &recipe, &[])
}

/// A perl script (Net::FTP is in perl) that uploads an unsigned source upload to `test` over
/// loopback FTP, as a build could.
fn uploader_script(port: &str) -> String {
    format!(
        r#"use Net::FTP;
my $f = Net::FTP->new("127.0.0.1", Port => {port}, Passive => 1) or die "connect: $@";
$f->login("anonymous", "build") or die "login";
$f->cwd("/incoming");
open(my $d, ">", "e.dsc"); close $d;
$f->put("e.dsc", "hostilebuildup_1.0~test12+1.dsc") or die "put dsc";
open(my $c, ">", "c.changes");
print $c "Format: 1.8
Source: hostilebuildup
Version: 1.0~test12+1
Distribution: bookworm-test-unstable
Architecture: source
Changed-By: x <x\@example.org>
Files:
 d41d8cd98f00b204e9800998ecf8427e 0 misc optional hostilebuildup_1.0~test12+1.dsc
";
close $c;
$f->put("c.changes", "hostilebuildup_1.0~test12+1_source.changes") or die "put changes";
$f->quit;
print "uploaded from the build
";
"#
    )
}

/// A buildable source (see `buildable_source`) edited by `edit` in its tree, then rebuilt.
fn edited_source(dir: &Path, name: &str, recipe: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let changes = buildable_source(dir, name, "1.0~test12+1", UNSTABLE, recipe);
    let work = changes.parent().expect("dir").to_owned();
    let tree = work.join(name);
    edit(&tree);
    for f in std::fs::read_dir(&work).expect("dir").flatten() {
        if f.path().is_file() {
            let _ = std::fs::remove_file(f.path());
        }
    }
    ok(Command::new("dpkg-source").arg("-b").arg(name).current_dir(&work));
    let text = ok(Command::new("dpkg-genchanges").args(["-S", "-sa"]).current_dir(&tree));
    std::fs::write(&changes, text).expect("write");
    changes
}

/// A source whose binary package is named like another source's.
fn hijacking_source(dir: &Path, name: &str, victim: &str) -> PathBuf {
    edited_source(dir, name, "true", |tree| {
        let control = std::fs::read_to_string(tree.join("debian/control")).expect("control");
        let control = control.replace(&format!("Package: {name}\n"), &format!("Package: {victim}\n"));
        std::fs::write(tree.join("debian/control"), control).expect("write");
        std::fs::write(tree.join("debian/install"), format!("{name} usr/bin\n")).expect("write");
    })
}

/// Add a file to an unsigned source upload: listed in its .dsc and its .changes.
fn add_to_dsc(changes: &Path, name: &str, data: &[u8]) -> PathBuf {
    use buildbay::deb::Checksums;
    let dir = changes.parent().expect("dir");
    std::fs::write(dir.join(name), data).expect("write");
    let s = Checksums::of_bytes(data);
    let text = std::fs::read_to_string(changes).expect("read");
    let parsed = buildbay::deb::Changes::parse(&text).expect("parse");
    let dsc_name = parsed.dsc().expect("dsc").name.to_string();
    let dsc_path = dir.join(&dsc_name);
    let dsc = std::fs::read_to_string(&dsc_path).expect("dsc");
    let dsc = dsc.replacen("Files:\n", &format!("Files:\n {} {} {name}\n", s.md5, s.size), 1);
    std::fs::write(&dsc_path, &dsc).expect("write");
    let d = Checksums::of_file(&dsc_path).expect("sums");
    let mut out = String::new();
    let mut field = "";
    for line in text.lines() {
        if !line.starts_with(' ') {
            field = line.split(':').next().unwrap_or("");
            out.push_str(line);
            out.push('\n');
            match field {
                "Files" => out.push_str(&format!(" {} {} misc optional {name}\n", s.md5, s.size)),
                "Checksums-Sha256" => out.push_str(&format!(" {} {} {name}\n", s.sha256, s.size)),
                "Checksums-Sha1" => out.push_str(&format!(" {} {} {name}\n", s.sha1, s.size)),
                _ => {}
            }
            continue;
        }
        if line.ends_with(&dsc_name) {
            let hash = match field {
                "Files" => &d.md5,
                "Checksums-Sha256" => &d.sha256,
                _ => &d.sha1,
            };
            let tail = line.trim().splitn(3, ' ').nth(2).unwrap_or("");
            out.push_str(&format!(" {hash} {} {tail}\n", d.size));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(changes, out).expect("write");
    changes.to_owned()
}

/// Bounds and browsers: an oversized or compressed signed `.changes`, an FTP quota, a login
/// flood, a stuck upload, a cross-site GET, a page served from the pool.
#[test]
fn hostile_bounds_and_browsers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let (http, ftp) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let srv = serve_on(
        &inst,
        &http,
        &ftp,
        &[
            "--build-slots",
            "0",
            "--packaging-timeout",
            "8",
            "--ftp-quota-per-peer",
            "3000000000",
            "--max-file-size",
            "3000000000",
        ],
    );
    let pid = srv.child.id();
    let api_url = |q: &str| format!("{}/mini_buildd/api/{q}", srv.url);

    // 1. A 2 GiB .changes is refused at once, unread; the daemon stays small.
    let big = dir.path().join("hostilebig_1.0_source.changes");
    let f = std::fs::File::create(&big).expect("create");
    f.set_len(2 << 30).expect("sparse 2 GiB");
    drop(f);
    let out = run(Command::new("curl").args(["-s", "-T"]).arg(&big).arg(format!("ftp://{}/incoming/", srv.ftp)));
    assert!(out.status.success(), "the upload itself is taken: {}", String::from_utf8_lossy(&out.stderr));
    let e = final_event(&srv.url, "hostilebig");
    assert_eq!(e["type"], "REJECTED", "{e}");
    assert!(reason(&e).contains("more than the"), "{e}");
    // A compressed, signed message (not clear-signed) of 200 MB of zeros: refused unread.
    let g = Gpg::new(dir.path());
    g.generate("Bomb <bomb@example.org>", "1y", None);
    let zeros = dir.path().join("zeros");
    std::fs::File::create(&zeros).expect("create").set_len(200 << 20).expect("sparse");
    let bomb = dir.path().join("hostilebomb_1.0_source.changes");
    ok(g.cmd().args(["--yes", "--armor", "--compress-level", "9", "--sign", "--output"]).arg(&bomb).arg(&zeros));
    crate::common::upload::ftp("upload", &srv.ftp, &[bomb]);
    let e = final_event(&srv.url, "hostilebomb");
    assert_eq!(e["type"], "REJECTED", "{e}");
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap_or(0)))
        .expect("VmHWM");
    assert!(hwm < 100 * 1024, "the daemon's peak RSS was {hwm} kB");

    // 2. A PACKAGING that gets no build result (no builder here) ends FAILED at its deadline,
    //    and retry takes it again.
    let pkg = make_source(dir.path(), "hostilestuck", "1.0~test12+1", UNSTABLE, None);
    ftp_upload(&srv.ftp, &pkg);
    let e = final_event(&srv.url, "hostilestuck");
    assert_eq!(e["type"], "FAILED", "{e}");
    assert!(reason(&e).contains("no build result for amd64 within 8 s"), "{e}");
    let key = e["extra"]["key"].as_str().expect("key").to_owned();
    let out = api_as(&srv.url, "admin", &["retry", &key]);
    assert!(out.status.success(), "retry: {}", String::from_utf8_lossy(&out.stderr));
    let start = Instant::now();
    while of(&events(&srv.url), "hostilestuck", "PACKAGING").len() < 2 {
        assert!(start.elapsed() < WAIT, "retry did not package it again");
        std::thread::sleep(Duration::from_millis(300));
    }

    // 3. A cross-site GET with the admin's browser session: refused, nothing created.
    let (_, head, _) = curl(&[&format!("{}/accounts/login/", srv.url)]);
    let csrf = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().starts_with("set-cookie: csrftoken=").then(|| l.to_owned()))
        .expect("csrftoken cookie");
    assert!(csrf.contains("HttpOnly") && csrf.contains("SameSite=Strict"), "{csrf}");
    let token = csrf.split('=').nth(1).and_then(|v| v.split(';').next()).expect("token").to_owned();
    let (code, head, _) = curl(&[
        "-H",
        &format!("Cookie: csrftoken={token}"),
        "--data-urlencode",
        "username=admin",
        "--data-urlencode",
        "password=admin-password",
        "--data-urlencode",
        &format!("csrfmiddlewaretoken={token}"),
        "--data-urlencode",
        "next=/mini_buildd/",
        &format!("{}/accounts/login/", srv.url),
    ]);
    assert_eq!(code, 302, "{head}");
    let session = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: sessionid="))
        .expect("session cookie")
        .to_owned();
    assert!(session.contains("SameSite=Strict") && session.contains("HttpOnly"), "{session}");
    let sid = session.split('=').nth(1).and_then(|v| v.split(';').next()).expect("sid").to_owned();
    // The session's own CSRF token replaced the login form's.
    let session_token = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: csrftoken="))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.split(';').next())
        .expect("the session's csrftoken")
        .to_owned();
    assert_ne!(session_token, token, "a session gets a token of its own");
    let cookies = format!("csrftoken={session_token}; sessionid={sid}");
    // The login form's token, planted as the cookie and echoed: not the session's, refused.
    let (code, _, body) = curl(&[
        "-H",
        &format!("Cookie: csrftoken={token}; sessionid={sid}"),
        "-H",
        &format!("X-CSRFToken: {token}"),
        &api_url("user_add/?name=mallory&role=admin&confirm=user_add&output=json"),
    ]);
    assert_eq!(code, 403, "{body}");
    let (code, _, body) = curl(&[
        "-H",
        &format!("Cookie: {cookies}"),
        &api_url("user_add/?name=mallory&role=admin&password=pw-of-mallory&confirm=user_add&output=json"),
    ]);
    assert_eq!(code, 403, "{body}");
    // Also with browser headers claiming the same origin: the token is what counts.
    let (code, _, body) = curl(&[
        "-H",
        &format!("Cookie: {cookies}"),
        "-H",
        "Sec-Fetch-Site: same-origin",
        "-H",
        &format!("Origin: {}", srv.url),
        &api_url("user_add/?name=mallory&role=admin&password=pw-of-mallory&confirm=user_add&output=json"),
    ]);
    assert_eq!(code, 403, "{body}");
    // With the token, but the password in the URL: refused for that.
    let (code, _, body) = curl(&[
        "-H",
        &format!("Cookie: {cookies}"),
        &api_url(&format!(
            "user_add/?name=mallory&role=admin&password=pw-of-mallory&confirm=user_add&csrfmiddlewaretoken={session_token}&output=json"
        )),
    ]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("POST body"), "{body}");
    let users = inst_users(&srv.url, &cookies, &session_token);
    assert!(!users.contains("mallory"), "{users}");
    // Logging out by a link does nothing.
    let (code, _, _) = curl(&["-H", &format!("Cookie: {cookies}"), &format!("{}/accounts/logout/", srv.url)]);
    assert_eq!(code, 405);

    // 4. A file in the pool is never a page: no text/html, nosniff, a sandbox.
    let pool = inst.repo().join("pool/main/e");
    std::fs::create_dir_all(&pool).expect("mkdir");
    std::fs::write(pool.join("evil.html"), "<script>alert(document.cookie)</script>").expect("write");
    let (code, head, _) = curl(&[&format!("{}/repositories/test/pool/main/e/evil.html", srv.url)]);
    assert_eq!(code, 200);
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("x-content-type-options: nosniff") && head.contains("content-security-policy: sandbox"),
        "{head}"
    );

    // 5. An FTP quota per peer: past it, the transfer is cut off with 552, nothing lands.
    drop(srv);
    let (http, ftp) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let srv = serve_on(&inst, &http, &ftp, &["--build-slots", "0", "--ftp-quota-per-peer", "1000000"]);
    let file = dir.path().join("hostilequota_1.0.tar.xz");
    std::fs::write(&file, vec![7u8; 3_000_000]).expect("write");
    let out = run(Command::new("curl").args(["-s", "-v", "-T"]).arg(&file).arg(format!("ftp://{}/incoming/", srv.ftp)));
    assert!(!out.status.success());
    // 552 on the control connection; curl may instead see the data connection reset first
    // (the server stops reading it), which races the reply.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("552") || err.contains("Connection reset by peer"), "{err}");
    assert!(!inst.state().join("incoming/hostilequota_1.0.tar.xz").exists());

    // 6. A thousand parallel logins: a handful of hashes; status stays fast meanwhile.
    let url = srv.url.clone();
    let logins = std::thread::spawn(move || login_flood(&url, 1000));
    let mut latencies = Vec::new();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    for _ in 0..200 {
        let t = Instant::now();
        let r = agent.get(format!("{}/mini_buildd/api/status/?output=json", srv.url)).call();
        assert!(r.is_ok_and(|r| r.status() == 200));
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(5));
    }
    let (hashed, refused) = logins.join().expect("flood");
    latencies.sort_by(|a, b| a.total_cmp(b));
    let p99 = latencies[latencies.len() * 99 / 100];
    println!("login flood: {hashed} hashed, {refused} refused; status p99 {p99:.1} ms");
    assert!(hashed <= buildbay::auth::LoginLimiter::PER_ADDRESS, "{hashed} passwords were hashed");
    assert_eq!(hashed + refused, 1000);
    assert!(p99 < 100.0, "status p99 {p99:.1} ms during the flood");
}

/// Users, as an admin's browser session sees them (a read: no token needed).
fn inst_users(url: &str, cookies: &str, token: &str) -> String {
    let (_, _, body) = curl(&[
        "-H",
        &format!("Cookie: {cookies}"),
        "-H",
        &format!("X-CSRFToken: {token}"),
        &format!("{url}/mini_buildd/api/user_ls/?output=json"),
    ]);
    body
}

/// `n` logins with a wrong password at once; returns (hashed, refused).
fn login_flood(url: &str, n: usize) -> (usize, usize) {
    let token = "f".repeat(64);
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (url, token) = (url.to_owned(), token.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent =
                    ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
                let (mut hashed, mut refused) = (0, 0);
                for _ in 0..n / 50 {
                    let r = agent
                        .post(format!("{url}/accounts/login/"))
                        .header("cookie", format!("csrftoken={token}"))
                        .send_form([
                            ("username", "admin"),
                            ("password", "wrong-password"),
                            ("csrfmiddlewaretoken", &token),
                        ]);
                    match r.map(|r| r.status().as_u16()) {
                        Ok(200) => hashed += 1,
                        Ok(429 | 503) => refused += 1,
                        other => panic!("a login answered {other:?}"),
                    }
                }
                (hashed, refused)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("thread")).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}
