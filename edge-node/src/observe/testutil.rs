//! A call record for the observers' tests.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Method};

use crate::observe::metrics::Registry;
use crate::observe::record::{CallRecord, Phase};
use crate::observe::trace::{Sampler, TraceContext, TRACEPARENT};

/// A finished call of app `shop` to `acme/orders` answered with `status`.
pub fn record(status: u16) -> CallRecord {
    let mut h = HeaderMap::new();
    h.insert(
        TRACEPARENT,
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let started = Instant::now();
    CallRecord {
        time: SystemTime::now(),
        started,
        request_id: HeaderValue::from_static("req-1"),
        trace: TraceContext::from_headers(&h, Sampler { ratio: 1.0 }),
        stats: Registry::default().route("acme", "orders", "/orders"),
        app: Some("shop".into()),
        key: Some("tgk_0123456789ab".into()),
        method: Method::GET,
        uri: "/orders/7?api_key=secret".parse().unwrap(),
        status,
        error: (status >= 500).then_some("upstream_error"),
        latency: Duration::from_millis(3),
        upstream_latency: Some(Duration::from_millis(2)),
        upstream: Some(Arc::from("http://127.0.0.1:9000")),
        bytes_in: 0,
        bytes_out: 42,
        remote: "127.0.0.1".parse().unwrap(),
        phases: vec![Phase {
            name: "upstream",
            start: started,
            end: started + Duration::from_millis(2),
        }],
        ai: None,
    }
}
