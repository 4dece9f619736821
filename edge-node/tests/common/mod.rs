//! Shared by the edge's integration tests: a fake control plane (a tonic `ConfigStream`
//! server pushing given config pushes and reporting what the edge sends), a started edge serving a YAML config, scriptable loopback
//! upstreams, and a small HTTP client. Every wait is bounded.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tollgate_edge::{start, EdgeOptions, RunningEdge};
use tollgate_proto::model::Document;
use tollgate_proto::v1::config_stream_server::{ConfigStream, ConfigStreamServer};
use tollgate_proto::v1::{ConfigPush, EdgeMessage, Resource};
use tonic::{Status, Streaming};

/// The config version the fake control plane serves.
pub const VERSION: u64 = 1;

/// The join token the fake control plane expects, as the real one expects an edge token.
pub const JOIN_TOKEN: &str = "tge_join";

/// A control plane that answers every stream with `pushes`, after the edge's hello, and
/// reports every message the edge sends.
struct FakeCp {
    pushes: Vec<ConfigPush>,
    seen: mpsc::UnboundedSender<EdgeMessage>,
}

#[tonic::async_trait]
impl ConfigStream for FakeCp {
    type StreamStream = ReceiverStream<Result<ConfigPush, Status>>;

    async fn stream(
        &self,
        request: tonic::Request<Streaming<EdgeMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {JOIN_TOKEN}")) {
            return Err(Status::unauthenticated("no join token"));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let pushes = self.pushes.clone();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            if let Ok(Some(hello)) = inbound.message().await {
                let _ = seen.send(hello);
                for p in pushes {
                    let _ = tx.send(Ok(p)).await;
                }
            }
            // Keep the stream open while the edge talks (ACKs, NACKs).
            while let Ok(Some(m)) = inbound.message().await {
                let _ = seen.send(m);
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// Starts a fake control plane pushing `pushes` to every edge that connects; the receiver
/// gets what the edges send.
pub async fn fake_cp(pushes: Vec<ConfigPush>) -> (SocketAddr, mpsc::UnboundedReceiver<EdgeMessage>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, events) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigStreamServer::new(FakeCp { pushes, seen }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, events)
}

/// `resources` as one snapshot push of version [`VERSION`].
pub fn one_snapshot(resources: Vec<Resource>) -> ConfigPush {
    ConfigPush {
        nonce: "snap".into(),
        version: VERSION,
        snapshot: true,
        chunk: 0,
        chunks: 1,
        checksum: tollgate_proto::stream::checksum(&resources, &[]),
        upserts: resources,
        ..Default::default()
    }
}

/// Options for a test edge joining the control plane at `cp`, on ephemeral ports.
pub fn options(cp: SocketAddr, data_dir: &std::path::Path) -> EdgeOptions {
    EdgeOptions {
        node_id: "edge-test".into(),
        control_planes: vec![format!("http://{cp}")],
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        peer: "127.0.0.1:0".parse().unwrap(),
        peer_advertise: None,
        data_dir: data_dir.to_path_buf(),
        join_token: Some(JOIN_TOKEN.into()),
        max_connections: tollgate_edge::DEFAULT_MAX_CONNECTIONS,
        tls_listen: None,
        cluster_tls: None,
        allow_plaintext_stream: false,
        body_read_timeout: tollgate_edge::DEFAULT_BODY_READ_TIMEOUT,
        upgrade_idle_timeout: tollgate_edge::DEFAULT_UPGRADE_IDLE_TIMEOUT,
        send_timeout: tollgate_edge::DEFAULT_SEND_TIMEOUT,
        header_read_timeout: tollgate_edge::DEFAULT_HEADER_READ_TIMEOUT,
        observe: tollgate_edge::ObserveOptions {
            call_log: Some(tollgate_edge::LogConfig::in_dir(data_dir.join("calls"))),
            otlp: None,
            sample_ratio: 1.0,
        },
    }
}

/// A running edge serving one config, and its data directory.
pub struct TestEdge {
    pub edge: RunningEdge,
    _data_dir: tempfile::TempDir,
}

impl TestEdge {
    /// Starts an edge whose control plane serves `yaml`; returns once the config is loaded.
    pub async fn start(yaml: &str) -> TestEdge {
        let resources = Document::parse(yaml)
            .unwrap()
            .into_specs()
            .iter()
            .map(|s| s.to_resource(VERSION))
            .collect();
        let (cp, _edge_messages) = fake_cp(vec![one_snapshot(resources)]).await;
        let data_dir = tempfile::tempdir().unwrap();
        let edge = start(options(cp, data_dir.path())).await.unwrap();
        for _ in 0..200 {
            if edge.config_version() == Some(VERSION) {
                return TestEdge {
                    edge,
                    _data_dir: data_dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the edge never loaded the config");
    }

    pub fn proxy(&self) -> SocketAddr {
        self.edge.proxy_addr()
    }

    pub async fn shutdown(self) {
        self.edge.shutdown().await.unwrap();
    }
}

/// A loopback upstream whose answers a test steers: `/healthz` answers `health`; anything
/// else waits `delay_ms`, then answers `status` with the upstream's name as the body.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub status: AtomicU16,
    pub health: AtomicU16,
    pub delay_ms: AtomicU64,
    /// Requests other than health checks, and how many of them were POSTs.
    pub hits: AtomicUsize,
    pub posts: AtomicUsize,
    pub health_checks: AtomicUsize,
}

impl Backend {
    pub async fn start(name: &str) -> Arc<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Arc::new(Backend {
            name: name.to_string(),
            addr: listener.local_addr().unwrap(),
            status: AtomicU16::new(200),
            health: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            hits: AtomicUsize::new(0),
            posts: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
        });
        let backend = b.clone();
        tollgate_testkit::serve::http1(listener, None, move |req: Request<Incoming>| {
            let b = backend.clone();
            async move { Ok::<_, Infallible>(b.answer(req).await) }
        });
        b
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let status = if req.uri().path() == "/healthz" {
            self.health_checks.fetch_add(1, SeqCst);
            self.health.load(SeqCst)
        } else {
            self.hits.fetch_add(1, SeqCst);
            if req.method() == Method::POST {
                self.posts.fetch_add(1, SeqCst);
            }
            let delay = self.delay_ms.load(SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            self.status.load(SeqCst)
        };
        let mut resp = Response::new(Full::new(Bytes::from(self.name.clone())));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        resp
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A config with upstream `be` (its `targets` and `extra` fields as YAML flow entries) behind
/// the open service `svc` on `/`.
pub fn config(targets: &[(String, u32)], extra: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|(url, w)| format!("{{url: '{url}', weight: {w}}}"))
        .collect();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "tenants: [{{name: acme}}]
upstreams: [{{name: be, tenant: acme, targets: [{}]{extra}}}]
services: [{{name: svc, tenant: acme, upstream: be, routes: [{{paths: ['/']}}]}}]
",
        targets.join(", ")
    )
}

/// An answer: status and body text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    /// The `error.code` of a JSON error answer.
    pub fn code(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// A keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct TestClient(Client<HttpConnector, Full<Bytes>>);

impl Default for TestClient {
    fn default() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }
}

impl TestClient {
    pub async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let call = async {
            let resp = self.0.request(req.body(Full::default()).unwrap()).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Answer {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the edge answered within 10s")
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Answer {
        self.send(addr, Method::GET, path, &[]).await
    }
}
