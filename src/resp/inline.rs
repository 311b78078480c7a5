//! Inline commands (`PING\r\n`, as typed into telnet), split the way Redis's
//! `sdssplitargs` splits them, so a quoted argument means the same through the proxy.
//!
//! `redis-protocol` rejects inline input, so the proxy handles it here and forwards the
//! command re-encoded as a RESP array. Inline commands are rare (telnet,
//! redis-benchmark's PING_INLINE), so this path may allocate.

use super::request::{Request, MAX_LINE};
use super::ProtocolError;

/// Scans an inline request at the start of `buf` (which does not start with `*`).
pub fn scan(buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(ProtocolError::TooBigInline);
        }
        return Ok(None);
    };
    if nl > MAX_LINE {
        return Err(ProtocolError::TooBigInline);
    }
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // sdssplitargs works on a C string: a NUL ends the line.
    let line = match line.iter().position(|&b| b == 0) {
        Some(nul) => &line[..nul],
        None => line,
    };
    let args = split_args(line).ok_or(ProtocolError::UnbalancedQuotes)?;
    let len = nl + 1;
    if args.is_empty() {
        return Ok(Some(Request::Empty { len }));
    }
    Ok(Some(Request::Inline { len, args }))
}

/// Redis's `sdssplitargs`: whitespace-separated words, "double quotes" with `\n \r \t \b
/// \a \\ \" \xHH` escapes, 'single quotes' with `\'`. A closing quote must be followed by
/// a space or the end. `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            let c = line.get(i).copied();
            if in_dq {
                match c {
                    None => return None,
                    Some(b'\\')
                        if line.get(i + 1) == Some(&b'x')
                            && hex(line.get(i + 2)).is_some()
                            && hex(line.get(i + 3)).is_some() =>
                    {
                        let hi = hex(line.get(i + 2)).unwrap_or(0);
                        let lo = hex(line.get(i + 3)).unwrap_or(0);
                        cur.push(hi * 16 + lo);
                        i += 3;
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        cur.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => cur.push(other),
                }
            } else if in_sq {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => cur.push(other),
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(other) => cur.push(other),
                }
            }
            i += 1;
        }
        args.push(cur);
    }
}

/// C's `isspace` in the "C" locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex(b: Option<&u8>) -> Option<u8> {
    let b = *b?;
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Option<Vec<String>> {
        split_args(s.as_bytes()).map(|v| {
            v.into_iter()
                .map(|a| String::from_utf8_lossy(&a).into_owned())
                .collect()
        })
    }

    #[test]
    fn splits_like_sdssplitargs() {
        assert_eq!(
            words("  set  k   v "),
            Some(vec!["set".into(), "k".into(), "v".into()])
        );
        assert_eq!(
            words(r#"set "a b" 'c d'"#),
            Some(vec!["set".into(), "a b".into(), "c d".into()])
        );
        assert_eq!(words(r#""\x41\n""#), Some(vec!["A\n".into()]));
        assert_eq!(words(r"'it\'s'"), Some(vec!["it's".into()]));
        assert_eq!(words(r#""unterminated"#), None);
        assert_eq!(words(r#""a"b"#), None);
        assert_eq!(words(""), Some(vec![]));
    }

    #[test]
    fn scans_lines() {
        assert_eq!(
            scan(b"PING\r\nrest").unwrap(),
            Some(Request::Inline {
                len: 6,
                args: vec![b"PING".to_vec()]
            })
        );
        assert_eq!(
            scan(b"ECHO hi\n").unwrap(),
            Some(Request::Inline {
                len: 8,
                args: vec![b"ECHO".to_vec(), b"hi".to_vec()]
            })
        );
        assert_eq!(scan(b"\r\n").unwrap(), Some(Request::Empty { len: 2 }));
        assert_eq!(scan(b"PIN").unwrap(), None);
        assert_eq!(
            scan(b"set \"a\n").unwrap_err().to_string(),
            "Protocol error: unbalanced quotes in request"
        );
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(
            scan(&long).unwrap_err().to_string(),
            "Protocol error: too big inline request"
        );
    }
}
