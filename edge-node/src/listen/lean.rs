//! The lean loop for plaintext HTTP/1.1 connections: the commonest request (HTTP/1.1, no
//! body, no upgrade, no `Expect`) is read, answered and written by the connection's own task
//! without hyper's server; anything else hands the connection to hyper for the rest of its
//! life.
//!
//! hyper's server parses every request into its own buffers, runs the handler's future from
//! a slot it copies it into, and writes the answer through its dispatcher state machine; for
//! the proxy's short requests that is about a quarter of the edge's instructions per request
//! (BENCHMARKS.md). The lean loop parses the head with httparse (the header values share one
//! buffer), calls the [`Handler`] with a bodiless request, and writes the answer's head and, when the
//! body is already there, its first bytes in one write.
//!
//! **Handing over.** A request head the lean loop does not take (a body, an upgrade,
//! `Expect`, HTTP/1.0, h2's preface, a target not in origin form, more than
//! [`MAX_FIELDS`] fields, a head not complete within [`MAX_HEAD`] bytes, or anything httparse
//! refuses) goes to hyper together with every byte read of it, before any byte of an answer
//! was written: hyper then serves that request and the rest of the connection exactly as it
//! serves any other (its 400 and 431 answers, upgrades, h2, bodies, `Expect: 100-continue`).
//!
//! **Limits kept:** the header-read timeout (from the moment the loop waits for a head, idle
//! keep-alive included), the drain (an idle connection closes at once; one mid-request closes
//! after its answer), and `Connection: close`.

use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{signalled, Handler};
use crate::body::{Body, BoxError};
use crate::wire::{self, Span};

/// Longest request head the lean loop reads before it hands the connection to hyper.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields the lean loop takes (more: hyper's, which allows 100).
pub const MAX_FIELDS: usize = 64;
/// Answer bodies are gathered into the write buffer up to this size before a write.
const GATHER_MAX: usize = 16 * 1024;

/// The connection: its socket and what was read from it and not yet used.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    send_timeout: Duration,
}

/// What the loop made of the bytes read so far.
// Returned once per request and matched at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request it serves; `close` when the client asked for the connection to end.
    Serve { req: Request<Empty<Bytes>>, close: bool },
    /// Not all of the head yet.
    More,
    /// A request for hyper.
    HandOver,
}

/// Why the loop stopped.
pub enum End {
    /// The connection is done (closed by the client, timed out, drained, or broken).
    Closed,
    /// Hyper takes over: the connection and every byte read and not yet served.
    HandOver(Prefixed),
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(wire::READ_SIZE),
            out: Vec::with_capacity(1024),
            send_timeout: Duration::MAX,
        }
    }

    fn hand_over(self) -> End {
        End::HandOver(Prefixed {
            prefix: self.buf.freeze(),
            io: self.io,
        })
    }
}

/// Serves requests on `conn` until it ends or a request is for hyper.
pub async fn serve<H: Handler>(
    mut conn: Conn,
    remote: SocketAddr,
    handler: &H,
    header_read_timeout: Duration,
    send_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> End {
    let clock = tokio::time::sleep(header_read_timeout);
    tokio::pin!(clock);
    loop {
        clock
            .as_mut()
            .reset(tokio::time::Instant::now() + header_read_timeout);
        let (req, close) = loop {
            if !conn.buf.is_empty() {
                match parse(&mut conn.buf) {
                    Next::Serve { req, close } => break (req, close),
                    Next::More if conn.buf.len() < MAX_HEAD => {}
                    Next::More | Next::HandOver => return conn.hand_over(),
                }
            }
            let idle = conn.buf.is_empty();
            if idle && *shutdown.borrow() {
                return End::Closed;
            }
            tokio::select! {
                biased;
                read = wire::fill(&mut conn.io, &mut conn.buf) => match read {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(_) => {}
                },
                _ = &mut clock => return End::Closed,
                _ = signalled(&mut shutdown), if idle => return End::Closed,
            }
        };
        let head_only = req.method() == Method::HEAD;
        let resp = handler.handle(remote, req).await;
        let close = close || *shutdown.borrow();
        // A client that takes no answer byte for the send timeout is cut off (slow read): each
        // write is at most a gathered buffer or one body frame.
        conn.send_timeout = send_timeout;
        if write(&mut conn, resp, head_only, close).await.is_err() || close {
            let _ = conn.io.shutdown().await;
            return End::Closed;
        }
    }
}

/// Parses the request head at the front of `buf`.
fn parse(buf: &mut BytesMut) -> Next {
    // Where the target and each field lie in the head (frozen into one shared buffer below;
    // the values point into it).
    let mut spans = [Span::default(); MAX_FIELDS];
    let (len, method, target, count) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Next::More,
            // Too many fields, or something hyper should answer (400, 431).
            Err(_) => return Next::HandOver,
        };
        if req.version != Some(1) {
            return Next::HandOver;
        }
        // Ambiguous framing: hyper's guard refuses it (`framing.rs`), answering 400.
        if super::framing::check_head(&buf[..len]).is_err() {
            return Next::HandOver;
        }
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return Next::HandOver;
        };
        if !path.starts_with('/') {
            return Next::HandOver;
        }
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Next::HandOver;
        };
        for (span, field) in spans.iter_mut().zip(req.headers.iter()) {
            *span = Span::of(buf, field);
        }
        let target = wire::range(buf, path.as_bytes());
        (len, method, target, req.headers.len())
    };
    // Checked before the head leaves the buffer: a request for hyper must reach it whole.
    let mut close = false;
    for span in &spans[..count] {
        let (name, value) = (span.name(buf), span.value_bytes(buf));
        let is = |h: &HeaderName| name.eq_ignore_ascii_case(h.as_str().as_bytes());
        if is(&TRANSFER_ENCODING) || is(&UPGRADE) || is(&EXPECT) {
            return Next::HandOver;
        }
        if is(&CONTENT_LENGTH) && value != b"0" {
            return Next::HandOver;
        }
        if is(&CONNECTION) {
            if wire::has_token(value, "upgrade") {
                return Next::HandOver;
            }
            close |= wire::has_token(value, "close");
        }
    }
    let head = buf.split_to(len).freeze();
    // What `Uri` or the header types refuse goes to hyper after all, the head put back first.
    let give_back = |buf: &mut BytesMut| {
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buf);
        *buf = whole;
        Next::HandOver
    };
    let Ok(uri) = Uri::from_maybe_shared(wire::slice(&head, target)) else {
        return give_back(buf);
    };
    // Room for the fields the proxy adds (forwarding headers, the request id): a map that
    // grows rehashes.
    let mut headers = HeaderMap::with_capacity(count + 8);
    for span in &spans[..count] {
        let name = HeaderName::from_bytes(span.name(&head));
        let value = HeaderValue::from_maybe_shared(span.value(&head));
        let (Ok(name), Ok(value)) = (name, value) else {
            return give_back(buf);
        };
        headers.append(name, value);
    }
    let mut req = Request::new(Empty::new());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Next::Serve { req, close }
}

