//! The developer portal, served under `/portal` on the control plane's HTTP port:
//! server-rendered pages with no script, no front-end build and no state of its own beyond
//! the sessions. Every read of a tenant's things and every write goes through the admin API
//! as the logged-in user's token (`ctx.rs`), so the portal grants exactly what the admin API
//! grants; the catalog alone reads the applied state, to show other tenants' `public`
//! services (`catalog.rs`).
//!
//! ```text
//!  GET  /portal/login                 form (token), with its own CSRF pair
//!  POST /portal/login                 token checked by the admin API ─> session cookie
//!  GET  /portal                       catalog (q, tenant, tag, state)
//!  GET  /portal/services/T/S          the service, its docs, its subscription form
//!  POST /portal/services/T/S/subscribe
//!  POST /portal/services/T/S/try      try-it: one request through the gateway (`tryit.rs`)
//!  POST /portal/services/T/S/state    lifecycle moves (tenant admins; publishing rules apply)
//!  GET  /portal/apps                  apps, keys, subscriptions; POST /portal/apps
//!  POST /portal/apps/T/A/keys         a key, shown once
//!  POST /portal/keys/T/ID/revoke
//!  GET  /portal/approvals             pending subscriptions (tenant admins)
//!  POST /portal/subscriptions/T/A:S/{approve,reject}
//!  GET  /portal/audit                 the audit log (admins)
//!  GET  /portal/usage                 usage charts of a service, an app or the tenant (`charts.rs`)
//!  POST /portal/logout
//! ```
//! Every POST but the login's needs the session's CSRF token in its `csrf` field; the
//! session cookie is `SameSite=Strict` besides.

pub mod apps;
pub mod catalog;
pub mod charts;
pub mod ctx;
pub mod html;
pub mod session;
pub mod tryit;

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tollgate_proto::keys::sha256_hex;
use tollgate_proto::v1::admin_server::Admin;
use tollgate_proto::v1::GetRequest;

use crate::admin::AdminService;
use crate::node::Node;
use ctx::{as_token, html_page, see_other, Ctx, Form, Resp};
use html::{csrf_field, page, E};
use session::{cookie, same, set_cookie, Sessions, COOKIE, IDLE, LOGIN_COOKIE};
pub use tryit::Gateway;

/// Largest form accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

pub struct Portal {
    node: Arc<Node>,
    admin: Arc<AdminService>,
    sessions: Sessions,
    /// Where try-it sends requests (`--portal-gateway`); none: try-it is off.
    gateway: Option<Gateway>,
}

impl Portal {
    pub fn new(node: Arc<Node>, gateway: Option<Gateway>) -> Self {
        Self {
            admin: Arc::new(AdminService::new(node.clone())),
            node,
            sessions: Sessions::default(),
            gateway,
        }
    }

