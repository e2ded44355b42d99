//! HTTPS: the daemon's TLS listener with a certificate from a test CA. apt installs over https
//! with that CA, mini-buildd's own client talks to it, answers name https URLs, cookies are
//! `Secure`, plain HTTP redirects (all but `/repositories/`), a client cannot claim HTTPS over
//! HTTP, and a renewed certificate is served without a restart (a broken one is not).

use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn curl(ca: &Path, args: &[&str]) -> String {
    ok(Command::new("curl").args(["-s", "--max-time", "20", "--cacert"]).arg(ca).args(args))
}

/// The serial of the certificate the server at `port` presents.
fn served_serial(port: u16) -> String {
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"
    )));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn serial(cert: &Path) -> String {
    ok(Command::new("openssl").args(["x509", "-noout", "-serial", "-in"]).arg(cert)).trim().to_owned()
}

#[test]
fn https_serves_apt_the_api_and_mini_buildds_client_and_reloads_its_certificate() {
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let pkg = make_pkg(inst.dir.path(), "bbtls", "1.0~test12+1");
    inst.ok(&["repo", "include", "bookworm-test-unstable", pkg.to_str().expect("utf-8")]);
    let (asc, _) = inst.key_files();
    let ca = TestCa::new(inst.dir.path());
    let (cert, key) = ca.server("web");
    // The daemon reads the pair through paths it is given; a renewal replaces the files.
    let live = inst.dir.path().join("live");
    std::fs::create_dir(&live).expect("mkdir");
    std::fs::copy(&cert, live.join("cert.pem")).expect("copy");
    std::fs::copy(&key, live.join("key.pem")).expect("copy");
    let srv = Server::start(inst.cmd(&[
        "serve",
        "--http",
        "127.0.0.1:0",
        "--tls-cert",
        live.join("cert.pem").to_str().expect("utf-8"),
        "--tls-key",
        live.join("key.pem").to_str().expect("utf-8"),
        "--https-redirect",
    ]));
    let https = srv
        .log
        .iter()
        .find_map(|l| {
            l.split("HTTPS listens on ").nth(1)?.split_whitespace().next().map(|u| u.trim_end_matches('/').to_owned())
        })
        .unwrap_or_else(|| panic!("no HTTPS line in {:#?}", srv.log));
    let port: u16 = https.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let ca_pem = ca.pem();

    // Answers over HTTPS name https URLs.
    let status: serde_json::Value =
        serde_json::from_str(&curl(&ca_pem, &[&format!("{https}/mini_buildd/api/status/?output=json")])).expect("JSON");
    assert_eq!(status["url"], https, "{status}");
    let sources = curl(&ca_pem, &[&format!("{https}/mini_buildd/api/sources_list/?output=json&codenames=bookworm")]);
    assert!(sources.contains(&format!(" {https}/repositories/test bookworm-test-unstable main")), "{sources}");
    // Without the CA, a client refuses the server.
    let out = run(Command::new("curl").args(["-s", "--max-time", "10"]).arg(format!("{https}/")));
    assert_eq!(out.status.code(), Some(60), "curl must not trust the test CA by itself");

    // Plain HTTP: pages redirect to HTTPS; apt's repository tree does not; a client's claim to
    // be HTTPS is not believed.
    let head = |url: &str, extra: &[&str]| {
        ok(Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"])
            .args(extra)
            .arg(url))
    };
    assert_eq!(
        head(&format!("{}/mini_buildd/api/status/?output=json", srv.url), &[]),
        format!("308 {https}/mini_buildd/api/status/?output=json")
    );
    let inrelease = "/repositories/test/dists/bookworm-test-unstable/InRelease";
    assert!(head(&format!("{}{inrelease}", srv.url), &[]).starts_with("200 "));
    let forged = head(&format!("{}/mini_buildd/api/status/?output=json", srv.url), &["-H", "x-buildbay-scheme: https"]);
    assert_eq!(forged, format!("308 {https}/mini_buildd/api/status/?output=json"));
    // Over HTTPS with the redirect, browsers are told to stay on HTTPS.
    let hsts = curl(&ca_pem, &["-D", "-", "-o", "/dev/null", &format!("{https}/")]);
    assert!(hsts.to_ascii_lowercase().contains("strict-transport-security: max-age=31536000"), "{hsts}");

    // apt over https with the CA configured.
    let apt = AptRoot::new(inst.dir.path(), &format!("{https}/repositories/test"), &["bookworm-test-unstable"], &asc);
    let ca_option = format!("-oAcquire::https::CAInfo={}", ca_pem.display());
    let out = apt.apt("apt-get", &[&ca_option, "update"]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !all.lines().any(|l| l.starts_with("W:") || l.starts_with("E:")), "{all}");
    assert!(all.contains(&format!("Get:1 {https}/repositories/test bookworm-test-unstable InRelease")), "{all}");
    let out = apt.apt("apt-get", &[&ca_option, "-y", "install", "bbtls"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ok(&mut Command::new(apt.root.join("usr/bin/bbtls"))).trim(), "hello from bbtls 1.0~test12+1");

    // Login over HTTPS: every cookie is Secure.
    let jar = inst.dir.path().join("jar");
    let form = curl(&ca_pem, &["-c", jar.to_str().expect("utf-8"), &format!("{https}/accounts/login/")]);
    let token = form
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the login form's token")
        .to_owned();
    let headers = curl(
        &ca_pem,
        &[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-b",
            jar.to_str().expect("utf-8"),
            "--data-urlencode",
            &format!("csrfmiddlewaretoken={token}"),
            "--data-urlencode",
            "username=admin",
            "--data-urlencode",
            "password=admin-password",
            &format!("{https}/accounts/login/"),
        ],
    );
    let cookies: Vec<&str> = headers.lines().filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).collect();
    assert!(cookies.iter().any(|c| c.contains("sessionid=")), "{headers}");
    assert!(cookies.iter().all(|c| c.trim_end().ends_with("; Secure")), "{headers}");

    // mini-buildd's client, unchanged, over HTTPS (Python trusts the CA through SSL_CERT_FILE).
    let out = run(Command::new("mini-buildd-api").args(["--json", "status", &https]).env("SSL_CERT_FILE", &ca_pem));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["url"], https, "{answer}");

    // A renewed certificate is served without a restart; a broken one is not taken.
    let first = served_serial(port);
    assert_eq!(first, serial(&cert));
    let (renewed, renewed_key) = ca.server("web2");
    std::fs::copy(&renewed_key, live.join("key.pem.new")).expect("copy");
    std::fs::copy(&renewed, live.join("cert.pem.new")).expect("copy");
    std::fs::rename(live.join("key.pem.new"), live.join("key.pem")).expect("rename");
    std::fs::rename(live.join("cert.pem.new"), live.join("cert.pem")).expect("rename");
    let start = Instant::now();
    while served_serial(port) != serial(&renewed) {
        assert!(start.elapsed() < Duration::from_secs(30), "the renewed certificate was not served");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::write(live.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        .expect("write");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(served_serial(port), serial(&renewed), "a broken renewal replaced the working certificate");
    assert!(curl(&ca_pem, &[&format!("{https}/mini_buildd/api/status/?output=json")]).contains("\"url\""));
    assert!(srv.stop());
}

#[test]
fn https_without_a_usable_certificate_does_not_start() {
    let inst = Instance::new("ed25519");
    let ca = TestCa::new(inst.dir.path());
    let (cert, _) = ca.server("a");
    let (_, other_key) = ca.server("b");
    for (cert, key, says) in [
        (cert.as_path(), other_key.as_path(), "not the certificate's key"),
        (Path::new("/nonexistent/cert.pem"), other_key.as_path(), "/nonexistent/cert.pem"),
        (ca.pem().as_path(), ca.pem().as_path(), "--tls-key"),
    ] {
        let out = run(&mut inst.cmd(&[
            "serve",
            "--http",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{cert:?} {key:?}: {err}");
    }
}

/// FTPS: with a certificate on the drop box, `status.incoming_url` and `dput_conf` say `ftps`;
/// mini-buildd's own uploader takes `dput_conf`'s snippet and uploads over TLS; buildbay's own
/// FTP client (the one remotes' requests and results travel by) verifies the server against its
/// CA and refuses one it does not trust.
#[test]
fn ftps_uploads_with_dput_conf_and_verifies_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    let ca = TestCa::new(dir.path());
    let (cert, key) = ca.server("ftp");
    let srv =
        serve_local(&inst, &["--ftp-cert", cert.to_str().expect("utf-8"), "--ftp-key", key.to_str().expect("utf-8")]);
    let status = crate::common::upload::api(&srv.url, "status", "");
    assert_eq!(status["incoming_url"], format!("ftps://{}", srv.ftp), "{status}");
    let conf = crate::common::upload::api(&srv.url, "dput_conf", "");
    let conf = conf.as_str().expect("a string");
    assert!(conf.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["method", "=", "ftps"]), "{conf}");
    let section = conf.lines().next().unwrap_or("").trim_matches(['[', ']']).to_owned();
    let conf_path = dir.path().join("dput.cf");
    std::fs::write(&conf_path, conf).expect("write");

    // mini-buildd's uploader, over FTPS, with the snippet unchanged.
    let changes =
        crate::common::upload::make_source(dir.path(), "bbftps", "1.0~test12+1", "bookworm-test-unstable", None);
    let out = run(Command::new("mini-buildd-dput").arg("-c").arg(&conf_path).arg(&section).arg(&changes));
    assert!(out.status.success(), "mini-buildd-dput: {}", String::from_utf8_lossy(&out.stderr));
    crate::common::upload::wait_event(&srv.url, "bbftps", "PACKAGING", Duration::from_secs(60));

    // buildbay's client: verified against the test CA it uploads; against another CA it refuses.
    let to: buildbay::protocol::remote::FtpUrl =
        status["incoming_url"].as_str().expect("url").parse().expect("ftps URL");
    assert!(to.tls);
    let other = TestCa::new(&dir.path().join("other"));
    let part = [buildbay::remote::Part::Bytes { name: "probe.txt", data: b"probe" }];
    let refused = buildbay::remote::ftp_put_trusting(&to, &part, &other.pem()).expect_err("an untrusted server");
    assert!(refused.to_string().contains("FTPS"), "{refused}");
    let changes =
        crate::common::upload::make_source(dir.path(), "bbftps2", "1.0~test12+1", "bookworm-test-unstable", None);
    let files = crate::common::upload::upload_files(&changes);
    let parts: Vec<buildbay::remote::Part> = files
        .iter()
        .map(|p| buildbay::remote::Part::File { name: p.file_name().and_then(|n| n.to_str()).expect("name"), path: p })
        .collect();
    buildbay::remote::ftp_put_trusting(&to, &parts, &ca.pem()).expect("an upload over FTPS");
    crate::common::upload::wait_event(&srv.url, "bbftps2", "PACKAGING", Duration::from_secs(60));
    assert!(srv.stop());
}
