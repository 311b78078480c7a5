//! A latency-injecting TCP relay: puts a simulated network distance between two local
//! processes. Every chunk read on one side is written to the other half the round-trip time
//! later, so a request/reply pair pays the whole added RTT once, however many commands it
//! carries (a pipeline pays it once, as on a real network).
//!
//! tokio's timer wheel has a 1 ms resolution, too coarse for a 0.2 ms RTT, so deadlines are
//! kept by respipe's own [`PreciseTimer`] (the one its batch window uses), a timerfd polled by
//! tokio on the task's own thread: no helper thread and no cross-thread wake-up per chunk.

use std::time::{Duration, Instant};

use respipe::batch::PreciseTimer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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
        let Ok(mut timer) = PreciseTimer::new() else {
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
