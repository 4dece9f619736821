use super::*;

fn apply_doc(state: &mut ConfigState, index: u64, yaml: &str, prune: bool) -> Result<Outcome, CommandError> {
    let specs = Document::parse(yaml)
        .map_err(|e| CommandError::Invalid(vec![e]))?
        .into_specs();
    state.apply(index, &Command::Apply { specs, prune })
}

const BASE: &str = r#"
tenants: [{name: acme}]
upstreams: [{name: be, tenant: acme, targets: [{url: "http://127.0.0.1:9001"}]}]
services: [{name: orders, tenant: acme, approval: manual, auth: [api_key], upstream: be, routes: [{paths: [/orders]}]}]
apps: [{name: mobile, tenant: acme}]
subscriptions: [{app: mobile, service: orders, tenant: acme}]
"#;

#[test]
fn apply_is_idempotent_and_versions_only_move_on_change() {
    let mut s = ConfigState::default();
    let out = apply_doc(&mut s, 5, BASE, false).unwrap();
    assert!(out.changes.iter().all(|c| c.action == Action::Created));
    assert_eq!(out.changes.len(), 5);
    let again = apply_doc(&mut s, 6, BASE, false).unwrap();
    assert!(again.changes.iter().all(|c| c.action == Action::Unchanged));
    let key = ResourceKey::new(Kind::Service, "acme", "orders");
    assert_eq!(s.resources[&key].version, 5);
    assert_eq!(s.version, 6);
}

#[test]
fn manual_approval_starts_pending_and_status_survives_reapply() {
    let mut s = ConfigState::default();
    apply_doc(&mut s, 1, BASE, false).unwrap();
    let key = ResourceKey::new(Kind::Subscription, "acme", "mobile:orders");
    let status = |s: &ConfigState| match &s.resources[&key].spec {
        Spec::Subscription(sub) => sub.status,
        _ => None,
    };
    assert_eq!(status(&s), Some(SubscriptionStatus::Pending));
    s.apply(
        2,
        &Command::SetSubscriptionStatus {
            tenant: "acme".into(),
            id: "mobile:orders".into(),
            status: SubscriptionStatus::Approved,
        },
    )
    .unwrap();
    apply_doc(&mut s, 3, BASE, false).unwrap();
    assert_eq!(status(&s), Some(SubscriptionStatus::Approved));
}

#[test]
fn rejected_apply_writes_nothing() {
    let mut s = ConfigState::default();
    apply_doc(&mut s, 1, BASE, false).unwrap();
    let before = s.resources.clone();
    let bad = format!("{BASE}\npolicies: [{{name: p, tenant: acme, ip_filter: {{allow: [nonsense]}}}}]");
    let err = apply_doc(&mut s, 2, &bad, false).unwrap_err();
    assert!(
        err.to_string()
            .contains("policy acme/p: ip_filter.allow[0]: invalid CIDR"),
        "{err}"
    );
    assert_eq!(s.resources, before);
    let dangling = "apps: [{name: x, tenant: nowhere}]";
    let err = apply_doc(&mut s, 3, dangling, false).unwrap_err();
    assert!(err.to_string().contains("references tenant nowhere"), "{err}");
    assert_eq!(s.resources, before);
}

#[test]
fn optimistic_concurrency_on_resource_version() {
    let mut s = ConfigState::default();
    apply_doc(&mut s, 1, BASE, false).unwrap();
    let stale = "apps: [{name: mobile, tenant: acme, description: new, resource_version: 7}]";
    let err = apply_doc(&mut s, 2, stale, false).unwrap_err();
    assert!(matches!(err, CommandError::Conflict(_)), "{err:?}");
    let fresh = "apps: [{name: mobile, tenant: acme, description: new, resource_version: 1}]";
    let out = apply_doc(&mut s, 3, fresh, false).unwrap();
    assert_eq!(out.changes[0].action, Action::Updated);
}

#[test]
fn prune_deletes_within_tenant_and_refuses_to_break_references() {
    let mut s = ConfigState::default();
    apply_doc(&mut s, 1, BASE, false).unwrap();
    // Dropping the upstream while the service still uses it is refused.
    let without_upstream = r#"
tenants: [{name: acme}]
services: [{name: orders, tenant: acme, approval: manual, auth: [api_key], upstream: be, routes: [{paths: [/orders]}]}]
apps: [{name: mobile, tenant: acme}]
subscriptions: [{app: mobile, service: orders, tenant: acme}]
"#;
    let err = apply_doc(&mut s, 2, without_upstream, true).unwrap_err();
    assert!(err.to_string().contains("which this change deletes"), "{err}");
    // Dropping the app and its subscription deletes both, and the app's keys.
    s.apply(
        3,
        &Command::CreateKey(ApiKey {
            id: "0123456789ab".into(),
            tenant: "acme".into(),
            app: "mobile".into(),
            sha256: "00".into(),
            label: None,
            created_ms: 0,
        }),
    )
    .unwrap();
    let without_app = r#"
tenants: [{name: acme}]
upstreams: [{name: be, tenant: acme, targets: [{url: "http://127.0.0.1:9001"}]}]
services: [{name: orders, tenant: acme, approval: manual, auth: [api_key], upstream: be, routes: [{paths: [/orders]}]}]
"#;
    let out = apply_doc(&mut s, 4, without_app, true).unwrap();
    let deleted: Vec<_> = out
        .changes
        .iter()
        .filter(|c| c.action == Action::Deleted)
        .map(|c| c.key.kind)
        .collect();
    assert_eq!(deleted, vec![Kind::App, Kind::Subscription, Kind::ApiKey]);
    // The deltas tell an edge at version 3 what went away.
    let (_, removals) = s.delta_since(3).unwrap();
    assert_eq!(removals.len(), 3);
}

