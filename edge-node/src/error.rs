//! The one error of the request path, classified once (what went wrong, whose fault, whether
//! a retry could help) and mapped once to the HTTP answer:
//! `{"error": {"code": "...", "message": "..."}}` with `content-type: application/json`.
//! The caller adds `x-request-id`.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, Body};

/// Whose fault an error is, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request was wrong (no route, bad credential...).
    Client,
    /// The upstream failed or was too slow.
    Upstream,
    /// The edge itself cannot serve (no config, not implemented).
    Gateway,
}

/// Every way a proxied request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("no route matches the request")]
    NoRoute,
    #[error("a credential is required")]
    MissingCredential,
    #[error("the credential is not valid")]
    InvalidCredential,
    /// A JWT or OAuth2 token was refused; the reason is a fixed text (never token content).
    #[error("the token is not valid: {0}")]
    InvalidToken(&'static str),
    #[error("the token has expired")]
    TokenExpired,
    /// The JWT's issuer publishes its keys at a URL the edge could not fetch yet.
    #[error("the signing keys of the token's issuer are unavailable")]
    JwksUnavailable,
    /// The OAuth2 introspection endpoint is down or answered garbage: fail closed.
    #[error("the token cannot be checked now: the introspection endpoint is unavailable")]
    IntrospectionUnavailable,
    #[error("the app is not subscribed to this api")]
    NotSubscribed,
    #[error("the app's subscription to this api awaits approval")]
    SubscriptionPending,
    #[error("this api is retired")]
    ApiRetired,
    #[error("the client address is not allowed")]
    IpDenied,
    #[error("the origin, method or headers of this cors preflight are not allowed")]
    CorsDenied,
    #[error("the client stopped sending the request body")]
    BodyTimeout,
    #[error("the edge has no config yet")]
    NotReady,
    #[error("no healthy upstream target")]
    NoHealthyUpstream,
    /// The detail is logged, never sent to the client.
    #[error("upstream failed: {0}")]
    Upstream(String),
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the request body is larger than this api accepts")]
    BodyTooLarge,
    #[error("the request has too many or too large headers")]
    HeadersTooLarge,
    /// A rate limit refused the request; the reason is a fixed text.
    #[error("{0}")]
    RateLimited(&'static str),
    /// The AI gateway refused or failed the call (its status and code are its own).
    #[error("{0}")]
    Ai(Box<AiError>),
}

impl From<AiError> for ProxyError {
    fn from(e: AiError) -> Self {
        ProxyError::Ai(Box::new(e))
    }
}

/// How an error is answered and reported: one row per [`ProxyError`] variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    pub status: StatusCode,
    /// The stable machine-readable code (contract: clients match on it).
    pub code: &'static str,
    pub fault: Fault,
    /// Whether the same request could succeed if tried again (on another target or later).
    pub retryable: bool,
}

const fn class(status: StatusCode, code: &'static str, fault: Fault, retryable: bool) -> Class {
    Class {
        status,
        code,
        fault,
        retryable,
    }
}

