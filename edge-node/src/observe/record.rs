//! The call record: one per request, built from the request context when the answer's body
//! ends (or is dropped), so that latency and bytes out are the whole exchange's.
//!
//! What never goes in: a credential (an API key appears as its public id, `tgk_<id>`), the
//! query string (it may carry one), request or answer headers and bodies, and an upstream
//! target's user info.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri};
use serde::Serialize;

use crate::observe::metrics::{Observation, RouteStats};
use crate::observe::trace::TraceContext;

/// A phase of the request, for its child span.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub name: &'static str,
    pub start: Instant,
    pub end: Instant,
}

/// What one call leaves behind.
#[derive(Debug)]
pub struct CallRecord {
    /// When the request arrived (wall clock), and its monotonic twin.
    pub time: SystemTime,
    pub started: Instant,
    pub request_id: HeaderValue,
    pub trace: TraceContext,
    /// The route's stats (and its tenant, service and route labels); the unrouted stats
    /// when no route matched.
    pub stats: Arc<RouteStats>,
    pub app: Option<String>,
    /// The credential's public part (`tgk_<id>` for an API key).
    pub key: Option<String>,
    pub method: Method,
    pub uri: Uri,
    pub status: u16,
    /// The edge's error code when the edge answered with an error.
    pub error: Option<&'static str>,
    pub latency: Duration,
    /// Until the upstream's answer head (all attempts).
    pub upstream_latency: Option<Duration>,
    /// The target that answered, `scheme://host:port`.
    pub upstream: Option<Arc<str>>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub remote: IpAddr,
    /// Timed phases, when the request is traced.
    pub phases: Vec<Phase>,
}

impl CallRecord {
    pub fn observation(&self) -> Observation {
        Observation {
            status: self.status,
            latency: self.latency,
            upstream: self.upstream_latency,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }

    /// When something happened, on the wall clock.
    pub fn wall(&self, at: Instant) -> SystemTime {
        self.time + at.saturating_duration_since(self.started)
    }

    /// The record as one JSON object (one line of the call log, the body of an OTLP log).
    pub fn json(&self) -> Json<'_> {
        let labels = &self.stats.labels;
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Json {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            request_id: self.request_id.to_str().unwrap_or_default(),
            trace_id: self.trace.trace_hex(),
            span_id: hex::encode(self.trace.span_id),
            tenant: opt(&labels.tenant),
            service: opt(&labels.service),
            route: opt(&labels.route),
            app: self.app.as_deref(),
            key: self.key.as_deref(),
            method: self.method.as_str(),
            path: self.uri.path(),
            status: self.status,
            error: self.error,
            latency_ms: ms(self.latency),
            upstream_latency_ms: self.upstream_latency.map(ms),
            upstream: self.upstream.as_deref(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            client_ip: self.remote.to_string(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A call record's JSON form (field order is the log's column order).
#[derive(Debug, Serialize)]
pub struct Json<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub trace_id: String,
    pub span_id: String,
    pub tenant: Option<String>,
    pub service: Option<String>,
    pub route: Option<String>,
    pub app: Option<&'a str>,
    pub key: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub error: Option<&'static str>,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub upstream: Option<&'a str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client_ip: String,
}
