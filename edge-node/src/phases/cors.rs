//! Request phase "cors": a service's `cors` policy, compiled once per config.
//!
//! ```text
//!  OPTIONS + Origin + Access-Control-Request-Method (a preflight)
//!     ├─ origin, method and every requested header allowed ─> 204 from the edge
//!     │    (no credential needed, nothing sent upstream)
//!     └─ otherwise ─> 403 cors_denied, no CORS headers
//!  any other request ─> proceeds; its answer (the upstream's or an error) gets
//!     Vary: Origin, and for an allowed origin Access-Control-Allow-Origin (the origin, or
//!     `*` when allow_origins has `*` and credentials are off), -Allow-Credentials,
//!     -Expose-Headers. Access-Control-* headers from the upstream are dropped: the policy
//!     alone decides.
//! ```
//!
//! Origins compare as serialized origins (`scheme://host[:port]`, lowercase, default port
//! left out), so `https://App.example.com:443/` in the config is `https://app.example.com`.
//! Methods: `allow_methods`, `*` for any, or when empty the safelisted GET, HEAD, POST.
//! Requested headers: `allow_headers` (any case), `*` for any, plus the CORS-safelisted
//! `accept`, `accept-language`, `content-language` and `content-type`.

use std::collections::HashSet;
use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tollgate_proto::model::Cors;

use crate::body::{self, Body};
use crate::error::ProxyError;

/// Request headers a preflight may always ask for.
const SAFELISTED_HEADERS: [&str; 4] = ["accept", "accept-language", "content-language", "content-type"];
/// Methods allowed when the policy lists none.
const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

/// A compiled `cors` policy.
#[derive(Debug)]
pub struct CorsPolicy {
    any_origin: bool,
    origins: HashSet<String>,
    any_method: bool,
    methods: Vec<String>,
    any_header: bool,
    /// Lowercase.
    headers: HashSet<String>,
    credentials: bool,
    allow_methods: HeaderValue,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

/// A CORS preflight request, as the browser asked it.
#[derive(Debug)]
pub struct Preflight {
    origin: HeaderValue,
    /// `Access-Control-Request-Method`: routing uses it to find the service asked about.
    pub method: Method,
    headers: Option<HeaderValue>,
}

impl Preflight {
    /// The preflight in `req`: OPTIONS with `Origin` and a valid
    /// `Access-Control-Request-Method`.
    pub fn of<B>(req: &Request<B>) -> Option<Preflight> {
        if req.method() != Method::OPTIONS {
            return None;
        }
        let h = req.headers();
        let origin = h.get(ORIGIN)?.clone();
        let method = Method::from_bytes(h.get(ACCESS_CONTROL_REQUEST_METHOD)?.as_bytes()).ok()?;
        Some(Preflight {
            origin,
            method,
            headers: h.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
        })
    }
}

/// How to dress an answer for a request under a CORS policy.
#[derive(Debug)]
pub struct CorsReply {
    policy: Arc<CorsPolicy>,
    /// The request's origin, when the policy allows it.
    origin: Option<HeaderValue>,
}

/// The serialized origin of a configured `allow_origins` entry.
fn configured_origin(o: &str) -> Result<String, String> {
    let url = url::Url::parse(o).map_err(|e| format!("invalid origin {o:?}: {e}"))?;
    match url.origin() {
        u @ url::Origin::Tuple(..) => Ok(u.ascii_serialization()),
        url::Origin::Opaque(_) => Err(format!("invalid origin {o:?}")),
    }
}

fn list_value(items: &[String]) -> Result<HeaderValue, String> {
    HeaderValue::from_str(&items.join(", ")).map_err(|_| format!("invalid list {items:?}"))
}

impl CorsPolicy {
    pub fn compile(c: &Cors) -> Result<CorsPolicy, String> {
        let any_origin = c.allow_origins.iter().any(|o| o == "*");
        if any_origin && c.allow_credentials {
            return Err("cors: allow_credentials cannot be combined with allow_origins: [\"*\"]".into());
        }
        let origins = c
            .allow_origins
            .iter()
            .filter(|o| *o != "*")
            .map(|o| configured_origin(o).map_err(|m| format!("cors.allow_origins: {m}")))
            .collect::<Result<_, _>>()?;
        let any_method = c.allow_methods.iter().any(|m| m == "*");
        let methods: Vec<String> = if c.allow_methods.is_empty() {
            DEFAULT_METHODS.iter().map(|m| m.to_string()).collect()
        } else {
            c.allow_methods.iter().filter(|m| *m != "*").cloned().collect()
        };
        for m in &methods {
            Method::from_bytes(m.as_bytes())
                .map_err(|_| format!("cors.allow_methods: invalid method {m:?}"))?;
        }
        let expose = match c.expose_headers.is_empty() {
            true => None,
            false => Some(list_value(&c.expose_headers).map_err(|m| format!("cors.expose_headers: {m}"))?),
        };
        Ok(CorsPolicy {
            any_origin,
            origins,
            any_method,
            allow_methods: list_value(&methods).map_err(|m| format!("cors.allow_methods: {m}"))?,
            methods,
            any_header: c.allow_headers.iter().any(|h| h == "*"),
            headers: c.allow_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            credentials: c.allow_credentials,
            expose,
            max_age: c.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
        })
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        if self.any_origin {
            return true;
        }
        match origin.to_str() {
            Ok(o) => self.origins.contains(&o.to_ascii_lowercase()),
            Err(_) => false,
        }
    }

