//! Helpers shared by unit tests: configs written as YAML documents, turned into wire
//! resources and compiled snapshots.

use std::sync::Arc;

use tollgate_proto::keys::{format_key, parse_key, sha256_hex};
use tollgate_proto::model::{ApiKey, Document, Spec};
use tollgate_proto::v1;

use crate::config::resources::ConfigState;
use crate::config::snapshot::Retained;
use crate::config::snapshot::Snapshot;

/// A tenant `acme` with upstream `be`, service `orders` (`/orders`, api_key), app `mobile`
/// with an approved subscription, and an open service `open` (`/open`).
pub const DOC: &str = r#"
tenants: [{name: acme}, {name: other}]
upstreams: [{name: be, tenant: acme, targets: [{url: "http://127.0.0.1:9"}]}]
services:
  - {name: orders, tenant: acme, upstream: be, auth: [api_key], routes: [{paths: ["/orders"]}]}
  - {name: open, tenant: acme, upstream: be, routes: [{paths: ["/open"]}]}
apps: [{name: mobile, tenant: acme}, {name: web, tenant: acme}]
subscriptions: [{app: mobile, service: orders, tenant: acme, status: approved}]
"#;

/// Wire resources of a YAML document.
pub fn resources(yaml: &str) -> Vec<v1::Resource> {
    Document::parse(yaml)
        .unwrap()
        .into_specs()
        .iter()
        .map(|s| s.to_resource(1))
        .collect()
}

/// A fresh key for `app` and its stored form.
pub fn api_key(tenant: &str, app: &str, seed: u8) -> (String, v1::Resource) {
    let key = format_key(&[seed; 6], &[seed; 32]);
    let spec = Spec::ApiKey(ApiKey {
        id: parse_key(&key).unwrap().to_string(),
        tenant: tenant.into(),
        app: app.into(),
        sha256: sha256_hex(key.as_bytes()),
        label: None,
        created_ms: 0,
    });
    (key, spec.to_resource(1))
}

pub fn compile(version: u64, resources: Vec<v1::Resource>) -> Arc<Snapshot> {
    let state = ConfigState::from_resources(version, resources).unwrap();
    Arc::new(Snapshot::compile(&state, &mut Retained::default()).unwrap())
}

/// A loopback HTTP/1.1 server answering every request with `handler(parts, body).await`;
/// returns its address. Runs until the test's runtime stops.
pub async fn http_server<F, Fut>(handler: F) -> std::net::SocketAddr
where
    F: Fn(http::request::Parts, bytes::Bytes) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>> + Send,
{
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(handler(parts, body).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}
