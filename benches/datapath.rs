//! Micro-benchmarks of respipe's hot path: framing client commands, splitting upstream
//! replies, and assembling pipeline writes. Results and how to read them: docs/benchmarks.md.
//!
//! Run with `cargo bench --bench datapath` (about two minutes). Every group reports bytes/s
//! of RESP input (or of command bytes, for the batching groups).
//!
//! The `decode_range` cases run `redis_protocol::resp2::decode::decode_range` on the same
//! input: it is the general-purpose parser the project already depends on, and it is what the
//! own scanners replace on the data path. It builds a `Vec<RangeFrame>` per array and, given
//! an incomplete frame, can only be called again from the frame's start.

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use redis_protocol::resp2::decode::decode_range;
use respipe::batch::{BatchQueue, FlushPolicy, QueuedCommands, ReplySink, ReplySlot, WriteBuffer};
use respipe::resp::reply::ReplyScanner;
use respipe::resp::request::{Request, RequestScanner};

/// Commands in the client-side mix.
const MIX_COMMANDS: usize = 10_000;
/// Replies in the upstream-side mix.
const MIX_REPLIES: usize = 10_000;
/// Elements of the large array reply fed in increments.
const BIG_ARRAY: usize = 100_000;
/// Size of each read of the large array reply (the proxy's upstream read chunk).
const READ_STEP: usize = 64 * 1024;
/// Runs per batch in the batching groups.
const RUNS: usize = 64;
/// Sessions the demultiplexing group's runs belong to.
const SESSIONS: usize = 16;

/// Small deterministic generator, so every run benchmarks the same bytes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Appends `args` as a RESP array of bulk strings, as a client library sends a command.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    write!(out, "*{}\r\n", args.len()).unwrap();
    for a in args {
        write!(out, "${}\r\n", a.len()).unwrap();
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn filler(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i as u64 + seed) % 26) as u8)
        .collect()
}

/// `n` commands back to back: 35% GET, 30% SET of an 8-64 byte value, 15% INCR,
/// 15% HSET, 5% SET of a 1 KiB value.
fn command_mix(n: usize) -> Vec<u8> {
    let mut rng = Lcg(1);
    let mut out = Vec::new();
    let big = filler(1024, 7);
    for _ in 0..n {
        let key = format!("key:{:06}", rng.below(1_000_000));
        match rng.below(100) {
            0..=34 => command(&mut out, &[b"GET", key.as_bytes()]),
            35..=64 => {
                let v = filler(8 + rng.below(57) as usize, rng.next());
                command(&mut out, &[b"SET", key.as_bytes(), &v]);
            }
            65..=79 => {
                let k = format!("counter:{}", rng.below(100));
                command(&mut out, &[b"INCR", k.as_bytes()]);
            }
            80..=94 => {
                let k = format!("user:{}", rng.below(10_000));
                let f = format!("field{}", rng.below(20));
                command(
                    &mut out,
                    &[b"HSET", k.as_bytes(), f.as_bytes(), &filler(16, 3)],
                );
            }
            _ => command(&mut out, &[b"SET", key.as_bytes(), &big]),
        }
    }
    out
}

/// `n` replies back to back: 30% +OK, 20% integers, 25% 10-byte bulks, 5% 1 KiB bulks,
/// 5% nulls, 15% arrays of 1-10 small elements.
fn reply_mix(n: usize) -> Vec<u8> {
    let mut rng = Lcg(2);
    let mut out = Vec::new();
    let small = filler(10, 1);
    let big = filler(1024, 2);
    let bulk = |out: &mut Vec<u8>, v: &[u8]| {
        write!(out, "${}\r\n", v.len()).unwrap();
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    };
    for _ in 0..n {
        match rng.below(100) {
            0..=29 => out.extend_from_slice(b"+OK\r\n"),
            30..=49 => write!(out, ":{}\r\n", rng.below(100_000)).unwrap(),
            50..=74 => bulk(&mut out, &small),
            75..=79 => bulk(&mut out, &big),
            80..=84 => out.extend_from_slice(b"$-1\r\n"),
            _ => {
                let k = 1 + rng.below(10);
                write!(out, "*{k}\r\n").unwrap();
                for _ in 0..k {
                    if rng.below(2) == 0 {
                        bulk(&mut out, &small);
                    } else {
                        write!(out, ":{}\r\n", rng.below(1000)).unwrap();
                    }
                }
            }
        }
    }
    out
}

