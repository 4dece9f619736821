//! Apps and keys, the approval queue and the audit log: each page reads and each form writes
//! through the admin API as the user's token.

use std::fmt::Write;

use tollgate_proto::model::{ApiKey, App, Subscription};
use tollgate_proto::v1::admin_server::Admin;
use tollgate_proto::v1::{CreateKeyRequest, DecideSubscriptionRequest, ListAuditRequest, RevokeKeyRequest};
use tollgate_proto::{Kind, Spec};

use crate::portal::ctx::{subscription_status, Ctx, Form, Resp};
use crate::portal::html::{csrf_field, E, U};

/// `GET /portal/apps`: the user's tenant's apps, with their keys and subscriptions.
pub async fn apps(ctx: &Ctx) -> Resp {
    let tenant = ctx.session.tenant.clone().unwrap_or_default();
    let apps = match ctx
        .list(Kind::App, &tenant, |s| match s {
            Spec::App(a) => Some(a),
            _ => None,
        })
        .await
    {
        Ok(a) => a,
        Err(s) => return ctx.failed("The apps cannot be read", &s),
    };
    let keys: Vec<ApiKey> = ctx
        .list(Kind::ApiKey, &tenant, |s| match s {
            Spec::ApiKey(k) => Some(k),
            _ => None,
        })
        .await
        .unwrap_or_default();
    let subs: Vec<Subscription> = ctx
        .list(Kind::Subscription, &tenant, |s| match s {
            Spec::Subscription(x) => Some(x),
            _ => None,
        })
        .await
        .unwrap_or_default();
    let csrf = csrf_field(&ctx.session.csrf);
    let mut b = String::new();
    for a in &apps {
        app_box(&mut b, a, &keys, &subs, &csrf);
    }
    if apps.is_empty() {
        b.push_str("<p>No apps yet.</p>");
    }
    let tenant_field = if ctx.session.tenant.is_none() {
        "<input name=\"tenant\" placeholder=\"tenant\" required> "
    } else {
        ""
    };
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/portal/apps\" class=\"box\" id=\"new-app\"><h2>New app</h2>{csrf}{tenant_field}\
         <input name=\"name\" placeholder=\"name (a-z, 0-9, -)\" required> \
         <input name=\"description\" placeholder=\"description\"> <button>Create the app</button></form>"
    );
    ctx.page("Apps and keys", &b)
}

fn app_box(b: &mut String, a: &App, keys: &[ApiKey], subs: &[Subscription], csrf: &str) {
    let _ = write!(
        b,
        "<div class=\"box app\" id=\"app-{}\"><h2>{}</h2><p>{}</p>\
         <p><a href=\"/portal/usage?tenant={}&app={}\">Usage</a></p><h3>Keys</h3>",
        E(&a.name),
        E(&a.name),
        E(a.description.as_deref().unwrap_or("")),
        U(&a.tenant),
        U(&a.name)
    );
    let mine: Vec<&ApiKey> = keys
        .iter()
        .filter(|k| k.app == a.name && k.tenant == a.tenant)
        .collect();
    if mine.is_empty() {
        b.push_str("<p>No keys.</p>");
    } else {
        b.push_str("<table><tr><th>Key</th><th>Label</th><th></th></tr>");
        for k in mine {
            let _ = write!(
                b,
                "<tr><td><code>tgk_{}_…</code></td><td>{}</td><td><form class=\"inline\" method=\"post\" action=\"/portal/keys/{}/{}/revoke\">{csrf}<button>Revoke</button></form></td></tr>",
                E(&k.id),
                E(k.label.as_deref().unwrap_or("")),
                U(&k.tenant),
                U(&k.id)
            );
        }
        b.push_str("</table>");
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/portal/apps/{}/{}/keys\">{csrf}<input name=\"label\" placeholder=\"label\"> <button>Create a key</button></form><h3>Subscriptions</h3>",
        U(&a.tenant),
        U(&a.name)
    );
    let mine: Vec<&Subscription> = subs
        .iter()
        .filter(|s| s.app == a.name && s.tenant == a.tenant)
        .collect();
    if mine.is_empty() {
        b.push_str("<p>None: find a service in the <a href=\"/portal\">catalog</a>.</p>");
    }
    for s in mine {
        let _ = write!(
            b,
            "<p class=\"subscription\"><a href=\"/portal/services/{}/{}\">{}</a> <span class=\"badge\">{}</span></p>",
            U(&s.tenant),
            U(&s.service),
            E(&s.service),
            subscription_status(s.status)
        );
    }
    b.push_str("</div>");
}

/// `POST /portal/apps` (name, description, and tenant for a token of no tenant).
pub async fn create_app(ctx: &Ctx, form: &Form) -> Resp {
    let mut app = serde_json::json!({"name": form.get("name"), "tenant": ctx.tenant_of(form)});
    if !form.get("description").is_empty() {
        app["description"] = form.get("description").into();
    }
    let doc = serde_json::json!({ "apps": [app] });
    ctx.done(ctx.apply(doc).await, "/portal/apps", "The app was not created")
}

