//! The return path: where an upstream connection delivers the replies of commands it sent.
//!
//! A session owns one [`ReplySink`]; every run of commands it submits travels with a
//! [`ReplySlot`] naming the sink and the run's sequence numbers. Upstream readers deliver
//! raw reply bytes into the sink and never wait on it, so a client that stops reading can
//! never stall a shared reader. A slot that is dropped before all its replies arrived
//! answers the rest with an error: no command is ever left without a reply.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Notify};

use crate::admin::{ErrorKind, Metrics};
use crate::latch::{Latch, LatchWait};
use crate::resp::error_reply;

/// In-flight cap before any reply size is known.
const START_CAP: usize = 4;
/// The in-flight cap never goes below this.
const MIN_CAP: usize = 1;
/// Reply bytes a client may have in flight, estimated from its mean reply size.
const IN_FLIGHT_BUDGET: usize = 1 << 20;
/// Unwritten reply bytes at which a session stops sending its client's commands upstream
/// (at most half the output limit): a client that does not read costs Redis and the proxy
/// this much, not its whole output limit.
pub const OUTPUT_PAUSE: usize = 1 << 20;

/// `first_seq` of an out-of-band chunk (a RESP3 push, e.g. a client-side caching
/// invalidation): written as soon as it arrives, between two replies.
pub const OUT_OF_BAND: u64 = u64::MAX;

/// Error given to commands that were written to an upstream connection that then broke:
/// they may have run, so they are never replayed.
pub const CONNECTION_LOST: &str = "ERR upstream connection lost";

/// Replies for `count` consecutive commands of one session, starting at `first_seq`.
#[derive(Debug)]
pub struct ReplyChunk {
    /// Sequence number of the first command answered.
    pub first_seq: u64,
    /// Commands answered (0 for a control chunk).
    pub count: u64,
    /// Their raw replies, back to back.
    pub bytes: Bytes,
    /// Close the client connection once this chunk is written.
    pub close_after: bool,
}

/// The session side of the return path.
#[derive(Debug)]
pub struct ReplySink {
    tx: mpsc::UnboundedSender<ReplyChunk>,
    /// Commands submitted upstream whose replies have not been delivered yet.
    awaiting: AtomicUsize,
    /// Reply bytes delivered but not yet written to the client.
    unwritten: AtomicUsize,
    /// When the sink was made: `progress_ms` counts from here.
    created: Instant,
    /// Milliseconds from `created` to the last write to the client that made progress: a
    /// backlogged client that allows none for the stall timeout is stalled.
    progress_ms: AtomicU64,
    /// Raised when the client is to be disconnected (past the output limit, or stalled):
    /// the session is closed, even while its writer is blocked on a client that does not
    /// read.
    cut: Latch,
    /// Why `cut` was raised (a [`CutOff`]).
    cut_reason: AtomicU8,
    output_limit: usize,
    /// `unwritten` at or above this holds the client's commands back.
    pause_bytes: usize,
    /// Wakes the session reader paused on `awaiting` or `unwritten`.
    resumed: Notify,
    /// Wakes a session waiting for all its commands to be answered.
    drained: Notify,
    pause_at: usize,
    /// Reply bytes and replies delivered so far: their ratio sizes the in-flight cap.
    delivered_bytes: AtomicUsize,
    delivered: AtomicUsize,
    metrics: Arc<Metrics>,
    /// When each command in flight was read, for its latency histogram: pushed by the
    /// reader once per read, drained by the writer once per write (never per command).
    timings: Mutex<VecDeque<Timing>>,
}

/// Why a client is disconnected by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutOff {
    /// Its unwritten replies passed the output limit.
    OutputLimit = 0,
    /// It left its replies unread, with commands held back, for the stall timeout.
    Stalled = 1,
}

/// When a command's last byte was read, and which command it was.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Its sequence number.
    pub seq: u64,
    /// Its metrics label (command table index).
    pub command: u16,
    /// When the read that completed it returned.
    pub read_at: Instant,
}

impl ReplySink {
    /// Creates a sink and the receiver its session writer drains.
    ///
    /// `pause_at`: the session stops reading new commands while this many await replies.
    /// `output_limit`: unwritten reply bytes past which the client is disconnected
    /// (0 = unlimited), so a client that never reads cannot hold unbounded memory. Its
    /// commands are held back from [`OUTPUT_PAUSE`] (or half the limit) unwritten bytes.
    pub fn new(
        pause_at: usize,
        output_limit: usize,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<ReplyChunk>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Arc::new(Self {
            tx,
            awaiting: AtomicUsize::new(0),
            unwritten: AtomicUsize::new(0),
            created: Instant::now(),
            progress_ms: AtomicU64::new(0),
            cut: Latch::new(),
            cut_reason: AtomicU8::new(CutOff::OutputLimit as u8),
            output_limit,
            pause_bytes: match output_limit {
                0 => OUTPUT_PAUSE,
                l => OUTPUT_PAUSE.min(l / 2).max(1),
            },
            resumed: Notify::new(),
            drained: Notify::new(),
            pause_at: pause_at.max(1),
            delivered_bytes: AtomicUsize::new(0),
            delivered: AtomicUsize::new(0),
            metrics,
            timings: Mutex::new(VecDeque::new()),
        });
        (sink, rx)
    }

