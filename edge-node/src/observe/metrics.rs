//! Request metrics: counters and latency histograms per route, kept in atomics the request
//! path bumps without a lock or a lookup. Each route's [`RouteStats`] is resolved when the
//! config is compiled and carried by the router's match; the [`Registry`] hands the same
//! stats to the next compile, so counters survive config changes (Prometheus sees no reset).
//!
//! Labels come only from the config (tenant, service, the route's first path) and from a
//! closed set (status class, decision): never from a request's path or credential, so the
//! series are bounded by the config.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A latency histogram: a count per bucket (the last one is +Inf), the sum and the count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// Per-bucket counts (not cumulative) and the sum in seconds.
    pub fn read(&self) -> ([u64; BUCKETS.len() + 1], f64) {
        let counts = std::array::from_fn(|i| self.buckets[i].load(Relaxed));
        (counts, self.sum_us.load(Relaxed) as f64 / 1e6)
    }
}

pub use tollgate_proto::rollup::STATUS_CLASSES;

/// The index in [`STATUS_CLASSES`] of a status code.
pub fn status_class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// Who a series is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Labels {
    pub tenant: Arc<str>,
    pub service: Arc<str>,
    pub route: Arc<str>,
}

/// One route's counters.
#[derive(Debug)]
pub struct RouteStats {
    pub labels: Labels,
    by_class: [AtomicU64; 5],
    pub latency: Histogram,
    pub upstream: Histogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    allowed: AtomicU64,
    limited: AtomicU64,
    /// AI calls: tokens by type ([`TOKEN_TYPES`]) and cost in nano-dollars.
    tokens: [AtomicU64; 4],
    cost_nanos: AtomicU64,
}

/// The `type` label of `tollgate_ai_tokens_total`, in the order [`RouteStats::ai_usage`] takes.
pub const TOKEN_TYPES: [&str; 4] = ["input", "cached_input", "output", "reasoning"];

