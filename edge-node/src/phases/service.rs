//! A service as the request path needs it: compiled from its resource with the snapshot,
//! matched by the router, read by every phase after routing.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use tollgate_proto::model::{Approval, AuthKind, Policy, ResourceKey, Service, ServiceState};

use crate::ai::provider::Provider;
use crate::ai::AiService;
use crate::observe::metrics::RouteStats;
use crate::phases::policy::Policies;
use crate::upstream::UpstreamPool;

/// Where a service's traffic goes.
#[derive(Debug)]
pub enum Backend {
    Upstream(Arc<UpstreamPool>),
    /// An AI service: the unified OpenAI-compatible surface, or a prompt API.
    Ai(Arc<AiService>),
}

/// What a route leads to: its service, and the route's request metrics.
#[derive(Debug, Clone)]
pub struct Routed {
    pub service: Arc<ServiceEntry>,
    pub stats: Arc<RouteStats>,
}

/// A service as the request path needs it.
#[derive(Debug)]
pub struct ServiceEntry {
    pub tenant: String,
    pub name: String,
    pub state: ServiceState,
    pub approval: Approval,
    /// `Sunset` header value (an HTTP date) when the service names one.
    pub sunset: Option<HeaderValue>,
    /// Accepted credential kinds; empty means open.
    pub auth: Vec<AuthKind>,
    pub backend: Backend,
    pub policies: Policies,
}

impl ServiceEntry {
    /// Compiles `s` against the config's upstreams and policies; the error names the field
    /// that is wrong.
    pub fn compile(
        s: &Service,
        upstreams: &HashMap<(&str, &str), Arc<UpstreamPool>>,
        providers: &HashMap<(&str, &str), Arc<Provider>>,
        policies: &HashMap<(&str, &str), &Policy>,
    ) -> Result<ServiceEntry, String> {
        let backend = match (&s.upstream, &s.ai) {
            (Some(u), _) => match upstreams.get(&(s.tenant.as_str(), u.as_str())) {
                Some(pool) => Backend::Upstream(pool.clone()),
                None => {
                    let missing = ResourceKey::new(tollgate_proto::Kind::Upstream, &s.tenant, u);
                    return Err(format!(
                        "upstream: references {missing}, which does not exist or is invalid"
                    ));
                }
            },
            (None, Some(ai)) => Backend::Ai(Arc::new(AiService::compile(&s.tenant, ai, providers)?)),
            (None, None) => return Err("upstream: a service needs an upstream (or ai)".into()),
        };
        let sunset = match &s.sunset {
            Some(t) => {
                let date = http_date(t).ok_or_else(|| format!("sunset: invalid time {t:?}"))?;
                Some(HeaderValue::from_str(&date).expect("http dates are valid header values"))
            }
            None => None,
        };
        Ok(ServiceEntry {
            tenant: s.tenant.clone(),
            name: s.name.clone(),
            state: s.state,
            approval: s.approval,
            sunset,
            auth: s.auth.clone(),
            backend,
            policies: Policies::compile(s, policies)?,
        })
    }
}

/// An RFC 3339 time (`2027-06-30T00:00:00Z`) as an HTTP date (IMF-fixdate), for `Sunset`.
fn http_date(rfc3339: &str) -> Option<String> {
    humantime::parse_rfc3339_weak(rfc3339)
        .ok()
        .map(httpdate::fmt_http_date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sunset_times_become_http_dates() {
        assert_eq!(
            http_date("2027-06-30T00:00:00Z").as_deref(),
            Some("Wed, 30 Jun 2027 00:00:00 GMT")
        );
        assert_eq!(
            http_date("2024-02-29T23:59:59Z").as_deref(),
            Some("Thu, 29 Feb 2024 23:59:59 GMT")
        );
        assert_eq!(
            http_date("1994-11-06T08:49:37Z").as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        assert_eq!(http_date("next tuesday"), None);
    }
}
