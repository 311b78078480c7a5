//! The operator's view: /metrics, /healthz, /readyz, RESPIPE INFO, JSON logs, and the
//! shipped Grafana dashboard, checked against what the binary really exports.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::RedisServer;

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary with `--metrics` and `extra` flags; returns (guard, client port, metrics port).
fn start(redis: &RedisServer, extra: &[&str]) -> (Guard, u16, u16) {
    let (port, mport) = (common::free_port(), common::free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_respipe"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &redis.url(),
        ])
        .args(["--metrics", &format!("127.0.0.1:{mport}")])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(mport, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "respipe never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Guard(child), port, mport)
}

/// (status, body) of `GET path`, or (0, "") if nothing answers.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Metric names (with `_bucket`/`_sum`/`_count` suffixes as exported) in a text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `respipe_*` identifier in the dashboard's PromQL expressions.
fn dashboard_names() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/dashboards/respipe.json"
    );
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("dashboard JSON parses");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&json, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has panels with queries");
    let mut names = BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("respipe_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// Every metric the dashboard queries is one the binary exports; the JSON parses.
#[test]
fn dashboard_queries_only_exported_metrics() {
    let redis = RedisServer::start();
    let (_g, port, mport) = start(&redis, &[]);
    // Exercise what feeds each metric: shared commands, a transaction (a lease), an error.
    cli(port, &["SET", "k", "v"]);
    cli(port, &["GET", "k"]);
    let _ = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(b"MULTI\nINCR n\nEXEC\n")?;
            c.wait()
        });
    let (status, body) = http_get(mport, "/metrics");
    assert_eq!(status, 200);
    let exported = exported_names(&body);
    let wanted = dashboard_names();
    let missing: Vec<_> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics the binary does not export: {missing:?}\nexported: {exported:?}"
    );
    for name in [
        "respipe_commands_total",
        "respipe_command_duration_seconds_bucket",
        "respipe_upstream_rtt_seconds_bucket",
        "respipe_batch_commands_bucket",
        "respipe_batch_bytes_bucket",
        "respipe_client_connections",
        "respipe_upstream_connections",
        "respipe_dedicated_leases_total",
        "respipe_errors_total",
        "respipe_build_info",
    ] {
        assert!(exported.contains(name), "{name} not exported");
    }
    assert!(
        body.contains("respipe_commands_total{command=\"get\"} 1"),
        "{body}"
    );
    assert!(body.contains("respipe_dedicated_leases_total 1"), "{body}");
}

/// /healthz is up while the process is; /readyz follows the upstream.
#[test]
fn health_and_readiness_probes() {
    let mut redis = RedisServer::start();
    let (_g, _port, mport) = start(&redis, &[]);
    assert_eq!(http_get(mport, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(mport, "/readyz").0, 200);
    assert_eq!(http_get(mport, "/nope").0, 404);
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(mport, "/readyz").0 != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz never reported the upstream down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(mport, "/healthz").0, 200);
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(mport, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "/readyz never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `RESPIPE INFO` gives the /metrics figures in INFO format, without Prometheus.
#[test]
fn respipe_info_command() {
    let redis = RedisServer::start();
    let (_g, port, _mport) = start(&redis, &[]);
    for _ in 0..3 {
        cli(port, &["INCR", "c"]);
    }
    let info = cli(port, &["RESPIPE", "INFO"]);
    assert!(info.contains("# respipe"), "{info}");
    assert!(info.contains("upstream_ready:1"), "{info}");
    assert!(
        info.contains("respipe_commands_total{command=\"incr\"}:3"),
        "{info}"
    );
    assert!(
        info.contains("respipe_command_duration_seconds_count{command=\"incr\"}:3"),
        "{info}"
    );
    assert!(cli(port, &["RESPIPE", "NOPE"]).contains("unknown subcommand"));
}

/// `--log-format json`: one JSON object per line, connection events at info, the
/// upstream password nowhere.
#[test]
fn json_logs() {
    let redis = RedisServer::start();
    let (port, mport) = (common::free_port(), common::free_port());
    let mut child = Guard(
        Command::new(env!("CARGO_BIN_EXE_respipe"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--upstream",
                &format!("redis://:hunter2@127.0.0.1:{}", redis.port),
            ])
            .args([
                "--metrics",
                &format!("127.0.0.1:{mport}"),
                "--log-format",
                "json",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(mport, "/healthz").0 != 200 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    cli(port, &["PING"]);
    let mut lines = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(1500)) {
        lines.push(l);
    }
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
        assert!(!l.contains("hunter2"), "password in the log: {l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("client connected")),
        "{lines:?}"
    );
}
