//! Policies the edge applies to a service's traffic, compiled once per config:
//! `ip_filter` (403 `ip_denied`, see `ipfilter.rs`), `cors` (preflights and response
//! headers, see `cors.rs`), `rate_limit` and `quota` (429 `rate_limited`, see `ratelimit.rs`),
//! `headers` (request and response header transforms) and `request_size` (413 past a body
//! size). A service naming a policy kind this edge cannot
//! enforce does not compile, so the edge refuses (NACKs) that config and keeps enforcing the
//! old one rather than letting traffic through unchecked.
//!
//! Every `ip_filter` a service names must let the client in (each with its own trusted
//! proxies). A service may name one `cors` policy at most: two would contradict each other.
//!
//! Header transforms run in this order on each side: `remove`, then `rename`, then `add`
//! (which sets the header, replacing any value). Policies apply in the order the service
//! lists them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_proto::model::{HeaderOps, Policy, Service};

use crate::error::ProxyError;
use crate::phases::cors::CorsPolicy;
use crate::phases::ipfilter::IpRule;
use crate::phases::ratelimit::RateLimits;
use crate::upstream::dispatch::RewriteHeaders;

#[derive(Debug, Clone)]
enum HeaderOp {
    Remove(HeaderName),
    Rename(HeaderName, HeaderName),
    Set(HeaderName, HeaderValue),
}

/// A service's compiled policies.
#[derive(Debug, Default)]
pub struct Policies {
    /// Largest request body accepted (the smallest of the service's `request_size` policies).
    pub max_body: Option<u64>,
    /// The service's `cors` policy.
    pub cors: Option<Arc<CorsPolicy>>,
    /// The service's `rate_limit` policies.
    pub rate_limits: RateLimits,
    ip_filters: Vec<IpRule>,
    request: Vec<HeaderOp>,
    response: Vec<HeaderOp>,
}

fn name(n: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("invalid header name {n:?}"))
}

fn compile_ops(ops: &HeaderOps, out: &mut Vec<HeaderOp>) -> Result<(), String> {
    for n in &ops.remove {
        out.push(HeaderOp::Remove(name(n)?));
    }
    for (from, to) in &ops.rename {
        out.push(HeaderOp::Rename(name(from)?, name(to)?));
    }
    for (n, v) in &ops.add {
        let value = HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {n:?}"))?;
        out.push(HeaderOp::Set(name(n)?, value));
    }
    Ok(())
}

fn apply_ops(ops: &[HeaderOp], headers: &mut HeaderMap) {
    for op in ops {
        match op {
            HeaderOp::Remove(n) => {
                headers.remove(n);
            }
            HeaderOp::Rename(from, to) => {
                let values: Vec<HeaderValue> = headers.get_all(from).iter().cloned().collect();
                if !values.is_empty() {
                    headers.remove(from);
                    for v in values {
                        headers.append(to.clone(), v);
                    }
                }
            }
            HeaderOp::Set(n, v) => {
                headers.insert(n.clone(), v.clone());
            }
        }
    }
}

impl Policies {
    /// Compiles the policies `service` names; `policies` holds every policy by
    /// (tenant, name).
    pub fn compile(service: &Service, policies: &HashMap<(&str, &str), &Policy>) -> Result<Policies, String> {
        let mut out = Policies::default();
        for (i, pname) in service.policies.iter().enumerate() {
            let Some(p) = policies.get(&(service.tenant.as_str(), pname.as_str())) else {
                return Err(format!(
                    "policies[{i}]: references policy {}/{pname}, which does not exist",
                    service.tenant
                ));
            };
            if let Some(size) = &p.request_size {
                out.max_body = Some(out.max_body.map_or(size.max_bytes, |m| m.min(size.max_bytes)));
            }
            if let Some(h) = &p.headers {
                compile_ops(&h.request, &mut out.request).map_err(|m| format!("policies[{i}]: {m}"))?;
                compile_ops(&h.response, &mut out.response).map_err(|m| format!("policies[{i}]: {m}"))?;
            }
            if let Some(f) = &p.ip_filter {
                out.ip_filters
                    .push(IpRule::compile(f).map_err(|m| format!("policies[{i}]: {m}"))?);
            }
            if let Some(c) = &p.cors {
                if out.cors.is_some() {
                    return Err(format!(
                        "policies[{i}]: policy {}/{pname} is a second cors policy; a service takes one",
                        service.tenant
                    ));
                }
                out.cors = Some(Arc::new(
                    CorsPolicy::compile(c).map_err(|m| format!("policies[{i}]: {m}"))?,
                ));
            }
            if let Some(r) = &p.rate_limit {
                out.rate_limits
                    .add(&service.tenant, p, r)
                    .map_err(|m| format!("policies[{i}]: {m}"))?;
            }
            if let Some(q) = &p.quota {
                out.rate_limits
                    .add_quota(&service.tenant, p, q)
                    .map_err(|m| format!("policies[{i}]: {m}"))?;
            }
            if let Some(t) = &p.token_limit {
                if service.ai.is_none() {
                    return Err(format!(
                        "policies[{i}]: policy {}/{pname} is a token_limit, which applies to AI services only",
                        service.tenant
                    ));
                }
                out.rate_limits
                    .add_token_limit(&service.tenant, p, t)
                    .map_err(|m| format!("policies[{i}]: {m}"))?;
            }
            let unsupported: Vec<&str> = p
                .kinds_set()
                .into_iter()
                .filter(|k| {
                    !matches!(
                        *k,
                        "headers"
                            | "request_size"
                            | "ip_filter"
                            | "cors"
                            | "rate_limit"
                            | "quota"
                            | "token_limit"
                    )
                })
                .collect();
            if !unsupported.is_empty() {
                return Err(format!(
                    "policies[{i}]: policy {}/{pname} ({}) cannot be enforced by this edge version",
                    service.tenant,
                    unsupported.join(", ")
                ));
            }
        }
        Ok(out)
    }

