//! The task-claim workload of the original pipelining study: W workers share a client-side
//! connection pool of P connections, go-redis style (a command checks a connection out,
//! does one round trip, checks it back in). Each worker claims a task with `HGET task:N
//! data`, then `HSET task:N status claimed`: one command per round trip.
//!
//! Latency is measured per command from the moment the worker wanted to send it, so time
//! spent waiting for a pooled connection counts. Two modes:
//! - closed loop: every worker starts its next task as soon as the last one is done; gives
//!   the throughput the setup can reach;
//! - open loop at a fixed offered rate: each worker follows a schedule, and a task's HGET is
//!   timed from when the schedule said to start it, not from when a late worker got round to
//!   it. That removes coordinated omission: a stall shows up in every task it delayed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use respipe::resp::reply::ReplyScanner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use respipe::batch::PreciseTimer;

/// Number of `task:N` hashes the workers pick from.
pub const TASKS: u64 = 10_000;

/// One load run.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub workers: usize,
    pub pool: usize,
    pub duration: Duration,
    /// Offered tasks per second for the open loop; `None` for the closed loop.
    pub rate: Option<f64>,
}

/// What one run measured: commands done, errors, and per-command latency in µs.
pub struct Outcome {
    pub commands: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl Outcome {
    pub fn ops(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64()
    }
    /// Latency at quantile `q`, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// One pooled connection: a socket and a read buffer the reply is framed in.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one command and reads its reply; returns whether the reply was an error.
    async fn round_trip(&mut self, cmd: &[u8]) -> std::io::Result<bool> {
        self.stream.write_all(cmd).await?;
        self.buf.clear();
        let mut scanner = ReplyScanner::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            match scanner.scan(&self.buf) {
                Ok(Some(len)) if len == self.buf.len() => return Ok(self.buf[0] == b'-'),
                Ok(Some(_)) => return Err(std::io::Error::other("more than one reply")),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
    }
}

/// A go-redis-like pool: at most `size` connections, each used by one command at a time.
struct Pool {
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
}

impl Pool {
    async fn round_trip(&self, cmd: &[u8]) -> std::io::Result<bool> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(std::io::Error::other)?;
        let taken = self
            .idle
            .lock()
            .map_err(|_| std::io::Error::other("pool poisoned"))?
            .pop();
        let Some(mut conn) = taken else {
            return Err(std::io::Error::other("pool empty under a permit"));
        };
        let result = conn.round_trip(cmd).await;
        if result.is_ok() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(conn);
            }
        }
        result
    }
}

fn command(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Creates the task hashes the workload reads (directly on Redis, before any run).
pub async fn populate(port: u16) -> std::io::Result<()> {
    let mut conn = Conn::open(port).await?;
    let mut batch = Vec::new();
    for n in 0..TASKS {
        let key = format!("task:{n}");
        batch.extend(command(&[
            b"HSET",
            key.as_bytes(),
            b"data",
            b"payload-0123456789",
            b"status",
            b"new",
        ]));
        if n % 500 == 499 || n + 1 == TASKS {
            conn.stream.write_all(&batch).await?;
            batch.clear();
            // Read the 500 integer replies.
            let mut got = 0;
            let mut scanner = ReplyScanner::new();
            conn.buf.clear();
            let want = if n % 500 == 499 { 500 } else { (n % 500) + 1 };
            while got < want {
                let mut chunk = [0u8; 8192];
                let r = conn.stream.read(&mut chunk).await?;
                if r == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                conn.buf.extend_from_slice(&chunk[..r]);
                while let Ok(Some(len)) = scanner.scan(&conn.buf) {
                    conn.buf.drain(..len);
                    scanner = ReplyScanner::new();
                    got += 1;
                }
            }
        }
    }
    Ok(())
}

/// Runs the workload against `port` and returns what it measured.
pub async fn run(port: u16, load: Load) -> std::io::Result<Outcome> {
    let mut conns = Vec::with_capacity(load.pool);
    for _ in 0..load.pool {
        conns.push(Conn::open(port).await?);
    }
    let pool = Arc::new(Pool {
        idle: Mutex::new(conns),
        permits: Semaphore::new(load.pool),
    });
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + load.duration;
    let mut handles = Vec::with_capacity(load.workers);
    for w in 0..load.workers {
        let pool = pool.clone();
        handles.push(tokio::spawn(worker(w, pool, load, start, end)));
    }
    let mut total = Outcome {
        commands: 0,
        errors: 0,
        elapsed: load.duration,
        hist: new_hist(),
    };
    for h in handles {
        let part = h.await.map_err(std::io::Error::other)??;
        total.commands += part.commands;
        total.errors += part.errors;
        total.hist.add(&part.hist).map_err(std::io::Error::other)?;
    }
    // Commands still in flight at `end` finish after it: count the time they took too.
    total.elapsed = start.elapsed();
    Ok(total)
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

async fn worker(
    w: usize,
    pool: Arc<Pool>,
    load: Load,
    start: Instant,
    end: Instant,
) -> std::io::Result<Outcome> {
    let mut out = Outcome {
        commands: 0,
        errors: 0,
        elapsed: load.duration,
        hist: new_hist(),
    };
    // Each worker offers rate/workers tasks per second, staggered so they do not all fire at once.
    let interval = load
        .rate
        .map(|r| Duration::from_secs_f64(load.workers as f64 / r.max(1e-3)));
    let mut next = start
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(w as f64 / load.workers as f64)
        });
    let mut task = (w as u64 * 7919) % TASKS;
    let mut timer = PreciseTimer::new()?;
    timer.sleep_until(next).await?;
    while Instant::now() < end {
        let key = format!("task:{task}");
        let hget = command(&[b"HGET", key.as_bytes(), b"data"]);
        let hset = command(&[b"HSET", key.as_bytes(), b"status", b"claimed"]);
        // Closed loop: timed from now. Open loop: from when the schedule said to start.
        let intended = if interval.is_some() {
            next
        } else {
            Instant::now()
        };
        let e1 = pool.round_trip(&hget).await?;
        let t1 = Instant::now();
        record(&mut out, intended, t1, e1);
        let e2 = pool.round_trip(&hset).await?;
        record(&mut out, t1, Instant::now(), e2);
        task = (task + load.workers as u64) % TASKS;
        if let Some(i) = interval {
            next += i;
            if next >= end {
                break;
            }
            timer.sleep_until(next).await?;
        }
    }
    Ok(out)
}

fn record(out: &mut Outcome, from: Instant, to: Instant, error: bool) {
    out.commands += 1;
    if error {
        out.errors += 1;
    }
    let us = to.saturating_duration_since(from).as_micros().max(1) as u64;
    out.hist.saturating_record(us);
}
