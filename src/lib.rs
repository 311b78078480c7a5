//! respipe: a sidecar Redis proxy that gives unmodified clients automatic pipelining.
//!
//! Data flows one way through the modules:
//! `client` (listeners, sessions) → `upstream::Router` → `batch` (queue, flush policy) →
//! `upstream` (multiplexed connections) → Redis, and replies come back through
//! `batch::ReplySlot`s to the session that sent the command. `resp` frames both
//! directions without decoding; `config` and `admin` sit beside the data path.

pub mod admin;
pub mod batch;
pub mod client;
pub mod config;
pub mod latch;
pub mod resp;
pub mod server;
pub mod upstream;
