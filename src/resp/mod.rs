//! RESP framing: where commands and replies begin and end, which commands may share a
//! connection, and the few replies the proxy writes itself.
//!
//! Nothing here decodes a frame into owned values: the data path forwards raw bytes.

pub mod command;
pub mod command_table;
pub mod encode;
pub mod inline;
pub mod reply;
pub mod request;

use bytes::Bytes;

/// A client sent bytes Redis would reject. The display text is Redis's own wording; the
/// session replies `-ERR <text>` and closes that client only.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ProtocolError {
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// Redis skips the two bytes after a bulk without looking; the proxy checks them, since
    /// a frame it misjudged would be forwarded onto a shared connection.
    #[error("Protocol error: expected '\\r\\n' after bulk argument")]
    MissingBulkCrlf,
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// Builds an error reply: `-{text}\r\n`, with any CR/LF in `text` replaced so the reply
/// stays one line.
pub fn error_reply(text: &str) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(b'-');
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// `+OK\r\n`.
pub const OK: Bytes = Bytes::from_static(b"+OK\r\n");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_is_one_line() {
        assert_eq!(&error_reply("ERR a\r\nb")[..], b"-ERR a  b\r\n");
    }
}

/// Encodes a command as a RESP array of bulk strings, with `redis-protocol`'s encoder.
///
/// Only for commands the proxy makes itself (handshakes, converted inline commands): the
/// data path forwards client bytes untouched.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    use redis_protocol::resp2::{encode::extend_encode, types::BytesFrame};
    let frame = BytesFrame::Array(
        args.iter()
            .map(|a| BytesFrame::BulkString(Bytes::copy_from_slice(a.as_ref())))
            .collect(),
    );
    let mut out = bytes::BytesMut::new();
    // Encoding arrays of bulk strings into a growable buffer cannot fail.
    let _ = extend_encode(&mut out, &frame, false);
    out.freeze()
}

/// Decodes one complete RESP2 frame into its arguments (bulk strings), for the few commands
/// the proxy interprets itself (`SELECT n`, `XREAD … BLOCK`). Not used for forwarding.
pub fn command_args(frame: &Bytes) -> Vec<Bytes> {
    use redis_protocol::resp2::{decode::decode_bytes, types::BytesFrame};
    match decode_bytes(frame) {
        Ok(Some((BytesFrame::Array(items), _))) => items
            .into_iter()
            .map(|f| match f {
                BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => b,
                _ => Bytes::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod encode_tests {
    use super::*;

    #[test]
    fn encode_and_decode_commands() {
        let cmd = encode_command(&["GET", "k"]);
        assert_eq!(&cmd[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(
            command_args(&cmd),
            vec![Bytes::from("GET"), Bytes::from("k")]
        );
    }
}

#[cfg(test)]
mod proptests;
