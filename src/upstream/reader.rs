//! The reading half of every upstream connection: splits replies off the read buffer
//! (zero-copy) and hands them to whoever is at the head of the in-flight FIFO.
//!
//! Multiplexed connections only ever queue reply slots. A dedicated connection may also
//! switch to *streaming* (pub/sub, MONITOR: frames that answer no particular command are
//! forwarded as they arrive) and back, using a sync marker (`PING <token>`) to learn where
//! the stream ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stream::UpRead;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::UpstreamError;
use crate::batch::slot::CONNECTION_LOST;
use crate::batch::{ReplySink, ReplySlot};
use crate::resp::error_reply;
use crate::resp::reply::ReplyScanner;

/// Read buffer size for upstream replies.
const READ_CHUNK: usize = 64 * 1024;

/// What the next reply (or replies) on a connection belong to, in write order.
#[derive(Debug)]
pub enum InFlight {
    /// The replies of a run of commands.
    Slot(ReplySlot),
    /// From here on, every frame goes to `sink` at position `seq`, in arrival order, until
    /// a [`InFlight::Sync`] finds no subscription left.
    Stream {
        /// The session.
        sink: Arc<ReplySink>,
        /// The position the stream occupies in the session's reply order.
        seq: u64,
    },
    /// A `PING <token>` the proxy sent: its reply is swallowed and the number of
    /// subscriptions still open is reported.
    Sync {
        /// The token the reply must carry.
        token: Bytes,
        /// Gets the subscription count.
        done: oneshot::Sender<i64>,
    },
}

/// How a reader ended.
#[derive(Debug)]
pub struct ReaderEnd {
    /// The read half, to put the connection back together.
    pub rd: UpRead,
    /// Why it stopped: `Ok` when asked to.
    pub result: Result<(), UpstreamError>,
    /// True when nothing was outstanding or half-read: the connection can be reused.
    pub clean: bool,
}