/// What one finished call adds.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub status: u16,
    pub latency: Duration,
    pub upstream: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl RouteStats {
    fn new(labels: Labels) -> Self {
        Self {
            labels,
            by_class: Default::default(),
            latency: Histogram::default(),
            upstream: Histogram::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            allowed: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            tokens: Default::default(),
            cost_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, o: &Observation) {
        self.by_class[status_class(o.status)].fetch_add(1, Relaxed);
        self.latency.observe(o.latency);
        if let Some(u) = o.upstream {
            self.upstream.observe(u);
        }
        self.bytes_in.fetch_add(o.bytes_in, Relaxed);
        self.bytes_out.fetch_add(o.bytes_out, Relaxed);
    }

    /// What an AI call used: tokens in [`TOKEN_TYPES`] order, cost in USD.
    pub fn ai_usage(&self, tokens: [u64; 4], cost: f64) {
        for (t, n) in self.tokens.iter().zip(tokens) {
            t.fetch_add(n, Relaxed);
        }
        self.cost_nanos.fetch_add((cost * 1e9).round() as u64, Relaxed);
    }

    /// A rate-limit decision on this route (only routes whose service has a limit).
    pub fn limit_decision(&self, admitted: bool) {
        if admitted { &self.allowed } else { &self.limited }.fetch_add(1, Relaxed);
    }

    pub fn requests(&self, class: usize) -> u64 {
        self.by_class[class].load(Relaxed)
    }
}

/// Every route's stats, and the requests that matched no route.
#[derive(Debug)]
pub struct Registry {
    routes: Mutex<HashMap<Labels, Arc<RouteStats>>>,
    /// Requests answered before a route was found (404 no_route, 400 bad framing, 503 not
    /// ready): tenant, service and route are empty.
    pub unrouted: Arc<RouteStats>,
}

impl Default for Registry {
    fn default() -> Self {
        let empty: Arc<str> = Arc::from("");
        Self {
            routes: Mutex::default(),
            unrouted: Arc::new(RouteStats::new(Labels {
                tenant: empty.clone(),
                service: empty.clone(),
                route: empty,
            })),
        }
    }
}

impl Registry {
    /// The stats of a route, the same ones a previous config used for it.
    pub fn route(&self, tenant: &str, service: &str, route: &str) -> Arc<RouteStats> {
        let labels = Labels {
            tenant: tenant.into(),
            service: service.into(),
            route: route.into(),
        };
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(labels.clone())
            .or_insert_with(|| Arc::new(RouteStats::new(labels)))
            .clone()
    }

    /// Forgets the routes a newly installed config no longer has.
    pub fn keep_only(&self, live: &HashSet<Labels>) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|l, _| live.contains(l));
    }

    /// Every route's stats, sorted, the unrouted ones last.
    pub fn snapshot(&self) -> Vec<Arc<RouteStats>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = routes.values().cloned().collect();
        drop(routes);
        all.sort_by(|a, b| {
            (&a.labels.tenant, &a.labels.service, &a.labels.route).cmp(&(
                &b.labels.tenant,
                &b.labels.service,
                &b.labels.route,
            ))
        });
        all.push(self.unrouted.clone());
        all
    }

    /// The request metrics in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let all = self.snapshot();
        header(
            out,
            "tollgate_requests_total",
            "counter",
            "Requests answered, by route and status class.",
        );
        for s in &all {
            for (class, name) in STATUS_CLASSES.iter().enumerate() {
                let n = s.requests(class);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_requests_total{{{},status_class=\"{name}\"}} {n}",
                        route_labels(&s.labels)
                    );
                }
            }
        }
        // Histograms and bytes by service: the routes of a service summed.
        let mut services: Vec<(&Labels, Vec<&RouteStats>)> = Vec::new();
        for s in &all {
            match services.last_mut() {
                Some((l, v)) if l.tenant == s.labels.tenant && l.service == s.labels.service => v.push(s),
                _ => services.push((&s.labels, vec![s])),
            }
        }
        for (name, help, pick) in [
            (
                "tollgate_request_duration_seconds",
                "Time from a request's arrival to the end of its answer.",
                (|s: &RouteStats| &s.latency) as fn(&RouteStats) -> &Histogram,
            ),
            (
                "tollgate_upstream_duration_seconds",
                "Time from sending a request upstream to the upstream's answer head.",
                |s: &RouteStats| &s.upstream,
            ),
        ] {
            header(out, name, "histogram", help);
            for (labels, routes) in &services {
                let mut counts = [0u64; BUCKETS.len() + 1];
                let mut sum = 0.0;
                for r in routes {
                    let (c, s) = pick(r).read();
                    counts.iter_mut().zip(c).for_each(|(a, b)| *a += b);
                    sum += s;
                }
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let l = service_labels(labels);
                let mut cumulative = 0;
                for (i, c) in counts.iter().enumerate() {
                    cumulative += c;
                    let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                    let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
                }
                let _ = writeln!(out, "{name}_sum{{{l}}} {sum}");
                let _ = writeln!(out, "{name}_count{{{l}}} {total}");
            }
        }
        for (name, help, pick) in [
            (
                "tollgate_request_bytes_total",
                "Request body bytes received from clients.",
                (|s: &RouteStats| s.bytes_in.load(Relaxed)) as fn(&RouteStats) -> u64,
            ),
            (
                "tollgate_response_bytes_total",
                "Answer body bytes sent to clients.",
                |s: &RouteStats| s.bytes_out.load(Relaxed),
            ),
        ] {
            header(out, name, "counter", help);
            for (labels, routes) in &services {
                let n: u64 = routes.iter().map(|r| pick(r)).sum();
                if n > 0 {
                    let _ = writeln!(out, "{name}{{{}}} {n}", service_labels(labels));
                }
            }
        }
        header(
            out,
            "tollgate_ratelimit_decisions_total",
            "counter",
            "Rate-limit decisions on services with a limit: allowed or limited (429).",
        );
        for (labels, routes) in &services {
            for (decision, pick) in [
                (
                    "allowed",
                    (|s: &RouteStats| s.allowed.load(Relaxed)) as fn(&RouteStats) -> u64,
                ),
                ("limited", |s: &RouteStats| s.limited.load(Relaxed)),
            ] {
                let n: u64 = routes.iter().map(|r| pick(r)).sum();
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_ratelimit_decisions_total{{{},decision=\"{decision}\"}} {n}",
                        service_labels(labels)
                    );
                }
            }
        }
        header(
            out,
            "tollgate_ai_tokens_total",
            "counter",
            "Tokens of AI calls, by type (input includes cached_input, output includes reasoning).",
        );
        for (labels, routes) in &services {
            for (t, name) in TOKEN_TYPES.iter().enumerate() {
                let n: u64 = routes.iter().map(|r| r.tokens[t].load(Relaxed)).sum();
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_ai_tokens_total{{{},type=\"{name}\"}} {n}",
                        service_labels(labels)
                    );
                }
            }
        }
        header(
            out,
            "tollgate_ai_cost_usd_total",
            "counter",
            "Cost of AI calls in USD, from the models' prices.",
        );
        for (labels, routes) in &services {
            let n: u64 = routes.iter().map(|r| r.cost_nanos.load(Relaxed)).sum();
            if n > 0 {
                let _ = writeln!(
                    out,
                    "tollgate_ai_cost_usd_total{{{}}} {}",
                    service_labels(labels),
                    n as f64 / 1e9
                );
            }
        }
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub use tollgate_proto::prom::label;

