//! Metrics in Prometheus's text format (`GET /metrics`): counters kept in memory since the
//! daemon started (builds by outcome and backend, build phase durations, uploads by outcome,
//! HTTP requests by route and status) and gauges read at each scrape (the build queue, uploads
//! being packaged, the database's size, free disk). Counting is fed by the event bus and the HTTP
//! layer; rendering is pure.

use crate::events::{Event, EventType};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// At most this many distinct HTTP routes are counted; more go to `other` (a bound on what a
/// client's paths can make the daemon keep).
const MAX_ROUTES: usize = 200;
/// Builds seen BUILDING whose BUILT has not come yet, remembered for their backend.
const MAX_PENDING: usize = 10_000;

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    /// (status, backend) → builds.
    builds: BTreeMap<(String, String), u64>,
    /// phase → (seconds, builds).
    phases: BTreeMap<String, (f64, u64)>,
    /// INSTALLED, FAILED, REJECTED → uploads.
    uploads: BTreeMap<&'static str, u64>,
    /// (route, status) → requests.
    http: BTreeMap<(String, u16), u64>,
    /// bkey → backend, from BUILDING.
    backends: BTreeMap<String, String>,
    /// sent, refused, expired, deferred → notification mails.
    mails: BTreeMap<&'static str, u64>,
}

/// Publishes of a distribution (its indices and signed Release) in this process: (seconds, count).
/// Process-wide: the archive writer has no daemon to report to.
static PUBLISHED: Mutex<(f64, u64)> = Mutex::new((0.0, 0));

/// One distribution was published, in `took`.
pub fn published(took: std::time::Duration) {
    let mut p = PUBLISHED.lock().unwrap_or_else(|e| e.into_inner());
    p.0 += took.as_secs_f64();
    p.1 += 1;
}

/// What is read at each scrape.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub build_queue: usize,
    pub packaging: usize,
    pub running_builds: usize,
    pub redb_bytes: u64,
    pub disk_free_bytes: u64,
    pub mail_queued: u64,
}

impl Metrics {
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count what an event tells.
    pub fn event(&self, e: &Event) {
        let mut c = self.counters();
        let bkey = e.extra.get("bkey").and_then(|b| b.as_str()).unwrap_or_default().to_owned();
        match e.kind {
            EventType::Building => {
                let backend = e.extra.get("backend").and_then(|b| b.as_str()).unwrap_or("unknown").to_owned();
                if c.backends.len() < MAX_PENDING {
                    c.backends.insert(bkey, backend);
                }
            }
            EventType::Built => {
                let status = e.extra.get("status").and_then(|s| s.as_str()).unwrap_or("unknown").to_owned();
                // A remote's build, or one started before this daemon: its backend is not known.
                let backend = c.backends.remove(&bkey).unwrap_or_else(|| "unknown".into());
                *c.builds.entry((status, backend)).or_default() += 1;
                if let Some(phases) = e.extra.get("phases").and_then(|p| p.as_object()) {
                    for (phase, secs) in phases {
                        if let Some(s) = secs.as_f64() {
                            let p = c.phases.entry(phase.clone()).or_default();
                            p.0 += s;
                            p.1 += 1;
                        }
                    }
                }
            }
            EventType::Installed => *c.uploads.entry("INSTALLED").or_default() += 1,
            EventType::Failed => *c.uploads.entry("FAILED").or_default() += 1,
            EventType::Rejected => *c.uploads.entry("REJECTED").or_default() += 1,
            _ => {}
        }
    }

