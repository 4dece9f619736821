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
pub mod guarded;
pub mod health;
pub mod target;
pub mod tunnel;

use std::collections::HashMap;
use std::time::Duration;

use tollgate_proto::model::{Upstream, UpstreamTls};

use balance::Balancer;
use client::HttpClient;
use endpoint::Registry;
use health::Checkers;
use target::Target;

/// Timeouts used when an upstream does not set its own.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Upstream clients by connect timeout and TLS options. Used only while compiling a config
/// (off the request path), by the single task that compiles.
#[derive(Default)]
pub struct Clients {
    by_settings: HashMap<(Duration, Option<UpstreamTls>), HttpClient>,
    /// Target state shared by successive snapshots.
    pub live: Registry,
    /// Health checkers shared by successive snapshots.
    pub checkers: Checkers,
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
            balancer: Balancer::compile(u, &targets, &client, &mut clients.live, &mut clients.checkers)?,
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
