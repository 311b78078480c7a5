//! Opening an upstream connection: TCP connect, then one pipelined handshake (AUTH,
//! SELECT, CLIENT SETNAME, CONFIG GET databases) before the connection joins a mux.

use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::{decode::decode, types::OwnedFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{UpstreamAddr, UpstreamError};
use crate::resp::encode_command;
use crate::resp::reply::ReplyScanner;

/// A connection that passed its handshake.
#[derive(Debug)]
pub struct Handshaken {
    /// The connection, authenticated and on its database.
    pub stream: TcpStream,
    /// Redis's `databases` setting, when `CONFIG GET` is allowed.
    pub databases: Option<u32>,
}

/// Connects to `addr`, logs in and selects `db`, all within `timeout`.
pub async fn connect(
    addr: &UpstreamAddr,
    db: u32,
    timeout: Duration,
) -> Result<Handshaken, UpstreamError> {
    tokio::time::timeout(timeout, connect_inner(addr, db))
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

async fn connect_inner(addr: &UpstreamAddr, db: u32) -> Result<Handshaken, UpstreamError> {
    let mut stream = TcpStream::connect(addr.socket_addr())
        .await
        .map_err(UpstreamError::Connect)?;
    stream.set_nodelay(true).map_err(UpstreamError::Connect)?;

    let mut steps: Vec<(&str, bytes::Bytes)> = Vec::new();
    match (&addr.user, &addr.password) {
        (Some(u), Some(p)) => steps.push(("AUTH", encode_command(&["AUTH", u, p]))),
        (None, Some(p)) => steps.push(("AUTH", encode_command(&["AUTH", p]))),
        _ => {}
    }
    if db != 0 {
        steps.push((
            "SELECT",
            encode_command(&["SELECT".to_string(), db.to_string()]),
        ));
    }
    steps.push((
        "CLIENT SETNAME",
        encode_command(&["CLIENT", "SETNAME", "respipe"]),
    ));
    steps.push((
        "CONFIG GET",
        encode_command(&["CONFIG", "GET", "databases"]),
    ));
    let mut out = Vec::new();
    for (_, cmd) in &steps {
        out.extend_from_slice(cmd);
    }
    stream.write_all(&out).await.map_err(UpstreamError::Io)?;

    let mut buf = BytesMut::with_capacity(512);
    let mut databases = None;
    for (name, _) in &steps {
        let reply = read_reply(&mut stream, &mut buf).await?;
        match (*name, reply) {
            // Optional steps: a Redis with CONFIG renamed away, or an old one, still works.
            ("CONFIG GET", OwnedFrame::Array(items)) => {
                databases = items.get(1).and_then(|f| match f {
                    OwnedFrame::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                    _ => None,
                });
            }
            ("CONFIG GET" | "CLIENT SETNAME", _) => {}
            (step, OwnedFrame::Error(msg)) => {
                return Err(UpstreamError::Handshake { step, msg });
            }
            _ => {}
        }
    }
    Ok(Handshaken { stream, databases })
}

async fn read_reply(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<OwnedFrame, UpstreamError> {
    let mut scanner = ReplyScanner::new();
    loop {
        if let Some(len) = scanner.scan(buf).map_err(UpstreamError::Protocol)? {
            let frame = buf.split_to(len);
            return match decode(&frame) {
                Ok(Some((f, _))) => Ok(f),
                // RESP3 types cannot appear on a fresh RESP2 connection.
                _ => Err(UpstreamError::Closed),
            };
        }
        if stream.read_buf(buf).await.map_err(UpstreamError::Io)? == 0 {
            return Err(UpstreamError::Closed);
        }
    }
}
