//! Property tests: the scanners split any valid stream exactly where `redis-protocol`
//! (an independent RESP implementation) does, however the stream is cut into reads.

use proptest::prelude::*;

use super::reply::ReplyScanner;
use super::request::{Request, RequestScanner};

fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6)
}

fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    super::encode_command(args).to_vec()
}

/// Feeds `stream` to the request scanner in pieces cut at `cuts`, the way reads arrive,
/// and returns the frame lengths found.
fn scan_requests(stream: &[u8], cuts: &[usize]) -> Vec<usize> {
    let mut scanner = RequestScanner::new();
    let (mut start, mut found) = (0, Vec::new());
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    ends.push(stream.len());
    ends.sort_unstable();
    for end in ends {
        while let Ok(Some(r)) = scanner.scan(&stream[start..end]) {
            let len = match r {
                Request::Multibulk { len, .. }
                | Request::Empty { len }
                | Request::Inline { len, .. } => len,
            };
            found.push(len);
            start += len;
        }
    }
    found
}

fn reply() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        "[a-zA-Z0-9 ]{0,20}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        "[a-zA-Z0-9 ]{0,20}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..50).prop_map(|b| {
            let mut v = format!("${}\r\n", b.len()).into_bytes();
            v.extend(b);
            v.extend(b"\r\n");
            v
        }),
        Just(b"$-1\r\n".to_vec()),
        Just(b"*-1\r\n".to_vec()),
    ];
    leaf.prop_recursive(3, 40, 6, |inner| {
        prop::collection::vec(inner, 0..6).prop_map(|items| {
            let mut v = format!("*{}\r\n", items.len()).into_bytes();
            for i in items {
                v.extend(i);
            }
            v
        })
    })
}

proptest! {
    #[test]
    fn commands_split_the_same_however_the_stream_is_cut(
        cmds in prop::collection::vec(command(), 1..20),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let frames: Vec<Vec<u8>> = cmds.iter().map(|c| encode(c)).collect();
        let stream: Vec<u8> = frames.concat();
        // The oracle agrees on every frame boundary.
        let mut at = 0;
        for f in &frames {
            let (_, len) = redis_protocol::resp2::decode::decode(&stream[at..]).unwrap().unwrap();
            prop_assert_eq!(len, f.len());
            at += len;
        }
        let found = scan_requests(&stream, &cuts);
        prop_assert_eq!(found, frames.iter().map(Vec::len).collect::<Vec<_>>());
    }

    #[test]
    fn replies_split_like_redis_protocol_however_the_stream_is_cut(
        replies in prop::collection::vec(reply(), 1..20),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let stream: Vec<u8> = replies.concat();
        let mut want = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let (_, len) = redis_protocol::resp2::decode::decode(&stream[at..]).unwrap().unwrap();
            want.push(len);
            at += len;
        }
        let mut scanner = ReplyScanner::new();
        let (mut start, mut found) = (0, Vec::new());
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        ends.push(stream.len());
        ends.sort_unstable();
        for end in ends {
            while let Ok(Some(len)) = scanner.scan(&stream[start..end]) {
                found.push(len);
                start += len;
            }
        }
        prop_assert_eq!(found, want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = RequestScanner::new().scan(&bytes);
        let _ = ReplyScanner::new().scan(&bytes);
    }
}