/// An `LRANGE`-style reply: an array of `n` bulk strings of 16 bytes.
fn big_array(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    write!(out, "*{n}\r\n").unwrap();
    for i in 0..n {
        write!(out, "$16\r\nelement:{i:08}\r\n").unwrap();
    }
    out
}

/// Frames every command in `buf` with the proxy's scanner; returns the count.
fn frame_requests_own(buf: &[u8]) -> usize {
    let mut scanner = RequestScanner::new();
    let (mut at, mut n) = (0, 0);
    while at < buf.len() {
        match scanner.scan(&buf[at..]) {
            Ok(Some(Request::Multibulk { len, name, argc })) => {
                black_box((&name, argc));
                at += len;
                n += 1;
            }
            other => panic!("unexpected scan result at {at}: {other:?}"),
        }
    }
    n
}

/// Frames every frame in `buf` with `decode_range`; returns the count.
fn frame_decode_range(buf: &[u8]) -> usize {
    let (mut at, mut n) = (0, 0);
    while at < buf.len() {
        match decode_range(&buf[at..]) {
            Ok(Some((frame, len))) => {
                black_box(&frame);
                at += len;
                n += 1;
            }
            other => panic!("unexpected decode result at {at}: {other:?}"),
        }
    }
    n
}

/// Splits every reply in `buf` with the proxy's scanner; returns the count.
fn split_replies_own(buf: &[u8]) -> usize {
    let mut scanner = ReplyScanner::new();
    let (mut at, mut n) = (0, 0);
    while at < buf.len() {
        match scanner.scan(&buf[at..]) {
            Ok(Some(len)) => {
                at += len;
                n += 1;
            }
            other => panic!("unexpected scan result at {at}: {other:?}"),
        }
    }
    n
}

/// Feeds one reply `READ_STEP` bytes at a time to a resumable `ReplyScanner`, as the
/// upstream reader does; returns how many calls it took.
fn incremental_own(buf: &[u8]) -> usize {
    let mut scanner = ReplyScanner::new();
    let mut end = 0;
    let mut calls = 0;
    loop {
        end = (end + READ_STEP).min(buf.len());
        calls += 1;
        if let Some(len) = scanner.scan(&buf[..end]).unwrap() {
            assert_eq!(len, buf.len());
            return calls;
        }
    }
}

/// The same with `decode_range`, which can only start over on each new read.
fn incremental_decode_range(buf: &[u8]) -> usize {
    let mut end = 0;
    let mut calls = 0;
    loop {
        end = (end + READ_STEP).min(buf.len());
        calls += 1;
        if let Some((frame, len)) = decode_range(&buf[..end]).unwrap() {
            black_box(&frame);
            assert_eq!(len, buf.len());
            return calls;
        }
    }
}

