//! Faults: the upstream dying and coming back under load, bad input from one client,
//! commands the proxy must refuse rather than corrupt a shared connection with.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Proxy, RawConn, RedisServer};
use redis::AsyncCommands;
use tokio::time::Instant;

/// Sends `n` pipelined `ECHO <tag>-<i>` and reads `n` replies: each must be its own echo,
/// in order, or an upstream error. Returns (ok, errors).
async fn echo_burst(raw: &mut RawConn, tag: &str, start: u32, n: u32) -> (u32, u32) {
    let mut out = Vec::new();
    for i in start..start + n {
        let p = format!("{tag}-{i}");
        out.extend_from_slice(format!("*2\r\n$4\r\nECHO\r\n${}\r\n{p}\r\n", p.len()).as_bytes());
    }
    raw.send(&out).await;
    let (mut ok, mut err) = (0, 0);
    for i in start..start + n {
        let p = format!("{tag}-{i}");
        let reply = raw.reply_text().await;
        if reply == format!("${}\r\n{p}\r\n", p.len()) {
            ok += 1;
        } else {
            assert!(
                reply == "-ERR upstream connection lost\r\n"
                    || reply.starts_with("-ERR upstream 127.0.0.1:"),
                "reply to {p} was neither its echo nor an upstream error: {reply:?}"
            );
            err += 1;
        }
    }
    (ok, err)
}

/// Redis is killed and restarted while 20 clients pipeline: every command gets exactly
/// one reply, in order (its own echo, or an error while Redis is down), and service
/// resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_and_restarted_under_load() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let restarted = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..20 {
        let mut raw = proxy.raw().await;
        let restarted = restarted.clone();
        clients.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let (mut ok, mut err, mut i) = (0, 0, 0);
            // Phase 1: until the restart is done, keep the load on.
            while !restarted.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (o, e) = echo_burst(&mut raw, &format!("c{c}"), i, 50).await;
                (ok, err, i) = (ok + o, err + e, i + 50);
            }
            // Phase 2: recovery: bursts must succeed again, on the same client connection.
            let mut recovered = false;
            while Instant::now() < deadline {
                let (o, e) = echo_burst(&mut raw, &format!("c{c}"), i, 50).await;
                (ok, err, i) = (ok + o, err + e, i + 50);
                if e == 0 {
                    recovered = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, err, i, recovered)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.restart();
    restarted.store(true, Ordering::Relaxed);
    let (mut total_ok, mut total_err, mut total) = (0, 0, 0);
    for c in clients {
        let (ok, err, sent, recovered) = c.await.expect("client");
        assert!(recovered, "a client never saw the upstream come back");
        assert_eq!(ok + err, sent, "every command got exactly one reply");
        (total_ok, total_err, total) = (total_ok + ok, total_err + err, total + sent);
    }
    assert!(
        total_err > 0,
        "no command saw the outage: the test did not test anything"
    );
    assert!(total_ok > 0);
    eprintln!("sent {total}, ok {total_ok}, errors {total_err}");
}

/// With no Redis listening, commands fail at once with a clear error instead of hanging;
/// when Redis appears, the proxy connects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_fast_while_upstream_is_down_then_recovers() {
    let port = common::free_port();
    let config = respipe::config::Config::from_args(respipe::config::Args {
        listen: vec!["127.0.0.1:0".into()],
        upstream: Some(format!("redis://127.0.0.1:{port}")),
        ..Default::default()
    })
    .unwrap();
    let running = respipe::server::start(&config).await.unwrap();
    let addr = match &running.bound[0] {
        respipe::client::BoundAddr::Tcp(a) => *a,
        other => panic!("{other:?}"),
    };
    let mut raw = RawConn::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    // Give the first connect attempt time to fail.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    raw.send(b"PING\r\n").await;
    let reply = raw.reply_text().await;
    assert!(
        reply.starts_with(&format!("-ERR upstream 127.0.0.1:{port} unavailable")),
        "{reply:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "failing took {:?}",
        started.elapsed()
    );

    let redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        raw.send(b"PING\r\n").await;
        if raw.reply_text().await == "+PONG\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "proxy never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(redis);
    running.stop();
}

