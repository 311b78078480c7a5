//! The core data path against a real redis-server: batching across clients, ordered
//! replies, per-command errors, large values.

mod common;

use common::{Proxy, RedisServer};
use redis::AsyncCommands;

/// 100 clients each pipeline 1,000 mixed SET/INCR/GET commands; every reply is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_pipelining_get_their_own_replies_in_order() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut tasks = Vec::new();
    for c in 0..100u32 {
        let client = proxy.client();
        tasks.push(tokio::spawn(async move {
            let mut conn = common::connect(&client).await;
            let mut pipe = redis::pipe();
            for i in 0..1000u32 {
                match i % 3 {
                    0 => pipe.set(format!("c{c}:k{i}"), format!("v{c}-{i}")),
                    1 => pipe.incr(format!("c{c}:ctr"), 1),
                    _ => pipe.get(format!("c{c}:k{}", i - 2)),
                };
            }
            let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await.expect("pipeline");
            assert_eq!(replies.len(), 1000);
            for (i, r) in replies.iter().enumerate() {
                let i = i as u32;
                match i % 3 {
                    0 => assert_eq!(r, &redis::Value::Okay, "client {c} cmd {i}"),
                    1 => assert_eq!(
                        r,
                        &redis::Value::Int(i64::from(i / 3 + 1)),
                        "client {c} cmd {i}"
                    ),
                    _ => assert_eq!(
                        r,
                        &redis::Value::BulkString(format!("v{c}-{}", i - 2).into_bytes()),
                        "client {c} cmd {i}"
                    ),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let mut direct = common::connect(&redis.direct()).await;
    let total: i64 = direct.get("c99:ctr").await.unwrap();
    assert_eq!(total, 333);
}

/// Error replies reach only their own command; the commands around them succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_inside_a_pipeline_stay_with_their_command() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(
        b"*3\r\n$3\r\nSET\r\n$1\r\ns\r\n$1\r\nx\r\n\
          *2\r\n$4\r\nINCR\r\n$1\r\ns\r\n\
          *3\r\n$5\r\nLPUSH\r\n$1\r\ns\r\n$1\r\ny\r\n\
          *2\r\n$3\r\nGET\r\n$1\r\ns\r\n\
          *1\r\n$7\r\nNOSUCHX\r\n\
          *2\r\n$4\r\nINCR\r\n$1\r\nn\r\n",
    )
    .await;
    assert_eq!(raw.reply_text().await, "+OK\r\n");
    assert_eq!(
        raw.reply_text().await,
        "-ERR value is not an integer or out of range\r\n"
    );
    assert!(raw.reply_text().await.starts_with("-WRONGTYPE"));
    assert_eq!(raw.reply_text().await, "$1\r\nx\r\n");
    assert!(raw
        .reply_text()
        .await
        .starts_with("-ERR unknown command 'NOSUCHX'"));
    assert_eq!(raw.reply_text().await, ":1\r\n");
}

/// A 32 MiB value written in small pieces arrives whole, and reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_32_mib_value_in_many_reads() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let value: Vec<u8> = (0..32 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let mut raw = proxy.raw().await;
    let mut cmd = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", value.len()).into_bytes();
    cmd.extend_from_slice(&value);
    cmd.extend_from_slice(b"\r\n");
    for piece in cmd.chunks(7919) {
        raw.send(piece).await;
    }
    assert_eq!(raw.reply_text().await, "+OK\r\n");
    let mut conn = proxy.conn().await;
    let back: Vec<u8> = conn.get("big").await.unwrap();
    assert!(back == value, "value changed through the proxy");
    let len: usize = conn.strlen("big").await.unwrap();
    assert_eq!(len, value.len());
}

/// Inline commands, as typed into telnet, work and keep their order with RESP ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(b"PING\r\nSET greeting \"hello world\"\r\n*2\r\n$3\r\nGET\r\n$8\r\ngreeting\r\n\r\necho 'a b'\nQUIT\r\n")
        .await;
    assert_eq!(raw.reply_text().await, "+PONG\r\n");
    assert_eq!(raw.reply_text().await, "+OK\r\n");
    assert_eq!(raw.reply_text().await, "$11\r\nhello world\r\n");
    assert_eq!(raw.reply_text().await, "$3\r\na b\r\n");
    assert_eq!(raw.reply_text().await, "+OK\r\n");
    assert!(raw.closed().await, "QUIT closes the connection");
}

/// Each client keeps its own database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_is_per_client() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut a = proxy.raw().await;
    let mut b = proxy.raw().await;
    a.send(b"SELECT 3\r\nSET k in-db-3\r\n").await;
    assert_eq!(a.reply_text().await, "+OK\r\n");
    assert_eq!(a.reply_text().await, "+OK\r\n");
    b.send(b"SET k in-db-0\r\nGET k\r\n").await;
    assert_eq!(b.reply_text().await, "+OK\r\n");
    assert_eq!(b.reply_text().await, "$7\r\nin-db-0\r\n");
    a.send(b"GET k\r\nSELECT 0\r\nGET k\r\n").await;
    assert_eq!(a.reply_text().await, "$7\r\nin-db-3\r\n");
    assert_eq!(a.reply_text().await, "+OK\r\n");
    assert_eq!(a.reply_text().await, "$7\r\nin-db-0\r\n");
    // Checked directly on Redis: the values really are in different databases.
    let mut direct =
        common::connect(&redis::Client::open(format!("{}/3", redis.url())).unwrap()).await;
    let v: String = direct.get("k").await.unwrap();
    assert_eq!(v, "in-db-3");
    // Redis's own wording for bad indexes.
    a.send(b"SELECT x\r\nSELECT 16\r\nSELECT -1\r\nSELECT\r\nSELECT 99999999999\r\nSELECT 01\r\n")
        .await;
    assert_eq!(
        a.reply_text().await,
        "-ERR value is not an integer or out of range\r\n"
    );
    assert_eq!(a.reply_text().await, "-ERR DB index is out of range\r\n");
    assert_eq!(a.reply_text().await, "-ERR DB index is out of range\r\n");
    assert_eq!(
        a.reply_text().await,
        "-ERR wrong number of arguments for 'select' command\r\n"
    );
    assert_eq!(
        a.reply_text().await,
        "-ERR value is out of range, value must between -2147483648 and 2147483647\r\n"
    );
    assert_eq!(
        a.reply_text().await,
        "-ERR value is not an integer or out of range\r\n"
    );
}

/// A client whose URL names a database (redis-rs sends SELECT on connect) stays in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_db_in_url() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut one =
        common::connect(&redis::Client::open(format!("{}/1", proxy.url())).unwrap()).await;
    let _: () = one.set("where", "db1").await.unwrap();
    let mut zero = proxy.conn().await;
    let v: Option<String> = zero.get("where").await.unwrap();
    assert_eq!(v, None);
    let v: String = one.get("where").await.unwrap();
    assert_eq!(v, "db1");
}

/// PING and ECHO, with and without arguments, answer as Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_echo() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n*1\r\n$4\r\nECHO\r\n").await;
    assert_eq!(raw.reply_text().await, "+PONG\r\n");
    assert_eq!(raw.reply_text().await, "$2\r\nhi\r\n");
    assert_eq!(raw.reply_text().await, "$4\r\na\r\nb\r\n");
    assert_eq!(
        raw.reply_text().await,
        "-ERR wrong number of arguments for 'echo' command\r\n"
    );
}