    /// Answers a request whose path starts with `/portal`.
    pub async fn handle(&self, req: Request<Incoming>) -> Resp {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().trim_end_matches('/').to_string();
        let query = Form::parse(parts.uri.query().unwrap_or("").as_bytes());
        let cookies = parts.headers.get("cookie").and_then(|v| v.to_str().ok());
        let form = if parts.method == Method::POST {
            match Limited::new(body, MAX_FORM_BYTES).collect().await {
                Ok(b) => Form::parse(&b.to_bytes()),
                Err(_) => {
                    return html_page(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        page("Too large", None, "<p>The form is too large.</p>"),
                    )
                }
            }
        } else {
            Form::parse(b"")
        };
        let segments: Vec<String> = path.split('/').skip(2).map(decode_segment).collect();
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();

        match (&parts.method, seg.as_slice()) {
            (&Method::GET, ["login"]) => return login_form(None),
            (&Method::POST, ["login"]) => return self.login(cookie(cookies, LOGIN_COOKIE), &form).await,
            _ => {}
        }
        // Everything else needs a session.
        let Some((session_id, session)) =
            cookie(cookies, COOKIE).and_then(|id| Some((id.to_string(), self.sessions.get(id)?)))
        else {
            return see_other("/portal/login", &[]);
        };
        let ctx = Ctx {
            node: self.node.clone(),
            admin: self.admin.clone(),
            session_id,
            session,
            gateway: self.gateway.clone(),
        };
        if parts.method == Method::POST && !same(form.get("csrf"), &ctx.session.csrf) {
            return html_page(
                StatusCode::FORBIDDEN,
                page(
                    "Refused",
                    Some(&ctx.viewer()),
                    "<p>The form has no valid CSRF token: reload the page and try again.</p>",
                ),
            );
        }
        match (&parts.method, seg.as_slice()) {
            (&Method::GET, []) => catalog::catalog(&ctx, &query),
            (&Method::GET, ["services", t, s]) => catalog::service(&ctx, t, s).await,
            (&Method::POST, ["services", t, s, "subscribe"]) => catalog::subscribe(&ctx, t, s, &form).await,
            (&Method::POST, ["services", t, s, "try"]) => catalog::try_it(&ctx, t, s, &form).await,
            (&Method::POST, ["services", t, s, "state"]) => catalog::set_state(&ctx, t, s, &form).await,
            (&Method::GET, ["apps"]) => apps::apps(&ctx).await,
            (&Method::POST, ["apps"]) => apps::create_app(&ctx, &form).await,
            (&Method::POST, ["apps", t, a, "keys"]) => apps::create_key(&ctx, t, a, &form).await,
            (&Method::POST, ["keys", t, id, "revoke"]) => apps::revoke_key(&ctx, t, id).await,
            (&Method::GET, ["approvals"]) => apps::approvals(&ctx).await,
            (&Method::POST, ["subscriptions", t, id, d @ ("approve" | "reject")]) => {
                apps::decide(&ctx, t, id, d).await
            }
            (&Method::GET, ["audit"]) => apps::audit(&ctx).await,
            (&Method::GET, ["usage"]) => charts::usage(&ctx, &query).await,
            (&Method::POST, ["logout"]) => {
                self.sessions.end(&ctx.session_id);
                see_other(
                    "/portal/login",
                    &[set_cookie(COOKIE, "", std::time::Duration::ZERO)],
                )
            }
            _ => {
                let mut r = ctx.page("Not found", "<p>There is no such page.</p>");
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        }
    }

    /// `POST /portal/login` (token, csrf): the token must be one the admin API accepts.
    async fn login(&self, pair: Option<&str>, form: &Form) -> Resp {
        if !pair.is_some_and(|c| same(c, form.get("csrf"))) {
            return login_form(Some("The login form expired: try again."));
        }
        let token = form.get("token");
        let probe = GetRequest {
            kind: "tenant".into(),
            tenant: String::new(),
            name: String::new(),
        };
        if token.is_empty() || self.admin.get(as_token(token, probe)).await.is_err() {
            return login_form(Some("That token is not valid here."));
        }
        let Some(t) = self
            .node
            .sm
            .read(|s| s.has_admin_token(&sha256_hex(token.as_bytes())).cloned())
        else {
            return login_form(Some("That token is not valid here."));
        };
        let label = if t.label.is_empty() {
            format!("token {}", t.id)
        } else {
            t.label.clone()
        };
        let Some((id, _)) = self.sessions.start(
            token.to_string(),
            t.role.as_str().to_string(),
            t.tenant.clone(),
            label,
        ) else {
            return login_form(Some("No session could be started: try again."));
        };
        see_other(
            "/portal",
            &[
                set_cookie(COOKIE, &id, IDLE),
                set_cookie(LOGIN_COOKIE, "", std::time::Duration::ZERO),
            ],
        )
    }
}

/// The login page, with a fresh CSRF pair (cookie and hidden field).
fn login_form(error: Option<&str>) -> Resp {
    let pair = crate::secrets::random_token("").unwrap_or_default();
    let mut body = String::new();
    if let Some(e) = error {
        body.push_str(&format!(
            "<div class=\"box error\" id=\"login-error\">{}</div>",
            E(e)
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/portal/login\" class=\"box\">{}\
         <p>Log in with a token from <code>tollgate token create</code>.</p>\
         <input type=\"password\" name=\"token\" placeholder=\"token\" autocomplete=\"off\" required size=\"60\"> \
         <button>Log in</button></form>",
        csrf_field(&pair)
    ));
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut r = html_page(status, page("Log in", None, &body));
    if let Ok(v) = http::HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &pair, IDLE)) {
        r.headers_mut().append("set-cookie", v);
    }
    r
}

/// Whether this request is the portal's.
pub fn is_portal(path: &str) -> bool {
    path == "/portal" || path.starts_with("/portal/")
}

/// A path segment, percent-decoded (a `+` stays a `+`).
fn decode_segment(s: &str) -> String {
    let field = format!("x={}", s.replace('+', "%2B"));
    url::form_urlencoded::parse(field.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
