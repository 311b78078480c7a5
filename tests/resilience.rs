//! Upstream faults through a purpose-built faulty relay, and no acknowledged write lost or
//! duplicated while Redis is killed and restarted.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::relay::{Fault, FaultyRelay};
use common::{RawConn, RedisServer};
use redis::AsyncCommands;
use tokio::time::Instant;

/// Starts the proxy in front of the relay.
async fn proxy_via(
    relay: &FaultyRelay,
    tweak: impl FnOnce(&mut respipe::config::Args),
) -> common::Proxy {
    let redis_like = RedisServer::fake(relay.port);
    common::Proxy::start_with(&redis_like, tweak).await
}

/// Sends `n` pipelined `ECHO tag-i`, returns each reply: Some(true) its own echo,
/// Some(false) an error, None the connection closed before it.
async fn echoes(raw: &mut RawConn, tag: &str, n: u32) -> Vec<Option<bool>> {
    let mut out = Vec::new();
    for i in 0..n {
        let p = format!("{tag}-{i}");
        out.extend_from_slice(format!("*2\r\n$4\r\nECHO\r\n${}\r\n{p}\r\n", p.len()).as_bytes());
    }
    raw.send(&out).await;
    let mut got = Vec::new();
    for i in 0..n {
        let p = format!("{tag}-{i}");
        match raw.reply().await {
            None => got.push(None),
            Some(r) => {
                let r = String::from_utf8_lossy(&r).into_owned();
                if r == format!("${}\r\n{p}\r\n", p.len()) {
                    got.push(Some(true));
                } else {
                    assert!(
                        r.starts_with("-ERR upstream"),
                        "reply to {p} is neither its echo nor an upstream error: {r:?}"
                    );
                    got.push(Some(false));
                }
            }
        }
    }
    got
}

/// Each fault in turn; through all of them, every command gets exactly one reply (its
/// own, or an upstream error), in order, and the proxy recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_path_answers_every_command() {
    let redis = RedisServer::start();
    let relay = FaultyRelay::start(redis.port).await;
    let proxy = proxy_via(&relay, |a| {
        a.upstream_conns = Some(1);
        a.upstream_timeout_ms = Some(300);
    })
    .await;
    let mut c = proxy.raw().await;
    let ok = |v: &[Option<bool>]| v.iter().all(|r| *r == Some(true));
    assert!(ok(&echoes(&mut c, "warm", 50).await));

    // Delay: slower, still complete and in order.
    relay.set(Fault::Delay(Duration::from_millis(20)));
    assert!(ok(&echoes(&mut c, "delay", 50).await));
    relay.set(Fault::Pass);

    // Stall: the command timeout answers with an error instead of hanging.
    relay.set(Fault::Stall);
    let t = Instant::now();
    let stalled = echoes(&mut c, "stall", 20).await;
    assert!(stalled.iter().all(|r| *r == Some(false)), "{stalled:?}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    relay.set(Fault::Pass);
    recover(&mut c).await;

    // A reply cut midway: the commands whose replies were complete keep them, the rest
    // get errors; none is lost or doubled.
    let big = "x".repeat(200_000);
    let mut direct = common::connect(&redis.direct()).await;
    let _: () = direct.set("big", &big).await.unwrap();
    relay.set(Fault::CutNextReply);
    c.send(&b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(5)).await;
    let mut answered = 0;
    for _ in 0..5 {
        let r = c.reply().await.expect("a reply for every command");
        assert!(
            r.starts_with(b"$200000\r\n") || r.starts_with(b"-ERR upstream"),
            "{:?}",
            &r[..r.len().min(40)]
        );
        answered += 1;
    }
    assert_eq!(answered, 5);
    recover(&mut c).await;

    // Every connection dropped at once.
    relay.set(Fault::Delay(Duration::from_millis(100)));
    let mut burst = Vec::new();
    for i in 0..20 {
        burst.extend_from_slice(format!("*2\r\n$4\r\nECHO\r\n$2\r\n{i:02}\r\n").as_bytes());
    }
    c.send(&burst).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    relay.drop_all();
    relay.set(Fault::Pass);
    for i in 0..20 {
        let r = String::from_utf8_lossy(&c.reply().await.expect("reply")).into_owned();
        assert!(
            r == format!("$2\r\n{i:02}\r\n") || r.starts_with("-ERR upstream"),
            "{r}"
        );
    }
    recover(&mut c).await;
}

