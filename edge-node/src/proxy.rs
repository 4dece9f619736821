//! The proxy listener's handler: walks a request through the phases, in order, and maps any
//! failure once to its JSON answer. Every answer carries `x-request-id`.
//!
//! ```text
//!  check framing (smuggling, header limits, control characters) ─> normalize path
//!   ─> route ─> ip filter (403 ip_denied) ─> cors (preflight answered here; grant noted)
//!   ─> lifecycle (retired?) ─> authenticate ─> authorize (subscription) ─> request
//!   policies (size, headers) ─> pick upstream target ─> forward (timeouts; body-read
//!   timeout; WebSocket upgrades spliced) ─> response policies and headers (cors grant)
//! ```
//! The config is one snapshot loaded at the start of the request; a config swap mid-request
//! does not affect it.
//!
//! **Path rule** (`normalize.rs`), applied before routing, so the router matches exactly the
//! path the upstream receives: raw backslashes, malformed escapes, escaped `/`, `\` and NUL
//! (`%2F`, `%5C`, `%00`, any case), dot segments (also escaped, `%2e%2e`) and empty segments
//! (`//`) are refused with 400 `bad_request`; escaped unreserved characters are decoded
//! (`/%61dmin` is `/admin`, and is sent upstream as `/admin`); nothing else is changed.
//!
//! The ip filter and cors run before authentication: a refused address learns nothing about
//! credentials, and a preflight (which carries none) never needs one. The cors grant is
//! added to every answer after that phase, errors included, so a browser can read a 401.

use http_body_util::Limited;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};

use crate::body::{Body, ClientBody};
use crate::upstream::dispatch::{self, Dispatch};
use crate::error::{Fault, ProxyError};
use crate::upstream::forward::{self, Forward};
use crate::phases::router::RequestInfo;
use crate::listen::Handler;
use crate::config::snapshot::Backend;
use crate::stall::StallGuard;
use crate::config::state::Shared;
use crate::phases::{auth, authorize, cors, normalize};
use crate::request_id;

#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    body_read_timeout: Duration,
}

