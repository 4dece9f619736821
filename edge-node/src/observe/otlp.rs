//! OTLP/HTTP export (protobuf bodies): call records as log records, sampled calls as spans
//! (the server span and a child per phase), and the request metrics, to
//! `<endpoint>/v1/logs`, `/v1/traces` and `/v1/metrics`.
//!
//! ```text
//!  call-log thread ──try_send──> queue (full: counted) ──> batch (512 records or 1 s)
//!     ─> POST /v1/logs, POST /v1/traces           every --otlp-metrics-interval: POST /v1/metrics
//! ```
//! A failed export is logged and counted, not retried: the call log on disk is the record of
//! truth, OTLP a copy for the collector.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::sync::mpsc;
use tollgate_proto::otlp::{
    any_value, metric, number_data_point, span, status, AggregationTemporality, AnyValue,
    ExportLogsServiceRequest, ExportMetricsServiceRequest, ExportTraceServiceRequest, Histogram,
    HistogramDataPoint, InstrumentationScope, KeyValue, LogRecord, Metric, NumberDataPoint, Resource,
    ResourceLogs, ResourceMetrics, ResourceSpans, ScopeLogs, ScopeMetrics, ScopeSpans, Span, Status, Sum,
};

use crate::observe::calllog;
use crate::observe::metrics::{Registry, BUCKETS, STATUS_CLASSES};
use crate::observe::record::CallRecord;
use crate::observe::trace;
use crate::upstream::connector::{connector, UpstreamConnector};

