//! The router: the one place a session's commands are sent, and the one place that
//! decides which upstream connection set serves them.
//!
//! Today it picks the multiplexed set of the session's database. A cluster-aware router
//! will pick a node's set by hash slot here, without the sessions or the connections
//! changing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::pool::{MuxSetInner, UpstreamShared};
use crate::batch::{QueuedCommands, ReplySink, ReplySlot};

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
    sets: Mutex<HashMap<u32, Arc<MuxSetInner>>>,
    default_db: u32,
}

/// A session's routing state: its database and that database's connection set, cached
/// so that submitting takes no lock.
#[derive(Debug, Clone)]
pub struct SessionRoute {
    db: u32,
    set: Arc<MuxSetInner>,
    affinity: usize,
}

impl SessionRoute {
    /// The session's database.
    pub fn db(&self) -> u32 {
        self.db
    }
}

impl Router {
    /// Creates the router and starts the connections of the default database, so the
    /// first client does not wait for a connect.
    pub fn start(shared: UpstreamShared, conns_per_set: usize) -> Arc<Self> {
        let default_db = shared.addr.db;
        let router = Arc::new(Self {
            shared: Arc::new(shared),
            conns_per_set: conns_per_set.max(1),
            sets: Mutex::new(HashMap::new()),
            default_db,
        });
        router.set_for(default_db);
        router
    }

    fn set_for(&self, db: u32) -> Arc<MuxSetInner> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.entry(db)
            .or_insert_with(|| MuxSetInner::spawn(self.shared.clone(), db, self.conns_per_set))
            .clone()
    }

    /// The route a new session starts with. `affinity` spreads sessions over connections.
    pub fn new_route(&self, affinity: usize) -> SessionRoute {
        SessionRoute {
            db: self.default_db,
            set: self.set_for(self.default_db),
            affinity,
        }
    }

    /// Sends `count` commands (`bytes`, raw RESP) numbered from `first_seq`.
    pub fn submit(
        &self,
        route: &SessionRoute,
        sink: &Arc<ReplySink>,
        bytes: Bytes,
        first_seq: u64,
        count: u64,
    ) {
        let slot = ReplySlot::new(sink.clone(), first_seq, count);
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
        let db = crate::resp::request::parse_i64(db).ok_or(ERR_NOT_INTEGER)?;
        let db = i32::try_from(db).map_err(|_| ERR_INT_RANGE)?;
        if db < 0 {
            return Err(ERR_DB_RANGE);
        }
        let db = i64::from(db);
        if self.shared.databases().is_some_and(|n| db >= i64::from(n)) {
            return Err(ERR_DB_RANGE);
        }
        let db = db as u32;
        if db != route.db {
            route.set = self.set_for(db);
            route.db = db;
        }
        Ok(())
    }

    /// True once the default database has a live connection (for readiness checks).
    pub fn is_ready(&self) -> bool {
        self.set_for(self.default_db).any_up()
    }

    /// The reply commands get while the upstream is unreachable.
    pub fn unavailable(&self) -> String {
        self.shared.unavailable()
    }
}
