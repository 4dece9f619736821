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

    /// Writes the record as one JSON object and a newline (one line of the call log).
    pub fn write_json(&self, out: &mut impl std::io::Write, clock: &mut WallClock) -> std::io::Result<()> {
        let labels = &self.stats.labels;
        let mut trace = [0u8; 32];
        let mut span = [0u8; 16];
        hex::encode_to_slice(self.trace.trace_id, &mut trace).expect("16 bytes are 32 hex digits");
        hex::encode_to_slice(self.trace.span_id, &mut span).expect("8 bytes are 16 hex digits");
        let mut ip = IpText::default();
        let json = Json {
            time: clock.format(self.time),
            request_id: self.request_id.to_str().unwrap_or_default(),
            trace_id: std::str::from_utf8(&trace).unwrap_or_default(),
            span_id: std::str::from_utf8(&span).unwrap_or_default(),
            tenant: nonempty(&labels.tenant),
            service: nonempty(&labels.service),
            route: nonempty(&labels.route),
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
            client_ip: ip.format(self.remote),
        };
        serde_json::to_writer(&mut *out, &json)?;
        out.write_all(b"\n")
    }

    /// The record's JSON line, without the newline (the live tail's form).
    pub fn json_line(&self) -> String {
        let mut out = Vec::with_capacity(512);
        let _ = self.write_json(&mut out, &mut WallClock::default());
        out.pop();
        String::from_utf8(out).unwrap_or_default()
    }
}

/// RFC 3339 times with milliseconds, the formatting of the whole seconds kept from one
/// record to the next (the call-log thread formats one per record).
#[derive(Debug, Default)]
pub struct WallClock {
    secs: u64,
    prefix: String,
    out: String,
}

impl WallClock {
    pub fn format(&mut self, t: SystemTime) -> &str {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if self.prefix.is_empty() || d.as_secs() != self.secs {
            self.secs = d.as_secs();
            let whole = std::time::UNIX_EPOCH + Duration::from_secs(self.secs);
            // `2026-12-03T10:00:00Z` without the `Z`.
            let mut p = humantime::format_rfc3339_seconds(whole).to_string();
            p.pop();
            self.prefix = p;
        }
        use std::fmt::Write;
        self.out.clear();
        let _ = write!(self.out, "{}.{:03}Z", self.prefix, d.subsec_millis());
        &self.out
    }
}

/// An IP address as text, written without the formatting machinery for IPv4.
#[derive(Default)]
struct IpText {
    buf: [u8; 15],
    text: String,
}

impl IpText {
    fn format(&mut self, ip: IpAddr) -> &str {
        match ip {
            IpAddr::V4(v4) => {
                let mut n = 0;
                for (i, octet) in v4.octets().iter().enumerate() {
                    if i > 0 {
                        self.buf[n] = b'.';
                        n += 1;
                    }
                    let (h, t, o) = (octet / 100, octet / 10 % 10, octet % 10);
                    if h > 0 {
                        self.buf[n] = b'0' + h;
                        n += 1;
                    }
                    if h > 0 || t > 0 {
                        self.buf[n] = b'0' + t;
                        n += 1;
                    }
                    self.buf[n] = b'0' + o;
                    n += 1;
                }
                std::str::from_utf8(&self.buf[..n]).unwrap_or_default()
            }
            IpAddr::V6(v6) => {
                self.text = v6.to_string();
                &self.text
            }
        }
    }
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A call record's JSON form (field order is the log's column order).
#[derive(Debug, Serialize)]
pub struct Json<'a> {
    pub time: &'a str,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub tenant: Option<&'a str>,
    pub service: Option<&'a str>,
    pub route: Option<&'a str>,
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
    pub client_ip: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_times_are_written_as_the_std_formatters_would() {
        let mut ip = IpText::default();
        for a in [
            "127.0.0.1",
            "10.200.3.45",
            "0.0.0.0",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::7",
        ] {
            let parsed: IpAddr = a.parse().unwrap();
            assert_eq!(ip.format(parsed), parsed.to_string());
        }
        let mut clock = WallClock::default();
        for ms in [
            0u64,
            999,
            1_000,
            1_764_000_123_456,
            1_764_000_123_999,
            1_764_000_124_000,
        ] {
            let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(
                clock.format(t),
                humantime::format_rfc3339_millis(t).to_string(),
                "{ms}"
            );
        }
    }
}
