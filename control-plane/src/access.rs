//! Who may do what in the admin API. One function per kind of operation, each given the
//! caller's token and the tenant the operation touches; every refusal is a
//! [`AdminError::PermissionDenied`] naming the role and the tenant.
//!
//! | role             | read          | config write             | keys | subscriptions | secrets, tokens | cluster, audit      |
//! |------------------|---------------|--------------------------|------|---------------|-----------------|---------------------|
//! | cluster-admin    | all           | all                      | all  | all           | all             | yes                 |
//! | tenant-admin T   | T             | T (not other tenants)    | T    | T             | T               | audit of T          |
//! | tenant-developer | T             | apps, subscription asks  | T    | -             | -               | -                   |
//! | viewer [T]       | T (or all)    | -                        | -    | -             | -               | -                   |
//! | edge             | -             | -                        | -    | -             | -               | -                   |

use crate::error::AdminError;
use crate::state::{AdminToken, Role};
use tollgate_proto::model::SubscriptionStatus;
use tollgate_proto::{Kind, Spec};

fn denied(t: &AdminToken, what: &str) -> AdminError {
    let who = match &t.tenant {
        Some(tenant) => format!("a {} token of tenant {tenant}", t.role.as_str()),
        None => format!("a {} token", t.role.as_str()),
    };
    AdminError::PermissionDenied {
        who,
        what: what.to_string(),
    }
}

/// Whether `t` is limited to a tenant other than `tenant`.
fn other_tenant(t: &AdminToken, tenant: &str) -> bool {
    t.tenant.as_deref().is_some_and(|own| own != tenant)
}

/// The tenant reads are limited to, if any (`None`: every tenant).
pub fn read_scope(t: &AdminToken) -> Result<Option<&str>, AdminError> {
    match t.role {
        Role::ClusterAdmin => Ok(None),
        Role::TenantAdmin | Role::TenantDeveloper | Role::Viewer => Ok(t.tenant.as_deref()),
        Role::Edge => Err(denied(t, "use the admin API")),
    }
}

/// Reading what belongs to `tenant` (empty: cluster-wide things).
pub fn read(t: &AdminToken, tenant: &str) -> Result<(), AdminError> {
    match read_scope(t)? {
        Some(own) if !tenant.is_empty() && own != tenant => Err(denied(t, &format!("read tenant {tenant}"))),
        _ => Ok(()),
    }
}

/// Writing `specs` from a document (with `prune` when asked).
pub fn write_specs(t: &AdminToken, specs: &[Spec], prune: bool) -> Result<(), AdminError> {
    match t.role {
        Role::ClusterAdmin => return Ok(()),
        Role::TenantAdmin | Role::TenantDeveloper => {}
        Role::Viewer | Role::Edge => return Err(denied(t, "change the config")),
    }
    if prune && t.role == Role::TenantDeveloper {
        return Err(denied(t, "prune"));
    }
    for s in specs {
        let key = s.key();
        let tenant = if key.kind == Kind::Tenant {
            key.name.as_str()
        } else {
            key.tenant.as_str()
        };
        if other_tenant(t, tenant) {
            return Err(denied(t, &format!("write {key}")));
        }
        if t.role == Role::TenantDeveloper {
            let allowed = match s {
                Spec::App(_) => true,
                Spec::Subscription(sub) => matches!(sub.status, None | Some(SubscriptionStatus::Pending)),
                _ => false,
            };
            if !allowed {
                return Err(denied(
                    t,
                    &format!("write {key} (developers manage apps and ask for subscriptions)"),
                ));
            }
        }
    }
    Ok(())
}

/// Deleting one resource of `kind` in `tenant`.
pub fn delete(t: &AdminToken, kind: Kind, tenant: &str) -> Result<(), AdminError> {
    let ok = match t.role {
        Role::ClusterAdmin => true,
        Role::TenantAdmin => !other_tenant(t, tenant) && kind != Kind::Tenant,
        Role::TenantDeveloper => !other_tenant(t, tenant) && kind == Kind::App,
        Role::Viewer | Role::Edge => false,
    };
    if ok {
        Ok(())
    } else {
        Err(denied(t, &format!("delete a {kind} of tenant {tenant}")))
    }
}

/// Creating or revoking API keys of `tenant`'s apps.
pub fn manage_keys(t: &AdminToken, tenant: &str) -> Result<(), AdminError> {
    match t.role {
        Role::ClusterAdmin => Ok(()),
        Role::TenantAdmin | Role::TenantDeveloper if !other_tenant(t, tenant) => Ok(()),
        _ => Err(denied(t, &format!("manage keys of tenant {tenant}"))),
    }
}

/// Approving or rejecting subscriptions, managing secrets: tenant admins and up.
pub fn administer(t: &AdminToken, tenant: &str, what: &str) -> Result<(), AdminError> {
    match t.role {
        Role::ClusterAdmin => Ok(()),
        Role::TenantAdmin if !other_tenant(t, tenant) => Ok(()),
        _ => Err(denied(t, &format!("{what} in tenant {tenant}"))),
    }
}

