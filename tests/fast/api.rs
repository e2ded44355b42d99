//! The HTTP API on mini-buildd's wire contract: its real client, its login flow, tokens, CSRF,
//! hostile requests, and the event streams.

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn serve(inst: &Instance) -> Server {
    Server::start(inst.cmd(&["serve", "--http", "127.0.0.1:0"]))
}

/// curl: returns (status, headers, body).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = run(Command::new("curl").args(["-s", "-S", "-D", "-", "--max-time", "30"]).args(args));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn set_cookie(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .find_map(|c| c.strip_prefix(&format!("{name}=")).map(|v| v.split(';').next().unwrap_or_default().to_owned()))
}

fn mbd(args: &[&str]) -> String {
    ok(Command::new("mini-buildd-api").args(args))
}

fn setup_users(inst: &Instance) {
    for (name, role) in [("admin", "admin"), ("staff", "staff"), ("user", "login")] {
        ok(inst.cmd(&["user", "add", name, "--role", role]).env("BUILDBAY_PASSWORD", format!("{name}-password")));
    }
}

/// Log in like mini-buildd's client (urllib), step by step; returns the cookie header.
fn login(url: &str, user: &str, password: &str) -> Result<String, String> {
    let (status, head, _) = curl(&[&format!("{url}/accounts/login/")]);
    assert_eq!(status, 200);
    let csrf = set_cookie(&head, "csrftoken").expect("csrftoken cookie");
    assert!(head.to_lowercase().contains("path=/"), "{head}");
    let form = format!(
        "username={user}&password={password}&csrfmiddlewaretoken={csrf}&this_is_the_login_form=1&next=http%3A%2F%2F{}%2Faccounts%2Fnull%2F",
        url.trim_start_matches("http://").replace(':', "%3A")
    );
    let (status, head, _) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "-H",
        &format!("Referer: {url}"),
        "-H",
        &format!("Cookie: csrftoken={csrf}"),
        "--data",
        &form,
        &format!("{url}/accounts/login/"),
    ]);
    if status != 302 {
        return Err(format!("login answered {status}"));
    }
    let location =
        head.lines().find_map(|l| l.to_lowercase().strip_prefix("location: ").map(str::to_owned)).expect("location");
    assert_eq!(location.trim(), "/accounts/null/");
    let session = set_cookie(&head, "sessionid").expect("sessionid cookie");
    let session_line = head.lines().find(|l| l.to_lowercase().starts_with("set-cookie: sessionid")).unwrap_or_default();
    assert!(session_line.contains("Path=/") && session_line.contains("HttpOnly"), "{session_line}");
    // The session's own CSRF token replaces the form's, as a cookie jar takes it.
    let csrf = set_cookie(&head, "csrftoken").expect("the session's csrftoken cookie");
    let (status, _, _) =
        curl(&["-H", &format!("Cookie: csrftoken={csrf}; sessionid={session}"), &format!("{url}{location}")]);
    assert_eq!(status, 200);
    Ok(format!("csrftoken={csrf}; sessionid={session}"))
}

