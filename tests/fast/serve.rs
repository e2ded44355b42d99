//! The daemon: its own port or systemd's socket, apt over HTTP, graceful SIGTERM.

use crate::common::*;
use std::process::{Command, Stdio};

#[test]
fn apt_installs_over_http_and_the_state_directory_is_held() {
    let inst = Instance::new("ed25519");
    let pkg = make_pkg(inst.dir.path(), "bbweb", "1.0~test12+1");
    inst.ok(&["repo", "include", "bookworm-test-unstable", pkg.to_str().unwrap()]);
    let (asc, _) = inst.key_files();
    let server = Server::start(inst.cmd(&["serve", "--http", "127.0.0.1:0"]));
    let url = server.url.clone();

    let err = inst.fails(&["repo", "ls", "bbweb"]);
    assert!(err.contains("in use by a running buildbay daemon"), "{err}");

    let apt = AptRoot::new(inst.dir.path(), &format!("{url}/repositories/test"), &["bookworm-test-unstable"], &asc);
    apt.update();
    let out = apt.apt("apt-get", &["-y", "install", "bbweb"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ok(&mut Command::new(apt.root.join("usr/bin/bbweb"))).trim(), "hello from bbweb 1.0~test12+1");

    // Nothing outside the repository tree is reachable.
    for path in [
        "/repositories/test/../../buildbay.redb",
        "/repositories/test/%2e%2e/%2e%2e/buildbay.redb",
        "/repositories/..%2f..%2fbuildbay.redb",
    ] {
        let code = ok(Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--path-as-is"])
            .arg(format!("{url}{path}")));
        assert_eq!(code, "404", "{path}");
    }
    assert!(server.stop(), "serve exits cleanly on SIGTERM");
    inst.ok(&["repo", "ls", "bbweb"]);
}

#[test]
fn socket_activation_answers_the_first_request() {
    let inst = Instance::new("ed25519");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &format!("127.0.0.1:{port}"), "--fdname=http", bin(), "--state"]).arg(inst.state()).arg("serve");
    let mut child = cmd.stderr(Stdio::null()).stdout(Stdio::null()).spawn().expect("systemd-socket-activate");
    // The socket exists before buildbay starts; the first request starts it and is answered.
    let mut code = String::new();
    for _ in 0..100 {
        code = String::from_utf8_lossy(
            &Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://127.0.0.1:{port}/repositories/test/dists/bookworm-test-unstable/InRelease"))
                .output()
                .expect("curl")
                .stdout,
        )
        .into_owned();
        if code == "200" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(code, "200");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    child.wait().expect("wait");
}

#[test]
fn serve_repairs_a_publish_that_a_crash_interrupted() {
    let inst = Instance::new("ed25519");
    // The state a writer killed between its commit and its publish leaves: the index is ahead,
    // the distribution is marked dirty, its published tree is missing.
    let dists = inst.repo().join("dists");
    std::fs::remove_file(dists.join("bookworm-test-unstable")).unwrap();
    {
        let store = buildbay::store::Store::open(&inst.state()).unwrap();
        let tx = store.write().unwrap();
        tx.open_table(buildbay::store::DIRTY).unwrap().insert("bookworm-test-unstable/*/*", 1).unwrap();
        tx.commit().unwrap();
    }
    let server = Server::start(inst.cmd(&["serve", "--http", "127.0.0.1:0"]));
    let code = ok(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/repositories/test/dists/bookworm-test-unstable/InRelease", server.url)));
    assert_eq!(code, "200");
    assert!(server.stop());
    let (_, gpg) = inst.key_files();
    verify_published(&inst.repo(), &gpg);
}

#[test]
fn socket_activation_by_an_ftp_upload() {
    let inst = Instance::new("ed25519");
    let dir = tempfile::tempdir().expect("tempdir");
    let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let (http, ftp) = (free(), free());
    let mut child = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{http}"), "-l", &format!("127.0.0.1:{ftp}"), "--fdname=http:ftp", bin()])
        .arg("--state")
        .arg(inst.state())
        .arg("serve")
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate");
    // The first connection is the upload: it starts buildbay, which serves FTP on the passed socket.
    let changes = upload::make_source(dir.path(), "activated", "1.0-1~test12+1", "bookworm-test-unstable", None);
    upload::ftp_upload(&format!("127.0.0.1:{ftp}"), &changes);
    let e = upload::wait_event(
        &format!("http://127.0.0.1:{http}"),
        "activated",
        "PACKAGING",
        std::time::Duration::from_secs(60),
    );
    assert_eq!(e["distribution"], "bookworm-test-unstable");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    child.wait().expect("wait");
}
