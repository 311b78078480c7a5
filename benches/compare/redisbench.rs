//! One `redis-benchmark` run and what its `--csv` output says.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Where a target listens: a 127.0.0.1 port, or a unix socket (a sidecar can be reached
/// either way; the socket skips the TCP stack on both sides).
#[derive(Clone, Debug)]
pub enum Endpoint {
    Tcp(u16),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(port) => write!(f, "127.0.0.1:{port}"),
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One redis-benchmark invocation: a single test, so CPU can be attributed to it.
#[derive(Clone, Debug)]
pub struct Spec {
    pub test: String,
    pub clients: usize,
    pub pipeline: usize,
    pub requests: u64,
}

/// Throughput and latency as redis-benchmark reports them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    pub ops: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs redis-benchmark against `at`, bounded by `timeout`.
pub fn run(at: &Endpoint, spec: &Spec, timeout: Duration) -> Result<Measured, String> {
    let mut cmd = Command::new("timeout");
    cmd.arg(timeout.as_secs().to_string())
        .arg("redis-benchmark");
    match at {
        Endpoint::Tcp(port) => cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]),
        Endpoint::Unix(path) => cmd.arg("-s").arg(path),
    };
    let out = cmd
        .args(["-t", &spec.test, "--csv"])
        .args(["-c", &spec.clients.to_string()])
        .args(["-P", &spec.pipeline.to_string()])
        .args(["-n", &spec.requests.to_string()])
        .output()
        .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.to_ascii_lowercase().contains("error") {
        return Err(format!(
            "redis-benchmark {spec:?} on {at} failed ({}):\n{stdout}{stderr}",
            out.status
        ));
    }
    parse(&stdout, &spec.test).ok_or_else(|| format!("no {} row in:\n{stdout}{stderr}", spec.test))
}

/// Picks the test's row out of `--csv` output:
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`.
pub fn parse(csv: &str, test: &str) -> Option<Measured> {
    // redis-benchmark names the test in capitals, with a qualifier for some ("LPUSH").
    let want = test.to_ascii_uppercase();
    for line in csv.lines() {
        let f: Vec<&str> = line.split(',').map(|x| x.trim_matches('"')).collect();
        if f.len() >= 7 && f[0].split_whitespace().next() == Some(want.as_str()) {
            return Some(Measured {
                ops: f[1].parse().ok()?,
                p50_ms: f[4].parse().ok()?,
                p99_ms: f[6].parse().ok()?,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_csv_rows() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"98231.83\",\"0.287\",\"0.080\",\"0.271\",\"0.455\",\"0.599\",\"2.111\"\n";
        let m = super::parse(csv, "set").unwrap();
        assert_eq!(m.ops, 98231.83);
        assert_eq!(m.p50_ms, 0.271);
        assert_eq!(m.p99_ms, 0.599);
        assert!(super::parse(csv, "get").is_none());
    }
}