    /// Sends a reply the session made itself (no upstream round trip).
    pub fn local(&self, seq: u64, bytes: Bytes, close_after: bool) {
        self.push(ReplyChunk {
            first_seq: seq,
            count: 1,
            bytes,
            close_after,
        });
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records when commands were read (moves them out of `batch`).
    pub fn commands_read(&self, batch: &mut Vec<Timing>) {
        if batch.is_empty() {
            return;
        }
        let mut t = self.timings.lock().unwrap_or_else(|p| p.into_inner());
        t.extend(batch.drain(..));
    }

    /// Records the latency of every command before `next` (all written now).
    pub fn replies_written(&self, next: u64) {
        if !self.metrics.enabled() {
            return;
        }
        let now = Instant::now();
        let mut t = self.timings.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(first) = t.front() {
            if first.seq >= next {
                break;
            }
            self.metrics
                .command_done(first.command, now.saturating_duration_since(first.read_at));
            t.pop_front();
        }
    }

    /// Registers `count` commands as sent upstream.
    pub fn submitted(&self, count: u64) {
        self.awaiting.fetch_add(count as usize, Ordering::Relaxed);
    }

    /// Whether the session may send another command upstream: fewer than its in-flight
    /// cap await replies, and its client is not behind on reading (see [`Self::backlogged`]).
    pub fn has_room(&self) -> bool {
        self.awaiting.load(Ordering::Acquire) < self.in_flight_cap() && !self.backlogged()
    }

    /// Whether the client has so many replies unwritten that its further commands are held
    /// back until it reads: sending them would only pile their replies up here (or, for a
    /// client that never reads, fetch its whole output limit from Redis before cutting it
    /// off, at the cost of everyone else's latency).
    pub fn backlogged(&self) -> bool {
        self.unwritten.load(Ordering::Acquire) >= self.pause_bytes
    }

    /// Resolves when a reply was delivered or the client caught up on reading since the
    /// last call (possibly at once): a held-back session looks at [`Self::has_room`] again.
    pub async fn changed(&self) {
        self.resumed.notified().await;
    }

    /// When a write to the client last made progress (to tell a stalled client from a
    /// slow one, even in the middle of one large reply); the sink's creation before any.
    pub fn last_progress(&self) -> Instant {
        self.created + Duration::from_millis(self.progress_ms.load(Ordering::Acquire))
    }

    /// Mean size of the replies delivered so far (0 before any).
    pub fn mean_reply(&self) -> usize {
        let n = self.delivered.load(Ordering::Relaxed);
        self.delivered_bytes
            .load(Ordering::Relaxed)
            .checked_div(n)
            .unwrap_or(0)
    }

    /// Commands awaiting replies now.
    pub fn awaiting(&self) -> usize {
        self.awaiting.load(Ordering::Acquire)
    }

    /// How many of this client's commands may await replies at once: a budget of reply
    /// bytes (1 MiB) divided by the replies' mean size so far, between 1 and the pause
    /// threshold; 4 before any reply came back. A client fetching megabyte values without
    /// reading them can then never make Redis push more than about a megabyte at a time
    /// down a shared connection (which would delay everyone on it), while small replies
    /// are unthrottled (1 MiB / 10 bytes is far above the pause threshold).
    pub fn in_flight_cap(&self) -> usize {
        let n = self.delivered.load(Ordering::Relaxed);
        if n == 0 {
            return START_CAP.min(self.pause_at);
        }
        let mean = (self.delivered_bytes.load(Ordering::Relaxed) / n).max(1);
        (IN_FLIGHT_BUDGET / mean).clamp(MIN_CAP, self.pause_at.max(MIN_CAP))
    }

    /// Waits until every command submitted upstream has its reply delivered. A session
    /// calls this before moving to another connection, so that its commands run on Redis
    /// in the order it sent them.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.drained.notified();
            if self.awaiting.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Output of a dedicated connection in streaming mode (pub/sub messages, MONITOR):
    /// written at position `seq`, which it does not complete.
    pub fn stream(&self, seq: u64, bytes: Bytes) {
        self.push(ReplyChunk {
            first_seq: seq,
            count: 0,
            bytes,
            close_after: false,
        });
    }

    /// A RESP3 push that answers no command: written between two replies, at once.
    pub fn out_of_band(&self, bytes: Bytes) {
        self.push(ReplyChunk {
            first_seq: OUT_OF_BAND,
            count: 0,
            bytes,
            close_after: false,
        });
    }

    /// Ends the stream at `seq`: the replies after it may be written.
    pub fn stream_end(&self, seq: u64) {
        self.push(ReplyChunk {
            first_seq: seq,
            count: 1,
            bytes: Bytes::new(),
            close_after: false,
        });
    }

    /// Notes that a write to the client made progress (it is reading): once per socket
    /// write, never per command. Only a backlogged client's progress is timed (the stall
    /// clock starts no earlier than its backlog), so the common write reads no clock.
    pub fn progressed(&self) {
        if self.backlogged() {
            let ms = self.created.elapsed().as_millis() as u64;
            self.progress_ms.fetch_max(ms, Ordering::AcqRel);
        }
    }

    /// Marks `bytes` as written to the client.
    pub fn written(&self, bytes: usize) {
        let before = self.unwritten.fetch_sub(bytes, Ordering::AcqRel);
        if before >= self.pause_bytes && before - bytes < self.pause_bytes {
            // The client caught up: its held-back commands may go.
            self.resumed.notify_one();
        }
    }

    /// True once the client is to be disconnected.
    pub fn is_cut_off(&self) -> bool {
        self.cut.is_raised()
    }

    /// Why the client is disconnected (meaningful once [`Self::is_cut_off`]).
    pub fn cut_reason(&self) -> CutOff {
        match self.cut_reason.load(Ordering::Acquire) {
            0 => CutOff::OutputLimit,
            _ => CutOff::Stalled,
        }
    }

    /// Disconnects a client that left its replies unread for too long.
    pub fn cut_off_stalled(&self) {
        if !self.cut.is_raised() {
            self.cut_reason
                .store(CutOff::Stalled as u8, Ordering::Release);
        }
        self.cut.raise();
    }

    /// Resolves once the client is to be disconnected. The session selects on this beside
    /// its writer: a writer blocked on a full client socket never gets to look.
    pub fn wait_cut_off(&self) -> LatchWait<'_> {
        self.cut.wait()
    }