/// Records waiting for export; past it, dropped and counted.
const QUEUE: usize = 8_192;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to export.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`); the signal paths are
    /// appended to it.
    pub endpoint: String,
    pub node_id: String,
    pub metrics_interval: Duration,
}

impl OtlpConfig {
    pub fn check(&self) -> Result<(), String> {
        let uri: Uri = self
            .endpoint
            .parse()
            .map_err(|e| format!("--otlp-endpoint {:?}: {e}", self.endpoint))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() && uri.query().is_none() => Ok(()),
            _ => Err(format!(
                "--otlp-endpoint {:?}: give an http:// or https:// base URL without a query, like http://127.0.0.1:4318",
                self.endpoint
            )),
        }
    }

    fn url(&self, signal: &str) -> String {
        format!("{}/v1/{signal}", self.endpoint.trim_end_matches('/'))
    }
}

/// What the exporter did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub spans: AtomicU64,
    pub logs: AtomicU64,
    pub metric_exports: AtomicU64,
    pub failures: AtomicU64,
    /// Records dropped because the export queue was full.
    pub dropped: AtomicU64,
}

/// The call-log thread's way into the exporter.
pub struct Queue {
    tx: mpsc::Sender<Arc<CallRecord>>,
    counters: Arc<ExportCounters>,
}

impl calllog::Forward for Queue {
    fn forward(&mut self, record: &Arc<CallRecord>) {
        if self.tx.try_send(record.clone()).is_err() {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Starts the exporter task.
pub fn start(cfg: OtlpConfig, registry: Arc<Registry>, counters: Arc<ExportCounters>) -> Queue {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(rx, cfg, registry, counters.clone()));
    Queue { tx, counters }
}

struct Exporter {
    cfg: OtlpConfig,
    client: Client<UpstreamConnector, Full<Bytes>>,
    resource: Resource,
    counters: Arc<ExportCounters>,
    started: u64,
}

async fn run(
    mut rx: mpsc::Receiver<Arc<CallRecord>>,
    cfg: OtlpConfig,
    registry: Arc<Registry>,
    counters: Arc<ExportCounters>,
) {
    let connector = match connector(Duration::from_secs(5), None) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "otlp export disabled: cannot build its client");
            return;
        }
    };
    let exporter = Exporter {
        resource: Resource {
            attributes: vec![
                kv("service.name", "tollgate-edge"),
                kv("service.instance.id", cfg.node_id.as_str()),
                kv("service.version", env!("CARGO_PKG_VERSION")),
            ],
        },
        client: Client::builder(TokioExecutor::new()).build(connector),
        started: nanos(SystemTime::now()),
        cfg,
        counters,
    };
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut metrics = tokio::time::interval(exporter.cfg.metrics_interval);
    metrics.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(r) => {
                    batch.push(r);
                    if batch.len() >= BATCH {
                        exporter.records(std::mem::take(&mut batch)).await;
                    }
                }
                None => {
                    exporter.records(batch).await;
                    exporter.metrics(&registry).await;
                    return;
                }
            },
            _ = flush.tick() => {
                if !batch.is_empty() {
                    exporter.records(std::mem::take(&mut batch)).await;
                }
            }
            _ = metrics.tick() => exporter.metrics(&registry).await,
        }
    }
}

impl Exporter {
    async fn records(&self, batch: Vec<Arc<CallRecord>>) {
        if batch.is_empty() {
            return;
        }
        let scope = || Some(scope());
        let logs: Vec<LogRecord> = batch.iter().map(|r| log_record(r)).collect();
        let n_logs = logs.len() as u64;
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: scope(),
                    log_records: logs,
                }],
            }],
        };
        if self.post("logs", req.encode_to_vec()).await {
            self.counters.logs.fetch_add(n_logs, Relaxed);
        }
        let spans: Vec<Span> = batch
            .iter()
            .filter(|r| r.trace.sampled)
            .flat_map(|r| spans(r))
            .collect();
        if spans.is_empty() {
            return;
        }
        let n_spans = spans.len() as u64;
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: scope(),
                    spans,
                }],
            }],
        };
        if self.post("traces", req.encode_to_vec()).await {
            self.counters.spans.fetch_add(n_spans, Relaxed);
        }
    }

    async fn metrics(&self, registry: &Registry) {
        let now = nanos(SystemTime::now());
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics: metrics(registry, self.started, now),
                }],
            }],
        };
        if self.post("metrics", req.encode_to_vec()).await {
            self.counters.metric_exports.fetch_add(1, Relaxed);
        }
    }

    /// POSTs one export; whether the collector took it.
    async fn post(&self, signal: &str, body: Vec<u8>) -> bool {
        let url = self.cfg.url(signal);
        let req = Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(url, error = %e, "otlp export: bad request");
                self.counters.failures.fetch_add(1, Relaxed);
                return false;
            }
        };
        match tokio::time::timeout(EXPORT_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => true,
            Ok(Ok(resp)) => {
                tracing::warn!(url, status = resp.status().as_u16(), "otlp export refused");
                self.counters.failures.fetch_add(1, Relaxed);
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(url, error = %e, "otlp export failed");
                self.counters.failures.fetch_add(1, Relaxed);
                false
            }
            Err(_) => {
                tracing::warn!(url, timeout = ?EXPORT_TIMEOUT, "otlp export timed out");
                self.counters.failures.fetch_add(1, Relaxed);
                false
            }
        }
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "tollgate-edge".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// An attribute.
pub fn kv(key: &str, value: impl Into<Value>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(value.into().0),
        }),
    }
}

/// An attribute value.
pub struct Value(any_value::Value);

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value(any_value::Value::StringValue(s.into()))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value(any_value::Value::StringValue(s))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value(any_value::Value::IntValue(n))
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value(any_value::Value::DoubleValue(n))
    }
}

/// The record's fields as attributes (OpenTelemetry's semantic names where there is one).
fn attributes(r: &CallRecord) -> Vec<KeyValue> {
    let l = &r.stats.labels;
    let mut a = vec![
        kv("http.request.method", r.method.as_str()),
        kv("url.path", r.uri.path()),
        kv("http.response.status_code", i64::from(r.status)),
        kv("client.address", r.remote.to_string()),
        kv("tollgate.request_id", r.request_id.to_str().unwrap_or_default()),
    ];
    for (k, v) in [
        ("tollgate.tenant", &l.tenant),
        ("tollgate.service", &l.service),
        ("http.route", &l.route),
    ] {
        if !v.is_empty() {
            a.push(kv(k, v.as_ref()));
        }
    }
    if let Some(app) = &r.app {
        a.push(kv("tollgate.app", app.as_str()));
    }
    if let Some(key) = &r.key {
        a.push(kv("tollgate.key", key.as_str()));
    }
    if let Some(e) = r.error {
        a.push(kv("error.type", e));
    }
    if let Some(u) = &r.upstream {
        a.push(kv("tollgate.upstream", u.as_ref()));
    }
    a
}

fn log_record(r: &CallRecord) -> LogRecord {
    let (number, text) = match r.status {
        500.. => (17, "ERROR"),
        400..=499 => (13, "WARN"),
        _ => (9, "INFO"),
    };
    let mut attributes = attributes(r);
    attributes.push(kv("tollgate.latency_ms", r.latency.as_secs_f64() * 1e3));
    attributes.push(kv("tollgate.bytes_in", r.bytes_in as i64));
    attributes.push(kv("tollgate.bytes_out", r.bytes_out as i64));
    if let Some(u) = r.upstream_latency {
        attributes.push(kv("tollgate.upstream_latency_ms", u.as_secs_f64() * 1e3));
    }
    let end = nanos(r.time + r.latency);
    LogRecord {
        time_unix_nano: end,
        observed_time_unix_nano: end,
        severity_number: number,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(format!(
                "{} {} {}",
                r.method,
                r.uri.path(),
                r.status
            ))),
        }),
        attributes,
        flags: u32::from(r.trace.sampled),
        trace_id: r.trace.trace_id.to_vec(),
        span_id: r.trace.span_id.to_vec(),
        event_name: "tollgate.call".into(),
    }
}

/// The server span of a call and one child per timed phase (the upstream one is the client
/// span the upstream saw as its parent).
fn spans(r: &CallRecord) -> Vec<Span> {
    let t = &r.trace;
    let route = &r.stats.labels.route;
    let server = Span {
        trace_id: t.trace_id.to_vec(),
        span_id: t.span_id.to_vec(),
        parent_span_id: t.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: if route.is_empty() {
            r.method.to_string()
        } else {
            format!("{} {route}", r.method)
        },
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: nanos(r.time),
        end_time_unix_nano: nanos(r.time + r.latency),
        attributes: attributes(r),
        status: Some(span_status(r.status >= 500, r.error)),
        flags: 1,
        trace_state: String::new(),
    };
    let mut out = vec![server];
    for p in &r.phases {
        let upstream = p.name == "upstream";
        let mut attributes = Vec::new();
        if let (true, Some(u)) = (upstream, &r.upstream) {
            attributes.push(kv("server.address", u.as_ref()));
        }
        out.push(Span {
            trace_id: t.trace_id.to_vec(),
            span_id: if upstream {
                t.upstream_span.to_vec()
            } else {
                trace::random_span_id().to_vec()
            },
            parent_span_id: t.span_id.to_vec(),
            name: p.name.into(),
            kind: if upstream {
                span::SpanKind::Client
            } else {
                span::SpanKind::Internal
            } as i32,
            start_time_unix_nano: nanos(r.wall(p.start)),
            end_time_unix_nano: nanos(r.wall(p.end)),
            attributes,
            status: None,
            flags: 1,
            trace_state: String::new(),
        });
    }
    out
}

fn span_status(error: bool, code: Option<&str>) -> Status {
    Status {
        message: if error {
            code.unwrap_or_default().into()
        } else {
            String::new()
        },
        code: if error {
            status::StatusCode::Error
        } else {
            status::StatusCode::Unset
        } as i32,
    }
}

/// The request metrics as OTLP cumulative sums and histograms.
fn metrics(registry: &Registry, start: u64, now: u64) -> Vec<Metric> {
    let all = registry.snapshot();
    let mut requests = Vec::new();
    let mut latency = Vec::new();
    for s in &all {
        let labels = || {
            let l = &s.labels;
            vec![
                kv("tenant", l.tenant.as_ref()),
                kv("service", l.service.as_ref()),
                kv("route", l.route.as_ref()),
            ]
        };
        for (class, name) in STATUS_CLASSES.iter().enumerate() {
            let n = s.requests(class);
            if n > 0 {
                let mut attributes = labels();
                attributes.push(kv("status_class", *name));
                requests.push(NumberDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsInt(n as i64)),
                    attributes,
                });
            }
        }
        let (counts, sum) = s.latency.read();
        let count: u64 = counts.iter().sum();
        if count > 0 {
            latency.push(HistogramDataPoint {
                start_time_unix_nano: start,
                time_unix_nano: now,
                count,
                sum: Some(sum),
                bucket_counts: counts.to_vec(),
                explicit_bounds: BUCKETS.to_vec(),
                attributes: labels(),
            });
        }
    }
    vec![
        Metric {
            name: "tollgate.requests".into(),
            description: "Requests answered, by route and status class.".into(),
            unit: "{request}".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: requests,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
        },
        Metric {
            name: "tollgate.request.duration".into(),
            description: "Time from a request's arrival to the end of its answer.".into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: latency,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::testutil::record;

    #[test]
    fn a_sampled_call_becomes_a_server_span_with_phase_children() {
        let r = record(502);
        let spans = spans(&r);
        assert_eq!(spans.len(), 2);
        let (server, upstream) = (&spans[0], &spans[1]);
        assert_eq!(hex::encode(&server.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(&server.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(server.name, "GET /orders");
        assert_eq!(server.kind, span::SpanKind::Server as i32);
        assert_eq!(
            server.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        assert_eq!(upstream.parent_span_id, server.span_id);
        assert_eq!(
            upstream.span_id,
            r.trace.upstream_span.to_vec(),
            "the id the upstream saw"
        );
        assert_eq!(upstream.kind, span::SpanKind::Client as i32);
        assert!(upstream.end_time_unix_nano - upstream.start_time_unix_nano == 2_000_000);
        // Decodes as what it was.
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans { scope: None, spans }],
            }],
        };
        let back = ExportTraceServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn log_records_carry_the_trace_and_no_secret() {
        let l = log_record(&record(200));
        assert_eq!(hex::encode(&l.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(l.severity_number, 9);
        let text = format!("{l:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("tgk_0123456789ab"));
    }

    #[test]
    fn endpoints_are_checked() {
        let cfg = |e: &str| OtlpConfig {
            endpoint: e.into(),
            node_id: "n".into(),
            metrics_interval: Duration::from_secs(10),
        };
        assert!(cfg("http://127.0.0.1:4318").check().is_ok());
        assert_eq!(
            cfg("http://127.0.0.1:4318/").url("traces"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert!(cfg("ftp://x").check().is_err());
        assert!(cfg("http://x/?a=b").check().is_err());
        assert!(cfg("not a url").check().is_err());
    }
}
