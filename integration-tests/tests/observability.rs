//! Observability end to end, with real third-party consumers: a real Prometheus server
//! (Debian's package) scrapes an edge and the control plane and answers, through its HTTP
//! API, exactly the request counts the test sent; the official OpenTelemetry protobuf
//! definitions (PyPI's `opentelemetry-proto`, in `tools/otlp_receiver.py`) decode the spans,
//! log records and metrics the edge exports, carrying the trace id the client sent; the call
//! log stays under its bound through a load run.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_integration_tests::edge::{EdgeNode, Upstream};
use tollgate_integration_tests::{
    free_port, http_get, loopback, program, python_server, wait_for, Proc, Sandbox,
};

fn config(upstream: &str) -> String {
    format!(
        r#"
tenants: [{{name: acme}}]
upstreams: [{{name: be, tenant: acme, targets: [{{url: "{upstream}"}}]}}]
apps: [{{name: shop, tenant: acme}}]
subscriptions: [{{app: shop, service: orders, tenant: acme, status: approved}}]
services:
  - {{name: orders, tenant: acme, upstream: be, auth: [api_key], routes: [{{paths: [/orders]}}]}}
  - {{name: open, tenant: acme, upstream: be, routes: [{{paths: [/open]}}]}}
"#
    )
}

/// A control plane with the config applied, an upstream, and an API key of app `shop`.
fn setup() -> (Sandbox, Upstream, String) {
    let upstream = Upstream::start();
    let sb = Sandbox::cluster(1);
    let file = sb.file("config.yaml", &config(&upstream.url()));
    sb.cli(0, &["apply", "-f", &file]).ok();
    let key = shop_key(&sb);
    (sb, upstream, key)
}

/// A new API key of app `shop`.
fn shop_key(sb: &Sandbox) -> String {
    let out = sb
        .cli(0, &["key", "create", "--app", "shop", "--tenant", "acme"])
        .ok()
        .stdout;
    out.split_whitespace()
        .find(|w| w.starts_with("tgk_"))
        .unwrap_or_else(|| panic!("no key in {out:?}"))
        .to_string()
}

/// Edges `<prefix>-0..n`, edge i streaming from control-plane node i (then, with
/// `fallback`, from the last node), each waited for until ready.
fn edges_on_nodes(sb: &Sandbox, prefix: &str, n: usize, fallback: bool) -> Vec<EdgeNode> {
    let last = sb.nodes.len() - 1;
    let edges: Vec<EdgeNode> = (0..n)
        .map(|i| {
            let mut urls = vec![sb.nodes[i].url()];
            if fallback && i != last {
                urls.push(sb.nodes[last].url());
            }
            EdgeNode::start_with(sb.dir.path(), &format!("{prefix}-{i}"), urls, &sb.edge_token)
        })
        .collect();
    for e in &edges {
        wait_for("the edge to be ready", Duration::from_secs(20), || {
            (e.readyz() == Some(200)).then_some(())
        });
    }
    edges
}

fn start_edge(sb: &Sandbox, name: &str, args: &[String]) -> EdgeNode {
    let mut edge = EdgeNode::for_sandbox(sb, name, None);
    edge.extra_args = args.to_vec();
    edge.spawn();
    // Readiness from the admin port: no request through the proxy before the test's own.
    wait_for("the edge to be ready", Duration::from_secs(20), || {
        (edge.readyz() == Some(200)).then_some(())
    });
    edge
}

