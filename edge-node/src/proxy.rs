//! The proxy listener's handler: walks a request through the phases, in order, and maps any
//! failure once to its JSON answer. Every answer carries `x-request-id`.
//!
//! ```text
//!  check framing (smuggling, header limits, control characters) ─> normalize path
//!   ─> route ─> ip filter (403 ip_denied) ─> cors (preflight answered here; grant noted)
//!   ─> lifecycle (retired?) ─> authenticate ─> authorize (subscription) ─> rate limits
//!   (429 rate_limited) ─> request policies (size, headers) ─> pick upstream target ─> forward (timeouts; body-read
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

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::{BodyExt, Limited};

use crate::ai::{self, AiCall, AiService, TokenBudget};
use crate::body::{Body, ClientBody};
use crate::config::state::Shared;
use crate::counters::peers::Peers;
use crate::error::{Fault, ProxyError};
use crate::listen::tls::ClientTls;
use crate::listen::Handler;
use crate::observe::record::{AiCell, CallRecord};
use crate::observe::trace::TraceContext;
use crate::observe::{phase_end, phase_start, Observer, Recorded};
use crate::phases::ctx::RequestCtx;
use crate::phases::service::{Backend, ServiceEntry};
use crate::phases::{auth, authorize, cors, normalize, ratelimit, route};
use crate::request_id;
use crate::stall::StallGuard;
use crate::upstream::dispatch::{self, Dispatch};
use crate::upstream::forward;

#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    peers: Arc<Peers>,
    observer: Arc<Observer>,
    body_read_timeout: Duration,
    upgrade_idle_timeout: Duration,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, peers: Arc<Peers>, observer: Arc<Observer>) -> Self {
        Self {
            shared,
            peers,
            observer,
            body_read_timeout: crate::DEFAULT_BODY_READ_TIMEOUT,
            upgrade_idle_timeout: crate::DEFAULT_UPGRADE_IDLE_TIMEOUT,
        }
    }

    /// How long an upgraded connection may carry no byte either way before it is closed.
    pub fn with_upgrade_idle_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_idle_timeout = timeout;
        self
    }

    /// How long a client may send no request body bytes before it is cut off.
    pub fn with_body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = timeout;
        self
    }

    /// The phases, in order; the first refusal is the answer.
    async fn proxy<B: ClientBody>(
        &self,
        ctx: &mut RequestCtx,
        req: Request<B>,
    ) -> Result<Response<Body>, ProxyError> {
        normalize::check_framing(req.headers())?;
        let timed = phase_start(ctx.timing);
        let mut req = normalize::check_path(req)?;
        let snapshot = self.shared.snapshot().ok_or(ProxyError::NotReady)?;

        let preflight = cors::Preflight::of(&req);
        route::route(ctx, &snapshot.router, &req, preflight.as_ref())?;
        phase_end(&mut ctx.phases, "route", timed);
        let service = ctx.route()?.service.clone();

        service.policies.check_ip(ctx.remote, req.headers())?;
        if let Some(policy) = &service.policies.cors {
            if let Some(p) = &preflight {
                return policy.preflight(p);
            }
            ctx.cors = Some(policy.reply(req.headers()));
        }

        authorize::check_lifecycle(&service)?;
        let timed = phase_start(ctx.timing);
        auth::authenticate(ctx, &snapshot.credentials, req.headers()).await?;
        authorize::check_subscription(ctx, &snapshot.subscriptions)?;
        phase_end(&mut ctx.phases, "authenticate", timed);
        let timed = phase_start(ctx.timing);
        let caller = ratelimit::Caller {
            remote: ctx.remote,
            consumer: ctx.consumer.as_ref(),
            tenant: &service.tenant,
            service: &service.name,
            headers: req.headers(),
        };
        let (limit, verdict) = service.policies.rate_limits.check(&caller, &self.peers);
        if limit.is_some() {
            ctx.route()?.stats.limit_decision(verdict.is_ok());
        }
        ctx.limit = limit;
        phase_end(&mut ctx.phases, "rate_limit", timed);
        verdict?;
        if let Backend::Ai(ai) = &service.backend {
            let budgets = service.policies.rate_limits.token_budgets(&caller, &self.peers);
            return self.ai(ctx, ai, &service, req, budgets).await;
        }

        service.policies.check_request_size(req.headers())?;
        ctx.upgrade = forward::upgrade_requested(&req);
        ctx.client_tls = req.extensions().get::<ClientTls>().is_some();
        let client_upgrade = ctx.upgrade.is_some().then(|| {
            let held = req.extensions().get::<crate::listen::Held>().cloned();
            (hyper::upgrade::on(&mut req), held)
        });

        let Backend::Upstream(pool) = &service.backend else {
            unreachable!("AI services are answered above");
        };
        if self.observer.traces() {
            ctx.traceparent = Some(ctx.trace.upstream_header());
        }
        let dispatch = Dispatch {
            pool,
            headers: &service.policies,
            forward: ctx.forward()?,
        };
        let sent_at = Instant::now();
        // Only a size policy wraps the body (it then fails with BodyTooLarge past the limit
        // while streaming); otherwise the client's body goes on as it is.
        let sent = match service.policies.max_body {
            Some(max) => dispatch::send(req.map(|b| Limited::new(b, max as usize)), &dispatch).await,
            None => dispatch::send(req, &dispatch).await,
        };
        ctx.upstream_latency = Some(sent_at.elapsed());
        phase_end(&mut ctx.phases, "upstream", ctx.timing.then_some(sent_at));
        let (resp, target) = sent?;
        ctx.upstream = Some(pool.targets[target].public.clone());
        let mut resp = match client_upgrade {
            Some((client, held)) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                crate::upstream::tunnel::splice(
                    client,
                    resp,
                    &ctx.request_id,
                    self.upgrade_idle_timeout,
                    held,
                )
            }
            _ => forward::downstream_response(resp),
        };
        service.policies.apply_response(resp.headers_mut());
        authorize::add_lifecycle_headers(&service, resp.headers_mut());
        Ok(resp)
    }
}

