//! When an upstream writer stops gathering and writes.

use std::time::Duration;

use tokio::time::Instant;

/// Waits at or above this use the tokio timer; shorter ones (its granularity is 1 ms)
/// yield to the scheduler in a loop instead.
const TIMER_FLOOR: Duration = Duration::from_millis(2);

/// Limits and timing of one pipeline write.
#[derive(Debug, Clone)]
pub struct FlushPolicy {
    /// Zero: write as soon as the writer is free; batches still form from whatever
    /// queued up while the previous write was in progress. Above zero: after the first
    /// command, gather for up to this long.
    pub window: Duration,
    /// Most commands in one write.
    pub max_commands: usize,
    /// Most bytes in one write (a single larger run still goes, alone).
    pub max_bytes: usize,
}

impl FlushPolicy {
    /// Lets other tasks run (and enqueue) for a moment; false once `deadline` passed.
    ///
    /// Sub-millisecond windows cannot use the tokio timer, so the writer yields to the
    /// scheduler and re-checks the clock: the sessions on this worker run in between, and
    /// those on other workers enqueue concurrently. It costs CPU while it waits, which is
    /// why the default window is 0.
    pub(crate) async fn wait_a_little(&self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if deadline - now >= TIMER_FLOOR {
            tokio::time::sleep_until(deadline - TIMER_FLOOR / 2).await;
        } else {
            tokio::task::yield_now().await;
        }
        true
    }
}
