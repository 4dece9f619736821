use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::testutil::{api_key, compile, resources};
use http::{HeaderMap, HeaderValue};
use std::time::Instant;

const CLIENT: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 5555));

/// An upstream answering every request with its method, path and headers as JSON.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let headers: BTreeMap<String, String> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                        .collect();
                    let body = serde_json::json!({
                        "method": req.method().as_str(),
                        "uri": req.uri().to_string(),
                        "headers": headers,
                    });
                    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                    resp.headers_mut()
                        .insert("connection", HeaderValue::from_static("keep-alive"));
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// An address where nothing listens.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn doc(be: SocketAddr, dead: SocketAddr, silent: SocketAddr) -> String {
    format!(
        r#"
tenants: [{{name: acme}}, {{name: other}}]
upstreams:
  - {{name: be, tenant: acme, targets: [{{url: "http://{be}/base"}}]}}
  - {{name: dead, tenant: acme, targets: [{{url: "http://{dead}"}}]}}
  - {{name: silent, tenant: acme, targets: [{{url: "http://{silent}"}}], timeouts: {{connect: 1s, request: 300ms}}}}
  - {{name: none, tenant: acme, targets: [{{url: "http://{be}", weight: 0}}]}}
services:
  - {{name: orders, tenant: acme, upstream: be, auth: [api_key], routes: [{{paths: ["/orders"], strip_prefix: true}}]}}
  - {{name: open, tenant: acme, upstream: be, routes: [{{paths: ["/open"]}}]}}
  - {{name: old, tenant: acme, upstream: be, state: deprecated, sunset: "2027-06-30T00:00:00Z", routes: [{{paths: ["/old"]}}]}}
  - {{name: gone, tenant: acme, upstream: be, state: retired, auth: [api_key], routes: [{{paths: ["/gone"]}}]}}
  - {{name: wip, tenant: acme, upstream: be, state: draft, routes: [{{paths: ["/wip"]}}]}}
  - {{name: llm, tenant: acme, ai: {{models: ["openai/*"]}}, routes: [{{paths: ["/llm"]}}]}}
  - {{name: down, tenant: acme, upstream: dead, routes: [{{paths: ["/down"]}}]}}
  - {{name: slow, tenant: acme, upstream: silent, routes: [{{paths: ["/slow"]}}]}}
  - {{name: empty, tenant: acme, upstream: none, routes: [{{paths: ["/empty"]}}]}}
ai_providers: [{{name: openai, tenant: acme, kind: openai, base_url: "https://api.openai.com"}}]
apps: [{{name: mobile, tenant: acme}}, {{name: web, tenant: acme}}, {{name: slowpoke, tenant: acme}}, {{name: nope, tenant: acme}}]
subscriptions:
  - {{app: mobile, service: orders, tenant: acme, status: approved}}
  - {{app: slowpoke, service: orders, tenant: acme, status: pending}}
  - {{app: nope, service: orders, tenant: acme, status: rejected}}
"#
    )
}

struct Fixture {
    proxy: Proxy,
    keys: BTreeMap<&'static str, String>,
}

async fn fixture() -> Fixture {
    // A listener that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut res = resources(&doc(echo_upstream().await, closed_port().await, silent_addr));
    let mut keys = BTreeMap::new();
    for (i, (tenant, app)) in [
        ("acme", "mobile"),
        ("acme", "web"),
        ("acme", "slowpoke"),
        ("acme", "nope"),
        ("other", "mobile"),
    ]
    .into_iter()
    .enumerate()
    {
        let (key, r) = api_key(tenant, app, i as u8 + 1);
        res.push(r);
        keys.insert(if tenant == "other" { "other" } else { app }, key);
    }
    let shared = Arc::new(Shared::default());
    shared.install(compile(3, res));
    Fixture {
        proxy: Proxy::new(shared, Peers::new("test-edge"), metrics_only()),
        keys,
    }
}

fn metrics_only() -> Arc<Observer> {
    Observer::metrics_only(Default::default())
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: serde_json::Value,
}

async fn call(proxy: &Proxy, req: Request<Full<Bytes>>) -> Answer {
    let resp = proxy.answer(CLIENT, req).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        headers,
        json,
    }
}

