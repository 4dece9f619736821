//! The call record: one per request, built from the request context when the answer's body
//! ends (or is dropped), so that latency and bytes out are the whole exchange's.
//!
//! What never goes in: a credential (an API key appears as its public id, `tgk_<id>`), the
//! query string (it may carry one), request or answer headers and bodies, and an upstream
//! target's user info.

use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri};

use crate::observe::metrics::{Observation, RouteStats};
use crate::observe::trace::TraceContext;

/// A phase of the request, for its child span.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub name: &'static str,
    pub start: Instant,
    pub end: Instant,
}

/// What an AI call used: filled in by the AI stage while the answer streams, read when the
/// record is finished. Token counts are as the provider reported them (or estimated).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AiUsage {
    /// `provider/model` that answered (after any fallback).
    pub model: String,
    /// Every input token, cached ones included.
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    /// Every output token, reasoning ones included.
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    /// USD, from the model's prices.
    pub cost: f64,
    /// From the request's arrival to the first token of the answer sent to the client.
    pub ttft: Option<Duration>,
    /// The provider reported no usage: the counts are the edge's estimate.
    pub estimated: bool,
    /// Providers (or keys) tried before this answer, 0 when the first one answered.
    pub fallbacks: u32,
}

/// The shared slot of an AI call's usage.
pub type AiCell = Arc<Mutex<AiUsage>>;

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
    /// An AI call's usage.
    pub ai: Option<AiCell>,
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

    /// Appends the record as one JSON object and a newline (one line of the call log).
    /// Written by hand: it runs once per request on the call-log thread, and a generic
    /// serializer cost about five times as much here (BENCHMARKS.md).
    pub fn write_json(&self, out: &mut Vec<u8>, clock: &mut WallClock) {
        let labels = &self.stats.labels;
        let mut hex_buf = [0u8; 32];
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(clock.format(self.time).as_bytes());
        out.push(b'"');
        field_str(
            out,
            "request_id",
            Some(self.request_id.to_str().unwrap_or_default()),
        );
        hex::encode_to_slice(self.trace.trace_id, &mut hex_buf).expect("16 bytes are 32 hex digits");
        field_str(out, "trace_id", std::str::from_utf8(&hex_buf).ok());
        hex::encode_to_slice(self.trace.span_id, &mut hex_buf[..16]).expect("8 bytes are 16 hex digits");
        field_str(out, "span_id", std::str::from_utf8(&hex_buf[..16]).ok());
        field_str(out, "tenant", nonempty(&labels.tenant));
        field_str(out, "service", nonempty(&labels.service));
        field_str(out, "route", nonempty(&labels.route));
        field_str(out, "app", self.app.as_deref());
        field_str(out, "key", self.key.as_deref());
        field_str(out, "method", Some(self.method.as_str()));
        field_str(out, "path", Some(self.uri.path()));
        field_raw(out, "status", |o| push_u64(o, u64::from(self.status)));
        field_str(out, "error", self.error);
        field_raw(out, "latency_ms", |o| push_ms(o, self.latency));
        match self.upstream_latency {
            Some(d) => field_raw(out, "upstream_latency_ms", |o| push_ms(o, d)),
            None => field_str(out, "upstream_latency_ms", None),
        }
        field_str(out, "upstream", self.upstream.as_deref());
        field_raw(out, "bytes_in", |o| push_u64(o, self.bytes_in));
        field_raw(out, "bytes_out", |o| push_u64(o, self.bytes_out));
        let mut ip = IpText::default();
        field_str(out, "client_ip", Some(ip.format(self.remote)));
        if let Some(cell) = &self.ai {
            let u = cell.lock().unwrap_or_else(|e| e.into_inner());
            field_str(out, "model", Some(&u.model));
            for (name, n) in [
                ("input_tokens", u.input_tokens),
                ("cached_input_tokens", u.cached_input_tokens),
                ("output_tokens", u.output_tokens),
                ("reasoning_tokens", u.reasoning_tokens),
            ] {
                field_raw(out, name, |o| push_u64(o, n));
            }
            field_raw(out, "cost_usd", |o| {
                let _ = write!(o, "{:.9}", u.cost);
            });
            match u.ttft {
                Some(d) => field_raw(out, "ttft_ms", |o| push_ms(o, d)),
                None => field_str(out, "ttft_ms", None),
            }
            field_raw(out, "estimated", |o| {
                o.extend_from_slice(if u.estimated { b"true" } else { b"false" })
            });
            field_raw(out, "fallbacks", |o| push_u64(o, u64::from(u.fallbacks)));
        }
        out.extend_from_slice(b"}\n");
    }

    /// The record's JSON line, without the newline (the live tail's form).
    pub fn json_line(&self) -> String {
        let mut out = Vec::with_capacity(512);
        self.write_json(&mut out, &mut WallClock::default());
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

/// `,"name":` and a JSON string, or `null`.
fn field_str(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    field_raw(out, name, |o| match value {
        Some(v) => push_json_str(o, v),
        None => o.extend_from_slice(b"null"),
    });
}

fn field_raw(out: &mut Vec<u8>, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    value(out);
}

/// A JSON string: `"`, `\` and control characters escaped (RFC 8259), the rest as it is.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Milliseconds with three decimals (microsecond resolution).
fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
    push_u64(out, us / 1000);
    out.push(b'.');
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_json_with_every_field_and_escapes_what_it_must() {
        let mut r = crate::observe::testutil::record(502);
        r.uri = "/a%22b/x/caf%C3%A9?k=secret".parse().unwrap();
        r.app = Some("we\"ird\\app\n\u{1}é".into());
        r.latency = Duration::from_micros(1_234_567);
        r.upstream_latency = None;
        r.bytes_out = 18_446_744_073_709_551_615;
        let line = r.json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["app"], "we\"ird\\app\n\u{1}é");
        assert_eq!(v["path"], "/a%22b/x/caf%C3%A9");
        assert_eq!(v["latency_ms"], 1234.567);
        assert_eq!(v["upstream_latency_ms"], serde_json::Value::Null);
        assert_eq!(v["bytes_out"], u64::MAX);
        assert_eq!(v["status"], 502);
        assert_eq!(v["error"], "upstream_error");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["route"], "/orders");
        assert_eq!(v["key"], "tgk_0123456789ab");
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(v.as_object().unwrap().len(), 19, "{line}");
        assert!(!line.contains("secret"));
        let mut ms = Vec::new();
        push_ms(&mut ms, Duration::from_micros(5));
        assert_eq!(ms, b"0.005");
    }

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
