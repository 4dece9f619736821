//! What the lean HTTP/1.1 paths share (`client/lean.rs` towards upstreams, `server/lean.rs`
//! towards clients): reading a plain TCP connection into a buffer, and noting where a parsed
//! head's fields lie in that buffer, so that the head can become one shared buffer that the
//! header values point into.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

/// Room made in a read buffer before each read.
pub const READ_SIZE: usize = 8 * 1024;

/// Reads what `io` has into `buf` (making room first); `Ok(0)` at the connection's end.
pub fn poll_fill(io: &mut TcpStream, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 2 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Where a header field's name and value lie in the buffer it was parsed from (heads are
/// far below 4 GiB).
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Where `part` (a slice of `buf`) lies in `buf`: offset and length.
pub fn range(buf: &[u8], part: &[u8]) -> (u32, u32) {
    (
        (part.as_ptr() as usize - buf.as_ptr() as usize) as u32,
        part.len() as u32,
    )
}

/// The bytes at `range` of a shared head (no copy).
pub fn slice(head: &Bytes, (at, len): (u32, u32)) -> Bytes {
    head.slice(at as usize..(at + len) as usize)
}

impl Span {
    /// The span of `field`, parsed from `buf`.
    pub fn of(buf: &[u8], field: &httparse::Header<'_>) -> Self {
        Self {
            name: range(buf, field.name.as_bytes()),
            value: range(buf, field.value),
        }
    }

    pub fn name<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.name.0 as usize..(self.name.0 + self.name.1) as usize]
    }

    pub fn value_bytes<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.value.0 as usize..(self.value.0 + self.value.1) as usize]
    }

    /// The value as a slice of the shared head (no copy).
    pub fn value(&self, head: &Bytes) -> Bytes {
        slice(head, self.value)
    }
}
