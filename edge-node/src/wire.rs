//! HTTP/1.1 wire helpers. The lean paths (`upstream/client/lean.rs` towards upstreams,
//! `listen/lean.rs` towards clients) read a plain TCP connection into a buffer and note where
//! a parsed head's fields lie in that buffer, so that the head can become one shared buffer
//! that the header values point into; header lists (`Connection`, `Transfer-Encoding`) and
//! `Content-Length` are read the same way everywhere.

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

/// [`poll_fill`] as a future.
pub async fn fill(io: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_fill(io, buf, cx)).await
}

/// The elements of a comma-separated header list (RFC 9110 §5.6.1), trimmed, empty ones
/// skipped.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether `token` is an element of the list `value` (case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    list(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// A `Content-Length` value: decimal digits only, at most 18 of them (no sign, no spaces,
/// no overflow).
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
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
