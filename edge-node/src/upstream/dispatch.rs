//! Proxy phase "upstream pick + send": picks a target with the upstream's balancer, sends
//! the request there, records the outcome on the target (in flight, latency, passive
//! ejection), and retries on another target when that is surely safe.
//!
//! ```text
//!  pick(key, tried) ──none left──> 503 no_healthy_upstream (or the last failure)
//!    │
//!  send ──answer──> latency; 5xx ? failure : success ──> answer (in flight until its body ends)
//!    └─ no answer ──> failure ──retry allowed?──yes──> pick another target
//!                                     └─no──> 502 upstream_error / 504 upstream_timeout
//! ```
//!
//! **Retry rule.** With `retries: N` on the upstream, a failed attempt is retried on a target
//! this request has not tried yet, at most N times, only when all of these hold:
//! 1. the method is idempotent: GET, HEAD, OPTIONS, PUT or DELETE (never POST or PATCH);
//! 2. the request has no body, or an empty one (nothing was read from the client that would
//!    have to be sent again);
//! 3. the attempt failed before the upstream could see any of it: no connection could be
//!    made (refused, unreachable, `timeouts.connect` elapsed).
//!
//! Anything the upstream answered, its own 502 or 503 included, goes back to the client as
//! it is; a `timeouts.request` expiry is not retried either (the upstream may be processing
//! the request). Each attempt has the full request timeout.
//!
//! A failure (an answer of 500 or more, or no answer) counts towards the target's passive
//! ejection; so does a failed attempt that was retried. An attempt that failed while the
//! client's body was still streaming is not held against the target (a client that aborts or
//! trickles uploads must not be able to eject targets). Latency is measured up to the
//! response headers; an attempt without an answer counts at least `timeouts.connect`, so
//! that `ewma` does not favour a target that fails fast.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Empty;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{self, ClientBody};
use crate::error::{Fault, ProxyError};
use crate::upstream::client::{self, Connection, UpstreamBody};
use crate::upstream::endpoint::InFlight;
use crate::upstream::forward::{self, Forward, SendError};
use crate::upstream::UpstreamPool;

/// What a service does to the headers of each attempt's request, once the edge has written
/// its own (the service's `headers` policy, `phases::policy`).
pub trait RewriteHeaders: Sync + std::fmt::Debug {
    fn rewrite(&self, headers: &mut http::HeaderMap);
}

/// What sending needs besides the request.
#[derive(Debug)]
pub struct Dispatch<'a> {
    pub pool: &'a UpstreamPool,
    /// Request header transforms, applied to each attempt.
    pub headers: &'a dyn RewriteHeaders,
    /// How each attempt's request is built.
    pub forward: Forward<'a>,
}

/// Whether a request may be sent again: an idempotent method and no body to resend.
pub fn replayable<B: HttpBody>(req: &Request<B>) -> bool {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    idempotent && (req.body().is_end_stream() || req.body().size_hint().exact() == Some(0))
}

/// The request again, with an empty body (only for [`replayable`] requests).
fn replay(parts: &http::request::Parts) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    // What the listener noted about the client (its TLS session, for instance).
    *req.extensions_mut() = parts.extensions.clone();
    req
}

/// Sends `req` to a target of the pool, retrying on others where the retry rule allows.
/// Returns the answer and the index of the target that gave it.
pub async fn send<B: ClientBody>(
    req: Request<B>,
    d: &Dispatch<'_>,
) -> Result<(Response<Tracked<UpstreamBody>>, usize), ProxyError> {
    let pool = d.pool;
    let key = pool.balancer.hash_key(req.headers(), d.forward.remote.ip());
    if pool.retries == 0 || !replayable(&req) {
        let i = pool
            .balancer
            .pick(key, &[])
            .ok_or(ProxyError::NoHealthyUpstream)?;
        return attempt(req, i, d).await.map(|r| (r, i)).map_err(ProxyError::from);
    }
    // The body is empty: keep the head and send it again as often as needed.
    let (parts, _) = req.into_parts();
    let mut tried = Vec::with_capacity(2);
    let mut last = ProxyError::NoHealthyUpstream;
    while tried.len() <= pool.retries as usize {
        let Some(i) = pool.balancer.pick(key, &tried) else {
            break;
        };
        tried.push(i);
        match attempt(replay(&parts), i, d).await {
            Ok(resp) => return Ok((resp, i)),
            Err(e) if e.unsent => last = e.error,
            Err(e) => return Err(e.error),
        }
    }
    Err(last)
}

