//! Commands with connection state behave as on Redis: transactions, blocking calls,
//! pub/sub, MONITOR, HELLO 3, CLIENT subcommands, AUTH, CLIENT REPLY.

mod common;

use std::time::Duration;

use common::{info_stat, Proxy, RedisServer};
use redis::AsyncCommands;
use tokio::time::Instant;

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// MULTI/EXEC, queued-command errors, EXECABORT, DISCARD, and Redis's own wording for
/// misuse, all exactly as Redis answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_answer_as_redis_does() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut c = proxy.raw().await;
    c.send(b"MULTI\r\nSET s text\r\nINCR s\r\nINCR n\r\nEXEC\r\n")
        .await;
    assert_eq!(c.reply_text().await, "+OK\r\n");
    for _ in 0..3 {
        assert_eq!(c.reply_text().await, "+QUEUED\r\n");
    }
    assert_eq!(
        c.reply_text().await,
        "*3\r\n+OK\r\n-ERR value is not an integer or out of range\r\n:1\r\n"
    );
    // A syntax error while queueing aborts the whole transaction.
    c.send(b"MULTI\r\nSET a 1\r\nINCR\r\nEXEC\r\nEXISTS a\r\n")
        .await;
    assert_eq!(c.reply_text().await, "+OK\r\n");
    assert_eq!(c.reply_text().await, "+QUEUED\r\n");
    assert_eq!(
        c.reply_text().await,
        "-ERR wrong number of arguments for 'incr' command\r\n"
    );
    assert_eq!(
        c.reply_text().await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(c.reply_text().await, ":0\r\n");
    c.send(
        b"MULTI\r\nSET d 1\r\nDISCARD\r\nEXISTS d\r\nEXEC\r\nDISCARD\r\nMULTI\r\nMULTI\r\nEXEC\r\n",
    )
    .await;
    assert_eq!(c.reply_text().await, "+OK\r\n");
    assert_eq!(c.reply_text().await, "+QUEUED\r\n");
    assert_eq!(c.reply_text().await, "+OK\r\n");
    assert_eq!(c.reply_text().await, ":0\r\n");
    assert_eq!(c.reply_text().await, "-ERR EXEC without MULTI\r\n");
    assert_eq!(c.reply_text().await, "-ERR DISCARD without MULTI\r\n");
    assert_eq!(c.reply_text().await, "+OK\r\n");
    assert_eq!(
        c.reply_text().await,
        "-ERR MULTI calls can not be nested\r\n"
    );
    assert_eq!(c.reply_text().await, "*0\r\n");
}

/// EXEC returns nil when a watched key changed; a transaction that follows a pipelined
/// write sees that write (the session keeps its commands' execution order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_execution_order() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut a = proxy.raw().await;
    let mut other = proxy.conn().await;
    a.send(b"WATCH w\r\nGET w\r\n").await;
    assert_eq!(a.reply_text().await, "+OK\r\n");
    assert_eq!(a.reply_text().await, "$-1\r\n");
    let _: () = other.set("w", "changed").await.unwrap();
    a.send(b"MULTI\r\nSET w mine\r\nEXEC\r\nGET w\r\n").await;
    assert_eq!(a.reply_text().await, "+OK\r\n");
    assert_eq!(a.reply_text().await, "+QUEUED\r\n");
    assert_eq!(a.reply_text().await, "*-1\r\n");
    assert_eq!(a.reply_text().await, "$7\r\nchanged\r\n");
    // Write, then a transaction reading it, then a read after it: all in one packet.
    a.send(b"SET seq 1\r\nMULTI\r\nINCR seq\r\nEXEC\r\nINCR seq\r\n")
        .await;
    assert_eq!(a.reply_text().await, "+OK\r\n");
    assert_eq!(a.reply_text().await, "+OK\r\n");
    assert_eq!(a.reply_text().await, "+QUEUED\r\n");
    assert_eq!(a.reply_text().await, "*1\r\n:2\r\n");
    assert_eq!(a.reply_text().await, ":3\r\n");
    // UNWATCH outside a transaction, and WATCH's arity error, as Redis.
    a.send(b"UNWATCH\r\nWATCH\r\n").await;
    assert_eq!(a.reply_text().await, "+OK\r\n");
    assert_eq!(
        a.reply_text().await,
        "-ERR wrong number of arguments for 'watch' command\r\n"
    );
}

