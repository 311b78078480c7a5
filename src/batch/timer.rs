//! A sub-millisecond one-shot timer, for batch windows measured in microseconds.
//!
//! tokio's timer wheel has a 1 ms granularity, so a 50 µs window would last a millisecond,
//! and yielding in a loop until the deadline spins a core for the whole window (one
//! `epoll_wait` per turn) — on a sidecar, CPU taken from the application. On Linux a
//! `timerfd` (an hrtimer, nanosecond resolution, no timer slack) registered with tokio's
//! reactor wakes the task once, at the deadline, from the same `epoll_wait` as its sockets.

use std::io;
use std::time::Instant;

#[cfg(target_os = "linux")]
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[cfg(target_os = "linux")]
use tokio::io::unix::AsyncFd;

/// A re-armable one-shot timer owned by one task. Must be created inside a tokio runtime
/// with I/O enabled.
#[derive(Debug)]
pub struct PreciseTimer {
    #[cfg(target_os = "linux")]
    fd: AsyncFd<OwnedFd>,
    #[cfg(not(target_os = "linux"))]
    deadline: Option<Instant>,
}

#[cfg(target_os = "linux")]
impl PreciseTimer {
    /// A timer on CLOCK_MONOTONIC, the clock [`Instant`] reads.
    pub fn new() -> io::Result<PreciseTimer> {
        // SAFETY: timerfd_create has no memory preconditions; the fd is owned below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd stays open, and is the same descriptor, for the AsyncFd's life.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
                .map_err(io::Error::from)?
        };
        Ok(PreciseTimer { fd })
    }

    /// Sets the timer to fire at `deadline`, replacing any earlier setting (and its
    /// expirations not yet read). False, and nothing set, if the deadline has passed.
    pub fn arm(&mut self, deadline: Instant) -> io::Result<bool> {
        let now = Instant::now();
        if deadline <= now {
            return Ok(false);
        }
        let d = deadline - now;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid descriptor and a local itimerspec: a relative one-shot expiry.
        let r = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                0,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }

    /// Resolves once the armed timer fires. Cancel-safe: the expiry is consumed only when
    /// this returns. Waits forever if the timer is not armed.
    pub async fn fired(&mut self) -> io::Result<()> {
        let fd = self.fd.get_ref().as_raw_fd();
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a local buffer of 8.
            let n = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            // Readiness left over from an expiry already consumed or replaced: wait again.
            ready.clear_ready();
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl PreciseTimer {
    /// Elsewhere, tokio's timer (1 ms granularity).
    pub fn new() -> io::Result<PreciseTimer> {
        Ok(PreciseTimer { deadline: None })
    }

    /// Sets the deadline `fired` waits for; false if it has passed.
    pub fn arm(&mut self, deadline: Instant) -> io::Result<bool> {
        self.deadline = Some(deadline);
        Ok(deadline > Instant::now())
    }

    /// Resolves at the armed deadline.
    pub async fn fired(&mut self) -> io::Result<()> {
        match self.deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
        Ok(())
    }
}

impl PreciseTimer {
    /// Resolves at `deadline` (at once if it has passed).
    pub async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
        if self.arm(deadline)? {
            self.fired().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fires_at_sub_millisecond_deadlines() {
        let mut t = PreciseTimer::new().unwrap();
        for us in [50u64, 200, 700] {
            let start = Instant::now();
            t.sleep_until(start + Duration::from_micros(us))
                .await
                .unwrap();
            let took = start.elapsed();
            assert!(took >= Duration::from_micros(us), "{us} µs took {took:?}");
        }
        // A deadline in the past resolves at once.
        t.sleep_until(Instant::now() - Duration::from_millis(1))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn survives_a_cancelled_wait() {
        let mut t = PreciseTimer::new().unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let _ = tokio::time::timeout(Duration::from_millis(2), t.sleep_until(far)).await;
        // Re-armed for a near deadline: the far one no longer matters.
        let start = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(5),
            t.sleep_until(start + Duration::from_micros(100)),
        )
        .await
        .unwrap()
        .unwrap();
    }
}
