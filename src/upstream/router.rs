//! The router: the one place a session's commands are sent, and the one place that
//! decides which upstream connection set serves them.
//!
//! Today it picks the multiplexed set of the session's database. A cluster-aware router
//! will pick a node's set by hash slot here, without the sessions or the connections
//! changing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::connect::ServerInfo;
use super::dedicated::{DedicatedPool, Lease};
use super::pool::{MuxSetInner, UpstreamShared};
use crate::batch::{QueuedCommands, ReplySink, ReplySlot};
use crate::resp::encode::Proto;

/// Mean reply size above which a session's shared commands go to the bulk connection.
pub const BULK_REPLY: usize = 64 * 1024;

/// Error replies for `SELECT`, worded as Redis words them.
pub const ERR_NOT_INTEGER: &str = "ERR value is not an integer or out of range";
/// `SELECT` of a number that does not fit Redis's `int`.
pub const ERR_INT_RANGE: &str =
    "ERR value is out of range, value must between -2147483648 and 2147483647";
/// `SELECT` past the upstream's `databases`.
pub const ERR_DB_RANGE: &str = "ERR DB index is out of range";

/// Routes session commands to upstream connections.
#[derive(Debug)]
pub struct Router {
    shared: Arc<UpstreamShared>,
    conns_per_set: usize,
    sets: Mutex<HashMap<(u32, Proto, bool), Arc<MuxSetInner>>>,
    default_db: u32,
    dedicated: DedicatedPool,
    /// Session id → `CLIENT ID` of its dedicated connection, for sessions in subscribed
    /// mode: `CLIENT TRACKING … REDIRECT <session id>` is rewritten with it.
    redirects: Mutex<HashMap<u64, i64>>,
}

/// A session's routing state: its database, its protocol and the matching connection
/// set, cached so that submitting takes no lock.
#[derive(Debug, Clone)]
pub struct SessionRoute {
    db: u32,
    proto: Proto,
    set: Arc<MuxSetInner>,
    affinity: usize,
    /// On the bulk set: this session's replies are large.
    bulk: bool,
}

impl SessionRoute {
    /// The session's database.
    pub fn db(&self) -> u32 {
        self.db
    }

    /// The protocol the session speaks.
    pub fn proto(&self) -> Proto {
        self.proto
    }
}

impl Router {
    /// Creates the router and starts the connections of the default database, so the
    /// first client does not wait for a connect.
    pub fn start(
        shared: UpstreamShared,
        conns_per_set: usize,
        dedicated_max: usize,
        dedicated_wait: Duration,
    ) -> Arc<Self> {
        let default_db = shared.addr.db;
        let shared = Arc::new(shared);
        let router = Arc::new(Self {
            dedicated: DedicatedPool::new(shared.clone(), dedicated_max, dedicated_wait),
            shared,
            conns_per_set: conns_per_set.max(1),
            sets: Mutex::new(HashMap::new()),
            default_db,
            redirects: Mutex::new(HashMap::new()),
        });
        router.set_for(default_db, Proto::Resp2, false);
        router
    }

