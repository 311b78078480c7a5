//! Fuzzes the client-side framer (multibulk and inline) and the reply scanner.
//!
//! The first byte picks read boundaries; the rest is the stream. For any input: no panic,
//! no frame longer than the input, and the framer finds the same frames whether the input
//! arrives at once or in pieces (it is resumable), as the proxy relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respipe::resp::reply::ReplyScanner;
use respipe::resp::request::{Request, RequestScanner};

fn frames(data: &[u8], step: usize) -> Vec<Result<usize, String>> {
    let mut scanner = RequestScanner::new();
    let (mut start, mut end, mut out) = (0, 0, Vec::new());
    while start < data.len() && out.len() < 10_000 {
        end = (end + step).min(data.len());
        loop {
            match scanner.scan(&data[start..end]) {
                Ok(Some(r)) => {
                    let len = match r {
                        Request::Multibulk { len, name, argc } => {
                            assert!(name.end <= len && argc >= 1);
                            len
                        }
                        Request::Empty { len } | Request::Inline { len, .. } => len,
                    };
                    assert!(len > 0 && start + len <= end, "frame beyond the input");
                    out.push(Ok(len));
                    start += len;
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
        if end == data.len() {
            break;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(first % 16) + 1;
    let whole = frames(rest, rest.len().max(1));
    let pieces = frames(rest, step);
    assert_eq!(whole, pieces, "framing depends on read boundaries");

    let mut replies = ReplyScanner::new();
    let mut at = 0;
    while at < rest.len() {
        match replies.scan(&rest[at..]) {
            Ok(Some(len)) => {
                assert!(len > 0 && at + len <= rest.len());
                at += len;
            }
            _ => break,
        }
    }
});