fn service_labels(l: &Labels) -> String {
    format!(
        "tenant=\"{}\",service=\"{}\"",
        label(&l.tenant),
        label(&l.service)
    )
}

fn route_labels(l: &Labels) -> String {
    format!("{},route=\"{}\"", service_labels(l), label(&l.route))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_by_route_and_class_and_sums_histograms_by_service() {
        let r = Registry::default();
        let a = r.route("acme", "orders", "/orders");
        let b = r.route("acme", "orders", "/refunds");
        assert!(
            Arc::ptr_eq(&a, &r.route("acme", "orders", "/orders")),
            "one stats per route"
        );
        let obs = |status, latency| Observation {
            status,
            latency,
            upstream: Some(ms(1)),
            bytes_in: 10,
            bytes_out: 100,
        };
        a.observe(&obs(200, ms(2)));
        a.observe(&obs(503, ms(700)));
        b.observe(&obs(201, ms(40)));
        a.limit_decision(true);
        a.limit_decision(false);
        r.unrouted.observe(&Observation {
            upstream: None,
            ..obs(404, ms(0))
        });
        let mut out = String::new();
        r.render(&mut out);
        for line in [
            r#"tollgate_requests_total{tenant="acme",service="orders",route="/orders",status_class="2xx"} 1"#,
            r#"tollgate_requests_total{tenant="acme",service="orders",route="/orders",status_class="5xx"} 1"#,
            r#"tollgate_requests_total{tenant="acme",service="orders",route="/refunds",status_class="2xx"} 1"#,
            r#"tollgate_requests_total{tenant="",service="",route="",status_class="4xx"} 1"#,
            r#"tollgate_request_duration_seconds_bucket{tenant="acme",service="orders",le="0.0025"} 1"#,
            r#"tollgate_request_duration_seconds_bucket{tenant="acme",service="orders",le="0.05"} 2"#,
            r#"tollgate_request_duration_seconds_bucket{tenant="acme",service="orders",le="1"} 3"#,
            r#"tollgate_request_duration_seconds_bucket{tenant="acme",service="orders",le="+Inf"} 3"#,
            r#"tollgate_request_duration_seconds_sum{tenant="acme",service="orders"} 0.742"#,
            r#"tollgate_request_duration_seconds_count{tenant="acme",service="orders"} 3"#,
            r#"tollgate_upstream_duration_seconds_count{tenant="acme",service="orders"} 3"#,
            r#"tollgate_request_bytes_total{tenant="acme",service="orders"} 30"#,
            r#"tollgate_response_bytes_total{tenant="acme",service="orders"} 300"#,
            r#"tollgate_ratelimit_decisions_total{tenant="acme",service="orders",decision="allowed"} 1"#,
            r#"tollgate_ratelimit_decisions_total{tenant="acme",service="orders",decision="limited"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line} in\n{out}");
        }
        assert!(
            !out.contains(r#"upstream_duration_seconds_count{tenant="",service="""#),
            "no upstream for unrouted"
        );
    }

    #[test]
    fn stats_survive_a_recompile_and_dropped_routes_are_forgotten() {
        let r = Registry::default();
        let kept = r.route("t", "s", "/a");
        kept.observe(&Observation {
            status: 200,
            latency: ms(1),
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
        });
        let gone = r.route("t", "s", "/b");
        gone.observe(&Observation {
            status: 200,
            latency: ms(1),
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
        });
        r.keep_only(&HashSet::from([kept.labels.clone()]));
        assert_eq!(r.route("t", "s", "/a").requests(1), 1);
        assert_eq!(
            r.route("t", "s", "/b").requests(1),
            0,
            "a forgotten route starts again"
        );
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(99), 0);
        assert_eq!(status_class(200), 1);
        assert_eq!(status_class(599), 4);
        assert_eq!(status_class(999), 4);
    }
}
