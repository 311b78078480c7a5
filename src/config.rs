//! Configuration: command-line flags, each also settable by a `RESPIPE_*` environment
//! variable and by a TOML file (`--config`). Precedence: flag, then environment, then
//! file, then default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::batch::FlushPolicy;
use crate::client::auth::ClientAuth;
use crate::client::{ListenAddr, SessionLimits};
use crate::upstream::address::{AddrError, UpstreamAddr};
use crate::upstream::stream::UpstreamTls;

/// Defaults, in one place so `--help` and the code agree.
pub mod defaults {
    /// Listen address.
    pub const LISTEN: &str = "127.0.0.1:6380";
    /// Upstream URL.
    pub const UPSTREAM: &str = "redis://127.0.0.1:6379";
    /// Multiplexed connections per database: two keep one slow reply from stalling
    /// everything while still batching well (see docs/design.md).
    pub const UPSTREAM_CONNS: usize = 2;
    /// Batch window in microseconds.
    pub const BATCH_WINDOW_US: u64 = 0;
    /// Commands per pipeline write.
    pub const MAX_BATCH: usize = 1024;
    /// Bytes per pipeline write.
    pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
    /// Unwritten reply bytes per client before it is disconnected.
    pub const CLIENT_OUTPUT_LIMIT: usize = 1 << 30;
    /// How long a client whose commands are held back (it does not read its replies) may
    /// write nothing before it is disconnected, in milliseconds.
    pub const CLIENT_STALL_TIMEOUT_MS: u64 = 60_000;
    /// Upstream connect + handshake timeout in milliseconds.
    pub const CONNECT_TIMEOUT_MS: u64 = 3000;
    /// Worker threads: one, see `main.rs`.
    pub const THREADS: usize = 1;
    /// Clients at most (Redis's maxclients default).
    pub const MAX_CLIENTS: usize = 10_000;
    /// How long a shutdown waits for in-flight replies, in milliseconds.
    pub const DRAIN_TIMEOUT_MS: u64 = 5_000;
    /// Upstream command timeout in milliseconds (0: none).
    pub const UPSTREAM_TIMEOUT_MS: u64 = 30_000;
    /// Dedicated connections (transactions, blocking calls, pub/sub) at most.
    pub const MAX_DEDICATED_CONNS: usize = 64;
    /// How long a command waits for a free dedicated connection, in milliseconds.
    pub const DEDICATED_WAIT_MS: u64 = 2000;
}

/// respipe: a Redis proxy that merges the commands of all its clients into pipelines.
#[derive(Debug, Parser, Default)]
#[command(name = "respipe", version, about, long_about = None)]
pub struct Args {
    /// Address to accept clients on, host:port or unix:/path (repeatable) [default: 127.0.0.1:6380]
    #[arg(long, env = "RESPIPE_LISTEN", value_delimiter = ',')]
    pub listen: Vec<String>,

    /// Redis to forward to, redis://[user:pass@]host:port[/db] [default: redis://127.0.0.1:6379]
    #[arg(long, env = "RESPIPE_UPSTREAM")]
    pub upstream: Option<String>,

    /// For rediss:// upstreams: CA certificates (PEM) to verify Redis with [default: the Mozilla roots]
    #[arg(long, env = "RESPIPE_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,

    /// For rediss:// upstreams: client certificate chain (PEM), with --upstream-key
    #[arg(long, env = "RESPIPE_UPSTREAM_CERT")]
    pub upstream_cert: Option<PathBuf>,

    /// For rediss:// upstreams: client private key (PEM), with --upstream-cert
    #[arg(long, env = "RESPIPE_UPSTREAM_KEY")]
    pub upstream_key: Option<PathBuf>,

    /// Serve TLS on the TCP listeners with this certificate chain (PEM), with --tls-key
    #[arg(long, env = "RESPIPE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) for --tls-cert
    #[arg(long, env = "RESPIPE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Multiplexed upstream connections per database [default: 2]
    #[arg(long, env = "RESPIPE_UPSTREAM_CONNS")]
    pub upstream_conns: Option<usize>,

    /// After the first queued command, wait up to this many µs for more before writing (0: write as soon as the writer is free) [default: 0]
    #[arg(long, env = "RESPIPE_BATCH_WINDOW_US")]
    pub batch_window_us: Option<u64>,

    /// Most commands in one pipeline write [default: 1024]
    #[arg(long, env = "RESPIPE_MAX_BATCH")]
    pub max_batch: Option<usize>,

