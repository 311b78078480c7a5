//! Between sessions and upstream writers: the queue of command runs, the flush policy
//! that cuts it into pipeline writes, and the reply slots that route answers back.

pub mod policy;
pub mod queue;
pub mod slot;
pub mod timer;
pub mod write;

pub use policy::FlushPolicy;
pub use queue::{BatchQueue, BatchSender, QueuedCommands};
pub use slot::{ReplyChunk, ReplySink, ReplySlot};
pub use timer::PreciseTimer;
pub use write::WriteBuffer;
