//! Accepting clients on TCP and unix sockets.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::session::{serve, Peer, SessionEnv};

/// Where to accept clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `host:port`.
    Tcp(String),
    /// `unix:/path/to.sock`.
    Unix(PathBuf),
}

impl ListenAddr {
    /// Parses `host:port` or `unix:/path`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix socket path is empty".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if !s.contains(':') {
            return Err(format!(
                "listen address {s:?} needs a port (host:port) or unix:/path"
            ));
        }
        Ok(Self::Tcp(s.to_string()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => f.write_str(a),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An address actually bound (port 0 resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    /// A TCP listener.
    Tcp(SocketAddr),
    /// A unix socket listener.
    Unix(PathBuf),
}

/// Binds `addr` and spawns its accept loop.
pub async fn listen(
    addr: &ListenAddr,
    env: SessionEnv,
    ids: Arc<AtomicU64>,
    tls: Option<ListenTls>,
) -> std::io::Result<(BoundAddr, JoinHandle<()>)> {
    match addr {
        ListenAddr::Tcp(a) => {
            let l = TcpListener::bind(a).await?;
            let bound = l.local_addr()?;
            if !bound.ip().is_loopback() {
                warn!(listen = %bound, "listening on a non-loopback address: anyone who can reach it can use your Redis");
            }
            info!(listen = %bound, tls = tls.is_some(), "accepting clients");
            let task = tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, peer)) => {
                            let _ = s.set_nodelay(true);
                            let local = bound.to_string();
                            match &tls {
                                None => {
                                    accepted(
                                        s,
                                        TcpStream::into_split,
                                        &env,
                                        &ids,
                                        peer.to_string(),
                                        &local,
                                    )
                                    .await
                                }
                                // The TLS handshake runs in its own task: a slow or hostile
                                // client must not hold up the accept loop.
                                Some(acceptor) => {
                                    let (acceptor, env, ids) =
                                        (acceptor.clone(), env.clone(), ids.clone());
                                    tokio::spawn(async move {
                                        let handshake = tokio::time::timeout(
                                            TLS_HANDSHAKE_TIMEOUT,
                                            acceptor.0.accept(s),
                                        )
                                        .await;
                                        match handshake {
                                            Ok(Ok(tls)) => {
                                                accepted(
                                                    tls,
                                                    tokio::io::split,
                                                    &env,
                                                    &ids,
                                                    peer.to_string(),
                                                    &local,
                                                )
                                                .await
                                            }
                                            Ok(Err(e)) => {
                                                debug!(%peer, error = %e, "client TLS handshake failed")
                                            }
                                            Err(_) => {
                                                debug!(%peer, "client TLS handshake timed out")
                                            }
                                        }
                                    });
                                }
                            }
                        }
                        Err(e) => accept_failed(e).await,
                    }
                }
            });
            Ok((BoundAddr::Tcp(bound), task))
        }
        ListenAddr::Unix(path) => {
            remove_stale_socket(path);
            let l = UnixListener::bind(path)?;
            let local = path.display().to_string();
            info!(listen = %path.display(), "accepting clients on unix socket");
            let task = tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, _)) => {
                            accepted(
                                s,
                                UnixStream::into_split,
                                &env,
                                &ids,
                                "/unixsocket:0".into(),
                                &local,
                            )
                            .await;
                        }
                        Err(e) => accept_failed(e).await,
                    }
                }
            });
            Ok((BoundAddr::Unix(path.clone()), task))
        }
    }
}

/// A client has this long to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// TLS on the TCP listeners.
#[derive(Clone)]
pub struct ListenTls(pub tokio_rustls::TlsAcceptor);

impl fmt::Debug for ListenTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ListenTls")
    }
}

/// TLS for TCP listeners (`--tls-cert`, `--tls-key`): the certificate chain and key, PEM.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<ListenTls, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    Ok(ListenTls(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Serves one accepted client, or refuses it when `--max-clients` are connected already.
async fn accepted<S, R, W>(
    s: S,
    split: impl FnOnce(S) -> (R, W),
    env: &SessionEnv,
    ids: &AtomicU64,
    addr: String,
    local: &str,
) where
    S: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let id = ids.fetch_add(1, Ordering::Relaxed);
    if !admit(env) {
        refuse(s).await;
        return;
    }
    let (rd, wr) = split(s);
    tokio::spawn(serve(
        rd,
        wr,
        env.clone(),
        Peer {
            id,
            addr,
            local: local.to_string(),
        },
    ));
}

/// Counts a new client in, unless `--max-clients` are connected already.
fn admit(env: &SessionEnv) -> bool {
    let n = env.active.fetch_add(1, Ordering::AcqRel);
    if n >= env.limits.max_clients {
        env.active.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    true
}

/// Answers a client over the limit as Redis does, then closes it.
async fn refuse<S: tokio::io::AsyncWrite + Unpin>(mut s: S) {
    use tokio::io::AsyncWriteExt;
    warn!("refusing a client: max number of clients reached (--max-clients)");
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        s.write_all(b"-ERR max number of clients reached\r\n"),
    )
    .await;
}

/// Out of file descriptors and similar: pause instead of spinning.
async fn accept_failed(e: std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// A socket file left by a previous run would make `bind` fail; remove it, but never a
/// regular file.
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
}
