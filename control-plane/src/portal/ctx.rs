//! What every portal page works with: the logged-in user ([`Ctx`]), admin-API calls made as
//! that user's token (so every role check is the admin API's own), the parsed form, and the
//! responses with the portal's security headers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tollgate_proto::model::SubscriptionStatus;
use tollgate_proto::v1::admin_server::Admin;
use tollgate_proto::v1::{ApplyRequest, GetRequest};
use tollgate_proto::{Kind, Spec};
use tonic::metadata::MetadataValue;

use crate::admin::AdminService;
use crate::node::Node;
use crate::portal::html::{self, Viewer, E};
use crate::portal::session::Session;
use crate::portal::tryit::Gateway;

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
    pub gateway: Option<Gateway>,
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

    /// The resources of `kind` in `tenant` (empty: every tenant the token may read) that
    /// the user's token may read, decoded and picked by `decode`.
    pub async fn list<T>(
        &self,
        kind: Kind,
        tenant: &str,
        decode: impl Fn(Spec) -> Option<T>,
    ) -> Result<Vec<T>, tonic::Status> {
        let r = self
            .admin
            .get(self.req(GetRequest {
                kind: kind.as_str().into(),
                tenant: tenant.into(),
                name: String::new(),
            }))
            .await?
            .into_inner();
        Ok(r.resources
            .iter()
            .filter_map(|res| Spec::from_json(kind, &res.spec_json).ok())
            .filter_map(decode)
            .collect())
    }

    /// Applies `doc` (a declarative document as JSON) as the user's token.
    pub async fn apply(&self, doc: serde_json::Value) -> Result<(), tonic::Status> {
        self.admin
            .apply(self.req(ApplyRequest {
                document: doc.to_string(),
                prune: false,
            }))
            .await
            .map(drop)
    }

    /// After a form's admin call: back to `location` when it was done, else the failure.
    pub fn done<T>(&self, r: Result<T, tonic::Status>, location: &str, failed: &str) -> Resp {
        match r {
            Ok(_) => see_other(location, &[]),
            Err(s) => self.failed(failed, &s),
        }
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

/// A subscription's status as the pages name it (no status yet: pending).
pub fn subscription_status(s: Option<SubscriptionStatus>) -> &'static str {
    match s {
        None | Some(SubscriptionStatus::Pending) => "pending",
        Some(SubscriptionStatus::Approved) => "approved",
        Some(SubscriptionStatus::Rejected) => "rejected",
    }
}
