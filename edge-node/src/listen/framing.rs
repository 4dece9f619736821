//! Request smuggling, refused on the wire: every HTTP/1 request head a client sends is
//! checked on its raw bytes before any parser reads it (DESIGN.md §10, RFC 9112).
//!
//! hyper and httparse are lenient where a proxy must not be: they take bare LF line ends,
//! merge two equal `Content-Length` lines, drop `Content-Length` when `Transfer-Encoding` is
//! there too, and serve a request with two `Host` lines or none. By the time a handler sees
//! the request, the evidence is gone. So [`check_head`] reads the raw head, and
//! [`Guarded`] wraps every HTTP/1 connection hyper serves, follows the framing of each request
//! (head, then its `Content-Length` or chunked body) and holds each head back until it is
//! checked. A refused head never reaches hyper: it gets a request line no parser accepts
//! instead, and answers it as it answers any malformed request, 400 and the connection
//! closed, after the answers it still owes.
//!
//! Refused: `Content-Length` with `Transfer-Encoding`; `Content-Length` more than once, or
//! not plain digits; `Transfer-Encoding` more than once or other than exactly `chunked`, and
//! any on HTTP/1.0; obs-fold; bare CR or bare LF; `Host` missing (HTTP/1.1) or repeated; a
//! header name with spaces; a malformed chunk-size line.
//!
//! Slow readers: a write that waits on the client for longer than the send timeout fails,
//! and hyper closes the connection.
//!
//! Upgrades: after a request with `Upgrade` (or `CONNECT`) nothing more is read until the
//! answer's status line is written: a `101` turns checking off (the bytes are the upgraded
//! protocol's), any other status turns it back on. An h2 connection (the preface first) is
//! not HTTP/1 and passes through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wire;

/// What a checked head says of the bytes that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// A head that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub body: BodyKind,
    /// `Upgrade` or `CONNECT`: the connection may leave HTTP after the answer.
    pub upgrade: bool,
}

/// Checks one raw request head, its final empty line included.
pub fn check_head(head: &[u8]) -> Result<Head, &'static str> {
    for (i, &b) in head.iter().enumerate() {
        let bare_lf = b == b'\n' && (i == 0 || head[i - 1] != b'\r');
        let bare_cr = b == b'\r' && head.get(i + 1) != Some(&b'\n');
        if bare_lf || bare_cr {
            return Err("bare CR or LF in the request head");
        }
    }
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if method.is_empty() || target.is_empty() {
        return Err("malformed request line");
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err("malformed request line"),
    };
    let (mut hosts, mut lengths, mut encodings) = (0, 0, 0);
    let (mut length, mut chunked, mut upgrade) = (None, false, method == b"CONNECT");
    for line in lines {
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            return Err("obs-fold (a header line continued on the next)");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err("a header line without a colon");
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err("a malformed header name");
        }
        let value = line[colon + 1..].trim_ascii();
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("host") {
            hosts += 1;
        } else if is("content-length") {
            lengths += 1;
            length = Some(wire::parse_length(value).ok_or("content-length is not a number")?);
        } else if is("transfer-encoding") {
            encodings += 1;
            let mut codings = wire::list(value);
            chunked = matches!((codings.next(), codings.next()), (Some(c), None) if c.eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err("transfer-encoding other than chunked");
            }
        } else if is("upgrade") {
            upgrade |= http11;
        }
    }
    if lengths > 0 && encodings > 0 {
        return Err("content-length and transfer-encoding together");
    }
    if lengths > 1 {
        return Err("content-length more than once");
    }
    if encodings > 1 {
        return Err("transfer-encoding more than once");
    }
    if encodings > 0 && !http11 {
        return Err("transfer-encoding in an HTTP/1.0 request");
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err("host missing or more than once");
    }
    let body = match (chunked, length) {
        (true, _) => BodyKind::Chunked,
        (false, Some(n)) if n > 0 => BodyKind::Length(n),
        _ => BodyKind::None,
    };
    Ok(Head { body, upgrade })
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What hyper is given instead of a refused head: no method has a NUL, so hyper answers 400.
const POISON: &[u8] = b"\0 / HTTP/1.1\r\n\r\n";
/// Longest head held back; past it the bytes go to hyper, which answers 431.
const MAX_HEAD: usize = 128 * 1024;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a request head (the flag: none was seen yet on this connection).
    Head {
        first: bool,
    },
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailer,
    /// The answer to an upgrade decides.
    AwaitUpgrade,
    /// No more checking (upgraded, h2, or a head too large for hyper anyway).
    Through,
    /// Refused: the poison is given, then the end of the stream.
    Refused,
}

