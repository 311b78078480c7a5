//! TLS to the upstream (`rediss://`) against `redis-server --tls-port`, with certificates
//! made by the test: verification on, a wrong CA refused, client certificates.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use redis::AsyncCommands;

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all PEM.
fn make_pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("respipe-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("respipe test CA {tag}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let write = |name: &str, body: String| std::fs::write(dir.join(name), body).unwrap();
    write("ca.pem", ca_cert.pem());
    for (name, sans) in [
        (
            "server",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
        ),
        ("client", vec!["client".to_string()]),
    ] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        write(&format!("{name}.pem"), cert.pem());
        write(&format!("{name}-key.pem"), key.serialize_pem());
    }
    Pki { dir }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// redis-server with TLS only, requiring client certificates when `mtls`.
fn tls_redis(pki: &Pki, mtls: bool) -> (Server, u16) {
    let port = common::free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--tls-cert-file")
        .arg(pki.file("server.pem"))
        .arg("--tls-key-file")
        .arg(pki.file("server-key.pem"))
        .arg("--tls-ca-cert-file")
        .arg(pki.file("ca.pem"))
        .args(["--tls-auth-clients", if mtls { "yes" } else { "no" }])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Server(child), port)
}

async fn proxy(
    url: String,
    ca: Option<&Path>,
    cert: Option<(&Path, &Path)>,
) -> respipe::server::Running {
    let config = respipe::config::Config::from_args(respipe::config::Args {
        listen: vec!["127.0.0.1:0".into()],
        upstream: Some(url),
        upstream_ca: ca.map(Path::to_path_buf),
        upstream_cert: cert.map(|c| c.0.to_path_buf()),
        upstream_key: cert.map(|c| c.1.to_path_buf()),
        ..Default::default()
    })
    .expect("config");
    respipe::server::start(&config).await.expect("start")
}

fn addr(r: &respipe::server::Running) -> std::net::SocketAddr {
    match &r.bound[0] {
        respipe::client::BoundAddr::Tcp(a) => *a,
        other => panic!("{other:?}"),
    }
}

async fn wait_ready(r: &respipe::server::Running) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if r.router.is_ready() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// rediss:// with the test CA: shared pipelines and dedicated connections work over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_upstream_verified_by_ca() {
    let pki = make_pki("ok");
    let (_redis, port) = tls_redis(&pki, false);
    let running = proxy(
        format!("rediss://localhost:{port}"),
        Some(&pki.file("ca.pem")),
        None,
    )
    .await;
    assert!(wait_ready(&running).await, "never connected over TLS");
    let client = redis::Client::open(format!("redis://{}", addr(&running))).unwrap();
    let mut c = common::connect(&client).await;
    let _: () = c.set("tls", "yes").await.unwrap();
    let v: String = c.get("tls").await.unwrap();
    assert_eq!(v, "yes");
    let (n,): (i64,) = redis::pipe()
        .atomic()
        .incr("ctr", 5)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 5, "a transaction on a dedicated TLS connection");
    let popped: Option<(String, String)> = c.blpop("none", 0.1).await.unwrap();
    assert_eq!(popped, None);
}

/// Verification is on: a certificate from another CA is refused, with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_refuses_an_unknown_ca() {
    let pki = make_pki("server");
    let other = make_pki("other");
    let (_redis, port) = tls_redis(&pki, false);
    let running = proxy(
        format!("rediss://localhost:{port}"),
        Some(&other.file("ca.pem")),
        None,
    )
    .await;
    assert!(
        !wait_ready(&running).await,
        "connected to a server it cannot verify"
    );
    let mut raw = common::RawConn::new(
        tokio::net::TcpStream::connect(addr(&running))
            .await
            .unwrap(),
    );
    raw.send(b"PING\r\n").await;
    let reply = raw.reply_text().await;
    assert!(
        reply.starts_with("-ERR upstream localhost:") && reply.contains("TLS"),
        "{reply}"
    );
}

/// A server that requires client certificates accepts the proxy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_client_certificate() {
    let pki = make_pki("mtls");
    let (_redis, port) = tls_redis(&pki, true);
    let running = proxy(
        format!("rediss://localhost:{port}"),
        Some(&pki.file("ca.pem")),
        Some((&pki.file("client.pem"), &pki.file("client-key.pem"))),
    )
    .await;
    assert!(wait_ready(&running).await, "mutual TLS failed");
    let mut raw = common::RawConn::new(
        tokio::net::TcpStream::connect(addr(&running))
            .await
            .unwrap(),
    );
    raw.send(b"PING\r\n").await;
    assert_eq!(raw.reply_text().await, "+PONG\r\n");
}

/// TLS on the listener (`--tls-cert`, `--tls-key`): redis-cli over TLS works, verified
/// against the test CA; a plaintext client gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_redis_cli() {
    let pki = make_pki("listener");
    let redis = common::RedisServer::start();
    let config = respipe::config::Config::from_args(respipe::config::Args {
        listen: vec!["127.0.0.1:0".into()],
        upstream: Some(redis.url()),
        tls_cert: Some(pki.file("server.pem")),
        tls_key: Some(pki.file("server-key.pem")),
        ..Default::default()
    })
    .expect("config");
    let running = respipe::server::start(&config).await.expect("start");
    assert!(wait_ready(&running).await);
    let port = addr(&running).port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(pki.file("ca.pem"))
            .args(["-h", "localhost", "-p", &port, "SET", "over", "tls"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "OK",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = common::connect(&redis.direct()).await;
    let v: String = c.get("over").await.unwrap();
    assert_eq!(v, "tls");
    // Plaintext RESP is not a TLS handshake: no reply, the connection closes.
    let mut plain = common::RawConn::new(
        tokio::net::TcpStream::connect(addr(&running))
            .await
            .unwrap(),
    );
    plain.send(b"PING\r\n").await;
    assert!(plain.reply().await.is_none_or(|r| !r.starts_with(b"+PONG")));
}
