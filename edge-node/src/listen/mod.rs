//! Accept loops for the edge's HTTP listeners (proxy and admin): HTTP/1.1 and h2 on one
//! port, upgrades (WebSocket), a header-read timeout, limits on header size and count
//! (hyper answers 431), a cap on open connections (past it, a plaintext client gets 503 at
//! once and the connection is closed; nothing queues), and a graceful drain bounded in time.
//!
//! HTTP/2 rapid reset (CVE-2023-44487) is bounded per connection: at most 256 concurrent
//! streams, at most 20 streams reset by the client before they are served, at most 256
//! streams reset by the edge for the client's errors; past either, GOAWAY and close. Request
//! bodies that stall are cut by the proxy (`stall.rs`).
//!
//! A plaintext connection starts on the lean loop (`listen/lean.rs`), which serves bodiless
//! HTTP/1.1 requests itself and hands the connection, with every byte it read, to hyper at
//! the first request it does not take (a body, an upgrade, h2, anything unusual or
//! malformed).
//!
//! Every HTTP/1 connection hyper serves reads through [`framing::Guarded`], which checks
//! each request head on the wire and refuses ambiguous framing (request smuggling) before
//! hyper's lenient parser sees it; the lean loop checks its heads the same way.
//!
//! Upgraded connections stay under the same accounting: each request carries [`Held`] (its
//! connection's slot and the shutdown), which the tunnel keeps until it ends.
//!
//! A listener given a TLS acceptor (`--tls-listen`) runs the handshake first, in the
//! connection's task and bounded by [`TLS_HANDSHAKE_TIMEOUT`], then serves through hyper; its
//! requests carry the [`ClientTls`] extension.
//!
//! ```text
//!  accept ─> spawn(lean loop ─first request it does not take─> hyper)      (plaintext)
//!         └> spawn(TLS handshake ≤ 10 s ─> hyper)                          (TLS)
//!  every connection is watched by GracefulShutdown ... shutdown
//!    └─ stop accepting ─> ask every connection to finish ─> wait (<= drain) ─> done
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::body::{Body, ClientBody};
use crate::listen::tls::ClientTls;

pub mod framing;
mod lean;
pub mod tls;

