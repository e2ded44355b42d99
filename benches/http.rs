//! Issue 3's benchmark: static delivery of `InRelease` and a ~1 MiB `Packages.xz` by buildbay and
//! by nginx (Debian's) from the same directory, in the same run, with wrk, over HTTP and over
//! HTTPS (issue 20: the same certificate for both, from a test CA); `status` latency at 50
//! concurrent clients; the daemon's idle RSS.
//!
//! `cargo bench --bench http` (installs wrk and nginx-light when missing, as root).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{median, ok as sh, synth};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// wrk: (requests/s, p50 ms, p99 ms).
fn wrk(url: &str, connections: u32) -> (f64, f64, f64) {
    let out = sh(Command::new("wrk").args(["-t2", &format!("-c{connections}"), "-d6s", "--latency", url]));
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Requests/sec");
    let pct = |p: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(|v| {
                let v = v.trim();
                if let Some(us) = v.strip_suffix("us") {
                    us.parse::<f64>().unwrap_or(0.0) / 1000.0
                } else if let Some(ms) = v.strip_suffix("ms") {
                    ms.parse().unwrap_or(0.0)
                } else if let Some(s) = v.strip_suffix('s') {
                    s.parse::<f64>().unwrap_or(0.0) * 1000.0
                } else {
                    0.0
                }
            })
            .unwrap_or(0.0)
    };
    (rps, pct("50%"), pct("99%"))
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Stops a server with SIGTERM (nginx's master then stops its workers too).
struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if Command::new("wrk").arg("-v").output().is_err() || Command::new("nginx").arg("-v").output().is_err() {
        sh(Command::new("apt-get").args(["install", "-y", "-qq", "wrk", "nginx-light"]));
    }
    let bin = env!("CARGO_BIN_EXE_buildbay");
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let incoming = tmp.path().join("incoming");
    std::fs::create_dir_all(&incoming).expect("mkdir");
    common::setup_bench_state(bin, &state);
    // Enough packages for a Packages.xz of about 1 MiB.
    let n = 3000;
    let changes: Vec<_> = (0..n).map(|i| synth::package(&incoming, i, "1.0~test12+1")).collect();
    sh(Command::new(bin)
        .arg("--state")
        .arg(&state)
        .args(["--log", "warn", "repo", "include", synth::DIST, "--force"])
        .args(&changes));
    eprintln!("imported {n} sources");
    let dist = state.join("repositories/test/dists").join(synth::DIST);
    let xz_size = std::fs::metadata(dist.join("main/binary-amd64/Packages.xz")).expect("Packages.xz").len();

    let ca = common::TestCa::new(tmp.path());
    let (cert, key) = ca.server("bench");
    let port = free_port();
    let tport = free_port();
    let mut child = Command::new(bin)
        .arg("--state")
        .arg(&state)
        .args(["--log", "warn,buildbay=info", "serve", "--http", &format!("127.0.0.1:{port}")])
        .args(["--https", &format!("127.0.0.1:{tport}"), "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    while let Some(Ok(l)) = lines.next() {
        if l.contains("serving ") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let bb = Kill(child);
    eprintln!("buildbay serving on {port}");
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_mb(bb.0.id());

    let nport = free_port();
    let ntport = free_port();
    let conf = tmp.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes auto;\npid {0}/nginx.pid;\nerror_log {0}/error.log;\ndaemon off;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n  default_type application/octet-stream;\n  client_body_temp_path {0}; proxy_temp_path {0}; fastcgi_temp_path {0}; uwsgi_temp_path {0}; scgi_temp_path {0};\n  server {{ listen 127.0.0.1:{1}; root {2}; location /repositories/ {{ autoindex on; }} }}\n  server {{ listen 127.0.0.1:{3} ssl; ssl_certificate {4}; ssl_certificate_key {5}; root {2}; }}\n}}\n",
            tmp.path().display(),
            nport,
            state.display(),
            ntport,
            cert.display(),
            key.display()
        ),
    )
    .expect("nginx.conf");
    let ng = Kill(Command::new("nginx").arg("-c").arg(&conf).stderr(Stdio::null()).spawn().expect("nginx"));
    std::thread::sleep(Duration::from_secs(1));

    let path_in = format!("/repositories/test/dists/{}/InRelease", synth::DIST);
    let path_xz = format!("/repositories/test/dists/{}/main/binary-amd64/Packages.xz", synth::DIST);
    // Same bytes from both, over HTTP and HTTPS.
    for p in [&path_in, &path_xz] {
        let a = sh(Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}{p}")]));
        let b = sh(Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{nport}{p}")]));
        assert!(a == b && !a.is_empty(), "{p} differs between buildbay and nginx");
        let c = sh(Command::new("curl")
            .arg("-sf")
            .arg("--cacert")
            .arg(ca.pem())
            .arg(format!("https://127.0.0.1:{tport}{p}")));
        let d = sh(Command::new("curl")
            .arg("-sf")
            .arg("--cacert")
            .arg(ca.pem())
            .arg(format!("https://127.0.0.1:{ntport}{p}")));
        assert!(c == a && d == a, "{p} differs over HTTPS");
    }
    eprintln!("nginx serving on {nport}; running wrk");
    let mut rows = Vec::new();
    let xz_name = format!("Packages.xz ({:.2} MiB)", xz_size as f64 / 1048576.0);
    for (scheme, bport, ngport) in [("http", port, nport), ("https", tport, ntport)] {
        for (what, p) in [("InRelease", &path_in), (xz_name.as_str(), &path_xz)] {
            // Interleaved rounds: the machine's load drifts, so each side gets the same conditions.
            let (mut bs, mut ns) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                bs.push(wrk(&format!("{scheme}://127.0.0.1:{bport}{p}"), 50).0);
                ns.push(wrk(&format!("{scheme}://127.0.0.1:{ngport}{p}"), 50).0);
            }
            let (b, n) = (median(bs), median(ns));
            rows.push(format!("| `{what}` | {} | {b:.0} | {n:.0} | **{:.2}×** |", scheme.to_uppercase(), b / n));
        }
    }
    let (srps, p50, p99) = wrk(&format!("http://127.0.0.1:{port}/mini_buildd/api/status/?output=json"), 50);
    let busy_rss = rss_mb(bb.0.id());
    drop(ng);
    drop(bb);

    println!("### Static delivery and the API\n");
    println!(
        "`cargo bench --bench http` on {} cores: wrk -t2 -c50 -d6s on loopback (keep-alive: a handshake per connection), median of three interleaved rounds each, buildbay (release) and nginx 1.22 (Debian's nginx-light, `sendfile on`, `worker_processes auto`) serving the same repository directory in the same run; over HTTPS both with the same P-256 certificate, TLS as each negotiates it with wrk (OpenSSL).\n",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("| file | over | buildbay req/s | nginx req/s | buildbay / nginx |\n|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!(
        "\n`status` (`/mini_buildd/api/status/?output=json`), 50 concurrent clients: **{srps:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms** (mini-buildd: 11.7 ms mean, sequential).\n"
    );
    println!(
        "Daemon RSS: **{idle_rss:.1} MB idle** after start, {busy_rss:.1} MB after the load above (mini-buildd: 92 MB idle, 114 MB peak)."
    );
}
