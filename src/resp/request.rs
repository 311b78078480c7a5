//! Client-side framing: finds where each command ends in a client's read buffer.
//!
//! The data path forwards a command's raw bytes, so framing only has to find boundaries,
//! the command name and the argument count, and reject what Redis would reject, with Redis's
//! own wording. The scanner is resumable: a 32 MiB value arriving in 500 reads is scanned
//! once, not 500 times, and it never allocates for a multibulk command.
//!
//! It must accept a *subset* of what Redis accepts and split frames exactly where Redis
//! would: the raw bytes go to a connection shared with other clients, and a frame Redis
//! parsed differently would desynchronise everyone on it.

use std::ops::Range;

use super::inline;
use super::ProtocolError;

/// Longest header line (`*N` / `$N`) or inline command Redis buffers before giving up
/// (`PROTO_INLINE_MAX_SIZE`).
pub const MAX_LINE: usize = 64 * 1024;
/// Redis's `proto-max-bulk-len` default: the largest argument a client may send.
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Redis rejects a multibulk count above `INT_MAX`.
pub const MAX_MULTIBULK_LEN: i64 = i32::MAX as i64;

/// One complete request at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A RESP array of bulk strings, `len` bytes long; `name` is where its first argument
    /// (the command name) lies within those bytes.
    Multibulk {
        len: usize,
        name: Range<usize>,
        argc: usize,
    },
    /// `len` bytes that Redis reads and ignores: `*0`, `*-1`, an empty inline line.
    Empty { len: usize },
    /// An inline command (`PING\r\n`), already split into its arguments.
    Inline { len: usize, args: Vec<Vec<u8>> },
}

/// Scan progress inside one multibulk frame that has not fully arrived yet.
#[derive(Debug, Default, Clone)]
struct Partial {
    /// Bytes of the frame already scanned.
    pos: usize,
    /// Arguments still to scan.
    remaining: usize,
    argc: usize,
    name: Option<Range<usize>>,
}

/// Resumable scanner for the requests a client sends.
#[derive(Debug, Default)]
pub struct RequestScanner {
    partial: Option<Partial>,
}

impl RequestScanner {
    /// Creates a scanner positioned at the start of a frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans the request at the start of `buf`.
    ///
    /// Returns `Ok(None)` when the request is incomplete; call again with the same frame
    /// start and more bytes. Scanning resumes where it stopped.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
        if self.partial.is_none() {
            match buf.first() {
                None => return Ok(None),
                Some(b'*') => {}
                Some(_) => return inline::scan(buf),
            }
            let Some((count, after)) = line_number(buf, 1, ProtocolError::TooBigMultibulkCount)?
            else {
                return Ok(None);
            };
            let count = count.ok_or(ProtocolError::InvalidMultibulkLength)?;
            if count > MAX_MULTIBULK_LEN {
                return Err(ProtocolError::InvalidMultibulkLength);
            }
            if count <= 0 {
                return Ok(Some(Request::Empty { len: after }));
            }
            self.partial = Some(Partial {
                pos: after,
                remaining: count as usize,
                argc: count as usize,
                name: None,
            });
        }
        let Some(p) = self.partial.as_mut() else {
            return Ok(None);
        };
        while p.remaining > 0 {
            let Some(&first) = buf.get(p.pos) else {
                return Ok(None);
            };
            // Redis only looks at the type byte once the whole line is there.
            let Some((len, after)) = line_number(buf, p.pos + 1, ProtocolError::TooBigBulkCount)?
            else {
                return Ok(None);
            };
            if first != b'$' {
                self.partial = None;
                return Err(ProtocolError::ExpectedDollar(first));
            }
            let len = match len {
                Some(n) if (0..=MAX_BULK_LEN as i64).contains(&n) => n as usize,
                _ => {
                    self.partial = None;
                    return Err(ProtocolError::InvalidBulkLength);
                }
            };
            let end = after + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                self.partial = None;
                return Err(ProtocolError::MissingBulkCrlf);
            }
            if p.name.is_none() {
                p.name = Some(after..end);
            }
            p.pos = end + 2;
            p.remaining -= 1;
        }
        let done = self.partial.take().unwrap_or_default();
        Ok(Some(Request::Multibulk {
            len: done.pos,
            name: done.name.unwrap_or(0..0),
            argc: done.argc,
        }))
    }

    /// Bytes the frame being scanned needs in total, when a bulk header announced more than
    /// is buffered: lets the caller reserve once for a large value instead of growing often.
    pub fn wanted(&self, buf: &[u8]) -> Option<usize> {
        let p = self.partial.as_ref()?;
        if buf.get(p.pos) != Some(&b'$') {
            return None;
        }
        let (len, after) = line_number(buf, p.pos + 1, ProtocolError::TooBigBulkCount)
            .ok()
            .flatten()?;
        let len = usize::try_from(len?).ok()?;
        Some(after + len.min(MAX_BULK_LEN) + 2)
    }
}