    fn method_allowed(&self, m: &Method) -> bool {
        self.any_method || self.methods.iter().any(|a| a.eq_ignore_ascii_case(m.as_str()))
    }

    fn header_allowed(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.any_header || self.headers.contains(&name) || SAFELISTED_HEADERS.contains(&name.as_str())
    }

    /// What `Access-Control-Allow-Origin` says for an allowed `origin`.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Answers a preflight: 204 with the grant, or 403 `cors_denied`.
    pub fn preflight(&self, p: &Preflight) -> Result<Response<Body>, ProxyError> {
        if !self.origin_allowed(&p.origin) || !self.method_allowed(&p.method) {
            return Err(ProxyError::CorsDenied);
        }
        if let Some(requested) = &p.headers {
            let requested = requested.to_str().map_err(|_| ProxyError::CorsDenied)?;
            let all = requested
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .all(|h| self.header_allowed(h));
            if !all {
                return Err(ProxyError::CorsDenied);
            }
        }
        let mut resp = Response::new(body::full(bytes::Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(&p.origin));
        if self.credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        let methods = match self.any_method {
            true => HeaderValue::from_str(p.method.as_str()).unwrap_or_else(|_| self.allow_methods.clone()),
            false => self.allow_methods.clone(),
        };
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
        if let Some(requested) = &p.headers {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
        }
        if let Some(age) = &self.max_age {
            h.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        h.insert(
            VARY,
            HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers"),
        );
        Ok(resp)
    }

    /// Decides for a request that is not a preflight.
    pub fn reply(self: &Arc<Self>, headers: &HeaderMap) -> CorsReply {
        CorsReply {
            policy: self.clone(),
            origin: headers.get(ORIGIN).filter(|o| self.origin_allowed(o)).cloned(),
        }
    }
}

/// Response headers only the policy may set.
const GRANT_HEADERS: [http::HeaderName; 6] = [
    ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_MAX_AGE,
];

impl CorsReply {
    /// Sets the answer's CORS headers (replacing any the upstream sent).
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &GRANT_HEADERS {
            h.remove(n);
        }
        let varies = h
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| matches!(t.trim(), "*") || t.trim().eq_ignore_ascii_case("origin"));
        if !varies {
            h.append(VARY, HeaderValue::from_static("origin"));
        }
        let Some(origin) = &self.origin else {
            return;
        };
        let p = &self.policy;
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, p.allow_origin(origin));
        if p.credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(expose) = &p.expose {
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::duration::HumanDuration;

    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> Arc<CorsPolicy> {
        Arc::new(
            CorsPolicy::compile(&Cors {
                allow_origins: origins.iter().map(|s| s.to_string()).collect(),
                allow_methods: vec!["GET".into(), "PUT".into()],
                allow_headers: vec!["X-Trace".into(), "authorization".into()],
                expose_headers: vec!["x-total".into(), "x-page".into()],
                allow_credentials: credentials,
                max_age: Some(HumanDuration::from_secs(600)),
            })
            .unwrap(),
        )
    }

    fn preflight(origin: &str, method: &str, headers: Option<&str>) -> Preflight {
        let mut b = Request::options("/x")
            .header("origin", origin)
            .header("access-control-request-method", method);
        if let Some(h) = headers {
            b = b.header("access-control-request-headers", h);
        }
        Preflight::of(&b.body(()).unwrap()).expect("a preflight")
    }

    #[test]
    fn only_options_with_origin_and_a_requested_method_is_a_preflight() {
        let is = |b: http::request::Builder| Preflight::of(&b.body(()).unwrap()).is_some();
        assert!(is(Request::options("/")
            .header("origin", "https://a.test")
            .header("access-control-request-method", "PUT")));
        assert!(!is(Request::options("/").header("origin", "https://a.test")));
        assert!(!is(
            Request::options("/").header("access-control-request-method", "PUT")
        ));
        assert!(!is(Request::get("/")
            .header("origin", "https://a.test")
            .header("access-control-request-method", "PUT")));
    }

    #[test]
    fn allowed_preflight_is_answered_with_the_grant() {
        let p = policy(&["https://App.example.com:443/"], true);
        let resp = p
            .preflight(&preflight(
                "https://app.example.com",
                "PUT",
                Some("x-trace, Content-Type"),
            ))
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "x-trace, Content-Type");
        assert_eq!(h["access-control-max-age"], "600");
        assert!(h["vary"].to_str().unwrap().contains("origin"));
    }

