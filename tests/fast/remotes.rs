//! Remotes (issue 17) without builds: two real instances shake hands over their HTTP APIs
//! (mini-buildd's `pub_key`, `handshake` and `status`), list each other in `status.remotes`,
//! and refuse what is not theirs: a handshake from a stranger, build requests signed by a key
//! that is not a remote's or whose result would go elsewhere, and an upload that no builder
//! anywhere can build (REJECTED, with the reason). Builds on a remote: tests/heavy/remotes.rs.

use crate::common::upload::*;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const UNSTABLE: &str = "bookworm-test-unstable";

/// A daemon on free ports with `slots` build slots (builds as child processes).
fn serve(inst: &Instance, slots: &str) -> Server {
    Server::start(inst.cmd(&[
        "serve",
        "--http",
        "127.0.0.1:0",
        "--ftp",
        "127.0.0.1:0",
        "--public-host",
        "127.0.0.1",
        "--build-slots",
        slots,
        "--build-runner",
        "child",
    ]))
}

fn admin(inst: &Instance) {
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
}

/// `buildbay api` as the admin; its standard output, or a panic with its error.
fn as_admin(url: &str, call: &[&str]) -> String {
    let out = api_as(url, "admin", call);
    assert!(out.status.success(), "{call:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn remotes_of(url: &str) -> Vec<String> {
    let s = api(url, "status", "");
    s["remotes"].as_array().expect("remotes").iter().map(|r| r.as_str().unwrap_or_default().to_owned()).collect()
}

/// `GET` with curl: (status, body).
fn get(url: &str) -> (u16, String) {
    let out = run(Command::new("curl").args(["-s", "--max-time", "30", "-w", "\n%{http_code}"]).arg(url));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_owned())
}