/// Reads a decimal line starting at `start` and ending at the first `\r` (followed by
/// `\n`), as Redis's `string2ll` would. Returns the number (None when Redis would reject
/// it) and the offset after the CRLF, or `Ok(None)` when the line is incomplete.
fn line_number(
    buf: &[u8],
    start: usize,
    too_long: ProtocolError,
) -> Result<Option<(Option<i64>, usize)>, ProtocolError> {
    let rest = buf.get(start..).unwrap_or_default();
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        if rest.len() > MAX_LINE {
            return Err(too_long);
        }
        return Ok(None);
    };
    if cr > MAX_LINE {
        return Err(too_long);
    }
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((parse_i64(&rest[..cr]), start + cr + 2))),
        // Redis skips the byte after '\r' unchecked; refusing is stricter and safe.
        Some(_) => Ok(Some((None, start + cr + 2))),
    }
}

/// Strict decimal parse matching Redis's `string2ll`: optional '-', no '+', no leading
/// zeros, no spaces, fits in i64.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] => return if neg { None } else { Some(0) },
        [b'0', ..] => return None,
        _ => {}
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        v = if neg {
            v.checked_mul(10)?.checked_sub(digit)?
        } else {
            v.checked_mul(10)?.checked_add(digit)?
        };
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8]) -> Result<Option<Request>, ProtocolError> {
        RequestScanner::new().scan(input)
    }

    #[test]
    fn complete_command() {
        let r = scan_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nextra").unwrap();
        assert_eq!(
            r,
            Some(Request::Multibulk {
                len: 20,
                name: 8..11,
                argc: 2
            })
        );
    }

    #[test]
    fn resumes_byte_by_byte() {
        let cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        let mut s = RequestScanner::new();
        for i in 0..cmd.len() {
            assert_eq!(s.scan(&cmd[..i]).unwrap(), None, "prefix {i}");
        }
        assert!(matches!(
            s.scan(cmd).unwrap(),
            Some(Request::Multibulk { len, argc: 3, .. }) if len == cmd.len()
        ));
    }

    #[test]
    fn empty_and_negative_counts_are_skipped() {
        assert_eq!(
            scan_all(b"*0\r\n").unwrap(),
            Some(Request::Empty { len: 4 })
        );
        assert_eq!(
            scan_all(b"*-1\r\n").unwrap(),
            Some(Request::Empty { len: 5 })
        );
    }

    #[test]
    fn redis_wording_for_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"*x\r\n", "Protocol error: invalid multibulk length"),
            (b"*01\r\n", "Protocol error: invalid multibulk length"),
            (
                b"*4294967296\r\n",
                "Protocol error: invalid multibulk length",
            ),
            (b"*1\r\n:1\r\n", "Protocol error: expected '$', got ':'"),
            (b"*1\r\n*1\r\n", "Protocol error: expected '$', got '*'"),
            (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
            (
                b"*1\r\n$536870913\r\n",
                "Protocol error: invalid bulk length",
            ),
            (
                b"*1\r\n$1\r\nabc",
                "Protocol error: expected '\\r\\n' after bulk argument",
            ),
        ];
        for (input, want) in cases {
            let err = scan_all(input).unwrap_err();
            assert_eq!(
                err.to_string(),
                *want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn unterminated_header_is_bounded() {
        let mut input = b"*".to_vec();
        input.extend(std::iter::repeat_n(b'1', MAX_LINE + 1));
        assert_eq!(
            scan_all(&input).unwrap_err().to_string(),
            "Protocol error: too big mbulk count string"
        );
    }

    #[test]
    fn wanted_reports_large_bulk() {
        let mut s = RequestScanner::new();
        let head = b"*2\r\n$3\r\nSET\r\n$1000000\r\nab";
        assert_eq!(s.scan(head).unwrap(), None);
        assert_eq!(s.wanted(head), Some(23 + 1_000_000 + 2));
    }

    #[test]
    fn parse_i64_matches_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"+1",
            b"01",
            b" 1",
            b"1a",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
