//! The queue between sessions and one upstream connection's writer.

use bytes::Bytes;
use tokio::sync::mpsc;

use tracing::warn;

use super::policy::FlushPolicy;
use super::slot::ReplySlot;
use super::timer::PreciseTimer;

/// A run of consecutive commands from one session, as raw RESP bytes, with the slot their
/// replies go to. Sessions submit runs, not single commands: a client pipelining 16
/// commands costs one queue entry, one slot and one delivery per read, not 16.
#[derive(Debug)]
pub struct QueuedCommands {
    /// The commands, exactly as the client sent them.
    pub bytes: Bytes,
    /// Where their replies go.
    pub slot: ReplySlot,
    /// Times this run was moved to another connection because its own went down.
    pub hops: u8,
}

/// Submitting side of a [`BatchQueue`]; cheap to clone.
pub type BatchSender = mpsc::UnboundedSender<QueuedCommands>;

/// The writer side: hands out batches under a [`FlushPolicy`].
///
/// Unbounded by design, since a shared writer must never block a session; the sessions bound it
/// instead (each pauses reading while too many of its commands await replies).
#[derive(Debug)]
pub struct BatchQueue {
    rx: mpsc::UnboundedReceiver<QueuedCommands>,
    /// A run taken from the channel that did not fit in the previous batch.
    carry: Option<QueuedCommands>,
    /// Runs in the previous batch: whether yielding after a wake-up gathers anything.
    last_runs: usize,
    /// Whether the writer runs on the multi-thread runtime (learnt on first use).
    multi_thread: Option<bool>,
    /// Ends a batch window; made on first use, inside the writer's runtime.
    timer: Option<PreciseTimer>,
}

