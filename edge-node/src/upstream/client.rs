//! The HTTP/1.1 client towards upstream targets: connections from the connector (TCP, and
//! TLS for `https` targets: `connector.rs`), and idle keep-alive connections kept on the
//! target's live state (`endpoint.rs`, which owns them; this file does not know it). Two
//! paths share them:
//! - the **lean path** (`lean.rs`): a bodiless GET, HEAD, OPTIONS or DELETE without an
//!   upgrade, to a plain-http target, is written and answered by the request's own task;
//! - everything else goes through hyper's connection-level client, whose connections each
//!   run in a task of their own.
//!
//! ```text
//!  send(target, idle list, request)
//!    ├─ lean? ─> newest idle lean connection (readable while idle: dropped) ─> write, read
//!    │             the head (a reused connection that closed first: the next one) ─> answer
//!    ├─ newest idle connection of this client on the endpoint ─ready?─> send on it
//!    │     (closed, expired or not this client's: dropped; refused before a byte was
//!    │      written: the request is taken back and the next connection is tried)
//!    └─ none left ─> connect (connect timeout) ─> handshake ─> spawn the connection ─> send
//!  answer ─> its body ends ─> the connection goes back to the endpoint's idle list
//! ```
//!
//! Keeping idle connections per target, rather than in one map keyed by host, costs no
//! hashing and no shared lock per request, and they live exactly as long as the target's
//! live state: a config change that keeps the target keeps its warm connections; one that
//! drops the target closes them. Connections are reused newest first (warm ones stay warm,
//! surplus ones expire), expire after [`IDLE_TIMEOUT`], and at most [`MAX_IDLE`] are kept.
//!
//! A connection is never shared by two requests at once (HTTP/1.1), goes back only once its
//! answer's body has been read to the end, and never after a protocol switch (101) or a
//! request that was abandoned midway (hyper closes those).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::body::{Body, BoxError};
use crate::upstream::connector::UpstreamConnector;

/// How long a connection may stay idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle connections kept per target.
pub const MAX_IDLE: usize = 512;

/// Where requests for one target go: what to connect to and the `Host` to send.
#[derive(Debug, Clone)]
pub struct Destination {
    /// `scheme://authority` of the target: what the connector connects to (and, for https,
    /// the name TLS checks unless `tls.server_name` says otherwise).
    pub connect_uri: Uri,
    /// The `Host` header of every request to the target: its authority.
    pub host: HeaderValue,
}

/// A client: one connector (connect timeout, TLS options). Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    /// Tells this client's idle connections from another's on the same endpoint (an upstream
    /// whose TLS options changed must not reuse connections made under the old ones).
    id: u64,
    connector: UpstreamConnector,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum ClientError {
    /// No connection could be made (refused, unreachable, connect timeout, TLS handshake):
    /// the upstream surely saw nothing of the request.
    Connect(BoxError),
    /// The connection failed while the request was sent or its answer awaited.
    Http(hyper::Error),
    /// The lean path's connection failed, or the answer broke HTTP/1.1 (`lean.rs`).
    Lean(BoxError),
}

/// Says what failed; the cause is the error's `source()` (print the whole chain with
/// `error::chain`), so a reporter prints each cause once.
impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientError::Connect(_) => "cannot connect",
            ClientError::Http(_) | ClientError::Lean(_) => "connection failed",
        })
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect(e) => Some(e.as_ref()),
            ClientError::Http(e) => Some(e),
            ClientError::Lean(e) => Some(e.as_ref()),
        }
    }
}

/// A connection that can wait on an endpoint's idle list.
trait Pooled {
    /// The [`HttpClient`] that made it.
    fn client(&self) -> u64;
    /// Whether the upstream closed it (or it can take no more requests).
    fn is_closed(&self) -> bool;
}

/// An idle keep-alive connection kept on an endpoint.
struct Idle<C> {
    conn: C,
    /// When it went idle (`crate::clock::now()`).
    since: u64,
}

impl<C> Idle<C> {
    fn expired(&self, now: u64) -> bool {
        now.saturating_sub(self.since) > IDLE_TIMEOUT.as_nanos() as u64
    }
}

/// Idle connections of one kind, oldest first.
struct Pool<C> {
    list: Mutex<Vec<Idle<C>>>,
    max: usize,
}

impl<C: Pooled> Pool<C> {
    fn new(max: usize) -> Self {
        Self {
            list: Mutex::default(),
            max,
        }
    }

    /// The newest idle connection of `client` still open, dropping expired and closed ones
    /// and those of older clients (an upstream's previous connect or TLS options); those of
    /// newer clients are left for them.
    fn take(&self, client: u64, now: u64) -> Option<C> {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let mut newer = Vec::new();
        let mut found = None;
        while let Some(c) = list.pop() {
            if c.expired(now) {
                // The rest are older still.
                list.clear();
                break;
            }
            if c.conn.is_closed() || c.conn.client() < client {
                continue;
            }
            if c.conn.client() > client {
                newer.push(c);
                continue;
            }
            found = Some(c.conn);
            break;
        }
        list.extend(newer.into_iter().rev());
        found
    }