impl Proxy {
    /// An AI service's call: the body read whole (bounded by the service's size policy),
    /// then the AI stage. Its usage lands in the call record through `ctx.ai`.
    async fn ai<B: ClientBody>(
        &self,
        ctx: &mut RequestCtx,
        ai: &AiService,
        service: &ServiceEntry,
        req: Request<B>,
        budgets: Vec<TokenBudget>,
    ) -> Result<Response<Body>, ProxyError> {
        service.policies.check_request_size(req.headers())?;
        let max = service.policies.max_body.unwrap_or(MAX_AI_REQUEST_BYTES);
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, max as usize)
            .collect()
            .await
            .map_err(|e| body_error(&*e))?
            .to_bytes();
        let cell = AiCell::default();
        ctx.ai = Some(cell.clone());
        let sent_at = Instant::now();
        let call = AiCall {
            method: &parts.method,
            path: parts.uri.path(),
            body,
            started: ctx.started,
            budgets,
            peers: &self.peers,
            cell,
        };
        let answered = ai::serve(ai, call).await;
        ctx.upstream_latency = Some(sent_at.elapsed());
        phase_end(&mut ctx.phases, "ai", ctx.timing.then_some(sent_at));
        let mut resp = answered?;
        service.policies.apply_response(resp.headers_mut());
        authorize::add_lifecycle_headers(service, resp.headers_mut());
        Ok(resp)
    }
}

/// Largest AI request body when the service has no `request_size` policy.
const MAX_AI_REQUEST_BYTES: u64 = 8 << 20;

/// Why reading a client's body failed.
fn body_error(e: &(dyn std::error::Error + 'static)) -> ProxyError {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyTooLarge;
        }
        if s.is::<crate::stall::BodyStalled>() {
            return ProxyError::BodyTimeout;
        }
        source = s.source();
    }
    ProxyError::BadRequest("the request body could not be read")
}

