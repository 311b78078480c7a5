//! A minimal HTTP/1.1 endpoint for Prometheus and health probes: `GET /metrics`,
//! `/healthz` (the process is up) and `/readyz` (the upstream is reachable and its
//! handshake done). Requests are small and few, so this reads one request head per
//! connection, answers and closes; no HTTP framework on board for three routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::upstream::Router;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Binds `addr` and serves the endpoint until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    router: Arc<Router>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    info!(metrics = %bound, "serving /metrics, /healthz and /readyz");
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let router = router.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            tokio::time::timeout(Duration::from_secs(10), answer(s, &router)).await
                        {
                            debug!(error = %e, "metrics request timed out");
                        }
                    });
                }
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok((bound, task))
}

async fn answer(mut s: TcpStream, router: &Router) {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/metrics") => {
            router.refresh_gauges();
            (
                "200 OK",
                "text/plain; version=0.0.4",
                router.metrics().render(),
            )
        }
        (b"GET", b"/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        (b"GET", b"/readyz") if router.is_ready() => {
            ("200 OK", "text/plain", "ready\n".to_string())
        }
        (b"GET", b"/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            format!("{}\n", router.unavailable()),
        ),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(response.as_bytes()).await;
    let _ = s.shutdown().await;
}
