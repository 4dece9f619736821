//! The admin listener: `GET /healthz` (the process is up), `GET /readyz` (200 only once a
//! complete config is loaded, from the control plane or the last-known-good file),
//! `GET /config/version`, `GET /limits` (rate limits: usage per key, peers, whether this edge
//! is in step) and `GET /metrics` (Prometheus text: requests, latency and bytes by route,
//! rate-limit decisions, error bounds and fallback state, counter sharing, config version
//! and control-plane connection, the call log and OTLP export).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::body::{full, Body, ClientBody};
use crate::config::state::Shared;
use crate::counters::peers::{Peers, BATCH_INTERVAL};
use crate::counters::{unix_ms, Period};
use crate::error::{error_body, json_response};
use crate::listen::Handler;
use crate::observe::metrics::{header, label};
use crate::observe::Observer;

#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
    peers: Arc<Peers>,
    observer: Arc<Observer>,
}

/// Most keys `/limits` lists per limit (the busiest).
const MAX_KEYS_SHOWN: usize = 100;

/// `tenant/name` of a limiter id (`<window>ms/<limit>/<key>/<tenant>/<name>`).
fn policy_of(id: &str) -> String {
    let mut parts = id.rsplitn(3, '/');
    let (name, tenant) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    format!("{tenant}/{name}")
}

/// Whether a limit falls back when peers are out of step: cluster-scope windows do; local
/// limits and quotas never do.
fn falls_back(id: &str, cluster: bool) -> bool {
    cluster && matches!(Period::of(id), Some(Period::Window(_)))
}

impl Admin {
    pub fn new(shared: Arc<Shared>, peers: Arc<Peers>, observer: Arc<Observer>) -> Self {
        Self {
            shared,
            peers,
            observer,
        }
    }

    /// Requests a cluster-wide limit may admit past its limit now: what the peers admit in
    /// one batch interval plus a round trip (their last window's load, busiest key).
    fn error_bound(&self, id: &str, now: u64) -> u64 {
        let Some(Period::Window(window_ms)) = Period::of(id) else {
            return 0;
        };
        let lag = BATCH_INTERVAL + self.peers.max_rtt();
        let load = self.peers.counters.peer_load(id, now) as f64;
        (load * lag.as_millis() as f64 / window_ms as f64).ceil() as u64
    }

    /// The config's rate limits and quotas: (limiter id, cluster-wide).
    fn limiters(&self) -> Vec<(Arc<str>, bool)> {
        let snapshot = self.shared.snapshot();
        snapshot
            .iter()
            .flat_map(|s| &s.limiters)
            .map(|(id, c)| (id.clone(), *c))
            .collect()
    }

