//! One target of an upstream, parsed once so that request URIs are built without parsing.

use http::uri::Scheme;
use http::HeaderValue;

use crate::upstream::client::Destination;

/// One target of an upstream, split so that request URIs are built without parsing.
#[derive(Debug)]
pub struct Target {
    pub url: String,
    /// `scheme://host:port`, without user info or path: how records and logs name it.
    pub public: std::sync::Arc<str>,
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
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query("/")
                .build()
                .map_err(|e| format!("invalid target URL {url:?}: {e}"))?,
            host: HeaderValue::from_str(authority.as_str())
                .map_err(|e| format!("invalid target URL {url:?}: {e}"))?,
        };
        let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
        Ok(Target {
            url: url.to_string(),
            public: format!("{scheme}://{host_port}").into(),
            base_path: uri.path().trim_end_matches('/').to_string(),
            dest,
        })
    }
}
