//! A purpose-built faulty upstream: a TCP relay in front of a real redis-server that can
//! pass, delay, stall, cut a reply midway, or drop every connection, on command.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the relay does to traffic from Redis to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward as is.
    Pass,
    /// Wait this long before forwarding each chunk.
    Delay(Duration),
    /// Hold everything (Redis seems to hang).
    Stall,
    /// Forward half of the next chunk, then close that connection (a reply cut midway).
    CutNextReply,
}

/// The relay. Dropping it stops accepting (open connections end with their peers).
pub struct FaultyRelay {
    /// Where the proxy should connect.
    pub port: u16,
    fault: Arc<Mutex<Fault>>,
    /// Bumped by [`FaultyRelay::drop_all`]: pumps of older generations close.
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyRelay {
    /// Starts a relay to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("addr").port();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let generation = Arc::new(AtomicU64::new(0));
        let (f, g) = (fault.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let gen = g.load(Ordering::SeqCst);
                tokio::spawn(pump(cr, sw, None, g.clone(), gen));
                tokio::spawn(pump(sr, cw, Some(f.clone()), g.clone(), gen));
            }
        });
        Self {
            port,
            fault,
            generation,
            task,
        }
    }

    /// Sets the fault applied from now on.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// Closes every open connection (new ones are accepted).
    pub fn drop_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Option<Arc<Mutex<Fault>>>,
    generation: Arc<AtomicU64>,
    gen: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if generation.load(Ordering::SeqCst) != gen {
                    return;
                }
                continue;
            }
        };
        loop {
            if generation.load(Ordering::SeqCst) != gen {
                return;
            }
            let now = fault.as_ref().map_or(Fault::Pass, |f| {
                *f.lock().unwrap_or_else(|p| p.into_inner())
            });
            match now {
                Fault::Pass => break,
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Fault::Stall => tokio::time::sleep(Duration::from_millis(10)).await,
                Fault::CutNextReply => {
                    if let Some(f) = &fault {
                        *f.lock().unwrap_or_else(|p| p.into_inner()) = Fault::Pass;
                    }
                    let _ = to.write_all(&buf[..n.div_ceil(2)]).await;
                    return;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
