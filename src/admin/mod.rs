//! Operator-facing parts beside the data path: metrics (recorded by the data path through
//! pre-registered handles), the HTTP endpoint for Prometheus and health probes, and the
//! INFO-style text behind `RESPIPE INFO`.

pub mod http;
pub mod info;
pub mod metrics;

pub use self::metrics::{ErrorKind, Metrics};
