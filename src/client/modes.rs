//! Sessions on a dedicated connection: transactions (MULTI/EXEC, WATCH), blocking calls,
//! subscribed mode and MONITOR.
//!
//! Before moving to a dedicated connection (and back), a session waits until its
//! in-flight commands are answered, so that Redis runs its commands in the order it sent
//! them, as it would on one connection.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

use super::session::{Flow, Session};
use crate::batch::slot::CONNECTION_LOST;
use crate::resp::command::{CommandClass, Ctx, Ded};
use crate::resp::encode::ReplyBuf;
use crate::resp::{encode_command, error_reply, OK};
use crate::upstream::reader::InFlight;
use crate::upstream::{Lease, Router};

/// What the session uses its dedicated connection for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// WATCH, MULTI or CLIENT TRACKING are in force (or a blocking call is in progress:
    /// all false).
    Txn {
        multi: bool,
        watching: bool,
        tracking: bool,
    },
    /// Subscribed mode: the connection's output is streamed to the client.
    Subscribed,
    /// MONITOR: likewise.
    Monitor,
}

/// A leased connection and what it is for.
#[derive(Debug)]
pub(crate) struct Leased {
    lease: Lease,
    kind: Kind,
    /// Sequence number the stream occupies, in the streaming kinds.
    stream_seq: u64,
    /// `SELECT` queued inside MULTI: the session follows it at EXEC.
    pending_db: Option<u32>,
}

impl Kind {
    /// A blocking call in progress: nothing else in force.
    const CALL: Kind = Kind::Txn {
        multi: false,
        watching: false,
        tracking: false,
    };
    const MULTI: Kind = Kind::Txn {
        multi: true,
        watching: false,
        tracking: false,
    };
    const WATCH: Kind = Kind::Txn {
        multi: false,
        watching: true,
        tracking: false,
    };
    const TRACKING: Kind = Kind::Txn {
        multi: false,
        watching: false,
        tracking: true,
    };
}

impl Leased {
    /// Whether the session still needs the connection (state is in force on it).
    pub(crate) fn needed(&self) -> bool {
        match self.kind {
            Kind::Txn {
                multi,
                watching,
                tracking,
            } => multi || watching || tracking,
            Kind::Subscribed | Kind::Monitor => true,
        }
    }

    /// True once the connection failed.
    pub(crate) fn is_broken(&self) -> bool {
        self.lease.is_broken()
    }

    /// Its output is streamed (subscribed mode, MONITOR).
    pub(crate) fn streams(&self) -> bool {
        matches!(self.kind, Kind::Subscribed | Kind::Monitor)
    }

    /// Plain commands can go to it in runs (one write, one slot for many commands).
    pub(crate) fn takes_runs(&self) -> bool {
        matches!(self.kind, Kind::Txn { .. })
    }

    pub(crate) async fn send(&mut self, bytes: &[u8], to: InFlight) {
        if let Err(e) = self.lease.send(bytes, to).await {
            // The reader answers what was in flight with "connection lost".
            debug!(error = %e, "dedicated connection write failed");
        }
    }

    /// Gives the connection up at the end of a session or on RESET: a transaction's goes
    /// back to the pool (cleaned); a subscribed or monitoring one is closed.
    pub(crate) async fn finish(self, router: &Router, session: u64) {
        router.set_redirect_target(session, None);
        match self.kind {
            Kind::Txn { .. } => self.lease.release().await,
            Kind::Subscribed | Kind::Monitor => self.lease.abort(),
        }
    }

    /// `flags`, `multi` and `sub` fields for `CLIENT INFO`.
    pub(crate) fn info_flags(&self) -> (&'static str, i64, i64) {
        match self.kind {
            Kind::Txn { multi: true, .. } => ("x", 0, 0),
            Kind::Txn { tracking: true, .. } => ("t", -1, 0),
            Kind::Txn { .. } => ("N", -1, 0),
            Kind::Subscribed => ("P", -1, 1),
            Kind::Monitor => ("O", -1, 0),
        }
    }
}

/// `CLIENT TRACKING ON|OFF …`: Some(true) for ON, Some(false) for OFF.
fn tracking_switch(args: &[Bytes]) -> Option<bool> {
    match args.get(2) {
        Some(a) if a.eq_ignore_ascii_case(b"on") => Some(true),
        Some(a) if a.eq_ignore_ascii_case(b"off") => Some(false),
        _ => None,
    }
}

