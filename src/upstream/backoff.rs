//! Reconnect delays: exponential, capped, with jitter so that many proxies restarting
//! together do not knock on Redis in lockstep.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Exponential backoff with ±25% jitter.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: RandomState,
    n: u64,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
            seed: RandomState::new(),
            n: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        self.n += 1;
        let mut h = self.seed.build_hasher();
        h.write_u64(self.n);
        // A factor in [0.75, 1.25).
        let f = 0.75 + (h.finish() % 1000) as f64 / 2000.0;
        base.mul_f64(f)
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert!((75..125).contains(&d[0]), "{d:?}");
        assert!((150..250).contains(&d[1]), "{d:?}");
        assert!((750..1250).contains(&d[5]), "{d:?}");
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(125));
    }
}
