//! Notification mail through the real daemon and a real SMTP server (Debian's aiosmtpd, with
//! STARTTLS and AUTH required): the server is down while an upload is INSTALLED (nothing waits
//! for it), and once it is up the mail arrives, to the daemon's `notify`, the repository's
//! `notify`, Changed-By and a subscriber, each once, with the event's JSON attached. Changing
//! the mail settings does not deactivate the daemon or the repository.

use crate::common::upload::*;
use crate::common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
const UNSTABLE: &str = "bookworm-test-unstable";

/// The SMTP server, until dropped.
struct Sink(std::process::Child);

impl Sink {
    fn start(port: u16, out: &Path, cert: &Path, key: &Path) -> Sink {
        use std::io::BufRead;
        let mut child = Command::new("/usr/bin/python3")
            .arg(format!("{}/tests/support/smtp_sink.py", env!("CARGO_MANIFEST_DIR")))
            .arg(port.to_string())
            .arg(out)
            .arg(cert)
            .arg(key)
            .args(["bb", "mail-secret"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("aiosmtpd (python3-aiosmtpd)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        Sink(child)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn received(dir: &Path) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|m| m["rcpt_tos"].to_string());
    v
}

fn answer(out: std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON answer")
}

#[test]
fn notifications_are_mailed_over_starttls_once_the_server_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path());
    let (cert, key) = ca.server("smtp");
    let ca = ca.pem();
    let mails = dir.path().join("mails");
    std::fs::create_dir(&mails).expect("mkdir");
    let password = dir.path().join("smtp-password");
    std::fs::write(&password, "mail-secret\n").expect("write");

    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    ok(inst.cmd(&["user", "add", "alice", "--role", "login"]).env("BUILDBAY_PASSWORD", "alice-password"));
    let smtp_port = free_port();
    let srv = serve_local(
        &inst,
        &[
            "--smtp",
            &format!("smtp://bb@127.0.0.1:{smtp_port}?tls=required"),
            "--smtp-password-file",
            password.to_str().expect("utf-8"),
            "--smtp-ca",
            ca.to_str().expect("utf-8"),
            "--mail-retry-seconds",
            "1",
        ],
    );
    let status = api(&srv.url, "status", "");
    assert_eq!(status["mail"]["on"], true, "{status}");

    // The daemon's and the repository's mail settings, through config_set: neither is
    // deactivated by them.
    let ls = answer(api_as(&srv.url, "admin", &["config_ls"]));
    let fields = |kind: &str, id: Option<&str>| {
        ls.as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == kind && id.is_none_or(|id| o["id"] == id))
            .unwrap_or_else(|| panic!("no {kind} in {ls}"))["fields"]
            .clone()
    };
    let mut daemon = fields("daemon", None);
    daemon["notify"] = serde_json::json!(["Ops <ops@example.org>"]);
    daemon["allow_emails_to"] = serde_json::json!(".*@example\\.org");
    daemon["email_address"] = serde_json::json!("Buildbay CI <ci@example.org>");
    let set = answer(api_as(&srv.url, "admin", &["config_set", "daemon", &daemon.to_string()]));
    assert_eq!(set["deactivated"], false, "{set}");
    let mut repo = fields("repository", Some("test"));
    repo["notify"] = serde_json::json!(["repo@example.org"]);
    repo["notify_changed_by"] = serde_json::json!(true);
    let set = answer(api_as(&srv.url, "admin", &["config_set", "repository", &repo.to_string()]));
    assert_eq!(set["deactivated"], false, "{set}");
    // A bad regex and a bad address are refused with the reason.
    let mut bad = daemon.clone();
    bad["allow_emails_to"] = serde_json::json!("(unclosed");
    let out = api_as(&srv.url, "admin", &["config_set", "daemon", &bad.to_string()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("allow_emails_to"), "{out:?}");
    let out = api_as(&srv.url, "alice", &["set_user_email", "--email", "alice@example.org\r\nBcc: x@y.org"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a mail address"), "{out:?}");
    // Only addresses allow_emails_to matches: a user cannot have a third party mailed.
    let out = api_as(&srv.url, "alice", &["set_user_email", "--email", "victim@elsewhere.org"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("allow_emails_to"), "{out:?}");
    // alice subscribes to hello, with her address.
    answer(api_as(&srv.url, "alice", &["set_user_email", "--email", "alice@example.org"]));
    answer(api_as(&srv.url, "alice", &["subscribe", "hello", ""]));

    // INSTALLED while the mail server is down: nothing waits for it.
    let (ig, ifpr) = instance_signer(dir.path(), &inst.state());
    let changes = make_source(dir.path(), "hello", "1.0-1~test12+1", UNSTABLE, None);
    ftp_upload(&srv.ftp, &changes);
    let packaging = wait_event(&srv.url, "hello", "PACKAGING", WAIT);
    ftp_upload(&srv.ftp, &build_result(dir.path(), &packaging, "successful", (&ig, &ifpr)));
    wait_event(&srv.url, "hello", "INSTALLED", WAIT);
    let start = Instant::now();
    while api(&srv.url, "status", "")["mail"]["queued"].as_u64().unwrap_or(0) == 0 {
        assert!(start.elapsed() < WAIT, "no mail was queued");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(received(&mails).is_empty());

    // The server comes up: each recipient gets each event once.
    let _sink = Sink::start(smtp_port, &mails, &cert, &key);
    // Headers unfolded (a long subject is folded onto two lines).
    let text = |m: &serde_json::Value| m["data"].as_str().unwrap_or("").replace("\r\n ", " ");
    let subject = |m: &serde_json::Value| text(m).lines().find(|l| l.starts_with("Subject: ")).unwrap_or("").to_owned();
    let want = |m: &serde_json::Value, kind: &str| {
        subject(m).starts_with(&format!("Subject: [buildbay-ci] {kind}({UNSTABLE}): hello-1.0-1~test12+1 (source)"))
    };
    let start = Instant::now();
    let got = loop {
        let got = received(&mails);
        let installed: Vec<&serde_json::Value> = got.iter().filter(|m| want(m, "INSTALLED")).collect();
        if installed.len() >= 4 && api(&srv.url, "status", "")["mail"]["queued"] == 0 {
            break got;
        }
        assert!(start.elapsed() < WAIT, "mail did not arrive: {got:#?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let installed: Vec<&serde_json::Value> = got.iter().filter(|m| want(m, "INSTALLED")).collect();
    let mut to: Vec<String> = installed.iter().map(|m| m["rcpt_tos"][0].as_str().unwrap_or("").to_owned()).collect();
    to.sort();
    assert_eq!(to, ["alice@example.org", "ops@example.org", "repo@example.org", "test@example.org"], "{installed:#?}");
    for m in &installed {
        let data = text(m);
        assert_eq!(m["mail_from"], "ci@example.org");
        assert!(data.contains("From: \"Buildbay CI\" <ci@example.org>\r\n"), "{data}");
        assert!(data.lines().any(|l| l.starts_with("Message-ID: <") && l.ends_with("@localhost>")), "{data}");
        assert!(data.contains("Reason for this mail:"), "{data}");
        assert!(data.contains("\"hello_1.0-1~test12+1_INSTALLED.json\""), "{data}");
        assert!(data.contains("Content-Type: application/json"), "{data}");
        // The attachment is the event, as the events API gives it.
        let json = &data[data.find("\r\n\r\n{").expect("the attachment") + 4..];
        let event: serde_json::Value =
            serde_json::from_str(&json[..json.rfind("}\r\n").expect("its end") + 1]).expect("the event's JSON");
        assert_eq!((event["type"].as_str(), event["source"].as_str()), (Some("INSTALLED"), Some("hello")), "{event}");
    }
    let alice = installed.iter().find(|m| m["rcpt_tos"][0] == "alice@example.org").expect("alice");
    assert!(alice["data"].as_str().unwrap().contains("matching subscription"), "{alice}");
    // Each event's mail went out once per address.
    let mut seen = std::collections::BTreeSet::new();
    for m in &got {
        let subject = subject(m);
        assert!(seen.insert((m["rcpt_tos"].to_string(), subject.clone())), "twice: {subject} to {}", m["rcpt_tos"]);
    }
    let metrics = ok(Command::new("curl").args(["-sf", "--max-time", "10"]).arg(format!("{}/metrics", srv.url)));
    assert!(metrics.contains("buildbay_mails_total{outcome=\"sent\"}"), "{metrics}");
    assert!(metrics.contains("buildbay_mails_total{outcome=\"deferred\"}"), "{metrics}");
    assert!(metrics.contains("buildbay_mail_queued 0"), "{metrics}");
    // The install published its distribution, and the publish was timed.
    let published = metrics
        .lines()
        .find_map(|l| l.strip_prefix("buildbay_publish_seconds_count "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(published.is_some_and(|n| n >= 1), "{metrics}");
    assert!(srv.stop());
}
