//! A latency-injecting TCP relay: puts a simulated network distance between two local
//! processes. Every chunk read on one side is written to the other half the round-trip time
//! later, so a request/reply pair pays the whole added RTT once, however many commands it
//! carries (a pipeline pays it once, as on a real network).
//!
//! tokio's timer wheel has a 1 ms resolution, too coarse for a 0.2 ms RTT, so deadlines are
//! kept by [`DelayTimer`], a timerfd (nanosecond hrtimer, no timer slack) polled by tokio on
//! the task's own thread: no helper thread and no cross-thread wake-up per chunk.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A one-shot, re-armable sub-millisecond timer for one task.
pub struct DelayTimer {
    fd: AsyncFd<OwnedFd>,
}

impl DelayTimer {
    /// A timer on CLOCK_MONOTONIC, the clock `Instant` reads.
    pub fn new() -> std::io::Result<DelayTimer> {
        // SAFETY: timerfd_create has no memory preconditions; the fd is owned below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd stays open, and is the same descriptor, for the AsyncFd's life.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
                .map_err(std::io::Error::from)?
        };
        Ok(DelayTimer { fd })
    }

    /// Resolves at `deadline` (at once if it has passed).
    pub async fn sleep_until(&mut self, deadline: Instant) -> std::io::Result<()> {
        let now = Instant::now();
        if deadline <= now {
            return Ok(());
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
        let fd = self.fd.get_ref().as_raw_fd();
        // SAFETY: valid fd and a local itimerspec; a relative, one-shot expiry.
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads 8 bytes into a local buffer of 8.
            let n = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            ready.clear_ready();
        }
    }
}

/// A running relay: listens on `port`, forwards to `upstream` with `rtt` added.
pub struct DelayRelay {
    pub port: u16,
}

impl DelayRelay {
    /// Starts the relay on `rt`; it runs until the runtime is dropped.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        upstream: u16,
        rtt: Duration,
    ) -> std::io::Result<DelayRelay> {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let one_way = rtt / 2;
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, one_way));
                    tokio::spawn(pump(sr, cw, one_way));
                });
            }
        });
        Ok(DelayRelay { port })
    }
}

/// Copies `from` to `to`, each chunk released `delay` after it was read. A bounded queue
/// between the reading and the writing half keeps memory bounded when the far side is slow.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, Instant)>(256);
    let writer = tokio::spawn(async move {
        let Ok(mut timer) = DelayTimer::new() else {
            return;
        };
        while let Some((chunk, due)) = rx.recv().await {
            if timer.sleep_until(due).await.is_err() || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if tx
            .send((buf[..n].to_vec(), Instant::now() + delay))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Measured round trip of a PING through `port` (median of `n`), to report the distance the
/// relay really added rather than the one it was asked for.
pub fn measure_rtt(port: u16, n: usize) -> std::io::Result<Duration> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut samples = Vec::with_capacity(n);
    let mut buf = [0u8; 7];
    for _ in 0..n {
        let t0 = Instant::now();
        s.write_all(crate::procs::PING)?;
        s.read_exact(&mut buf)?;
        samples.push(t0.elapsed());
    }
    samples.sort();
    Ok(samples[samples.len() / 2])
}