    /// Most bytes in one pipeline write (a larger single command still goes alone) [default: 1048576]
    #[arg(long, env = "RESPIPE_MAX_BATCH_BYTES")]
    pub max_batch_bytes: Option<usize>,

    /// Address to serve Prometheus /metrics and the /healthz and /readyz probes on (HTTP)
    #[arg(long, env = "RESPIPE_METRICS")]
    pub metrics: Option<String>,

    /// Disconnect a client whose unread replies exceed this many bytes (0: no limit) [default: 1073741824]
    #[arg(long, env = "RESPIPE_CLIENT_OUTPUT_LIMIT")]
    pub client_output_limit: Option<usize>,

    /// Disconnect a client whose commands wait for it to read its replies once it has neither read nor sent anything for this many ms (0: never) [default: 60000]
    #[arg(long, env = "RESPIPE_CLIENT_STALL_TIMEOUT_MS")]
    pub client_stall_timeout_ms: Option<u64>,

    /// Refuse clients beyond this many with Redis's "max number of clients reached" [default: 10000]
    #[arg(long, env = "RESPIPE_MAX_CLIENTS")]
    pub max_clients: Option<usize>,

    /// On SIGTERM/SIGINT, wait up to this many ms for in-flight replies before exiting [default: 5000]
    #[arg(long, env = "RESPIPE_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,

    /// Close a shared upstream connection whose oldest command has no reply after this many ms; its commands get an error (0: never) [default: 30000]
    #[arg(long, env = "RESPIPE_UPSTREAM_TIMEOUT_MS")]
    pub upstream_timeout_ms: Option<u64>,

    /// Upstream connect and handshake timeout in milliseconds [default: 3000]
    #[arg(long, env = "RESPIPE_CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<u64>,

    /// Worker threads; 1 runs everything on one thread, which batches best [default: 1]
    #[arg(long, env = "RESPIPE_THREADS")]
    pub threads: Option<usize>,

    /// Dedicated upstream connections (transactions, blocking calls, pub/sub) at most [default: 64]
    #[arg(long, env = "RESPIPE_MAX_DEDICATED_CONNS")]
    pub max_dedicated_conns: Option<usize>,

    /// How long a command waits for a free dedicated connection before an error, in ms [default: 2000]
    #[arg(long, env = "RESPIPE_DEDICATED_WAIT_MS")]
    pub dedicated_wait_ms: Option<u64>,

    /// Password clients must AUTH with (as the default user) [default: none, no AUTH needed]
    #[arg(long, env = "RESPIPE_CLIENT_PASSWORD", hide_env_values = true)]
    pub client_password: Option<String>,

    /// File of "user password" lines: users clients may AUTH as (AUTH user pass)
    #[arg(long, env = "RESPIPE_USERS_FILE")]
    pub users_file: Option<PathBuf>,

    /// Log format on stderr: text or json (filter with RUST_LOG) [default: text]
    #[arg(long, env = "RESPIPE_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,

    /// Skip per-command latency and count metrics (measures their cost; the rest stay on)
    #[arg(long, env = "RESPIPE_DISABLE_COMMAND_METRICS")]
    pub disable_command_metrics: bool,

    /// TOML file with any of these settings (keys as the long flags: upstream-conns = 4)
    #[arg(long, env = "RESPIPE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The same settings, read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<String>>,
    upstream: Option<String>,
    upstream_ca: Option<PathBuf>,
    upstream_cert: Option<PathBuf>,
    upstream_key: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    upstream_conns: Option<usize>,
    batch_window_us: Option<u64>,
    max_batch: Option<usize>,
    max_batch_bytes: Option<usize>,
    metrics: Option<String>,
    client_output_limit: Option<usize>,
    client_stall_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    upstream_timeout_ms: Option<u64>,
    max_clients: Option<usize>,
    drain_timeout_ms: Option<u64>,
    threads: Option<usize>,
    max_dedicated_conns: Option<usize>,
    dedicated_wait_ms: Option<u64>,
    log_format: Option<String>,
    disable_command_metrics: Option<bool>,
    client_password: Option<String>,
    users_file: Option<PathBuf>,
}

