//! One client connection: a reader that frames commands and routes them, and a writer
//! that puts the replies back in the client's order.
//!
//! Every command gets a sequence number. Stateless commands leave in runs to the router's
//! shared pipelines; per-client state (database, protocol, name, reply mode, login) is kept
//! here (`context.rs`); transactions, blocking calls, pub/sub and MONITOR move the session
//! onto a leased dedicated connection (`modes.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::auth::{ClientAuth, NOAUTH};
use super::modes::Leased;
use super::writer::{cut_off, write_replies};
use crate::admin::{ErrorKind, Metrics};
use crate::batch::slot::Timing;
use crate::batch::{ReplySink, ReplySlot};
use crate::latch::Latch;
use crate::resp::command::{classify_sub, classify_with_id, CommandClass, Ctx};
use crate::resp::encode::Proto;
use crate::resp::request::{Request, RequestScanner};
use crate::resp::{command_args, encode_command, error_reply};
use crate::upstream::reader::InFlight;
use crate::upstream::{Router, SessionRoute};

/// Per-session limits, from the config.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Stop reading a client while this many of its commands await upstream replies.
    pub max_awaiting: usize,
    /// Disconnect a client whose unwritten replies exceed this many bytes (0: no limit).
    pub output_limit: usize,
    /// Disconnect a client whose commands are held back because it does not read its
    /// replies, once it has neither read nor sent anything for this long (None: never).
    pub stall_timeout: Option<Duration>,
    /// Most commands in one run handed to the router.
    pub max_run_commands: usize,
    /// Most bytes in one run handed to the router.
    pub max_run_bytes: usize,
    /// Disconnect a client whose unparsed input exceeds this (Redis's
    /// `client-query-buffer-limit`).
    pub query_limit: usize,
    /// Refuse clients beyond this many (Redis's `maxclients`).
    pub max_clients: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_awaiting: 64 * 1024,
            output_limit: 1 << 30,
            stall_timeout: Some(Duration::from_secs(60)),
            max_run_commands: 1024,
            max_run_bytes: 1 << 20,
            query_limit: 1 << 30,
            max_clients: 10_000,
        }
    }
}

/// Who the client is, for `CLIENT INFO`.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Session id (`CLIENT ID`).
    pub id: u64,
    /// Client address.
    pub addr: String,
    /// Listener address.
    pub local: String,
}

/// What a session needs from the server.
#[derive(Debug, Clone)]
pub struct SessionEnv {
    /// The router.
    pub router: Arc<Router>,
    /// Limits.
    pub limits: Arc<SessionLimits>,
    /// Client logins.
    pub auth: Arc<ClientAuth>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Raised when the proxy shuts down: sessions stop reading, answer what they owe, close.
    pub shutdown: Arc<Latch>,
    /// Sessions open now (for `--max-clients` and the drain on shutdown).
    pub active: Arc<std::sync::atomic::AtomicUsize>,
}

/// Read buffer size for client input.
const READ_CHUNK: usize = 16 * 1024;

/// Serves one client until it disconnects, quits, or is closed for an error.
pub async fn serve<R, W>(rd: R, wr: W, env: SessionEnv, peer: Peer)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (sink, rx) = ReplySink::new(
        env.limits.max_awaiting,
        env.limits.output_limit,
        env.metrics.clone(),
    );
    let metrics = env.metrics.clone();
    let active = env.active.clone();
    metrics.client_connections.increment(1.0);
    info!(client = peer.id, peer = %peer.addr, "client connected");
    let id = peer.id;
    let (end_tx, end_rx) = oneshot::channel();
    let mut session = Session::new(env, sink.clone(), peer);
    let read = async move {
        session.run(rd).await;
        if let Some(l) = session.leased.take() {
            l.finish(&session.router, session.peer.id).await;
        }
        let _ = end_tx.send(session.seq);
        // Stay pending: the writer decides when the session ends.
        std::future::pending::<()>().await
    };
    // Biased: no random start (a thread-local RNG draw per wake-up); each branch ends the
    // session, so their order only matters if two end it at once.
    let reason = tokio::select! {
        biased;
        // A client that stopped reading may hold its writer in a write that never ends:
        // the limit must cut it off all the same, or its commands keep costing Redis.
        _ = sink.wait_cut_off() => cut_off(&sink),
        _ = read => "closed",
        r = write_replies(wr, rx, &sink, end_rx) => match r {
            Ok(reason) => reason,
            Err(e) => {
                debug!(client = id, error = %e, "client write failed");
                "write failed"
            }
        },
    };
    metrics.client_connections.decrement(1.0);
    active.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    info!(client = id, reason, "client disconnected");
}

