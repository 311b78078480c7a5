//! The command table: which commands may share a pipelined upstream connection.
//!
//! One table, as data. A command absent from it is stateless and shared (that covers
//! module commands and commands newer than this table). The entries are the exceptions:
//! commands that change or depend on per-connection state, which a connection shared by
//! many clients cannot hold.

/// How the proxy treats a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandClass {
    /// Stateless: merged into the shared pipelines.
    Shared,
    /// `SELECT`: changes the session's database, which picks its upstream connection set.
    Select,
    /// `QUIT`: answered `+OK`, then the connection closes.
    Quit,
    /// Shared unless one of its arguments is `BLOCK` (XREAD, XREADGROUP): a blocking call
    /// would stall every client behind it on the shared connection.
    BlockingWithArg,
    /// Needs connection state respipe does not keep yet (transactions, blocking calls,
    /// pub/sub, protocol and auth changes). Refused with an error naming it, never run on
    /// a shared connection where it would corrupt other clients' replies.
    Unsupported,
    /// HTTP request lines (`POST`, `Host:`): Redis treats them as a cross-protocol attack
    /// and closes the connection, which would break a shared connection for everyone.
    Hostile,
}

use CommandClass::*;

/// The exceptions, sorted by lowercase name (a test checks it).
static TABLE: &[(&str, CommandClass)] = &[
    ("asking", Unsupported),
    ("auth", Unsupported),
    ("blmove", Unsupported),
    ("blmpop", Unsupported),
    ("blpop", Unsupported),
    ("brpop", Unsupported),
    ("brpoplpush", Unsupported),
    ("bzmpop", Unsupported),
    ("bzpopmax", Unsupported),
    ("bzpopmin", Unsupported),
    ("client", Unsupported),
    ("discard", Unsupported),
    ("exec", Unsupported),
    ("hello", Unsupported),
    ("host:", Hostile),
    ("monitor", Unsupported),
    ("multi", Unsupported),
    ("post", Hostile),
    ("psubscribe", Unsupported),
    ("psync", Unsupported),
    ("punsubscribe", Unsupported),
    ("quit", Quit),
    ("readonly", Unsupported),
    ("readwrite", Unsupported),
    ("replconf", Unsupported),
    ("reset", Unsupported),
    ("select", Select),
    ("ssubscribe", Unsupported),
    ("subscribe", Unsupported),
    ("sunsubscribe", Unsupported),
    ("sync", Unsupported),
    ("unsubscribe", Unsupported),
    ("unwatch", Unsupported),
    ("wait", Unsupported),
    ("waitaof", Unsupported),
    ("watch", Unsupported),
    ("xread", BlockingWithArg),
    ("xreadgroup", BlockingWithArg),
];

/// Longest name in the table; longer names are unknown, hence shared.
const MAX_NAME: usize = 16;

/// Classifies a command by its name, case-insensitively, without allocating.
pub fn classify(name: &[u8]) -> CommandClass {
    if name.len() > MAX_NAME {
        return Shared;
    }
    let mut lower = [0u8; MAX_NAME];
    for (dst, src) in lower.iter_mut().zip(name) {
        *dst = src.to_ascii_lowercase();
    }
    let lower = &lower[..name.len()];
    TABLE
        .binary_search_by(|(n, _)| n.as_bytes().cmp(lower))
        .map_or(Shared, |i| TABLE[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_fits() {
        for w in TABLE.windows(2) {
            assert!(w[0].0 < w[1].0, "{} before {}", w[0].0, w[1].0);
        }
        assert!(TABLE
            .iter()
            .all(|(n, _)| n.len() <= MAX_NAME && *n == n.to_lowercase()));
    }

    #[test]
    fn lookups() {
        assert_eq!(classify(b"GET"), Shared);
        assert_eq!(classify(b"sElEcT"), Select);
        assert_eq!(classify(b"MULTI"), Unsupported);
        assert_eq!(classify(b"Host:"), Hostile);
        assert_eq!(classify(b"XREAD"), BlockingWithArg);
        assert_eq!(classify(b"a.module.command.with.a.long.name"), Shared);
        assert_eq!(classify(b""), Shared);
    }
}