/// The current time as an HTTP date, formatted once a second.
fn date() -> HeaderValue {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let formatted = httpdate::fmt_http_date(now);
            c.1 = HeaderValue::from_str(&formatted).unwrap_or(HeaderValue::from_static(""));
            c.0 = secs;
        }
        c.1.clone()
    })
}

/// How the answer's body goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes `resp` on `conn`; an error means the connection cannot carry another answer.
async fn write(conn: &mut Conn, resp: Response<Body>, head_only: bool, close: bool) -> Result<(), BoxError> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let out = &mut conn.out;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let never_a_body =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let mut declared = None;
    for (name, value) in &parts.headers {
        if *name == TRANSFER_ENCODING || *name == CONNECTION {
            // Framing and the connection are this loop's to say.
            continue;
        }
        if *name == CONTENT_LENGTH {
            let n = wire::parse_length(value.as_bytes()).ok_or("invalid Content-Length in the answer")?;
            if declared.replace(n).is_some_and(|d| d != n) {
                return Err("Content-Length values differ in the answer".into());
            }
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A HEAD answer says the length of the body it leaves out, as hyper does.
    let length = declared.or(body.size_hint().exact());
    if let (None, Some(n), false) = (declared, length, never_a_body) {
        let _ = write!(out, "content-length: {n}\r\n");
    }
    let framing = match length {
        _ if head_only || never_a_body => Framing::None,
        Some(n) => Framing::Length(n),
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    if !parts.headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None || framing == Framing::Length(0) {
        return Ok(flush(conn).await?);
    }
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // What the body has now goes out with what is gathered; before waiting for more,
        // what is gathered is written.
        let polled = Pin::new(&mut body).poll_frame(&mut Context::from_waker(Waker::noop()));
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                flush(conn).await?;
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: dropped (HTTP/1.1 clients here did not ask for them).
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            Framing::Length(_) => {
                if data.len() as u64 > left {
                    return Err("the answer's body is longer than its Content-Length".into());
                }
                left -= data.len() as u64;
                push(conn, &data).await?;
            }
            _ => {
                let _ = write!(conn.out, "{:x}\r\n", data.len());
                push(conn, &data).await?;
                conn.out.extend_from_slice(b"\r\n");
            }
        }
    }
    match framing {
        Framing::Length(_) if left != 0 => {
            return Err("the answer's body ended before its Content-Length".into());
        }
        Framing::Chunked => conn.out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    Ok(flush(conn).await?)
}

/// Writes what is gathered.
async fn flush(conn: &mut Conn) -> io::Result<()> {
    if !conn.out.is_empty() {
        send(&mut conn.io, &conn.out, conn.send_timeout).await?;
        conn.out.clear();
    }
    Ok(())
}

/// Adds `data` to what is gathered, writing both at once when it grows large.
async fn push(conn: &mut Conn, data: &Bytes) -> io::Result<()> {
    if conn.out.len() + data.len() <= GATHER_MAX {
        conn.out.extend_from_slice(data);
        return Ok(());
    }
    flush(conn).await?;
    send(&mut conn.io, data, conn.send_timeout).await
}

/// `write_all`, failing when the client takes none of it for `timeout`.
async fn send(io: &mut TcpStream, data: &[u8], timeout: Duration) -> io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let n = tokio::time::timeout(timeout, io.write(rest))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took no answer byte within the send timeout",
                )
            })??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        rest = &rest[n..];
    }
    Ok(())
}

/// A connection handed to hyper: the bytes read and not yet served come first.
pub struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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
mod fuzz;
#[cfg(test)]
mod tests;
