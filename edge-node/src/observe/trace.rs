//! W3C trace context: the `traceparent` a request arrives with is continued (same trace id,
//! the client's span as parent, its sampled flag kept), otherwise a new trace starts and is
//! sampled at the configured ratio. The upstream receives a `traceparent` naming the edge's
//! upstream span, so its spans nest under the edge's.
//!
//! ```text
//!  client traceparent 00-<trace>-<parent>-01 ─> server span (parent: the client's)
//!                                                  ├─ phase spans: route, authenticate, ...
//!                                                  └─ upstream span ─> 00-<trace>-<upstream span>-01
//! ```

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// One request's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span, when the request carried a `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// The edge's server span for this request.
    pub span_id: [u8; 8],
    /// The span of the call to the upstream (the parent the upstream sees).
    pub upstream_span: [u8; 8],
    pub sampled: bool,
}

/// Which new traces are recorded.
#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    /// Fraction of new traces sampled, 0.0 to 1.0 (a continued trace keeps its flag).
    pub ratio: f64,
}

impl TraceContext {
    /// Continues the request's trace, or starts one.
    pub fn from_headers(headers: &HeaderMap, sampler: Sampler) -> TraceContext {
        let (span_id, upstream_span) = (random_span_id(), random_span_id());
        match headers.get(TRACEPARENT).and_then(|v| parse(v.as_bytes())) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent: Some(parent),
                span_id,
                upstream_span,
                sampled: flags & 1 == 1,
            },
            None => {
                let (a, b) = (random_u64(), random_u64());
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&a.to_be_bytes());
                trace_id[8..].copy_from_slice(&b.to_be_bytes());
                // The top 53 bits as a uniform fraction in [0, 1).
                let draw = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
                TraceContext {
                    trace_id,
                    parent: None,
                    span_id,
                    upstream_span,
                    sampled: draw < sampler.ratio,
                }
            }
        }
    }

    /// The `traceparent` for the upstream request.
    pub fn upstream_header(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex::encode_to_slice(self.trace_id, &mut out[3..35]).expect("16 bytes are 32 hex digits");
        out[35] = b'-';
        hex::encode_to_slice(self.upstream_span, &mut out[36..52]).expect("8 bytes are 16 hex digits");
        out[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        HeaderValue::from_bytes(&out).expect("hex is a valid header value")
    }

    #[cfg(test)]
    pub fn trace_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

/// `version-traceid-parentid-flags`. Version `ff` is invalid, and version `00` is exactly
/// 55 characters; a later version may append fields after a `-`. All-zero ids are invalid,
/// and hex must be lowercase.
fn parse(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let lower_hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    if !lower_hex(&v[..2]) || !lower_hex(&v[3..35]) || !lower_hex(&v[36..52]) || !lower_hex(&v[53..55]) {
        return None;
    }
    match &v[..2] {
        b"ff" => return None,
        b"00" if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let mut trace = [0u8; 16];
    let mut parent = [0u8; 8];
    let mut flags = [0u8; 1];
    hex::decode_to_slice(&v[3..35], &mut trace).ok()?;
    hex::decode_to_slice(&v[36..52], &mut parent).ok()?;
    hex::decode_to_slice(&v[53..55], &mut flags).ok()?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0]))
}

/// A new span id (never zero).
pub fn random_span_id() -> [u8; 8] {
    // Never zero (an invalid span id).
    (random_u64() | 1).to_be_bytes()
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes = nanos.to_be_bytes();
    }
    u64::from_be_bytes(bytes)
}

/// splitmix64 over a per-thread state seeded from the system RNG: trace and span ids need to
/// be unique and spread, not secret, and this runs per request.
fn random_u64() -> u64 {
    RNG.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Sampler = Sampler { ratio: 1.0 };
    const NONE: Sampler = Sampler { ratio: 0.0 };

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn continues_a_valid_traceparent() {
        let h = with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let t = TraceContext::from_headers(&h, NONE);
        assert_eq!(t.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent, Some(0x00f067aa0ba902b7u64.to_be_bytes()));
        assert!(t.sampled, "the caller's sampled flag wins over the ratio");
        let up = t.upstream_header();
        let up = up.to_str().unwrap();
        assert!(up.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{up}");
        assert!(up.ends_with("-01"));
        assert_eq!(&up[36..52], hex::encode(t.upstream_span));
        assert_ne!(t.upstream_span, t.span_id);

        let unsampled = TraceContext::from_headers(
            &with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            ALL,
        );
        assert!(!unsampled.sampled);
        assert!(unsampled.upstream_header().to_str().unwrap().ends_with("-00"));
        // A later version with an extra field is understood.
        let future = with("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds");
        assert_eq!(
            TraceContext::from_headers(&future, NONE).trace_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn refuses_malformed_traceparents_and_starts_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            let t = TraceContext::from_headers(&with(bad), ALL);
            assert_eq!(t.parent, None, "{bad}");
            assert_ne!(t.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
        }
    }

    #[test]
    fn new_traces_follow_the_ratio() {
        let empty = HeaderMap::new();
        assert!(TraceContext::from_headers(&empty, ALL).sampled);
        assert!(!TraceContext::from_headers(&empty, NONE).sampled);
        let half = Sampler { ratio: 0.5 };
        let sampled = (0..4000)
            .filter(|_| TraceContext::from_headers(&empty, half).sampled)
            .count();
        assert!((1700..2300).contains(&sampled), "{sampled} of 4000 at 0.5");
        let a = TraceContext::from_headers(&empty, ALL);
        let b = TraceContext::from_headers(&empty, ALL);
        assert_ne!(a.trace_id, b.trace_id);
    }
}
