//! The browser pages in Debian's chromium (headless), driven by playwright-core
//! (`tests/browser/pages.mjs`, installed by `tests/run.sh` with npm): an admin logs in, creates a
//! repository on the configuration pages and runs PCA on it, creates a source from its JSON
//! fields and is told plainly what is wrong with bad ones; a package is included with the CLI;
//! the admin finds it on the tracker page, reads the debdiff to its previous version and migrates
//! it with the confirmation while a second tab sees MIGRATED arrive live. An anonymous visitor is refused every admin page and action,
//! and hostile text in an upload is shown as text. Screenshots go to `docs/screenshots/`.

use crate::common::{Instance, Server, free_port, ok, upload};
use std::path::{Path, PathBuf};
use std::process::Command;

const PASSWORD: &str = "browser-test-pw";
/// The package the CLI includes (with the appendix repository `web`'s unstable suite wants).
const VERSION: &str = "1.0~web12+1";
/// The version before it (in unstable's rollback after VERSION comes; the tracker's debdiff).
const OLD: &str = "0.9~web12+1";

fn serve(inst: &Instance, port: u16) -> Server {
    Server::start(inst.cmd(&[
        "serve",
        "--http",
        &format!("127.0.0.1:{port}"),
        "--ftp",
        &format!("127.0.0.1:{}", free_port()),
        "--public-host",
        "127.0.0.1",
    ]))
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn phase(name: &str, server: &Server, env: &[(&str, String)]) {
    // docs/screenshots when asked (BUILDBAY_SCREENSHOTS=docs/screenshots): the tier runs as a
    // user that may not write into the checkout.
    let shots = std::env::var_os("BUILDBAY_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("buildbay-screenshots"));
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let mut cmd = Command::new("node");
    cmd.arg(browser_dir().join("pages.mjs"))
        .arg(name)
        .env("BB_URL", &server.url)
        .env("BB_USER", "admin")
        .env("BB_PASSWORD", PASSWORD)
        .env("BB_SHOTS", &shots);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run node (tests/run.sh installs nodejs and playwright-core)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser phase {name} failed:\n{text}");
    assert!(text.contains(&format!("phase {name}: ok")), "browser phase {name} did not finish:\n{text}");
}

#[test]
fn an_admin_and_a_visitor_in_chromium() {
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run tests/run.sh deps (npm ci in tests/browser)"
    );
    let inst = Instance::new("ed25519");
    let mut add = inst.cmd(&["user", "add", "admin", "--role", "admin"]);
    add.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    let mut child = add.spawn().expect("user add");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), format!("{PASSWORD}\n").as_bytes())
        .expect("password");
    assert!(child.wait().expect("user add").success());
    let port = free_port();

    // 1–2: log in, create repository `web` on the configuration pages, PCA.
    let server = serve(&inst, port);
    phase("admin", &server, &[]);
    assert!(server.stop(), "the daemon stops cleanly");
    assert!(inst.state().join("repositories/web/dists/bookworm-web-unstable/InRelease").exists());

    // 3: include a package with the CLI (two versions: the older goes to the rollback).
    for v in [OLD, VERSION] {
        let pkg = crate::common::make_pkg(inst.dir.path(), "webpkg", v);
        inst.ok(&["repo", "include", "bookworm-web-unstable", pkg.to_str().expect("utf-8")]);
    }

    // 4–5: tracker, migrate with confirmation, MIGRATED live on the events page.
    let server = serve(&inst, port);
    let source = [("BB_SOURCE", "webpkg".to_owned()), ("BB_VERSION", VERSION.to_owned()), ("BB_OLD", OLD.to_owned())];
    phase("tracker", &server, &source);
    // The daemon holds the state directory; its API answers.
    let ls = ok(Command::new("curl")
        .args(["-sf"])
        .arg(format!("{}/mini_buildd/api/ls/?source=webpkg&output=json", server.url)));
    assert!(ls.contains("bookworm-web-testing"), "the migration reached the archive: {ls}");

    // An anonymous visitor: refused every admin page and action.
    phase("anonymous", &server, &source);
    let ls_after = ok(Command::new("curl")
        .args(["-sf"])
        .arg(format!("{}/mini_buildd/api/ls/?source=webpkg&output=json", server.url)));
    assert_eq!(ls, ls_after, "the refused actions changed nothing");

    // Hostile text in an upload (its changelog and Changed-By) is shown as text, live and served.
    let work = inst.dir.path().join("hostile");
    std::fs::create_dir_all(&work).expect("mkdir");
    let changes = upload::make_source(&work, "hostile", "1.0~test12+1", "bookworm-test-unstable", None);
    let text = std::fs::read_to_string(&changes).expect("read changes");
    let evil = text.replace(
        "Changed-By: Test User <test@example.org>",
        "Changed-By: <img src=x onerror=window.__pwned=1> <script>window.__pwned=1</script> <evil@example.org>",
    );
    assert_ne!(text, evil, "the .changes has a Changed-By to replace");
    std::fs::write(&changes, evil).expect("write changes");
    let mut argv = vec!["python3".to_owned(), upload::ftp_client(), "upload".into(), server.ftp.clone()];
    argv.extend(upload::upload_files(&changes).iter().map(|p| p.display().to_string()));
    phase("hostile", &server, &[("BB_UPLOAD", serde_json::to_string(&argv).expect("json"))]);
}
