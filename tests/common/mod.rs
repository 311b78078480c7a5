//! Shared test harness: a real `redis-server` on a free port, and respipe in front of it,
//! in-process. Each test gets its own of both.
#![allow(dead_code)]

pub mod relay;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use respipe::client::BoundAddr;
use respipe::config::{Args, Config};
use respipe::server::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A throwaway `redis-server`, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Extra flags (persistence for the soak test).
    args: Vec<String>,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts redis-server on `port` and waits until it answers.
    pub fn start_on(port: u16) -> Self {
        let mut s = Self {
            port,
            child: None,
            args: Vec::new(),
        };
        s.spawn();
        s
    }

    /// A server whose acknowledged writes survive `kill -9` (AOF, fsync on every write,
    /// in a fresh directory): for tests about losing acknowledged writes.
    pub fn start_durable() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("respipe-durable-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let args = ["--appendonly", "yes", "--appendfsync", "always", "--dir"]
            .iter()
            .map(|a| a.to_string())
            .chain(std::iter::once(dir.display().to_string()))
            .collect();
        let mut s = Self {
            port,
            child: None,
            args,
        };
        s.spawn();
        s
    }

    /// Not a server: stands for something else listening on `port` (the faulty relay),
    /// so the proxy harness can point at it.
    pub fn fake(port: u16) -> Self {
        Self {
            port,
            child: None,
            args: Vec::new(),
        }
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not installed (the test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A redis-rs client talking to Redis directly (to check what the proxy did).
    pub fn direct(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// respipe running in this test's runtime.
pub struct Proxy {
    pub addr: SocketAddr,
    pub running: Running,
}

impl Proxy {
    /// Starts respipe in front of `redis` with default settings.
    pub async fn start(redis: &RedisServer) -> Self {
        Self::start_with(redis, |_| {}).await
    }

    /// Starts respipe with settings adjusted by `tweak`, and waits until it is connected.
    pub async fn start_with(redis: &RedisServer, tweak: impl FnOnce(&mut Args)) -> Self {
        // RESPIPE_TEST_LOG=debug shows the proxy's logs while debugging a test.
        if let Ok(filter) = std::env::var("RESPIPE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let mut args = Args {
            listen: vec!["127.0.0.1:0".into()],
            upstream: Some(redis.url()),
            ..Args::default()
        };
        tweak(&mut args);
        let config = Config::from_args(args).expect("config");
        let running = respipe::server::start(&config).await.expect("start");
        let addr = match running.bound.first() {
            Some(BoundAddr::Tcp(a)) => *a,
            other => panic!("expected a TCP listener first, got {other:?}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !running.router.is_ready() {
            assert!(Instant::now() < deadline, "proxy never connected upstream");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self { addr, running }
    }

    /// `redis://addr` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// A redis-rs client for the proxy.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// A redis-rs multiplexed async connection through the proxy.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        connect(&self.client()).await
    }

    /// A raw TCP connection to the proxy, for byte-level tests.
    pub async fn raw(&self) -> RawConn {
        RawConn {
            stream: TcpStream::connect(self.addr).await.expect("raw connect"),
            buf: bytes::BytesMut::new(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.running.stop();
    }
}

/// A multiplexed redis-rs connection with a response timeout long enough for a loaded
/// 2-core CI machine (redis-rs defaults to 500 ms).
pub async fn connect(client: &redis::Client) -> redis::aio::MultiplexedConnection {
    let cfg =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .expect("connect")
}

/// A raw client connection: send bytes, read whole replies.
pub struct RawConn {
    pub stream: TcpStream,
    buf: bytes::BytesMut,
}

impl RawConn {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: bytes::BytesMut::new(),
        }
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads one complete reply (raw bytes), or `None` if the connection closed first.
    /// Fails the test after 10 s.
    pub async fn reply(&mut self) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(len) = reply_len(&self.buf) {
                return Some(self.buf.split_to(len).to_vec());
            }
            // Read straight into the buffer: a stack array here would be copied into
            // every caller's future (debug builds overflow with many awaits).
            self.buf.reserve(64 * 1024);
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for a reply")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads one reply and returns it as text (lossy).
    pub async fn reply_text(&mut self) -> String {
        String::from_utf8_lossy(&self.reply().await.expect("connection closed")).into_owned()
    }

    /// True if the proxy closed the connection (EOF) within 10 s, with no further bytes.
    pub async fn closed(&mut self) -> bool {
        self.reply().await.is_none() && self.buf.is_empty()
    }
}

/// Length of the first complete RESP2 or RESP3 reply in `buf`, using redis-protocol
/// (independent of respipe's own scanner).
fn reply_len(buf: &[u8]) -> Option<usize> {
    // RESP3's decoder refuses RESP2 nulls ($-1, *-1); RESP2's refuses RESP3 types.
    match redis_protocol::resp2::decode::decode(buf) {
        Ok(Some((_, len))) => Some(len),
        _ => match redis_protocol::resp3::decode::complete::decode(buf) {
            Ok(Some((_, len))) => Some(len),
            _ => None,
        },
    }
}

/// `INFO stats` field `name` of a Redis, read directly.
pub async fn info_stat(redis: &RedisServer, name: &str) -> i64 {
    let mut c = connect(&redis.direct()).await;
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut c)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in INFO stats"))
}
