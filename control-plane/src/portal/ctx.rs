//! What every portal page works with: the logged-in user ([`Ctx`]), admin-API calls made as
//! that user's token (so every role check is the admin API's own), the parsed form, and the
//! responses with the portal's security headers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tonic::metadata::MetadataValue;

use crate::admin::AdminService;
use crate::node::Node;
use crate::portal::html::{self, Viewer, E};
use crate::portal::session::Session;

pub type Resp = Response<Full<Bytes>>;

/// No script runs on a portal page (there is none), styles are the page's own, forms post
/// back to the portal only, and no other site may frame it.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A response with the portal's headers: no caching (pages show keys once), no sniffing,
/// no referrer, and the content security policy.
pub fn respond(status: StatusCode, content_type: &str, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_str(content_type).expect("static content type"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    r
}

pub fn html_page(status: StatusCode, body: String) -> Resp {
    respond(status, "text/html; charset=utf-8", body)
}

/// A 303 to `location` (a portal path), with `cookies` set.
pub fn see_other(location: &str, cookies: &[String]) -> Resp {
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain", String::new());
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert("location", v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append("set-cookie", v);
        }
    }
    r
}

/// A form body or query string, by field (the first value of each).
pub struct Form(HashMap<String, String>);

impl Form {
    pub fn parse(raw: &[u8]) -> Form {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(raw) {
            map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Form(map)
    }

    /// The field, trimmed; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", |v| v.trim())
    }
}

/// The logged-in user of one request.
pub struct Ctx {
    pub node: Arc<Node>,
    pub admin: Arc<AdminService>,
    pub session_id: String,
    pub session: Session,
}

impl Ctx {
    /// An admin-API request carrying this user's token.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        as_token(&self.session.token, msg)
    }

    /// Whether the approval queue and the audit log are this user's to use.
    pub fn is_admin(&self) -> bool {
        matches!(self.session.role.as_str(), "cluster-admin" | "tenant-admin")
    }

    pub fn viewer(&self) -> Viewer<'_> {
        Viewer {
            label: &self.session.label,
            role: &self.session.role,
            tenant: self.session.tenant.as_deref(),
            csrf: &self.session.csrf,
            admin: self.is_admin(),
        }
    }

    /// A page of this user's.
    pub fn page(&self, title: &str, body: &str) -> Resp {
        html_page(StatusCode::OK, html::page(title, Some(&self.viewer()), body))
    }

    /// A refused or failed admin call, as a page with the admin API's own message.
    pub fn failed(&self, what: &str, s: &tonic::Status) -> Resp {
        let status = match s.code() {
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            tonic::Code::Aborted | tonic::Code::AlreadyExists => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = format!(
            "<div class=\"box error\"><p>{}: {}</p></div><p><a href=\"/portal\">Back to the catalog</a></p>",
            E(what),
            E(s.message())
        );
        html_page(status, html::page("Not done", Some(&self.viewer()), &body))
    }

    /// The tenant a form acts in: the user's own, or (for a token of no tenant) the form's.
    pub fn tenant_of<'a>(&'a self, form: &'a Form) -> &'a str {
        self.session
            .tenant
            .as_deref()
            .unwrap_or_else(|| form.get("tenant"))
    }
}

/// `msg` as an admin-API request with `token`.
pub fn as_token<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
        r.metadata_mut().insert("authorization", v);
    }
    r
}
