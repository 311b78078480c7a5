//! Upstream-side framing: finds where each reply ends in an upstream read buffer.
//!
//! Replies are forwarded as raw bytes, so only boundaries matter. The scanner keeps a
//! stack of unfinished aggregates and resumes where it stopped: an `LRANGE` of a million
//! elements arriving over hundreds of reads is scanned once (a re-parse-from-start decoder
//! would be quadratic). Covers RESP2 and RESP3, because `HELLO 3` clients get RESP3.

use super::request::parse_i64;

/// Largest bulk reply accepted (Redis strings top out at 512 MiB by default; this leaves
/// room for a raised `proto-max-bulk-len` while bounding what a broken upstream can make the
/// proxy buffer).
pub const MAX_REPLY_BULK: usize = 4 << 30;

/// An upstream sent bytes that are not RESP: the connection can no longer be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed reply from upstream at byte {offset}: {what}")]
pub struct ReplyError {
    /// Offset within the reply where scanning failed.
    pub offset: usize,
    /// What was wrong.
    pub what: &'static str,
}

/// Resumable scanner for one reply at a time.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Bytes of the current reply already scanned.
    pos: usize,
    /// Elements still expected by each open aggregate, innermost last.
    open: Vec<u64>,
}

impl ReplyScanner {
    /// Creates a scanner positioned at the start of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans the reply at the start of `buf`; returns its length once it is complete.
    ///
    /// `Ok(None)`: incomplete; call again with the same start and more bytes.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ReplyError> {
        loop {
            let Some((children, next)) = self.element(buf)? else {
                return Ok(None);
            };
            self.pos = next;
            if children > 0 {
                self.open.push(children);
                continue;
            }
            // A scalar finished: close every aggregate it completes.
            loop {
                match self.open.last_mut() {
                    None => {
                        let len = self.pos;
                        self.pos = 0;
                        return Ok(Some(len));
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }

    /// Reads one element header (and body, for strings) at `self.pos`. Returns how many
    /// child elements it opens (0 for a scalar) and the offset after it.
    fn element(&self, buf: &[u8]) -> Result<Option<(u64, usize)>, ReplyError> {
        let at = self.pos;
        let Some(&kind) = buf.get(at) else {
            return Ok(None);
        };
        // The line ends at the first CR after the type byte (found by fuzzing: a type byte
        // that is itself '\r' must not be taken for the end of its own line).
        let Some(cr) = buf[at + 1..].iter().position(|&b| b == b'\r') else {
            return Ok(None);
        };
        let line_end = at + 1 + cr;
        if line_end + 1 >= buf.len() {
            return Ok(None);
        }
        if buf[line_end + 1] != b'\n' {
            return Err(self.err(at, "line not ended by CRLF"));
        }
        let after = line_end + 2;
        let line = &buf[at + 1..line_end];
        let number = || parse_i64(line).ok_or(self.err(at, "bad length"));
        match kind {
            // Simple string, error, integer, null, double, boolean, big number.
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some((0, after))),
            // Bulk string, bulk error, verbatim string.
            b'$' | b'!' | b'=' => {
                let n = number()?;
                if n < 0 {
                    return Ok(Some((0, after))); // $-1: RESP2 null
                }
                let end = usize::try_from(n)
                    .ok()
                    .filter(|&n| n <= MAX_REPLY_BULK)
                    .and_then(|n| after.checked_add(n))
                    .filter(|e| e.checked_add(2).is_some())
                    .ok_or(self.err(at, "bad length"))?;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(self.err(end, "bulk not ended by CRLF"));
                }
                Ok(Some((0, end + 2)))
            }
            // Array, set, push: n elements. Map: n pairs. Attribute: n pairs, then the
            // reply it annotates.
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = number()?;
                let children = match (kind, n) {
                    (_, n) if n < 0 => 0, // *-1: RESP2 null array
                    (b'%', n) => (n as u64)
                        .checked_mul(2)
                        .ok_or(self.err(at, "bad length"))?,
                    (b'|', n) => (n as u64)
                        .checked_mul(2)
                        .and_then(|c| c.checked_add(1))
                        .ok_or(self.err(at, "bad length"))?,
                    (_, n) => n as u64,
                };
                Ok(Some((children, after)))
            }
            _ => Err(self.err(at, "unknown type byte")),
        }
    }

    fn err(&self, offset: usize, what: &'static str) -> ReplyError {
        ReplyError { offset, what }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Option<usize> {
        ReplyScanner::new().scan(input).unwrap()
    }

    #[test]
    fn scalars() {
        assert_eq!(one(b"+OK\r\nnext"), Some(5));
        assert_eq!(one(b"-ERR x\r\n"), Some(8));
        assert_eq!(one(b":12\r\n"), Some(5));
        assert_eq!(one(b"$-1\r\n"), Some(5));
        assert_eq!(one(b"$3\r\nabc\r\n"), Some(9));
        assert_eq!(one(b"$0\r\n\r\n"), Some(6));
        assert_eq!(one(b"_\r\n"), Some(3));
        assert_eq!(one(b"$3\r\nab"), None);
    }

    #[test]
    fn aggregates() {
        assert_eq!(one(b"*0\r\n"), Some(4));
        assert_eq!(one(b"*-1\r\n"), Some(5));
        let nested = b"*2\r\n*1\r\n:1\r\n$1\r\na\r\n";
        assert_eq!(one(nested), Some(nested.len()));
        let map = b"%1\r\n+k\r\n*2\r\n:1\r\n:2\r\n";
        assert_eq!(one(map), Some(map.len()));
        let attr = b"|1\r\n+key\r\n+val\r\n:5\r\n";
        assert_eq!(one(attr), Some(attr.len()));
    }

    #[test]
    fn resumes_at_every_split() {
        let reply = b"*3\r\n$5\r\nhello\r\n*2\r\n:1\r\n+x\r\n%1\r\n+a\r\n$-1\r\n";
        for cut in 0..reply.len() {
            let mut s = ReplyScanner::new();
            assert_eq!(s.scan(&reply[..cut]).unwrap(), None, "cut {cut}");
            assert_eq!(s.scan(reply).unwrap(), Some(reply.len()), "cut {cut}");
        }
    }

    #[test]
    fn found_by_fuzzing() {
        // A type byte that is '\r' (its line would "end" before it starts).
        assert!(ReplyScanner::new().scan(b"%1\r\n\r\nk!._\r\n").is_err());
        // Lengths whose end overflows.
        assert!(ReplyScanner::new()
            .scan(b"$9223372036854775807\r\nx")
            .is_err());
        // A huge aggregate count is not an error by itself (it costs no memory): it waits.
        assert_eq!(
            ReplyScanner::new().scan(b"%9223372036854775807\r\n"),
            Ok(None)
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(ReplyScanner::new().scan(b"?what\r\n").is_err());
        assert!(ReplyScanner::new().scan(b"$3\r\nabcde\r\n").is_err());
        assert!(ReplyScanner::new().scan(b"*x\r\n").is_err());
    }
}