    /// Count an HTTP request (`route`: a bounded name the caller made of the path).
    /// One round of the mail sender: mails by outcome.
    pub fn mails(&self, outcomes: &[(&'static str, u64)]) {
        let mut c = self.counters();
        for &(outcome, n) in outcomes {
            if n > 0 {
                *c.mails.entry(outcome).or_default() += n;
            }
        }
    }

    pub fn http(&self, route: &str, status: u16) {
        let mut c = self.counters();
        let known = c.http.keys().any(|(r, _)| r == route);
        let route = if known || c.http.len() < MAX_ROUTES { route.to_owned() } else { "other".to_owned() };
        *c.http.entry((route, status)).or_default() += 1;
    }

    /// The text format, version 0.0.4.
    pub fn render(&self, g: &Gauges) -> String {
        let c = self.counters();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        family(
            "buildbay_builds_total",
            "counter",
            "Builds that ended on this instance since the daemon started, by status and backend.",
            c.builds.iter().map(|((s, b), n)| (labels(&[("status", s), ("backend", b)]), n.to_string())).collect(),
        );
        family(
            "buildbay_build_phase_seconds",
            "summary",
            "Time the builds spent in each phase (setup, dependencies, build, post-build, cleanup).",
            c.phases
                .iter()
                .flat_map(|(p, (sum, n))| {
                    let l = labels(&[("phase", p)]);
                    [(format!("_sum{l}"), format!("{sum:.3}")), (format!("_count{l}"), n.to_string())]
                })
                .collect(),
        );
        let (sum, n) = *PUBLISHED.lock().unwrap_or_else(|e| e.into_inner());
        family(
            "buildbay_publish_seconds",
            "summary",
            "Time spent publishing a distribution (its changed indices and signed Release), per publish.",
            vec![("_sum".into(), format!("{sum:.3}")), ("_count".into(), n.to_string())],
        );
        family(
            "buildbay_uploads_total",
            "counter",
            "Uploads that ended since the daemon started, by outcome.",
            c.uploads.iter().map(|(o, n)| (labels(&[("outcome", o)]), n.to_string())).collect(),
        );
        family(
            "buildbay_http_requests_total",
            "counter",
            "HTTP requests since the daemon started, by route and status (repository files as route repositories).",
            c.http
                .iter()
                .map(|((r, s), n)| (labels(&[("route", r), ("status", &s.to_string())]), n.to_string()))
                .collect(),
        );
        family(
            "buildbay_mails_total",
            "counter",
            "Notification mail since the daemon started: sent; attempts refused (5xx) or deferred, both retried; expired: dropped after days of trying.",
            c.mails.iter().map(|(o, n)| (labels(&[("outcome", o)]), n.to_string())).collect(),
        );
        let gauge = |v: String| vec![(String::new(), v)];
        family(
            "buildbay_mail_queued",
            "gauge",
            "Notification mail waiting for the SMTP server.",
            gauge(g.mail_queued.to_string()),
        );
        family("buildbay_build_queue", "gauge", "Build requests queued or running.", gauge(g.build_queue.to_string()));
        family(
            "buildbay_builds_running",
            "gauge",
            "Builds running on this instance.",
            gauge(g.running_builds.to_string()),
        );
        family("buildbay_uploads_packaging", "gauge", "Uploads the pipeline works on.", gauge(g.packaging.to_string()));
        family("buildbay_redb_bytes", "gauge", "Size of buildbay.redb.", gauge(g.redb_bytes.to_string()));
        family(
            "buildbay_disk_free_bytes",
            "gauge",
            "Free space on the state directory's file system (for unprivileged users).",
            gauge(g.disk_free_bytes.to_string()),
        );
        out
    }
}

/// `{a="x",b="y"}`, values escaped as the format wants.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, extra: serde_json::Value) -> Event {
        let mut e = Event::new(kind, "bookworm-test-unstable", "hello", "1.0");
        if let serde_json::Value::Object(m) = extra {
            for (k, v) in m {
                e = e.with(&k, v);
            }
        }
        e
    }

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        m.event(&event(EventType::Building, serde_json::json!({"bkey": "k", "backend": "sbuild"})));
        m.event(&event(
            EventType::Built,
            serde_json::json!({"bkey": "k", "status": "successful", "phases": {"build": 2.5, "setup": 1.0}}),
        ));
        m.event(&event(EventType::Built, serde_json::json!({"bkey": "r", "status": "failed"})));
        m.event(&event(EventType::Rejected, serde_json::json!({})));
        m.http("api:status", 200);
        m.http("page\"evil", 404);
        let text = m.render(&Gauges { build_queue: 3, redb_bytes: 10, ..Default::default() });
        assert!(text.contains("buildbay_builds_total{status=\"successful\",backend=\"sbuild\"} 1\n"), "{text}");
        assert!(text.contains("buildbay_builds_total{status=\"failed\",backend=\"unknown\"} 1\n"), "{text}");
        assert!(text.contains("buildbay_build_phase_seconds_sum{phase=\"build\"} 2.500\n"), "{text}");
        assert!(text.contains("buildbay_build_phase_seconds_count{phase=\"setup\"} 1\n"), "{text}");
        assert!(text.contains("buildbay_uploads_total{outcome=\"REJECTED\"} 1\n"), "{text}");
        assert!(text.contains("buildbay_http_requests_total{route=\"page\\\"evil\",status=\"404\"} 1\n"), "{text}");
        assert!(text.contains("buildbay_build_queue 3\n") && text.contains("# TYPE buildbay_redb_bytes gauge\n"));
    }

    #[test]
    fn routes_are_bounded() {
        let m = Metrics::default();
        for i in 0..MAX_ROUTES + 50 {
            m.http(&format!("r{i}"), 200);
        }
        let text = m.render(&Gauges::default());
        assert_eq!(text.matches("buildbay_http_requests_total{").count(), MAX_ROUTES + 1, "{text}");
        assert!(text.contains("route=\"other\",status=\"200\"} 50\n"));
    }
}