/// A configuration that was checked and is ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients connect.
    pub listen: Vec<ListenAddr>,
    /// The Redis behind the proxy.
    pub upstream: UpstreamAddr,
    /// TLS to it, for `rediss://`.
    pub upstream_tls: Option<UpstreamTls>,
    /// TLS on the TCP listeners.
    pub listen_tls: Option<crate::client::listener::ListenTls>,
    /// Multiplexed connections per database.
    pub upstream_conns: usize,
    /// How pipeline writes are cut.
    pub flush: FlushPolicy,
    /// Reserved metrics address.
    pub metrics: Option<SocketAddr>,
    /// Per-client limits.
    pub limits: SessionLimits,
    /// Upstream connect + handshake timeout.
    pub connect_timeout: Duration,
    /// Shared-connection command timeout; `None` for none.
    pub upstream_timeout: Option<Duration>,
    /// How long a shutdown waits for in-flight replies.
    pub drain_timeout: Duration,
    /// Worker threads.
    pub threads: usize,
    /// Dedicated connections at most.
    pub max_dedicated_conns: usize,
    /// How long a command waits for a dedicated connection.
    pub dedicated_wait: Duration,
    /// Who may connect.
    pub auth: Arc<ClientAuth>,
    /// Logs as JSON lines.
    pub log_json: bool,
    /// Per-command metrics on.
    pub command_metrics: bool,
}

/// A setting that cannot be used. Reported on stderr; the process exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    ParseFile {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("--upstream: {0}")]
    Upstream(#[from] AddrError),
    #[error("--listen: {0}")]
    Listen(String),
    #[error("--metrics: {0:?} is not a host:port socket address")]
    Metrics(String),
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("--log-format must be text or json, not {0:?}")]
    LogFormat(String),
    #[error("--users-file {path}: {msg}")]
    Users { path: PathBuf, msg: String },
}

impl Config {
    /// Builds the configuration from parsed flags (and the file they may name).
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::ParseFile {
                    path: path.clone(),
                    source: Box::new(e),
                })?
            }
            None => FileConfig::default(),
        };
        let listen = if !args.listen.is_empty() {
            Some(args.listen)
        } else {
            file.listen
        };
        let listen = listen
            .unwrap_or_else(|| vec![defaults::LISTEN.to_string()])
            .iter()
            .map(|s| ListenAddr::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Listen)?;
        let upstream = args
            .upstream
            .or(file.upstream)
            .unwrap_or_else(|| defaults::UPSTREAM.into());
        let upstream = UpstreamAddr::parse(&upstream)?;
        let (ca, cert, key) = (
            args.upstream_ca.or(file.upstream_ca),
            args.upstream_cert.or(file.upstream_cert),
            args.upstream_key.or(file.upstream_key),
        );
        let upstream_tls = if upstream.tls {
            Some(
                UpstreamTls::new(
                    &upstream.host,
                    ca.as_deref(),
                    cert.as_deref(),
                    key.as_deref(),
                )
                .map_err(ConfigError::Tls)?,
            )
        } else if ca.is_some() || cert.is_some() || key.is_some() {
            return Err(ConfigError::Tls(
                "--upstream-ca/--upstream-cert/--upstream-key need a rediss:// upstream".into(),
            ));
        } else {
            None
        };
        let upstream_conns = positive(
            "upstream-conns",
            args.upstream_conns.or(file.upstream_conns),
            defaults::UPSTREAM_CONNS,
        )?;
        let max_batch = positive(
            "max-batch",
            args.max_batch.or(file.max_batch),
            defaults::MAX_BATCH,
        )?;
        let max_batch_bytes = positive(
            "max-batch-bytes",
            args.max_batch_bytes.or(file.max_batch_bytes),
            defaults::MAX_BATCH_BYTES,
        )?;
        let window = args
            .batch_window_us
            .or(file.batch_window_us)
            .unwrap_or(defaults::BATCH_WINDOW_US);
        let metrics = match args.metrics.or(file.metrics) {
            None => None,
            Some(m) => Some(
                m.parse::<SocketAddr>()
                    .map_err(|_| ConfigError::Metrics(m))?,
            ),
        };
        let threads = positive("threads", args.threads.or(file.threads), defaults::THREADS)?;
        let mut limits = SessionLimits {
            output_limit: args
                .client_output_limit
                .or(file.client_output_limit)
                .unwrap_or(defaults::CLIENT_OUTPUT_LIMIT),
            stall_timeout: match args
                .client_stall_timeout_ms
                .or(file.client_stall_timeout_ms)
                .unwrap_or(defaults::CLIENT_STALL_TIMEOUT_MS)
            {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            // A session hands over at most one batch's worth at a time.
            max_run_commands: max_batch,
            max_run_bytes: max_batch_bytes,
            ..SessionLimits::default()
        };
        let max_dedicated_conns = positive(
            "max-dedicated-conns",
            args.max_dedicated_conns.or(file.max_dedicated_conns),
            defaults::MAX_DEDICATED_CONNS,
        )?;
        let dedicated_wait = Duration::from_millis(
            args.dedicated_wait_ms
                .or(file.dedicated_wait_ms)
                .unwrap_or(defaults::DEDICATED_WAIT_MS),
        );
        let mut auth = ClientAuth::default();
        if let Some(p) = args.client_password.or(file.client_password) {
            auth.set_default_password(p);
        }
        if let Some(path) = args.users_file.or(file.users_file) {
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Users {
                path: path.clone(),
                msg: e.to_string(),
            })?;
            auth.load_users(&text).map_err(|msg| ConfigError::Users {
                path: path.clone(),
                msg,
            })?;
        }
        let log_json = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => return Err(ConfigError::LogFormat(other.to_string())),
        };
        let command_metrics =
            !(args.disable_command_metrics || file.disable_command_metrics.unwrap_or(false));
        let upstream_timeout = match args
            .upstream_timeout_ms
            .or(file.upstream_timeout_ms)
            .unwrap_or(defaults::UPSTREAM_TIMEOUT_MS)
        {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let drain_timeout = Duration::from_millis(
            args.drain_timeout_ms
                .or(file.drain_timeout_ms)
                .unwrap_or(defaults::DRAIN_TIMEOUT_MS),
        );
        limits.max_clients = positive(
            "max-clients",
            args.max_clients.or(file.max_clients),
            defaults::MAX_CLIENTS,
        )?;
        let listen_tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => {
                Some(crate::client::listener::tls_acceptor(&cert, &key).map_err(ConfigError::Tls)?)
            }
            (None, None) => None,
            _ => {
                return Err(ConfigError::Tls(
                    "--tls-cert and --tls-key go together".into(),
                ))
            }
        };
        Ok(Self {
            listen_tls,
            upstream_tls,
            drain_timeout,
            upstream_timeout,
            log_json,
            command_metrics,
            max_dedicated_conns,
            dedicated_wait,
            auth: Arc::new(auth),
            listen,
            upstream,
            upstream_conns,
            flush: FlushPolicy {
                window: Duration::from_micros(window),
                max_commands: max_batch,
                max_bytes: max_batch_bytes,
            },
            metrics,
            limits,
            connect_timeout: Duration::from_millis(
                args.connect_timeout_ms
                    .or(file.connect_timeout_ms)
                    .unwrap_or(defaults::CONNECT_TIMEOUT_MS)
                    .max(1),
            ),
            threads,
        })
    }
}