#[test]
fn real_mini_buildd_client_and_apt_over_http() {
    let inst = Instance::new("ed25519");
    for v in ["0.9~test12+1", "1.0~test12+1"] {
        let pkg = make_pkg(inst.dir.path(), "bbapi", v);
        inst.ok(&["repo", "include", "bookworm-test-unstable", pkg.to_str().unwrap()]);
    }
    let offline_key = inst.ok(&["pub-key"]);
    let s = serve(&inst);

    let status: serde_json::Value = serde_json::from_str(&mbd(&["status", &s.url])).expect("status is JSON");
    assert_eq!(status["identity"], "ci");
    assert_eq!(status["url"], s.url.as_str());
    assert_eq!(status["load"], 0.0);
    assert!(status["chroots"].is_array() && status["remotes"].is_array());
    // The FTP drop box the daemon really serves.
    assert_eq!(status["incoming_url"], format!("ftp://{}", s.ftp));
    let with_repos: serde_json::Value = serde_json::from_str(&mbd(&["status", &s.url, "-R"])).unwrap();
    assert_eq!(with_repos["repositories"]["test"]["layout"]["unstable"]["migrates_to"], "testing");

    let key = mbd(&["pub_key", &s.url]);
    assert_eq!(key.trim_end(), offline_key.trim_end());

    let dput = mbd(&["dput_conf", &s.url]);
    assert!(dput.starts_with("[mini-buildd-ci]\n"), "{dput}");
    assert!(dput.contains(&format!("fqdn     = {}\n", s.ftp)), "{dput}");
    assert!(dput.contains("incoming = /incoming\n"), "{dput}");

    let ls: serde_json::Value = serde_json::from_str(&mbd(&["ls", &s.url, "bbapi"])).unwrap();
    assert_eq!(ls["test"]["bookworm-test-unstable"]["version"], "1.0~test12+1");
    assert_eq!(ls["test"]["bookworm-test-unstable"]["architecture"], "source");

    // debdiff of two pool versions, through mini-buildd's client: by default the newest against
    // the one below it.
    let diff = mbd(&["debdiff", &s.url, "bbapi", "test"]);
    assert!(diff.contains("-bbapi (0.9~test12+1)") && diff.contains("+bbapi (1.0~test12+1)"), "{diff}");
    let same = mbd(&["debdiff", &s.url, "bbapi", "test", "-a", "1.0~test12+1", "-b", "1.0~test12+1"]);
    assert!(!same.contains("+bbapi ("), "a version against itself has no changelog difference: {same}");
    let (code, _, body) =
        curl(&[&format!("{}/mini_buildd/api/debdiff/?source=bbapi&repository=test&versiona=0.1&output=json", s.url)]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("bbapi 0.1 is not in repository test"), "{body}");

    // apt: the key from pub_key, the line from sources_list (with Signed-By as its option).
    let keyfile = inst.dir.path().join("pub_key.asc");
    std::fs::write(&keyfile, &key).unwrap();
    let lines = mbd(&["sources_list", &s.url, "-S", "unstable", "-O", &format!("signed-by={}", keyfile.display())]);
    let line = lines.lines().find(|l| l.starts_with("deb ")).expect("a deb line").to_owned();
    assert_eq!(
        line,
        format!("deb [signed-by={}] {}/repositories/test bookworm-test-unstable main", keyfile.display(), s.url)
    );
    let apt = AptRoot::new(inst.dir.path(), "unused", &[], &keyfile);
    std::fs::remove_file(apt.root.join("etc/apt/sources.list.d/buildbay.sources")).unwrap();
    std::fs::write(apt.root.join("etc/apt/sources.list"), format!("{line}\n")).unwrap();
    apt.update();
    let out = apt.apt("apt-get", &["-y", "install", "bbapi"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ok(&mut Command::new(apt.root.join("usr/bin/bbapi"))).trim(), "hello from bbapi 1.0~test12+1");

    // The client reports our RFC 7807 errors.
    let out = run(Command::new("mini-buildd-api").args([
        "--script-mode",
        "migrate",
        &s.url,
        "bbapi",
        "bookworm-test-unstable",
    ]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs authorization: STAFF") && err.contains("HTTP 401"), "{err}");
}

#[test]
fn login_flow_tokens_csrf_and_hostile_requests() {
    let inst = Instance::new("ed25519");
    setup_users(&inst);
    let pkg = make_pkg(inst.dir.path(), "bbauth", "1.0~test12+1");
    inst.ok(&["repo", "include", "bookworm-test-unstable", pkg.to_str().unwrap()]);
    let s = serve(&inst);
    let api = |q: &str| format!("{}/mini_buildd/api/{q}", s.url);

    // Anonymous state changes are refused.
    let (code, _, body) =
        curl(&[&api("migrate/?source=bbauth&distribution=bookworm-test-unstable&confirm=migrate&output=json")]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"status\":401") && body.contains("needs authorization"), "{body}");

    // The login flow of mini-buildd's client; then migrate with confirm.
    assert!(login(&s.url, "admin", "wrong-password").is_err());
    let cookies = login(&s.url, "admin", "admin-password").expect("login");
    let (code, _, body) = curl(&[
        "-H",
        &format!("Cookie: {cookies}"),
        &api("migrate/?source=bbauth&distribution=bookworm-test-unstable&output=json"),
    ]);
    assert_eq!(code, 400, "confirm is needed: {body}");
    let (code, _, body) = curl(&[
        "-H",
        &format!("Cookie: {cookies}"),
        &api("migrate/?source=bbauth&distribution=bookworm-test-unstable&confirm=migrate&output=json"),
    ]);
    assert_eq!((code, body.as_str()), (200, "{}"));
    let ls: serde_json::Value = serde_json::from_str(&mbd(&["ls", &s.url, "bbauth"])).unwrap();
    assert_eq!(ls["test"]["bookworm-test-testing"]["version"], "1.0~test12+1");

    // A browser session without a CSRF token, from another site, changes nothing.
    let (code, _, body) = curl(&[
        "-H",
        &format!("Cookie: {cookies}"),
        "-H",
        "Sec-Fetch-Site: cross-site",
        &api("remove/?source=bbauth&distribution=bookworm-test-testing&confirm=remove&output=json"),
    ]);
    assert_eq!(code, 403, "{body}");
    let (code, _, _) = curl(&[
        "-H",
        &format!("Cookie: {cookies}"),
        "-H",
        "Origin: http://evil.example",
        &api("stop/?confirm=stop&output=json"),
    ]);
    assert_eq!(code, 403);
    let csrf = cookies.split(';').next().unwrap().trim_start_matches("csrftoken=");
    let (code, _, body) = curl(&[
        "-H",
        &format!("Cookie: {cookies}"),
        "-H",
        "Sec-Fetch-Site: cross-site",
        "-H",
        &format!("X-CSRFToken: {csrf}"),
        &api("snapshot_create/?distribution=bookworm-test-testing&name=s1&confirm=snapshot_create&output=json"),
    ]);
    assert_eq!(code, 200, "with the token it works: {body}");

    // Tokens: created by the session, used as Bearer, scoped to a role.
    let (code, _, body) = curl(&[
        "-H",
        &format!("Cookie: {cookies}"),
        &api("token_create/?role=login&label=ci&confirm=token_create&output=json"),
    ]);
    assert_eq!(code, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let secret = token["token"].as_str().unwrap().to_owned();
    let bearer = format!("Authorization: Bearer {secret}");
    let (code, _, _) = curl(&["-H", &bearer, &api("token_ls/?output=json")]);
    assert_eq!(code, 200);
    let (code, _, body) = curl(&[
        "-H",
        &bearer,
        &api("migrate/?source=bbauth&distribution=bookworm-test-testing&confirm=migrate&output=json"),
    ]);
    assert_eq!(code, 403, "a login token cannot migrate: {body}");
    let (code, _, _) = curl(&["-H", "Authorization: Bearer bb_forged", &api("status/?output=json")]);
    assert_eq!(code, 401);
    // Our CLI client with an admin token.
    let (_, _, body) =
        curl(&["-H", &format!("Cookie: {cookies}"), &api("token_create/?role=admin&confirm=token_create&output=json")]);
    let admin_token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"].as_str().unwrap().to_owned();
    let out = ok(Command::new(bin()).args([
        "api",
        "--url",
        &s.url,
        "--token",
        &admin_token,
        "--confirm",
        "migrate",
        "bbauth",
        "bookworm-test-testing",
    ]));
    assert_eq!(out.trim(), "{}");
    let out = ok(Command::new(bin()).args(["api", "--url", &s.url, "ls", "bbauth"]));
    assert!(out.contains("bookworm-test-stable"), "{out}");
    let out = run(Command::new(bin()).args(["api", "--url", &s.url, "remove", "bbauth", "bookworm-test-stable"]));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("HTTP 401"));
    // Our client's login flow works as mini-buildd's does.
    let out = ok(Command::new(bin())
        .args(["api", "--url", &s.url, "--user", "staff", "--confirm", "snapshot_ls", "bookworm-test-testing"])
        .env("BUILDBAY_PASSWORD", "staff-password"));
    assert!(out.contains("s1"), "{out}");

    // Hostile requests.
    for path in [
        "/repositories/test/../../buildbay.redb",
        "/repositories/test/%2e%2e/%2e%2e/buildbay.redb",
        "/repositories/test%2f..%2f..%2fbuildbay.redb",
        "/repositories/test/dists/.gen",
        "/repositories/%2e%2e%2fgnupg/archive-key.asc",
    ] {
        let (code, _, _) = curl(&["--path-as-is", &format!("{}{path}", s.url)]);
        assert_eq!(code, 404, "{path}");
    }
    let big = "x".repeat(40 * 1024);
    let (code, _, _) = curl(&["-H", &format!("X-Big: {big}"), &api("status/")]);
    assert!(code == 431 || code == 400, "oversized header: {code}");
    let (code, _, _) = curl(&[&api(&format!("status/?junk={}", "y".repeat(20 * 1024)))]);
    assert_eq!(code, 414);
    let (code, _, body) = curl(&[&api("no_such_call/?output=json")]);
    assert_eq!(code, 404, "{body}");
    let (code, _, body) = curl(&[&api("sources_list/?rollbacks=many&output=json")]);
    assert_eq!(code, 400, "{body}");
    let (code, _, _) = curl(&[&api("ls/?source=%3Cscript%3E&output=json")]);
    assert_eq!(code, 400);

    // 1,000 wrong logins: rate-limited, and the server keeps answering.
    let (_, head, _) = curl(&[&format!("{}/accounts/login/", s.url)]);
    let csrf = set_cookie(&head, "csrftoken").unwrap();
    let mut codes = std::collections::BTreeMap::new();
    let t0 = std::time::Instant::now();
    let form = format!("username=admin&password=wrong&csrfmiddlewaretoken={csrf}&next=/");
    let url = format!("{}/accounts/login/", s.url);
    let cookie = format!("Cookie: csrftoken={csrf}");
    let mut args: Vec<&str> = Vec::new();
    for i in 0..1000 {
        if i > 0 {
            args.push("--next");
        }
        args.extend(["-s", "-o", "/dev/null", "-w", "%{http_code}\\n", "-H", &cookie, "--data", &form, &url]);
    }
    let out = ok(Command::new("curl").args(&args));
    for c in out.lines() {
        *codes.entry(c.to_owned()).or_insert(0) += 1;
    }
    eprintln!("1000 wrong logins in {:?}: {:?}", t0.elapsed(), codes.iter().take(5).collect::<Vec<_>>());
    // Five attempts a minute from an address; the wrong password tried above is one of them (a
    // success in between does not forgive it), unless that minute has passed.
    let checked = codes.get("200").copied().unwrap_or(0);
    assert!(checked == 4 || checked == 5, "five attempts a minute are checked: {codes:?}");
    assert_eq!(codes.get("429"), Some(&(1000 - checked)), "the rest are refused: {codes:?}");
    let t = std::time::Instant::now();
    let (code, _, _) = curl(&[&api("status/?output=json")]);
    assert_eq!(code, 200);
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "still responsive");
}

#[test]
fn events_long_poll_and_sse() {
    let inst = Instance::new("ed25519");
    setup_users(&inst);
    let pkg = make_pkg(inst.dir.path(), "bbevent", "1.0~test12+1");
    inst.ok(&["repo", "include", "bookworm-test-unstable", pkg.to_str().unwrap()]);
    let s = serve(&inst);
    let before = "2000-01-01T00:00:00+00:00";
    // An SSE listener, attached before the event happens.
    let mut sse = Command::new("curl")
        .args(["-s", "-N", "--max-time", "20", &format!("{}/api/events", s.url)])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl sse");
    // A long-poll waiting for the next event.
    let waiter = {
        let url = format!("{}/static/events.attach?", s.url);
        std::thread::spawn(move || curl(&[&url]))
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let token_out = ok(Command::new(bin())
        .args(["api", "--url", &s.url, "--user", "admin", "--confirm", "token_create", "--role", "staff"])
        .env("BUILDBAY_PASSWORD", "admin-password"));
    let token = serde_json::from_str::<serde_json::Value>(&token_out).unwrap()["token"].as_str().unwrap().to_owned();
    ok(Command::new(bin()).args([
        "api",
        "--url",
        &s.url,
        "--token",
        &token,
        "--confirm",
        "migrate",
        "bbevent",
        "bookworm-test-unstable",
    ]));

    let (code, head, body) = waiter.join().unwrap();
    assert_eq!(code, 200, "{head}");
    let ev: serde_json::Value = serde_json::from_str(&body).expect("one JSON event");
    assert_eq!(ev["type"], "MIGRATED");
    assert_eq!(ev["source"], "bbevent");
    assert_eq!(ev["distribution"], "bookworm-test-unstable");
    let ts = ev["timestamp"].as_str().unwrap();
    assert!(ts.ends_with("+00:00") && ts.contains('T'), "{ts}");
    for k in ["version", "extra"] {
        assert!(ev.get(k).is_some());
    }
    // Replayed for a new connection with `after`.
    let (code, _, body) = curl(&[&format!("{}/static/events.attach?after={}", s.url, before.replace('+', "%2B"))]);
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["type"], "MIGRATED");
    let (code, _, _) = curl(&[&format!("{}/static/events.attach?after=yesterday", s.url)]);
    assert_eq!(code, 400);

    // SSE got it live.
    let mut lines = BufReader::new(sse.stdout.take().expect("stdout")).lines();
    let data = loop {
        let l = lines.next().expect("sse ended").expect("read");
        if let Some(d) = l.strip_prefix("data:") {
            break d.trim().to_owned();
        }
    };
    assert_eq!(serde_json::from_str::<serde_json::Value>(&data).unwrap()["type"], "MIGRATED");
    let _ = sse.kill();
    let _ = sse.wait();

    // The real client's events reader gets it too.
    let out =
        run(Command::new("timeout").args(["10", "mini-buildd-events", "-A", before, "-E", "MIGRATED", "--", &s.url]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MIGRATED") && text.contains("bbevent"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}

/// `config_set`: any object from its JSON fields, parsed once; a change to an active object
/// deactivates it and says so; saving it unchanged changes nothing; bad fields are refused with
/// what is wrong, and nothing is stored then.
#[test]
fn config_set_saves_objects_from_their_fields() {
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let s = serve(&inst);
    let set = |kind: &str, json: &str| upload::api_as(&s.url, "admin", &["config_set", kind, json]);
    let answer = |out: &std::process::Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON answer")
    };
    let ls = || -> serde_json::Value {
        serde_json::from_slice(&upload::api_as(&s.url, "admin", &["config_ls"]).stdout).expect("config_ls")
    };
    let find = |all: &serde_json::Value, kind: &str, id: &str| {
        all.as_array().into_iter().flatten().find(|o| o["kind"] == kind && o["id"] == id).cloned()
    };

    // The distribution from setup is active; its fields as config_ls shows them.
    let before = find(&ls(), "distribution", "bookworm").expect("bookworm");
    assert_eq!(before["state"], "ACTIVE", "{before}");
    let mut fields = before["fields"].clone();
    assert!(fields.get("status").is_none(), "the status is not a field: {fields}");
    let same = answer(&set("distribution", &fields.to_string()));
    assert_eq!(same["deactivated"], false, "{same}");
    assert_eq!(find(&ls(), "distribution", "bookworm").unwrap()["state"], "ACTIVE", "unchanged stays active");
    fields["build_network"] = serde_json::json!(true);
    let changed = answer(&set("distribution", &fields.to_string()));
    assert_eq!(changed["deactivated"], true, "{changed}");
    assert!(changed["message"].as_str().unwrap().contains("run pca"), "{changed}");
    let after = find(&ls(), "distribution", "bookworm").unwrap();
    assert_eq!(after["state"], "CHANGED", "{after}");
    assert_eq!(after["fields"]["build_network"], true);

    // Bad fields: refused with the reason; nothing stored.
    for (kind, json, why) in [
        ("distribution", "{not json", "not JSON"),
        ("chroot", r#"{"codename": "bookworm", "arch": "amd 64", "mirror": "http://x"}"#, "amd 64"),
        ("chroot", r#"{"codename": "bookworm", "arch": "amd64"}"#, "missing field `mirror`"),
        (
            "repository",
            r#"{"identity": "x2", "layout": "Nope", "distributions": ["bookworm"], "allow_unauthenticated_uploads": false, "extra_uploader_keyrings": []}"#,
            "needs layout \"Nope\", which does not exist",
        ),
        ("uploader", r#"{"user": "u", "key": "not a key", "may_upload_to": []}"#, "not an OpenPGP public key"),
        (
            "daemon",
            r#"{"identity": "other", "custom_archive_origin": null, "key_algo": "Ed25519"}"#,
            "fixed once its key exists",
        ),
    ] {
        let out = set(kind, json);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{kind} {json}: {err}");
    }
    // A layout whose rules do not hold (a suite migrating to one that is not there).
    let mut layout = find(&ls(), "layout", "Default").expect("the Default layout")["fields"].clone();
    layout["layout"]["name"] = serde_json::json!("Broken");
    layout["layout"]["suites"][2]["migrates_to"] = serde_json::json!("nowhere");
    let out = set("layout", &layout.to_string());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("which is not in the layout"), "{layout}: {err}");
    let all = ls();
    assert!(find(&all, "repository", "x2").is_none() && find(&all, "uploader", "u").is_none(), "{all}");
    assert!(find(&all, "layout", "Broken").is_none(), "an invalid layout was stored");

    // A new source; renaming by mistake is refused.
    let src = r#"{"origin": "Debian", "codename": "trixie", "codeversion": "13", "components": ["main"], "architectures": ["amd64"]}"#;
    assert_eq!(answer(&set("source", src))["id"], "Debian:trixie");
    let out = upload::api_as(&s.url, "admin", &["config_set", "source", src, "--id", "Debian:sid"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("to rename, create Debian:trixie and delete Debian:sid"));
    assert_eq!(find(&ls(), "source", "Debian:trixie").unwrap()["state"], "REMOVED");
}

/// docs/api.md is what the call registry says (`buildbay api-reference`): regenerate it with
/// `buildbay api-reference > docs/api.md` when a call changes.
#[test]
fn the_api_reference_is_the_registry() {
    let generated = ok(Command::new(crate::common::bin()).arg("api-reference"));
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).expect("docs/api.md");
    assert!(generated == file, "docs/api.md is stale: run `buildbay api-reference > docs/api.md`");
}

/// mini-buildd's own call table (its python module, as its client uses it): call → argument names.
fn mini_buildd_calls() -> Vec<(String, Vec<String>)> {
    let script = "import json, mini_buildd.api as api\n\
                  print(json.dumps({n: [a.identity for a in c.iarguments()] for n, c in api.CALLS.items()}))";
    let out = ok(Command::new("/usr/bin/python3").args(["-c", script]));
    let table: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    table
        .into_iter()
        .map(|(n, args)| {
            let args = args.as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
            (n, args)
        })
        .collect()
}

#[test]
fn every_mini_buildd_call_and_argument_is_answered_or_refused_with_a_reason() {
    use buildbay::api::registry;
    let calls = mini_buildd_calls();
    assert!(calls.len() >= 30 && calls.iter().any(|(n, _)| n == "setup"), "{calls:?}");
    for (name, args) in &calls {
        match registry::find(name) {
            Some(ours) => {
                for a in args {
                    assert!(
                        ours.args.iter().any(|o| o.name == a),
                        "mini-buildd's {name} --{a} is not an argument here"
                    );
                }
            }
            None => {
                assert!(registry::not_supported(name).is_some(), "mini-buildd's call {name} is neither here nor listed")
            }
        }
    }

    // Over HTTP: every mini-buildd call is answered now (debmirror, the last one, wants an
    // admin); an unknown argument is refused with the call's arguments; mini-buildd's chroot
    // backends other than Dir are refused with the reason.
    assert!(registry::NOT_SUPPORTED.is_empty(), "{:?}", registry::NOT_SUPPORTED);
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let s = serve(&inst);
    let (code, _, body) = curl(&[&format!("{}/mini_buildd/api/debmirror/?output=json", s.url)]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("ADMIN"), "{body}");
    let (code, _, body) = curl(&[&format!("{}/mini_buildd/api/ls/?source=hello&sauce=1&output=json", s.url)]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("no argument \\\"sauce\\\"") && body.contains("source, repositories"), "{body}");
    let out = crate::common::upload::mbd_client_as(&s.url, "admin", "setup", &["--chroots-backend", "LVM"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chroots_backend LVM") && err.contains("Dir"), "{err}");
    // mini-buildd's setup spellings through its own client. With no arguments it inspects and
    // changes nothing; without --update an object option is reported, not applied (MISSING, or
    // CHANGED with its diff), each with its identity_hash; --update <hash> creates only that
    // one, --pca <hash> prepares, checks and activates only that one. A bare codename is a
    // source of its known origin (offline here, so its check fails, and says why).
    let config = || crate::common::upload::api_as(&s.url, "admin", &["config_ls"]).stdout;
    let before = config();
    assert!(String::from_utf8_lossy(&before).contains("\"kind\""), "config_ls answers");
    let setup = |args: &[&str]| -> serde_json::Value {
        let out = crate::common::upload::mbd_client_as(&s.url, "admin", "setup", args);
        assert!(out.status.success(), "setup {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let item = crate::common::upload::setup_item;
    let out = setup(&[]);
    assert_eq!(item(&out, "repository", "test")["status"], "ACTIVE", "{out}");
    assert_eq!(item(&out, "daemon", "ci")["identity_hash"].as_str().map(str::len), Some(64), "{out}");
    assert_eq!(config(), before, "inspecting changed nothing");
    let out = setup(&["--sources", "bookworm-backports", "--distributions", "bookworm:amd64+i386"]);
    let missing = item(&out, "source", "Debian:bookworm-backports");
    assert_eq!(missing["status"], "MISSING", "{out}");
    let changed = item(&out, "distribution", "bookworm");
    assert_eq!(changed["status"], "CHANGED", "{out}");
    assert_eq!(
        changed["diff"]["setup"]["diff"]["architectures"],
        serde_json::json!({"current": "amd64", "target": "amd64+i386"}),
        "{changed}"
    );
    assert_eq!(config(), before, "without --update nothing is applied");
    // A repository over a distribution that is not there: reported, not an error.
    let out = setup(&["--repositories", "other:Default:trixie"]);
    assert_eq!(item(&out, "repository", "other")["status"], "MISSING", "{out}");
    assert_eq!(config(), before, "inspecting changed nothing");
    let hash = missing["identity_hash"].as_str().expect("identity_hash").to_owned();
    let out = setup(&["--update", &hash, "--sources", "bookworm-backports", "--distributions", "bookworm:amd64+i386"]);
    assert_eq!(
        item(&out, "source", "Debian:bookworm-backports")["status"],
        "DEACTIVATED",
        "created, not prepared: {out}"
    );
    assert_eq!(item(&out, "distribution", "bookworm")["status"], "CHANGED", "not selected, not applied: {out}");
    let out = setup(&["--update", "all", "--pca", &hash, "--sources", "bookworm-backports"]);
    let text = out.to_string();
    assert!(text.contains("no archive serves Debian:bookworm-backports"), "{text}");
    assert_eq!(item(&out, "source", "Debian:bookworm-backports")["status"], "FAILED", "{out}");
    let all: serde_json::Value = serde_json::from_slice(&config()).expect("config_ls");
    let dist = all.as_array().into_iter().flatten().find(|o| o["kind"] == "distribution" && o["id"] == "bookworm");
    let arches = dist.map(|d| d["fields"]["architectures"].as_array().map_or(0, Vec::len));
    assert_eq!(arches, Some(1), "the distribution was never selected: {dist:?}");
    // A setting setup does not change is answered with where it is set, not dropped.
    let out = crate::common::upload::mbd_client_as(&s.url, "admin", "setup", &["--ftp-endpoint", "tcp6:port=8067"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("\"applied\": false") && text.contains("buildbay-ftp.socket"),
        "{text}"
    );
}

/// `set_user_key` as mini-buildd takes it: the ASCII-armored key, or one line with its
/// fingerprint or long id, found among the keys this instance knows or fetched from the
/// keyserver (a local HKP stand-in). The keyserver is hostile: a key other than the one asked
/// for is refused, and one that does not answer is "try again".
#[test]
fn set_user_key_takes_an_armored_key_or_a_key_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    ok(inst.cmd(&["user", "add", "dev"]).env("BUILDBAY_PASSWORD", "dev-password"));
    ok(inst.cmd(&["user", "add", "admin", "--role", "admin"]).env("BUILDBAY_PASSWORD", "admin-password"));
    let gpg = upload::Gpg::new(dir.path());
    for uid in ["dev@example.org", "other@example.org", "never@example.org"] {
        gpg.generate(uid, "1y", None);
    }
    let (dev, other, never) = (
        gpg.fingerprint("dev@example.org"),
        gpg.fingerprint("other@example.org"),
        gpg.fingerprint("never@example.org"),
    );
    let hkp = dir.path().join("hkp");
    std::fs::create_dir_all(hkp.join("pks")).expect("mkdir");
    // python's http.server answers /pks/lookup?… with the file pks/lookup.
    std::fs::write(hkp.join("pks/lookup"), gpg.export("dev@example.org")).expect("write");
    let (keyserver, mut server) = http_server(&hkp);
    let srv = serve_local(&inst, &["--keyserver", &keyserver]);
    let set = |key: &str| upload::api_as(&srv.url, "dev", &["set_user_key", key]);
    let uploader = || -> serde_json::Value {
        let out = upload::api_as(&srv.url, "admin", &["config_ls"]);
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("config_ls");
        all.as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == "uploader" && o["id"] == "dev")
            .cloned()
            .expect("dev")
    };
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // Its fingerprint, in gpg's spaced lower-case form: fetched from the keyserver.
    let spaced: String = dev
        .to_lowercase()
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = set(&spaced);
    assert!(out.status.success(), "{}", stderr(&out));
    let u = uploader();
    assert_eq!(u["fields"]["fingerprint"], dev.as_str(), "{u}");
    assert!(u["state"] != "ACTIVE", "an administrator activates it: {u}");
    // Asking for another key, the keyserver sends dev's: refused, naming what it sent.
    let out = set(&never);
    assert!(
        !out.status.success() && stderr(&out).contains("answered with no key") && stderr(&out).contains(&dev),
        "{}",
        stderr(&out)
    );
    // Not an id at all.
    let out = set("hello");
    assert!(!out.status.success() && stderr(&out).contains("is not a key id"), "{}", stderr(&out));
    // The armored key (several lines) still works.
    let out = set(&gpg.export("other@example.org"));
    assert!(out.status.success(), "{}", stderr(&out));
    // A key this instance knows (the uploader key just set) needs no keyserver: it is found
    // even with the keyserver down, by its long id.
    let _ = server.kill();
    let _ = server.wait();
    let out = set(&other[24..]);
    assert!(out.status.success(), "{}", stderr(&out));
    // One it does not know, with the keyserver down: try again later.
    let out = set(&never);
    assert!(!out.status.success() && stderr(&out).contains("try again later"), "{}", stderr(&out));
    assert_eq!(uploader()["fields"]["fingerprint"], other.as_str(), "the last key set stays");
    assert!(srv.stop());
}