impl ProxyError {
    /// The one table: status, code, whose fault, retryable.
    pub fn class(&self) -> Class {
        use Fault::{Client, Gateway, Upstream};
        use StatusCode as S;
        match self {
            ProxyError::BadRequest(_) => class(S::BAD_REQUEST, "bad_request", Client, false),
            ProxyError::NoRoute => class(S::NOT_FOUND, "no_route", Client, false),
            ProxyError::MissingCredential => class(S::UNAUTHORIZED, "missing_credential", Client, false),
            ProxyError::InvalidCredential => class(S::UNAUTHORIZED, "invalid_credential", Client, false),
            ProxyError::InvalidToken(_) => class(S::UNAUTHORIZED, "invalid_token", Client, false),
            ProxyError::TokenExpired => class(S::UNAUTHORIZED, "token_expired", Client, false),
            ProxyError::JwksUnavailable => class(S::UNAUTHORIZED, "jwks_unavailable", Upstream, true),
            ProxyError::IntrospectionUnavailable => class(
                S::SERVICE_UNAVAILABLE,
                "introspection_unavailable",
                Upstream,
                true,
            ),
            ProxyError::NotSubscribed => class(S::FORBIDDEN, "not_subscribed", Client, false),
            ProxyError::SubscriptionPending => class(S::FORBIDDEN, "subscription_pending", Client, false),
            ProxyError::ApiRetired => class(S::FORBIDDEN, "api_retired", Client, false),
            ProxyError::IpDenied => class(S::FORBIDDEN, "ip_denied", Client, false),
            ProxyError::CorsDenied => class(S::FORBIDDEN, "cors_denied", Client, false),
            ProxyError::BodyTimeout => class(S::REQUEST_TIMEOUT, "body_timeout", Client, false),
            ProxyError::NotReady => class(S::SERVICE_UNAVAILABLE, "not_ready", Gateway, true),
            ProxyError::NoHealthyUpstream => {
                class(S::SERVICE_UNAVAILABLE, "no_healthy_upstream", Gateway, true)
            }
            ProxyError::Upstream(_) => class(S::BAD_GATEWAY, "upstream_error", Upstream, true),
            ProxyError::UpstreamTimeout => class(S::GATEWAY_TIMEOUT, "upstream_timeout", Upstream, true),
            ProxyError::BodyTooLarge => class(S::PAYLOAD_TOO_LARGE, "body_too_large", Client, false),
            ProxyError::RateLimited(_) => class(S::TOO_MANY_REQUESTS, "rate_limited", Client, true),
            ProxyError::Ai(e) => class(
                e.status,
                e.code,
                e.fault,
                e.status == S::TOO_MANY_REQUESTS || e.status.is_server_error(),
            ),
            ProxyError::HeadersTooLarge => class(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                Client,
                false,
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.class().status
    }

    /// The stable machine-readable code (contract: clients match on it).
    pub fn code(&self) -> &'static str {
        self.class().code
    }

    pub fn fault(&self) -> Fault {
        self.class().fault
    }

    /// Whether the same request could succeed if tried again (on another target or later).
    pub fn retryable(&self) -> bool {
        self.class().retryable
    }

    /// The message shown to the client: upstream details stay in the logs.
    fn client_message(&self) -> String {
        match self {
            ProxyError::Upstream(_) => "the upstream failed to answer".to_string(),
            other => other.to_string(),
        }
    }

    /// The HTTP answer for this error (without `x-request-id`, which the caller adds).
    pub fn to_response(&self) -> Response<Body> {
        json_response(self.status(), &error_body(self.code(), &self.client_message()))
    }

    /// The answer on an AI service: OpenAI's error shape (`message`, `type`, `param`,
    /// `code`), so OpenAI SDKs raise the matching exception; `Retry-After` when known.
    pub fn to_openai_response(&self) -> Response<Body> {
        let status = self.status();
        let mut resp = json_response(status, &openai_body(status, self.code(), &self.client_message()));
        if let ProxyError::Ai(e) = self {
            if let Some(secs) = e.retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
        }
        resp
    }
}

/// An error of the AI gateway (`ai/`): its status and code are its own.
#[derive(Debug, Clone, PartialEq)]
pub struct AiError {
    pub status: StatusCode,
    /// The stable code (`model_not_found`, `token_limited`, `provider_error`...).
    pub code: &'static str,
    pub message: String,
    pub fault: Fault,
    /// Seconds, for `Retry-After` (a limit, a provider's 429).
    pub retry_after: Option<u64>,
}

impl AiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AiError {
        let fault = if status.is_server_error() {
            Fault::Upstream
        } else {
            Fault::Client
        };
        AiError {
            status,
            code,
            message: message.into(),
            fault,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> AiError {
        AiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn with_retry_after(mut self, secs: Option<u64>) -> AiError {
        self.retry_after = secs;
        self
    }
}

impl std::fmt::Display for AiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AiError {}

/// OpenAI's `error.type` for a status.
pub fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// `{"error": {"message", "type", "param": null, "code"}}`: OpenAI's error shape, answered on
/// AI services so that an OpenAI SDK raises the matching exception (`RateLimitError` for
/// 429, `NotFoundError` for an unknown model...).
pub fn openai_body(status: StatusCode, code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "error": {"message": message, "type": openai_type(status), "param": null, "code": code}
    })
}

/// `e` and every error under it, `: `-separated: the detail for a log line, each cause
/// once (an error that returns its cause from `source()` does not print it itself).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `{"error": {"code": ..., "message": ...}}`
pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": { "code": code, "message": message } })
}

/// A JSON answer with the right content type.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn errors_map_to_json_answers_without_upstream_details() {
        let err = ProxyError::Upstream("connect to 10.0.0.7:80 refused".into());
        let resp = err.to_response();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_error");
        assert!(!v["error"]["message"].as_str().unwrap().contains("10.0.0.7"));
        assert_eq!(ProxyError::NoRoute.status(), StatusCode::NOT_FOUND);
        assert_eq!(ProxyError::SubscriptionPending.code(), "subscription_pending");
        assert_eq!(ProxyError::UpstreamTimeout.fault(), Fault::Upstream);
    }

    #[test]
    fn the_table_is_consistent() {
        let all = [
            ProxyError::BadRequest("x"),
            ProxyError::NoRoute,
            ProxyError::MissingCredential,
            ProxyError::InvalidCredential,
            ProxyError::InvalidToken("x"),
            ProxyError::TokenExpired,
            ProxyError::JwksUnavailable,
            ProxyError::IntrospectionUnavailable,
            ProxyError::NotSubscribed,
            ProxyError::SubscriptionPending,
            ProxyError::ApiRetired,
            ProxyError::IpDenied,
            ProxyError::CorsDenied,
            ProxyError::BodyTimeout,
            ProxyError::NotReady,
            ProxyError::NoHealthyUpstream,
            ProxyError::Upstream("x".into()),
            ProxyError::UpstreamTimeout,
            ProxyError::BodyTooLarge,
            ProxyError::HeadersTooLarge,
        ];
        let mut codes = std::collections::HashSet::new();
        for e in &all {
            let c = e.class();
            assert!(codes.insert(c.code), "{} twice", c.code);
            // The client's own mistakes are 4xx and never worth retrying as they are.
            if c.fault == Fault::Client {
                assert!(c.status.is_client_error() && !c.retryable, "{e:?}");
            }
            if c.status.is_server_error() {
                assert_ne!(c.fault, Fault::Client, "{e:?}");
            }
        }
    }

    #[test]
    fn a_chain_prints_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = ProxyErrorSource(io);
        assert_eq!(chain(&outer), "cannot connect: refused");
    }

    #[derive(Debug)]
    struct ProxyErrorSource(std::io::Error);

    impl std::fmt::Display for ProxyErrorSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cannot connect")
        }
    }

    impl std::error::Error for ProxyErrorSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn statuses_map_to_openai_types() {
        assert_eq!(openai_type(StatusCode::TOO_MANY_REQUESTS), "rate_limit_error");
        assert_eq!(openai_type(StatusCode::UNAUTHORIZED), "authentication_error");
        assert_eq!(openai_type(StatusCode::BAD_GATEWAY), "api_error");
        let body = openai_body(StatusCode::NOT_FOUND, "model_not_found", "no such model");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "model_not_found");
        assert!(body["error"]["param"].is_null());
    }
}