/// `POST /portal/apps/{tenant}/{app}/keys` (label): the new key, shown this once.
pub async fn create_key(ctx: &Ctx, tenant: &str, app: &str, form: &Form) -> Resp {
    let r = ctx
        .admin
        .create_key(ctx.req(CreateKeyRequest {
            tenant: tenant.into(),
            app: app.into(),
            label: form.get("label").into(),
        }))
        .await;
    match r {
        Ok(k) => {
            let k = k.into_inner();
            let body = format!(
                "<div class=\"box\"><p>The key of app <strong>{}</strong>. It is shown this once; \
                 Tollgate keeps only its SHA-256. Send it in the <code>apikey</code> header or as \
                 <code>Authorization: Bearer</code>.</p><p class=\"once\" id=\"new-key\">{}</p></div>\
                 <p><a href=\"/portal/apps\">Back to the apps</a></p>",
                E(app),
                E(&k.key)
            );
            ctx.page("New key", &body)
        }
        Err(s) => ctx.failed("The key was not created", &s),
    }
}

/// `POST /portal/keys/{tenant}/{id}/revoke`
pub async fn revoke_key(ctx: &Ctx, tenant: &str, id: &str) -> Resp {
    let r = ctx
        .admin
        .revoke_key(ctx.req(RevokeKeyRequest {
            tenant: tenant.into(),
            id: id.into(),
        }))
        .await;
    ctx.done(r, "/portal/apps", "The key was not revoked")
}

/// `GET /portal/approvals`: pending subscriptions, with approve and reject.
pub async fn approvals(ctx: &Ctx) -> Resp {
    let tenant = ctx.session.tenant.clone().unwrap_or_default();
    let pending = match ctx
        .list(Kind::Subscription, &tenant, |s| match s {
            Spec::Subscription(x) if subscription_status(x.status) == "pending" => Some(x),
            _ => None,
        })
        .await
    {
        Ok(p) => p,
        Err(s) => return ctx.failed("The subscriptions cannot be read", &s),
    };
    let csrf = csrf_field(&ctx.session.csrf);
    let mut b = String::new();
    if pending.is_empty() {
        b.push_str("<p>Nothing waits for approval.</p>");
    } else {
        b.push_str("<table id=\"pending\"><tr><th>Tenant</th><th>App</th><th>Service</th><th></th></tr>");
        for s in &pending {
            let id = s.id();
            let action = format!("/portal/subscriptions/{}/{}", U(&s.tenant), U(&id));
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>\
                 <form class=\"inline\" method=\"post\" action=\"{action}/approve\">{csrf}<button>Approve</button></form> \
                 <form class=\"inline\" method=\"post\" action=\"{action}/reject\">{csrf}<button>Reject</button></form></td></tr>",
                E(&s.tenant),
                E(&s.app),
                E(&s.service)
            );
        }
        b.push_str("</table>");
    }
    ctx.page("Approvals", &b)
}

/// `POST /portal/subscriptions/{tenant}/{app:service}/{approve|reject}`
pub async fn decide(ctx: &Ctx, tenant: &str, id: &str, decision: &str) -> Resp {
    let status = match decision {
        "approve" => "approved",
        _ => "rejected",
    };
    let r = ctx
        .admin
        .decide_subscription(ctx.req(DecideSubscriptionRequest {
            tenant: tenant.into(),
            id: id.into(),
            status: status.into(),
        }))
        .await;
    ctx.done(r, "/portal/approvals", "The subscription was not decided")
}

/// `GET /portal/audit`: the newest changes this user may see.
pub async fn audit(ctx: &Ctx) -> Resp {
    let r = ctx
        .admin
        .list_audit(ctx.req(ListAuditRequest {
            tenant: ctx.session.tenant.clone().unwrap_or_default(),
            limit: 200,
        }))
        .await;
    let records = match r {
        Ok(r) => r.into_inner().records,
        Err(s) => return ctx.failed("The audit log cannot be read", &s),
    };
    let mut b = String::from(
        "<table id=\"audit\"><tr><th>Index</th><th>When (UTC ms)</th><th>Who</th><th>Action</th><th>Changes</th><th>Error</th></tr>",
    );
    for r in &records {
        let changes: Vec<String> = r
            .changes
            .iter()
            .map(|c| format!("{} {} {}/{}", c.action, c.kind, c.tenant, c.name))
            .collect();
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{} ({}{})</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.index,
            r.at_ms,
            E(&r.actor_label),
            E(&r.actor_role),
            if r.actor_tenant.is_empty() {
                String::new()
            } else {
                format!(" of {}", E(&r.actor_tenant))
            },
            E(&r.action),
            E(&changes.join(", ")),
            E(&r.error)
        );
    }
    b.push_str("</table>");
    ctx.page("Audit log", &b)
}