    /// Refuses the request unless every `ip_filter` lets its client in.
    pub fn check_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ProxyError> {
        self.ip_filters.iter().try_for_each(|f| f.check(peer, headers))
    }

    /// Refuses a body announced bigger than allowed (bodies without a length are cut off
    /// while they stream: see the proxy's use of [`Policies::max_body`]).
    pub fn check_request_size(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        let (Some(max), Some(len)) = (self.max_body, headers.get(http::header::CONTENT_LENGTH)) else {
            return Ok(());
        };
        match len.to_str().ok().and_then(|l| l.trim().parse::<u64>().ok()) {
            Some(l) if l > max => Err(ProxyError::BodyTooLarge),
            _ => Ok(()),
        }
    }

    pub fn apply_request(&self, headers: &mut HeaderMap) {
        apply_ops(&self.request, headers);
    }

    pub fn apply_response(&self, headers: &mut HeaderMap) {
        apply_ops(&self.response, headers);
    }
}

impl RewriteHeaders for Policies {
    fn rewrite(&self, headers: &mut HeaderMap) {
        self.apply_request(headers);
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::Document;

    use super::*;

    fn compile(yaml: &str) -> Result<Policies, String> {
        let doc = Document::parse(yaml).unwrap();
        let policies: HashMap<(&str, &str), &Policy> = doc
            .policies
            .iter()
            .map(|p| ((p.tenant.as_str(), p.name.as_str()), p))
            .collect();
        Policies::compile(&doc.services[0], &policies)
    }

    const SVC: &str =
        "services: [{name: s, tenant: t, upstream: u, routes: [{paths: [/]}], policies: [a, b]}]\n";

    #[test]
    fn header_transforms_remove_rename_then_set() {
        let p = compile(&format!(
            "{SVC}policies: [{{name: a, tenant: t, headers: {{request: {{remove: [x-drop], rename: {{x-old: x-new}}, add: {{x-set: '1'}}}}, response: {{add: {{server: tollgate}}}}}}}},
                          {{name: b, tenant: t, request_size: {{max_bytes: 10}}}}]"
        ))
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-drop", HeaderValue::from_static("gone"));
        h.insert("x-old", HeaderValue::from_static("v"));
        h.insert("x-set", HeaderValue::from_static("client"));
        p.apply_request(&mut h);
        assert!(!h.contains_key("x-drop") && !h.contains_key("x-old"));
        assert_eq!(h["x-new"], "v");
        assert_eq!(h["x-set"], "1");
        let mut r = HeaderMap::new();
        p.apply_response(&mut r);
        assert_eq!(r["server"], "tollgate");
        assert_eq!(p.max_body, Some(10));
        let mut big = HeaderMap::new();
        big.insert("content-length", HeaderValue::from_static("11"));
        assert!(matches!(
            p.check_request_size(&big),
            Err(ProxyError::BodyTooLarge)
        ));
        big.insert("content-length", HeaderValue::from_static("10"));
        assert!(p.check_request_size(&big).is_ok());
    }

    #[test]
    fn token_limits_apply_to_ai_services_only() {
        let err = compile(&format!(
            "{SVC}policies: [{{name: a, tenant: t, token_limit: {{tokens_per_minute: 1}}}}, {{name: b, tenant: t, request_size: {{max_bytes: 1}}}}]"
        ))
        .unwrap_err();
        assert!(
            err.contains("policy t/a is a token_limit, which applies to AI services only"),
            "{err}"
        );
    }

    #[test]
    fn every_ip_filter_must_admit_the_client() {
        let p = compile(&format!(
            "{SVC}policies: [{{name: a, tenant: t, ip_filter: {{allow: [10.0.0.0/8]}}}}, {{name: b, tenant: t, ip_filter: {{deny: [10.6.0.0/16], trusted_proxies: [127.0.0.1]}}}}]"
        ))
        .unwrap();
        let peer = |s: &str| SocketAddr::new(s.parse().unwrap(), 1234);
        let none = HeaderMap::new();
        assert!(p.check_ip(peer("10.1.2.3"), &none).is_ok());
        assert!(matches!(
            p.check_ip(peer("10.6.1.1"), &none),
            Err(ProxyError::IpDenied)
        ));
        assert!(matches!(
            p.check_ip(peer("8.8.8.8"), &none),
            Err(ProxyError::IpDenied)
        ));
        // Policy b believes 127.0.0.1's X-Forwarded-For; policy a does not.
        let mut xff = HeaderMap::new();
        xff.insert("x-forwarded-for", HeaderValue::from_static("10.6.1.1"));
        assert!(matches!(
            p.check_ip(peer("127.0.0.1"), &xff),
            Err(ProxyError::IpDenied)
        ));
    }

    #[test]
    fn a_service_takes_one_cors_policy() {
        let one = compile(&format!(
            "{SVC}policies: [{{name: a, tenant: t, cors: {{allow_origins: ['https://a.test']}}}}, {{name: b, tenant: t, request_size: {{max_bytes: 1}}}}]"
        ))
        .unwrap();
        assert!(one.cors.is_some());
        let err = compile(&format!(
            "{SVC}policies: [{{name: a, tenant: t, cors: {{allow_origins: ['https://a.test']}}}}, {{name: b, tenant: t, cors: {{allow_origins: ['*']}}}}]"
        ))
        .unwrap_err();
        assert!(err.contains("second cors policy"), "{err}");
    }
}