/// One client sends garbage: it gets Redis's protocol error and is closed; the replies
/// to its earlier commands still arrive first; other clients never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_garbage_closes_only_that_client() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut others = Vec::new();
    for c in 0..4 {
        let mut raw = proxy.raw().await;
        let stop = stop.clone();
        others.push(tokio::spawn(async move {
            let mut i = 0;
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (ok, err) = echo_burst(&mut raw, &format!("good{c}"), i, 20).await;
                assert_eq!((ok, err), (20, 0));
                i += 20;
            }
            i
        }));
    }
    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n:5\r\n",
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"*1\r\n$-5\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*abc\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$2\r\nabcd\r\n",
            "-ERR Protocol error: expected '\\r\\n' after bulk argument\r\n",
        ),
        (
            b"SET k \"unbalanced\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n$2000000000\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
    ];
    for (garbage, want) in cases {
        let mut bad = proxy.raw().await;
        let mut input = b"PING\r\n".to_vec();
        input.extend_from_slice(garbage);
        input.extend_from_slice(b"PING\r\n");
        bad.send(&input).await;
        assert_eq!(
            bad.reply_text().await,
            "+PONG\r\n",
            "reply before {garbage:?}"
        );
        assert_eq!(bad.reply_text().await, *want, "for {garbage:?}");
        assert!(
            bad.closed().await,
            "connection stays open after {garbage:?}"
        );
    }
    // Binary junk and an unterminated huge inline line.
    let mut bad = proxy.raw().await;
    bad.send(&vec![b'x'; 70 * 1024]).await;
    assert_eq!(
        bad.reply_text().await,
        "-ERR Protocol error: too big inline request\r\n"
    );
    assert!(bad.closed().await);
    stop.store(true, Ordering::Relaxed);
    for o in others {
        assert!(o.await.expect("good client") > 0);
    }
}

/// HTTP request lines close the connection, as on Redis, and never reach Redis (where
/// they would close a shared connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_lines_are_dropped() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut other = proxy.conn().await;
    let mut bad = proxy.raw().await;
    bad.send(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(bad.closed().await);
    let pong: String = redis::cmd("PING").query_async(&mut other).await.unwrap();
    assert_eq!(pong, "PONG");
}

/// A client that pipelines GETs of a 1 MiB value and never reads does not stall the
/// shared upstream reader: another client on the same upstream connection keeps getting
/// answers, and the stuck client is disconnected at the stall timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stalls_nobody() {
    let redis = RedisServer::start();
    // One upstream connection, so both clients certainly share its reader.
    let proxy = Proxy::start_with(&redis, |a| {
        a.upstream_conns = Some(1);
        a.client_output_limit = Some(16 << 20);
        a.client_stall_timeout_ms = Some(500);
    })
    .await;
    let mut good = proxy.conn().await;
    let _: () = good.set("big", vec![7u8; 1 << 20]).await.unwrap();
    let mut stuck = proxy.raw().await;
    let mut burst = Vec::new();
    for _ in 0..200 {
        burst.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
    }
    stuck.send(&burst).await; // 200 MiB of replies, never read
    let started = Instant::now();
    for i in 0..200 {
        let v: i64 = good.incr("n", 1).await.unwrap();
        assert_eq!(v, i + 1);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // The stuck client was cut off rather than kept waiting without end (reading sooner
    // would make it a slow client, whose commands resume as it reads).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 1 << 20];
        match tokio::time::timeout(Duration::from_secs(5), stuck.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {}
            Err(_) => break,
        }
    }
    assert!(closed, "a client that reads nothing should be disconnected");
}

/// Stores a `size`-byte value under "big" and sends `n` GETs of it on `client` in one
/// write; the replies the client is owed.
async fn big_gets(proxy: &Proxy, client: &mut RawConn, size: usize, n: usize) -> Vec<u8> {
    let mut setter = proxy.conn().await;
    let value: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let _: () = setter.set("big", &value).await.unwrap();
    client
        .send(&b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(n))
        .await;
    let mut one = format!("${size}\r\n").into_bytes();
    one.extend_from_slice(&value);
    one.extend_from_slice(b"\r\n");
    one.repeat(n)
}