fn positive(name: &'static str, v: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match v {
        Some(0) => Err(ConfigError::Zero(name)),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(
            Args::try_parse_from(std::iter::once("respipe").chain(argv.iter().copied())).unwrap(),
        )
    }

    #[test]
    fn defaults_apply() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, vec![ListenAddr::Tcp("127.0.0.1:6380".into())]);
        assert_eq!(c.upstream.port, 6379);
        assert_eq!(c.upstream_conns, 2);
        assert!(c.flush.window.is_zero());
    }

    #[test]
    fn flags_beat_file() {
        let dir = std::env::temp_dir().join(format!("respipe-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "upstream-conns = 7\nbatch-window-us = 50\nlisten = [\"unix:/tmp/x.sock\"]\n",
        )
        .unwrap();
        let c = parse(&["--config", f.to_str().unwrap(), "--upstream-conns", "3"]).unwrap();
        assert_eq!(c.upstream_conns, 3);
        assert_eq!(c.flush.window, Duration::from_micros(50));
        assert_eq!(c.listen, vec![ListenAddr::Unix("/tmp/x.sock".into())]);
        std::fs::write(&f, "no-such-key = 1\n").unwrap();
        assert!(matches!(
            parse(&["--config", f.to_str().unwrap()]),
            Err(ConfigError::ParseFile { .. })
        ));
    }

    #[test]
    fn invalid_values_are_errors() {
        assert!(matches!(
            parse(&["--upstream-conns", "0"]),
            Err(ConfigError::Zero(_))
        ));
        assert!(matches!(
            parse(&["--upstream", "http://x"]),
            Err(ConfigError::Upstream(_))
        ));
        assert!(matches!(
            parse(&["--listen", "nope"]),
            Err(ConfigError::Listen(_))
        ));
        assert!(matches!(
            parse(&["--metrics", "x"]),
            Err(ConfigError::Metrics(_))
        ));
    }
}
