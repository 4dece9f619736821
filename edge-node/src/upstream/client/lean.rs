//! The lean path: the commonest upstream request (no body, an idempotent method, no protocol
//! upgrade, a plain-http target) written and answered by the request's own task.
//!
//! hyper's client drives each connection in a task of its own and hands requests and answers
//! across channels: per request, two task switches, a channel, a oneshot and a body channel.
//! Here the task that proxies the request writes its head on the connection it holds, reads
//! the answer's head, and its answer body reads the rest from the same connection; on the
//! benchmark's request this halves the client's instructions (BENCHMARKS.md). Requests with a
//! body (which must stream while the answer may already come), upgrades and TLS stay on hyper.
//!
//! **Framing** follows RFC 9112 §6.3 strictly, since a connection goes back to the idle list
//! and a misread answer would hand one client's bytes to the next request:
//! - no body after HEAD, or for 204 and 304; 1xx answers are skipped (a 101 is an error, as
//!   nothing asked for an upgrade);
//! - `Transfer-Encoding` whose last coding is `chunked`: chunked (trailers are passed on);
//!   with `Content-Length` beside it, the connection is not reused; `chunked` anywhere but
//!   last is an error; any other coding: the body runs until the connection closes;
//! - else `Content-Length` (repeated values must agree; anything but digits is an error);
//! - else the body runs until the connection closes.
//!
//! A connection goes back to the idle list only after an HTTP/1.1 answer without
//! `Connection: close` was read exactly to its end with no byte after it. An idle connection
//! that became readable (the upstream closed it, or sent something unasked) is dropped when
//! taken. A reused connection that fails before the first byte of the answer (the upstream
//! closed it as the request went out) is dropped and the request goes on the next one: this
//! is safe because only idempotent requests without a body take this path.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{ClientError, Destination, HttpClient, IdleList, Pooled, UpstreamBody};
use crate::body::{Body, BoxError};
use crate::wire::{self, Span};

/// Longest answer head accepted (status line and header fields).
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in an answer head (hyper's client allows 100).
const MAX_HEADERS: usize = 128;
/// Most trailer fields after a chunked body, and the longest trailer section.
const MAX_TRAILERS: usize = 32;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Body pieces up to this size are copied out of the read buffer, which then stays whole
/// (and is reused in place) for the next answer; larger ones are split off it.
const COPY_MAX: usize = 4 * 1024;

/// Whether `req` (its `Host` set) takes the lean path.
pub(super) fn eligible(dest: &Destination, req: &Request<Body>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
    ) && dest.connect_uri.scheme_str() == Some("http")
        && hyper::body::Body::is_end_stream(req.body())
        && !req.headers().contains_key(UPGRADE)
}

/// A plain TCP connection to a target with what was read from it and not yet used.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    client: u64,
    /// Whether an answer was already read on it: a failure before the next answer's first
    /// byte then means the upstream closed it while it was idle.
    reused: bool,
}

impl Pooled for Conn {
    fn client(&self) -> u64 {
        self.client
    }

    /// Readable while idle: the upstream closed it, or sent bytes no request asked for. (A
    /// read that leaves the socket empty clears its readiness, so a quiet connection is not
    /// readable.)
    fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        !self.buf.is_empty() || self.io.poll_read_ready(&mut cx).is_ready()
    }
}

/// How one exchange on one connection failed.
enum Failure {
    /// A reused connection failed before any of the answer came: the upstream had closed
    /// it; the request may go on another.
    Stale,
    Failed(ClientError),
}

fn broken(what: impl Into<BoxError>) -> ClientError {
    ClientError::Lean(what.into())
}

/// Sends `req` over an idle lean connection of `idle`, else a new one.
pub(super) async fn send(
    client: &HttpClient,
    dest: &Destination,
    idle: &Arc<IdleList>,
    req: Request<Body>,
) -> Result<Response<UpstreamBody>, ClientError> {
    let head_only = req.method() == Method::HEAD;
    let request = encode(&req);
    drop(req);
    let now = crate::clock::now();
    while let Some(conn) = idle.lean.take(client.id, now) {
        match exchange(conn, &request, head_only, idle).await {
            Err(Failure::Stale) => continue,
            Err(Failure::Failed(e)) => return Err(e),
            Ok(resp) => return Ok(resp),
        }
    }
    // Boxed: connecting is the rare path, and its future is large.
    let conn = Box::pin(connect(client, dest)).await?;
    match exchange(conn, &request, head_only, idle).await {
        Ok(resp) => Ok(resp),
        Err(Failure::Failed(e)) => Err(e),
        Err(Failure::Stale) => Err(broken("the connection closed before any answer")),
    }
}

