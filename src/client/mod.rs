//! The client side: listeners, and one session per client connection.

pub mod listener;
pub mod session;

pub use listener::{BoundAddr, ListenAddr};
pub use session::SessionLimits;
