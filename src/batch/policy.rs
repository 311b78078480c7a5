//! When an upstream writer stops gathering and writes.

use std::time::Duration;

/// Limits and timing of one pipeline write.
#[derive(Debug, Clone)]
pub struct FlushPolicy {
    /// Zero: write as soon as the writer is free; batches still form from whatever
    /// queued up while the previous write was in progress. Above zero: after the first
    /// command, gather for up to this long (the writer sleeps on a precise timer: a window
    /// adds latency, not CPU).
    pub window: Duration,
    /// Most commands in one write.
    pub max_commands: usize,
    /// Most bytes in one write (a single larger run still goes, alone).
    pub max_bytes: usize,
}
