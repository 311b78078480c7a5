//! One client connection: a reader that frames commands and hands runs of them to the
//! router, and a writer that puts the replies back in the client's order.
//!
//! Every command gets a sequence number. Replies come back in chunks tagged with the
//! sequence numbers they answer, possibly from several upstream connections (after a
//! `SELECT`, or a reroute on failure), and the writer releases them strictly in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::batch::{ReplyChunk, ReplySink, WriteBuffer};
use crate::resp::command::{classify, CommandClass};
use crate::resp::request::{Request, RequestScanner};
use crate::resp::{command_args, encode_command, error_reply, OK};
use crate::upstream::{Router, SessionRoute};

/// Per-session limits, from the config.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Stop reading a client while this many of its commands await upstream replies.
    pub max_awaiting: usize,
    /// Disconnect a client whose unwritten replies exceed this many bytes (0: no limit).
    pub output_limit: usize,
    /// Most commands in one run handed to the router.
    pub max_run_commands: usize,
    /// Most bytes in one run handed to the router.
    pub max_run_bytes: usize,
    /// Disconnect a client whose unparsed input exceeds this (Redis's
    /// `client-query-buffer-limit`).
    pub query_limit: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_awaiting: 64 * 1024,
            output_limit: 1 << 30,
            max_run_commands: 1024,
            max_run_bytes: 1 << 20,
            query_limit: 1 << 30,
        }
    }
}

/// Read buffer size for client input.
const READ_CHUNK: usize = 16 * 1024;

/// Serves one client until it disconnects, quits, or is closed for an error.
pub async fn serve<R, W>(rd: R, wr: W, router: Arc<Router>, limits: Arc<SessionLimits>, id: u64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (sink, rx) = ReplySink::new(limits.max_awaiting, limits.output_limit);
    let (end_tx, end_rx) = oneshot::channel();
    let route = router.new_route(id as usize);
    let mut reader = Reader {
        router,
        sink: sink.clone(),
        route,
        limits,
        seq: 0,
        scanner: RequestScanner::new(),
        id,
    };
    let read = async move {
        reader.run(rd).await;
        let _ = end_tx.send(reader.seq);
        // Stay pending: the writer decides when the session ends.
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = read => {}
        r = write_replies(wr, rx, &sink, end_rx) => {
            if let Err(e) = r {
                debug!(client = id, error = %e, "client write failed");
            }
        }
    }
}

/// What to do after processing input.
enum Flow {
    Continue,
    Close,
}

struct Reader {
    router: Arc<Router>,
    sink: Arc<ReplySink>,
    route: SessionRoute,
    limits: Arc<SessionLimits>,
    /// Sequence number of the next command.
    seq: u64,
    scanner: RequestScanner,
    id: u64,
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(&mut self, mut rd: R) {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            self.sink.wait_for_room().await;
            self.reserve(&mut buf);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    debug!(client = self.id, error = %e, "client read failed");
                    return;
                }
            }
            if let Flow::Close = self.process(&mut buf) {
                return;
            }
            if buf.len() > self.limits.query_limit {
                warn!(
                    client = self.id,
                    bytes = buf.len(),
                    "closing client that reached max query buffer length"
                );
                self.local(Bytes::new(), true);
                return;
            }
        }
    }

    /// Makes room for the next read; once for the whole of a large announced value.
    fn reserve(&self, buf: &mut BytesMut) {
        let want = self
            .scanner
            .wanted(buf)
            .unwrap_or(0)
            .max(buf.len() + READ_CHUNK / 4);
        if buf.capacity() < want {
            buf.reserve(want.max(READ_CHUNK) - buf.len());
        }
    }

    /// Frames every complete request in `buf`. Consecutive shared commands leave as one
    /// run (one split of the buffer, one queue entry); anything else ends the run.
    fn process(&mut self, buf: &mut BytesMut) -> Flow {
        let mut run = Run::default();
        loop {
            let request = match self.scanner.scan(&buf[run.bytes..]) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.flush_run(buf, &mut run);
                    debug!(client = self.id, error = %e, "protocol error");
                    self.local(error_reply(&format!("ERR {e}")), true);
                    return Flow::Close;
                }
            };
            match request {
                Request::Multibulk { len, name, .. } => {
                    let frame = &buf[run.bytes..run.bytes + len];
                    let class = effective_class(&frame[name.clone()], || {
                        command_args(&Bytes::copy_from_slice(frame))
                    });
                    if class == CommandClass::Shared {
                        run.add(len);
                        if run.commands >= self.limits.max_run_commands
                            || run.bytes >= self.limits.max_run_bytes
                        {
                            self.flush_run(buf, &mut run);
                        }
                        continue;
                    }
                    self.flush_run(buf, &mut run);
                    let frame = buf.split_to(len).freeze();
                    let args = command_args(&frame);
                    if let Flow::Close = self.special(class, &args) {
                        return Flow::Close;
                    }
                }
                Request::Empty { len } => {
                    self.flush_run(buf, &mut run);
                    buf.advance(len);
                }
                Request::Inline { len, args } => {
                    self.flush_run(buf, &mut run);
                    buf.advance(len);
                    let args: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
                    let class = effective_class(&args[0], || args.clone());
                    if class == CommandClass::Shared {
                        let frame = encode_command(&args);
                        self.submit(frame, 1);
                    } else if let Flow::Close = self.special(class, &args) {
                        return Flow::Close;
                    }
                }
            }
        }
        self.flush_run(buf, &mut run);
        Flow::Continue
    }

    fn flush_run(&mut self, buf: &mut BytesMut, run: &mut Run) {
        if run.commands > 0 {
            let bytes = buf.split_to(run.bytes).freeze();
            self.submit(bytes, run.commands as u64);
        }
        *run = Run::default();
    }

    fn submit(&mut self, bytes: Bytes, count: u64) {
        self.router
            .submit(&self.route, &self.sink, bytes, self.seq, count);
        self.seq += count;
    }

    /// A reply the session makes itself, in sequence with forwarded ones.
    fn local(&mut self, reply: Bytes, close_after: bool) {
        self.sink.local(self.seq, reply, close_after);
        self.seq += 1;
    }

    /// Commands the session handles itself rather than forward.
    fn special(&mut self, class: CommandClass, args: &[Bytes]) -> Flow {
        let name = args
            .first()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        match class {
            CommandClass::Select => {
                let reply = match args {
                    [_, db] => match self.router.select(&mut self.route, db) {
                        Ok(()) => OK,
                        Err(e) => error_reply(e),
                    },
                    _ => error_reply(&format!(
                        "ERR wrong number of arguments for '{}' command",
                        name.to_ascii_lowercase()
                    )),
                };
                self.local(reply, false);
                Flow::Continue
            }
            CommandClass::Quit => {
                self.local(OK, true);
                Flow::Close
            }
            CommandClass::Hostile => {
                warn!(client = self.id, command = %name, "possible cross-protocol attack (HTTP request line); closing connection, as Redis does");
                self.local(Bytes::new(), true);
                Flow::Close
            }
            CommandClass::Unsupported | CommandClass::BlockingWithArg | CommandClass::Shared => {
                let text = format!(
                    "ERR '{name}' is not supported by respipe yet: it needs connection state that a shared pipeline cannot keep"
                );
                self.local(error_reply(&text), false);
                Flow::Continue
            }
        }
    }
}

