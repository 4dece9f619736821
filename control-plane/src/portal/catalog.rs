//! The catalog and the service pages: which services a user may see (by `visibility`,
//! lifecycle state and role), their docs rendered from the OpenAPI document, and the
//! subscription form.

use std::fmt::Write;

use http::StatusCode;
use serde_json::Value;
use tollgate_proto::model::{Service, ServiceState, Subscription, Visibility};
use tollgate_proto::v1::admin_server::Admin;
use tollgate_proto::v1::ApplyRequest;
use tollgate_proto::{Kind, Spec};

use crate::portal::ctx::{see_other, subscription_status, Ctx, Form, Resp};
use crate::portal::html::{csrf_field, E, U};
use crate::portal::session::Session;
use crate::portal::tryit::{self, routed};

/// Whether `s` may see `svc` in the catalog. Admins of its tenant (and cluster admins, and
/// viewers of every tenant) see it in any state; everyone else sees only published and
/// deprecated services: `public` ones of any tenant, `tenant` ones of their own, and never a
/// `private` one.
pub fn visible(s: &Session, svc: &Service) -> bool {
    let own = s.tenant.as_deref();
    let reads_all = s.role == "cluster-admin" || (s.role == "viewer" && own.is_none());
    if reads_all || (s.role == "tenant-admin" && own == Some(svc.tenant.as_str())) {
        return true;
    }
    if !matches!(svc.state, ServiceState::Published | ServiceState::Deprecated) {
        return false;
    }
    match svc.visibility {
        Visibility::Public => true,
        Visibility::Tenant => own == Some(svc.tenant.as_str()),
        Visibility::Private => false,
    }
}

/// The services `s` may see, from this node's applied state.
fn services(ctx: &Ctx) -> Vec<Service> {
    ctx.node.sm.read(|st| {
        st.resources
            .iter()
            .filter(|(k, _)| k.kind == Kind::Service)
            .filter_map(|(_, stored)| match &stored.spec {
                Spec::Service(svc) if visible(&ctx.session, svc) => Some(svc.clone()),
                _ => None,
            })
            .collect()
    })
}

pub fn state_name(s: ServiceState) -> &'static str {
    match s {
        ServiceState::Draft => "draft",
        ServiceState::Published => "published",
        ServiceState::Deprecated => "deprecated",
        ServiceState::Retired => "retired",
    }
}

fn badge(svc: &Service) -> String {
    let state = state_name(svc.state);
    let mut out = format!("<span class=\"badge {state}\">{state}</span>");
    if let (ServiceState::Deprecated, Some(sunset)) = (svc.state, &svc.sunset) {
        let _ = write!(
            out,
            " <span class=\"badge deprecated\">sunset {}</span>",
            E(sunset)
        );
    }
    out
}

