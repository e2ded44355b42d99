//! `/metrics` through the real daemon, read by Prometheus's own parser (python3-prometheus-client):
//! uploads by outcome, HTTP requests by route and status (repository files included), the
//! gauges; a client's own paths never become series.

use crate::common::upload::*;
use crate::common::*;
use std::process::Command;
use std::time::Duration;

/// The samples Prometheus's parser reads from `text`: (name, labels as JSON, value).
fn parse(text: &str) -> Vec<(String, serde_json::Value, f64)> {
    let script = "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                  out = [[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
                  print(json.dumps(out))";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (tests/run.sh installs python3-prometheus-client)");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(out.status.success(), "Prometheus's parser refuses it: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let samples: Vec<(String, serde_json::Value, f64)> = serde_json::from_slice(&out.stdout).expect("JSON");
    samples
}

fn value(samples: &[(String, serde_json::Value, f64)], name: &str, labels: serde_json::Value) -> Option<f64> {
    samples.iter().find(|(n, l, _)| n == name && *l == labels).map(|(_, _, v)| *v)
}

#[test]
fn metrics_in_prometheus_text_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new("ed25519");
    let srv = serve_local(&inst, &[]);
    let changes = upload::make_source(dir.path(), "bbmetric", "1.0~test12+1", "bookworm-nothere-unstable", None);
    ftp_upload(&srv.ftp, &changes);
    wait_event(&srv.url, "bbmetric", "REJECTED", Duration::from_secs(60));
    let get = |path: &str| {
        run(Command::new("curl").args(["-s", "-o", "/dev/null", "--max-time", "10"]).arg(format!("{}{path}", srv.url)))
    };
    get("/mini_buildd/");
    get("/repositories/test/dists/bookworm-test-unstable/InRelease");
    // Hostile paths: each one different, none becomes a series of its own.
    for i in 0..300 {
        get(&format!("/mini_buildd/api/evil{i}/"));
        get(&format!("/nothing{i}"));
    }
    // The event reaches the counters through the bus (asynchronously).
    let mut samples = Vec::new();
    for _ in 0..50 {
        let text = ok(Command::new("curl").args(["-sf", "--max-time", "10"]).arg(format!("{}/metrics", srv.url)));
        samples = parse(&text);
        if value(&samples, "buildbay_uploads_total", serde_json::json!({"outcome": "REJECTED"})) == Some(1.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        value(&samples, "buildbay_uploads_total", serde_json::json!({"outcome": "REJECTED"})),
        Some(1.0),
        "{samples:?}"
    );
    let http = |route: &str, status: &str| {
        value(&samples, "buildbay_http_requests_total", serde_json::json!({"route": route, "status": status}))
    };
    assert_eq!(http("page:home", "200"), Some(1.0), "{samples:?}");
    assert_eq!(http("repositories", "200"), Some(1.0), "{samples:?}");
    assert_eq!(http("api:other", "404"), Some(300.0), "{samples:?}");
    let other: f64 = samples
        .iter()
        .filter(|(n, l, _)| n == "buildbay_http_requests_total" && l["route"] == "other")
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(other, 300.0, "{samples:?}");
    let series = samples.iter().filter(|(n, _, _)| n == "buildbay_http_requests_total").count();
    assert!(series < 10, "a client's paths made series: {samples:?}");
    assert!(value(&samples, "buildbay_redb_bytes", serde_json::json!({})).is_some_and(|v| v > 0.0));
    assert!(value(&samples, "buildbay_disk_free_bytes", serde_json::json!({})).is_some_and(|v| v > 0.0));
    assert_eq!(value(&samples, "buildbay_build_queue", serde_json::json!({})), Some(0.0));
    // Prometheus's own linter (promtool, from Debian's prometheus; tests/run.sh unpacks it).
    let text = ok(Command::new("curl").args(["-sf", "--max-time", "10"]).arg(format!("{}/metrics", srv.url)));
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PROMTOOL}: {e} (tests/run.sh deps unpacks it)"));
    use std::io::Write;
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(srv.stop());
}

/// Where tests/run.sh puts promtool.
const PROMTOOL: &str = "/var/cache/buildbay-tests/promtool";