    #[test]
    fn preflight_refusals() {
        let p = policy(&["https://app.example.com"], false);
        for (origin, method, headers) in [
            ("https://evil.example.com", "GET", None),
            ("https://app.example.com.evil.test", "GET", None),
            ("http://app.example.com", "GET", None),
            ("null", "GET", None),
            ("https://app.example.com", "DELETE", None),
            ("https://app.example.com", "GET", Some("x-trace, x-secret")),
        ] {
            assert!(
                matches!(
                    p.preflight(&preflight(origin, method, headers)),
                    Err(ProxyError::CorsDenied)
                ),
                "{origin} {method} {headers:?}"
            );
        }
    }

    #[test]
    fn actual_requests_get_the_grant_only_for_allowed_origins() {
        let p = policy(&["https://app.example.com"], true);
        let mut req = HeaderMap::new();
        req.insert("origin", HeaderValue::from_static("https://app.example.com"));
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        h.insert("vary", HeaderValue::from_static("accept-encoding"));
        p.reply(&req).apply(&mut h);
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-total, x-page");
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["accept-encoding", "origin"]);

        // A disallowed origin: no CORS headers at all, even ones the upstream set.
        req.insert("origin", HeaderValue::from_static("https://evil.test"));
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
        p.reply(&req).apply(&mut h);
        assert!(!h.contains_key("access-control-allow-origin"));
        assert!(!h.contains_key("access-control-allow-credentials"));
        assert_eq!(h["vary"], "origin");
    }

    #[test]
    fn a_wildcard_origin_answers_star_without_credentials() {
        let p = policy(&["*"], false);
        let mut req = HeaderMap::new();
        req.insert("origin", HeaderValue::from_static("https://anyone.test"));
        let mut h = HeaderMap::new();
        p.reply(&req).apply(&mut h);
        assert_eq!(h["access-control-allow-origin"], "*");
        assert!(!h.contains_key("access-control-allow-credentials"));
        let resp = p
            .preflight(&preflight("https://anyone.test", "GET", None))
            .unwrap();
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert!(CorsPolicy::compile(&Cors {
            allow_origins: vec!["*".into()],
            allow_credentials: true,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn default_methods_are_the_safelisted_ones() {
        let p = CorsPolicy::compile(&Cors {
            allow_origins: vec!["https://a.test".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(p
            .preflight(&preflight("https://a.test", "POST", Some("content-type")))
            .is_ok());
        assert!(p.preflight(&preflight("https://a.test", "PUT", None)).is_err());
        assert!(p
            .preflight(&preflight("https://a.test", "GET", Some("authorization")))
            .is_err());
    }
}
