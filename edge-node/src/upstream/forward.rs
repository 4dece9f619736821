//! Proxy phase: turns the client's request into the upstream's (URI, forwarding headers,
//! hop-by-hop and credential headers removed), sends it with the upstream's timeouts, and
//! cleans the answer. Bodies stream both ways; nothing is buffered.
//!
//! `timeouts.connect` bounds the TCP connect; `timeouts.request` bounds the time until the
//! upstream's response headers arrive (the body then streams as long as it takes).
//!
//! Upgrades (WebSocket): an HTTP/1.1 request with `Connection: upgrade` keeps its `Upgrade`
//! header; when the upstream answers 101, `tunnel.rs` takes both connections over.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version};

use crate::body::{self, Body, ClientBody};
use crate::consumer::Consumer;
use crate::error::{self, ProxyError};
use crate::observe::trace::TRACEPARENT;
use crate::request_id;
use crate::upstream::client::{ClientError, Connection, UpstreamBody};
use crate::upstream::endpoint::Endpoint;
use crate::upstream::target::Target;
use crate::upstream::UpstreamPool;
use crate::wire;

/// Header names the edge writes on every forwarded request. Constants, because a name given
/// as `&str` is parsed and validated again on every use.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_CONSUMER_APP: HeaderName = HeaderName::from_static("x-consumer-app");
const X_CONSUMER_TENANT: HeaderName = HeaderName::from_static("x-consumer-tenant");

const CONSUMER_PREFIX: &str = "x-consumer-";

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus the
/// legacy ones proxies also drop.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    UPGRADE,
];

/// Which of [`HOP_BY_HOP`] `name` is, if any.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including those named in `Connection`. One pass over the
/// names finds which are present (usually none in requests, and just `Connection:
/// keep-alive` in answers, which costs one removal).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Headers `Connection` names, beyond the usual options that name none.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| wire::list(v.as_bytes()))
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Removes every `x-consumer-*` header: only the edge may set them.
fn remove_consumer_headers(headers: &mut HeaderMap) {
    let spoofed = |k: &HeaderName| k.as_str().starts_with(CONSUMER_PREFIX);
    if !headers.keys().any(spoofed) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|k| spoofed(k)).cloned().collect();
    for n in doomed {
        headers.remove(n);
    }
}

/// `X-Forwarded-For`: the client's list with `client` appended, or just `client`.
fn forwarded_for(previous: Option<&HeaderValue>, client: IpAddr) -> Option<HeaderValue> {
    let previous = previous
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty());
    let mut out = Vec::with_capacity(previous.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = previous {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    match client {
        // Written by hand: `Display` for addresses goes through the formatting machinery,
        // a measurable cost on every request.
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
}

/// What the proxy phase needs besides the request and its target: what earlier phases
/// learned about the client's request.
#[derive(Debug, Clone, Copy)]
pub struct Forward<'a> {
    /// How many leading bytes of the path `strip_prefix` drops.
    pub strip_len: Option<usize>,
    pub remote: SocketAddr,
    pub request_id: &'a HeaderValue,
    pub consumer: Option<&'a Consumer>,
    /// The protocol the client asked to upgrade to (`Upgrade` header), if any.
    pub upgrade: Option<&'a HeaderValue>,
    /// The client spoke TLS to the edge (the upstream hears `x-forwarded-proto: https`).
    pub client_tls: bool,
    /// The `traceparent` the upstream gets instead of the client's (the edge's span as parent).
    pub traceparent: Option<&'a HeaderValue>,
}

/// The `Upgrade` header of an HTTP/1.1 request that asks for a protocol switch.
pub fn upgrade_requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .any(|v| wire::has_token(v.as_bytes(), "upgrade"));
    wants.then(|| req.headers().get(UPGRADE).cloned()).flatten()
}

/// The client's host as it asked for it (`:authority` or `Host`).
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|v| v.to_str().ok()))
}

/// Builds the upstream request.
pub fn upstream_request<B: ClientBody>(
    req: Request<B>,
    target: &Target,
    f: &Forward<'_>,
) -> Result<Request<Body>, ProxyError> {
    let (mut parts, incoming) = req.into_parts();
    // The host the client asked for: `:authority` (h2, absolute form), else `Host`, taken
    // below without a copy.
    let original_authority = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let client_scheme = if f.client_tls { "https" } else { "http" };

    parts.uri = origin_form(&parts.uri, &target.base_path, f.strip_len)?;
    // Upstreams are spoken to in HTTP/1.1 whatever the client used.
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    remove_hop_by_hop(h);
    if let Some(protocol) = f.upgrade {
        h.insert(UPGRADE, protocol.clone());
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // The client sets Host from the URI, i.e. the target's authority.
    let host = h.remove(HOST);
    let original_host = original_authority.or(host);
    remove_consumer_headers(h);
    if let Some(c) = f.consumer {
        h.remove(&c.credential_header);
        if let (Ok(app), Ok(tenant)) = (HeaderValue::from_str(&c.app), HeaderValue::from_str(&c.tenant)) {
            h.insert(X_CONSUMER_APP, app);
            h.insert(X_CONSUMER_TENANT, tenant);
        }
    }
    if let Some(xff) = forwarded_for(h.get(X_FORWARDED_FOR), f.remote.ip()) {
        h.insert(X_FORWARDED_FOR, xff);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client_scheme));
    match original_host {
        Some(host) => h.insert(X_FORWARDED_HOST, host),
        None => h.remove(X_FORWARDED_HOST),
    };
    h.insert(request_id::HEADER, f.request_id.clone());
    if let Some(tp) = f.traceparent {
        h.insert(TRACEPARENT, tp.clone());
    }

    Ok(Request::from_parts(parts, body::stream(incoming)))
}