/// A build request for `evil` 1.0-1 as a remote packager would send it (its tar holds a
/// harmless `.config` file), clear-signed by `signer`. Returns the `.changes`.
fn build_request(dir: &Path, upload_to: &str, signer: (&Gpg, &str)) -> PathBuf {
    use buildbay::deb::Checksums;
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let work = dir.join(format!("request-{}", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
    let content = work.join("content/.config");
    std::fs::create_dir_all(&content).expect("mkdir");
    std::fs::write(content.join("apt_sources.list"), "").expect("write");
    let tar = "evil_1.0-1_mini-buildd-buildrequest_amd64.changes.tar";
    ok(Command::new("tar").arg("-C").arg(work.join("content")).arg("-cf").arg(work.join(tar)).arg(".config"));
    let t = Checksums::of_file(&work.join(tar)).expect("sums");
    let changes = work.join("evil_1.0-1_mini-buildd-buildrequest_amd64.changes");
    std::fs::write(
        &changes,
        format!(
            "Format: 1.8\nSource: evil\nVersion: 1.0-1\nDistribution: {UNSTABLE}\nArchitecture: amd64\nX-Mini-Buildd-Timecode: 20261206-120000-000001\nX-Mini-Buildd-Upload-To: {upload_to}\nX-Mini-Buildd-Packager: http://127.0.0.1:1/\nX-Mini-Buildd-Builder: http://127.0.0.1:2\nFiles:\n {} {} mini-buildd extra {tar}\n",
            t.md5, t.size
        ),
    )
    .expect("write");
    signer.0.clearsign(signer.1, &changes, None);
    changes
}

#[test]
fn two_instances_shake_hands_and_refuse_what_is_not_theirs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (Instance::new("ed25519"), Instance::new("ed25519"));
    admin(&a);
    admin(&b);
    let (sa, sb) = (serve(&a, "0"), serve(&b, "0"));
    assert!(remotes_of(&sa.url).is_empty());

    // A stranger's handshake is refused, with the reason.
    let stranger = Gpg::new(&dir.path().join("stranger"));
    stranger.generate("Stranger <stranger@example.org>", "1y", None);
    let msg = dir.path().join("handshake.txt");
    std::fs::write(&msg, "Hand Shake\n").expect("write");
    stranger.clearsign("stranger@example.org", &msg, None);
    let signed = std::fs::read_to_string(&msg).expect("read");
    let q = serde_urlencoded::to_string([("signed_message", signed.as_str()), ("output", "json")]).expect("encode");
    let (code, body) = get(&format!("{}/mini_buildd/api/handshake/?{q}", sb.url));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("handshake failed"), "{body}");

    // A adds B: B's key comes from its pub_key; the check (B's handshake) fails until B has
    // added A, so A's remote is armed to activate once a check passes.
    let out = as_admin(&sa.url, &["setup", "--update", "all", "--pca", "all", "--remotes", &sb.url]);
    assert!(out.contains(&sb.url) && out.contains("FAILED"), "{out}");
    assert!(out.contains("handshake failed"), "{out}");
    // A lists B already (armed to activate once a check passes), so B's check of A passes.
    assert_eq!(remotes_of(&sa.url), vec![sb.url.clone()]);
    let out = as_admin(&sb.url, &["setup", "--update", "all", "--pca", "all", "--remotes", &sa.url]);
    assert!(!out.contains("FAILED"), "{out}");
    assert_eq!(remotes_of(&sb.url), vec![sa.url.clone()]);
    // A's dispatcher checks B again by itself; or a second setup does it at once.
    let out = as_admin(&sa.url, &["setup", "--update", "all", "--pca", "all", "--remotes", &sb.url]);
    assert!(!out.contains("FAILED"), "{out}");
    let ls: serde_json::Value = serde_json::from_str(&as_admin(&sa.url, &["config_ls"])).expect("config_ls JSON");
    let remote = ls.as_array().expect("objects").iter().find(|o| o["kind"] == "remote").expect("a remote").clone();
    assert_eq!((remote["id"].as_str(), remote["active"].as_bool()), (Some(sb.url.as_str()), Some(true)), "{remote}");
    assert_eq!(remote["fields"]["key_fingerprint"].as_str().map(str::len), Some(40), "{remote}");
    // mini-buildd's spelling of a remote (a Twisted endpoint) names the same one.
    let port = sb.url.rsplit(':').next().expect("port");
    let out = as_admin(
        &sa.url,
        &["setup", "--update", "all", "--pca", "all", "--remotes", &format!("tcp:host=127.0.0.1:port={port}")],
    );
    assert!(out.contains("ACTIVE") && !out.contains("FAILED"), "{out}");
    assert_eq!(remotes_of(&sa.url), vec![sb.url.clone()]);

    // wake answers the remote's status when it is up.
    let woken = as_admin(&sa.url, &["wake", "--remote", &sb.url]);
    assert!(woken.contains("incoming_url"), "{woken}");

    // An upload to A, which builds nothing, when no remote has the chroot: REJECTED.
    let changes = make_source(dir.path(), "nochroot", "1.0-1~test12+1", UNSTABLE, None);
    ftp_upload(&sa.ftp, &changes);
    let e = wait_event(&sa.url, "nochroot", "REJECTED", WAIT);
    let why = e["extra"]["error"]["detail"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("no builder has the chroot bookworm:amd64"), "{e}");
    assert!(api(&sa.url, "status", "")["build_queue"].as_array().expect("queue").is_empty());

    // Build requests to B: a stranger's is refused; so is A's own whose result would go to an
    // incoming that is not A's.
    let from_stranger = build_request(dir.path(), &format!("ftp://{}/", sa.ftp), (&stranger, "stranger@example.org"));
    ftp_upload(&sb.ftp, &from_stranger);
    let e = wait_event(&sb.url, "evil", "REJECTED", WAIT);
    assert!(e.to_string().contains("build request not accepted"), "{e}");
    let (ag, afpr) = instance_signer(&dir.path().join("a"), &a.state());
    let (bg, bfpr) = instance_signer(&dir.path().join("b"), &b.state());
    for (upload_to, signer, why) in [
        // A's, with its results going to another host.
        ("ftp://elsewhere.invalid:8067/", (&ag, afpr.as_str()), "not on the host of the remote that signed it"),
        // B's own request, replayed to it over FTP.
        (sa.ftp.as_str(), (&bg, bfpr.as_str()), "its own requests never do"),
        // A's, well formed, to B, which builds nothing.
        (sa.ftp.as_str(), (&ag, afpr.as_str()), "this instance builds nothing"),
    ] {
        let upload_to =
            if upload_to.starts_with("ftp://") { upload_to.to_owned() } else { format!("ftp://{upload_to}/") };
        ftp_upload(&sb.ftp, &build_request(dir.path(), &upload_to, signer));
        let start = std::time::Instant::now();
        loop {
            let rejected = of(&events(&sb.url), "evil", "REJECTED");
            if rejected.iter().any(|e| e.to_string().contains(why)) {
                break;
            }
            assert!(start.elapsed() < WAIT, "no rejection saying {why:?}: {rejected:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(api(&sb.url, "status", "")["build_queue"].as_array().expect("queue").is_empty());

    // A builder with slots but without the chroot queues a remote's request all the same: its
    // builder fails it with the reason, and the failed result goes home by FTP at once (here a
    // request A never made, so A refuses the result it did not wait for).
    let c = Instance::new("ed25519");
    admin(&c);
    let sc = serve(&c, "1");
    for (on, remote) in [(&sa, &sc), (&sc, &sa), (&sa, &sc)] {
        as_admin(&on.url, &["setup", "--update", "all", "--pca", "all", "--remotes", &remote.url]);
    }
    ftp_upload(&sc.ftp, &build_request(dir.path(), &format!("ftp://{}/", sa.ftp), (&ag, afpr.as_str())));
    let built = wait_event(&sc.url, "evil", "BUILT", WAIT);
    assert_ne!(built["extra"]["status"], "successful", "{built}");
    let start = std::time::Instant::now();
    loop {
        let on_a = of(&events(&sa.url), "evil", "REJECTED");
        if on_a.iter().any(|e| e.to_string().contains("waits for build results")) {
            break;
        }
        assert!(start.elapsed() < WAIT, "the failed result never reached A: {on_a:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let markers = walk_named(&c.state().join("spool"), "_mini-buildd-buildresult_amd64.upload");
    assert_eq!(markers.len(), 1, "{markers:?}");
    let marker = std::fs::read_to_string(&markers[0]).expect("marker");
    assert_eq!(marker.trim(), format!("ftp://{}", sa.ftp), "the marker names where the result went");
    assert!(sa.stop() && sb.stop() && sc.stop());
}