/// Reads replies until stopped or the connection fails. With `pushes` (a dedicated
/// connection's session), RESP3 push frames that answer no command (client-side caching
/// invalidations) go to it out of band; on a multiplexed connection such a frame is never
/// taken for a reply (it is dropped and logged). Whatever is still in flight at the end is
/// answered "connection lost" (never replayed: it may have run). A session in streaming
/// mode is told the stream ended when the reader was asked to stop, and gets that error
/// and is closed when the connection failed.
pub async fn read_replies(
    mut rd: UpRead,
    mut inflight: mpsc::UnboundedReceiver<InFlight>,
    mut stop: oneshot::Receiver<()>,
    pushes: Option<Arc<ReplySink>>,
    timeout: Option<Duration>,
) -> ReaderEnd {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = ReplyScanner::new();
    let mut queue: VecDeque<InFlight> = VecDeque::new();
    let mut stream: Option<(Arc<ReplySink>, u64)> = None;
    let mut subs = Subscriptions::default();
    let result = 'conn: loop {
        // Replies of the head slot scanned but not yet delivered; their bytes are buf[..scanned].
        let (mut pending, mut scanned) = (0u64, 0usize);
        loop {
            if stream.is_none() && queue.is_empty() {
                match inflight.try_recv() {
                    Ok(x) => queue.push_back(x),
                    Err(_) if buf.get(scanned) == Some(&b'>') => {}
                    Err(_) => break,
                }
            }
            // A stream starts where it was queued: before any frame that follows it.
            if stream.is_none()
                && pending == 0
                && matches!(queue.front(), Some(InFlight::Stream { .. }))
            {
                if let Some(InFlight::Stream { sink, seq }) = queue.pop_front() {
                    stream = Some((sink, seq));
                    subs = Subscriptions::default();
                }
            }
            let len = match scanner.scan(&buf[scanned..]) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => break 'conn Err(UpstreamError::Protocol(e)),
            };
            if let Some((sink, seq)) = &stream {
                while let Ok(x) = inflight.try_recv() {
                    queue.push_back(x);
                }
                let frame = buf.split_to(len).freeze();
                if let Some(InFlight::Sync { token, .. }) = queue.front() {
                    if is_sync_reply(&frame, token) {
                        if let Some(InFlight::Sync { done, .. }) = queue.pop_front() {
                            let _ = done.send(subs.total());
                        }
                        if subs.total() <= 0 {
                            sink.stream_end(*seq);
                            stream = None;
                        }
                        continue;
                    }
                }
                subs.note(&frame);
                sink.stream(*seq, frame);
                continue;
            }
            if buf.get(scanned) == Some(&b'>') {
                // Out of band: replies before it leave first, then the push.
                if pending > 0 {
                    if let Some(InFlight::Slot(slot)) = queue.front_mut() {
                        slot.complete(pending, buf.split_to(scanned).freeze());
                    }
                    (pending, scanned) = (0, 0);
                }
                let push = buf.split_to(len).freeze();
                match &pushes {
                    Some(sink) => sink.out_of_band(push),
                    None => warn!(
                        bytes = push.len(),
                        "dropped a RESP3 push on a shared connection"
                    ),
                }
                continue;
            }
            match queue.front_mut() {
                Some(InFlight::Slot(slot)) => {
                    scanned += len;
                    pending += 1;
                    if pending == slot.remaining() {
                        slot.complete(pending, buf.split_to(scanned).freeze());
                        queue.pop_front();
                        (pending, scanned) = (0, 0);
                    }
                }
                Some(InFlight::Stream { .. }) => {
                    // Only reachable with a partial slot before it: cannot happen, as a
                    // slot completes before the next entry is looked at.
                    break 'conn Err(UpstreamError::Unsolicited);
                }
                Some(InFlight::Sync { token, .. }) => {
                    if !is_sync_reply(&buf[..len], token) {
                        break 'conn Err(UpstreamError::Unsolicited);
                    }
                    buf.advance(len);
                    if let Some(InFlight::Sync { done, .. }) = queue.pop_front() {
                        let _ = done.send(0);
                    }
                }
                None => break,
            }
        }
        if pending > 0 {
            if let Some(InFlight::Slot(slot)) = queue.front_mut() {
                slot.complete(pending, buf.split_to(scanned).freeze());
            }
        }
        if stream.is_none() && queue.is_empty() && !buf.is_empty() && buf[0] != b'>' {
            break Err(UpstreamError::Unsolicited);
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 8 {
            buf.reserve(READ_CHUNK.max(buf.len()));
        }
        // The oldest command sent bounds the wait (shared connections only).
        if queue.is_empty() {
            if let Ok(x) = inflight.try_recv() {
                queue.push_back(x);
            }
        }
        let deadline = match (timeout, queue.front()) {
            (Some(t), Some(InFlight::Slot(slot))) => slot.sent_at().map(|at| at + t),
            _ => None,
        };
        tokio::select! {
            biased;
            _ = &mut stop => break Ok(()),
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break Err(UpstreamError::Closed),
                Ok(_) => {}
                Err(e) => break Err(UpstreamError::Io(e)),
            },
            _ = sleep_until_opt(deadline) => break Err(UpstreamError::CommandTimeout),
            // With a timeout, a command sent while the connection is idle starts the clock.
            Some(x) = inflight.recv(), if timeout.is_some() && queue.is_empty() => queue.push_back(x),
        }
    };
    inflight.close();
    while let Ok(x) = inflight.try_recv() {
        queue.push_back(x);
    }
    let clean = queue.is_empty() && stream.is_none() && buf.is_empty();
    // A stream not yet started counts as started: its session waits at its position.
    let mut streams: Vec<(Arc<ReplySink>, u64)> = stream.into_iter().collect();
    let timed_out = matches!(result, Err(UpstreamError::CommandTimeout));
    for entry in queue.drain(..) {
        match entry {
            InFlight::Stream { sink, seq } => streams.push((sink, seq)),
            InFlight::Slot(slot) if timed_out => slot.fail_sent(TIMED_OUT),
            // Dropping a slot answers "connection lost"; a sync waiter sees it closed.
            other => drop(other),
        }
    }
    for (sink, seq) in streams {
        if result.is_ok() {
            // Asked to stop (RESET, QUIT): the stream simply ends.
            sink.stream_end(seq);
        } else {
            sink.local(seq, error_reply(CONNECTION_LOST), true);
        }
    }
    ReaderEnd { rd, result, clean }
}

