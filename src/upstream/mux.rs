//! One multiplexed upstream connection: a writer that turns the queue into pipeline
//! writes, a reader that splits replies and completes slots in order, and the reconnect
//! loop around both.
//!
//! ```text
//!   queue ──► writer ──(bytes)──► Redis ──(replies)──► reader ──► ReplySlot::complete
//!               └──(slots, in write order)──► in-flight FIFO ──┘
//! ```

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::stream::UpWrite;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::backoff::Backoff;
use super::connect::{connect, Setup};
use super::pool::MuxSetInner;
use super::reader::{read_replies, InFlight};
use super::UpstreamError;
use crate::admin::Metrics;
use crate::batch::{BatchQueue, BatchSender, QueuedCommands, WriteBuffer};

/// Never connected yet: commands wait in its queue for the first connection.
pub const STARTING: u8 = 0;
/// Connected: takes commands.
pub const UP: u8 = 1;
/// Lost or refused: commands go to a sibling or fail fast.
pub const DOWN: u8 = 2;

/// The handle sessions (through the router) use to reach one multiplexed connection.
#[derive(Debug, Clone)]
pub struct UpstreamMux {
    pub(crate) tx: BatchSender,
    pub(crate) state: Arc<AtomicU8>,
}

impl UpstreamMux {
    /// Creates the handle and the queue its task will serve.
    pub(crate) fn new() -> (Self, BatchQueue) {
        let (tx, queue) = BatchQueue::new();
        (
            Self {
                tx,
                state: Arc::new(AtomicU8::new(STARTING)),
            },
            queue,
        )
    }

    /// `STARTING`, `UP` or `DOWN`.
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
}

/// Runs connection `index` of `set` for the life of the proxy.
pub(crate) async fn run(index: usize, set: Arc<MuxSetInner>, mut queue: BatchQueue) {
    let shared = set.shared.clone();
    let me = &set.muxes[index];
    let mut backoff = Backoff::new(shared.reconnect_min, shared.reconnect_max);
    let mut batch = Vec::new();
    loop {
        let conn = loop {
            let attempt = connect(
                &shared.addr,
                Setup::new(set.db, set.proto),
                shared.connect_timeout,
                shared.tls.as_ref(),
            );
            tokio::pin!(attempt);
            let result = if me.state() == STARTING {
                attempt.await
            } else {
                loop {
                    tokio::select! {
                        biased;
                        r = &mut attempt => break r,
                        Some(q) = queue.recv() => set.reroute(index, q),
                    }
                }
            };
            match result {
                Ok(c) => break c,
                Err(e) => {
                    shared.note_failure(&e, set.db);
                    me.state.store(DOWN, Ordering::Release);
                    let pause = tokio::time::sleep(backoff.next_delay());
                    tokio::pin!(pause);
                    loop {
                        tokio::select! {
                            biased;
                            _ = &mut pause => break,
                            Some(q) = queue.recv() => set.reroute(index, q),
                        }
                    }
                }
            }
        };
        shared.learn(conn.databases, conn.server);
        backoff.reset();
        shared.note_connected(set.db, index);
        me.state.store(UP, Ordering::Release);

        let (rd, mut wr) = conn.stream.split();
        let (inflight_tx, inflight_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let mut reader = tokio::spawn(read_replies(
            rd,
            inflight_rx,
            stop_rx,
            None,
            shared.command_timeout,
        ));
        let mut out = WriteBuffer::new();
        let ended: Result<(), UpstreamError> = loop {
            tokio::select! {
                biased;
                r = &mut reader => break r.map_or(Err(UpstreamError::Closed), |end| end.result),
                more = queue.next_batch(&shared.policy, &mut batch) => {
                    if !more {
                        break Ok(());
                    }
                    if let Err(e) = write_batch(&mut wr, &mut out, &mut batch, &inflight_tx, &shared.metrics).await {
                        break Err(e);
                    }
                }
            }
        };
        me.state.store(DOWN, Ordering::Release);
        drop(inflight_tx);
        let _ = stop_tx.send(());
        if !reader.is_finished() {
            let _ = reader.await;
        }
        match &ended {
            Ok(()) => return,
            Err(e) => {
                warn!(upstream = %shared.addr, db = set.db, conn = index, error = %e, "upstream connection lost")
            }
        }
        // Runs gathered but never written may go to a healthy sibling.
        for q in batch.drain(..) {
            set.reroute(index, q);
        }
    }
}

/// Registers each run's slot in the in-flight FIFO, then writes its bytes: a reply can
/// only come back after its slot is queued for the reader.
async fn write_batch(
    wr: &mut UpWrite,
    out: &mut WriteBuffer,
    batch: &mut Vec<QueuedCommands>,
    inflight: &mpsc::UnboundedSender<InFlight>,
    metrics: &Metrics,
) -> Result<(), UpstreamError> {
    let started = Instant::now();
    let (mut commands, mut bytes) = (0u64, 0usize);
    let last = batch.len().saturating_sub(1);
    for (
        i,
        QueuedCommands {
            bytes: run,
            mut slot,
            ..
        },
    ) in batch.drain(..).enumerate()
    {
        commands += slot.remaining();
        bytes += run.len();
        slot.mark_sent(started);
        if i == last {
            slot.close_round_trip(started);
        }
        if let Err(lost) = inflight.send(InFlight::Slot(slot)) {
            // The reader is gone: the slot's drop answers "connection lost".
            drop(lost);
            return Err(UpstreamError::Closed);
        }
        out.put(wr, &run).await.map_err(UpstreamError::Io)?;
    }
    metrics.batch_commands.record(commands as f64);
    metrics.batch_bytes.record(bytes as f64);
    out.flush(wr).await.map_err(UpstreamError::Io)
}

/// Moves a run to another connection, or fails it when none is up.
pub(crate) fn reroute_or_fail(
    siblings: &[UpstreamMux],
    from: usize,
    mut q: QueuedCommands,
    unavailable: impl FnOnce() -> String,
) {
    let n = siblings.len();
    if usize::from(q.hops) < n {
        for step in 1..n {
            let m = &siblings[(from + step) % n];
            if m.state() == UP {
                q.hops += 1;
                match m.tx.send(q) {
                    Ok(()) => return,
                    Err(back) => q = back.0,
                }
            }
        }
    }
    q.slot.fail(&unavailable());
}