/// Creating a token of `role` for `tenant`: cluster admins any; tenant admins their
/// tenant's non-admin-of-cluster roles.
pub fn create_token(t: &AdminToken, role: Role, tenant: Option<&str>) -> Result<(), AdminError> {
    match t.role {
        Role::ClusterAdmin => Ok(()),
        Role::TenantAdmin
            if matches!(role, Role::TenantAdmin | Role::TenantDeveloper | Role::Viewer)
                && tenant.is_some()
                && tenant == t.tenant.as_deref() =>
        {
            Ok(())
        }
        _ => Err(denied(t, &format!("create a {} token", role.as_str()))),
    }
}

/// Listing or revoking `other`.
pub fn manage_token(t: &AdminToken, other: &AdminToken) -> Result<(), AdminError> {
    match t.role {
        Role::ClusterAdmin => Ok(()),
        Role::TenantAdmin
            if other.tenant.is_some() && other.tenant == t.tenant && other.role != Role::ClusterAdmin =>
        {
            Ok(())
        }
        _ => Err(denied(t, "manage this token")),
    }
}

/// Membership changes and cluster-wide status.
pub fn cluster(t: &AdminToken) -> Result<(), AdminError> {
    match t.role {
        Role::ClusterAdmin => Ok(()),
        _ => Err(denied(t, "manage the cluster")),
    }
}

/// The tenant an audit listing is limited to (`None`: all).
pub fn audit_scope(t: &AdminToken) -> Result<Option<&str>, AdminError> {
    match t.role {
        Role::ClusterAdmin => Ok(None),
        Role::TenantAdmin => Ok(t.tenant.as_deref()),
        _ => Err(denied(t, "read the audit log")),
    }
}

/// The tenant a traffic query (`stats`) is limited to (`None`: all). Unlike the audit log,
/// developers and viewers read their tenant's traffic too: the portal shows their apps' usage.
pub fn stats_scope(t: &AdminToken) -> Result<Option<&str>, AdminError> {
    match (t.role, t.tenant.as_deref()) {
        (Role::ClusterAdmin, _) | (Role::Viewer, None) => Ok(None),
        (Role::TenantAdmin | Role::TenantDeveloper | Role::Viewer, Some(own)) => Ok(Some(own)),
        _ => Err(denied(t, "read traffic statistics")),
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::Document;

    use super::*;

    fn token(role: Role, tenant: Option<&str>) -> AdminToken {
        AdminToken {
            id: "id".into(),
            sha256: "h".into(),
            role,
            tenant: tenant.map(str::to_string),
            label: "l".into(),
            created_ms: 0,
        }
    }

    fn specs(yaml: &str) -> Vec<Spec> {
        Document::parse(yaml).unwrap().into_specs()
    }

    #[test]
    fn tenants_are_isolated() {
        let admin_a = token(Role::TenantAdmin, Some("a"));
        assert!(write_specs(&admin_a, &specs("apps: [{name: x, tenant: a}]"), true).is_ok());
        assert!(write_specs(&admin_a, &specs("apps: [{name: x, tenant: b}]"), false).is_err());
        assert!(write_specs(&admin_a, &specs("tenants: [{name: b}]"), false).is_err());
        assert!(read(&admin_a, "b").is_err());
        assert!(read(&admin_a, "a").is_ok());
        assert!(manage_keys(&admin_a, "b").is_err());
        assert!(administer(&admin_a, "b", "approve").is_err());
        assert!(create_token(&admin_a, Role::TenantDeveloper, Some("a")).is_ok());
        assert!(create_token(&admin_a, Role::TenantDeveloper, Some("b")).is_err());
        assert!(create_token(&admin_a, Role::ClusterAdmin, None).is_err());
        assert!(cluster(&admin_a).is_err());
    }

    #[test]
    fn developers_manage_apps_and_ask_for_subscriptions_only() {
        let dev = token(Role::TenantDeveloper, Some("a"));
        assert!(write_specs(
            &dev,
            &specs("apps: [{name: x, tenant: a}]\nsubscriptions: [{app: x, service: s, tenant: a}]"),
            false
        )
        .is_ok());
        let approve = "subscriptions: [{app: x, service: s, tenant: a, status: approved}]";
        assert!(
            write_specs(&dev, &specs(approve), false).is_err(),
            "no self-approval"
        );
        let svc = "services: [{name: s, tenant: a, upstream: u, routes: [{paths: [/]}]}]";
        assert!(write_specs(&dev, &specs(svc), false).is_err());
        assert!(
            write_specs(&dev, &specs("apps: [{name: x, tenant: a}]"), true).is_err(),
            "no prune"
        );
        assert!(administer(&dev, "a", "approve").is_err());
        assert!(manage_keys(&dev, "a").is_ok());
        assert!(delete(&dev, Kind::App, "a").is_ok());
        assert!(delete(&dev, Kind::Service, "a").is_err());
    }

    #[test]
    fn viewers_and_edges_only_read_or_nothing() {
        let viewer = token(Role::Viewer, None);
        assert!(read(&viewer, "anything").is_ok());
        assert!(write_specs(&viewer, &specs("apps: [{name: x, tenant: a}]"), false).is_err());
        let edge = token(Role::Edge, None);
        assert!(read(&edge, "a").is_err());
        assert!(audit_scope(&viewer).is_err());
    }
}