/// 50 clients × 1,000 WATCH/GET/MULTI/SET/EXEC retry loops on one key end at exactly 50,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_watch_retry_loops_are_exact() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let (clients, loops): (u32, u32) = (50, 1000);
    let mut tasks = Vec::new();
    for seed in 0..clients {
        let client = proxy.client();
        tasks.push(tokio::spawn(async move {
            let mut c = common::connect(&client).await;
            let mut retries = 0u32;
            let mut jitter = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
            for _ in 0..loops {
                let mut fails = 0u32;
                loop {
                    let _: () = redis::cmd("WATCH")
                        .arg("counter")
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    let v: Option<i64> = c.get("counter").await.unwrap();
                    let r: Option<(i64,)> = redis::pipe()
                        .atomic()
                        .set("counter", v.unwrap_or(0) + 1)
                        .ignore()
                        .get("counter")
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    if r.is_some() {
                        break;
                    }
                    retries += 1;
                    // Back off a little, as real retry loops do, so 50 writers contending
                    // for one key do not spend the test retrying.
                    // Exponential backoff with jitter, up to ~16 ms.
                    jitter = jitter
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    fails += 1;
                    let cap = 1u64 << (10 + fails.min(4));
                    tokio::time::sleep(Duration::from_micros((jitter >> 40) % cap)).await;
                }
            }
            retries
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap();
    }
    let mut direct = common::connect(&redis.direct()).await;
    let total: i64 = direct.get("counter").await.unwrap();
    assert_eq!(total, i64::from(clients * loops));
    eprintln!(
        "{} transactions committed, {retries} retried",
        clients * loops
    );
}

/// Transactions reuse pooled connections: 10,000 of them open only a handful of new
/// upstream connections, and a client that disconnects mid-transaction leaves nothing
/// behind for the next user of its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_reuse_dedicated_connections() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut warm = proxy.conn().await;
    let _: (i64,) = redis::pipe()
        .atomic()
        .incr("t", 1)
        .query_async(&mut warm)
        .await
        .unwrap();
    let before = info_stat(&redis, "total_connections_received").await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = proxy.client();
        tasks.push(tokio::spawn(async move {
            let mut c = common::connect(&client).await;
            for _ in 0..2500 {
                let _: (i64,) = redis::pipe()
                    .atomic()
                    .incr("t", 1)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let opened = info_stat(&redis, "total_connections_received").await - before;
    eprintln!("10,000 transactions opened {opened} new upstream connections");
    assert!(
        opened <= 8,
        "{opened} new connections for 10,000 transactions"
    );
    let v: i64 = warm.get("t").await.unwrap();
    assert_eq!(v, 10_001);

    // Disconnect inside MULTI; the connection is reset before anyone else gets it.
    for _ in 0..5 {
        let mut quitter = proxy.raw().await;
        quitter.send(b"WATCH t\r\nMULTI\r\nSET left over\r\n").await;
        assert_eq!(quitter.reply_text().await, "+OK\r\n");
        assert_eq!(quitter.reply_text().await, "+OK\r\n");
        assert_eq!(quitter.reply_text().await, "+QUEUED\r\n");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..10 {
        let r: (i64,) = redis::pipe()
            .atomic()
            .incr("t", 1)
            .query_async(&mut warm)
            .await
            .unwrap();
        assert!(r.0 > 10_001);
    }
    let left: Option<String> = warm.get("left").await.unwrap();
    assert_eq!(left, None, "an abandoned transaction must never run");
}

/// `BLPOP q 0` waits forever on its own connection while 50 other clients run at full
/// speed; a push wakes it; 10,000 BLPOPs reuse pooled connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_pops_never_stall_other_clients() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut blocked = proxy.raw().await;
    blocked.send(&cmd(&["BLPOP", "jobs", "0"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = proxy.client();
        tasks.push(tokio::spawn(async move {
            let mut c = common::connect(&client).await;
            let mut worst = Duration::ZERO;
            for j in 0..100 {
                let t = Instant::now();
                let v: i64 = c.incr(format!("k{i}"), 1).await.unwrap();
                assert_eq!(v, j + 1);
                worst = worst.max(t.elapsed());
            }
            worst
        }));
    }
    for t in tasks {
        let worst = t.await.unwrap();
        assert!(
            worst < Duration::from_secs(2),
            "a client waited {worst:?} behind BLPOP"
        );
    }
    let mut pusher = proxy.conn().await;
    let _: () = pusher.rpush("jobs", "job-1").await.unwrap();
    assert_eq!(
        blocked.reply_text().await,
        "*2\r\n$4\r\njobs\r\n$5\r\njob-1\r\n"
    );
    // Timeout form, and commands pipelined behind a BLPOP wait for it, as on Redis.
    blocked
        .send(b"BLPOP none 0.1\r\nRPUSH none x\r\nLLEN none\r\n")
        .await;
    assert_eq!(blocked.reply_text().await, "*-1\r\n");
    assert_eq!(blocked.reply_text().await, ":1\r\n");
    assert_eq!(blocked.reply_text().await, ":1\r\n");

    let before = info_stat(&redis, "total_connections_received").await;
    let items: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let _: () = pusher.rpush("many", &items).await.unwrap();
    let mut popper = proxy.conn().await;
    for i in 0..10_000 {
        let v: (String, String) = popper.blpop("many", 0.0).await.unwrap();
        assert_eq!(v.1, i.to_string());
    }
    let opened = info_stat(&redis, "total_connections_received").await - before;
    eprintln!("10,000 BLPOPs opened {opened} new upstream connections");
    assert!(opened <= 4, "{opened} new connections for 10,000 BLPOPs");
}

/// A client that disconnects during `BLPOP q 0` does not eat the next item pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_blpop_is_cancelled() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    {
        let mut gone = proxy.raw().await;
        gone.send(&cmd(&["BLPOP", "q", "0"])).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = proxy.conn().await;
    let _: () = c.rpush("q", "precious").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let v: Vec<String> = c.lrange("q", 0, -1).await.unwrap();
    assert_eq!(v, vec!["precious".to_string()]);
}

/// With the dedicated pool exhausted, a command waits up to the bound, then errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_pool_is_bounded() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis, |a| {
        a.max_dedicated_conns = Some(2);
        a.dedicated_wait_ms = Some(300);
    })
    .await;
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut h = proxy.raw().await;
        h.send(&cmd(&["BLPOP", "never", "0"])).await;
        holders.push(h);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = proxy.raw().await;
    let t = Instant::now();
    third.send(&cmd(&["BLPOP", "never", "0"])).await;
    let reply = third.reply_text().await;
    assert!(
        reply.starts_with("-ERR respipe: no dedicated upstream connection free"),
        "{reply}"
    );
    assert!(t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(5));
    // Shared commands are unaffected.
    third.send(b"PING\r\n").await;
    assert_eq!(third.reply_text().await, "+PONG\r\n");
}

/// 100,000 published messages reach a subscriber, none lost or reordered; leaving
/// subscribed mode returns the client to normal commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_delivers_every_message_in_order() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut sub = proxy.raw().await;
    sub.send(b"SUBSCRIBE news\r\nPSUBSCRIBE n*\r\n").await;
    assert_eq!(
        sub.reply_text().await,
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_eq!(
        sub.reply_text().await,
        "*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n"
    );
    sub.send(b"PING\r\n").await;
    assert_eq!(sub.reply_text().await, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    let publisher = proxy.client();
    let n = 100_000;
    let publish = tokio::spawn(async move {
        let mut p = common::connect(&publisher).await;
        for chunk in 0..n / 1000 {
            let mut pipe = redis::pipe();
            for i in chunk * 1000..(chunk + 1) * 1000 {
                pipe.publish("news", i).ignore();
            }
            let _: () = pipe.query_async(&mut p).await.unwrap();
        }
    });
    for i in 0..n {
        let want = format!(
            "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n${}\r\n{i}\r\n",
            i.to_string().len()
        );
        assert_eq!(sub.reply_text().await, want, "message {i}");
        let want = format!(
            "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n${}\r\n{i}\r\n",
            i.to_string().len()
        );
        assert_eq!(sub.reply_text().await, want, "pmessage {i}");
    }
    publish.await.unwrap();
    sub.send(b"UNSUBSCRIBE\r\nPUNSUBSCRIBE\r\nSET after sub\r\nGET after\r\n")
        .await;
    assert_eq!(
        sub.reply_text().await,
        "*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_eq!(
        sub.reply_text().await,
        "*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:0\r\n"
    );
    assert_eq!(sub.reply_text().await, "+OK\r\n");
    assert_eq!(sub.reply_text().await, "$3\r\nsub\r\n");
    // Outside subscribed mode, UNSUBSCRIBE answers as Redis does.
    sub.send(b"UNSUBSCRIBE a b\r\n").await;
    assert_eq!(
        sub.reply_text().await,
        "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
    );
    assert_eq!(
        sub.reply_text().await,
        "*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n"
    );
}

/// MONITOR streams what other clients run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_streams_commands() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut mon = proxy.raw().await;
    mon.send(b"MONITOR\r\n").await;
    assert_eq!(mon.reply_text().await, "+OK\r\n");
    let mut c = proxy.conn().await;
    let _: () = c.set("watched-key", "v").await.unwrap();
    let line = mon.reply_text().await;
    assert!(line.contains("\"SET\" \"watched-key\" \"v\""), "{line}");
}

/// HELLO 3 switches the client to RESP3: maps, nulls and sets come back in RESP3, from
/// RESP3 upstream connections; HELLO 2 switches back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_gives_resp3_replies() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut c = proxy.raw().await;
    c.send(b"HSET h f v\r\nHELLO 3 SETNAME app\r\n").await;
    assert_eq!(c.reply_text().await, ":1\r\n");
    let hello = c.reply_text().await;
    assert!(
        hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n"),
        "{hello}"
    );
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
    c.send(b"HGETALL h\r\nGET missing\r\nSMEMBERS nos\r\nCLIENT GETNAME\r\nHELLO 2\r\nHGETALL h\r\nGET missing\r\n").await;
    assert_eq!(c.reply_text().await, "%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(c.reply_text().await, "_\r\n");
    assert_eq!(c.reply_text().await, "~0\r\n");
    assert_eq!(c.reply_text().await, "$3\r\napp\r\n");
    assert!(c.reply_text().await.starts_with("*14\r\n"));
    assert_eq!(c.reply_text().await, "*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(c.reply_text().await, "$-1\r\n");
    c.send(b"HELLO 4\r\nHELLO x\r\n").await;
    assert_eq!(
        c.reply_text().await,
        "-NOPROTO unsupported protocol version\r\n"
    );
    assert_eq!(
        c.reply_text().await,
        "-ERR Protocol version is not an integer or out of range\r\n"
    );
}

/// redis-rs in RESP3 mode, including its async multiplexed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_resp3() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let client = redis::Client::open(format!("{}?protocol=resp3", proxy.url())).unwrap();
    let mut c = common::connect(&client).await;
    let _: () = c.hset("h3", "a", "1").await.unwrap();
    let m: std::collections::HashMap<String, String> = c.hgetall("h3").await.unwrap();
    assert_eq!(m.get("a").map(String::as_str), Some("1"));
    let v: redis::Value = redis::cmd("HGETALL")
        .arg("h3")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(matches!(v, redis::Value::Map(_)), "{v:?}");
}

/// CLIENT subcommands answered for the client's own session; CLIENT REPLY OFF/SKIP/ON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_are_per_session() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut a = proxy.raw().await;
    let mut b = proxy.raw().await;
    a.send(b"CLIENT SETNAME alice\r\nCLIENT GETNAME\r\nCLIENT SETNAME \"bad name\"\r\nCLIENT SETINFO LIB-NAME mylib\r\nCLIENT SETINFO nope x\r\nCLIENT INFO\r\nCLIENT ID\r\n").await;
    assert_eq!(a.reply_text().await, "+OK\r\n");
    assert_eq!(a.reply_text().await, "$5\r\nalice\r\n");
    assert_eq!(
        a.reply_text().await,
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert_eq!(a.reply_text().await, "+OK\r\n");
    assert_eq!(a.reply_text().await, "-ERR Unrecognized option 'nope'\r\n");
    let info = a.reply_text().await;
    assert!(
        info.contains(" name=alice ") && info.contains("lib-name=mylib"),
        "{info}"
    );
    let id_a = a.reply_text().await;
    b.send(b"CLIENT GETNAME\r\nCLIENT ID\r\n").await;
    assert_eq!(b.reply_text().await, "$-1\r\n");
    assert_ne!(b.reply_text().await, id_a);
    // The shared upstream connections keep their own name.
    let mut direct = common::connect(&redis.direct()).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(!list.contains("name=alice"), "{list}");

    a.send(b"CLIENT REPLY OFF\r\nSET r1 1\r\nGET r1\r\nCLIENT REPLY SKIP\r\nCLIENT REPLY ON\r\nINCR r1\r\nCLIENT REPLY SKIP\r\nINCR r1\r\nINCR r1\r\n").await;
    assert_eq!(
        a.reply_text().await,
        "+OK\r\n",
        "only CLIENT REPLY ON answers"
    );
    assert_eq!(a.reply_text().await, ":2\r\n");
    assert_eq!(
        a.reply_text().await,
        ":4\r\n",
        "SKIP drops exactly the next reply"
    );
}

/// Replication commands are refused by name; the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_commands_are_refused_by_name() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut c = proxy.raw().await;
    c.send(b"SYNC\r\nPING\r\n").await;
    let reply = c.reply_text().await;
    assert!(
        reply.starts_with("-ERR 'SYNC' is not supported by respipe"),
        "{reply}"
    );
    assert_eq!(c.reply_text().await, "+PONG\r\n");
}

/// Client-side caching: a RESP3 client gets invalidation pushes on its own connection; a
/// RESP2 client redirects them to another proxy client subscribed to
/// `__redis__:invalidate`, named by its proxy CLIENT ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tracking_invalidations() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut writer = proxy.conn().await;
    let _: () = writer.set("cached", "v1").await.unwrap();

    let mut r3 = proxy.raw().await;
    r3.send(b"HELLO 3\r\nCLIENT TRACKING ON\r\nGET cached\r\n")
        .await;
    assert!(r3.reply_text().await.starts_with("%7"));
    assert_eq!(r3.reply_text().await, "+OK\r\n");
    assert_eq!(r3.reply_text().await, "$2\r\nv1\r\n");
    let _: () = writer.set("cached", "v2").await.unwrap();
    assert_eq!(
        r3.reply_text().await,
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n$6\r\ncached\r\n"
    );
    r3.send(b"GET cached\r\nCLIENT TRACKING OFF\r\nGET cached\r\n")
        .await;
    assert_eq!(r3.reply_text().await, "$2\r\nv2\r\n");
    assert_eq!(r3.reply_text().await, "+OK\r\n");
    assert_eq!(r3.reply_text().await, "$2\r\nv2\r\n");

    let mut listener = proxy.raw().await;
    listener.send(b"CLIENT ID\r\n").await;
    let id = listener
        .reply_text()
        .await
        .trim_start_matches(':')
        .trim()
        .to_string();
    listener.send(b"SUBSCRIBE __redis__:invalidate\r\n").await;
    assert!(listener
        .reply_text()
        .await
        .starts_with("*3\r\n$9\r\nsubscribe\r\n"));
    let mut r2 = proxy.raw().await;
    r2.send(format!("CLIENT TRACKING ON REDIRECT {id}\r\nGET cached\r\nCLIENT TRACKING ON REDIRECT 999999\r\n").as_bytes()).await;
    assert_eq!(r2.reply_text().await, "+OK\r\n");
    assert_eq!(r2.reply_text().await, "$2\r\nv2\r\n");
    assert_eq!(
        r2.reply_text().await,
        "-ERR The client ID you want redirect to does not exist\r\n"
    );
    let _: () = writer.set("cached", "v3").await.unwrap();
    assert_eq!(
        listener.reply_text().await,
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$6\r\ncached\r\n"
    );
}

/// With a client password, clients must AUTH (or HELLO … AUTH) first, as on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authentication() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis, |a| a.client_password = Some("s3cret".into())).await;
    let mut c = proxy.raw().await;
    c.send(b"GET k\r\nAUTH wrong\r\nAUTH s3cret\r\nGET k\r\n")
        .await;
    assert_eq!(c.reply_text().await, "-NOAUTH Authentication required.\r\n");
    assert_eq!(
        c.reply_text().await,
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(c.reply_text().await, "+OK\r\n");
    assert_eq!(c.reply_text().await, "$-1\r\n");
    let mut h = proxy.raw().await;
    h.send(b"HELLO 3\r\nHELLO 3 AUTH default s3cret\r\nPING\r\n")
        .await;
    assert!(h
        .reply_text()
        .await
        .starts_with("-NOAUTH HELLO must be called"));
    assert!(h.reply_text().await.starts_with("%7\r\n"));
    assert_eq!(h.reply_text().await, "+PONG\r\n");
    let ok = redis::Client::open(format!("redis://:s3cret@{}", proxy.addr)).unwrap();
    let mut rs = common::connect(&ok).await;
    let _: () = rs.set("authed", 1).await.unwrap();
    // Without a password configured, AUTH answers as a default Redis does.
    let open = Proxy::start(&redis).await;
    let mut o = open.raw().await;
    o.send(b"AUTH x\r\n").await;
    assert!(o
        .reply_text()
        .await
        .starts_with("-ERR AUTH <password> called without any password configured"));
}

/// Regression tests from review: mode endings and subscription counting behave as Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_endings_match_redis() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis, |a| a.max_dedicated_conns = Some(1)).await;
    // RESET / QUIT in subscribed mode and MONITOR end the mode, with Redis's replies.
    let mut c = proxy.raw().await;
    c.send(b"SUBSCRIBE ch\r\nRESET\r\nPING\r\n").await;
    assert!(c.reply_text().await.starts_with("*3\r\n$9\r\nsubscribe"));
    assert_eq!(c.reply_text().await, "+RESET\r\n");
    assert_eq!(c.reply_text().await, "+PONG\r\n");
    c.send(b"MONITOR\r\n").await;
    assert_eq!(c.reply_text().await, "+OK\r\n");
    c.send(b"RESET\r\nPING\r\n").await;
    assert_eq!(c.reply_text().await, "+RESET\r\n");
    assert_eq!(c.reply_text().await, "+PONG\r\n");
    // RESET / QUIT right behind queued commands: their replies come first.
    c.send(b"MULTI\r\nSET a 1\r\nRESET\r\nWATCH k\r\nGET k\r\nQUIT\r\n")
        .await;
    for want in [
        "+OK\r\n",
        "+QUEUED\r\n",
        "+RESET\r\n",
        "+OK\r\n",
        "$-1\r\n",
        "+OK\r\n",
    ] {
        assert_eq!(c.reply_text().await, want);
    }
    assert!(c.closed().await);
    // Shard and channel subscriptions are counted apart.
    let mut s = proxy.raw().await;
    s.send(b"SUBSCRIBE x\r\nSSUBSCRIBE y\r\nSUNSUBSCRIBE y\r\nGET k\r\n")
        .await;
    for _ in 0..3 {
        assert!(s.reply_text().await.starts_with("*3\r\n"));
    }
    assert!(
        s.reply_text().await.starts_with("-ERR Can't execute 'get'"),
        "still subscribed to x"
    );
    s.send(b"UNSUBSCRIBE\r\nGET k\r\n").await;
    assert!(s.reply_text().await.starts_with("*3\r\n$11\r\nunsubscribe"));
    assert_eq!(s.reply_text().await, "$-1\r\n");
    // RESP3: a partial UNSUBSCRIBE keeps the client subscribed.
    let mut r3 = proxy.raw().await;
    r3.send(b"HELLO 3\r\nSUBSCRIBE a b\r\nUNSUBSCRIBE a\r\n")
        .await;
    assert!(r3.reply_text().await.starts_with("%7"));
    for _ in 0..3 {
        assert!(r3.reply_text().await.starts_with(">3\r\n"));
    }
    let mut p = proxy.conn().await;
    let n: i64 = redis::cmd("PUBLISH")
        .arg("b")
        .arg("x")
        .query_async(&mut p)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        r3.reply_text().await,
        ">3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$1\r\nx\r\n"
    );
    r3.send(b"RESET\r\n").await;
    assert_eq!(r3.reply_text().await, "+RESET\r\n");
    // A connection left dirty (SUBSCRIBE run by EXEC) is never handed to the next client.
    let mut a = proxy.raw().await;
    a.send(b"MULTI\r\nSUBSCRIBE news\r\nEXEC\r\n").await;
    assert_eq!(a.reply_text().await, "+OK\r\n");
    assert_eq!(a.reply_text().await, "+QUEUED\r\n");
    let _ = a.reply_text().await;
    for _ in 0..3 {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("news")
            .arg("m")
            .query_async(&mut p)
            .await
            .unwrap();
    }
    let mut b = proxy.raw().await;
    b.send(b"MULTI\r\nSET q 1\r\nEXEC\r\n").await;
    for want in ["+OK\r\n", "+QUEUED\r\n", "*1\r\n+OK\r\n"] {
        assert_eq!(b.reply_text().await, want);
    }
}

