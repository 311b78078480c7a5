//! A latency-injecting TCP relay: puts a simulated network distance between two local
//! processes. Every chunk read on one side is written to the other half the round-trip time
//! later, so a request/reply pair pays the whole added RTT once, however many commands it
//! carries (a pipeline pays it once, as on a real network).
//!
//! tokio's timer wheel has a 1 ms resolution, too coarse for a 0.2 ms RTT, so deadlines are
//! kept by [`PreciseTimer`], one OS thread waiting with a 1 µs timer slack.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Wakes futures at sub-millisecond deadlines, in deadline order.
#[derive(Clone)]
pub struct PreciseTimer {
    tx: std_mpsc::Sender<(Instant, oneshot::Sender<()>)>,
}

/// A pending deadline; ordered by (deadline, arrival) so equal deadlines fire in order.
struct Pending {
    deadline: Instant,
    seq: u64,
    fire: oneshot::Sender<()>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest deadline must come out first.
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

impl PreciseTimer {
    pub fn new() -> Self {
        let (tx, rx) = std_mpsc::channel::<(Instant, oneshot::Sender<()>)>();
        std::thread::Builder::new()
            .name("precise-timer".into())
            .spawn(move || {
                // The default 50 µs slack would be a quarter of a 0.2 ms RTT.
                // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
                unsafe {
                    libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
                }
                let mut heap = std::collections::BinaryHeap::<Pending>::new();
                let mut seq = 0u64;
                loop {
                    let now = Instant::now();
                    while heap.peek().is_some_and(|p| p.deadline <= now) {
                        if let Some(p) = heap.pop() {
                            let _ = p.fire.send(());
                        }
                    }
                    let received = match heap.peek() {
                        None => rx
                            .recv()
                            .map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
                        Some(p) => rx.recv_timeout(p.deadline.saturating_duration_since(now)),
                    };
                    match received {
                        Ok((deadline, fire)) => {
                            seq += 1;
                            heap.push(Pending {
                                deadline,
                                seq,
                                fire,
                            });
                        }
                        Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| panic!("cannot start the timer thread: {e}"));
        PreciseTimer { tx }
    }

    /// Resolves at `deadline` (or at once if the timer thread is gone).
    pub async fn sleep_until(&self, deadline: Instant) {
        if deadline <= Instant::now() {
            return;
        }
        let (fire, wait) = oneshot::channel();
        if self.tx.send((deadline, fire)).is_ok() {
            let _ = wait.await;
        }
    }

    fn schedule(&self, deadline: Instant) -> oneshot::Receiver<()> {
        let (fire, wait) = oneshot::channel();
        let _ = self.tx.send((deadline, fire));
        wait
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
        let timer = PreciseTimer::new();
        let one_way = rtt / 2;
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let timer = timer.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, one_way, timer.clone()));
                    tokio::spawn(pump(sr, cw, one_way, timer));
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
    timer: PreciseTimer,
) {
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, oneshot::Receiver<()>)>(256);
    let writer = tokio::spawn(async move {
        while let Some((chunk, due)) = rx.recv().await {
            let _ = due.await;
            if to.write_all(&chunk).await.is_err() {
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
        let due = timer.schedule(Instant::now() + delay);
        if tx.send((buf[..n].to_vec(), due)).await.is_err() {
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
