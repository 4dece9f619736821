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
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
    /// The detail is logged, never sent to the client.
    #[error("upstream failed: {0}")]
    Upstream(String),
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the request body is larger than this api accepts")]
    BodyTooLarge,
    #[error("the request has too many or too large headers")]
    HeadersTooLarge,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MissingCredential
            | ProxyError::InvalidCredential
            | ProxyError::InvalidToken(_)
            | ProxyError::TokenExpired
            | ProxyError::JwksUnavailable => StatusCode::UNAUTHORIZED,
            ProxyError::IntrospectionUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NotSubscribed
            | ProxyError::SubscriptionPending
            | ProxyError::ApiRetired
            | ProxyError::IpDenied
            | ProxyError::CorsDenied => StatusCode::FORBIDDEN,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NotReady | ProxyError::NoHealthyUpstream | ProxyError::NotImplemented(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// The stable machine-readable code (contract: clients match on it).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NoRoute => "no_route",
            ProxyError::MissingCredential => "missing_credential",
            ProxyError::InvalidCredential => "invalid_credential",
            ProxyError::InvalidToken(_) => "invalid_token",
            ProxyError::TokenExpired => "token_expired",
            ProxyError::JwksUnavailable => "jwks_unavailable",
            ProxyError::IntrospectionUnavailable => "introspection_unavailable",
            ProxyError::NotSubscribed => "not_subscribed",
            ProxyError::SubscriptionPending => "subscription_pending",
            ProxyError::ApiRetired => "api_retired",
            ProxyError::NotReady => "not_ready",
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::NotImplemented(_) => "not_implemented",
            ProxyError::Upstream(_) => "upstream_error",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::IpDenied => "ip_denied",
            ProxyError::CorsDenied => "cors_denied",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::HeadersTooLarge => "headers_too_large",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::NoRoute
            | ProxyError::MissingCredential
            | ProxyError::InvalidCredential
            | ProxyError::InvalidToken(_)
            | ProxyError::TokenExpired
            | ProxyError::NotSubscribed
            | ProxyError::SubscriptionPending
            | ProxyError::ApiRetired
            | ProxyError::IpDenied
            | ProxyError::CorsDenied
            | ProxyError::BodyTimeout
            | ProxyError::BodyTooLarge
            | ProxyError::HeadersTooLarge => Fault::Client,
            ProxyError::Upstream(_)
            | ProxyError::UpstreamTimeout
            | ProxyError::JwksUnavailable
            | ProxyError::IntrospectionUnavailable => Fault::Upstream,
            ProxyError::NotReady | ProxyError::NoHealthyUpstream | ProxyError::NotImplemented(_) => {
                Fault::Gateway
            }
        }
    }

    /// Whether the same request could succeed if tried again (on another target or later).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::Upstream(_)
                | ProxyError::UpstreamTimeout
                | ProxyError::JwksUnavailable
                | ProxyError::IntrospectionUnavailable
                | ProxyError::NotReady
                | ProxyError::NoHealthyUpstream
        )
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
}