    fn set_for(&self, db: u32, proto: Proto, bulk: bool) -> Arc<MuxSetInner> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        // The bulk set (sessions with large replies) has one connection.
        let n = if bulk { 1 } else { self.conns_per_set };
        sets.entry((db, proto, bulk))
            .or_insert_with(|| MuxSetInner::spawn(self.shared.clone(), db, proto, n))
            .clone()
    }

    /// The route a new session starts with. `affinity` spreads sessions over connections.
    pub fn new_route(&self, affinity: usize) -> SessionRoute {
        SessionRoute {
            db: self.default_db,
            proto: Proto::Resp2,
            set: self.set_for(self.default_db, Proto::Resp2, false),
            bulk: false,
            affinity,
        }
    }

    /// Sends `count` commands (`bytes`, raw RESP) numbered from `first_seq`; with
    /// `silent`, their replies are consumed but not written (`CLIENT REPLY OFF`).
    pub fn submit(
        &self,
        route: &SessionRoute,
        sink: &Arc<ReplySink>,
        bytes: Bytes,
        first_seq: u64,
        count: u64,
        silent: bool,
    ) {
        let slot = ReplySlot::new(sink.clone(), first_seq, count).silenced(silent);
        route.set.submit(
            route.affinity,
            QueuedCommands {
                bytes,
                slot,
                hops: 0,
            },
        );
    }

    /// `SELECT db` for a session: checks the index as Redis would and moves the session
    /// to that database's connection set (made on first use).
    pub fn select(&self, route: &mut SessionRoute, db: &[u8]) -> Result<(), &'static str> {
        let db = self.check_db(db)?;
        if db != route.db {
            route.set = self.set_for(db, route.proto, route.bulk);
            route.db = db;
        }
        Ok(())
    }

    /// Validates a `SELECT` argument as Redis would.
    pub fn check_db(&self, db: &[u8]) -> Result<u32, &'static str> {
        let db = crate::resp::request::parse_i64(db).ok_or(ERR_NOT_INTEGER)?;
        let db = i32::try_from(db).map_err(|_| ERR_INT_RANGE)?;
        if db < 0 {
            return Err(ERR_DB_RANGE);
        }
        if self.shared.databases().is_some_and(|n| db as u32 >= n) {
            return Err(ERR_DB_RANGE);
        }
        Ok(db as u32)
    }

    /// Sets the session's protocol (after `HELLO`): its shared commands go to connections
    /// that speak it, so RESP3 clients get RESP3 replies.
    pub fn set_proto(&self, route: &mut SessionRoute, proto: Proto) {
        if proto != route.proto {
            route.set = self.set_for(route.db, proto, route.bulk);
            route.proto = proto;
        }
    }

    /// Where a session's shared commands should go given its mean reply size: a session
    /// whose replies are large (mean above [`BULK_REPLY`]) uses a separate connection, so
    /// that megabyte replies never sit in front of other clients' small ones; it moves back
    /// when they are small again. `Some(bulk)` when the session should move.
    pub fn bulk_move(&self, route: &SessionRoute, mean_reply: usize) -> Option<bool> {
        let bulk = if route.bulk {
            mean_reply > BULK_REPLY / 4
        } else {
            mean_reply > BULK_REPLY
        };
        (bulk != route.bulk).then_some(bulk)
    }

    /// Moves the session on or off the bulk connection (after its in-flight commands are
    /// answered, so their execution order holds).
    pub fn set_bulk(&self, route: &mut SessionRoute, bulk: bool) {
        route.bulk = bulk;
        route.set = self.set_for(route.db, route.proto, bulk);
    }

    /// Whether `SELECT`/`HELLO` would move the session to other connections (it first
    /// waits for its in-flight commands then, to keep their execution order).
    pub fn moves(&self, route: &SessionRoute, db: u32, proto: Proto) -> bool {
        route.db != db || route.proto != proto
    }

    /// Leases a dedicated connection on the session's database and protocol. The error
    /// is the reply text for the client.
    pub async fn lease(
        &self,
        route: &SessionRoute,
        sink: &Arc<ReplySink>,
    ) -> Result<Lease, String> {
        self.dedicated
            .lease(route.db, route.proto, sink.clone())
            .await
    }

    /// Records (or with `None`, forgets) the upstream connection a session subscribed on.
    pub fn set_redirect_target(&self, session: u64, upstream_id: Option<i64>) {
        let mut r = self.redirects.lock().unwrap_or_else(|p| p.into_inner());
        match upstream_id {
            Some(id) => r.insert(session, id),
            None => r.remove(&session),
        };
    }

    /// The upstream `CLIENT ID` to redirect tracking to, for a session id a client named.
    pub fn redirect_target(&self, session: u64) -> Option<i64> {
        self.redirects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&session)
            .copied()
    }

    /// Sets the `respipe_upstream_connections{kind,state}` gauges from the current state
    /// (called when metrics are read, not on the data path).
    pub fn refresh_gauges(&self) {
        let (mut up, mut down) = (0, 0);
        for set in self.sets.lock().unwrap_or_else(|p| p.into_inner()).values() {
            let (u, d) = set.counts();
            up += u;
            down += d;
        }
        let m = &self.shared.metrics;
        m.upstream_connections("shared", "up", up as f64);
        m.upstream_connections("shared", "down", down as f64);
        let (idle, leased) = self.dedicated.counts();
        m.upstream_connections("dedicated", "idle", idle as f64);
        m.upstream_connections("dedicated", "leased", leased as f64);
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Arc<crate::admin::Metrics> {
        &self.shared.metrics
    }

    /// Dedicated connections open now (idle or leased).
    pub fn dedicated_open(&self) -> usize {
        self.dedicated.size()
    }

    /// What the upstream said about itself, for `HELLO` replies.
    pub fn server(&self) -> Option<ServerInfo> {
        self.shared.server()
    }

    /// True once the default database has a live connection (for readiness checks).
    pub fn is_ready(&self) -> bool {
        self.set_for(self.default_db, Proto::Resp2, false).any_up()
    }

    /// The reply commands get while the upstream is unreachable.
    pub fn unavailable(&self) -> String {
        self.shared.unavailable()
    }
}
