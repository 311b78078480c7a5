//! The client side: listeners, and one session per client connection.

pub mod auth;
mod context;
pub mod listener;
mod modes;
pub mod session;
mod writer;

pub use listener::{BoundAddr, ListenAddr};
pub use session::SessionLimits;
