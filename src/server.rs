//! Wiring: the router, then one accept loop per listen address.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;
use tokio::task::JoinHandle;

use tracing::info;

use crate::admin::Metrics;

use crate::client::listener::listen;
use crate::client::session::SessionEnv;
use crate::client::BoundAddr;
use crate::config::Config;
use crate::latch::Latch;
use crate::upstream::{Router, UpstreamShared};

/// A listen address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ServerError {
    addr: String,
    source: std::io::Error,
}

/// A started proxy. Dropping it leaves the tasks running until the runtime stops;
/// [`Running::stop`] stops accepting.
#[derive(Debug)]
pub struct Running {
    /// The addresses actually bound, in `--listen` order (port 0 resolved).
    pub bound: Vec<BoundAddr>,
    /// The router, for readiness checks.
    pub router: Arc<Router>,
    /// Where `/metrics` is served, when it is.
    pub metrics_addr: Option<std::net::SocketAddr>,
    shutdown: Arc<Latch>,
    active: Arc<AtomicUsize>,
    accept_loops: Vec<JoinHandle<()>>,
}

impl Running {
    /// Graceful shutdown: stops accepting, tells every session to read nothing more and
    /// answer what it owes, and waits until all have closed or `drain` has passed.
    /// Returns the number of sessions still open (cut off) at the end.
    pub async fn shutdown(&self, drain: Duration) -> usize {
        self.stop();
        self.shutdown.raise();
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            let open = self.active.load(Ordering::Acquire);
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops accepting new clients.
    pub fn stop(&self) {
        for t in &self.accept_loops {
            t.abort();
        }
    }
}

/// Starts the upstream connections, the listeners and, with `--metrics`, the HTTP
/// endpoint. Returns once every listener is bound; an unreachable upstream is not an error
/// (the proxy keeps retrying).
pub async fn start(config: &Config) -> Result<Running, ServerError> {
    let metrics = Metrics::new(config.command_metrics);
    let shared = UpstreamShared::new(
        config.upstream.clone(),
        config.flush.clone(),
        config.connect_timeout,
        metrics.clone(),
    )
    .with_command_timeout(config.upstream_timeout)
    .with_tls(config.upstream_tls.clone());
    let router = Router::start(
        shared,
        config.upstream_conns,
        config.max_dedicated_conns,
        config.dedicated_wait,
    );
    let shutdown = Arc::new(Latch::new());
    let active = Arc::new(AtomicUsize::new(0));
    let env = SessionEnv {
        shutdown: shutdown.clone(),
        active: active.clone(),
        router: router.clone(),
        limits: Arc::new(config.limits.clone()),
        auth: config.auth.clone(),
        metrics: metrics.clone(),
    };
    let mut tasks = Vec::new();
    // Folds histogram samples into buckets whether or not anyone scrapes.
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            metrics.upkeep();
        }
    }));
    let metrics_addr = match config.metrics {
        Some(addr) => {
            let (bound, task) = crate::admin::http::serve(addr, router.clone())
                .await
                .map_err(|source| ServerError {
                    addr: addr.to_string(),
                    source,
                })?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    let ids = Arc::new(AtomicU64::new(1));
    let mut bound = Vec::new();
    for addr in &config.listen {
        let (b, task) = listen(addr, env.clone(), ids.clone(), config.listen_tls.clone())
            .await
            .map_err(|source| ServerError {
                addr: addr.to_string(),
                source,
            })?;
        bound.push(b);
        tasks.push(task);
    }
    info!(
        upstream = %config.upstream,
        upstream_conns = config.upstream_conns,
        batch_window_us = config.flush.window.as_micros() as u64,
        threads = config.threads,
        "respipe started"
    );
    Ok(Running {
        shutdown,
        active,
        bound,
        router,
        metrics_addr,
        accept_loops: tasks,
    })
}