/// `GET /portal?q=&tenant=&tag=&state=`
pub fn catalog(ctx: &Ctx, query: &Form) -> Resp {
    let (q, tenant, tag, state) = (
        query.get("q").to_lowercase(),
        query.get("tenant"),
        query.get("tag"),
        query.get("state"),
    );
    let all = services(ctx);
    let mut tenants: Vec<&str> = all.iter().map(|s| s.tenant.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let mut tags: Vec<&str> = all
        .iter()
        .flat_map(|s| s.tags.iter().map(String::as_str))
        .collect();
    tags.sort_unstable();
    tags.dedup();
    let shown: Vec<&Service> = all
        .iter()
        .filter(|s| tenant.is_empty() || s.tenant == tenant)
        .filter(|s| tag.is_empty() || s.tags.iter().any(|t| t == tag))
        .filter(|s| state.is_empty() || state_name(s.state) == state)
        .filter(|s| {
            q.is_empty()
                || s.name.to_lowercase().contains(&q)
                || s.tags.iter().any(|t| t.contains(&q))
                || s.description
                    .as_deref()
                    .is_some_and(|d| d.to_lowercase().contains(&q))
        })
        .collect();
    let mut b = String::new();
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/portal\" class=\"box\">\
         <input name=\"q\" placeholder=\"Search services\" value=\"{}\"> ",
        E(query.get("q"))
    );
    let select = |b: &mut String, name: &str, any: &str, options: &[&str], chosen: &str| {
        let _ = write!(b, "<select name=\"{name}\"><option value=\"\">{any}</option>");
        for o in options {
            let sel = if *o == chosen { " selected" } else { "" };
            let _ = write!(b, "<option value=\"{}\"{sel}>{}</option>", E(o), E(o));
        }
        b.push_str("</select> ");
    };
    select(&mut b, "tenant", "every tenant", &tenants, tenant);
    select(&mut b, "tag", "any tag", &tags, tag);
    select(
        &mut b,
        "state",
        "any state",
        &["draft", "published", "deprecated", "retired"],
        state,
    );
    b.push_str("<button>Search</button></form>");
    if shown.is_empty() {
        b.push_str("<p>No service matches.</p>");
    } else {
        b.push_str("<table id=\"catalog\"><tr><th>Service</th><th>Tenant</th><th>Version</th><th>State</th><th>Tags</th><th>Description</th></tr>");
        for s in shown {
            let _ = write!(
                b,
                "<tr><td><a href=\"/portal/services/{}/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                U(&s.tenant),
                U(&s.name),
                E(&s.name),
                E(&s.tenant),
                E(s.version.as_deref().unwrap_or("")),
                badge(s),
                tag_list(s),
                E(s.description.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</table>");
    }
    ctx.page("Catalog", &b)
}

/// A service's tags, each a link to the catalog filtered by it.
fn tag_list(s: &Service) -> String {
    s.tags
        .iter()
        .map(|t| {
            format!(
                "<a class=\"badge tag\" href=\"/portal?tag={}\">{}</a>",
                U(t),
                E(t)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The name the versions of one API share: the service name without a `-v2` suffix.
fn family(name: &str) -> &str {
    match name.rsplit_once("-v") {
        Some((base, n)) if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// The versions of `svc`'s API that the user may see, side by side (`svc` among them).
fn versions(ctx: &Ctx, svc: &Service) -> String {
    let mut all: Vec<Service> = services(ctx)
        .into_iter()
        .filter(|s| s.tenant == svc.tenant && family(&s.name) == family(&svc.name))
        .collect();
    if all.len() < 2 {
        return String::new();
    }
    all.sort_by(|a, b| a.version.cmp(&b.version).then_with(|| a.name.cmp(&b.name)));
    let mut b = String::from(
        "<div class=\"box\" id=\"versions\"><h2>Versions</h2><table><tr><th>Version</th><th>Service</th><th>State</th><th>Routes</th><th>Description</th></tr>",
    );
    for s in &all {
        let routes: Vec<&str> = s
            .routes
            .iter()
            .flat_map(|r| r.paths.iter().map(String::as_str))
            .collect();
        let name = if s.name == svc.name {
            format!("<strong>{}</strong>", E(&s.name))
        } else {
            format!(
                "<a href=\"/portal/services/{}/{}\">{}</a>",
                U(&s.tenant),
                U(&s.name),
                E(&s.name)
            )
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{name}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            E(s.version.as_deref().unwrap_or("")),
            badge(s),
            E(&routes.join(" ")),
            E(s.description.as_deref().unwrap_or(""))
        );
    }
    b.push_str("</table></div>");
    b
}

/// The lifecycle form of a service, for the admins of its tenant: the moves from its state.
fn lifecycle(ctx: &Ctx, svc: &Service) -> String {
    let may = ctx.session.role == "cluster-admin"
        || (ctx.session.role == "tenant-admin" && ctx.session.tenant.as_deref() == Some(svc.tenant.as_str()));
    let moves: &[&str] = match svc.state {
        ServiceState::Draft => &["published"],
        ServiceState::Published => &["deprecated", "draft"],
        ServiceState::Deprecated => &["retired", "published"],
        ServiceState::Retired => &["deprecated"],
    };
    if !may {
        return String::new();
    }
    let mut b = format!(
        "<div class=\"box\" id=\"lifecycle\"><h2>Lifecycle</h2><p>Now {}.</p>",
        badge(svc)
    );
    for to in moves {
        let _ = write!(
            b,
            "<form class=\"inline\" method=\"post\" action=\"/portal/services/{}/{}/state\">{}\
             <input type=\"hidden\" name=\"state\" value=\"{to}\">{}<button id=\"to-{to}\">Make it {to}</button></form> ",
            U(&svc.tenant),
            U(&svc.name),
            csrf_field(&ctx.session.csrf),
            if *to == "deprecated" {
                "<input name=\"sunset\" placeholder=\"sunset, e.g. 2027-06-30T00:00:00Z\" size=\"32\"> "
            } else {
                ""
            }
        );
    }
    b.push_str("</div>");
    b
}

/// `POST /portal/services/{tenant}/{name}/state` (state, sunset): moves the service through
/// its lifecycle, as the user's token; the tenant's publishing rules apply.
pub async fn set_state(ctx: &Ctx, tenant: &str, name: &str, form: &Form) -> Resp {
    let Some(mut svc) = find(ctx, tenant, name) else {
        return not_found(ctx);
    };
    svc.state = match form.get("state") {
        "draft" => ServiceState::Draft,
        "published" => ServiceState::Published,
        "deprecated" => ServiceState::Deprecated,
        "retired" => ServiceState::Retired,
        _ => return refused(ctx, "No such state."),
    };
    if !form.get("sunset").is_empty() {
        svc.sunset = Some(form.get("sunset").to_string());
    }
    svc.resource_version = None;
    let doc = match serde_json::to_value(&svc) {
        Ok(v) => serde_json::json!({ "services": [v] }),
        Err(_) => return refused(ctx, "The service could not be encoded."),
    };
    let r = ctx.apply(doc).await;
    ctx.done(
        r,
        &format!("/portal/services/{}/{}", U(tenant), U(name)),
        "The service was not changed",
    )
}

fn find(ctx: &Ctx, tenant: &str, name: &str) -> Option<Service> {
    services(ctx)
        .into_iter()
        .find(|s| s.tenant == tenant && s.name == name)
}

fn not_found(ctx: &Ctx) -> Resp {
    let mut r = ctx.page(
        "No such service",
        "<p>There is no such service, or it is not yours to see.</p>",
    );
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// `GET /portal/services/{tenant}/{name}`
pub async fn service(ctx: &Ctx, tenant: &str, name: &str) -> Resp {
    let Some(svc) = find(ctx, tenant, name) else {
        return not_found(ctx);
    };
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>{} · tenant <strong>{}</strong>{} · auth: {} · <a href=\"/portal/usage?tenant={}&service={}\">usage</a></p><p>{}</p><p>{}{}</p>",
        badge(&svc),
        E(&svc.tenant),
        svc.version
            .as_deref()
            .map(|v| format!(" · version {}", E(v)))
            .unwrap_or_default(),
        E(&svc
            .auth
            .iter()
            .map(|a| serde_json::to_value(a)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")),
        U(&svc.tenant),
        U(&svc.name),
        E(svc.description.as_deref().unwrap_or("")),
        svc.owner
            .as_deref()
            .map(|o| format!("Owner: <span id=\"owner\">{}</span> ", E(o)))
            .unwrap_or_default(),
        tag_list(&svc)
    );
    // Subscriptions: the user's apps in the service's tenant, and what they asked already.
    let same_tenant = ctx.session.tenant.as_deref().is_none_or(|t| t == svc.tenant);
    if same_tenant && matches!(svc.state, ServiceState::Published | ServiceState::Deprecated) {
        let apps = ctx
            .list(Kind::App, &svc.tenant, |s| match s {
                Spec::App(a) => Some(a.name),
                _ => None,
            })
            .await
            .unwrap_or_default();
        let subs: Vec<Subscription> = ctx
            .list(Kind::Subscription, &svc.tenant, |s| match s {
                Spec::Subscription(x) if x.service == svc.name => Some(x),
                _ => None,
            })
            .await
            .unwrap_or_default();
        b.push_str("<div class=\"box\" id=\"subscribe\"><h2>Subscribe</h2>");
        for s in &subs {
            let status = subscription_status(s.status);
            let _ = write!(
                b,
                "<p class=\"subscription\">App <strong>{}</strong>: <span class=\"badge\">{}</span></p>",
                E(&s.app),
                status
            );
        }
        if apps.is_empty() {
            b.push_str("<p>Create an app first, under <a href=\"/portal/apps\">Apps and keys</a>.</p>");
        } else {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/portal/services/{}/{}/subscribe\">{}<select name=\"app\">",
                U(&svc.tenant),
                U(&svc.name),
                csrf_field(&ctx.session.csrf)
            );
            for a in &apps {
                let _ = write!(b, "<option value=\"{}\">{}</option>", E(a), E(a));
            }
            b.push_str("</select> <button>Request a subscription</button></form>");
        }
        b.push_str("</div>");
    }
    if matches!(svc.state, ServiceState::Published | ServiceState::Deprecated) {
        b.push_str(&tryit::form(&svc, &ctx.session.csrf, ctx.gateway.as_ref()));
    }
    b.push_str(&versions(ctx, &svc));
    b.push_str(&lifecycle(ctx, &svc));
    b.push_str("<h2>API</h2>");
    b.push_str(&docs(&tollgate_proto::openapi::for_service(&svc)));
    ctx.page(&svc.name, &b)
}

/// `POST /portal/services/{tenant}/{name}/try` (method, path, key, body): one request through
/// the gateway, and its answer.
pub async fn try_it(ctx: &Ctx, tenant: &str, name: &str, form: &Form) -> Resp {
    let Some(svc) = find(ctx, tenant, name) else {
        return not_found(ctx);
    };
    let Some(gw) = ctx.gateway.as_ref() else {
        return refused(
            ctx,
            "Try-it is not set up: the control plane has no --portal-gateway.",
        );
    };
    let (method, path) = (form.get("method").to_uppercase(), form.get("path"));
    if !routed(&svc, path) {
        return refused(ctx, &format!("{path:?} is not a path of this service's routes."));
    }
    let body = match tryit::body_field(form.get("body")) {
        Ok(b) => b,
        Err(e) => return refused(ctx, &e),
    };
    let mut b = String::new();
    match tryit::send(gw, &method, path, form.get("key"), body).await {
        Ok(answer) => b.push_str(&tryit::render(gw, &method, path, body, &answer)),
        Err(e) => {
            let _ = write!(b, "<div class=\"box error\" id=\"try-error\">{}</div>", E(&e));
        }
    }
    b.push_str(&tryit::form(&svc, &ctx.session.csrf, Some(gw)));
    let _ = write!(
        b,
        "<p><a href=\"/portal/services/{}/{}\">Back to {}</a></p>",
        U(&svc.tenant),
        U(&svc.name),
        E(&svc.name)
    );
    ctx.page(&format!("Try {}", svc.name), &b)
}

fn refused(ctx: &Ctx, why: &str) -> Resp {
    let mut r = ctx.page(
        "Not sent",
        &format!("<div class=\"box error\" id=\"try-error\">{}</div>", E(why)),
    );
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// `POST /portal/services/{tenant}/{name}/subscribe` (app): a subscription request, pending
/// until an admin approves it unless the service approves automatically.
pub async fn subscribe(ctx: &Ctx, tenant: &str, name: &str, form: &Form) -> Resp {
    if find(ctx, tenant, name).is_none() {
        return not_found(ctx);
    }
    let doc =
        serde_json::json!({"subscriptions": [{"app": form.get("app"), "service": name, "tenant": tenant}]});
    match ctx
        .admin
        .apply(ctx.req(ApplyRequest {
            document: doc.to_string(),
            prune: false,
        }))
        .await
    {
        Ok(_) => see_other(
            &format!("/portal/services/{}/{}#subscribe", U(tenant), U(name)),
            &[],
        ),
        Err(s) => ctx.failed("The subscription was not requested", &s),
    }
}

/// An OpenAPI document as HTML: each operation with its request body's fields and its
/// answers. Everything from the document is escaped.
pub fn docs(doc: &Value) -> String {
    let mut b = String::new();
    let Some(paths) = doc["paths"].as_object() else {
        return "<p>No operations.</p>".into();
    };
    for (path, item) in paths {
        let Some(ops) = item.as_object() else { continue };
        for (method, op) in ops {
            let _ = write!(
                b,
                "<div class=\"box operation\"><h3><code>{} {}</code>{}</h3><p>{}</p>",
                E(&method.to_uppercase()),
                E(path),
                if op["deprecated"] == true {
                    " <span class=\"badge deprecated\">deprecated</span>"
                } else {
                    ""
                },
                E(op["summary"]
                    .as_str()
                    .or(op["description"].as_str())
                    .unwrap_or(""))
            );
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            if schema.is_object() {
                b.push_str("<h4>Request body</h4>");
                fields(&mut b, schema);
            }
            if let Some(responses) = op["responses"].as_object() {
                b.push_str("<h4>Answers</h4><ul>");
                for (code, r) in responses {
                    let _ = write!(
                        b,
                        "<li><code>{}</code> {}</li>",
                        E(code),
                        E(r["description"].as_str().unwrap_or(""))
                    );
                }
                b.push_str("</ul>");
            }
            b.push_str("</div>");
        }
    }
    b
}

/// A schema's properties as a table (nested objects one level down, by name).
fn fields(b: &mut String, schema: &Value) {
    let Some(props) = schema["properties"].as_object() else {
        let _ = write!(b, "<p><code>{}</code></p>", E(&schema["type"].to_string()));
        return;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    b.push_str("<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th></tr>");
    for (name, p) in props {
        let ty = match &p["type"] {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "),
            _ => "any".into(),
        };
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            E(name),
            E(&ty),
            if required.contains(&name.as_str()) {
                "yes"
            } else {
                ""
            },
            E(p["description"].as_str().unwrap_or(""))
        );
        if p["properties"].is_object() {
            let _ = write!(b, "<tr><td colspan=\"4\">Fields of <code>{}</code>:", E(name));
            fields(b, p);
            b.push_str("</td></tr>");
        }
    }
    b.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::session::Sessions;

    fn session(role: &str, tenant: Option<&str>) -> Session {
        let (_, s) = Sessions::default()
            .start("t".into(), role.into(), tenant.map(str::to_string), "l".into())
            .unwrap();
        s
    }

    fn service(tenant: &str, visibility: Visibility, state: ServiceState) -> Service {
        let doc = format!("services: [{{name: s, tenant: {tenant}, routes: [{{paths: [/s]}}]}}]");
        let Some(Spec::Service(mut svc)) = tollgate_proto::Document::parse(&doc).unwrap().into_specs().pop()
        else {
            panic!("not a service")
        };
        svc.visibility = visibility;
        svc.state = state;
        svc
    }

    #[test]
    fn developers_see_their_tenant_and_public_services_never_private_or_drafts() {
        use ServiceState::*;
        use Visibility::*;
        let dev = session("tenant-developer", Some("a"));
        assert!(visible(&dev, &service("a", Tenant, Published)));
        assert!(visible(&dev, &service("b", Public, Deprecated)));
        assert!(
            !visible(&dev, &service("b", Tenant, Published)),
            "another tenant's"
        );
        assert!(!visible(&dev, &service("a", Private, Published)), "private");
        assert!(!visible(&dev, &service("a", Tenant, Draft)), "a draft");
        assert!(!visible(&dev, &service("b", Public, Retired)), "retired");
        let admin = session("tenant-admin", Some("a"));
        assert!(visible(&admin, &service("a", Private, Draft)));
        assert!(!visible(&admin, &service("b", Private, Published)));
        assert!(visible(
            &session("cluster-admin", None),
            &service("b", Private, Draft)
        ));
    }
}
