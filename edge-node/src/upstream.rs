//! Compiled upstreams: parsed target URLs, the balancer, timeouts, and the HTTP client that
//! carries requests to them.
//!
//! Clients are pooled per connect timeout in [`Clients`], which outlives config snapshots, so
//! a config change does not drop warm keep-alive connections.

use std::collections::HashMap;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tollgate_proto::model::Upstream;

use crate::balance::WeightedRoundRobin;
use crate::body::Body;

/// Timeouts used when an upstream does not set its own.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The client used towards upstreams (HTTP/1.1 with a keep-alive pool).
pub type HttpClient = Client<HttpConnector, Body>;

/// Upstream clients by connect timeout. Used only while compiling a config (off the request
/// path), by the single task that compiles.
#[derive(Default)]
pub struct Clients {
    by_connect_timeout: HashMap<Duration, HttpClient>,
}

impl Clients {
    pub fn get(&mut self, connect_timeout: Duration) -> HttpClient {
        self.by_connect_timeout
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_nodelay(true);
                connector.enforce_http(false);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .build(connector)
            })
            .clone()
    }
}

/// One target of an upstream, split so that request URIs are built without parsing.
#[derive(Debug)]
pub struct Target {
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path of the target URL without a trailing `/` (often empty), prefixed to every
    /// forwarded path.
    pub base_path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("invalid target URL {url:?}: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("invalid target URL {url:?}: no scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!(
                "invalid target URL {url:?}: scheme must be http or https"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("invalid target URL {url:?}: no host"))?;
        if uri.query().is_some() {
            return Err(format!("invalid target URL {url:?}: a query is not allowed"));
        }
        Ok(Target {
            url: url.to_string(),
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// Whether the edge can reach this target yet (TLS towards upstreams comes later).
    pub fn is_supported(&self) -> bool {
        self.scheme == Scheme::HTTP
    }
}

/// A compiled upstream, shared by every service that names it.
pub struct UpstreamPool {
    pub tenant: String,
    pub name: String,
    pub targets: Vec<Target>,
    balancer: WeightedRoundRobin,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub client: HttpClient,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("tenant", &self.tenant)
            .field("name", &self.name)
            .field("targets", &self.targets)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamPool {
    /// Compiles an upstream; the error names the field that is wrong.
    pub fn compile(u: &Upstream, clients: &mut Clients) -> Result<UpstreamPool, String> {
        let mut targets = Vec::with_capacity(u.targets.len());
        for (i, t) in u.targets.iter().enumerate() {
            targets.push(Target::parse(&t.url).map_err(|e| format!("targets[{i}].url: {e}"))?);
        }
        let weights: Vec<u32> = u.targets.iter().map(|t| t.weight).collect();
        let (connect_timeout, request_timeout) = match &u.timeouts {
            Some(t) => (t.connect.0, t.request.0),
            None => (DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT),
        };
        Ok(UpstreamPool {
            tenant: u.tenant.clone(),
            name: u.name.clone(),
            targets,
            balancer: WeightedRoundRobin::new(&weights),
            connect_timeout,
            request_timeout,
            client: clients.get(connect_timeout),
        })
    }

    /// The next target by weighted round robin; `None` when no target has a weight.
    pub fn pick(&self) -> Option<&Target> {
        self.balancer.pick().map(|i| &self.targets[i])
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::model::Target as TargetSpec;

    use super::*;

    #[test]
    fn compiles_targets_and_default_timeouts() {
        let u = Upstream {
            name: "be".into(),
            tenant: "acme".into(),
            targets: vec![
                TargetSpec {
                    url: "http://127.0.0.1:9001/api/".into(),
                    weight: 1,
                },
                TargetSpec {
                    url: "http://127.0.0.1:9002".into(),
                    weight: 0,
                },
            ],
            balance: Default::default(),
            health: None,
            timeouts: None,
            retries: 0,
            hash_header: None,
            allow_internal_addresses: false,
            resource_version: None,
        };
        let pool = UpstreamPool::compile(&u, &mut Clients::default()).unwrap();
        assert_eq!(pool.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(pool.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let t = pool.pick().unwrap();
        assert_eq!(t.base_path, "/api");
        assert_eq!(t.authority.as_str(), "127.0.0.1:9001");
        assert!(t.is_supported());

        let mut bad = u.clone();
        bad.targets[1].url = "ftp://x".into();
        let err = UpstreamPool::compile(&bad, &mut Clients::default()).unwrap_err();
        assert!(err.starts_with("targets[1].url"), "{err}");
    }
}