/// What to do after a command.
pub(crate) enum Flow {
    Continue,
    /// Commands are left in the read buffer until the session has room to send them.
    Held,
    Close,
}

/// `CLIENT REPLY` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyMode {
    On,
    Off,
    /// Drop the reply of the next command only.
    Skip,
}

/// The reader side of a session and all the per-client state the proxy keeps.
pub(crate) struct Session {
    pub(crate) router: Arc<Router>,
    pub(crate) sink: Arc<ReplySink>,
    pub(crate) route: SessionRoute,
    pub(crate) limits: Arc<SessionLimits>,
    pub(crate) auth: Arc<ClientAuth>,
    pub(crate) peer: Peer,
    pub(crate) started: Instant,
    /// Sequence number of the next command.
    pub(crate) seq: u64,
    scanner: RequestScanner,
    pub(crate) authed: bool,
    pub(crate) name: Option<Bytes>,
    pub(crate) lib_name: Option<Bytes>,
    pub(crate) lib_ver: Option<Bytes>,
    pub(crate) reply: ReplyMode,
    /// Whether the command being handled has its reply dropped (`CLIENT REPLY`).
    pub(crate) silent: bool,
    /// A dedicated connection, while the session holds connection state.
    pub(crate) leased: Option<Leased>,
    pub(crate) syncs: u64,
    shutdown: Arc<Latch>,
    /// Read times of the commands framed from the current read (metrics).
    timings: Vec<Timing>,
    /// When the bytes being framed were read (or released, after a hold); None when
    /// metrics are off.
    read_at: Option<Instant>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // However the session ended, it is no longer a tracking redirect target.
        self.router.set_redirect_target(self.peer.id, None);
    }
}

/// Consecutive commands at the front of the read buffer that leave together.
#[derive(Default)]
struct Run {
    commands: usize,
    bytes: usize,
}

/// Times how long a backlogged client, its commands held back, neither reads a reply nor
/// sends anything.
#[derive(Default)]
struct StallClock {
    /// When the current wait for room started.
    since: Option<Instant>,
}

impl StallClock {
    /// When the client counts as stalled, if it is backlogged and a timeout is set: the
    /// timeout after the wait started or the client last read, whichever is later.
    fn deadline(&mut self, sink: &ReplySink, timeout: Option<Duration>) -> Option<Instant> {
        let timeout = timeout?;
        if !sink.backlogged() {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        Some(since.max(sink.last_progress()) + timeout)
    }

    /// At a deadline: true if the client is still backlogged and has read nothing for the
    /// whole timeout.
    fn expired(&mut self, sink: &ReplySink, timeout: Option<Duration>) -> bool {
        self.deadline(sink, timeout)
            .is_some_and(|at| Instant::now() >= at)
    }
}

/// Sleeps until `at` (the caller disables the branch when there is none).
async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

impl Session {
    fn new(env: SessionEnv, sink: Arc<ReplySink>, peer: Peer) -> Self {
        Self {
            route: env.router.new_route(peer.id as usize),
            router: env.router,
            sink,
            limits: env.limits,
            authed: !env.auth.required(),
            auth: env.auth,
            syncs: {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(peer.id);
                h.finish()
            },
            timings: Vec::new(),
            shutdown: env.shutdown.clone(),
            read_at: None,
            peer,
            started: Instant::now(),
            seq: 0,
            scanner: RequestScanner::new(),
            name: None,
            lib_name: None,
            lib_ver: None,
            reply: ReplyMode::On,
            silent: false,
            leased: None,
        }
    }