fn request_framing(c: &mut Criterion) {
    let mix = command_mix(MIX_COMMANDS);
    assert_eq!(frame_requests_own(&mix), MIX_COMMANDS);
    assert_eq!(frame_decode_range(&mix), MIX_COMMANDS);

    let mut group = c.benchmark_group("request_framing/mix_10k_commands");
    group.throughput(Throughput::Bytes(mix.len() as u64));
    group.bench_function("RequestScanner", |b| {
        b.iter(|| frame_requests_own(black_box(&mix)))
    });
    group.bench_function("decode_range", |b| {
        b.iter(|| frame_decode_range(black_box(&mix)))
    });
    group.finish();

    let mut huge = Vec::new();
    command(&mut huge, &[b"SET", b"key:big", &filler(1 << 20, 5)]);
    assert_eq!(frame_requests_own(&huge), 1);
    assert_eq!(frame_decode_range(&huge), 1);
    let mut group = c.benchmark_group("request_framing/set_1MiB_value");
    group.throughput(Throughput::Bytes(huge.len() as u64));
    group.bench_function("RequestScanner", |b| {
        b.iter(|| frame_requests_own(black_box(&huge)))
    });
    group.bench_function("decode_range", |b| {
        b.iter(|| frame_decode_range(black_box(&huge)))
    });
    group.finish();
}

fn reply_splitting(c: &mut Criterion) {
    let mix = reply_mix(MIX_REPLIES);
    assert_eq!(split_replies_own(&mix), MIX_REPLIES);
    assert_eq!(frame_decode_range(&mix), MIX_REPLIES);

    let mut group = c.benchmark_group("reply_splitting/mix_10k_replies");
    group.throughput(Throughput::Bytes(mix.len() as u64));
    group.bench_function("ReplyScanner", |b| {
        b.iter(|| split_replies_own(black_box(&mix)))
    });
    group.bench_function("decode_range", |b| {
        b.iter(|| frame_decode_range(black_box(&mix)))
    });
    group.finish();

    let array = big_array(BIG_ARRAY);
    let calls = incremental_own(&array);
    assert_eq!(calls, incremental_decode_range(&array));
    eprintln!(
        "array_100k_64KiB_reads: {} bytes, {calls} reads of {READ_STEP} bytes",
        array.len()
    );
    let mut group = c.benchmark_group("reply_splitting/array_100k_64KiB_reads");
    group.throughput(Throughput::Bytes(array.len() as u64));
    // decode_range takes tens of milliseconds per iteration here: equal-sized samples
    // keep the group within its time budget.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("ReplyScanner (resumes)", |b| {
        b.iter(|| incremental_own(black_box(&array)))
    });
    group.bench_function("decode_range (restarts)", |b| {
        b.iter(|| incremental_decode_range(black_box(&array)))
    });
    group.finish();
}

/// 64 runs of 1-4 small commands each, as sessions submit them.
fn small_runs() -> Vec<(Bytes, u64)> {
    let mut rng = Lcg(3);
    (0..RUNS)
        .map(|_| {
            let n = 1 + rng.below(4);
            let mut out = Vec::new();
            for _ in 0..n {
                let key = format!("key:{:06}", rng.below(1_000_000));
                if rng.below(2) == 0 {
                    command(&mut out, &[b"GET", key.as_bytes()]);
                } else {
                    command(&mut out, &[b"SET", key.as_bytes(), &filler(32, rng.next())]);
                }
            }
            (Bytes::from(out), n)
        })
        .collect()
}

