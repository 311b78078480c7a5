//! Gathers many small byte strings into one write, and writes large ones straight through.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Pieces at least this large are written directly, not copied.
const DIRECT: usize = 64 * 1024;

/// A reusable gather buffer: each byte is copied at most once, and a batch of small
/// commands or replies costs one `write` syscall.
#[derive(Debug, Default)]
pub struct WriteBuffer {
    buf: Vec<u8>,
}

impl WriteBuffer {
    /// Creates an empty buffer.
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Queues `bytes`, writing out first if they are large.
    pub async fn put<W: AsyncWrite + Unpin>(&mut self, w: &mut W, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() >= DIRECT {
            self.flush(w).await?;
            return w.write_all(bytes).await;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= 4 * DIRECT {
            self.flush(w).await?;
        }
        Ok(())
    }

    /// Writes out whatever is gathered.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        if !self.buf.is_empty() {
            let r = w.write_all(&self.buf).await;
            self.buf.clear();
            r?;
        }
        Ok(())
    }
}