/// How long a sync marker may take before the dedicated connection is given up.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn arity(name: &str) -> Bytes {
    error_reply(&format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

impl Session {
    /// A dedicated-class command in shared mode.
    pub(crate) async fn dedicated<R: AsyncRead + Unpin>(
        &mut self,
        d: Ded,
        frame: Bytes,
        args: &[Bytes],
        buf: &mut BytesMut,
        rd: &mut R,
    ) -> Flow {
        let name = lower(&args[0]);
        match d {
            Ded::Multi if args.len() != 1 => self.local(arity("multi")),
            Ded::Multi => self.enter(frame, Kind::MULTI).await,
            Ded::Watch if args.len() < 2 => self.local(arity("watch")),
            Ded::Watch => self.enter(frame, Kind::WATCH).await,
            Ded::Exec | Ded::Discard if args.len() != 1 => self.local(arity(&name)),
            Ded::Exec => self.local(error_reply("ERR EXEC without MULTI")),
            Ded::Discard => self.local(error_reply("ERR DISCARD without MULTI")),
            Ded::Unwatch if args.len() != 1 => self.local(arity("unwatch")),
            Ded::Unwatch => self.local(OK),
            Ded::BlockingWithArg
                if !args
                    .iter()
                    .skip(1)
                    .any(|a| a.eq_ignore_ascii_case(b"block")) =>
            {
                self.forward(frame, 1).await
            }
            Ded::Blocking | Ded::BlockingWithArg => {
                return self.blocking_call(frame, buf, rd).await
            }
            Ded::Subscribe if args.len() < 2 => self.local(arity(&name)),
            Ded::Subscribe => self.enter(frame, Kind::Subscribed).await,
            Ded::Unsubscribe => self.local(self.unsubscribed_replies(&name, args)),
            Ded::Monitor => self.enter(frame, Kind::Monitor).await,
            Ded::Tracking => match tracking_switch(args) {
                Some(true) => match self.redirect(args) {
                    Ok(frame) => self.enter(frame, Kind::TRACKING).await,
                    Err(e) => self.local(e),
                },
                // OFF while not tracking, or a syntax error: Redis answers it.
                _ => self.forward(frame, 1).await,
            },
        }
        Flow::Continue
    }

    /// Leases a connection (after the session's in-flight commands are answered) and
    /// sends `frame` on it.
    async fn enter(&mut self, frame: Bytes, kind: Kind) {
        self.sink.wait_idle().await;
        let lease = match self.router.lease(&self.route, &self.sink).await {
            Ok(l) => l,
            Err(e) => return self.local(error_reply(&e)),
        };
        let mut leased = Leased {
            lease,
            kind,
            stream_seq: 0,
            pending_db: None,
        };
        match kind {
            Kind::Txn { .. } => {
                self.leased = Some(leased);
                self.forward(frame, 1).await;
            }
            Kind::Subscribed | Kind::Monitor => {
                if kind == Kind::Subscribed {
                    self.router
                        .set_redirect_target(self.peer.id, leased.lease.upstream_id());
                }
                leased.stream_seq = self.seq;
                self.seq += 1;
                leased
                    .send(
                        &frame,
                        InFlight::Stream {
                            sink: self.sink.clone(),
                            seq: leased.stream_seq,
                        },
                    )
                    .await;
                self.leased = Some(leased);
            }
        }
    }

    /// A blocking call (BLPOP, WAIT, XREAD BLOCK …) on a connection of its own, so it
    /// never holds up a shared pipeline. The session reads no further commands until it
    /// returns, as on Redis; if the client disconnects meanwhile, the connection is closed,
    /// which makes Redis drop the call.
    async fn blocking_call<R: AsyncRead + Unpin>(
        &mut self,
        frame: Bytes,
        buf: &mut BytesMut,
        rd: &mut R,
    ) -> Flow {
        self.enter(frame, Kind::CALL).await;
        let present = self.wait_answered(buf, rd).await;
        match self.leased.take() {
            Some(l) if present => l.lease.release().await,
            Some(l) => l.lease.abort(),
            None => {}
        }
        if present {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    /// Waits until every command sent is answered, while noticing a client that goes away
    /// (its input is kept for later). False if the client disconnected.
    async fn wait_answered<R: AsyncRead + Unpin>(
        &mut self,
        buf: &mut BytesMut,
        rd: &mut R,
    ) -> bool {
        loop {
            tokio::select! {
                _ = self.sink.wait_idle() => return true,
                r = rd.read_buf(buf) => match r {
                    Ok(n) if n > 0 && buf.len() <= self.limits.query_limit => {}
                    _ => return false,
                },
            }
        }
    }

    /// A command while the session holds a dedicated connection.
    pub(crate) async fn in_leased<R: AsyncRead + Unpin>(
        &mut self,
        class: CommandClass,
        frame: Bytes,
        args: &[Bytes],
        buf: &mut BytesMut,
        rd: &mut R,
    ) -> Flow {
        if self.leased.as_ref().is_some_and(Leased::is_broken) {
            // Redis dropped the connection and the state on it (a transaction, WATCH,
            // subscriptions, tracking); tell the client and close, as a direct
            // connection would have been closed.
            self.drop_lease().await;
            self.local_close(error_reply(CONNECTION_LOST));
            return Flow::Close;
        }
        match class {
            CommandClass::Hostile => {
                self.drop_lease().await;
                self.local_close(Bytes::new());
                return Flow::Close;
            }
            CommandClass::Context(c @ (Ctx::Quit | Ctx::Reset)) => {
                // Replies still owed are written before the mode ends; a stream is synced
                // so that everything the connection sent before is delivered first.
                if self.leased.as_ref().is_some_and(Leased::streams) {
                    self.stream_sync().await;
                }
                if !self.wait_answered(buf, rd).await {
                    self.drop_lease().await;
                    return Flow::Close;
                }
                return self.context(c, args).await;
            }
            _ => {}
        }
        let Some(kind) = self.leased.as_ref().map(|l| l.kind) else {
            return Flow::Continue;
        };
        match kind {
            Kind::Txn { .. } => self.in_transaction(class, frame, args, buf, rd).await,
            Kind::Subscribed | Kind::Monitor => {
                self.in_stream(kind, class, frame, args).await;
                Flow::Continue
            }
        }
    }

    async fn in_transaction<R: AsyncRead + Unpin>(
        &mut self,
        class: CommandClass,
        frame: Bytes,
        args: &[Bytes],
        buf: &mut BytesMut,
        rd: &mut R,
    ) -> Flow {
        let Some(Kind::Txn {
            multi,
            watching,
            tracking,
        }) = self.leased.as_ref().map(|l| l.kind)
        else {
            return Flow::Continue;
        };
        let plain = args.len() == 1;
        match class {
            CommandClass::Refused => {
                self.local(error_reply(&format!(
                    "ERR '{}' is not supported by respipe: replicas must connect to Redis directly",
                    lower(&args[0])
                )));
            }
            // Applied by the session's writer, never by the dedicated connection.
            CommandClass::Context(c @ Ctx::ClientReply) => return self.context(c, args).await,
            CommandClass::Context(Ctx::Select) => {
                // Forwarded so the dedicated connection follows. The session follows at
                // once, or, inside MULTI, when EXEC runs it.
                match args.get(1).map(|db| self.router.check_db(db)) {
                    Some(Ok(db)) if args.len() == 2 => {
                        if multi {
                            if let Some(l) = self.leased.as_mut() {
                                l.pending_db = Some(db);
                            }
                        } else {
                            let _ = self
                                .router
                                .select(&mut self.route, db.to_string().as_bytes());
                        }
                        self.forward(frame, 1).await;
                    }
                    _ if multi => self.forward(frame, 1).await,
                    Some(Err(e)) if args.len() == 2 => self.local(error_reply(e)),
                    _ => self.local(arity("select")),
                }
            }
            CommandClass::Context(c) if !multi => return self.context(c, args).await,
            CommandClass::Dedicated(Ded::Multi) => {
                self.forward(frame, 1).await;
                if plain {
                    self.set_kind(Kind::Txn {
                        multi: true,
                        watching,
                        tracking,
                    });
                }
            }
            CommandClass::Dedicated(Ded::Watch) if !multi && args.len() >= 2 => {
                self.forward(frame, 1).await;
                self.set_kind(Kind::Txn {
                    multi,
                    watching: true,
                    tracking,
                });
            }
            // In every mode: a REDIRECT id must be rewritten (or refused), never passed on.
            CommandClass::Dedicated(Ded::Tracking) => {
                match (tracking_switch(args), self.redirect(args)) {
                    (Some(on), Ok(frame)) => {
                        self.forward(frame, 1).await;
                        self.set_kind(Kind::Txn {
                            multi,
                            watching,
                            tracking: on,
                        });
                        if !on && !multi {
                            return self.settle(buf, rd).await;
                        }
                    }
                    (_, Err(e)) => self.local(e),
                    (None, Ok(_)) => self.forward(frame, 1).await,
                }
            }
            CommandClass::Dedicated(d @ (Ded::Exec | Ded::Discard)) if multi && plain => {
                self.forward(frame, 1).await;
                // EXEC and DISCARD both end the transaction and unwatch everything.
                if let Some(l) = self.leased.as_mut() {
                    l.kind = Kind::Txn {
                        multi: false,
                        watching: false,
                        tracking,
                    };
                    let db = l.pending_db.take();
                    if let (Ded::Exec, Some(db)) = (d, db) {
                        let _ = self
                            .router
                            .select(&mut self.route, db.to_string().as_bytes());
                    }
                }
                return self.settle(buf, rd).await;
            }
            CommandClass::Dedicated(Ded::Unwatch) if !multi && plain => {
                self.forward(frame, 1).await;
                self.set_kind(Kind::Txn {
                    multi,
                    watching: false,
                    tracking,
                });
                return self.settle(buf, rd).await;
            }
            CommandClass::Dedicated(Ded::Blocking | Ded::BlockingWithArg) if !multi => {
                // It blocks this session's own connection, as on Redis.
                self.forward(frame, 1).await;
                if !self.wait_answered(buf, rd).await {
                    return Flow::Close;
                }
            }
            CommandClass::Dedicated(Ded::Subscribe) if !multi && args.len() < 2 => {
                self.local(arity(&lower(&args[0])));
            }
            CommandClass::Dedicated(d @ (Ded::Subscribe | Ded::Monitor)) if !multi => {
                let kind = if d == Ded::Monitor {
                    Kind::Monitor
                } else {
                    Kind::Subscribed
                };
                let (sink, seq) = (self.sink.clone(), self.seq);
                self.seq += 1;
                if let Some(l) = self.leased.as_mut() {
                    if kind == Kind::Subscribed {
                        self.router
                            .set_redirect_target(self.peer.id, l.lease.upstream_id());
                    }
                    l.kind = kind;
                    l.stream_seq = seq;
                    l.send(&frame, InFlight::Stream { sink, seq }).await;
                }
            }
            _ => self.forward(frame, 1).await,
        }
        Flow::Continue
    }

    /// Gives the dedicated connection up (released or closed as its kind requires).
    pub(crate) async fn drop_lease(&mut self) {
        if let Some(l) = self.leased.take() {
            l.finish(&self.router, self.peer.id).await;
        }
    }

    fn set_kind(&mut self, kind: Kind) {
        if let Some(l) = self.leased.as_mut() {
            l.kind = kind;
        }
    }

    /// After EXEC/DISCARD/UNWATCH/CLIENT TRACKING OFF: waits for the answer, then gives
    /// the connection back if no state needs it any more.
    async fn settle<R: AsyncRead + Unpin>(&mut self, buf: &mut BytesMut, rd: &mut R) -> Flow {
        let present = self.wait_answered(buf, rd).await;
        if !present {
            if let Some(l) = self.leased.take() {
                l.lease.abort();
            }
            return Flow::Close;
        }
        if self.leased.as_ref().is_some_and(|l| !l.needed()) {
            if let Some(l) = self.leased.take() {
                l.lease.release().await;
            }
        }
        Flow::Continue
    }

    /// Subscribed mode and MONITOR: commands go to the dedicated connection as they are;
    /// what comes back is streamed in arrival order.
    async fn in_stream(&mut self, kind: Kind, class: CommandClass, frame: Bytes, args: &[Bytes]) {
        let Some(l) = self.leased.as_mut() else {
            return;
        };
        // Answered at the stream's position: refused commands, and CLIENT REPLY, which the
        // proxy applies itself and must never reach the connection it reads the stream from.
        let refusal = match class {
            CommandClass::Refused => Some(format!(
                "ERR '{}' is not supported by respipe: replicas must connect to Redis directly",
                lower(&args[0])
            )),
            CommandClass::Context(Ctx::ClientReply) => Some(
                "ERR respipe: CLIENT REPLY is not supported in subscribed mode or MONITOR"
                    .to_string(),
            ),
            CommandClass::Context(Ctx::Hello) => Some(
                "ERR respipe: HELLO is not supported in subscribed mode or MONITOR".to_string(),
            ),
            _ => None,
        };
        if let Some(msg) = refusal {
            self.sink.stream(l.stream_seq, error_reply(&msg));
            return;
        }
        if let Err(e) = l.lease.write(&frame).await {
            debug!(error = %e, "dedicated connection write failed");
            return;
        }
        if kind == Kind::Subscribed {
            if let CommandClass::Context(Ctx::Select) = class {
                if let Some(Ok(db)) = args.get(1).map(|d| self.router.check_db(d)) {
                    let _ = self
                        .router
                        .select(&mut self.route, db.to_string().as_bytes());
                }
            }
            if class == CommandClass::Dedicated(Ded::Unsubscribe) {
                self.after_unsubscribe().await;
            }
        }
    }

    /// Asks the connection (with a sync marker) whether any subscription is left; if none,
    /// the session is back in normal mode and the connection goes back to the pool.
    async fn after_unsubscribe(&mut self) {
        self.unsubscribe_sync().await;
        if self.leased.is_none() {
            self.router.set_redirect_target(self.peer.id, None);
        }
    }

    /// Sends a sync marker on the dedicated connection and waits (bounded) for it: all
    /// it sent before has then been streamed. Returns the subscriptions left, or -1 when
    /// the connection did not answer.
    async fn stream_sync(&mut self) -> i64 {
        self.syncs = self.syncs.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let token = self.syncs;
        let Some(l) = self.leased.as_mut() else {
            return -1;
        };
        match l.lease.sync(token).await {
            Ok(rx) => tokio::time::timeout(SYNC_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(-1),
            Err(_) => -1,
        }
    }

    async fn unsubscribe_sync(&mut self) {
        let left = self.stream_sync().await;
        match left {
            0 => {
                if let Some(l) = self.leased.take() {
                    l.lease.release().await;
                }
            }
            n if n < 0 => {
                debug!("dedicated connection did not answer its sync marker; closing it");
                self.drop_lease().await;
            }
            _ => {}
        }
    }

    /// `CLIENT TRACKING ON … REDIRECT <id>` names a proxy session; Redis needs the id of
    /// that session's own upstream connection. Unknown ids get Redis's error, never
    /// forwarded: an id of a shared connection would send it invalidations.
    fn redirect(&self, args: &[Bytes]) -> Result<Bytes, Bytes> {
        let Some(at) = args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"redirect"))
        else {
            return Ok(encode_command(args));
        };
        let target = args
            .get(at + 1)
            .and_then(|id| crate::resp::request::parse_i64(id))
            .and_then(|id| u64::try_from(id).ok())
            .and_then(|id| self.router.redirect_target(id));
        match target {
            Some(upstream) => {
                let mut rewritten = args.to_vec();
                rewritten[at + 1] = Bytes::from(upstream.to_string());
                Ok(encode_command(&rewritten))
            }
            None => Err(error_reply(
                "ERR The client ID you want redirect to does not exist",
            )),
        }
    }

    /// What Redis answers to UNSUBSCRIBE outside subscribed mode: one confirmation per
    /// channel named (or one with a nil channel), each with a count of 0.
    fn unsubscribed_replies(&self, kind: &str, args: &[Bytes]) -> Bytes {
        let mut r = ReplyBuf::new(self.proto());
        if args.len() == 1 {
            r.push(3).bulk(kind.as_bytes()).nil().int(0);
        }
        for ch in &args[1..] {
            r.push(3).bulk(kind.as_bytes()).bulk(ch).int(0);
        }
        r.finish()
    }
}