    fn limits(&self) -> serde_json::Value {
        let now = unix_ms();
        let limiters = self.limiters();
        let limits: Vec<serde_json::Value> = limiters
            .iter()
            .map(|(id, cluster)| {
                let mut keys = self.peers.counters.usage(id, now);
                keys.sort_by(|a, b| b.2.total_cmp(&a.2));
                keys.truncate(MAX_KEYS_SHOWN);
                json!({
                    "policy": policy_of(id),
                    "limiter": id.as_ref(),
                    "scope": if *cluster { "cluster" } else { "local" },
                    "error_bound": if *cluster { self.error_bound(id, now) } else { 0 },
                    "fallback": falls_back(id, *cluster) && !self.peers.in_step(),
                    "keys": keys.iter().map(|(k, local, cluster)| {
                        let mut row = json!({"key": k, "local": local.round(), "cluster": cluster.round()});
                        if let Some(p) = Period::of(id).filter(|p| !matches!(p, Period::Window(_))) {
                            row["stored"] = json!(self.peers.stored(id, k, p.index(now)).unwrap_or(0));
                        }
                        row
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        let peers: Vec<serde_json::Value> = self
            .peers
            .links()
            .into_iter()
            .map(|(id, addr, heard, taking)| json!({"node_id": id, "addr": addr, "heard": heard, "taking": taking}))
            .collect();
        json!({
            "in_step": self.peers.in_step(),
            "edges": self.peers.edges(),
            "batch_interval_ms": BATCH_INTERVAL.as_millis() as u64,
            "peers": peers,
            "limits": limits,
        })
    }

    fn metrics(&self) -> String {
        use std::fmt::Write;
        let now = unix_ms();
        let limiters = self.limiters();
        let mut out = String::new();
        self.observer.metrics.render(&mut out);
        self.edge_metrics(&mut out, now);
        let in_step = self.peers.in_step();
        let _ = writeln!(out, "# HELP tollgate_ratelimit_error_bound Requests a cluster-wide rate limit may admit past its limit now (peers' load in one batch interval plus a round trip).");
        let _ = writeln!(out, "# TYPE tollgate_ratelimit_error_bound gauge");
        for (id, _) in limiters.iter().filter(|(_, c)| *c) {
            let _ = writeln!(
                out,
                "tollgate_ratelimit_error_bound{{policy=\"{}\",limiter=\"{}\"}} {}",
                label(&policy_of(id)),
                label(id),
                self.error_bound(id, now)
            );
        }
        let _ = writeln!(out, "# HELP tollgate_ratelimit_fallback 1 while a cluster-wide rate limit is decided by its on_store_failure mode (peers out of step).");
        let _ = writeln!(out, "# TYPE tollgate_ratelimit_fallback gauge");
        for id in limiters
            .iter()
            .filter(|(id, c)| falls_back(id, *c))
            .map(|(id, _)| id)
        {
            let _ = writeln!(
                out,
                "tollgate_ratelimit_fallback{{policy=\"{}\",limiter=\"{}\"}} {}",
                label(&policy_of(id)),
                label(id),
                u8::from(!in_step)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tollgate_peer_edges Edges sharing rate-limit counters, this one included."
        );
        let _ = writeln!(out, "# TYPE tollgate_peer_edges gauge");
        let _ = writeln!(out, "tollgate_peer_edges {}", self.peers.edges());
        let _ = writeln!(
            out,
            "# HELP tollgate_peer_in_step 1 while every peer's counts are current."
        );
        let _ = writeln!(out, "# TYPE tollgate_peer_in_step gauge");
        let _ = writeln!(out, "tollgate_peer_in_step {}", u8::from(in_step));
        let _ = writeln!(
            out,
            "# HELP tollgate_peer_batches_dropped_total Peer batches or counts refused, by reason."
        );
        let _ = writeln!(out, "# TYPE tollgate_peer_batches_dropped_total counter");
        let d = &self.peers.dropped;
        for (reason, n) in [
            ("unauthenticated", &d.unauthenticated),
            ("oversized", &d.oversized),
            ("malformed", &d.malformed),
        ] {
            let _ = writeln!(
                out,
                "tollgate_peer_batches_dropped_total{{reason=\"{reason}\"}} {}",
                n.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        out
    }

    /// The config, the control-plane connection, the call log and the exporter.
    fn edge_metrics(&self, out: &mut String, now: u64) {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let gauge = |out: &mut String, name: &str, help: &str, value: String| {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        };
        gauge(
            out,
            "tollgate_config_version",
            "Version of the config being served (0: none yet).",
            self.shared.version().unwrap_or(0).to_string(),
        );
        gauge(
            out,
            "tollgate_control_plane_connected",
            "1 while a config stream to a control plane is open.",
            u8::from(self.shared.connected.load(Relaxed)).to_string(),
        );
        let installed = self.shared.installed_ms.load(Relaxed);
        if installed > 0 {
            gauge(
                out,
                "tollgate_config_age_seconds",
                "Seconds since the config being served was installed.",
                format!("{:.3}", now.saturating_sub(installed) as f64 / 1e3),
            );
        }
        let log = &self.observer.log;
        for (name, help, n) in [
            (
                "tollgate_call_records_written_total",
                "Call records written to the call log.",
                &log.written,
            ),
            (
                "tollgate_call_records_dropped_total",
                "Call records dropped because the call-log writer fell behind.",
                &log.dropped,
            ),
            (
                "tollgate_call_records_failed_total",
                "Call records lost to a write error.",
                &log.failed,
            ),
            (
                "tollgate_call_log_rotations_total",
                "Call-log files rotated.",
                &log.rotations,
            ),
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", n.load(Relaxed));
        }
        if let Some(otlp) = &self.observer.otlp {
            for (name, help, n) in [
                (
                    "tollgate_otlp_spans_exported_total",
                    "Spans an OTLP collector accepted.",
                    &otlp.spans,
                ),
                (
                    "tollgate_otlp_logs_exported_total",
                    "Log records an OTLP collector accepted.",
                    &otlp.logs,
                ),
                (
                    "tollgate_otlp_export_failures_total",
                    "OTLP exports that failed or were refused.",
                    &otlp.failures,
                ),
                (
                    "tollgate_otlp_dropped_total",
                    "Call records dropped because the OTLP export queue was full.",
                    &otlp.dropped,
                ),
            ] {
                header(out, name, "counter", help);
                let _ = writeln!(out, "{name} {}", n.load(Relaxed));
            }
        }
    }

    fn answer(&self, method: &Method, path: &str) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &error_body("method_not_allowed", "only GET is served here"),
            );
        }
        match path {
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" => match self.shared.version() {
                Some(version) => {
                    json_response(StatusCode::OK, &json!({"status": "ready", "version": version}))
                }
                None => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "waiting for config"}),
                ),
            },
            "/config/version" => json_response(
                StatusCode::OK,
                &json!({"version": self.shared.version().unwrap_or(0)}),
            ),
            "/limits" => json_response(StatusCode::OK, &self.limits()),
            "/metrics" => {
                let mut resp = Response::new(full(self.metrics()));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &error_body("not_found", "no such admin endpoint"),
            ),
        }
    }
}

impl Handler for Admin {
    async fn handle<B: ClientBody + Unpin>(&self, _remote: SocketAddr, req: Request<B>) -> Response<Body> {
        self.answer(req.method(), req.uri().path())
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::testutil::{compile, resources, DOC};

    async fn get(admin: &Admin, path: &str) -> (StatusCode, serde_json::Value) {
        let resp = admin.answer(&Method::GET, path);
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn ready_only_with_a_config() {
        let shared = Arc::new(Shared::default());
        let admin = Admin::new(
            shared.clone(),
            Peers::new("test-edge"),
            Observer::metrics_only(Default::default()),
        );
        assert_eq!(
            get(&admin, "/healthz").await,
            (StatusCode::OK, json!({"status": "ok"}))
        );
        assert_eq!(get(&admin, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(&admin, "/config/version").await.1, json!({"version": 0}));
        shared.install(compile(9, resources(DOC)));
        assert_eq!(get(&admin, "/readyz").await.0, StatusCode::OK);
        assert_eq!(get(&admin, "/config/version").await.1, json!({"version": 9}));
        assert_eq!(get(&admin, "/nope").await.0, StatusCode::NOT_FOUND);
    }
}