#[test]
fn deltas_fall_back_to_snapshots_past_the_tombstone_floor() {
    let mut s = ConfigState::default();
    apply_doc(&mut s, 1, "tenants: [{name: t}]", false).unwrap();
    let mut index = 2;
    for i in 0..(TOMBSTONE_CAPACITY + 5) {
        let name = format!("a{i}");
        apply_doc(
            &mut s,
            index,
            &format!("apps: [{{name: {name}, tenant: t}}]"),
            false,
        )
        .unwrap();
        s.apply(
            index + 1,
            &Command::Delete {
                key: ResourceKey::new(Kind::App, "t", &name),
                expected_version: None,
            },
        )
        .unwrap();
        index += 2;
    }
    assert!(s.delta_since(1).is_none());
    assert!(s.delta_since(index - 1).is_some());
}

#[test]
fn delete_checks_expected_version_and_kind() {
    let mut s = ConfigState::default();
    apply_doc(&mut s, 1, BASE, false).unwrap();
    let key = ResourceKey::new(Kind::App, "acme", "ghost");
    assert!(matches!(
        s.apply(
            2,
            &Command::Delete {
                key,
                expected_version: None
            }
        ),
        Err(CommandError::NotFound(_))
    ));
    let key = ResourceKey::new(Kind::Upstream, "acme", "be");
    let err = s
        .apply(
            3,
            &Command::Delete {
                key,
                expected_version: None,
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "service acme/orders: upstream: references upstream acme/be, which this change deletes"
        ),
        "{err}"
    );
}

#[test]
fn a_service_takes_at_most_one_cors_policy() {
    let mut s = ConfigState::default();
    apply_doc(&mut s, 1, BASE, false).unwrap();
    let two = r#"
policies:
  - {name: c1, tenant: acme, cors: {allow_origins: ["https://a.example"]}}
  - {name: c2, tenant: acme, cors: {allow_origins: ["https://b.example"]}}
services: [{name: orders, tenant: acme, approval: manual, auth: [api_key], upstream: be, policies: [c1, c2], routes: [{paths: [/orders]}]}]
"#;
    let err = apply_doc(&mut s, 2, two, false).unwrap_err();
    assert!(
        err.to_string()
            .contains("service acme/orders: policies: names more than one cors policy (c1, c2)"),
        "{err}"
    );
    // Turning a header policy the service already names into a second cors policy is caught too.
    let one = two.replace("policies: [c1, c2]", "policies: [c1, h]").replace(
        "  - {name: c2, tenant: acme, cors: {allow_origins: [\"https://b.example\"]}}",
        "  - {name: h, tenant: acme, headers: {request: {add: {x-a: '1'}}}}",
    );
    apply_doc(&mut s, 3, &one, false).unwrap();
    let sneaky = "policies: [{name: h, tenant: acme, cors: {allow_origins: ['https://c.example']}}]";
    let err = apply_doc(&mut s, 4, sneaky, false).unwrap_err();
    assert!(
        err.to_string().contains("more than one cors policy (c1, h)"),
        "{err}"
    );
}

#[test]
fn recorded_usage_is_not_config_moves_no_version_and_is_not_audited() {
    let mut s = ConfigState::default();
    apply_doc(&mut s, 3, "tenants: [{name: acme}]", false).unwrap();
    let record = crate::usage::UsageRecord {
        quota: "day/10/app/acme/q".into(),
        key: "app:m".into(),
        period: 20_000,
        node: "edge-a".into(),
        epoch: 1,
        count: 4,
    };
    let req = Request {
        command: Command::RecordUsage(vec![record]),
        actor: None,
        at_ms: 0,
    };
    let audited = s.audit.len();
    let out = s.apply_request(9, &req).unwrap();
    assert_eq!((out.version, s.version), (3, 3), "the config version stays");
    assert_eq!(s.audit.len(), audited, "no audit record");
    assert_eq!(s.usage.total("day/10/app/acme/q", "app:m", 20_000), 4);
    // It survives a snapshot.
    let back: ConfigState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back.usage.total("day/10/app/acme/q", "app:m", 20_000), 4);
}
