//! Opening and preparing upstream connections: TCP connect, then one pipelined handshake
//! (AUTH, HELLO, SELECT, CLIENT SETNAME, CONFIG GET databases).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::decode::complete::decode;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::{UpstreamStream, UpstreamTls};
use super::{UpstreamAddr, UpstreamError};
use crate::resp::encode::Proto;
use crate::resp::encode_command;
use crate::resp::reply::ReplyScanner;

/// What Redis says about itself in its `HELLO` reply; the proxy answers clients' `HELLO`
/// with it.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    /// `redis_version`.
    pub version: String,
    /// `standalone`, `cluster` or `sentinel`.
    pub mode: String,
    /// `master` or `replica`.
    pub role: String,
    /// Loaded modules, as Redis described them.
    pub modules: Vec<OwnedFrame>,
}

/// A connection that passed its handshake.
#[derive(Debug)]
pub struct Handshaken {
    /// The connection, authenticated, in its protocol and on its database.
    pub stream: UpstreamStream,
    /// Redis's `databases` setting, when `CONFIG GET` is allowed.
    pub databases: Option<u32>,
    /// From `HELLO`, when Redis has it (6.0+).
    pub server: Option<ServerInfo>,
    /// The connection's own `CLIENT ID` on Redis.
    pub client_id: Option<i64>,
}

/// What a handshake sets up.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Database to `SELECT`.
    pub db: u32,
    /// Protocol to speak (`HELLO 3` for RESP3).
    pub proto: Proto,
    /// `RESET` first: for a pooled connection being returned.
    pub reset: bool,
    /// Log in (`AUTH`, `CLIENT SETNAME`) and learn about the server (`HELLO`,
    /// `CONFIG GET databases`): on a new connection, and again after `RESET`.
    pub login: bool,
}

impl Setup {
    /// A new connection for `db` speaking `proto`.
    pub fn new(db: u32, proto: Proto) -> Self {
        Self {
            db,
            proto,
            reset: false,
            login: true,
        }
    }
}

/// Connects to `addr` and runs the handshake, all within `timeout`.
pub async fn connect(
    addr: &UpstreamAddr,
    setup: Setup,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<Handshaken, UpstreamError> {
    tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(addr.socket_addr())
            .await
            .map_err(UpstreamError::Connect)?;
        tcp.set_nodelay(true).map_err(UpstreamError::Connect)?;
        let mut stream = match tls {
            Some(tls) => tls.wrap(tcp).await.map_err(UpstreamError::Tls)?,
            None => UpstreamStream::Tcp(tcp),
        };
        let (databases, server, client_id) = handshake(&mut stream, addr, setup).await?;
        Ok(Handshaken {
            stream,
            client_id,
            databases,
            server,
        })
    })
    .await
    .map_err(|_| UpstreamError::Timeout)?
}

/// Runs the handshake on an open connection (also used to clean a pooled connection:
/// `RESET` first, then log in and select again, since `RESET` undoes all of it).
pub async fn prepare(
    stream: &mut UpstreamStream,
    addr: &UpstreamAddr,
    setup: Setup,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    tokio::time::timeout(timeout, handshake(stream, addr, setup))
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map(|_| ())
}