/// What earlier phases learned that the answer needs, whatever it turns out to be.
#[derive(Default)]
struct Ctx {
    /// The service's cors decision, applied to the answer (errors included).
    cors: Option<cors::CorsReply>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            body_read_timeout: crate::DEFAULT_BODY_READ_TIMEOUT,
        }
    }

    /// How long a client may send no request body bytes before it is cut off.
    pub fn with_body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = timeout;
        self
    }

    async fn proxy<B: ClientBody>(
        &self,
        remote: SocketAddr,
        request_id: &HeaderValue,
        req: Request<B>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError> {
        check_framing(req.headers())?;
        let mut req = check_path(req)?;
        let snapshot = self.shared.snapshot().ok_or(ProxyError::NotReady)?;

        let preflight = cors::Preflight::of(&req);
        let (service, strip_len) = {
            let route = |method: &Method| {
                let info = RequestInfo {
                    method,
                    host: forward::request_host(&req),
                    path: req.uri().path(),
                    headers: req.headers(),
                };
                snapshot
                    .router
                    .route(&info)
                    .map(|m| (m.target.clone(), m.strip_len))
            };
            // A preflight asks about the method it names: the service that would get that
            // method answers it when it has a cors policy; otherwise OPTIONS routes as usual.
            preflight
                .as_ref()
                .and_then(|p| route(&p.method))
                .filter(|(s, _)| s.policies.cors.is_some())
                .or_else(|| route(req.method()))
                .ok_or(ProxyError::NoRoute)?
        };

        service.policies.check_ip(remote, req.headers())?;
        if let Some(policy) = &service.policies.cors {
            if let Some(p) = &preflight {
                return policy.preflight(p);
            }
            ctx.cors = Some(policy.reply(req.headers()));
        }

        authorize::check_lifecycle(&service)?;
        let consumer = auth::authenticate(&snapshot, &service, req.headers()).await?;
        if let Some(c) = &consumer {
            authorize::check_subscription(&snapshot, &service, c)?;
        }

        service.policies.check_request_size(req.headers())?;
        let upgrade = forward::upgrade_requested(&req);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let pool = match &service.backend {
            Backend::Upstream(pool) => pool,
            Backend::Ai => return Err(ProxyError::NotImplemented("the ai gateway")),
        };
        let dispatch = Dispatch {
            pool,
            policies: &service.policies,
            forward: Forward {
                strip_len,
                remote,
                request_id,
                consumer: consumer.as_ref(),
                upgrade: upgrade.as_ref(),
            },
        };
        // Only a size policy wraps the body (it then fails with BodyTooLarge past the limit
        // while streaming); otherwise the client's body goes on as it is.
        let resp = match service.policies.max_body {
            Some(max) => dispatch::send(req.map(|b| Limited::new(b, max as usize)), &dispatch).await?,
            None => dispatch::send(req, &dispatch).await?,
        };
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
    async fn handle<B: ClientBody + Unpin>(&self, remote: SocketAddr, req: Request<B>) -> Response<Body> {
        let timeout = self.body_read_timeout;
        self.answer(remote, req.map(|b| StallGuard::new(b, timeout)))
            .await
    }
}

impl Proxy {
    /// Answers one request (any body type, so tests need no sockets).
    pub async fn answer<B: ClientBody>(&self, remote: SocketAddr, req: Request<B>) -> Response<Body> {
        let started = Instant::now();
        let request_id = request_id::from_headers(req.headers());
        let method = req.method().clone();
        let uri = req.uri().clone();
        let mut ctx = Ctx::default();
        let mut resp = match self.proxy(remote, &request_id, req, &mut ctx).await {
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
        if let Some(cors) = &ctx.cors {
            cors.apply(resp.headers_mut());
        }
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

/// Most request headers the proxy accepts (hyper itself refuses more than 100 on HTTP/1.1,
/// with a bare 431).
pub const MAX_HEADERS: usize = 64;
/// Most bytes of request headers (names and values) the proxy accepts.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses ambiguous framing (request smuggling): Content-Length with Transfer-Encoding, or
/// Content-Length more than once; heads past [`MAX_HEADERS`] or [`MAX_HEADER_BYTES`]; and
/// control characters (NUL, CR, LF...; tab is allowed) in header values (CVE-2019-9900).
/// Both HTTP parsers refuse those already (hyper's h1 answers 400, h2 resets the stream);
/// this holds whatever the request came from.
fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    if headers.len() > MAX_HEADERS {
        return Err(ProxyError::HeadersTooLarge);
    }
    let (mut bytes, mut lengths, mut chunked) = (0, 0, false);
    for (k, v) in headers {
        bytes += k.as_str().len() + v.len();
        // No early exit: the compiler can then check many bytes at once.
        let control = v.as_bytes().iter().fold(false, |found, &b| {
            found | ((b < 0x20) & (b != b'\t')) | (b == 0x7f)
        });
        if control {
            return Err(ProxyError::BadRequest("control characters in a header value"));
        }
        // Standard names compare as enum values.
        lengths += usize::from(*k == CONTENT_LENGTH);
        chunked |= *k == TRANSFER_ENCODING;
    }
    if bytes > MAX_HEADER_BYTES {
        return Err(ProxyError::HeadersTooLarge);
    }
    if lengths > 0 && chunked {
        return Err(ProxyError::BadRequest(
            "content-length and transfer-encoding together",
        ));
    }
    if lengths > 1 {
        return Err(ProxyError::BadRequest("content-length more than once"));
    }
    Ok(())
}

/// Normalizes the path by the path rule (module doc), or refuses it; the request carries
/// the normalized path from here on, to the router and to the upstream.
fn check_path<B>(mut req: Request<B>) -> Result<Request<B>, ProxyError> {
    let normalized = match normalize::normalize_path(req.uri().path()).map_err(ProxyError::BadRequest)? {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(p) => Some(p),
    };
    let Some(path) = normalized else {
        return Ok(req);
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    let pq = match parts.path_and_query.as_ref().and_then(|pq| pq.query()) {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let unusable = || ProxyError::BadRequest("the request path cannot be normalized");
    parts.path_and_query = Some(pq.parse().map_err(|_| unusable())?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| unusable())?;
    Ok(req)
}

#[cfg(test)]
mod tests;