/// A client that reads its large replies slowly is held back, not cut off: 24 MiB of
/// replies through an 8 MiB output limit arrive whole and in order, and the connection
/// stays usable (Redis itself, buffering them all, would cut it off at the limit). The
/// limit leaves room for the 4 replies of unknown size let out before the first returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_large_replies_gets_them_all() {
    use tokio::io::AsyncReadExt;
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis, |a| {
        a.client_output_limit = Some(8 << 20);
        a.client_stall_timeout_ms = Some(10_000);
    })
    .await;
    let mut slow = proxy.raw().await;
    let want = big_gets(&proxy, &mut slow, 1 << 20, 24).await;
    // About 50 MB/s: far slower than the proxy can fetch.
    let mut got = Vec::with_capacity(want.len());
    let mut chunk = vec![0u8; 256 << 10];
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want.len() {
        assert!(Instant::now() < deadline, "only {} bytes", got.len());
        let k = tokio::time::timeout(Duration::from_secs(10), slow.stream.read(&mut chunk))
            .await
            .expect("reply stalled")
            .expect("read");
        assert!(
            k > 0,
            "disconnected after {} of {} bytes",
            got.len(),
            want.len()
        );
        got.extend_from_slice(&chunk[..k]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(got == want, "replies differ from 24 copies of the value");
    slow.send(b"PING\r\n").await;
    assert_eq!(slow.reply_text().await, "+PONG\r\n");
}

/// The stall timeout disconnects a client only while it has commands held back: one that
/// sent everything it wants and leaves 16 MiB of replies unread for five stall timeouts is
/// kept (as Redis keeps it), and gets them all when it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_replies_alone_do_not_count_as_a_stall() {
    use tokio::io::AsyncReadExt;
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis, |a| a.client_stall_timeout_ms = Some(300)).await;
    let mut idle = proxy.raw().await;
    let want = big_gets(&proxy, &mut idle, 8 << 20, 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(10), idle.stream.read_exact(&mut got))
        .await
        .expect("replies stalled")
        .expect("disconnected with replies unread but nothing held back");
    assert!(got == want, "replies differ from 2 copies of the value");
    idle.send(b"PING\r\n").await;
    assert_eq!(idle.reply_text().await, "+PONG\r\n");
}

/// A client that writes a whole pipeline (22 MB, more than the kernel buffers between it
/// and the proxy) before reading any reply is not deadlocked by its held-back commands:
/// the proxy keeps reading its input while it waits for the client to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_written_before_reading_completes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start();
    // A deadlock would end in the stall timeout's disconnect: 10 s, beyond any scheduling
    // hiccup of a loaded CI machine.
    let proxy = Proxy::start_with(&redis, |a| a.client_stall_timeout_ms = Some(10_000)).await;
    let mut setter = proxy.conn().await;
    let _: () = setter.set("k", "0123456789").await.unwrap();
    let n = 1_000_000;
    let (mut rd, mut wr) = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .unwrap()
        .into_split();
    let pipeline = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".repeat(n);
    tokio::time::timeout(Duration::from_secs(60), wr.write_all(&pipeline))
        .await
        .expect("the proxy stopped reading the pipeline")
        .unwrap();
    let one = b"$10\r\n0123456789\r\n";
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    while got < one.len() * n {
        let k = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .expect("replies stalled")
            .unwrap();
        assert!(k > 0, "disconnected after {got} bytes");
        let at = got % one.len();
        for (i, b) in buf[..k].iter().enumerate() {
            assert_eq!(
                *b,
                one[(at + i) % one.len()],
                "reply bytes out of step at {got}"
            );
        }
        got += k;
    }
    assert_eq!(got, one.len() * n);
}

