//! Commands the proxy answers from the session's own state, as Redis would answer them
//! for that client's connection: SELECT, HELLO, AUTH, RESET, QUIT and the per-connection
//! CLIENT subcommands.

use bytes::Bytes;

use super::auth::NOAUTH;
use super::session::{Flow, ReplyMode, Session};
use crate::resp::command::Ctx;
use crate::resp::encode::{Proto, ReplyBuf};
use crate::resp::{error_reply, OK};
use crate::upstream::connect::ServerInfo;

fn arity(name: &str) -> Bytes {
    error_reply(&format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// Redis refuses names with spaces, newlines or other special characters.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

impl Session {
    /// Handles a context command in shared mode (and the ones that stay local in a
    /// leased mode).
    pub(crate) async fn context(&mut self, c: Ctx, args: &[Bytes]) -> Flow {
        let reply = match c {
            Ctx::Quit => {
                self.local_close(OK);
                return Flow::Close;
            }
            Ctx::Select => match args {
                [_, db] => match self.router.check_db(db) {
                    Ok(db) => {
                        if self.router.moves(&self.route, db, self.proto()) {
                            self.sink.wait_idle().await;
                        }
                        let _ = self
                            .router
                            .select(&mut self.route, db.to_string().as_bytes());
                        OK
                    }
                    Err(e) => error_reply(e),
                },
                _ => arity("select"),
            },
            Ctx::Auth => self.auth_command(args),
            Ctx::Hello => self.hello(args).await,
            Ctx::Reset => {
                self.reset().await;
                Bytes::from_static(b"+RESET\r\n")
            }
            Ctx::ClientSetName => match args {
                [_, _, name] if valid_name(name) || name.is_empty() => {
                    self.name = (!name.is_empty()).then(|| name.clone());
                    OK
                }
                [_, _, _] => error_reply(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                ),
                _ => arity("client|setname"),
            },
            Ctx::ClientGetName => match args {
                [_, _] => {
                    let mut r = ReplyBuf::new(self.proto());
                    match &self.name {
                        Some(n) => r.bulk(n),
                        None => r.nil(),
                    };
                    r.finish()
                }
                _ => arity("client|getname"),
            },
            Ctx::ClientId => match args {
                [_, _] => ReplyBuf::new(self.proto())
                    .int(self.peer.id as i64)
                    .finish(),
                _ => arity("client|id"),
            },
            Ctx::ClientInfo => match args {
                [_, _] => ReplyBuf::new(self.proto())
                    .bulk(self.client_info().as_bytes())
                    .finish(),
                _ => arity("client|info"),
            },
            Ctx::ClientSetInfo => match args {
                [_, _, attr, value] => {
                    if !valid_name(value) && !value.is_empty() {
                        error_reply(&format!(
                            "ERR {} cannot contain spaces, newlines or special characters.",
                            String::from_utf8_lossy(attr).to_ascii_lowercase()
                        ))
                    } else if attr.eq_ignore_ascii_case(b"lib-name") {
                        self.lib_name = Some(value.clone());
                        OK
                    } else if attr.eq_ignore_ascii_case(b"lib-ver") {
                        self.lib_ver = Some(value.clone());
                        OK
                    } else {
                        error_reply(&format!(
                            "ERR Unrecognized option '{}'",
                            String::from_utf8_lossy(attr)
                        ))
                    }
                }
                _ => arity("client|setinfo"),
            },
            Ctx::ClientReply => match args {
                [_, _, mode] if mode.eq_ignore_ascii_case(b"on") => {
                    self.reply = ReplyMode::On;
                    self.silent = false;
                    OK
                }
                [_, _, mode] if mode.eq_ignore_ascii_case(b"off") => {
                    self.reply = ReplyMode::Off;
                    self.silent = true;
                    Bytes::new()
                }
                [_, _, mode] if mode.eq_ignore_ascii_case(b"skip") => {
                    self.reply = ReplyMode::Skip;
                    self.silent = true;
                    Bytes::new()
                }
                [_, _, _] => error_reply("ERR syntax error"),
                _ => arity("client|reply"),
            },
            Ctx::Respipe => match args.get(1) {
                Some(sub)
                    if args.len() == 2
                        && (sub.eq_ignore_ascii_case(b"info")
                            || sub.eq_ignore_ascii_case(b"stats")) =>
                {
                    let text = crate::admin::info::render(&self.router, env!("CARGO_PKG_VERSION"));
                    ReplyBuf::new(self.proto()).bulk(text.as_bytes()).finish()
                }
                Some(sub) => error_reply(&format!(
                    "ERR unknown subcommand '{}'. Try RESPIPE INFO.",
                    String::from_utf8_lossy(sub)
                )),
                None => arity("respipe"),
            },
            Ctx::ClientNoEvict => match args {
                [_, _, v] if v.eq_ignore_ascii_case(b"on") || v.eq_ignore_ascii_case(b"off") => OK,
                [_, _, _] => error_reply("ERR syntax error"),
                _ => arity(&format!(
                    "client|{}",
                    String::from_utf8_lossy(&args[1]).to_ascii_lowercase()
                )),
            },
        };
        self.local(reply);
        Flow::Continue
    }

    fn auth_command(&mut self, args: &[Bytes]) -> Bytes {
        let result = match args {
            [_, pass] => self.auth.check(None, pass),
            [_, user, pass] => self.auth.check(Some(user), pass),
            [_] => return arity("auth"),
            _ => return error_reply("ERR syntax error"),
        };
        match result {
            Ok(()) => {
                self.authed = true;
                OK
            }
            Err(e) => {
                self.sink.metrics().error(crate::admin::ErrorKind::Auth, 1);
                error_reply(e)
            }
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`, answered by the proxy from what
    /// the upstream said in its own `HELLO`, with the session's id and protocol.
    async fn hello(&mut self, args: &[Bytes]) -> Bytes {
        let mut proto = self.proto();
        if let Some(v) = args.get(1) {
            proto = match crate::resp::request::parse_i64(v) {
                Some(2) => Proto::Resp2,
                Some(3) => Proto::Resp3,
                Some(_) => return error_reply("NOPROTO unsupported protocol version"),
                None => {
                    return error_reply("ERR Protocol version is not an integer or out of range")
                }
            };
        }
        let (mut login, mut setname) = (None, None);
        let mut i = 2;
        while i < args.len() {
            let opt = &args[i];
            if opt.eq_ignore_ascii_case(b"auth") && i + 2 < args.len() {
                login = Some((args[i + 1].clone(), args[i + 2].clone()));
                i += 3;
            } else if opt.eq_ignore_ascii_case(b"setname") && i + 1 < args.len() {
                setname = Some(args[i + 1].clone());
                i += 2;
            } else {
                return error_reply(&format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                ));
            }
        }
        if let Some((user, pass)) = &login {
            if let Err(e) = self.auth.check(Some(user), pass) {
                return error_reply(e);
            }
        }
        if !self.authed && login.is_none() {
            return error_reply(&format!(
                "{} HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                NOAUTH.split(' ').next().unwrap_or("NOAUTH")
            ));
        }
        if let Some(name) = &setname {
            if !valid_name(name) {
                return error_reply(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
        }
        let server = self.router.server().unwrap_or_default();
        if proto == Proto::Resp3
            && server
                .version
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
                .unwrap_or(6)
                < 6
        {
            return error_reply("NOPROTO unsupported protocol version");
        }
        if login.is_some() {
            self.authed = true;
        }
        if let Some(name) = setname {
            self.name = (!name.is_empty()).then_some(name);
        }
        if proto != self.proto() && self.leased.is_some() {
            return error_reply(
                "ERR respipe: HELLO cannot change the protocol during a transaction, WATCH or CLIENT TRACKING",
            );
        }
        if proto != self.proto() {
            self.sink.wait_idle().await;
            self.router.set_proto(&mut self.route, proto);
        }
        hello_reply(proto, self.peer.id, &server)
    }

    /// `RESET`: back to a fresh connection's state; any dedicated connection is given up.
    pub(crate) async fn reset(&mut self) {
        self.sink.wait_idle().await;
        self.drop_lease().await;
        let mut fresh = self.router.new_route(self.peer.id as usize);
        std::mem::swap(&mut self.route, &mut fresh);
        self.name = None;
        self.reply = ReplyMode::On;
        self.authed = !self.auth.required();
    }

    fn client_info(&self) -> String {
        let text = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let (flags, multi, sub) = match &self.leased {
            Some(l) => l.info_flags(),
            None => ("N", -1, 0),
        };
        format!(
            "id={} addr={} laddr={} fd=-1 name={} age={} idle=0 flags={} db={} sub={} psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.peer.id,
            self.peer.addr,
            self.peer.local,
            text(&self.name),
            self.started.elapsed().as_secs(),
            flags,
            self.route.db(),
            sub,
            multi,
            self.proto().number(),
            text(&self.lib_name),
            text(&self.lib_ver),
        )
    }
}

/// The `HELLO` reply: a map in RESP3, a flat array in RESP2.
fn hello_reply(proto: Proto, id: u64, server: &ServerInfo) -> Bytes {
    let mut r = ReplyBuf::new(proto);
    r.map(7);
    r.bulk(b"server").bulk(b"redis");
    r.bulk(b"version").bulk(server.version.as_bytes());
    r.bulk(b"proto").int(proto.number());
    r.bulk(b"id").int(id as i64);
    r.bulk(b"mode").bulk(if server.mode.is_empty() {
        b"standalone"
    } else {
        server.mode.as_bytes()
    });
    r.bulk(b"role").bulk(if server.role.is_empty() {
        b"master"
    } else {
        server.role.as_bytes()
    });
    r.bulk(b"modules");
    let mut out = r.finish().to_vec();
    out.extend_from_slice(&crate::resp::encode::encode_frames(&server.modules, proto));
    Bytes::from(out)
}