/// A program from PATH; the error says how to get it.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of a Prometheus instant query, when it has exactly one sample.
fn prom_value(prom: std::net::SocketAddr, query: &str) -> Option<f64> {
    let (status, body) = http_get(prom, &format!("/api/v1/query?query={}", percent_encode(query)))?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_real_prometheus_scrapes_the_exact_counts_and_the_call_log_stays_bounded() {
    let prometheus = program("prometheus", "apt-get install prometheus");
    let (sb, _upstream, key) = setup();
    let (file_bytes, total_bytes) = (8 << 10, 32 << 10);
    let edge = start_edge(
        &sb,
        "prom",
        &[
            "--call-log-file-bytes".into(),
            file_bytes.to_string(),
            "--call-log-total-bytes".into(),
            total_bytes.to_string(),
        ],
    );
    for i in 0..25 {
        assert_eq!(edge.get_with_key(&format!("/orders/{i}"), &key).status, 200);
    }
    for _ in 0..4 {
        assert_eq!(edge.get_with_key("/orders/x", "").status, 401);
    }
    for _ in 0..3 {
        assert_eq!(edge.request("GET", "/nowhere", &[]).status, 404);
    }

    let prom_addr = loopback(free_port());
    let cp_http = sb.nodes[0].http;
    let yml = sb.file(
        "prometheus.yml",
        &format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - {{job_name: edge, static_configs: [{{targets: ['{}']}}]}}\n\
             - {{job_name: cp, static_configs: [{{targets: ['{cp_http}']}}]}}\n",
            edge.admin
        ),
    );
    let data = sb.dir.path().join("prometheus-data");
    let _prom = Proc::spawn_program(
        &prometheus,
        "prometheus",
        &[
            format!("--config.file={yml}"),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={prom_addr}"),
        ],
        sb.dir.path().join("prometheus.log"),
        sb.dir.path(),
    );
    let expect = |query: &str, want: f64| {
        wait_for(
            &format!("prometheus to answer {query} = {want}"),
            Duration::from_secs(60),
            || (prom_value(prom_addr, query) == Some(want)).then_some(()),
        )
    };
    expect(
        r#"sum(tollgate_requests_total{job="edge",service="orders",status_class="2xx"})"#,
        25.0,
    );
    expect(
        r#"sum(tollgate_requests_total{job="edge",service="orders",status_class="4xx"})"#,
        4.0,
    );
    expect(
        r#"sum(tollgate_requests_total{job="edge",service="",status_class="4xx"})"#,
        3.0,
    );
    expect(
        r#"tollgate_request_duration_seconds_count{job="edge",service="orders"}"#,
        29.0,
    );
    expect(r#"tollgate_control_plane_connected{job="edge"}"#, 1.0);
    expect(r#"tollgate_cp_is_leader{job="cp"}"#, 1.0);
    let version = edge.config_version().unwrap() as f64;
    expect(r#"tollgate_config_version{job="edge"}"#, version);
    assert!(prom_value(prom_addr, r#"tollgate_cp_applied_index{job="cp"}"#).unwrap() >= version);

    // The call log: every call recorded, and the directory under its bound through a load.
    let calls = edge.dir.join("calls");
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(4) {
        for _ in 0..50 {
            assert_eq!(
                edge.get_with_key("/orders/load?apikey=not-logged", &key).status,
                200
            );
            sent += 1;
        }
        let bytes = dir_bytes(&calls);
        assert!(
            bytes <= total_bytes + 4096,
            "{bytes} bytes in the call log after {sent} calls"
        );
    }
    assert!(sent > 500, "only {sent} calls in 4 s");
    let rotations = wait_for(
        "rotations and every record written",
        Duration::from_secs(10),
        || {
            let (_, m) = http_get(edge.admin, "/metrics")?;
            let read = |name: &str| -> Option<u64> {
                m.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            };
            let written = read("tollgate_call_records_written_total")?;
            (written >= sent + 32 && read("tollgate_call_records_dropped_total")? == 0)
                .then(|| read("tollgate_call_log_rotations_total"))
                .flatten()
        },
    );
    assert!(rotations >= 3, "{rotations} rotations");
    let active = std::fs::read_to_string(calls.join("calls.jsonl")).unwrap();
    assert!(
        !active.contains("not-logged") && !active.contains(&key),
        "no query, no key"
    );
    // The newest record: in the active file, or in the newest rotated one when a rotation
    // has just emptied it (rotated names sort by time).
    let newest = if active.trim().is_empty() {
        let mut rotated: Vec<_> = std::fs::read_dir(&calls)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("calls-"))
            .collect();
        rotated.sort();
        std::fs::read_to_string(rotated.last().expect("a rotated file")).unwrap()
    } else {
        active
    };
    let last: Value = serde_json::from_str(newest.lines().last().unwrap()).unwrap();
    assert_eq!(last["service"], "orders");
    assert_eq!(last["app"], "shop");
    assert_eq!(last["key"].as_str().unwrap(), &key[..16]);
    assert_eq!(last["status"], 200);
    assert!(last["latency_ms"].as_f64().unwrap() > 0.0);
}

/// The OTLP receiver on the official protobuf definitions, writing what it decodes to `out`.
fn otlp_receiver(dir: &Path, out: &Path) -> (Proc, u16) {
    python_server(
        dir,
        "otlp_receiver.py",
        &[out.display().to_string()],
        "pip install opentelemetry-proto (.ci/run does)",
    )
}

fn decoded(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn an_otlp_receiver_decodes_spans_logs_and_metrics_with_the_clients_trace_id() {
    let (sb, upstream, key) = setup();
    let out = sb.dir.path().join("otlp.jsonl");
    let (_receiver, port) = otlp_receiver(sb.dir.path(), &out);
    let edge = start_edge(
        &sb,
        "otlp",
        &[
            "--otlp-endpoint".into(),
            format!("http://127.0.0.1:{port}"),
            "--otlp-metrics-interval".into(),
            "1s".into(),
        ],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{parent}-01");
    let r = edge.request(
        "GET",
        "/orders/7",
        &[("apikey", &key), ("traceparent", &traceparent)],
    );
    assert_eq!(r.status, 200);
    let seen = r.upstream_headers()["traceparent"].as_str().unwrap().to_string();
    assert!(
        seen.starts_with(&format!("00-{trace}-")) && seen.ends_with("-01"),
        "{seen}"
    );
    let upstream_span = &seen[36..52];
    assert_ne!(upstream_span, parent, "the upstream's parent is the edge's span");
    // An unsampled caller: recorded as a log, not traced.
    let quiet = format!("00-{}-{parent}-00", "1".repeat(32));
    assert_eq!(
        edge.request("GET", "/open/q", &[("traceparent", &quiet)]).status,
        200
    );

    let lines = wait_for(
        "spans, logs and metrics at the receiver",
        Duration::from_secs(30),
        || {
            let lines = decoded(&out);
            let has = |signal: &str| lines.iter().any(|l| l["signal"] == signal);
            let traced = lines
                .iter()
                .any(|l| l["signal"] == "span" && l["trace_id"] == trace);
            let quiet_logged = lines
                .iter()
                .any(|l| l["signal"] == "log" && l["trace_id"] == "1".repeat(32));
            (traced && quiet_logged && has("metric")).then_some(lines)
        },
    );
    assert!(
        lines.iter().all(|l| l.get("error").is_none()),
        "decode errors: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| l["unknown_fields"] == false),
        "fields the official protos do not know"
    );
    let spans: Vec<&Value> = lines
        .iter()
        .filter(|l| l["signal"] == "span" && l["trace_id"] == trace)
        .collect();
    let server = spans
        .iter()
        .find(|s| s["parent_span_id"] == parent)
        .expect("the server span's parent is the client's span");
    assert_eq!(server["name"], "GET /orders");
    assert_eq!(server["kind"], 2);
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
    assert_eq!(server["attributes"]["tollgate.app"], "shop");
    assert_eq!(server["resource"]["service.name"], "tollgate-edge");
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s["parent_span_id"] == server["span_id"])
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for phase in ["route", "authenticate", "rate_limit", "upstream"] {
        assert!(children.contains(&phase), "no {phase} span in {children:?}");
    }
    let up = spans.iter().find(|s| s["name"] == "upstream").unwrap();
    assert_eq!(
        up["span_id"], upstream_span,
        "the span the upstream saw as its parent"
    );
    assert_eq!(up["kind"], 3);
    assert!(
        !lines
            .iter()
            .any(|l| l["signal"] == "span" && l["trace_id"] == "1".repeat(32)),
        "an unsampled trace exports no span"
    );
    let log = lines
        .iter()
        .find(|l| l["signal"] == "log" && l["trace_id"] == trace)
        .expect("the call's log record");
    assert_eq!(log["span_id"], server["span_id"]);
    assert_eq!(log["attributes"]["tollgate.service"], "orders");
    assert_eq!(log["attributes"]["tollgate.key"].as_str().unwrap(), &key[..16]);
    assert!(
        !serde_json::to_string(&lines).unwrap().contains(&key),
        "the key never leaves"
    );
    let requests: f64 = lines
        .iter()
        .filter(|l| l["signal"] == "metric" && l["name"] == "tollgate.requests")
        .filter(|l| l["attributes"]["service"] == "orders")
        .filter_map(|l| l["value"].as_f64())
        .fold(0.0, f64::max);
    assert_eq!(requests, 1.0);
    drop(upstream);
}

/// `tollgate stats -o json` through control-plane node `i`.
fn stats(sb: &Sandbox, i: usize, by: &str) -> Option<Value> {
    let out = sb.cli(i, &["stats", "--by", by, "--since", "1h", "-o", "json"]);
    (out.code == 0)
        .then(|| serde_json::from_str(&out.stdout).ok())
        .flatten()
}

/// Every call's latency in ms, from the edges' call logs (the exact values).
fn logged_latencies(edges: &[&EdgeNode]) -> Vec<f64> {
    let mut all = Vec::new();
    for e in edges {
        let text = std::fs::read_to_string(e.dir.join("calls/calls.jsonl")).unwrap_or_default();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            all.push(v["latency_ms"].as_f64().unwrap());
        }
    }
    all.sort_by(f64::total_cmp);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_over_two_edges_and_a_leader_change_are_exact() {
    let upstream = Upstream::start();
    let mut sb = Sandbox::cluster(3);
    let file = sb.file("config.yaml", &config(&upstream.url()));
    sb.cli(0, &["apply", "-f", &file]).ok();
    let key = shop_key(&sb);
    // Each edge streams from its own control-plane node, with the third as its fallback.
    let edges = edges_on_nodes(&sb, "stats", 2, true);
    let (a, b) = (&edges[0], &edges[1]);
    let send = |e: &EdgeNode, path: &str, key: &str, n: usize, want: u16| {
        for _ in 0..n {
            assert_eq!(e.get_with_key(path, key).status, want, "{path}");
        }
    };
    send(a, "/orders/1", &key, 30, 200);
    send(a, "/orders/1", "", 10, 401);
    send(b, "/open/x", "", 20, 200);
    send(b, "/nowhere", "", 5, 404);

    // The leader goes; the edges keep reporting through the survivors.
    let leader = sb.leader().await;
    let li = sb.nodes.iter().position(|n| n.id == leader).unwrap();
    sb.nodes[li].kill();
    let successor = tokio::time::timeout(Duration::from_secs(20), sb.leader())
        .await
        .expect("a new leader");
    assert_ne!(successor, leader);
    send(a, "/orders/2", &key, 10, 200);
    send(b, "/open/y", "", 7, 200);
    let survivor = (0..3).find(|i| *i != li).unwrap();

    let total = 30 + 10 + 20 + 5 + 10 + 7;
    let by_status = tokio::task::block_in_place(|| {
        wait_for("stats to count every call", Duration::from_secs(30), || {
            let v = stats(&sb, survivor, "status")?;
            (v["total"]["requests"] == total).then_some(v)
        })
    });
    let class = |c: &str| {
        by_status["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == c)
            .map_or(0, |r| r["requests"].as_u64().unwrap())
    };
    assert_eq!((class("2xx"), class("4xx"), class("5xx")), (67, 15, 0));
    let by_service = tokio::task::block_in_place(|| stats(&sb, survivor, "service")).unwrap();
    let service = |g: &str| {
        by_service["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == g)
            .unwrap_or_else(|| panic!("no {g} in {by_service}"))
            .clone()
    };
    assert_eq!(service("acme/orders")["requests"], 50);
    assert_eq!(service("acme/orders")["by_status"]["4xx"], 10);
    assert_eq!(service("acme/open")["requests"], 27);
    assert_eq!(service("/")["requests"], 5, "unrouted calls");

    // Percentiles within the sketch's stated error of the exact latencies in the call logs.
    let truth = logged_latencies(&[a, b]);
    assert_eq!(truth.len() as u64, total);
    let error = by_status["relative_error"].as_f64().unwrap();
    assert_eq!(error, 0.01);
    for (q, field) in [(0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")] {
        let exact = truth[(q * (truth.len() - 1) as f64).floor() as usize];
        let got = by_status["total"][field].as_f64().unwrap();
        // The log rounds to the microsecond.
        assert!(
            (got - exact).abs() <= exact * error + 0.001,
            "{field}: {got} vs {exact}"
        );
    }
    // The table form names the same total.
    let table = tokio::task::block_in_place(|| sb.cli(survivor, &["stats", "--by", "status"]).ok().stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("total") && l.split_whitespace().nth(1) == Some("82")),
        "{table}"
    );
}

/// The JSON lines a `logs tail -o json` process printed so far.
fn tailed(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn logs_tail_streams_the_matching_records_of_every_edge() {
    let upstream = Upstream::start();
    let sb = Sandbox::cluster(2);
    let dead = free_port();
    let doc = format!(
        r#"
tenants: [{{name: acme}}]
upstreams:
  - {{name: be, tenant: acme, targets: [{{url: "{}"}}]}}
  - {{name: gone, tenant: acme, targets: [{{url: "http://127.0.0.1:{dead}"}}]}}
services:
  - {{name: open, tenant: acme, upstream: be, routes: [{{paths: [/open]}}]}}
  - {{name: down, tenant: acme, upstream: gone, routes: [{{paths: [/down]}}]}}
"#,
        upstream.url()
    );
    let file = sb.file("config.yaml", &doc);
    sb.cli(0, &["apply", "-f", &file]).ok();
    // Edge a streams from node 0, edge b from node 1; the tail asks node 0.
    let edges = edges_on_nodes(&sb, "tail", 2, false);
    let (a, b) = (&edges[0], &edges[1]);
    let log = sb.dir.path().join("tail.log");
    let _tail = Proc::spawn(
        "logs tail",
        &[
            "--server".into(),
            sb.nodes[0].url(),
            "--token".into(),
            sb.token.clone(),
            "-o".into(),
            "json".into(),
            "logs".into(),
            "tail".into(),
            "--status".into(),
            "5xx".into(),
        ],
        log.clone(),
    );
    // Until the tail is open on both nodes, probes from the far edge are not seen.
    wait_for("the tail to see the far edge", Duration::from_secs(20), || {
        assert_eq!(b.request("GET", "/down/probe", &[]).status, 502);
        std::thread::sleep(Duration::from_millis(200));
        tailed(&log)
            .iter()
            .any(|l| l["path"] == "/down/probe")
            .then_some(())
    });
    wait_for("the tail to see the near edge", Duration::from_secs(20), || {
        assert_eq!(a.request("GET", "/down/near", &[]).status, 502);
        std::thread::sleep(Duration::from_millis(200));
        tailed(&log)
            .iter()
            .any(|l| l["path"] == "/down/near")
            .then_some(())
    });
    for (edge, tag) in [(a, "a"), (b, "b")] {
        for i in 0..3 {
            assert_eq!(edge.request("GET", &format!("/down/{tag}{i}"), &[]).status, 502);
            assert_eq!(edge.request("GET", &format!("/open/{tag}{i}"), &[]).status, 200);
        }
    }
    let lines = wait_for(
        "every 5xx of both edges in the tail",
        Duration::from_secs(20),
        || {
            let lines = tailed(&log);
            let n = lines
                .iter()
                .filter(|l| {
                    l["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("/down/a") || p.starts_with("/down/b"))
                })
                .count();
            (n == 6).then_some(lines)
        },
    );
    assert!(lines.iter().all(|l| l["status"] == 502), "only 5xx: {lines:?}");
    assert!(lines
        .iter()
        .all(|l| l["service"] == "down" && l["error"] == "upstream_error"));
    // Each record once.
    let mut paths: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["path"].as_str())
        .filter(|p| !p.contains("probe") && !p.contains("near"))
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/down/a0", "/down/a1", "/down/a2", "/down/b0", "/down/b1", "/down/b2"]
    );
    // A bad filter is refused with a one-line reason.
    let bad = sb.cli(0, &["logs", "tail", "--status", "6xx"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("5xx"), "{}", bad.stderr);
}
