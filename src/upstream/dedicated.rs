//! Dedicated connections: leased to one session for as long as it holds connection state
//! (a transaction, a blocking call, subscribed mode, MONITOR).
//!
//! They come from a bounded `deadpool` pool whose manager speaks raw RESP, so a
//! transaction reuses a warm connection instead of opening one. A connection goes back to
//! the pool only when nothing is outstanding on it, and before its next use it is
//! cleaned: `RESET` (which discards MULTI, unwatches, unsubscribes, returns to RESP2 and
//! db 0), a fresh login, then the new user's database and protocol, in one round trip.
//! One that cannot be cleaned is closed, never reused.

use std::sync::Arc;
use std::time::Duration;

use super::stream::{UpWrite, UpstreamStream};
use bytes::Bytes;
use deadpool::managed::{Manager, Metrics, Object, Pool, PoolError, RecycleError, RecycleResult};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::debug;

use super::connect::{connect, prepare, Setup};
use super::pool::UpstreamShared;
use super::reader::{read_replies, InFlight, ReaderEnd};
use super::UpstreamError;
use crate::batch::{ReplySink, WriteBuffer};
use crate::resp::encode::Proto;
use crate::resp::encode_command;

/// A pooled connection. `None` while leased out (its halves are in the [`Lease`]) or
/// once broken.
#[derive(Debug)]
pub struct PooledConn {
    stream: Option<UpstreamStream>,
    /// Never leased yet: still in its handshake state, needs no `RESET`.
    fresh: bool,
    /// Its `CLIENT ID` on Redis (for `CLIENT TRACKING … REDIRECT`).
    client_id: Option<i64>,
}

/// The pool's manager: makes logged-in RESP2 connections on db 0.
#[derive(Debug)]
pub struct DedicatedManager {
    shared: Arc<UpstreamShared>,
}

impl Manager for DedicatedManager {
    type Type = PooledConn;
    type Error = UpstreamError;

    async fn create(&self) -> Result<PooledConn, UpstreamError> {
        let h = connect(
            &self.shared.addr,
            Setup::new(0, Proto::Resp2),
            self.shared.connect_timeout,
            self.shared.tls.as_ref(),
        )
        .await?;
        Ok(PooledConn {
            stream: Some(h.stream),
            fresh: true,
            client_id: h.client_id,
        })
    }

    async fn recycle(&self, conn: &mut PooledConn, _: &Metrics) -> RecycleResult<UpstreamError> {
        match &conn.stream {
            // Cleaned when leased; a connection the peer closed since fails that and is
            // replaced.
            Some(_) => Ok(()),
            None => Err(RecycleError::Message(
                "connection was not returned clean".into(),
            )),
        }
    }
}

/// The bounded pool of dedicated connections.
#[derive(Debug, Clone)]
pub struct DedicatedPool {
    pool: Pool<DedicatedManager>,
    shared: Arc<UpstreamShared>,
    max: usize,
}

