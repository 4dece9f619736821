//! End to end on loopback: a fake control plane (a tonic `ConfigStream` server) streams a
//! chunked snapshot to a real edge, which proxies to a tiny upstream; then the edge restarts
//! with no reachable control plane and serves from its last-known-good file.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tollgate_edge::{start, RunningEdge};
use tollgate_proto::keys::{format_key, parse_key, sha256_hex};
use tollgate_proto::model::{ApiKey, Document, Spec};
use tollgate_proto::v1::{edge_message::Msg, ConfigPush, Resource};

use common::{fake_cp, options};

const VERSION: u64 = 7;

/// The config the fake control plane serves, and a valid key for app `mobile`.
fn config(upstream: SocketAddr) -> (Vec<Resource>, String) {
    let doc = format!(
        r#"
tenants: [{{name: acme}}]
upstreams: [{{name: be, tenant: acme, targets: [{{url: "http://{upstream}"}}]}}]
services: [{{name: orders, tenant: acme, upstream: be, auth: [api_key], routes: [{{paths: ["/orders"]}}]}}]
apps: [{{name: mobile, tenant: acme}}]
subscriptions: [{{app: mobile, service: orders, tenant: acme, status: approved}}]
"#
    );
    let mut specs = Document::parse(&doc).unwrap().into_specs();
    let key = format_key(&[0xab; 6], &[0x5a; 32]);
    specs.push(Spec::ApiKey(ApiKey {
        id: parse_key(&key).unwrap().into(),
        tenant: "acme".into(),
        app: "mobile".into(),
        sha256: sha256_hex(key.as_bytes()),
        label: None,
        created_ms: 0,
    }));
    (specs.iter().map(|s| s.to_resource(1)).collect(), key)
}

/// A snapshot in two chunks; the checksum rides on the last one.
fn snapshot(resources: Vec<Resource>) -> Vec<ConfigPush> {
    let sum = tollgate_proto::stream::checksum(&resources, &[]);
    let (a, b) = resources.split_at(resources.len() / 2);
    [a, b]
        .into_iter()
        .enumerate()
        .map(|(i, part)| ConfigPush {
            nonce: "snap-1".into(),
            version: VERSION,
            snapshot: true,
            chunk: i as u32,
            chunks: 2,
            upserts: part.to_vec(),
            checksum: if i == 1 { sum.clone() } else { String::new() },
            ..Default::default()
        })
        .collect()
}

/// Answers with the headers it received, as JSON.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tollgate_testkit::serve::http1(listener, None, |req: Request<Incoming>| async move {
        if let Some(ms) = req.headers().get("x-delay-ms") {
            let ms = ms.to_str().unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let headers: BTreeMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = serde_json::json!({"path": req.uri().path(), "headers": headers});
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
    });
    addr
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    json: serde_json::Value,
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::default()).unwrap()).await.unwrap();
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