async fn connect(client: &HttpClient, dest: &Destination) -> Result<Conn, ClientError> {
    match client.open(dest).await? {
        MaybeHttpsStream::Http(io) => Ok(Conn {
            io: io.into_inner(),
            buf: BytesMut::with_capacity(wire::READ_SIZE),
            client: client.id,
            reused: false,
        }),
        MaybeHttpsStream::Https(_) => Err(ClientError::Connect(
            "an https connection for an http target".into(),
        )),
    }
}

/// The request head in HTTP/1.1 (its fields were checked when they were made: `http` types
/// admit no CR or LF).
fn encode(req: &Request<Body>) -> Vec<u8> {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Vec::with_capacity(512 + target.len());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes the request on `conn` and reads the answer's head; the answer's body reads the
/// rest.
async fn exchange(
    mut conn: Conn,
    request: &[u8],
    head_only: bool,
    idle: &Arc<IdleList>,
) -> Result<Response<UpstreamBody>, Failure> {
    let stale_or = |conn: &Conn, e: ClientError| {
        if conn.reused {
            Failure::Stale
        } else {
            Failure::Failed(e)
        }
    };
    if let Err(e) = conn.io.write_all(request).await {
        return Err(stale_or(&conn, broken(e)));
    }
    let mut answered = false;
    loop {
        // (Nothing to parse before the first read.)
        let head = if conn.buf.is_empty() {
            None
        } else {
            parse_head(&mut conn.buf, head_only).map_err(Failure::Failed)?
        };
        if let Some(head) = head {
            if head.status.is_informational() {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Failure::Failed(broken(
                        "101 Switching Protocols without an upgrade asked for",
                    )));
                }
                answered = true;
                continue;
            }
            return Ok(head.into_response(conn, idle));
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(Failure::Failed(broken("the answer's head is larger than 64 KiB")));
        }
        let nothing_yet = !answered && conn.buf.is_empty();
        match wire::fill(&mut conn.io, &mut conn.buf).await {
            Ok(0) if nothing_yet => {
                return Err(stale_or(&conn, broken("the connection closed before any answer")))
            }
            Ok(0) => {
                return Err(Failure::Failed(broken(
                    "the connection closed within the answer's head",
                )))
            }
            Ok(_) => {}
            Err(e) if nothing_yet => return Err(stale_or(&conn, broken(e))),
            Err(e) => return Err(Failure::Failed(broken(e))),
        }
    }
}

/// An answer head and how its body is framed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// How its body is read.
    body: State,
    reusable: bool,
}

/// Parses a complete head off the front of `buf`; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Head>, ClientError> {
    // Where each field's name and value lie in the head (the head is frozen into one shared
    // buffer below, and the values point into it).
    let mut spans = [Span::default(); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed =
            httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut fields);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(broken(format!("invalid answer head: {e}"))),
        };
        for (span, field) in spans.iter_mut().zip(resp.headers.iter()) {
            *span = Span::of(buf, field);
        }
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            resp.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| broken(format!("invalid status {code}")))?;
    // Room for the fields the proxy adds to the answer (the request id and the like): a map
    // that grows rehashes.
    let mut headers = HeaderMap::with_capacity(count + 4);
    // What the fields say about framing, noted as they go by (no lookups afterwards).
    let mut fields = Fields::default();
    for span in &spans[..count] {
        let name = HeaderName::from_bytes(span.name(&head)).map_err(broken)?;
        let value = HeaderValue::from_maybe_shared(span.value(&head)).map_err(broken)?;
        if name == TRANSFER_ENCODING {
            fields.transfer_encoding = true;
        } else if name == CONTENT_LENGTH {
            fields.content_length = true;
        } else if name == CONNECTION {
            fields.close |= wire::has_token(value.as_bytes(), "close");
        }
        headers.append(name, value);
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let (body, mut reusable) = framing(status, &headers, &fields, head_only)?;
    reusable &= version == Version::HTTP_11 && !fields.close;
    Ok(Some(Head {
        status,
        version,
        headers,
        body,
        reusable,
    }))
}

/// Which framing fields an answer head has, and whether it says `Connection: close`.
#[derive(Default)]
struct Fields {
    transfer_encoding: bool,
    content_length: bool,
    close: bool,
}

/// How the body of an answer with `status` and `headers` is read, and whether the
/// connection can carry another request after it.
fn framing(
    status: StatusCode,
    headers: &HeaderMap,
    fields: &Fields,
    head_only: bool,
) -> Result<(State, bool), ClientError> {
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((State::Done, true));
    }
    if fields.transfer_encoding {
        let mut codings = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| wire::list(v.as_bytes()))
            .peekable();
        while let Some(coding) = codings.next() {
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            match (chunked, codings.peek().is_none()) {
                // The last coding: chunked frames the body.
                (true, true) => return Ok((State::Chunked(Chunk::Size), !fields.content_length)),
                (true, false) => return Err(broken("chunked is not the last transfer coding")),
                _ => {}
            }
        }
        return Ok((State::UntilClose, false));
    }
    if fields.content_length {
        let mut length = None;
        for value in headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .flat_map(|v| wire::list(v.as_bytes()))
        {
            let n = wire::parse_length(value).ok_or_else(|| broken("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(broken("Content-Length values differ"));
            }
            length = Some(n);
        }
        return Ok(match length {
            Some(0) => (State::Done, true),
            Some(n) => (State::Length(n), true),
            None => return Err(broken("invalid Content-Length")),
        });
    }
    Ok((State::UntilClose, false))
}

