//! Phase "route": which service a request goes to, by the snapshot's router (`router.rs`).
//! A CORS preflight is routed by the method it asks about, so the service that would get
//! that method answers it when it has a cors policy; otherwise OPTIONS routes as usual.

use http::{Method, Request};

use crate::error::ProxyError;
use crate::phases::cors::Preflight;
use crate::phases::ctx::{Matched, RequestCtx};
use crate::phases::router::{RequestInfo, Router};
use crate::phases::service::Routed;
use crate::upstream::forward::request_host;

/// Notes the matched service in `ctx.route`, or answers 404 `no_route`.
pub fn route<B>(
    ctx: &mut RequestCtx,
    router: &Router<Routed>,
    req: &Request<B>,
    preflight: Option<&Preflight>,
) -> Result<(), ProxyError> {
    let by = |method: &Method| {
        let info = RequestInfo {
            method,
            host: request_host(req),
            path: req.uri().path(),
            headers: req.headers(),
        };
        router.route(&info).map(|m| Matched {
            service: m.target.service.clone(),
            stats: m.target.stats.clone(),
            strip_len: m.strip_len,
        })
    };
    let matched = preflight
        .and_then(|p| by(&p.method))
        .filter(|m| m.service.policies.cors.is_some())
        .or_else(|| by(req.method()))
        .ok_or(ProxyError::NoRoute)?;
    ctx.route = Some(matched);
    Ok(())
}