    fn deliver(&self, first_seq: u64, count: u64, bytes: Bytes) {
        self.delivered.fetch_add(count as usize, Ordering::Relaxed);
        self.delivered_bytes
            .fetch_add(bytes.len(), Ordering::Relaxed);
        // Counted as unwritten before the held session is woken: it must not see room
        // that these bytes take.
        self.push(ReplyChunk {
            first_seq,
            count,
            bytes,
            close_after: false,
        });
        let before = self.awaiting.fetch_sub(count as usize, Ordering::AcqRel);
        // A held session looks again (a stored permit if none waits).
        self.resumed.notify_one();
        if before == count as usize {
            self.drained.notify_one();
        }
    }

    fn push(&self, chunk: ReplyChunk) {
        let len = chunk.bytes.len();
        let total = self.unwritten.fetch_add(len, Ordering::Relaxed) + len;
        if self.output_limit > 0 && total > self.output_limit {
            // Keep nothing more for a client that does not read; its writer closes it.
            self.cut.raise();
            self.unwritten.fetch_sub(len, Ordering::Relaxed);
            let _ = self.tx.send(ReplyChunk {
                bytes: Bytes::new(),
                ..chunk
            });
            return;
        }
        // A closed receiver means the client is gone: its replies have nowhere to go.
        let _ = self.tx.send(chunk);
    }
}

/// Where the replies of a run of consecutive commands of one session go.
///
/// Dropping a slot with replies outstanding answers them with [`CONNECTION_LOST`].
#[derive(Debug)]
pub struct ReplySlot {
    sink: Arc<ReplySink>,
    next_seq: u64,
    remaining: u64,
    /// `CLIENT REPLY OFF/SKIP`: the replies are consumed but not written.
    silent: bool,
    /// When the pipeline write this slot ended was made: its last reply closes the
    /// upstream round trip (`respipe_upstream_rtt_seconds`).
    rtt_from: Option<Instant>,
    /// When its commands were written upstream (for the command timeout).
    sent_at: Option<Instant>,
}

impl ReplySlot {
    /// A slot for `count` commands numbered from `first_seq`.
    pub fn new(sink: Arc<ReplySink>, first_seq: u64, count: u64) -> Self {
        sink.submitted(count);
        Self {
            sink,
            next_seq: first_seq,
            remaining: count,
            silent: false,
            rtt_from: None,
            sent_at: None,
        }
    }

    /// The same slot, with its replies dropped instead of written (`CLIENT REPLY OFF`).
    pub fn silenced(mut self, silent: bool) -> Self {
        self.silent = silent;
        self
    }

    /// Records when its commands were written upstream.
    pub fn mark_sent(&mut self, at: Instant) {
        self.sent_at = Some(at);
    }

