//! The try-it console: a form on the service page that sends one real request through an edge
//! (the `--portal-gateway` URL, the address consumers call) with the user's own key, and shows
//! the answer.
//!
//! The portal never keeps the key: it comes with the form and goes out in the `apikey`
//! header only. The request can only go to the configured gateway, only to a path one of the
//! service's routes matches, and only with the method, the key, a content type and a body;
//! the answer is cut at [`MAX_ANSWER_BYTES`] and escaped like everything else on a page.

use std::fmt::Write;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tollgate_proto::model::Service;
use tollgate_proto::validate::{compile_route_regex, parse_path, PathMatch};

use crate::portal::html::{csrf_field, E, U};

/// Most of an answer shown.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Most of a request body sent.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Answer headers worth showing a developer.
const SHOWN_HEADERS: [&str; 9] = [
    "content-type",
    "x-request-id",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
    "deprecation",
    "sunset",
    "x-tollgate-model",
];

/// Where try-it sends requests: an edge's proxy listener, as `http://host:port`.
#[derive(Clone, Debug)]
pub struct Gateway {
    authority: String,
}

impl Gateway {
    /// Parses `--portal-gateway`: an `http://host:port` URL with no path beyond `/`.
    pub fn parse(raw: &str) -> Result<Gateway, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "{raw:?}: try-it speaks plain http to an edge's proxy listener (http://host:port)"
            ));
        }
        let host = url.host_str().ok_or_else(|| format!("{raw:?} has no host"))?;
        if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
            return Err(format!("{raw:?}: give only http://host:port"));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(Gateway {
            authority: format!("{host}:{port}"),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// The methods the try-it form offers for `svc`: those its routes name, or the common ones.
fn methods(svc: &Service) -> Vec<String> {
    let mut m: Vec<String> = svc
        .routes
        .iter()
        .flat_map(|r| r.methods.iter().map(|m| m.to_uppercase()))
        .collect();
    m.sort();
    m.dedup();
    if m.is_empty() || svc.routes.iter().any(|r| r.methods.is_empty()) {
        for c in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if !m.iter().any(|x| x == c) {
                m.push(c.into());
            }
        }
    }
    m
}

/// A path to start from: the first route's, as a concrete path (`/` for a regex).
fn example_path(svc: &Service) -> String {
    let first = svc.routes.first().and_then(|r| r.paths.first());
    match first.map(|p| parse_path(p)) {
        Some(Ok(PathMatch::Prefix(p) | PathMatch::Exact(p))) => p.to_string(),
        _ => "/".into(),
    }
}

/// Whether one of `svc`'s routes matches `path` (hosts and headers aside).
pub fn routed(svc: &Service, path: &str) -> bool {
    let path_only = path.split('?').next().unwrap_or(path);
    svc.routes
        .iter()
        .flat_map(|r| &r.paths)
        .any(|p| match parse_path(p) {
            Ok(PathMatch::Prefix(pre)) => path_only.starts_with(pre),
            Ok(PathMatch::Exact(e)) => path_only == e,
            Ok(PathMatch::Regex(re)) => compile_route_regex(re).is_ok_and(|r| r.is_match(path_only)),
            Err(_) => false,
        })
}

/// The try-it form of the service page.
pub fn form(svc: &Service, csrf: &str, gateway: Option<&Gateway>) -> String {
    let mut b = String::from("<div class=\"box\" id=\"try\"><h2>Try it</h2>");
    let Some(gw) = gateway else {
        b.push_str(
            "<p>Try-it needs the gateway's address: start the control plane with \
             <code>--portal-gateway http://EDGE:PORT</code>.</p></div>",
        );
        return b;
    };
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/portal/services/{}/{}/try\">{}\
         <p>Sends a real request to <code>{}</code> with your key.</p>\
         <select name=\"method\" id=\"try-method\">",
        U(&svc.tenant),
        U(&svc.name),
        csrf_field(csrf),
        E(&gw.url())
    );
    for m in methods(svc) {
        let _ = write!(b, "<option>{}</option>", E(&m));
    }
    let _ = write!(
        b,
        "</select> <input name=\"path\" id=\"try-path\" value=\"{}\" size=\"40\" required> \
         <input type=\"password\" name=\"key\" id=\"try-key\" placeholder=\"your API key\" autocomplete=\"off\" size=\"40\">\
         <p><textarea name=\"body\" id=\"try-body\" rows=\"4\" cols=\"80\" placeholder=\"request body (JSON), optional\"></textarea></p>\
         <button id=\"try-send\">Send</button></form></div>",
        E(&example_path(svc))
    );
    b
}

