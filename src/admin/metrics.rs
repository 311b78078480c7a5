//! Prometheus metrics, cheap on the hot path.
//!
//! Every handle is registered once, up front, on this proxy's own recorder (no global
//! recorder, so several proxies can live in one process, as in the tests): recording is
//! an atomic operation on a handle picked by index, with no lookup, lock or allocation per
//! command. Histogram samples are folded into buckets by a periodic upkeep, so memory stays
//! bounded whether or not anyone scrapes.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::resp::command_table::TABLE;

/// Why a command failed or a client was closed by the proxy (`respipe_errors_total{kind}`).
#[derive(Debug, Clone, Copy)]
pub enum ErrorKind {
    /// A client sent bytes Redis would reject.
    Protocol,
    /// Commands answered "connection lost" (their connection broke after they were sent).
    UpstreamLost,
    /// Commands failed fast while no upstream connection was up.
    UpstreamUnavailable,
    /// A client disconnected for exceeding its output limit.
    OutputLimit,
    /// No dedicated connection free within the wait bound.
    PoolExhausted,
    /// A failed login or a command refused before login.
    Auth,
    /// A client disconnected for leaving its replies unread past the stall timeout.
    ClientStalled,
}

const ERROR_KINDS: [&str; 7] = [
    "protocol",
    "upstream_lost",
    "upstream_unavailable",
    "output_limit",
    "pool_exhausted",
    "auth",
    "client_stalled",
];

/// Seconds: 10 µs to ~1.3 s, ×√2 steps below 1 ms then ×2.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_015, 0.000_02, 0.000_03, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2,
    0.000_3, 0.000_5, 0.000_75, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
    0.512, 1.024,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const BYTES_BUCKETS: &[f64] = &[
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
];

/// Index of the `other` label: commands not in the table.
pub const OTHER: u16 = TABLE.len() as u16;

/// All of the proxy's metric handles.
pub struct Metrics {
    enabled: bool,
    handle: PrometheusHandle,
    recorder: PrometheusRecorder,
    /// Per command (table index, then `other`), registered on first use so that /metrics
    /// lists only commands that were seen.
    per_command: Vec<OnceLock<(Counter, Histogram)>>,
    /// Pipeline write to its last reply read.
    pub upstream_rtt: Histogram,
    /// Commands per pipeline write.
    pub batch_commands: Histogram,
    /// Bytes per pipeline write.
    pub batch_bytes: Histogram,
    /// Connected clients.
    pub client_connections: Gauge,
    /// Dedicated connections leased.
    pub dedicated_leases: Counter,
    errors: Vec<Counter>,
    started: Instant,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric. With `enabled` false, per-command timing is skipped (the
    /// other figures cost nothing measurable and stay on).
    pub fn new(enabled: bool) -> Arc<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("respipe_command_duration_seconds".into()),
                LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("respipe_upstream_rtt_seconds".into()),
                    LATENCY_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("respipe_batch_commands".into()),
                    BATCH_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("respipe_batch_bytes".into()), BYTES_BUCKETS)
            })
            .unwrap_or_else(|e| unreachable!("bucket lists are non-empty: {e}"))
            .build_recorder();
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        let key = |name: &'static str, labels: Vec<Label>| Key::from_parts(name, labels);
        let per_command = (0..=TABLE.len()).map(|_| OnceLock::new()).collect();
        let errors = ERROR_KINDS
            .iter()
            .map(|k| {
                recorder.register_counter(
                    &key("respipe_errors_total", vec![Label::new("kind", *k)]),
                    &meta,
                )
            })
            .collect();
        recorder
            .register_gauge(
                &key(
                    "respipe_build_info",
                    vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
                ),
                &meta,
            )
            .set(1.0);
        let m = Self {
            enabled,
            handle: recorder.handle(),
            upstream_rtt: recorder
                .register_histogram(&key("respipe_upstream_rtt_seconds", vec![]), &meta),
            batch_commands: recorder
                .register_histogram(&key("respipe_batch_commands", vec![]), &meta),
            batch_bytes: recorder.register_histogram(&key("respipe_batch_bytes", vec![]), &meta),
            client_connections: recorder
                .register_gauge(&key("respipe_client_connections", vec![]), &meta),
            dedicated_leases: recorder
                .register_counter(&key("respipe_dedicated_leases_total", vec![]), &meta),
            per_command,
            errors,
            recorder,
            started: Instant::now(),
        };
        Arc::new(m)
    }

    /// Whether per-command timing is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// One command answered: `command` is its table index (or [`OTHER`]).
    #[inline]
    pub fn command_done(&self, command: u16, took: Duration) {
        let i = usize::from(command.min(OTHER));
        let (count, duration) = self.per_command[i].get_or_init(|| {
            let name = TABLE.get(i).map_or("other", |(n, _)| *n);
            let labels = || vec![Label::new("command", name)];
            let meta = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
            (
                self.recorder
                    .register_counter(&Key::from_parts("respipe_commands_total", labels()), &meta),
                self.recorder.register_histogram(
                    &Key::from_parts("respipe_command_duration_seconds", labels()),
                    &meta,
                ),
            )
        });
        count.increment(1);
        duration.record(took.as_secs_f64());
    }

    /// Counts `n` errors of a kind.
    pub fn error(&self, kind: ErrorKind, n: u64) {
        self.errors[kind as usize].increment(n);
    }

    /// Sets the upstream connection gauges (`kind`, `state`) to `value`.
    pub fn upstream_connections(&self, kind: &'static str, state: &'static str, value: f64) {
        let labels = vec![Label::new("kind", kind), Label::new("state", state)];
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        self.recorder
            .register_gauge(
                &Key::from_parts("respipe_upstream_connections", labels),
                &meta,
            )
            .set(value);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded samples into buckets; run periodically so memory stays bounded.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Seconds since the proxy started.
    pub fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}