/// An HTTP/1 connection whose request heads are checked before hyper reads them.
pub struct Guarded<IO> {
    io: IO,
    /// Read from `io` and not yet given to hyper; the first `ready` bytes are cleared.
    raw: BytesMut,
    ready: usize,
    state: State,
    eof: bool,
    /// hyper's read, parked while an upgrade's answer is awaited.
    reader: Option<Waker>,
    /// How long a write may make no progress (a client that stopped reading).
    send_timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Guarded<IO> {
    /// `send_timeout`: how long a write may wait on the client before the connection fails.
    pub fn new(io: IO, send_timeout: Duration) -> Self {
        Self {
            io,
            raw: BytesMut::with_capacity(wire::READ_SIZE),
            ready: 0,
            state: State::Head { first: true },
            eof: false,
            reader: None,
            send_timeout,
            stalled: None,
        }
    }

    /// A write's outcome, with the stall clock: pending for longer than the send timeout is
    /// an error (hyper then closes the connection).
    fn timed<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.send_timeout;
        let clock = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if clock.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no answer byte within the send timeout",
            )));
        }
        Poll::Pending
    }

    /// Clears what it can of the bytes past `ready`; false when nothing moved.
    fn advance(&mut self) -> bool {
        let avail = &self.raw[self.ready..];
        if avail.is_empty() && !matches!(self.state, State::Refused) {
            return false;
        }
        let (cleared, next) = match self.state {
            State::Through => (avail.len(), State::Through),
            State::AwaitUpgrade => return false,
            State::Refused => return false,
            State::Body(n) | State::ChunkData(n) => {
                let take = n.min(avail.len() as u64);
                let next = match (self.state, n - take) {
                    (State::Body(_), 0) => State::Head { first: false },
                    (State::Body(_), left) => State::Body(left),
                    (_, 0) => State::ChunkEnd,
                    (_, left) => State::ChunkData(left),
                };
                (take as usize, next)
            }
            State::ChunkEnd => match avail {
                [b'\r', b'\n', ..] => (2, State::ChunkSize),
                [b'\r'] => return false,
                _ => return self.refuse(),
            },
            State::ChunkSize | State::Trailer => {
                let Some(lf) = avail.iter().position(|&b| b == b'\n') else {
                    if avail.len() > MAX_CHUNK_LINE {
                        return self.refuse();
                    }
                    return false;
                };
                let Some(line) = avail[..lf].strip_suffix(b"\r") else {
                    return self.refuse();
                };
                let next = if self.state == State::Trailer {
                    if line.is_empty() {
                        State::Head { first: false }
                    } else {
                        State::Trailer
                    }
                } else {
                    match chunk_size(line) {
                        Some(0) => State::Trailer,
                        Some(n) => State::ChunkData(n),
                        None => return self.refuse(),
                    }
                };
                (lf + 1, next)
            }
            State::Head { first } => {
                // Empty lines before a request line are skipped by every parser.
                let blank = avail.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
                if blank > 0 {
                    (blank, self.state)
                } else if first && (H2_PREFACE.starts_with(avail) || avail.starts_with(H2_PREFACE)) {
                    if avail.len() < H2_PREFACE.len() {
                        return false;
                    }
                    (avail.len(), State::Through)
                } else {
                    let Some(end) = head_end(avail) else {
                        if avail.len() > MAX_HEAD {
                            self.state = State::Through;
                            return true;
                        }
                        return false;
                    };
                    match check_head(&avail[..end]) {
                        Ok(h) if h.upgrade => (end, State::AwaitUpgrade),
                        Ok(h) => (
                            end,
                            match h.body {
                                BodyKind::None => State::Head { first: false },
                                BodyKind::Length(n) => State::Body(n),
                                BodyKind::Chunked => State::ChunkSize,
                            },
                        ),
                        Err(why) => {
                            tracing::debug!(reason = why, "request head refused");
                            return self.refuse();
                        }
                    }
                }
            }
        };
        self.ready += cleared;
        self.state = next;
        true
    }

    /// Replaces everything not yet given to hyper with the poison.
    fn refuse(&mut self) -> bool {
        self.raw.truncate(self.ready);
        self.raw.extend_from_slice(POISON);
        self.ready = self.raw.len();
        self.state = State::Refused;
        true
    }

    /// Notes the status of an answer written while an upgrade's answer is awaited.
    fn written(&mut self, head: &[u8]) {
        if self.state != State::AwaitUpgrade || head.len() < 12 || !head.starts_with(b"HTTP/1.") {
            return;
        }
        match &head[9..12] {
            b"101" => self.state = State::Through,
            [b'1', ..] => return, // an interim answer: the final one decides
            _ => self.state = State::Head { first: false },
        }
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

/// Where a head ends: after the first empty line (`\r\n\r\n`, or bare `\n\n`, which the
/// check then refuses).
fn head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&x| x == b'\n') {
        let at = i + p + 1;
        match b.get(at..) {
            Some([b'\n', ..]) => return Some(at + 1),
            Some([b'\r', b'\n', ..]) => return Some(at + 2),
            _ => i = at,
        }
    }
    None
}

/// A chunk-size line's size (hex, then optional `;extensions`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?.trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.raw[..n]);
                this.raw.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Refused {
                return Poll::Ready(Ok(()));
            }
            if this.advance() {
                continue;
            }
            if this.state == State::AwaitUpgrade {
                this.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if this.eof {
                // A partial head at the end: hyper sees the same bytes and the same end.
                this.ready = this.raw.len();
                if this.ready == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if this.raw.capacity() - this.raw.len() < wire::READ_SIZE / 2 {
                this.raw.reserve(wire::READ_SIZE);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.raw) {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.written(buf);
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.timed(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            self.written(first);
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.timed(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
