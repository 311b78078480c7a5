//! The byte stream to Redis: plain TCP, or TLS (`rediss://`) with rustls.
//!
//! Plain TCP keeps tokio's lock-free owned halves; only TLS pays for `tokio::io::split`.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// An upstream connection.
#[derive(Debug)]
pub enum UpstreamStream {
    /// `redis://`.
    Tcp(TcpStream),
    /// `rediss://`.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Reading half of an [`UpstreamStream`].
#[derive(Debug)]
pub enum UpRead {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// TLS.
    Tls(ReadHalf<Box<TlsStream<TcpStream>>>),
}

/// Writing half of an [`UpstreamStream`].
#[derive(Debug)]
pub enum UpWrite {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// TLS.
    Tls(WriteHalf<Box<TlsStream<TcpStream>>>),
}

impl UpstreamStream {
    /// Splits for a reader task and a writer.
    pub fn split(self) -> (UpRead, UpWrite) {
        match self {
            Self::Tcp(s) => {
                let (r, w) = s.into_split();
                (UpRead::Tcp(r), UpWrite::Tcp(w))
            }
            Self::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (UpRead::Tls(r), UpWrite::Tls(w))
            }
        }
    }

    /// Puts the halves of one connection back together.
    pub fn reunite(r: UpRead, w: UpWrite) -> Option<Self> {
        match (r, w) {
            (UpRead::Tcp(r), UpWrite::Tcp(w)) => r.reunite(w).ok().map(Self::Tcp),
            (UpRead::Tls(r), UpWrite::Tls(w)) if r.is_pair_of(&w) => Some(Self::Tls(r.unsplit(w))),
            _ => None,
        }
    }
}

macro_rules! delegate_read {
    ($t:ty, $($v:ident),+) => {
        impl AsyncRead for $t {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty, $($v:ident),+) => {
        impl AsyncWrite for $t {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_flush(cx),)+
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_read!(UpstreamStream, Tcp, Tls);
delegate_write!(UpstreamStream, Tcp, Tls);
delegate_read!(UpRead, Tcp, Tls);
delegate_write!(UpWrite, Tcp, Tls);

/// How to open TLS to the upstream.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamTls({:?})", self.name)
    }
}

impl UpstreamTls {
    /// Server verification on, always: against `ca` (PEM) when given, else the Mozilla
    /// roots. Optional client certificate and key (PEM). `host` is the SNI and the name
    /// the certificate must match.
    pub fn new(
        host: &str,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                for c in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?
                {
                    let c = c.map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        let config = match (cert, key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("--upstream-cert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("--upstream-key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("--upstream-cert and --upstream-key go together".into()),
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("TLS server name {host:?}: {e}"))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// Runs the TLS handshake over `tcp`.
    pub async fn wrap(&self, tcp: TcpStream) -> io::Result<UpstreamStream> {
        let tls = self.connector.connect(self.name.clone(), tcp).await?;
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }
}
