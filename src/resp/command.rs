//! Command classes: which commands may share a pipelined upstream connection.
//!
//! The table itself is data, generated from Redis's own `COMMAND`/`COMMAND DOCS` output
//! (`command_table.rs`, by `scripts/gen-command-table`). A command not in it (a module's,
//! or one newer than the table) is stateless and shared.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use super::command_table::TABLE;

/// How the proxy treats a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandClass {
    /// Stateless: merged into the shared pipelines.
    Shared,
    /// Per-client state the proxy keeps, answered by the proxy.
    Context(Ctx),
    /// Needs a connection of its own for a while.
    Dedicated(Ded),
    /// Makes no sense through a proxy (replication stream, client-side caching for now).
    Refused,
    /// HTTP request lines: Redis closes such connections, and so does the proxy.
    Hostile,
    /// A container (`CLIENT`) whose class depends on its subcommand.
    Container,
}

/// Commands that read or change per-client state kept by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    Select,
    Hello,
    Auth,
    Reset,
    Quit,
    ClientSetName,
    ClientGetName,
    ClientId,
    ClientInfo,
    ClientSetInfo,
    ClientReply,
    ClientNoEvict,
    /// `RESPIPE INFO`: the proxy's own figures.
    Respipe,
}

/// Commands that need a dedicated upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ded {
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Subscribe,
    Unsubscribe,
    Monitor,
    /// Blocks its connection (BLPOP, WAIT, …): leased for the call.
    Blocking,
    /// Blocks only with a `BLOCK` argument (XREAD, XREADGROUP).
    BlockingWithArg,
    /// `CLIENT TRACKING`: client-side caching state.
    Tracking,
}

/// Longest name looked up; longer ones are unknown, hence shared.
const MAX_NAME: usize = 40;

/// Classifies a command by name (case-insensitive, no allocation). For
/// [`CommandClass::Container`], call [`classify_sub`] with the subcommand.
pub fn classify(name: &[u8]) -> CommandClass {
    lookup(name, None).0
}

/// Classifies a command and returns its index in the table (its metrics label), or
/// `TABLE.len()` for a command the table does not know.
pub fn classify_with_id(name: &[u8]) -> (CommandClass, u16) {
    let (class, id) = lookup(name, None);
    (class, id.unwrap_or(TABLE.len()) as u16)
}

/// Classifies `container|sub` (e.g. `CLIENT REPLY`). Unknown subcommands are shared, so
/// Redis answers them (usually with its "unknown subcommand" error).
pub fn classify_sub(container: &[u8], sub: &[u8]) -> CommandClass {
    lookup(container, Some(sub)).0
}

fn lookup(name: &[u8], sub: Option<&[u8]>) -> (CommandClass, Option<usize>) {
    let len = name.len() + sub.map_or(0, |s| s.len() + 1);
    if len > MAX_NAME {
        return (CommandClass::Shared, None);
    }
    let mut key = [0u8; MAX_NAME];
    key[..name.len()].copy_from_slice(name);
    if let Some(s) = sub {
        key[name.len()] = b'|';
        key[name.len() + 1..len].copy_from_slice(s);
    }
    let key = &mut key[..len];
    key.make_ascii_lowercase();
    match index().get(&*key) {
        Some(&i) => (TABLE[i as usize].1, Some(i as usize)),
        None => (CommandClass::Shared, None),
    }
}

/// Table position by name, built on first use. Every command is looked up, and a binary
/// search over ~380 names costs ~9 string comparisons; a hash of the short name and one
/// comparison cost a third of that (callgrind, per command). Clients only look names up, and
/// the table is fixed, so a simple unkeyed hash is safe here.
fn index() -> &'static HashMap<&'static [u8], u16, BuildHasherDefault<NameHasher>> {
    static INDEX: OnceLock<HashMap<&'static [u8], u16, BuildHasherDefault<NameHasher>>> =
        OnceLock::new();
    INDEX.get_or_init(|| {
        TABLE
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.as_bytes(), i as u16))
            .collect()
    })
}

/// FNV-1a: a few instructions per byte for names of a few bytes.
struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_usize(&mut self, n: usize) {
        // The length prefix `[u8]`'s Hash writes: one step, not eight.
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x0100_0000_01b3);
    }

    fn finish(&self) -> u64 {
        self.0
    }
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
        assert!(TABLE.len() > 300, "the table covers every Redis 7 command");
    }

    #[test]
    fn lookups() {
        assert_eq!(classify(b"GET"), CommandClass::Shared);
        assert_eq!(classify(b"sElEcT"), CommandClass::Context(Ctx::Select));
        assert_eq!(classify(b"MULTI"), CommandClass::Dedicated(Ded::Multi));
        assert_eq!(classify(b"blpop"), CommandClass::Dedicated(Ded::Blocking));
        assert_eq!(classify(b"WAIT"), CommandClass::Dedicated(Ded::Blocking));
        assert_eq!(classify(b"Host:"), CommandClass::Hostile);
        assert_eq!(
            classify(b"XREAD"),
            CommandClass::Dedicated(Ded::BlockingWithArg)
        );
        assert_eq!(classify(b"CLIENT"), CommandClass::Container);
        assert_eq!(
            classify_sub(b"client", b"REPLY"),
            CommandClass::Context(Ctx::ClientReply)
        );
        assert_eq!(classify_sub(b"CLIENT", b"list"), CommandClass::Shared);
        assert_eq!(classify_sub(b"CLIENT", b"nosuch"), CommandClass::Shared);
        assert_eq!(
            classify(b"CONFIG"),
            CommandClass::Shared,
            "containers with only shared subcommands are shared"
        );
        assert_eq!(classify(b"a.module.command"), CommandClass::Shared);
        assert_eq!(classify(b""), CommandClass::Shared);
        assert_eq!(classify(&[b'x'; 100]), CommandClass::Shared);
    }
}