/// Hard limits on a request head, past which hyper itself answers 431 (with no body). The
/// proxy answers 431 with a JSON error well before them (`phases::normalize::MAX_HEADERS`,
/// `phases::normalize::MAX_HEADER_BYTES`).
const HEAD_BUFFER_BYTES: usize = 128 * 1024;
// The header count is left at hyper's default (100): setting any cap makes hyper 1.12 allocate
// two header arrays per request instead of using its stack arrays.
/// Most concurrent h2 streams per connection.
const MAX_H2_STREAMS: u32 = 256;
/// HTTP/2 rapid reset (CVE-2023-44487): streams the client opens and resets before they are
/// served are counted; past this many pending at once, the connection gets GOAWAY
/// (ENHANCE_YOUR_CALM) and closes.
const MAX_H2_PENDING_RESETS: usize = 20;
/// Streams the edge itself resets because of the client's errors, per connection, before
/// GOAWAY (the same attack made through malformed frames, RUSTSEC-2024-0003).
const MAX_H2_LOCAL_ERROR_RESETS: usize = 256;
/// How long a client may take to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers the requests of one listener, whoever read them: hyper (`Incoming` bodies) or the
/// lean loop (`listen/lean.rs`, bodiless requests).
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle<B: ClientBody + Unpin>(
        &self,
        remote: SocketAddr,
        req: Request<B>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// What a request carries of its connection for work that outlives the request (an
/// upgraded tunnel, `upstream/tunnel.rs`): the connection's slot, so the work counts against
/// the cap until it ends, and the listener's shutdown with its drain period.
#[derive(Clone)]
pub struct Held {
    _slot: Arc<OwnedSemaphorePermit>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
}

impl Held {
    /// Resolves when the drain that follows a shutdown is about to end (a little before the
    /// listener stops waiting for held work).
    pub async fn drained(&mut self) {
        signalled(&mut self.shutdown).await;
        tokio::time::sleep(self.drain.saturating_sub(self.drain / 10)).await;
    }
}

/// Connections past the cap being answered 503 at once; past this many more, a connection
/// past the cap is closed unanswered.
const MAX_OVERFLOW: usize = 256;
/// How long answering one of them may take.
const OVERFLOW_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers a connection past the cap with a 503 and closes it. What the client sent first is
/// read (up to 4 KiB, within [`OVERFLOW_TIMEOUT`]) so the close does not reset the answer.
async fn overloaded(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str =
        r#"{"error":{"code":"overloaded","message":"the edge is at its connection limit; retry shortly"}}"#;
    let answer = async {
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await?;
        let id = crate::request_id::generate();
        let text = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
             connection: close\r\nx-request-id: {}\r\ncontent-length: {}\r\n\r\n{BODY}",
            id.to_str().unwrap_or_default(),
            BODY.len()
        );
        stream.write_all(text.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(OVERFLOW_TIMEOUT, answer).await;
}

/// Resolves once `shutdown` says so (or its sender is gone).
pub async fn signalled(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped, which is a shutdown too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// How one listener serves: its drain, its connection cap, TLS, and the send timeout.
#[derive(Clone)]
pub struct Options {
    /// How long a drain waits for connections (and tunnels) after a shutdown.
    pub drain: Duration,
    /// Most connections open at once; past them, [`overloaded`].
    pub max_connections: usize,
    /// TLS on every connection, when given.
    pub tls: Option<TlsAcceptor>,
    /// How long a write may wait on a client that takes no byte (slow read).
    pub send_timeout: Duration,
    /// How long a client may take to send a request's head, counted from the moment the
    /// connection waits for one (slowloris).
    pub header_read_timeout: Duration,
}

/// Serves `listener` until `shutdown`, then drains for at most `opts.drain`.
pub async fn serve<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
    opts: Options,
) {
    let Options {
        drain,
        max_connections,
        tls,
        send_timeout,
        header_read_timeout,
    } = opts;
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(HEAD_BUFFER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HEAD_BUFFER_BYTES as u32)
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_pending_accept_reset_streams(MAX_H2_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_H2_LOCAL_ERROR_RESETS)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    let overflow = Arc::new(Semaphore::new(MAX_OVERFLOW));
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = signalled(&mut shutdown) => break,
        };
        // Past the cap: a plaintext client is told 503 at once (a few at a time, each bounded
        // in time), anything else is closed; nothing is queued.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            match overflow.clone().try_acquire_owned() {
                Ok(permit) if tls.is_none() => {
                    tokio::spawn(async move {
                        let _permit = permit;
                        overloaded(stream).await;
                    });
                }
                _ => drop(stream),
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let lean_handler = handler.clone();
        let handler = handler.clone();
        let over_tls = tls.is_some();
        let slot = Arc::new(slot);
        let held = Held {
            _slot: slot.clone(),
            shutdown: shutdown.clone(),
            drain,
        };
        let service = service_fn(move |mut req: Request<Incoming>| {
            let handler = handler.clone();
            if over_tls {
                req.extensions_mut().insert(ClientTls);
            }
            req.extensions_mut().insert(held.clone());
            async move { Ok::<_, Infallible>(handler.handle(remote, req).await) }
        });
        if let Some(acceptor) = &tls {
            // The handshake runs in the connection's task, so a slow client never holds up
            // accepting; the watcher is taken now, so a drain waits for this connection too.
            let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
            tokio::spawn(async move {
                let _slot = slot;
                let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(listener = name, %remote, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(listener = name, %remote, "tls handshake timed out");
                        return;
                    }
                };
                // HTTP/1 heads are checked on the wire (`framing.rs`); h2 frames itself.
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let result = if h2 {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                } else {
                    let io = TokioIo::new(framing::Guarded::new(stream, send_timeout));
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    watcher.watch(conn.into_owned()).await
                };
                if let Err(e) = result {
                    tracing::debug!(listener = name, %remote, error = %crate::error::chain(&*e), "connection ended with an error");
                }
            });
            continue;
        }
        // Plaintext: the lean loop serves what it can; hyper takes over the rest. The watcher
        // is taken now, so a drain waits for this connection whoever serves it.
        let conn_shutdown = shutdown.clone();
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            let conn = lean::Conn::new(stream);
            let lean::End::HandOver(io) = lean::serve(
                conn,
                remote,
                &lean_handler,
                header_read_timeout,
                send_timeout,
                conn_shutdown,
            )
            .await
            else {
                return;
            };
            let io = TokioIo::new(framing::Guarded::new(io, send_timeout));
            let conn = builder.serve_connection_with_upgrades(io, service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(listener = name, %remote, error = %crate::error::chain(&*e), "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::debug!(listener = name, "draining connections");
    // Connections first, then work that holds a connection's slot (upgraded tunnels, which
    // close themselves as the drain ends): every slot back means nothing is left.
    let everything = async {
        graceful.shutdown().await;
        let all = u32::try_from(max_connections.max(1)).unwrap_or(u32::MAX);
        let _ = slots.acquire_many(all).await;
    };
    if tokio::time::timeout(drain, everything).await.is_err() {
        tracing::warn!(
            listener = name,
            ?drain,
            "connections still open after the drain period; closing them"
        );
    }
}
