//! The admin listener: `GET /healthz` (the process is up), `GET /readyz` (200 only once a
//! complete config is loaded, from the control plane or the last-known-good file) and
//! `GET /config/version`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::body::{Body, ClientBody};
use crate::config::state::Shared;
use crate::error::{error_body, json_response};
use crate::listen::Handler;

#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
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
        let admin = Admin::new(shared.clone());
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