impl Head {
    fn into_response(self, mut conn: Conn, idle: &Arc<IdleList>) -> Response<UpstreamBody> {
        conn.reused = true;
        let mut body = LeanBody {
            conn: Some(conn),
            state: self.body,
            home: self.reusable.then(|| idle.clone()),
        };
        if body.state == State::Done {
            body.finish();
        }
        let mut resp = Response::new(UpstreamBody::Lean(body));
        *resp.status_mut() = self.status;
        *resp.version_mut() = self.version;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// An answer body read from its lean connection, which goes back to the target's idle list
/// once the body was read exactly to its end (see the module's notes).
pub struct LeanBody {
    /// `None` once the body ended or failed.
    conn: Option<Conn>,
    state: State,
    /// Where the connection goes back; `None` when it may not be reused.
    home: Option<Arc<IdleList>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Where a chunked body's reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Within a chunk's data: this many bytes still to come.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// What the chunked reader made of the buffer.
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// The buffer holds too little to go on.
    More,
}

impl LeanBody {
    /// The body ended: the connection goes home if it may.
    fn finish(&mut self) {
        self.state = State::Done;
        let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        // Bytes after the answer's end mean the upstream and this reader disagree on framing.
        if conn.buf.is_empty() {
            home.lean.put(conn, crate::clock::now());
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.home = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(e.into())))
    }
}

/// `n` bytes off the front of `buf`: copied when small, so the buffer stays unshared.
fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n <= COPY_MAX {
        let data = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        data
    } else {
        buf.split_to(n).freeze()
    }
}

impl hyper::body::Body for LeanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let at_end = match &mut this.state {
                State::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Length(left) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64);
                    let data = take(&mut conn.buf, n as usize);
                    *left -= n;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose if !conn.buf.is_empty() => {
                    let n = conn.buf.len();
                    return Poll::Ready(Some(Ok(Frame::data(take(&mut conn.buf, n)))));
                }
                State::Chunked(chunk) => match decode(chunk, &mut conn.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Trailers(trailers)) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Step::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => false,
                    Err(e) => return this.fail(e),
                },
                State::UntilClose => true,
                State::Length(_) => false,
            };
            match ready!(wire::poll_fill(&mut conn.io, &mut conn.buf, cx)) {
                Ok(0) if at_end => {
                    this.home = None;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(broken(
                        "the upstream closed the connection before the answer's body ended",
                    ))
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Reads what it can of a chunked body from `buf`.
fn decode(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<Step, ClientError> {
    loop {
        match *chunk {
            Chunk::Size => {
                let Some(line_end) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
                    if buf.len() >= MAX_CHUNK_LINE {
                        return Err(broken("chunk-size line longer than 4 KiB"));
                    }
                    return Ok(Step::More);
                };
                let size = chunk_size(&buf[..line_end])?;
                buf.advance(line_end + 1);
                *chunk = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = left.min(buf.len() as u64);
                *chunk = if n == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n)
                };
                return Ok(Step::Data(take(buf, n as usize)));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(broken("chunk data longer than its size"));
                }
                buf.advance(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
                let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete(done)) => done,
                    Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILER_BYTES => return Ok(Step::More),
                    Ok(httparse::Status::Partial) => {
                        return Err(broken("trailer section longer than 16 KiB"))
                    }
                    Err(e) => return Err(broken(format!("invalid trailers: {e}"))),
                };
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for field in fields.iter() {
                    let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(broken)?;
                    let value = HeaderValue::from_bytes(field.value).map_err(broken)?;
                    trailers.append(name, value);
                }
                buf.advance(len);
                return Ok(if trailers.is_empty() {
                    Step::End
                } else {
                    Step::Trailers(trailers)
                });
            }
        }
    }
}

/// The size on a chunk-size line (without its LF): hex digits, then optional extensions
/// (`;name=value`, ignored), then CR.
fn chunk_size(line: &[u8]) -> Result<u64, ClientError> {
    let bad = || broken("invalid chunk-size line");
    let line = line.strip_suffix(b"\r").ok_or_else(bad)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(bad());
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    let padding = &rest[..rest.len() - ext.len()];
    if padding.iter().any(|&b| b != b' ' && b != b'\t')
        || !(ext.is_empty() || ext[0] == b';')
        || ext.contains(&b'\r')
    {
        return Err(bad());
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| bad())?;
    u64::from_str_radix(hex, 16).map_err(|_| bad())
}

#[cfg(test)]
mod tests;