impl Handler for Proxy {
    async fn handle<B: ClientBody + Unpin>(&self, remote: SocketAddr, req: Request<B>) -> Response<Body> {
        let timeout = self.body_read_timeout;
        // Bytes in are counted only for requests that have a body.
        let received = (!req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
        let counter = received.clone();
        self.serve(
            remote,
            req.map(|b| StallGuard::new(b, timeout).counting(counter)),
            received,
        )
        .await
    }
}

impl Proxy {
    /// Answers one request (any body type, so tests need no sockets).
    #[cfg(test)]
    pub async fn answer<B: ClientBody>(&self, remote: SocketAddr, req: Request<B>) -> Response<Body> {
        self.serve(remote, req, None).await
    }

    /// Answers one request; `received` counts its body bytes, for the call record.
    async fn serve<B: ClientBody>(
        &self,
        remote: SocketAddr,
        req: Request<B>,
        received: Option<Arc<AtomicU64>>,
    ) -> Response<Body> {
        let request_id = request_id::from_headers(req.headers());
        let trace = TraceContext::from_headers(req.headers(), self.observer.sampler);
        let timing = trace.sampled && self.observer.traces();
        let mut ctx = RequestCtx::new(
            request_id,
            remote,
            req.method().clone(),
            req.uri().clone(),
            trace,
            timing,
        );
        let mut error = None;
        let mut resp = match self.proxy(&mut ctx, req).await {
            Ok(resp) => resp,
            Err(e) => {
                error = Some(e.code());
                let (id, method, path) = (
                    ctx.request_id.to_str().unwrap_or_default(),
                    &ctx.method,
                    ctx.uri.path(),
                );
                match e.fault() {
                    Fault::Client => {
                        tracing::debug!(request_id = id, %method, path, code = e.code(), "request refused")
                    }
                    Fault::Upstream | Fault::Gateway => {
                        tracing::warn!(request_id = id, %method, path, code = e.code(), retryable = e.retryable(), error = %e, "request failed")
                    }
                }
                let on_ai = ctx
                    .route
                    .as_ref()
                    .is_some_and(|m| matches!(m.service.backend, Backend::Ai(_)));
                if on_ai {
                    e.to_openai_response()
                } else {
                    e.to_response()
                }
            }
        };
        if let Some(cors) = &ctx.cors {
            cors.apply(resp.headers_mut());
        }
        if let Some(limit) = &ctx.limit {
            limit.apply(resp.headers_mut());
        }
        tracing::debug!(
            request_id = ctx.request_id.to_str().unwrap_or_default(),
            method = %ctx.method,
            path = ctx.uri.path(),
            status = resp.status().as_u16(),
            elapsed_ms = ctx.started.elapsed().as_millis() as u64,
            "request answered"
        );
        resp.headers_mut()
            .insert(request_id::HEADER, ctx.request_id.clone());
        let record = self.record(ctx, resp.status().as_u16(), error);
        let observer = self.observer.clone();
        resp.map(|body| Recorded::new(body, record, observer, received).boxed())
    }

    /// The call record of a request, finished when its answer's body ends.
    fn record(&self, ctx: RequestCtx, status: u16, error: Option<&'static str>) -> CallRecord {
        let stats = match &ctx.route {
            Some(m) => m.stats.clone(),
            None => self.observer.metrics.unrouted.clone(),
        };
        let (app, key) = match ctx.consumer {
            Some(c) => (Some(c.app), c.key_id),
            None => (None, None),
        };
        CallRecord {
            time: ctx.time,
            started: ctx.started,
            request_id: ctx.request_id,
            trace: ctx.trace,
            stats,
            app,
            key,
            method: ctx.method,
            uri: ctx.uri,
            status,
            error,
            latency: Duration::ZERO,
            upstream_latency: ctx.upstream_latency,
            upstream: ctx.upstream,
            bytes_in: 0,
            bytes_out: 0,
            remote: ctx.remote.ip(),
            phases: ctx.phases,
            ai: ctx.ai,
        }
    }
}

#[cfg(test)]
mod tests;