/// The class that applies to this call: `XREAD … BLOCK` blocks, plain `XREAD` does not.
fn effective_class(name: &[u8], args: impl FnOnce() -> Vec<Bytes>) -> CommandClass {
    match classify(name) {
        CommandClass::BlockingWithArg => {
            if args()
                .iter()
                .skip(1)
                .any(|a| a.eq_ignore_ascii_case(b"block"))
            {
                CommandClass::Unsupported
            } else {
                CommandClass::Shared
            }
        }
        c => c,
    }
}

/// Consecutive shared commands at the front of the read buffer.
#[derive(Default)]
struct Run {
    commands: usize,
    bytes: usize,
}

impl Run {
    fn add(&mut self, len: usize) {
        self.commands += 1;
        self.bytes += len;
    }
}

/// Writes replies in sequence order. Returns when the reader has finished and every
/// reply it is owed was written, after a closing reply, or when the client exceeded its
/// output limit.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<ReplyChunk>,
    sink: &ReplySink,
    mut reader_end: oneshot::Receiver<u64>,
) -> std::io::Result<()> {
    let mut next = 0u64;
    let mut early: BTreeMap<u64, ReplyChunk> = BTreeMap::new();
    let mut out = WriteBuffer::new();
    let mut end: Option<u64> = None;
    loop {
        if end.is_some_and(|e| next >= e) {
            return Ok(());
        }
        let first = tokio::select! {
            c = rx.recv() => match c {
                Some(c) => c,
                None => return Ok(()),
            },
            r = &mut reader_end, if end.is_none() => {
                end = Some(r.unwrap_or(next));
                continue;
            }
        };
        let (mut close, mut written) = (false, 0usize);
        let mut chunk = Some(first);
        while let Some(c) = chunk.take() {
            if c.first_seq != next {
                early.insert(c.first_seq, c);
            } else {
                let mut ready = Some(c);
                while let Some(r) = ready.take() {
                    next = r.first_seq + r.count;
                    written += r.bytes.len();
                    out.put(&mut wr, &r.bytes).await?;
                    close |= r.close_after;
                    ready = early.remove(&next);
                }
            }
            if close || sink.overflowed() {
                break;
            }
            chunk = rx.try_recv().ok();
        }
        out.flush(&mut wr).await?;
        sink.written(written);
        if sink.overflowed() {
            info!("closing client whose unread replies exceeded the output limit");
            return Ok(());
        }
        if close {
            let _ = wr.shutdown().await;
            return Ok(());
        }
    }
}