async fn attempt<B: ClientBody>(
    req: Request<B>,
    i: usize,
    d: &Dispatch<'_>,
) -> Result<Response<Tracked<UpstreamBody>>, SendError> {
    let pool = d.pool;
    let target = &pool.targets[i];
    let mut upstream_req = forward::upstream_request(req, target, &d.forward)
        .map_err(|error| SendError { error, unsent: false })?;
    d.headers.rewrite(upstream_req.headers_mut());
    // Whether the whole request went out: only then is a missing answer the target's fault.
    let sent = Arc::new(AtomicBool::new(upstream_req.body().is_end_stream()));
    if !sent.load(Relaxed) {
        let done = sent.clone();
        upstream_req = upstream_req.map(|inner| body::stream(Watched { inner, done }));
    }

    let endpoint = pool.balancer.endpoint(i);
    let in_flight = endpoint.start();
    let started = Instant::now();
    let result = forward::send(pool, target, endpoint, upstream_req).await;
    let now = crate::clock::now();
    match result {
        Ok((resp, conn)) => {
            endpoint.observe_rtt(started.elapsed(), now);
            if resp.status().is_server_error() {
                failed(d, i, now);
            } else {
                endpoint.record_success(now);
            }
            // An answer that came before the whole request went out (an early 413, say)
            // leaves a connection still busy with the client's body: not for reuse.
            let conn = conn.filter(|_| sent.load(Relaxed));
            Ok(resp.map(|body| Tracked::new(body, in_flight, conn)))
        }
        Err(e) => {
            if e.error.fault() == Fault::Upstream && (e.unsent || sent.load(Relaxed)) {
                endpoint.observe_rtt(started.elapsed().max(pool.connect_timeout), now);
                failed(d, i, now);
            }
            tracing::warn!(
                request_id = d.forward.request_id.to_str().unwrap_or_default(),
                tenant = %pool.tenant,
                upstream = %pool.name,
                target = %target.url,
                unsent = e.unsent,
                error = %e.error,
                "upstream request failed"
            );
            Err(e)
        }
    }
}

/// Counts a failure of target `i`, logging an ejection.
fn failed(d: &Dispatch<'_>, i: usize, now: u64) {
    let pool = d.pool;
    if let Some(cool_off) = pool.balancer.endpoint(i).record_failure(now) {
        tracing::warn!(
            tenant = %pool.tenant,
            upstream = %pool.name,
            target = %pool.targets[i].url,
            cool_off_ms = cool_off.as_millis() as u64,
            "target ejected after consecutive failures"
        );
    }
}

/// A request body that notes when it has been sent to the end.
struct Watched {
    inner: crate::body::Body,
    done: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // The client may stop polling once the body says it ended, without waiting for `None`.
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream's answer body that keeps its request counted in flight until it ends (or is
/// dropped), then gives its connection back to the target's idle list: only when it ended,
/// since hyper closes a connection whose answer was not read to the end.
pub struct Tracked<B> {
    inner: B,
    in_flight: Option<InFlight>,
    conn: Option<Connection>,
}

impl<B> std::fmt::Debug for Tracked<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("in_flight", &self.in_flight.is_some())
            .field("pooled", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: HttpBody + Unpin> Tracked<B> {
    fn new(inner: B, in_flight: InFlight, conn: Option<Connection>) -> Self {
        let mut tracked = Tracked {
            inner,
            in_flight: Some(in_flight),
            conn,
        };
        // An empty answer (HEAD, 204, 304, `Content-Length: 0`) may never be polled.
        if tracked.inner.is_end_stream() {
            tracked.ended();
        }
        tracked
    }

    fn ended(&mut self) {
        if let (Some(in_flight), Some(conn)) = (self.in_flight.take(), self.conn.take()) {
            client::release(in_flight.endpoint().idle(), conn);
        }
    }
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.ended(),
            Poll::Ready(Some(Err(_))) => {
                self.conn = None;
                self.in_flight = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