async fn recover(c: &mut RawConn) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        c.send(b"PING\r\n").await;
        if c.reply_text().await == "+PONG\r\n" {
            return;
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 20 clients RPUSH unique payloads while Redis (appendfsync always, so what it
/// acknowledged survives) is killed and restarted: afterwards every acknowledged write is
/// present exactly once, every other one got an error, nothing is duplicated.
async fn soak(duration: Duration, kills: u32) {
    let mut redis = RedisServer::start_durable();
    let proxy = common::Proxy::start(&redis).await;
    let stop_at = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in 0..20u32 {
        let mut raw = proxy.raw().await;
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0u32);
            let mut i = 0u32;
            while Instant::now() < stop_at {
                // Pipelines of 10, every reply checked in order.
                let mut out = Vec::new();
                for j in i..i + 10 {
                    let p = format!("c{c}-{j}");
                    out.extend_from_slice(
                        format!("*3\r\n$5\r\nRPUSH\r\n$4\r\nsoak\r\n${}\r\n{p}\r\n", p.len())
                            .as_bytes(),
                    );
                }
                raw.send(&out).await;
                for j in i..i + 10 {
                    let r = raw.reply_text().await;
                    if r.starts_with(':') {
                        acked.push(format!("c{c}-{j}"));
                    } else {
                        // The proxy's own errors while Redis is away, or Redis's while it
                        // reloads its data (-LOADING): either way, not acknowledged.
                        assert!(
                            r.starts_with("-ERR upstream") || r.starts_with("-LOADING"),
                            "{r}"
                        );
                        failed += 1;
                    }
                }
                i += 10;
                // A steady load, not a flood: Redis replays its whole AOF at each restart.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (i, acked, failed)
        }));
    }
    for _ in 0..kills {
        tokio::time::sleep(duration / (kills + 1)).await;
        redis.restart();
    }
    let (mut sent, mut acked, mut failed) = (0u32, Vec::new(), 0u32);
    for t in tasks {
        let (s, a, f) = t.await.expect("client");
        sent += s;
        acked.extend(a);
        failed += f;
    }
    assert_eq!(
        sent as usize,
        acked.len() + failed as usize,
        "every write got exactly one reply"
    );
    // Wait for the proxy to be back, then read the list directly from Redis.
    let deadline = Instant::now() + Duration::from_secs(60);
    let found: Vec<String> = loop {
        if let Ok(mut d) = redis.direct().get_multiplexed_async_connection().await {
            if let Ok(v) = d.lrange("soak", 0, -1).await {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "redis never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut count: HashMap<&str, u32> = HashMap::new();
    for p in &found {
        *count.entry(p.as_str()).or_default() += 1;
    }
    let duplicated = count.values().filter(|&&n| n > 1).count();
    let lost = acked
        .iter()
        .filter(|p| !count.contains_key(p.as_str()))
        .count();
    eprintln!(
        "soak: sent {sent}, acknowledged {}, errors {failed}, found {}, lost {lost}, duplicated {duplicated}",
        acked.len(),
        found.len()
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert_eq!(duplicated, 0, "writes duplicated");
    assert!(
        failed > 0,
        "no write saw an outage: the soak tested nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short() {
    soak(Duration::from_secs(6), 2).await;
}

/// The 60-second version: `cargo test --test resilience -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn soak_60s() {
    soak(Duration::from_secs(60), 6).await;
}
