//! The session writer: puts replies back in the client's order.
//!
//! Chunks arrive tagged with the sequence numbers they answer, possibly out of order
//! (several upstream connections, local replies, dedicated connections). A chunk is
//! written when it starts at the next number owed; a streaming chunk (`count == 0`,
//! pub/sub messages) is written at its position without completing it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::admin::ErrorKind;
use crate::batch::slot::{CutOff, OUT_OF_BAND};
use crate::batch::{ReplyChunk, ReplySink, WriteBuffer};

/// Writes replies in sequence order. Returns (with the reason, for the log) when the
/// reader has finished and every reply it is owed was written, after a closing reply, or
/// when the client is cut off (output limit, stall).
pub async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::UnboundedReceiver<ReplyChunk>,
    sink: &ReplySink,
    mut reader_end: oneshot::Receiver<u64>,
) -> std::io::Result<&'static str> {
    let mut wr = Progress { inner: wr, sink };
    let mut next = 0u64;
    // Keyed by (sequence number, arrival order): streaming chunks share a number.
    let mut early: BTreeMap<(u64, u64), ReplyChunk> = BTreeMap::new();
    let mut arrival = 0u64;
    let mut out = WriteBuffer::new();
    let mut end: Option<u64> = None;
    loop {
        if end.is_some_and(|e| next >= e) {
            return Ok("client closed");
        }
        let first = tokio::select! {
            // Replies first; the reader's end only matters once they stop coming.
            biased;
            c = rx.recv() => match c {
                Some(c) => c,
                None => return Ok("closed"),
            },
            r = &mut reader_end, if end.is_none() => {
                end = Some(r.unwrap_or(next));
                continue;
            }
        };
        let (mut close, mut written) = (false, 0usize);
        let mut chunk = Some(first);
        while let Some(c) = chunk.take() {
            if c.first_seq == OUT_OF_BAND {
                written += c.bytes.len();
                out.put(&mut wr, &c.bytes).await?;
                chunk = rx.try_recv().ok();
                continue;
            }
            if c.first_seq != next {
                early.insert((c.first_seq, arrival), c);
                arrival += 1;
            } else {
                let mut ready = Some(c);
                while let Some(r) = ready.take() {
                    next = r.first_seq + r.count;
                    written += r.bytes.len();
                    out.put(&mut wr, &r.bytes).await?;
                    close |= r.close_after;
                    if close {
                        break;
                    }
                    if let Some(e) = early.first_entry() {
                        if e.key().0 == next {
                            ready = Some(e.remove());
                        }
                    }
                }
            }
            if close || sink.is_cut_off() {
                break;
            }
            chunk = rx.try_recv().ok();
        }
        out.flush(&mut wr).await?;
        sink.written(written);
        sink.replies_written(next);
        if sink.is_cut_off() {
            return Ok(cut_off(sink));
        }
        if close {
            let _ = wr.shutdown().await;
            return Ok("closed by the proxy (QUIT, protocol error or limit)");
        }
    }
}

/// The client's socket, noting every write that made progress: the stall clock's evidence
/// that the client reads, even while one large reply is going out.
struct Progress<'a, W> {
    inner: W,
    sink: &'a ReplySink,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Progress<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.sink.progressed();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Logs and counts a client the proxy disconnects; the reason, for the log.
pub fn cut_off(sink: &ReplySink) -> &'static str {
    match sink.cut_reason() {
        CutOff::OutputLimit => {
            info!("closing client whose unread replies exceeded the output limit");
            sink.metrics().error(ErrorKind::OutputLimit, 1);
            "output limit exceeded"
        }
        CutOff::Stalled => {
            info!("closing client that left its replies unread past the stall timeout");
            sink.metrics().error(ErrorKind::ClientStalled, 1);
            "stalled: replies left unread"
        }
    }
}