/// If Redis drops a dedicated connection, its client is told and closed, as a direct
/// connection would be, instead of getting errors forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_dedicated_connection_closes_its_client() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut c = proxy.raw().await;
    c.send(b"WATCH k\r\n").await;
    assert_eq!(c.reply_text().await, "+OK\r\n");
    let mut direct = common::connect(&redis.direct()).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(killed >= 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(b"GET k\r\n").await;
    let reply = c
        .reply()
        .await
        .map(|r| String::from_utf8_lossy(&r).into_owned());
    assert_eq!(reply.as_deref(), Some("-ERR upstream connection lost\r\n"));
    assert!(c.closed().await);
}

/// What real clients send on connect (shared/notes/client-handshakes.md), byte for byte:
/// every command answered as Redis would, none by closing the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_handshakes_are_answered() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis, |a| a.client_password = Some("pw".into())).await;
    // ioredis 6: lowercase hello 3, two CLIENT SETINFO, MAINT_NOTIFICATIONS, then INFO.
    let mut io = proxy.raw().await;
    io.send(&cmd(&["hello", "3", "AUTH", "default", "pw"]))
        .await;
    assert!(io.reply_text().await.starts_with("%7\r\n"));
    io.send(
        &[
            cmd(&["client", "SETINFO", "LIB-VER", "6.1.0"]),
            cmd(&["client", "SETINFO", "LIB-NAME", "ioredis"]),
            cmd(&[
                "client",
                "MAINT_NOTIFICATIONS",
                "ON",
                "moving-endpoint-type",
                "internal-ip",
            ]),
            cmd(&["info"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(io.reply_text().await, "+OK\r\n");
    assert_eq!(io.reply_text().await, "+OK\r\n");
    assert!(
        io.reply_text().await.starts_with('-'),
        "an error reply, as from Redis 7.0"
    );
    let info = io.reply_text().await;
    assert!(info.contains("redis_version:"), "{info}");
    // go-redis v9: HELLO 3 AUTH … SETNAME …, then one pipeline of SELECT + CLIENT SETNAME,
    // then one of CLIENT SETINFO ×2.
    let mut go = proxy.raw().await;
    go.send(&cmd(&[
        "HELLO", "3", "AUTH", "default", "pw", "SETNAME", "worker-1",
    ]))
    .await;
    assert!(go.reply_text().await.starts_with("%7\r\n"));
    go.send(
        &[
            cmd(&["SELECT", "2"]),
            cmd(&["CLIENT", "SETNAME", "worker-1"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(go.reply_text().await, "+OK\r\n");
    assert_eq!(go.reply_text().await, "+OK\r\n");
    go.send(
        &[
            cmd(&["CLIENT", "SETINFO", "LIB-NAME", "go-redis(,go1.22)"]),
            cmd(&["CLIENT", "SETINFO", "LIB-VER", "9.5.1"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(go.reply_text().await, "+OK\r\n");
    assert_eq!(go.reply_text().await, "+OK\r\n");
    go.send(&[cmd(&["SET", "k", "v"]), cmd(&["GET", "k"])].concat())
        .await;
    assert_eq!(go.reply_text().await, "+OK\r\n");
    assert_eq!(go.reply_text().await, "$1\r\nv\r\n");
    // A wrong password in HELLO is an error reply (go-redis then falls back to AUTH).
    let mut bad = proxy.raw().await;
    bad.send(&cmd(&["HELLO", "3", "AUTH", "default", "nope"]))
        .await;
    assert!(bad.reply_text().await.starts_with("-WRONGPASS"));
    bad.send(&cmd(&["AUTH", "pw"])).await;
    assert_eq!(bad.reply_text().await, "+OK\r\n");
}