/// The request target sent upstream, in origin form (`/path?query`): the target's base path,
/// then the client's path less what `strip_prefix` drops, then the client's query.
fn origin_form(uri: &Uri, base_path: &str, strip_len: Option<usize>) -> Result<Uri, ProxyError> {
    let path = stripped_path(uri.path(), strip_len);
    if base_path.is_empty() && path.len() == uri.path().len() {
        // The client's own path and query, shared rather than copied.
        if let Some(pq) = uri.path_and_query() {
            return Ok(Uri::from(pq.clone()));
        }
    }
    let query = uri.query();
    let mut pq = String::with_capacity(base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    pq.push_str(base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    PathAndQuery::try_from(pq)
        .map(Uri::from)
        .map_err(|_| ProxyError::BadRequest("the request path cannot be forwarded"))
}

/// The path to send upstream once `strip_len` leading bytes are dropped (never empty).
pub fn stripped_path(path: &str, strip_len: Option<usize>) -> &str {
    match strip_len {
        Some(n) if n <= path.len() => match &path[n..] {
            "" => "/",
            rest => rest,
        },
        _ => path,
    }
}

/// Why sending a request upstream failed.
#[derive(Debug)]
pub struct SendError {
    pub error: ProxyError,
    /// No connection was made (connect error or connect timeout): the upstream surely saw
    /// nothing of the request.
    pub unsent: bool,
}

impl From<SendError> for ProxyError {
    fn from(e: SendError) -> Self {
        e.error
    }
}

/// Sends `req` to target `target` of the pool, bounded by the request timeout. With the
/// answer comes its connection, to give back once the answer's body has ended.
pub async fn send(
    pool: &UpstreamPool,
    target: &Target,
    endpoint: &Arc<Endpoint>,
    req: Request<Body>,
) -> Result<(Response<UpstreamBody>, Option<Connection>), SendError> {
    let sent = pool.client.send(&target.dest, endpoint.idle(), req);
    match tokio::time::timeout(pool.request_timeout, sent).await {
        Err(_) => Err(SendError {
            error: ProxyError::UpstreamTimeout,
            unsent: false,
        }),
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(SendError {
            error: classify(&e),
            unsent: matches!(e, ClientError::Connect(_)),
        }),
    }
}

fn classify(e: &ClientError) -> ProxyError {
    let mut timed_out = false;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyTooLarge;
        }
        if s.is::<crate::stall::BodyStalled>() {
            return ProxyError::BodyTimeout;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    match e {
        ClientError::Connect(_) if timed_out => ProxyError::UpstreamTimeout,
        _ => ProxyError::Upstream(error::chain(e)),
    }
}

/// The upstream's answer as sent to the client: hop-by-hop headers removed, body streamed.
pub fn downstream_response<B: ClientBody>(resp: Response<B>) -> Response<Body> {
    let (mut parts, incoming) = resp.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body::stream(incoming))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn consumer_headers_cannot_be_spoofed() {
        let mut h = HeaderMap::new();
        h.insert("x-consumer-app", HeaderValue::from_static("admin"));
        h.insert("X-Consumer-Tenant", HeaderValue::from_static("root"));
        h.insert("x-consumerish", HeaderValue::from_static("kept"));
        remove_consumer_headers(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = |prev: Option<&str>, client| {
            let prev = prev.map(|p| HeaderValue::from_str(p).unwrap());
            forwarded_for(prev.as_ref(), ip(client)).unwrap()
        };
        assert_eq!(xff(None, "127.0.0.1"), "127.0.0.1");
        assert_eq!(xff(None, "10.200.0.99"), "10.200.0.99");
        assert_eq!(xff(Some("  "), "255.255.255.255"), "255.255.255.255");
        assert_eq!(xff(Some(" 1.2.3.4 "), "0.0.0.0"), "1.2.3.4, 0.0.0.0");
        assert_eq!(
            xff(Some("1.2.3.4, 5.6.7.8"), "2001:db8::1"),
            "1.2.3.4, 5.6.7.8, 2001:db8::1"
        );
    }

    #[test]
    fn hop_by_hop_without_any_leaves_the_headers_alone() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("te-not", HeaderValue::from_static("1"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
    }
}