impl BatchQueue {
    /// Creates a queue and its sender.
    pub fn new() -> (BatchSender, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            Self {
                rx,
                carry: None,
                last_runs: 0,
                multi_thread: None,
                timer: None,
            },
        )
    }

    /// Takes one queued run, waiting for it. `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<QueuedCommands> {
        match self.carry.take() {
            Some(c) => Some(c),
            None => self.rx.recv().await,
        }
    }

    /// Appends the next batch to `batch` (which the caller clears): waits for a first run,
    /// then takes what is queued, and with a window waits up to it for more. Returns false
    /// when the queue is closed.
    ///
    /// Cancel-safe: runs already taken stay in `batch` or in the carry slot.
    pub async fn next_batch(
        &mut self,
        policy: &FlushPolicy,
        batch: &mut Vec<QueuedCommands>,
    ) -> bool {
        let (mut cmds, mut bytes) = batch.iter().fold((0, 0), |(c, b), q| {
            (c + q.slot.remaining() as usize, b + q.bytes.len())
        });
        if batch.is_empty() {
            let (first, woken) = match self.carry.take() {
                Some(c) => (c, false),
                None => match self.rx.try_recv() {
                    Ok(c) => (c, false),
                    Err(_) => match self.rx.recv().await {
                        Some(c) => (c, true),
                        None => return false,
                    },
                },
            };
            cmds += first.slot.remaining() as usize;
            bytes += first.bytes.len();
            batch.push(first);
            if woken && self.yield_pays() {
                // Woken by a submit: on the multi-thread runtime the woken task runs next
                // (its LIFO slot), before the other sessions that are ready to submit.
                // Yielding once lets them run first, so the write carries everything
                // that is ready instead of one command. (The run is already in `batch`:
                // cancel-safe.)
                tokio::task::yield_now().await;
            }
        }
        let full = self.drain(policy, batch, &mut cmds, &mut bytes);
        if !full && !policy.window.is_zero() {
            self.gather(policy, batch, &mut cmds, &mut bytes).await;
        }
        self.last_runs = batch.len();
        true
    }

    /// Takes runs as they arrive until the window closes or the batch is full. The writer
    /// sleeps on a [`PreciseTimer`] meanwhile: woken by each submit or by the deadline,
    /// never spinning. Cancel-safe like `next_batch`.
    async fn gather(
        &mut self,
        policy: &FlushPolicy,
        batch: &mut Vec<QueuedCommands>,
        cmds: &mut usize,
        bytes: &mut usize,
    ) {
        let deadline = std::time::Instant::now() + policy.window;
        // Taken out while in use (drain borrows self); a cancelled gather drops it, and the
        // next window makes another.
        let mut timer = match self.timer.take() {
            Some(t) => t,
            None => match PreciseTimer::new() {
                Ok(t) => t,
                Err(e) => {
                    // Without a timer the batch goes now: a window is an optimisation.
                    warn!("no timer for the batch window, writing at once: {e}");
                    return;
                }
            },
        };
        // Armed once: runs arriving during the window cost no syscall.
        if timer.arm(deadline).unwrap_or(false) {
            loop {
                let arrived = tokio::select! {
                    biased;
                    next = self.rx.recv() => next,
                    _ = timer.fired() => break,
                };
                match arrived {
                    Some(run) => {
                        self.carry = Some(run);
                        if self.drain(policy, batch, cmds, bytes) {
                            break;
                        }
                    }
                    // Closed: write what is gathered; the next call reports the end.
                    None => break,
                }
            }
        }
        self.timer = Some(timer);
    }

    /// Whether to yield once before draining. Always on the multi-thread runtime (see
    /// above). On the current-thread runtime a woken task queues behind the sessions that
    /// are ready already, so the yield only adds what becomes ready during one more poll
    /// of the I/O driver: worth that `epoll_wait` while batches hold several runs, a pure
    /// cost (one syscall per command) for a lone client.
    fn yield_pays(&mut self) -> bool {
        let multi_thread = *self.multi_thread.get_or_insert_with(|| {
            tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread)
        });
        multi_thread || self.last_runs > 1
    }

    /// Moves queued runs into `batch` until the queue is empty or the batch is full.
    /// Returns true when full. A batch always takes at least one run, however large.
    fn drain(
        &mut self,
        policy: &FlushPolicy,
        batch: &mut Vec<QueuedCommands>,
        cmds: &mut usize,
        bytes: &mut usize,
    ) -> bool {
        loop {
            let next = match self.carry.take() {
                Some(c) => c,
                None => match self.rx.try_recv() {
                    Ok(c) => c,
                    Err(_) => return false,
                },
            };
            let (n, b) = (next.slot.remaining() as usize, next.bytes.len());
            if !batch.is_empty()
                && (*cmds + n > policy.max_commands || *bytes + b > policy.max_bytes)
            {
                self.carry = Some(next);
                return true;
            }
            *cmds += n;
            *bytes += b;
            batch.push(next);
            if *cmds >= policy.max_commands || *bytes >= policy.max_bytes {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::slot::ReplySink;
    use std::time::Duration;

    fn run(sink: &std::sync::Arc<ReplySink>, seq: u64, n: u64, len: usize) -> QueuedCommands {
        QueuedCommands {
            bytes: Bytes::from(vec![b'x'; len]),
            slot: ReplySlot::new(sink.clone(), seq, n),
            hops: 0,
        }
    }

    #[tokio::test]
    async fn respects_limits_and_carries_over() {
        let (sink, _rx) = ReplySink::new(1000, 0, crate::admin::Metrics::new(false));
        let (tx, mut q) = BatchQueue::new();
        for i in 0..5 {
            tx.send(run(&sink, i * 4, 4, 10)).unwrap();
        }
        let policy = FlushPolicy {
            window: Duration::ZERO,
            max_commands: 8,
            max_bytes: 1 << 20,
        };
        let mut batch = Vec::new();
        assert!(q.next_batch(&policy, &mut batch).await);
        assert_eq!(batch.len(), 2);
        batch.clear();
        assert!(q.next_batch(&policy, &mut batch).await);
        assert_eq!(batch.len(), 2);
        batch.clear();
        let policy = FlushPolicy {
            max_bytes: 5,
            ..policy
        };
        assert!(q.next_batch(&policy, &mut batch).await);
        assert_eq!(batch.len(), 1, "an oversized run still goes alone");
        batch.clear();
        drop(tx);
        assert!(!q.next_batch(&policy, &mut batch).await);
        for b in batch.drain(..) {
            b.slot.fail("ERR test");
        }
    }

    #[tokio::test]
    async fn window_gathers_late_arrivals() {
        let (sink, _rx) = ReplySink::new(1000, 0, crate::admin::Metrics::new(false));
        let (tx, mut q) = BatchQueue::new();
        tx.send(run(&sink, 0, 1, 10)).unwrap();
        let late = {
            let (tx, sink) = (tx.clone(), sink.clone());
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                tx.send(run(&sink, 1, 1, 10)).unwrap();
            })
        };
        let policy = FlushPolicy {
            window: Duration::from_millis(200),
            max_commands: 2,
            max_bytes: 1 << 20,
        };
        let mut batch = Vec::new();
        assert!(q.next_batch(&policy, &mut batch).await);
        late.await.unwrap();
        assert_eq!(batch.len(), 2);
    }
}