/// A stalled upstream (here: Redis paused with CLIENT PAUSE) does not hang clients past
/// `--upstream-timeout-ms`: the command gets an error, the connection is re-made, and
/// service resumes by itself when Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_times_out_then_recovers() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis, |a| a.upstream_timeout_ms = Some(300)).await;
    let mut c = proxy.raw().await;
    c.send(b"SET k v\r\n").await;
    assert_eq!(c.reply_text().await, "+OK\r\n");
    let mut direct = common::connect(&redis.direct()).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut direct)
        .await
        .unwrap();
    let started = Instant::now();
    c.send(b"GET k\r\n").await;
    let reply = c.reply_text().await;
    assert!(reply.starts_with("-ERR upstream timed out"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "took {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        c.send(b"GET k\r\n").await;
        if c.reply_text().await == "$1\r\nv\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads what a connection sends until it closes or stays quiet for `quiet`.
async fn drain(stream: &mut tokio::net::TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(quiet, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Malformed input, each sent to Redis itself and to the proxy: the proxy answers with
/// exactly Redis's bytes and closes (or not) exactly as Redis does, except where it is
/// deliberately stricter (listed), and a well-behaved client alongside never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_match_redis() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut bystander = proxy.conn().await;
    let same: &[&[u8]] = &[
        b"*1\r\n:5\r\n",              // wrong type byte in an array
        b"*1\r\n+OK\r\n",             // simple string as an argument
        b"*1\r\n-ERR\r\n",            // error as an argument
        b"*1\r\n*1\r\n$1\r\na\r\n",   // nested array
        b"*1\r\n_\r\n",               // RESP3 null as an argument
        b"*2\r\n$3\r\nGET\r\n%1\r\n", // RESP3 map as an argument
        b"*1\r\n$-5\r\n",             // negative bulk length
        b"*1\r\n$-0\r\n",             // "-0"
        b"*1\r\n$ 3\r\nabc\r\n",      // space in a length
        b"*1\r\n$+3\r\nabc\r\n",      // plus sign in a length
        b"*1\r\n$03\r\nabc\r\n",      // leading zero in a length
        b"*1\r\n$3x\r\nabc\r\n",      // junk after a length
        b"*1\r\n$9999999999\r\n",     // bulk length over 512 MB
        b"*1\r\n$536870913\r\n",      // 512 MiB + 1
        b"*1\r\n$1000000000\r\n",     // a 1 GB declared bulk
        b"*abc\r\n",                  // non-numeric multibulk length
        b"*01\r\n$4\r\nPING\r\n",     // leading zero in a multibulk length
        b"*3000000000\r\n",           // multibulk length over INT_MAX
        b"*-5\r\nPING\r\n",           // negative count: ignored, then a command
        b"*0\r\nPING\r\n",            // empty array: ignored, then a command
        b"SET k \"unbalanced\r\n",    // unbalanced double quote (inline)
        b"SET k 'x\r\n",              // unbalanced single quote (inline)
        b"SET k \"a\"b\r\n",          // closing quote not followed by a space
        b"\x00\x01\x02 junk\r\n",     // binary junk as an inline command
        b"\r\n\r\n\r\nPING\r\n",      // empty inline lines: ignored
        b"$3\r\nGET\r\n",             // a bulk outside an array: inline command "$3"
    ];
    // Stricter than Redis: Redis skips the two bytes after a bulk without checking them; the
    // proxy refuses, since a frame it misjudged would desynchronise a shared connection.
    let stricter: &[(&[u8], &[u8])] = &[(
        b"*1\r\n$2\r\nabcd\r\n",
        b"-ERR Protocol error: expected '\\r\\n' after bulk argument\r\n",
    )];
    for input in same {
        let mut direct = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
            .await
            .unwrap();
        let mut through = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        direct.write_all(input).await.unwrap();
        through.write_all(input).await.unwrap();
        let quiet = Duration::from_millis(300);
        let (want, want_closed) = drain(&mut direct, quiet).await;
        let (got, got_closed) = drain(&mut through, quiet).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(
            got_closed,
            want_closed,
            "closing differs for {:?}",
            String::from_utf8_lossy(input)
        );
        let pong: String = redis::cmd("PING")
            .query_async(&mut bystander)
            .await
            .unwrap();
        assert_eq!(pong, "PONG");
    }
    for (input, want) in stricter {
        let mut through = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        through.write_all(input).await.unwrap();
        let (got, closed) = drain(&mut through, Duration::from_millis(300)).await;
        assert_eq!(&got[..], *want);
        assert!(closed);
    }
    assert!(same.len() + stricter.len() >= 20);
}