fn batching(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runs = small_runs();
    let run_bytes: usize = runs.iter().map(|(b, _)| b.len()).sum();

    let mut group = c.benchmark_group("batching/64_small_runs");
    group.throughput(Throughput::Bytes(run_bytes as u64));

    group.bench_function("WriteBuffer put+flush to sink", |b| {
        let mut out = WriteBuffer::new();
        let mut sink = tokio::io::sink();
        b.iter(|| {
            rt.block_on(async {
                for (bytes, _) in &runs {
                    out.put(&mut sink, black_box(bytes)).await.unwrap();
                }
                out.flush(&mut sink).await.unwrap();
            })
        })
    });

    group.bench_function("BatchQueue::next_batch", |b| {
        let (reply_sink, mut replies) =
            ReplySink::new(usize::MAX, 0, respipe::admin::Metrics::new(false));
        let (tx, mut queue) = BatchQueue::new();
        let policy = FlushPolicy {
            window: Duration::ZERO,
            max_commands: 1024,
            max_bytes: 1 << 20,
        };
        let mut batch: Vec<QueuedCommands> = Vec::with_capacity(RUNS);
        let ok = Bytes::from_static(b"+OK\r\n");
        let mut seq = 0;
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                // Untimed: sessions submitting their runs.
                for (bytes, n) in &runs {
                    let slot = ReplySlot::new(Arc::clone(&reply_sink), seq, *n);
                    seq += n;
                    tx.send(QueuedCommands {
                        bytes: bytes.clone(),
                        slot,
                        hops: 0,
                    })
                    .unwrap();
                }
                let start = Instant::now();
                let more = rt.block_on(queue.next_batch(&policy, &mut batch));
                spent += start.elapsed();
                assert!(more);
                assert_eq!(batch.len(), RUNS);
                // Untimed: answer every slot and let the session side take the replies,
                // so nothing accumulates across iterations.
                for q in batch.drain(..) {
                    let mut slot = q.slot;
                    let n = slot.remaining();
                    slot.complete(n, ok.clone());
                }
                while replies.try_recv().is_ok() {}
            }
            spent
        })
    });
    group.finish();
}

/// The replies Redis sends for `small_runs()`: `+OK` for a SET, a 32-byte bulk for a GET.
fn replies_for(runs: &[(Bytes, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (bytes, _) in runs {
        let mut rest = &bytes[..];
        let mut scanner = RequestScanner::new();
        while let Ok(Some(Request::Multibulk { len, name, .. })) = scanner.scan(rest) {
            if &rest[name] == b"SET" {
                out.extend_from_slice(b"+OK\r\n");
            } else {
                out.extend_from_slice(b"$32\r\n");
                out.extend_from_slice(&filler(32, len as u64));
                out.extend_from_slice(b"\r\n");
            }
            rest = &rest[len..];
        }
    }
    out
}

/// What the shared upstream reader does with one read holding a whole batch's replies: split
/// it per run with `ReplyScanner` and hand each run's bytes to its session's slot.
fn demultiplexing(c: &mut Criterion) {
    let runs = small_runs();
    let replies = replies_for(&runs);
    let mut group = c.benchmark_group("demultiplexing/64_runs_16_sessions");
    group.throughput(Throughput::Bytes(replies.len() as u64));
    group.bench_function("ReplyScanner split + ReplySlot::complete", |b| {
        let mut sessions: Vec<_> = (0..SESSIONS)
            .map(|_| ReplySink::new(usize::MAX, 0, respipe::admin::Metrics::new(false)))
            .collect();
        let mut seqs = [0u64; SESSIONS];
        let mut slots = Vec::with_capacity(RUNS);
        let mut scanner = ReplyScanner::new();
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                // Untimed: the slots the writer queued, and the read that filled the buffer.
                for (i, (_, n)) in runs.iter().enumerate() {
                    let s = i % SESSIONS;
                    slots.push(ReplySlot::new(Arc::clone(&sessions[s].0), seqs[s], *n));
                    seqs[s] += n;
                }
                let mut buf = bytes::BytesMut::from(&replies[..]);
                let start = Instant::now();
                for slot in slots.iter_mut() {
                    let (mut scanned, n) = (0, slot.remaining());
                    for _ in 0..n {
                        match scanner.scan(&buf[scanned..]) {
                            Ok(Some(len)) => scanned += len,
                            other => panic!("reply mix does not scan: {other:?}"),
                        }
                    }
                    slot.complete(n, buf.split_to(scanned).freeze());
                }
                spent += start.elapsed();
                assert!(buf.is_empty());
                slots.clear();
                // Untimed: the sessions take their replies.
                for (_, rx) in sessions.iter_mut() {
                    while rx.try_recv().is_ok() {}
                }
            }
            spent
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(25)
}

criterion_group! {
    name = datapath;
    config = config();
    targets = request_framing, reply_splitting, batching, demultiplexing
}
criterion_main!(datapath);