fn get(path: &str) -> http::request::Builder {
    Request::get(path).header("host", "api.test")
}

fn empty(b: http::request::Builder) -> Request<Full<Bytes>> {
    b.body(Full::new(Bytes::new())).unwrap()
}

async fn expect_error(proxy: &Proxy, req: Request<Full<Bytes>>, status: StatusCode, code: &str) {
    let a = call(proxy, req).await;
    assert_eq!(a.status, status, "{code}: {}", a.json);
    assert_eq!(a.json["error"]["code"], code);
    assert!(a.json["error"]["message"].is_string());
    assert_eq!(a.headers["content-type"], "application/json");
    assert!(a.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn not_ready_without_config() {
    let proxy = Proxy::new(
        Arc::new(Shared::default()),
        Peers::new("test-edge"),
        metrics_only(),
    );
    expect_error(
        &proxy,
        empty(get("/orders")),
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    )
    .await;
}

#[tokio::test]
async fn refusals_are_json_with_the_right_code() {
    let f = fixture().await;
    let p = &f.proxy;
    expect_error(p, empty(get("/nothing-here")), StatusCode::NOT_FOUND, "no_route").await;
    expect_error(p, empty(get("/wip")), StatusCode::NOT_FOUND, "no_route").await;
    expect_error(
        p,
        empty(get("/orders")),
        StatusCode::UNAUTHORIZED,
        "missing_credential",
    )
    .await;
    expect_error(
        p,
        empty(get("/orders").header("apikey", "tgk_nope")),
        StatusCode::UNAUTHORIZED,
        "invalid_credential",
    )
    .await;
    let unknown = tollgate_proto::keys::format_key(&[9; 6], &[9; 32]);
    expect_error(
        p,
        empty(get("/orders").header("apikey", &unknown)),
        StatusCode::UNAUTHORIZED,
        "invalid_credential",
    )
    .await;
    let other = &f.keys["other"];
    expect_error(
        p,
        empty(get("/orders").header("apikey", other)),
        StatusCode::UNAUTHORIZED,
        "invalid_credential",
    )
    .await;
    let web = &f.keys["web"];
    expect_error(
        p,
        empty(get("/orders").header("apikey", web)),
        StatusCode::FORBIDDEN,
        "not_subscribed",
    )
    .await;
    let pending = &f.keys["slowpoke"];
    expect_error(
        p,
        empty(get("/orders").header("apikey", pending)),
        StatusCode::FORBIDDEN,
        "subscription_pending",
    )
    .await;
    let rejected = &f.keys["nope"];
    expect_error(
        p,
        empty(get("/orders").header("authorization", format!("Bearer {rejected}"))),
        StatusCode::FORBIDDEN,
        "not_subscribed",
    )
    .await;
    expect_error(p, empty(get("/gone")), StatusCode::FORBIDDEN, "api_retired").await;
    expect_error(
        p,
        empty(get("/llm/v1/nope")),
        StatusCode::NOT_FOUND,
        "unknown_endpoint",
    )
    .await;
    expect_error(
        p,
        empty(get("/empty")),
        StatusCode::SERVICE_UNAVAILABLE,
        "no_healthy_upstream",
    )
    .await;
    expect_error(
        p,
        empty(get("/open/../orders")),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    expect_error(
        p,
        empty(get("/open/%2E%2e/orders")),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let smuggle = Request::post("/open")
        .header("content-length", "3")
        .header("transfer-encoding", "chunked")
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    expect_error(p, smuggle, StatusCode::BAD_REQUEST, "bad_request").await;
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504() {
    let f = fixture().await;
    expect_error(
        &f.proxy,
        empty(get("/down")),
        StatusCode::BAD_GATEWAY,
        "upstream_error",
    )
    .await;
    let started = Instant::now();
    expect_error(
        &f.proxy,
        empty(get("/slow")),
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
    )
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn forwards_with_consumer_and_forwarding_headers() {
    let f = fixture().await;
    let key = &f.keys["mobile"];
    let req = empty(
        get("/orders/42?x=1")
            .header("apikey", key)
            .header("x-consumer-app", "spoofed")
            .header("x-forwarded-for", "192.0.2.1")
            .header("x-request-id", "client-id-1")
            .header("connection", "x-private")
            .header("x-private", "secret"),
    );
    let a = call(&f.proxy, req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.headers["x-request-id"], "client-id-1");
    // Hop-by-hop headers of the upstream's answer are not passed on.
    assert!(!a.headers.contains_key("connection"));
    assert!(!a.headers.contains_key("deprecation"));
    let up = &a.json["headers"];
    // strip_prefix drops /orders; the target's base path is kept; the query passes.
    assert!(
        a.json["uri"].as_str().unwrap().ends_with("/base/42?x=1"),
        "{}",
        a.json
    );
    assert_eq!(up["x-consumer-app"], "mobile");
    assert_eq!(up["x-consumer-tenant"], "acme");
    assert!(up.get("apikey").is_none());
    assert!(up.get("x-private").is_none());
    assert_eq!(up["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
    assert_eq!(up["x-forwarded-proto"], "http");
    assert_eq!(up["x-forwarded-host"], "api.test");
    assert_eq!(up["x-request-id"], "client-id-1");

    // Bearer keys are accepted and the Authorization header is not forwarded.
    let a = call(
        &f.proxy,
        empty(get("/orders").header("authorization", format!("Bearer {key}"))),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.json["headers"].get("authorization").is_none());
    assert!(a.json["uri"].as_str().unwrap().ends_with("/base/"), "{}", a.json);
}

#[tokio::test]
async fn open_and_deprecated_services() {
    let f = fixture().await;
    let a = call(
        &f.proxy,
        empty(get("/open/x").header("x-consumer-tenant", "root")),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.json["headers"].get("x-consumer-tenant").is_none());
    assert_eq!(a.headers["x-request-id"].len(), 32);

    let a = call(&f.proxy, empty(get("/old"))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["deprecation"], "true");
    assert_eq!(a.headers["sunset"], "Wed, 30 Jun 2027 00:00:00 GMT");
}

#[tokio::test]
async fn ip_filter_and_cors_run_before_authentication_and_paths_are_normalized() {
    let be = echo_upstream().await;
    let res = resources(&format!(
        r#"
tenants: [{{name: acme}}]
upstreams: [{{name: be, tenant: acme, targets: [{{url: "http://{be}"}}]}}]
policies:
  - {{name: lan, tenant: acme, ip_filter: {{allow: ["192.168.0.0/16"]}}}}
  - {{name: spa, tenant: acme, cors: {{allow_origins: ["https://spa.test"], allow_methods: [PUT]}}}}
services:
  - {{name: walled, tenant: acme, upstream: be, auth: [api_key], policies: [lan], routes: [{{paths: ["/walled"]}}]}}
  - {{name: api, tenant: acme, upstream: be, auth: [api_key], policies: [spa], routes: [{{paths: ["/api"], methods: [PUT]}}]}}
  - {{name: open, tenant: acme, upstream: be, routes: [{{paths: ["/"]}}]}}
"#
    ));
    let shared = Arc::new(Shared::default());
    shared.install(compile(1, res));
    let p = Proxy::new(shared, Peers::new("test-edge"), metrics_only());
    // CLIENT (10.1.2.3) is outside the allow list: 403 before any credential is asked for.
    expect_error(&p, empty(get("/walled")), StatusCode::FORBIDDEN, "ip_denied").await;
    // A preflight needs no credential, and is routed by the method it asks about.
    let preflight = |origin: &str| {
        empty(
            Request::options("/api/1")
                .header("host", "api.test")
                .header("origin", origin)
                .header("access-control-request-method", "PUT"),
        )
    };
    let a = call(&p, preflight("https://spa.test")).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.headers["access-control-allow-origin"], "https://spa.test");
    expect_error(
        &p,
        preflight("https://evil.test"),
        StatusCode::FORBIDDEN,
        "cors_denied",
    )
    .await;
    // Errors after the cors phase carry the grant.
    let put = Request::put("/api/1")
        .header("host", "api.test")
        .header("origin", "https://spa.test");
    let a = call(&p, empty(put)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.headers["access-control-allow-origin"], "https://spa.test");
    // Escaped unreserved characters are decoded before routing and sent decoded.
    expect_error(&p, empty(get("/w%61lled")), StatusCode::FORBIDDEN, "ip_denied").await;
    let a = call(&p, empty(get("/%6Fpen/%7Ex?a=%61"))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.json["uri"].as_str().unwrap().ends_with("/open/~x?a=%61"),
        "{}",
        a.json
    );
    for bad in ["/open%2Fx", "/open%5cx", "/open%00", "//open"] {
        expect_error(&p, empty(get(bad)), StatusCode::BAD_REQUEST, "bad_request").await;
    }
    // A tab is legal in a header value (NUL and other controls cannot even be put in a
    // HeaderValue; the parsers refuse them on the wire: see cve_regressions.rs).
    let tab = get("/open").header("x-evil", HeaderValue::from_bytes(b"a\tb").unwrap());
    assert_eq!(call(&p, empty(tab)).await.status, StatusCode::OK);
}

/// A proxy whose observer queues every call record here, and exports spans.
fn recording(f: &Fixture) -> (Proxy, std::sync::mpsc::Receiver<Arc<CallRecord>>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let observer = Observer::new(
        Default::default(),
        crate::observe::rollup::Rollups::new("test-edge"),
        crate::observe::tail::Tail::new(),
        Default::default(),
        Some(Default::default()),
        Some(tx),
        crate::observe::trace::Sampler { ratio: 1.0 },
    );
    let proxy = Proxy {
        observer,
        ..f.proxy.clone()
    };
    (proxy, rx)
}

#[tokio::test]
async fn every_answer_leaves_one_call_record_with_its_trace() {
    let f = fixture().await;
    let (p, records) = recording(&f);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let a = call(
        &p,
        empty(
            get("/orders/7?apikey=hidden")
                .header("apikey", &f.keys["mobile"])
                .header("traceparent", traceparent),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let r = records.try_recv().expect("a record once the body was read");
    assert!(records.try_recv().is_err(), "one record per call");
    assert_eq!((r.status, r.error), (200, None));
    let l = &r.stats.labels;
    assert_eq!(
        (&*l.tenant, &*l.service, &*l.route),
        ("acme", "orders", "/orders")
    );
    assert_eq!(r.app.as_deref(), Some("mobile"));
    let key_id = r.key.clone().unwrap();
    assert!(key_id.starts_with("tgk_") && key_id.len() == 16, "{key_id}");
    assert!(!f.keys["mobile"].ends_with(&key_id[4..]), "only the public id");
    assert!(r.upstream.as_deref().unwrap().starts_with("http://127.0.0.1:"));
    assert!(r.upstream_latency.unwrap() <= r.latency);
    assert!(r.bytes_out > 0);
    let phases: Vec<_> = r.phases.iter().map(|p| p.name).collect();
    assert_eq!(phases, ["route", "authenticate", "rate_limit", "upstream"]);
    // The trace is the client's, and the upstream's parent is the edge's upstream span.
    assert_eq!(r.trace.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    let sent = a.json["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(
        sent,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex::encode(r.trace.upstream_span)
        )
    );
    let line = r.json_line();
    assert!(
        !line.contains("hidden") && !line.contains(&f.keys["mobile"]),
        "{line}"
    );

    // Refusals and unrouted requests are recorded too, with their error code.
    call(&p, empty(get("/nowhere"))).await;
    let r = records.try_recv().unwrap();
    assert_eq!((r.status, r.error), (404, Some("no_route")));
    assert_eq!(&*r.stats.labels.service, "");
    assert_eq!(r.stats.requests(3), 1, "counted as unrouted 4xx");
    call(&p, empty(get("/orders/1"))).await;
    let r = records.try_recv().unwrap();
    assert_eq!((r.status, r.error), (401, Some("missing_credential")));
    assert_eq!(&*r.stats.labels.service, "orders");
}

#[tokio::test]
async fn without_export_a_client_traceparent_passes_unchanged() {
    let f = fixture().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let a = call(&f.proxy, empty(get("/open").header("traceparent", traceparent))).await;
    assert_eq!(a.json["headers"]["traceparent"], traceparent);
    let a = call(&f.proxy, empty(get("/open"))).await;
    assert!(a.json["headers"].get("traceparent").is_none(), "none invented");
}