    async fn run<R: AsyncRead + Unpin>(&mut self, mut rd: R) {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let shutdown = self.shutdown.clone();
        // Made once: polled beside every read, it must cost next to nothing.
        let mut stopping = shutdown.wait();
        // Whether framed commands wait in `buf` for room to send them.
        let mut held = false;
        let mut eof = false;
        let mut stall = StallClock::default();
        // Whether the current hold waited on the client's reading (not only on the
        // in-flight cap, which is the proxy's own queueing).
        let mut waited_on_client = false;
        loop {
            if held && self.sink.has_room() {
                held = false;
                // Time commands held for the client's backlog from their release: that wait
                // was the client's, and Redis's own latency figures would not include it.
                if waited_on_client && self.read_at.is_some() {
                    self.read_at = Some(Instant::now());
                }
                waited_on_client = false;
            } else if held {
                waited_on_client |= self.sink.backlogged();
                // Keep reading the client meanwhile (up to the query limit): a client that
                // writes its whole pipeline before reading a reply must not deadlock with
                // a proxy waiting for it to read.
                let deadline = if buf.is_empty() {
                    // Nothing held back: a client that only leaves replies unread is not
                    // disconnected for it (Redis does not either); its output limit applies.
                    stall = StallClock::default();
                    None
                } else {
                    stall.deadline(&self.sink, self.limits.stall_timeout)
                };
                self.reserve(&mut buf);
                tokio::select! {
                    biased;
                    _ = &mut stopping => return,
                    // A reply came back or was written: look again.
                    _ = self.sink.changed() => continue,
                    // Before the stall deadline: input that is waiting proves the client
                    // alive even if this task was not polled for a while.
                    r = rd.read_buf(&mut buf), if !eof => match r {
                        Ok(0) => eof = true,
                        // A client still sending is not stalled: it may read once done.
                        Ok(_) => stall = StallClock::default(),
                        Err(e) => {
                            debug!(client = self.peer.id, error = %e, "client read failed");
                            return;
                        }
                    },
                    _ = sleep_until(deadline), if deadline.is_some() => {
                        if stall.expired(&self.sink, self.limits.stall_timeout) {
                            info!(client = self.peer.id, "client left its replies unread past the stall timeout");
                            self.sink.cut_off_stalled();
                            return;
                        }
                        continue;
                    }
                }
            } else {
                if eof {
                    return;
                }
                if !self.sink.has_room() {
                    // Commands that bypass the fast path's check (one by one, or with
                    // replies off) leave the session over its cap or backlogged: read on,
                    // but send nothing more until there is room.
                    held = true;
                    continue;
                }
                self.reserve(&mut buf);
                let read = tokio::select! {
                    biased;
                    // Shutting down: read nothing more; the writer still answers what is owed.
                    _ = &mut stopping => return,
                    r = rd.read_buf(&mut buf) => r,
                };
                match read {
                    Ok(0) => return,
                    Ok(_) => {
                        self.read_at = self.sink.metrics().enabled().then(Instant::now);
                    }
                    Err(e) => {
                        debug!(client = self.peer.id, error = %e, "client read failed");
                        return;
                    }
                }
            }
            if !held {
                stall = StallClock::default();
                match self.process(&mut buf, &mut rd).await {
                    Flow::Close => return,
                    Flow::Held => held = true,
                    Flow::Continue => {}
                }
            }
            if buf.len() > self.limits.query_limit {
                warn!(
                    client = self.peer.id,
                    bytes = buf.len(),
                    "closing client that reached max query buffer length"
                );
                self.local_close(Bytes::new());
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

    /// True when plain commands may leave in runs without looking at each one further.
    fn fast_path(&self) -> bool {
        self.authed
            && self.reply == ReplyMode::On
            && self.leased.as_ref().is_none_or(Leased::takes_runs)
    }

    /// Frames every complete request in `buf`. Consecutive shared commands leave as one
    /// run (one split of the buffer, one queue entry); anything else is handled alone.
    async fn process<R: AsyncRead + Unpin>(&mut self, buf: &mut BytesMut, rd: &mut R) -> Flow {
        self.place().await;
        let mut run = Run::default();
        // A client behind on reading its replies sends nothing more for now.
        let cap = if self.sink.backlogged() {
            0
        } else {
            self.sink.in_flight_cap()
        };
        loop {
            if self.leased.as_ref().is_some_and(Leased::is_broken) {
                // Redis dropped the dedicated connection and its state: close, as a
                // direct connection would have been.
                self.flush_run(buf, &mut run).await;
                self.drop_lease().await;
                self.local_close(error_reply(crate::batch::slot::CONNECTION_LOST));
                return Flow::Close;
            }
            let request = match self.scanner.scan(&buf[run.bytes..]) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.flush_run(buf, &mut run).await;
                    debug!(client = self.peer.id, error = %e, "protocol error");
                    self.sink.metrics().error(ErrorKind::Protocol, 1);
                    self.local_close(error_reply(&format!("ERR {e}")));
                    return Flow::Close;
                }
            };
            let (frame, args, class) = match request {
                Request::Multibulk { len, name, .. } => {
                    let frame = &buf[run.bytes..run.bytes + len];
                    let (class, id) = classify_with_id(&frame[name.clone()]);
                    let fast = class == CommandClass::Shared && self.fast_path();
                    if fast && self.sink.awaiting() + run.commands >= cap {
                        // Enough of this client's replies are outstanding or unread: let
                        // some come back or be read before sending more (see
                        // ReplySink::has_room). The command is framed again then.
                        self.flush_run(buf, &mut run).await;
                        self.sink.commands_read(&mut self.timings);
                        return Flow::Held;
                    }
                    self.timed(self.seq + run.commands as u64, id);
                    if fast {
                        run.commands += 1;
                        run.bytes += len;
                        if run.commands >= self.limits.max_run_commands
                            || run.bytes >= self.limits.max_run_bytes
                        {
                            self.flush_run(buf, &mut run).await;
                        }
                        continue;
                    }
                    self.flush_run(buf, &mut run).await;
                    let frame = buf.split_to(len).freeze();
                    let args = command_args(&frame);
                    (frame, args, class)
                }
                Request::Empty { len } => {
                    self.flush_run(buf, &mut run).await;
                    buf.advance(len);
                    continue;
                }
                Request::Inline { len, args } => {
                    self.flush_run(buf, &mut run).await;
                    buf.advance(len);
                    let args: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
                    let (class, id) = classify_with_id(&args[0]);
                    self.timed(self.seq, id);
                    (encode_command(&args), args, class)
                }
            };
            let class = match class {
                CommandClass::Container => {
                    classify_sub(&args[0], args.get(1).map_or(&b""[..], |a| a))
                }
                c => c,
            };
            // Boxed: the slow path's state machine is large, and keeping it out of the
            // session's future keeps that small (it is polled for every command).
            if let Flow::Close = Box::pin(self.dispatch(class, frame, &args, buf, rd)).await {
                return Flow::Close;
            }
        }
        self.flush_run(buf, &mut run).await;
        self.sink.commands_read(&mut self.timings);
        Flow::Continue
    }

    /// Puts a session whose replies are large on the bulk connection (and back), after its
    /// in-flight commands are answered so that their execution order holds.
    async fn place(&mut self) {
        if self.leased.is_some() {
            return;
        }
        if let Some(bulk) = self.router.bulk_move(&self.route, self.sink.mean_reply()) {
            self.sink.wait_idle().await;
            self.router.set_bulk(&mut self.route, bulk);
        }
    }

    /// Notes when command `seq` was read, for its latency histogram.
    #[inline]
    fn timed(&mut self, seq: u64, command: u16) {
        // In subscribed mode and MONITOR commands take no position of their own.
        if self.leased.as_ref().is_some_and(Leased::streams) {
            return;
        }
        if let Some(read_at) = self.read_at {
            self.timings.push(Timing {
                seq,
                command,
                read_at,
            });
        }
    }

    async fn flush_run(&mut self, buf: &mut BytesMut, run: &mut Run) {
        if run.commands > 0 {
            let bytes = buf.split_to(run.bytes).freeze();
            self.forward(bytes, run.commands as u64).await;
        }
        *run = Run::default();
    }

    /// Sends `count` commands where the session's commands go now: its leased connection,
    /// or the shared pipelines.
    pub(crate) async fn forward(&mut self, bytes: Bytes, count: u64) {
        let silent = self.silent;
        let first = self.seq;
        self.seq += count;
        match self.leased.as_mut() {
            Some(l) => {
                let slot = ReplySlot::new(self.sink.clone(), first, count).silenced(silent);
                l.send(&bytes, InFlight::Slot(slot)).await;
            }
            None => self
                .router
                .submit(&self.route, &self.sink, bytes, first, count, silent),
        }
    }

    /// Handles one command that is not on the fast path.
    async fn dispatch<R: AsyncRead + Unpin>(
        &mut self,
        class: CommandClass,
        frame: Bytes,
        args: &[Bytes],
        buf: &mut BytesMut,
        rd: &mut R,
    ) -> Flow {
        self.silent = match self.reply {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply = ReplyMode::On;
                true
            }
        };
        let flow = self.dispatch_inner(class, frame, args, buf, rd).await;
        self.silent = false;
        flow
    }

