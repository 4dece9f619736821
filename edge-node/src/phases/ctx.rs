//! The request context: what the phases learn about one request, carried from phase to
//! phase as one typed value (pingora's `CTX`). A phase reads what earlier ones noted and
//! notes what it learned; a new phase adds a field here rather than a parameter to every
//! function after it.
//!
//! ```text
//!  arrival: request id, peer, clock, method and URI
//!   ─> route: `route` ─> cors: `cors` ─> authenticate: `consumer` ─> rate limit: `limit`
//!   ─> forward: `upgrade`, `upstream`, `upstream_latency`
//!   ─> answer: the cors grant, the limit's headers and the request id go on it, whatever
//!      it is; the call record is made of the rest (`observe`)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri};

use crate::consumer::Consumer;
use crate::error::ProxyError;
use crate::observe::metrics::RouteStats;
use crate::observe::record::{AiCell, Phase};
use crate::observe::trace::TraceContext;
use crate::phases::cors::CorsReply;
use crate::phases::ratelimit::LimitHeaders;
use crate::phases::service::ServiceEntry;
use crate::upstream::forward::Forward;

/// One request's state, from its arrival to its answer.
#[derive(Debug)]
pub struct RequestCtx {
    /// `x-request-id`: the client's when usable, else a new one; on every answer.
    pub request_id: HeaderValue,
    /// The TCP peer (the client, or the proxy in front of it).
    pub remote: SocketAddr,
    /// When the request arrived (monotonic, and on the wall clock).
    pub started: Instant,
    pub time: SystemTime,
    /// Its place in a trace (continued from the client's `traceparent`, or new).
    pub trace: TraceContext,
    /// Whether the phases are timed (a sampled request while spans are exported).
    pub timing: bool,
    /// The timed phases, for the trace's child spans.
    pub phases: Vec<Phase>,
    pub method: Method,
    pub uri: Uri,
    /// Phase route: the service and how the path is forwarded.
    pub route: Option<Matched>,
    /// Phase cors: the grant every answer carries, errors included.
    pub cors: Option<CorsReply>,
    /// Phase authenticate: the caller, when the service asks for a credential.
    pub consumer: Option<Consumer>,
    /// Phase rate limit: the tightest limit's headers, on every answer after it.
    pub limit: Option<LimitHeaders>,
    /// The protocol the client asked to switch to (`Upgrade`, WebSocket), if any.
    pub upgrade: Option<HeaderValue>,
    /// The request arrived over TLS (`--tls-listen`).
    pub client_tls: bool,
    /// Phase forward: the `traceparent` sent upstream (when the trace is the edge's to pass on).
    pub traceparent: Option<HeaderValue>,
    /// Phase forward: the target that answered (`scheme://host:port`), and how long it took
    /// to answer (all attempts, until the answer head).
    pub upstream: Option<Arc<str>>,
    pub upstream_latency: Option<Duration>,
    /// Phase AI: what the call used, filled in while its answer streams.
    pub ai: Option<AiCell>,
}

/// What routing found.
#[derive(Debug, Clone)]
pub struct Matched {
    pub service: Arc<ServiceEntry>,
    /// The route's request metrics.
    pub stats: Arc<RouteStats>,
    /// How many leading bytes of the path `strip_prefix` drops.
    pub strip_len: Option<usize>,
}

impl RequestCtx {
    pub fn new(
        request_id: HeaderValue,
        remote: SocketAddr,
        method: Method,
        uri: Uri,
        trace: TraceContext,
        timing: bool,
    ) -> Self {
        Self {
            request_id,
            remote,
            started: Instant::now(),
            time: SystemTime::now(),
            trace,
            timing,
            phases: Vec::new(),
            method,
            uri,
            route: None,
            cors: None,
            consumer: None,
            limit: None,
            upgrade: None,
            client_tls: false,
            traceparent: None,
            upstream: None,
            upstream_latency: None,
            ai: None,
        }
    }

    /// What routing found; a phase that runs before routing gets `NoRoute`.
    pub fn route(&self) -> Result<&Matched, ProxyError> {
        self.route.as_ref().ok_or(ProxyError::NoRoute)
    }

    /// What the upstream request is built from (`upstream::forward`).
    pub fn forward(&self) -> Result<Forward<'_>, ProxyError> {
        Ok(Forward {
            strip_len: self.route()?.strip_len,
            remote: self.remote,
            request_id: &self.request_id,
            consumer: self.consumer.as_ref(),
            upgrade: self.upgrade.as_ref(),
            client_tls: self.client_tls,
            traceparent: self.traceparent.as_ref(),
        })
    }
}
