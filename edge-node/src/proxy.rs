//! The proxy listener's handler: walks a request through the phases, in order, and maps any
//! failure once to its JSON answer. Every answer carries `x-request-id`.
//!
//! ```text
//!  check framing/path ─> route ─> lifecycle (retired?) ─> authenticate ─> authorize
//!   (subscription) ─> request policies (size, headers) ─> pick upstream target
//!   ─> forward (timeouts; WebSocket upgrades spliced) ─> response policies and headers
//! ```
//! The config is one snapshot loaded at the start of the request; a config swap mid-request
//! does not affect it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::body::{Body, ClientBody};
use crate::dispatch::{self, Dispatch};
use crate::error::{Fault, ProxyError};
use crate::forward;
use crate::router::{stripped_path, RequestInfo};
use crate::server::Handler;
use crate::snapshot::Backend;
use crate::state::Shared;
use crate::{auth, authorize, request_id};

#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn proxy<B: ClientBody>(
        &self,
        remote: SocketAddr,
        request_id: &HeaderValue,
        mut req: Request<B>,
    ) -> Result<Response<Body>, ProxyError> {
        check_framing(req.headers())?;
        check_path(req.uri().path())?;
        let snapshot = self.shared.snapshot().ok_or(ProxyError::NotReady)?;

        let (service, strip_len) = {
            let info = RequestInfo {
                method: req.method(),
                host: forward::request_host(&req),
                path: req.uri().path(),
                headers: req.headers(),
            };
            let m = snapshot.router.route(&info).ok_or(ProxyError::NoRoute)?;
            (m.target.clone(), m.strip_len)
        };

        authorize::check_lifecycle(&service)?;
        let consumer = auth::authenticate(&snapshot, &service, req.headers())?;
        if let Some(c) = &consumer {
            authorize::check_subscription(&snapshot, &service, c)?;
        }

        service.policies.check_request_size(req.headers())?;
        let upgrade = forward::upgrade_requested(&req);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let req = req.map(|b| service.policies.limit_body(b));

        let pool = match &service.backend {
            Backend::Upstream(pool) => pool,
            Backend::Ai => return Err(ProxyError::NotImplemented("the ai gateway")),
        };
        let path = stripped_path(req.uri().path(), strip_len).to_string();
        let resp = dispatch::send(
            req,
            &Dispatch {
                pool,
                path: &path,
                remote,
                request_id,
                consumer: consumer.as_ref(),
                upgrade: upgrade.as_ref(),
                policies: &service.policies,
            },
        )
        .await?;
        let mut resp = match client_upgrade {
            Some(client) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                forward::splice_upgrade(client, resp, request_id)
            }
            _ => forward::downstream_response(resp),
        };
        service.policies.apply_response(resp.headers_mut());
        authorize::add_lifecycle_headers(&service, resp.headers_mut());
        Ok(resp)
    }
}

impl Handler for Proxy {
    async fn handle(&self, remote: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        self.answer(remote, req).await
    }
}

impl Proxy {
    /// Answers one request (any body type, so tests need no sockets).
    pub async fn answer<B: ClientBody>(&self, remote: SocketAddr, req: Request<B>) -> Response<Body> {
        let started = Instant::now();
        let request_id = request_id::from_headers(req.headers());
        let method = req.method().clone();
        let uri = req.uri().clone();
        let mut resp = match self.proxy(remote, &request_id, req).await {
            Ok(resp) => resp,
            Err(e) => {
                let id = request_id.to_str().unwrap_or_default();
                match e.fault() {
                    Fault::Client => {
                        tracing::debug!(request_id = id, %method, path = uri.path(), code = e.code(), "request refused")
                    }
                    Fault::Upstream | Fault::Gateway => {
                        tracing::warn!(request_id = id, %method, path = uri.path(), code = e.code(), retryable = e.retryable(), error = %e, "request failed")
                    }
                }
                e.to_response()
            }
        };
        tracing::debug!(
            request_id = request_id.to_str().unwrap_or_default(),
            %method,
            path = uri.path(),
            status = resp.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request answered"
        );
        resp.headers_mut().insert(request_id::HEADER, request_id);
        resp
    }
}

/// Most request headers the proxy accepts.
pub const MAX_HEADERS: usize = 100;
/// Most bytes of request headers (names and values) the proxy accepts.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses ambiguous framing (request smuggling): Content-Length with Transfer-Encoding, or
/// Content-Length more than once; and heads past [`MAX_HEADERS`] or [`MAX_HEADER_BYTES`].
fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    if headers.len() > MAX_HEADERS {
        return Err(ProxyError::HeadersTooLarge);
    }
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(ProxyError::HeadersTooLarge);
    }
    let lengths = headers.get_all(CONTENT_LENGTH).iter().count();
    if lengths > 0 && headers.contains_key(TRANSFER_ENCODING) {
        return Err(ProxyError::BadRequest(
            "content-length and transfer-encoding together",
        ));
    }
    if lengths > 1 {
        return Err(ProxyError::BadRequest("content-length more than once"));
    }
    Ok(())
}

/// Refuses dot segments (`/a/../b`, also percent-encoded), which would let a request match
/// one route and reach another path upstream.
fn check_path(path: &str) -> Result<(), ProxyError> {
    const DOTS: [&str; 6] = [".", "..", "%2e", "%2e%2e", ".%2e", "%2e."];
    if path
        .split('/')
        .any(|seg| DOTS.iter().any(|d| seg.eq_ignore_ascii_case(d)))
    {
        return Err(ProxyError::BadRequest("dot segments in the path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