    async fn dispatch_inner<R: AsyncRead + Unpin>(
        &mut self,
        class: CommandClass,
        frame: Bytes,
        args: &[Bytes],
        buf: &mut BytesMut,
        rd: &mut R,
    ) -> Flow {
        if !self.authed
            && !matches!(
                class,
                CommandClass::Context(Ctx::Auth | Ctx::Hello | Ctx::Quit | Ctx::Reset)
            )
        {
            self.sink.metrics().error(ErrorKind::Auth, 1);
            self.local(error_reply(NOAUTH));
            return Flow::Continue;
        }
        if self.leased.is_some() {
            return self.in_leased(class, frame, args, buf, rd).await;
        }
        match class {
            CommandClass::Shared | CommandClass::Container => {
                self.forward(frame, 1).await;
                Flow::Continue
            }
            CommandClass::Context(c) => self.context(c, args).await,
            CommandClass::Dedicated(d) => self.dedicated(d, frame, args, buf, rd).await,
            CommandClass::Refused => {
                let name = String::from_utf8_lossy(&args[0]).into_owned();
                self.local(error_reply(&format!(
                    "ERR '{name}' is not supported by respipe: replicas must connect to Redis directly"
                )));
                Flow::Continue
            }
            CommandClass::Hostile => {
                warn!(client = self.peer.id, "possible cross-protocol attack (HTTP request line); closing connection, as Redis does");
                self.local_close(Bytes::new());
                Flow::Close
            }
        }
    }

