//! Compiled upstreams: parsed target URLs, the balancer, timeouts, retries, and the HTTP
//! client that carries requests to them.
//!
//! Clients (`client.rs`; connections: `connector.rs`) are shared per connect timeout and TLS
//! options in [`Clients`], which outlives config snapshots. It also holds the targets' live
//! state, their idle keep-alive connections among it, and health checkers ([`Registry`]), so
//! a config change keeps warm connections, counts and verdicts.


pub mod balance;
pub mod client;
pub mod connector;
pub mod dispatch;
pub mod endpoint;
pub mod forward;
pub mod health;

use std::collections::HashMap;
use std::time::Duration;

use http::uri::Scheme;
use http::HeaderValue;
use tollgate_proto::model::{Upstream, UpstreamTls};

use balance::Balancer;
use client::{Destination, HttpClient};
use endpoint::Registry;

/// Timeouts used when an upstream does not set its own.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Upstream clients by connect timeout and TLS options. Used only while compiling a config
/// (off the request path), by the single task that compiles.
#[derive(Default)]
pub struct Clients {
    by_settings: HashMap<(Duration, Option<UpstreamTls>), HttpClient>,
    /// Target state and health checkers shared by successive snapshots.
    pub live: Registry,
    /// Identity-provider clients, JWKS and introspection caches shared by successive
    /// snapshots.
    pub idp: crate::phases::auth::idp::Idp,
}

impl Clients {
    /// The client for `connect_timeout` and the default TLS options (tests).
    #[cfg(test)]
    pub fn get(&mut self, connect_timeout: Duration) -> HttpClient {
        self.with_tls(connect_timeout, None)
            .expect("the default TLS options always build")
    }

    /// The client for `connect_timeout` and `tls` (for https targets); the error names the
    /// field that is wrong.
    pub fn with_tls(
        &mut self,
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
    ) -> Result<HttpClient, String> {
        let settings = (connect_timeout, tls.cloned());
        if let Some(client) = self.by_settings.get(&settings) {
            return Ok(client.clone());
        }
        let client = HttpClient::new(connector::connector(connect_timeout, tls)?);
        self.by_settings.insert(settings, client.clone());
        Ok(client)
    }
}

/// One target of an upstream, split so that request URIs are built without parsing.
#[derive(Debug)]
pub struct Target {
    pub url: String,
    /// Path of the target URL without a trailing `/` (often empty), prefixed to every
    /// forwarded path.
    pub base_path: String,
    /// What the client connects to, and the `Host` it sends.
    pub dest: Destination,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
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
        let dest = Destination {
            connect_uri: http::Uri::builder()
                .scheme(scheme)
                .authority(authority.clone())
                .path_and_query("/")
                .build()
                .map_err(|e| format!("invalid target URL {url:?}: {e}"))?,
            host: HeaderValue::from_str(authority.as_str())
                .map_err(|e| format!("invalid target URL {url:?}: {e}"))?,
        };
        Ok(Target {
            url: url.to_string(),
            base_path: uri.path().trim_end_matches('/').to_string(),
            dest,
        })
    }
}

/// A compiled upstream, shared by every service that names it.
pub struct UpstreamPool {
    pub tenant: String,
    pub name: String,
    pub targets: Vec<Target>,
    /// Picks targets; holds their live state (index-aligned with `targets`).
    pub balancer: Balancer,
    /// How many other targets a request may be retried on (see `dispatch`).
    pub retries: u32,
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
        let (connect_timeout, request_timeout) = match &u.timeouts {
            Some(t) => (t.connect.0, t.request.0),
            None => (DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT),
        };
        let client = clients.with_tls(connect_timeout, u.tls.as_ref())?;
        Ok(UpstreamPool {
            tenant: u.tenant.clone(),
            name: u.name.clone(),
            balancer: Balancer::compile(u, &targets, &client, &mut clients.live)?,
            targets,
            retries: u.retries,
            connect_timeout,
            request_timeout,
            client,
        })
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
            tls: None,
            resource_version: None,
        };
        let pool = UpstreamPool::compile(&u, &mut Clients::default()).unwrap();
        assert_eq!(pool.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(pool.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let t = &pool.targets[pool.balancer.pick(0, &[]).unwrap()];
        assert_eq!(t.base_path, "/api");
        assert_eq!(t.dest.host, "127.0.0.1:9001");
        assert_eq!(t.dest.connect_uri, "http://127.0.0.1:9001/");
        assert_eq!(t.dest.connect_uri.scheme_str(), Some("http"));

        let mut bad = u.clone();
        bad.targets[1].url = "ftp://x".into();
        let err = UpstreamPool::compile(&bad, &mut Clients::default()).unwrap_err();
        assert!(err.starts_with("targets[1].url"), "{err}");
    }
}