type Step = (&'static str, Bytes, bool);

type Learnt = (Option<u32>, Option<ServerInfo>, Option<i64>);

async fn handshake(
    stream: &mut UpstreamStream,
    addr: &UpstreamAddr,
    setup: Setup,
) -> Result<Learnt, UpstreamError> {
    // (name, command, required)
    let mut steps: Vec<Step> = Vec::new();
    if setup.reset {
        steps.push(("RESET", encode_command(&["RESET"]), true));
    }
    if setup.login {
        match (&addr.user, &addr.password) {
            (Some(u), Some(p)) => steps.push(("AUTH", encode_command(&["AUTH", u, p]), true)),
            (None, Some(p)) => steps.push(("AUTH", encode_command(&["AUTH", p]), true)),
            _ => {}
        }
    }
    match setup.proto {
        Proto::Resp3 => steps.push(("HELLO", encode_command(&["HELLO", "3"]), true)),
        // Optional on RESP2: only for the server description (Redis < 6 has no HELLO).
        Proto::Resp2 if setup.login => steps.push(("HELLO", encode_command(&["HELLO"]), false)),
        Proto::Resp2 => {}
    }
    if setup.db != 0 {
        steps.push((
            "SELECT",
            encode_command(&["SELECT".to_string(), setup.db.to_string()]),
            true,
        ));
    }
    if setup.login {
        steps.push((
            "CLIENT SETNAME",
            encode_command(&["CLIENT", "SETNAME", "respipe"]),
            false,
        ));
    }
    if setup.login && !setup.reset {
        steps.push((
            "CONFIG GET",
            encode_command(&["CONFIG", "GET", "databases"]),
            false,
        ));
        steps.push(("CLIENT ID", encode_command(&["CLIENT", "ID"]), false));
    }
    if steps.is_empty() {
        return Ok((None, None, None));
    }
    let out: Vec<u8> = steps
        .iter()
        .flat_map(|(_, c, _)| c.iter().copied())
        .collect();
    stream.write_all(&out).await.map_err(UpstreamError::Io)?;

    let mut buf = BytesMut::with_capacity(1024);
    let (mut databases, mut server, mut client_id) = (None, None, None);
    for (step, _, required) in &steps {
        let reply = read_reply(stream, &mut buf).await?;
        if let Some(msg) = error_text(&reply) {
            if *required {
                return Err(UpstreamError::Handshake { step, msg });
            }
            continue;
        }
        // A reused connection must answer RESET first and with nothing before it: a
        // message or push still queued from its last user means it was not clean.
        if *step == "RESET"
            && !matches!(&reply, OwnedFrame::SimpleString { data, .. } if data == b"RESET")
        {
            return Err(UpstreamError::Handshake {
                step,
                msg: "unexpected reply before +RESET".into(),
            });
        }
        match *step {
            "HELLO" => server = Some(server_info(&reply)),
            "CLIENT ID" => client_id = text(&reply).and_then(|t| t.parse().ok()),
            "CONFIG GET" => {
                databases = pairs(&reply)
                    .into_iter()
                    .find(|(k, _)| k == "databases")
                    .and_then(|(_, v)| text(v)?.parse().ok())
            }
            _ => {}
        }
    }
    Ok((databases, server, client_id))
}

async fn read_reply(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
) -> Result<OwnedFrame, UpstreamError> {
    let mut scanner = ReplyScanner::new();
    loop {
        if let Some(len) = scanner.scan(buf).map_err(UpstreamError::Protocol)? {
            let frame = buf.split_to(len);
            return match decode(&frame) {
                Ok(Some((f, _))) => Ok(f),
                _ => Err(UpstreamError::Closed),
            };
        }
        if stream.read_buf(buf).await.map_err(UpstreamError::Io)? == 0 {
            return Err(UpstreamError::Closed);
        }
    }
}

fn error_text(f: &OwnedFrame) -> Option<String> {
    match f {
        OwnedFrame::SimpleError { data, .. } => Some(data.clone()),
        OwnedFrame::BlobError { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

/// A string-like frame's text.
pub fn text(f: &OwnedFrame) -> Option<String> {
    match f {
        OwnedFrame::BlobString { data, .. }
        | OwnedFrame::SimpleString { data, .. }
        | OwnedFrame::VerbatimString { data, .. } => {
            Some(String::from_utf8_lossy(data).into_owned())
        }
        OwnedFrame::Number { data, .. } => Some(data.to_string()),
        _ => None,
    }
}

/// Key/value pairs of a RESP3 map or a RESP2 flat array.
fn pairs(f: &OwnedFrame) -> Vec<(String, &OwnedFrame)> {
    match f {
        OwnedFrame::Map { data, .. } => data
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v)))
            .collect(),
        OwnedFrame::Array { data, .. } => data
            .chunks(2)
            .filter_map(|p| match p {
                [k, v] => Some((text(k)?, v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn server_info(reply: &OwnedFrame) -> ServerInfo {
    let mut info = ServerInfo::default();
    for (k, v) in pairs(reply) {
        match k.as_str() {
            "version" => info.version = text(v).unwrap_or_default(),
            "mode" => info.mode = text(v).unwrap_or_default(),
            "role" => info.role = text(v).unwrap_or_default(),
            "modules" => {
                if let OwnedFrame::Array { data, .. } = v {
                    info.modules = data.clone();
                }
            }
            _ => {}
        }
    }
    info
}
