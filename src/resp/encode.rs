//! Replies the proxy writes itself, in the client's protocol (RESP2 or RESP3).

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol a client speaks, chosen with `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Proto {
    /// RESP2, the default.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

impl Proto {
    /// The `HELLO` protocol number.
    pub fn number(self) -> i64 {
        match self {
            Proto::Resp2 => 2,
            Proto::Resp3 => 3,
        }
    }
}

/// Builds one or more reply frames.
#[derive(Debug)]
pub struct ReplyBuf {
    out: BytesMut,
    proto: Proto,
}

impl ReplyBuf {
    /// An empty buffer for a client speaking `proto`.
    pub fn new(proto: Proto) -> Self {
        Self {
            out: BytesMut::with_capacity(64),
            proto,
        }
    }

    fn line(&mut self, prefix: u8, body: &[u8]) -> &mut Self {
        self.out.put_u8(prefix);
        self.out.put_slice(body);
        self.out.put_slice(b"\r\n");
        self
    }

    /// `+text`.
    pub fn simple(&mut self, text: &str) -> &mut Self {
        self.line(b'+', text.as_bytes())
    }

    /// `:n`.
    pub fn int(&mut self, n: i64) -> &mut Self {
        self.line(b':', n.to_string().as_bytes())
    }

    /// A bulk string.
    pub fn bulk(&mut self, b: &[u8]) -> &mut Self {
        self.line(b'$', b.len().to_string().as_bytes());
        self.out.put_slice(b);
        self.out.put_slice(b"\r\n");
        self
    }

    /// Null: `$-1` in RESP2, `_` in RESP3.
    pub fn nil(&mut self) -> &mut Self {
        match self.proto {
            Proto::Resp2 => self.line(b'$', b"-1"),
            Proto::Resp3 => self.line(b'_', b""),
        }
    }

    /// An array of `n` elements (write them next).
    pub fn array(&mut self, n: usize) -> &mut Self {
        self.line(b'*', n.to_string().as_bytes())
    }

    /// A map of `n` pairs: `%n` in RESP3, a flat array of `2n` in RESP2.
    pub fn map(&mut self, n: usize) -> &mut Self {
        match self.proto {
            Proto::Resp2 => self.array(2 * n),
            Proto::Resp3 => self.line(b'%', n.to_string().as_bytes()),
        }
    }

    /// An out-of-band push of `n` elements: `>n` in RESP3, an array in RESP2.
    pub fn push(&mut self, n: usize) -> &mut Self {
        match self.proto {
            Proto::Resp2 => self.array(n),
            Proto::Resp3 => self.line(b'>', n.to_string().as_bytes()),
        }
    }

    /// The frames built.
    pub fn finish(&mut self) -> Bytes {
        self.out.split().freeze()
    }
}

/// Encodes decoded frames (from an upstream `HELLO`) as an array in `proto`.
pub fn encode_frames(frames: &[redis_protocol::resp3::types::OwnedFrame], proto: Proto) -> Bytes {
    let mut r = ReplyBuf::new(proto);
    r.array(frames.len());
    for f in frames {
        encode_frame(&mut r, f);
    }
    r.finish()
}

fn encode_frame(r: &mut ReplyBuf, f: &redis_protocol::resp3::types::OwnedFrame) {
    use redis_protocol::resp3::types::OwnedFrame as F;
    match f {
        F::BlobString { data, .. }
        | F::SimpleString { data, .. }
        | F::VerbatimString { data, .. }
        | F::BigNumber { data, .. } => {
            r.bulk(data);
        }
        F::Number { data, .. } => {
            r.int(*data);
        }
        F::Boolean { data, .. } => {
            r.int(i64::from(*data));
        }
        F::Double { data, .. } => {
            r.bulk(data.to_string().as_bytes());
        }
        F::Array { data, .. } | F::Push { data, .. } => {
            r.array(data.len());
            for x in data {
                encode_frame(r, x);
            }
        }
        F::Set { data, .. } => {
            r.array(data.len());
            for x in data {
                encode_frame(r, x);
            }
        }
        F::Map { data, .. } => {
            r.map(data.len());
            for (k, v) in data {
                encode_frame(r, k);
                encode_frame(r, v);
            }
        }
        _ => {
            r.nil();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_both_protocols() {
        let mut r = ReplyBuf::new(Proto::Resp2);
        assert_eq!(
            &r.map(1).bulk(b"k").nil().finish()[..],
            b"*2\r\n$1\r\nk\r\n$-1\r\n"
        );
        let mut r = ReplyBuf::new(Proto::Resp3);
        assert_eq!(
            &r.map(1).bulk(b"k").nil().finish()[..],
            b"%1\r\n$1\r\nk\r\n_\r\n"
        );
        assert_eq!(
            &r.push(2).simple("a").int(-3).finish()[..],
            b">2\r\n+a\r\n:-3\r\n"
        );
    }
}
