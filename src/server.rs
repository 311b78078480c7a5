//! Wiring: the router, then one accept loop per listen address.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::client::listener::listen;
use crate::client::session::SessionEnv;
use crate::client::BoundAddr;
use crate::config::Config;
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
    accept_loops: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting new clients.
    pub fn stop(&self) {
        for t in &self.accept_loops {
            t.abort();
        }
    }
}

/// Starts the upstream connections and the listeners. Returns once every listener is
/// bound; an unreachable upstream is not an error (the proxy keeps retrying).
pub async fn start(config: &Config) -> Result<Running, ServerError> {
    if config.metrics.is_some() {
        warn!("--metrics is reserved: the metrics endpoint is not served by this version");
    }
    let shared = UpstreamShared::new(
        config.upstream.clone(),
        config.flush.clone(),
        config.connect_timeout,
    );
    let router = Router::start(
        shared,
        config.upstream_conns,
        config.max_dedicated_conns,
        config.dedicated_wait,
    );
    let env = SessionEnv {
        router: router.clone(),
        limits: Arc::new(config.limits.clone()),
        auth: config.auth.clone(),
    };
    let ids = Arc::new(AtomicU64::new(1));
    let mut bound = Vec::new();
    let mut accept_loops = Vec::new();
    for addr in &config.listen {
        let (b, task) = listen(addr, env.clone(), ids.clone())
            .await
            .map_err(|source| ServerError {
                addr: addr.to_string(),
                source,
            })?;
        bound.push(b);
        accept_loops.push(task);
    }
    info!(
        upstream = %config.upstream,
        upstream_conns = config.upstream_conns,
        batch_window_us = config.flush.window.as_micros() as u64,
        "respipe started"
    );
    Ok(Running {
        bound,
        router,
        accept_loops,
    })
}