impl DedicatedPool {
    /// A pool of at most `max` connections; a lease waits up to `wait` for one.
    pub fn new(shared: Arc<UpstreamShared>, max: usize, wait: Duration) -> Self {
        let pool = Pool::builder(DedicatedManager {
            shared: shared.clone(),
        })
        .max_size(max.max(1))
        .wait_timeout(Some(wait))
        .create_timeout(Some(shared.connect_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .unwrap_or_else(|e| unreachable!("pool config is complete: {e}"));
        Self { pool, shared, max }
    }

    /// Leases a connection on `db` speaking `proto`. The error is the text of the reply
    /// the client gets.
    pub async fn lease(
        &self,
        db: u32,
        proto: Proto,
        pushes: Arc<ReplySink>,
    ) -> Result<Lease, String> {
        // A pooled connection the server closed while idle fails its preparation; try
        // another one before giving up.
        let mut last = String::new();
        for _ in 0..3 {
            let mut obj = self.pool.get().await.map_err(|e| match e {
                PoolError::Timeout(_) => {
                    self.shared.metrics.error(crate::admin::ErrorKind::PoolExhausted, 1);
                    format!(
                        "ERR respipe: no dedicated upstream connection free (all {} in use; see --max-dedicated-conns)",
                        self.max
                    )
                }
                PoolError::Backend(_) => self.shared.unavailable(),
                other => format!("ERR respipe: dedicated pool: {other}"),
            })?;
            let Some(mut stream) = obj.stream.take() else {
                continue;
            };
            // A fresh connection is still in its handshake state; a reused one is reset
            // and logged in again, in the same round trip as its new database/protocol.
            let reused = !obj.fresh;
            obj.fresh = false;
            let setup = Setup {
                db,
                proto,
                reset: reused,
                login: reused,
            };
            match prepare(
                &mut stream,
                &self.shared.addr,
                setup,
                self.shared.connect_timeout,
            )
            .await
            {
                Ok(()) => {
                    self.shared.metrics.dedicated_leases.increment(1);
                    return Ok(Lease::start(obj, stream, pushes));
                }
                Err(e) => {
                    debug!(error = %e, "pooled connection failed preparation; dropping it");
                    last = format!("ERR upstream {} unavailable: {e}", self.shared.addr);
                    let _ = Object::take(obj);
                }
            }
        }
        Err(last)
    }

    /// Connections open (idle or leased), for tests and stats.
    pub fn size(&self) -> usize {
        self.pool.status().size
    }

    /// Connections (idle in the pool, leased).
    pub fn counts(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.available, s.size.saturating_sub(s.available))
    }
}

/// One session's exclusive use of a dedicated connection.
#[derive(Debug)]
pub struct Lease {
    obj: Object<DedicatedManager>,
    wr: UpWrite,
    inflight: mpsc::UnboundedSender<InFlight>,
    stop: oneshot::Sender<()>,
    reader: JoinHandle<ReaderEnd>,
    out: WriteBuffer,
}

impl Lease {
    fn start(
        obj: Object<DedicatedManager>,
        stream: UpstreamStream,
        pushes: Arc<ReplySink>,
    ) -> Self {
        let (rd, wr) = stream.split();
        let (inflight, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel();
        // No command timeout here: blocking calls legitimately wait as long as they asked.
        let reader = tokio::spawn(read_replies(rd, rx, stop_rx, Some(pushes), None));
        Self {
            obj,
            wr,
            inflight,
            stop,
            reader,
            out: WriteBuffer::new(),
        }
    }

    /// Registers where the replies go, then writes the commands.
    pub async fn send(&mut self, bytes: &[u8], to: InFlight) -> Result<(), UpstreamError> {
        self.inflight.send(to).map_err(|_| UpstreamError::Closed)?;
        self.write(bytes).await
    }

    /// Writes commands whose output is streamed (subscribed mode, MONITOR).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        self.out
            .put(&mut self.wr, bytes)
            .await
            .map_err(UpstreamError::Io)?;
        self.out
            .flush(&mut self.wr)
            .await
            .map_err(UpstreamError::Io)
    }

    /// Sends a sync marker; the receiver gets the number of subscriptions still open once
    /// everything sent before it has been answered.
    pub async fn sync(&mut self, token: u64) -> Result<oneshot::Receiver<i64>, UpstreamError> {
        let token = Bytes::from(format!("respipe-sync-{token:016x}"));
        let (done, rx) = oneshot::channel();
        let cmd = encode_command(&[&b"PING"[..], &token]);
        self.send(&cmd, InFlight::Sync { token, done }).await?;
        Ok(rx)
    }

    /// The connection's `CLIENT ID` on Redis.
    pub fn upstream_id(&self) -> Option<i64> {
        self.obj.client_id
    }

    /// True once the connection failed (its reader ended).
    pub fn is_broken(&self) -> bool {
        self.reader.is_finished()
    }

    /// Gives the connection back. Only a connection with nothing outstanding goes back to
    /// the pool (it is cleaned before its next use); any other is closed, which also makes
    /// Redis drop whatever it held for it (a blocked call, its subscriptions).
    pub async fn release(self) {
        let Self {
            mut obj,
            wr,
            stop,
            reader,
            ..
        } = self;
        let _ = stop.send(());
        let end = match reader.await {
            Ok(end) => end,
            Err(_) => {
                let _ = Object::take(obj);
                return;
            }
        };
        if !end.clean || end.result.is_err() {
            let _ = Object::take(obj);
            return;
        }
        match UpstreamStream::reunite(end.rd, wr) {
            Some(stream) => obj.stream = Some(stream),
            None => {
                let _ = Object::take(obj);
            }
        }
    }

    /// Closes the connection without returning it.
    pub fn abort(self) {
        let _ = self.stop.send(());
        let _ = Object::take(self.obj);
    }
}