/// What came back from the gateway.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub truncated: bool,
}

/// Sends the request the try-it form describes. The caller checked the path is routed.
pub async fn send(gw: &Gateway, method: &str, path: &str, key: &str, body: &str) -> Result<Answer, String> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| "not a method".to_string())?;
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("the path must start with / and hold no spaces or control characters".into());
    }
    if key.bytes().any(|b| b.is_ascii_control()) {
        return Err("the key holds control characters".into());
    }
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", &gw.authority)
        .header("user-agent", "tollgate-portal-try-it");
    if !key.is_empty() {
        req = req.header("apikey", key);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("the request is not valid: {e}"))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&gw.authority)
            .await
            .map_err(|e| format!("the gateway {} cannot be reached: {e}", gw.url()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("the gateway refused the connection: {e}"))?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("the gateway did not answer: {e}"))?;
        let status = resp.status().as_u16();
        let headers = SHOWN_HEADERS
            .iter()
            .filter_map(|h| {
                let v = resp.headers().get(*h)?.to_str().ok()?;
                Some((h.to_string(), v.to_string()))
            })
            .collect();
        let mut body = Vec::new();
        let mut truncated = false;
        let mut incoming = resp.into_body();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| format!("the answer broke off: {e}"))?;
            if let Ok(data) = frame.into_data() {
                let room = MAX_ANSWER_BYTES - body.len();
                body.extend_from_slice(&data[..data.len().min(room)]);
                if data.len() > room {
                    truncated = true;
                    break;
                }
            }
        }
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            truncated,
        })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))?
}

/// The answer as HTML, with the curl command that sends the same request.
pub fn render(gw: &Gateway, method: &str, path: &str, body: &str, a: &Answer) -> String {
    let mut b = format!(
        "<div class=\"box\" id=\"try-answer\"><h2>Answer</h2><p><code>{} {}</code> → <strong id=\"try-status\">{}</strong></p><table>",
        E(method),
        E(path),
        a.status
    );
    for (k, v) in &a.headers {
        let _ = write!(b, "<tr><td><code>{}</code></td><td>{}</td></tr>", E(k), E(v));
    }
    let _ = write!(
        b,
        "</table><pre id=\"try-answer-body\">{}</pre>{}",
        E(&pretty(&a.body)),
        if a.truncated { "<p>(cut at 64 KiB)</p>" } else { "" }
    );
    let mut curl = format!("curl -i -X {method} -H \"apikey: $KEY\"");
    if !body.is_empty() {
        let _ = write!(
            curl,
            " -H 'content-type: application/json' --data '{}'",
            body.replace('\'', "'\\''")
        );
    }
    let _ = write!(curl, " '{}{}'", gw.url(), path.replace('\'', "%27"));
    let _ = write!(
        b,
        "<p>The same with curl:</p><pre id=\"try-curl\">{}</pre></div>",
        E(&curl)
    );
    b
}

/// A JSON answer indented for reading; anything else as it came.
fn pretty(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_string())
}

/// Bounds a form's body field for try-it.
pub fn body_field(body: &str) -> Result<&str, String> {
    if body.len() > MAX_BODY_BYTES {
        return Err(format!("the body is over {} KiB", MAX_BODY_BYTES / 1024));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(paths: &[&str]) -> Service {
        let list = paths
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let doc = format!("services: [{{name: s, tenant: t, routes: [{{paths: [{list}]}}]}}]");
        match tollgate_proto::Document::parse(&doc).unwrap().into_specs().pop() {
            Some(tollgate_proto::Spec::Service(s)) => s,
            _ => panic!("not a service"),
        }
    }

    #[test]
    fn only_paths_the_service_routes_are_sent() {
        let s = svc(&["/orders", "=/health", "~^/v[0-9]+/items$"]);
        assert!(routed(&s, "/orders/7?x=1"));
        assert!(routed(&s, "/health"));
        assert!(!routed(&s, "/health/x"));
        assert!(routed(&s, "/v2/items"));
        assert!(!routed(&s, "/admin"));
        assert_eq!(example_path(&s), "/orders");
    }

    #[test]
    fn the_gateway_is_a_plain_http_authority() {
        assert_eq!(
            Gateway::parse("http://127.0.0.1:8080").unwrap().url(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            Gateway::parse("http://gw.local/").unwrap().url(),
            "http://gw.local:80"
        );
        for bad in ["https://gw:443", "http://gw:1/path", "gw:1", "http://u:p@gw:1"] {
            assert!(Gateway::parse(bad).is_err(), "{bad}");
        }
    }
}