    /// When its commands were written upstream, if they were.
    pub fn sent_at(&self) -> Option<Instant> {
        self.sent_at
    }

    /// Answers every outstanding command with `text`: they were sent and may have run
    /// (counted as `upstream_lost`).
    pub fn fail_sent(mut self, text: &str) {
        self.sink
            .metrics
            .error(ErrorKind::UpstreamLost, self.remaining);
        self.fail_remaining(text);
    }

    /// Marks this slot as the last of a pipeline write made at `at`.
    pub fn close_round_trip(&mut self, at: Instant) {
        self.rtt_from = Some(at);
    }

    /// Replies still expected.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Delivers the next `count` replies, `bytes` holding exactly those.
    pub fn complete(&mut self, count: u64, bytes: Bytes) {
        debug_assert!(count <= self.remaining);
        let bytes = if self.silent { Bytes::new() } else { bytes };
        self.sink.deliver(self.next_seq, count, bytes);
        self.next_seq += count;
        self.remaining -= count;
        if self.remaining == 0 {
            if let Some(at) = self.rtt_from.take() {
                self.sink
                    .metrics
                    .upstream_rtt
                    .record(at.elapsed().as_secs_f64());
            }
        }
    }

    /// Answers every outstanding command with the error `text` (`ERR …`).
    pub fn fail(mut self, text: &str) {
        self.sink
            .metrics
            .error(ErrorKind::UpstreamUnavailable, self.remaining);
        self.fail_remaining(text);
    }

    fn fail_remaining(&mut self, text: &str) {
        if self.remaining == 0 {
            return;
        }
        let one = error_reply(text);
        let mut all = BytesMut::with_capacity(one.len() * self.remaining as usize);
        for _ in 0..self.remaining {
            all.extend_from_slice(&one);
        }
        self.complete(self.remaining, all.freeze());
    }
}

impl Drop for ReplySlot {
    fn drop(&mut self) {
        if self.remaining > 0 {
            self.sink
                .metrics
                .error(ErrorKind::UpstreamLost, self.remaining);
            self.fail_remaining(CONNECTION_LOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_slot_answers_with_errors() {
        let (sink, mut rx) = ReplySink::new(10, 0, Metrics::new(false));
        let mut slot = ReplySlot::new(sink.clone(), 5, 3);
        slot.complete(1, Bytes::from_static(b"+OK\r\n"));
        drop(slot);
        let a = rx.try_recv().unwrap();
        assert_eq!((a.first_seq, a.count), (5, 1));
        let b = rx.try_recv().unwrap();
        assert_eq!((b.first_seq, b.count), (6, 2));
        assert_eq!(
            &b.bytes[..],
            b"-ERR upstream connection lost\r\n-ERR upstream connection lost\r\n"
        );
        assert_eq!(sink.awaiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn unread_replies_hold_commands_back_until_written() {
        let (sink, _rx) = ReplySink::new(1000, 0, Metrics::new(false));
        let mut slot = ReplySlot::new(sink.clone(), 0, 4);
        assert!(!sink.has_room(), "4 in flight before any reply is sized");
        slot.complete(3, Bytes::from_static(b"+OK\r\n+OK\r\n+OK\r\n"));
        assert!(sink.has_room() && !sink.backlogged());
        slot.complete(1, Bytes::from(vec![b'x'; OUTPUT_PAUSE - 15]));
        assert_eq!(sink.awaiting(), 0);
        assert!(sink.backlogged() && !sink.has_room());
        // Writing the backlog out wakes the held-back session and lets it go on.
        let waiter = {
            let sink = sink.clone();
            tokio::spawn(async move {
                while !sink.has_room() {
                    sink.changed().await;
                }
            })
        };
        sink.written(OUTPUT_PAUSE);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }

    #[test]
    fn backlog_threshold_is_at_most_half_the_output_limit() {
        let (sink, _rx) = ReplySink::new(10, 1000, Metrics::new(false));
        assert_eq!(sink.pause_bytes, 500);
        let (sink, _rx) = ReplySink::new(10, 0, Metrics::new(false));
        assert_eq!(sink.pause_bytes, OUTPUT_PAUSE);
    }

    #[test]
    fn output_limit_drops_bytes_and_flags() {
        let (sink, mut rx) = ReplySink::new(10, 8, Metrics::new(false));
        let mut slot = ReplySlot::new(sink.clone(), 0, 2);
        slot.complete(1, Bytes::from_static(b"+OK\r\n"));
        slot.complete(1, Bytes::from_static(b"+OK\r\n"));
        assert!(sink.is_cut_off());
        assert_eq!(sink.cut_reason(), CutOff::OutputLimit);
        assert_eq!(rx.try_recv().unwrap().bytes.len(), 5);
        assert_eq!(rx.try_recv().unwrap().bytes.len(), 0);
    }
}
