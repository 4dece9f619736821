//! The HTTP client towards the edge's partners that the config names by URL (identity
//! providers, AI providers), guarded against internal addresses.
//!
//! ```text
//!  url ──host is an IP?── internal (link-local, metadata) and not allowed ──> refused (compile)
//!   │
//!   └─ name ─> GuardedResolver: resolve, drop link-local/metadata addresses unless
//!              allow_internal_addresses ─> none left ──> refused (the call fails)
//!         ─> TCP (connect timeout) ─> http, or https verified against Mozilla's roots
//! ```
//!
//! The control plane refuses such URLs at apply time; the edge checks again where it
//! matters, when the name is resolved, so a DNS answer that changed since (or points at
//! `169.254.169.254` on purpose) cannot turn the edge into a metadata proxy. The address
//! checked is the address connected to. Redirects are never followed.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use tollgate_proto::validate::is_internal_address;
use tollgate_tls::provider;

use crate::upstream::connector::default_roots;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// What the edge sends as `User-Agent` to its partners.
pub const USER_AGENT: &str = "tollgate-edge";

/// Parses and checks a partner URL: http or https, a host, and (for an IP
/// literal, which is never resolved) not an internal address unless allowed.
pub fn parse_url(url: &str, allow_internal: bool) -> Result<Uri, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("invalid URL {url:?}: scheme must be http or https"));
    }
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
        None => return Err(format!("invalid URL {url:?}: no host")),
    };
    if !allow_internal && ip.is_some_and(is_internal_address) {
        return Err(format!(
            "URL {url:?} points at a link-local or metadata address; set allow_internal_addresses: true if this is intended"
        ));
    }
    url.parse::<Uri>()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))
}

/// Resolves names with the system resolver and drops link-local and metadata addresses
/// (unless allowed); a name left with no address fails to resolve.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    allow_internal: bool,
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_internal = self.allow_internal;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = filter_addresses(resolved, allow_internal);
            if allowed.is_empty() {
                return Err(std::io::Error::other(format!(
                    "{host} resolves to no address the edge may connect to (link-local and metadata addresses are refused unless allow_internal_addresses is set)"
                )));
            }
            Ok(allowed.into_iter())
        })
    }
}

fn filter_addresses(addrs: Vec<SocketAddr>, allow_internal: bool) -> Vec<SocketAddr> {
    addrs
        .into_iter()
        .filter(|a| allow_internal || !is_internal_address(a.ip()))
        .collect()
}

/// A keep-alive HTTP/1.1 client (http and https) whose connections pass the guard.
pub type GuardedClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// A new [`GuardedClient`]; `allow_internal` lets it reach link-local and metadata addresses.
pub fn client(allow_internal: bool) -> GuardedClient {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_internal });
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    http.enforce_http(false);
    let tls = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(default_roots().clone())
        .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_aimed_at_internal_addresses_are_refused_unless_allowed() {
        assert!(parse_url("https://idp.example.com/jwks", false).is_ok());
        assert!(parse_url("http://127.0.0.1:9000/jwks", false).is_ok());
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/jwks",
            "http://[fd00:ec2::254]/x",
            "http://0.0.0.0/x",
        ] {
            let err = parse_url(bad, false).unwrap_err();
            assert!(err.contains("link-local or metadata"), "{bad}: {err}");
            assert!(parse_url(bad, true).is_ok(), "{bad}");
        }
        assert!(parse_url("ftp://idp/jwks", false).is_err());
    }

    #[test]
    fn resolved_internal_addresses_are_dropped() {
        let addrs: Vec<SocketAddr> = ["169.254.169.254:80", "10.0.0.1:80", "[fe80::1]:80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            filter_addresses(addrs.clone(), false),
            vec!["10.0.0.1:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(filter_addresses(addrs, true).len(), 3);
    }

    #[tokio::test]
    async fn names_are_resolved_through_the_guard() {
        let mut r = GuardedResolver {
            allow_internal: false,
        };
        // `localhost` resolves to loopback, which is allowed.
        let addrs: Vec<SocketAddr> = tower_service::Service::call(&mut r, "localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
