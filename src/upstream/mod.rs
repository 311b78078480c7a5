//! Everything between the router and Redis: the router, the per-database sets of
//! multiplexed connections, and connecting to Redis.

pub mod address;
pub mod backoff;
pub mod connect;
pub mod dedicated;
pub mod mux;
pub mod pool;
pub mod reader;
pub mod router;
pub mod stream;

pub use address::UpstreamAddr;
pub use dedicated::Lease;
pub use mux::UpstreamMux;
pub use pool::UpstreamShared;
pub use router::{Router, SessionRoute};

use crate::resp::reply::ReplyError;

/// Why an upstream connection could not be made or was lost. None of these carry
/// credentials.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("{step} refused: {msg}")]
    Handshake { step: &'static str, msg: String },
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Protocol(ReplyError),
    #[error("upstream sent a reply nobody asked for")]
    Unsolicited,
    #[error("connection closed by upstream")]
    Closed,
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("a command got no reply within the upstream timeout")]
    CommandTimeout,
}