    /// A reply the session makes itself, in sequence with forwarded ones (dropped, but
    /// still counted, under `CLIENT REPLY OFF/SKIP`).
    pub(crate) fn local(&mut self, reply: Bytes) {
        let reply = if self.silent { Bytes::new() } else { reply };
        self.sink.local(self.seq, reply, false);
        self.seq += 1;
    }

    /// A last reply, after which the connection closes.
    pub(crate) fn local_close(&mut self, reply: Bytes) {
        self.sink.local(self.seq, reply, true);
        self.seq += 1;
    }

    /// The client's protocol.
    pub(crate) fn proto(&self) -> Proto {
        self.route.proto()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::slot::OUTPUT_PAUSE;

    #[test]
    fn stall_clock_runs_from_the_last_progress() {
        let (sink, _rx) = ReplySink::new(1000, 0, Metrics::new(false));
        let timeout = Some(Duration::from_millis(200));
        let mut clock = StallClock::default();
        assert_eq!(clock.deadline(&sink, timeout), None, "not backlogged");
        let mut slot = ReplySlot::new(sink.clone(), 0, 1);
        slot.complete(1, Bytes::from(vec![b'x'; OUTPUT_PAUSE]));
        assert!(clock.deadline(&sink, timeout).is_some());
        assert!(!clock.expired(&sink, timeout));
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            clock.expired(&sink, timeout),
            "nothing read for the timeout"
        );
        // A write that made progress starts the timeout again.
        sink.progressed();
        assert!(!clock.expired(&sink, timeout));
        assert_eq!(clock.deadline(&sink, None), None, "no timeout set");
    }
}
