//! A set of multiplexed connections to one Redis database, and what they share.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::connect::ServerInfo;
use super::mux::{self, reroute_or_fail, UpstreamMux, DOWN, STARTING, UP};
use super::{UpstreamAddr, UpstreamError};
use crate::admin::Metrics;
use crate::batch::{FlushPolicy, QueuedCommands};
use crate::resp::encode::Proto;

/// Settings and state common to every upstream connection.
#[derive(Debug)]
pub struct UpstreamShared {
    pub(crate) addr: UpstreamAddr,
    pub(crate) policy: FlushPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    /// Redis's `databases` setting once a handshake read it; 0 until then.
    databases: AtomicU32,
    server: Mutex<Option<ServerInfo>>,
    last_error: Mutex<Option<String>>,
    pub(crate) metrics: Arc<Metrics>,
    /// A shared connection whose oldest command waits longer than this is closed.
    pub(crate) command_timeout: Option<Duration>,
    /// TLS to the upstream (`rediss://`).
    pub(crate) tls: Option<super::stream::UpstreamTls>,
}

impl UpstreamShared {
    /// Shared settings for connections to `addr`.
    pub fn new(
        addr: UpstreamAddr,
        policy: FlushPolicy,
        connect_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            addr,
            policy,
            connect_timeout,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
            databases: AtomicU32::new(0),
            server: Mutex::new(None),
            last_error: Mutex::new(None),
            metrics,
            command_timeout: None,
            tls: None,
        }
    }

    /// Sets the command timeout of shared connections (`None`: wait as long as TCP does).
    pub fn with_command_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets how to open TLS to the upstream.
    pub fn with_tls(mut self, tls: Option<super::stream::UpstreamTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Redis's database count, once known.
    pub fn databases(&self) -> Option<u32> {
        Some(self.databases.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    /// What Redis said about itself in its last `HELLO`, once known.
    pub fn server(&self) -> Option<ServerInfo> {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records what a handshake learnt about the server.
    pub(crate) fn learn(&self, databases: Option<u32>, server: Option<ServerInfo>) {
        if let Some(n) = databases {
            self.databases.store(n, Ordering::Relaxed);
        }
        if let Some(info) = server {
            *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(info);
        }
    }

    /// The error commands get while no connection is up.
    pub fn unavailable(&self) -> String {
        match self.last_error.lock().ok().and_then(|e| e.clone()) {
            Some(e) => format!("ERR upstream {} unavailable: {e}", self.addr),
            None => format!("ERR upstream {} unavailable", self.addr),
        }
    }

    pub(crate) fn note_failure(&self, e: &UpstreamError, db: u32) {
        let text = e.to_string();
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(text.as_str()) {
            warn!(upstream = %self.addr, db, error = %text, "upstream unreachable, retrying with backoff");
        } else {
            debug!(upstream = %self.addr, db, error = %text, "upstream still unreachable");
        }
        *last = Some(text);
    }

    pub(crate) fn note_connected(&self, db: u32, conn: usize) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.take().is_some() {
            info!(upstream = %self.addr, db, conn, "upstream reachable again");
        } else {
            debug!(upstream = %self.addr, db, conn, "upstream connection ready");
        }
    }
}

/// The connections of one database. Shared by the router and each connection's task.
#[derive(Debug)]
pub struct MuxSetInner {
    pub(crate) db: u32,
    pub(crate) proto: Proto,
    pub(crate) muxes: Vec<UpstreamMux>,
    pub(crate) shared: Arc<UpstreamShared>,
}

impl MuxSetInner {
    /// Starts `n` connections to database `db` speaking `proto`.
    pub(crate) fn spawn(shared: Arc<UpstreamShared>, db: u32, proto: Proto, n: usize) -> Arc<Self> {
        let (muxes, queues): (Vec<_>, Vec<_>) = (0..n.max(1)).map(|_| UpstreamMux::new()).unzip();
        let set = Arc::new(Self {
            db,
            proto,
            muxes,
            shared,
        });
        for (i, q) in queues.into_iter().enumerate() {
            tokio::spawn(mux::run(i, set.clone(), q));
        }
        set
    }

    /// Queues a run on a connection: the session's own one (`affinity`) when it is up,
    /// else another that is up, else one still making its first connection; with none,
    /// the run fails at once rather than wait.
    pub(crate) fn submit(&self, affinity: usize, q: QueuedCommands) {
        let n = self.muxes.len();
        let start = affinity % n;
        let order = (0..n).map(|i| &self.muxes[(start + i) % n]);
        let pick = order
            .clone()
            .find(|m| m.state() == UP)
            .or_else(|| order.clone().find(|m| m.state() == STARTING));
        match pick {
            Some(m) => {
                if let Err(back) = m.tx.send(q) {
                    back.0.slot.fail(&self.shared.unavailable());
                }
            }
            None => q.slot.fail(&self.shared.unavailable()),
        }
    }

    /// Moves a run off connection `from`, which went down.
    pub(crate) fn reroute(&self, from: usize, q: QueuedCommands) {
        reroute_or_fail(&self.muxes, from, q, || self.shared.unavailable());
    }

    /// Connections (up, down).
    pub fn counts(&self) -> (usize, usize) {
        let up = self.muxes.iter().filter(|m| m.state() == UP).count();
        (up, self.muxes.len() - up)
    }

    /// True when at least one connection is up.
    pub fn any_up(&self) -> bool {
        self.muxes.iter().any(|m| m.state() == UP)
    }

    /// True when every connection failed at least once and none is up.
    pub fn all_down(&self) -> bool {
        self.muxes.iter().all(|m| m.state() == DOWN)
    }
}