async fn wait_ready(edge: &RunningEdge) {
    for _ in 0..100 {
        if edge.config_version() == Some(VERSION) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the edge never loaded config version {VERSION}");
}

#[tokio::test]
async fn edge_applies_a_streamed_snapshot_proxies_and_restarts_from_lkg() {
    let upstream = echo_upstream().await;
    let (resources, key) = config(upstream);
    let (cp, mut events) = fake_cp(snapshot(resources)).await;
    let data_dir = tempfile::tempdir().unwrap();

    let edge = start(options(cp, data_dir.path())).await.unwrap();
    let admin = edge.admin_addr();
    wait_ready(&edge).await;

    // Hello, then an ACK of the whole snapshot.
    let hello = match events.recv().await.unwrap().msg {
        Some(Msg::Hello(h)) => h,
        other => panic!("expected hello, got {other:?}"),
    };
    assert_eq!(hello.node_id, "edge-test");
    assert_eq!(hello.last_version, 0);
    assert!(hello.capabilities.iter().any(|c| c == "api_key"));
    assert_eq!(hello.proxy_addr, edge.proxy_addr().to_string());
    match tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap()
        .msg
    {
        Some(Msg::Ack(ack)) => assert_eq!((ack.nonce.as_str(), ack.version), ("snap-1", VERSION)),
        other => panic!("expected ack, got {other:?}"),
    }

    let proxy = edge.proxy_addr();
    let ok = get(proxy, "/orders/1", &[("apikey", &key)]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
    assert_eq!(ok.json["path"], "/orders/1");
    assert_eq!(ok.json["headers"]["x-consumer-app"], "mobile");
    assert_eq!(ok.json["headers"]["x-consumer-tenant"], "acme");
    assert!(ok.json["headers"].get("apikey").is_none());
    let rid = ok.headers["x-request-id"].to_str().unwrap();
    assert!(!rid.is_empty());
    assert_eq!(ok.json["headers"]["x-request-id"], rid);

    let no_key = get(proxy, "/orders/1", &[]).await;
    assert_eq!(no_key.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_key.json["error"]["code"], "missing_credential");
    assert_eq!(no_key.headers["content-type"], "application/json");
    assert!(no_key.headers.contains_key("x-request-id"));

    let unknown = get(proxy, "/nowhere", &[("x-request-id", "mine-1")]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json["error"]["code"], "no_route");
    assert_eq!(unknown.headers["x-request-id"], "mine-1");

    assert_eq!(get(admin, "/healthz", &[]).await.json["status"], "ok");
    assert_eq!(get(admin, "/readyz", &[]).await.status, StatusCode::OK);
    assert_eq!(get(admin, "/config/version", &[]).await.json["version"], VERSION);

    // The ports are taken while the edge runs.
    let mut clash = options(cp, data_dir.path());
    clash.listen = proxy;
    let err = start(clash).await.unwrap_err().to_string();
    assert!(err.contains("already in use"), "{err}");

    edge.shutdown().await.unwrap();
    assert!(data_dir.path().join("lkg.json").exists());

    // Restart with no reachable control plane: ready at once from the last-known-good file.
    let dead_cp = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let edge = start(options(dead_cp, data_dir.path())).await.unwrap();
    assert_eq!(edge.config_version(), Some(VERSION));
    assert_eq!(
        get(edge.admin_addr(), "/readyz", &[]).await.status,
        StatusCode::OK
    );
    let ok = get(
        edge.proxy_addr(),
        "/orders/2",
        &[("authorization", &format!("Bearer {key}"))],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
    assert!(ok.json["headers"].get("authorization").is_none());
    edge.shutdown().await.unwrap();
}

#[tokio::test]
async fn not_ready_until_a_config_arrives_and_a_corrupt_lkg_is_ignored() {
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::write(data_dir.path().join("lkg.json"), b"{\"format\":1,\"version\":3,").unwrap();
    let dead_cp = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let edge = start(options(dead_cp, data_dir.path())).await.unwrap();
    assert_eq!(edge.config_version(), None);
    assert_eq!(
        get(edge.admin_addr(), "/readyz", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(edge.admin_addr(), "/healthz", &[]).await.status,
        StatusCode::OK
    );
    let r = get(edge.proxy_addr(), "/orders", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json["error"]["code"], "not_ready");
    edge.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let upstream = echo_upstream().await;
    let (resources, key) = config(upstream);
    let (cp, _events) = fake_cp(snapshot(resources)).await;
    let data_dir = tempfile::tempdir().unwrap();
    let edge = start(options(cp, data_dir.path())).await.unwrap();
    wait_ready(&edge).await;
    let proxy = edge.proxy_addr();
    let in_flight =
        tokio::spawn(
            async move { get(proxy, "/orders/slow", &[("apikey", &key), ("x-delay-ms", "400")]).await },
        );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = std::time::Instant::now();
    edge.shutdown().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "shutdown did not wait"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "still accepting"
    );
}