/// The reply to commands on a connection closed for the command timeout: they were sent
/// and may have run, so they are not replayed.
pub const TIMED_OUT: &str =
    "ERR upstream timed out; the connection was closed (the command may have run)";

/// Waits until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Subscriptions open on a connection, as Redis counts them in its confirmations:
/// channels and patterns together, shard channels apart.
#[derive(Debug, Default, Clone, Copy)]
struct Subscriptions {
    channels: i64,
    shards: i64,
}

impl Subscriptions {
    fn total(&self) -> i64 {
        self.channels + self.shards
    }

    fn note(&mut self, frame: &[u8]) {
        if let Some((shard, n)) = subscription_count(frame) {
            if shard {
                self.shards = n;
            } else {
                self.channels = n;
            }
        }
    }
}

/// `PING <token>`'s reply: `$n token` (also RESP3 in subscribed mode) or, in RESP2
/// subscribed mode, `*2 pong token`. The token is random, so it cannot be a message.
fn is_sync_reply(frame: &[u8], token: &[u8]) -> bool {
    let tail_len = token.len() + 2;
    frame.len() >= tail_len + 4
        && frame.ends_with(b"\r\n")
        && &frame[frame.len() - tail_len..frame.len() - 2] == token
        && (frame[0] == b'$' || frame.starts_with(b"*2\r\n$4\r\npong\r\n"))
}

/// The subscription count in a (un)subscribe confirmation:
/// `[subscribe|psubscribe|ssubscribe|unsubscribe|…, channel, count]`, and whether it
/// counts shard channels (`ssubscribe`, `sunsubscribe`).
fn subscription_count(frame: &[u8]) -> Option<(bool, i64)> {
    if frame.len() > 1024 || !(frame.starts_with(b"*3\r\n$") || frame.starts_with(b">3\r\n$")) {
        return None;
    }
    use redis_protocol::resp3::decode::complete::decode;
    use redis_protocol::resp3::types::OwnedFrame;
    let (OwnedFrame::Array { data, .. } | OwnedFrame::Push { data, .. }) = decode(frame).ok()??.0
    else {
        return None;
    };
    let kind = match data.first()? {
        OwnedFrame::BlobString { data, .. } => data.to_ascii_lowercase(),
        _ => return None,
    };
    let known: [&[u8]; 6] = [
        b"subscribe",
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
    ];
    if !known.contains(&kind.as_slice()) {
        return None;
    }
    let shard = kind.starts_with(b"s") && kind != b"subscribe";
    match data.get(2)? {
        OwnedFrame::Number { data, .. } => Some((shard, *data)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_replies() {
        assert!(is_sync_reply(b"$5\r\ntoken\r\n", b"token"));
        assert!(is_sync_reply(
            b"*2\r\n$4\r\npong\r\n$5\r\ntoken\r\n",
            b"token"
        ));
        assert!(!is_sync_reply(
            b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\ntoken\r\n",
            b"token"
        ));
        assert!(!is_sync_reply(b"$5\r\nother\r\n", b"token"));
    }

    #[test]
    fn subscription_counts() {
        assert_eq!(
            subscription_count(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:2\r\n"),
            Some((false, 2))
        );
        assert_eq!(
            subscription_count(b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n"),
            Some((true, 0))
        );
        assert_eq!(
            subscription_count(b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"),
            Some((false, 0))
        );
        assert_eq!(
            subscription_count(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n"),
            None
        );
    }
}