    /// Keeps `conn` for the next request, dropping the oldest ones when expired or past the
    /// cap, and the oldest one when the upstream closed it: under traffic, connections the
    /// upstream closed while idle are swept one per request instead of waiting out their
    /// expiry (newer ones are met by `take`).
    fn put(&self, conn: C, now: u64) {
        if conn.is_closed() {
            return;
        }
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let expired = list.iter().take_while(|c| c.expired(now)).count();
        let surplus = (list.len() - expired + 1).saturating_sub(self.max);
        list.drain(..expired + surplus);
        if list.first().is_some_and(|c| c.conn.is_closed()) {
            list.remove(0);
        }
        list.push(Idle { conn, since: now });
    }

    fn len(&self) -> usize {
        self.list.lock().map(|l| l.len()).unwrap_or_default()
    }
}

/// The idle connections of one target (held by its `Endpoint`): those driven by hyper
/// and those of the lean path (`lean.rs`), each list capped at [`MAX_IDLE`].
pub struct IdleList {
    hyper: Pool<Connection>,
    lean: Pool<lean::Conn>,
}

impl Default for IdleList {
    fn default() -> Self {
        Self::with_max(MAX_IDLE)
    }
}

impl std::fmt::Debug for IdleList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IdleList").field(&self.len()).finish()
    }
}

impl IdleList {
    fn with_max(max: usize) -> Self {
        Self {
            hyper: Pool::new(max),
            lean: Pool::new(max),
        }
    }

    /// How many idle connections are kept.
    pub fn len(&self) -> usize {
        self.hyper.len() + self.lean.len()
    }
}

/// A connection driven by hyper, lent to one request; it goes back to its endpoint with
/// [`release`].
pub struct Connection {
    sender: http1::SendRequest<Body>,
    client: u64,
}

impl Pooled for Connection {
    fn client(&self) -> u64 {
        self.client
    }

    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// Gives `conn` back to `idle`: call only once the answer's body has been
/// read to its end.
pub fn release(idle: &IdleList, conn: Connection) {
    idle.hyper.put(conn, crate::clock::now());
}

/// An upstream's answer body: read by hyper's connection task, or by the lean path itself.
pub enum UpstreamBody {
    Hyper(Incoming),
    Lean(lean::LeanBody),
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Lean(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Lean(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Lean(b) => b.size_hint(),
        }
    }
}

impl HttpClient {
    pub fn new(connector: UpstreamConnector) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Self {
            id: IDS.fetch_add(1, Relaxed),
            connector,
        }
    }

    /// Sends `req` (its URI in origin form, `/path?query`) to `dest`, over an idle connection
    /// of `idle` or a new one. With the answer comes the connection, to [`release`] once
    /// the answer's body has ended (`None` after a protocol switch: the connection is the
    /// caller's then; `None` on the lean path too, whose body gives its connection back
    /// itself).
    pub async fn send(
        &self,
        dest: &Destination,
        idle: &Arc<IdleList>,
        mut req: Request<Body>,
    ) -> Result<(Response<UpstreamBody>, Option<Connection>), ClientError> {
        req.headers_mut().insert(HOST, dest.host.clone());
        if lean::eligible(dest, &req) {
            let resp = lean::send(self, dest, idle, req).await?;
            return Ok((resp, None));
        }
        let now = crate::clock::now();
        while let Some(mut conn) = idle.hyper.take(self.id, now) {
            if conn.sender.ready().await.is_err() {
                continue;
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => return Ok(lent(resp, conn)),
                Err(mut e) => match e.take_message() {
                    // Refused before a byte was written (the connection was closing): the
                    // request is intact; try the next connection.
                    Some(back) => req = back,
                    None => return Err(ClientError::Http(e.into_error())),
                },
            }
        }
        // Boxed: connecting is the rare path, and its future is large.
        let mut sender = Box::pin(self.connect(dest)).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(lent(
                resp,
                Connection {
                    sender,
                    client: self.id,
                },
            )),
            Err(e) => Err(ClientError::Http(e)),
        }
    }

    /// A new connection to `dest` (TCP, then TLS for https).
    async fn open(&self, dest: &Destination) -> Result<MaybeHttpsStream<TokioIo<TcpStream>>, ClientError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(ClientError::Connect)?;
        connector
            .call(dest.connect_uri.clone())
            .await
            .map_err(ClientError::Connect)
    }

    /// A new connection to `dest`, its driver spawned.
    async fn connect(&self, dest: &Destination) -> Result<http1::SendRequest<Body>, ClientError> {
        let io = self.open(dest).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ClientError::Connect(e.into()))?;
        let authority = dest.connect_uri.authority().cloned();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = ?authority, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The answer with its connection, unless it switched protocols (the connection then
/// belongs to the upgrade).
fn lent(resp: Response<Incoming>, conn: Connection) -> (Response<UpstreamBody>, Option<Connection>) {
    let reusable = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
    (resp.map(UpstreamBody::Hyper), reusable.then_some(conn))
}

mod lean;

#[cfg(test)]
mod tests;
