//! HTTP towards identity providers: the client that fetches JWKS documents and calls
//! introspection endpoints, and the long-lived state kept for them across config swaps.
//! Connections go through the internal-address guard (`upstream/guarded.rs`). Redirects are
//! never followed.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};

use crate::upstream::guarded::{self, GuardedClient, USER_AGENT};

pub use crate::upstream::guarded::parse_url;

/// An answer read whole (up to the caller's limit).
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The client towards identity providers (HTTP/1.1, keep-alive pool).
#[derive(Clone, Debug)]
pub struct IdpClient {
    client: GuardedClient,
}

impl IdpClient {
    pub fn new(allow_internal: bool) -> IdpClient {
        IdpClient {
            client: guarded::client(allow_internal),
        }
    }

    /// `GET uri`, the whole exchange within `timeout`, at most `max_body` bytes of answer.
    pub async fn get(&self, uri: &Uri, timeout: Duration, max_body: usize) -> Result<Fetched, String> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri.clone())
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        self.send(req, timeout, max_body).await
    }

    /// `POST uri` with a form body and an `Authorization` header (never logged).
    pub async fn post_form(
        &self,
        uri: &Uri,
        authorization: &HeaderValue,
        form: String,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Fetched, String> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::AUTHORIZATION, authorization.clone())
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| e.to_string())?;
        self.send(req, timeout, max_body).await
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Fetched, String> {
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {}", crate::error::chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

/// The two clients towards identity providers (with and without internal addresses
/// allowed), kept across config swaps. Used only while compiling a config.
#[derive(Default)]
pub struct IdpClients {
    clients: [Option<IdpClient>; 2],
}

impl IdpClients {
    /// The client for `allow_internal`, built on first use.
    pub fn client(&mut self, allow_internal: bool) -> IdpClient {
        self.clients[usize::from(allow_internal)]
            .get_or_insert_with(|| IdpClient::new(allow_internal))
            .clone()
    }
}
