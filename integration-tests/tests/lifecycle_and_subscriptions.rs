//! API lifecycle states and subscription states as the edge enforces them, each change made
//! through the real CLI and seen at a real edge within a second.

use std::time::{Duration, Instant};

use tollgate_integration_tests::edge::{EdgeNode, Reply, Upstream};
use tollgate_integration_tests::{wait_for, Sandbox};

fn config(upstream: &str) -> String {
    format!(
        r#"
tenants: [{{name: acme}}]
upstreams: [{{name: be, tenant: acme, targets: [{{url: "{upstream}"}}]}}]
services:
  - {{name: orders, tenant: acme, version: v1, state: published, approval: manual, auth: [api_key], upstream: be, routes: [{{paths: [/v1/orders]}}]}}
  - {{name: orders-v2, tenant: acme, version: v2, state: draft, auth: [api_key], upstream: be, routes: [{{paths: [/v2/orders]}}]}}
apps: [{{name: mobile, tenant: acme}}]
subscriptions: [{{app: mobile, service: orders, tenant: acme}}]
"#
    )
}

/// Polls the edge until `path` answers `status` (bounded at 1 s, the contract), returning
/// the answer and how long it took.
fn within_a_second(edge: &EdgeNode, path: &str, key: &str, status: u16) -> (Reply, Duration) {
    let started = Instant::now();
    let r = wait_for(
        &format!("{path} to answer {status}"),
        Duration::from_secs(1),
        || {
            let r = edge.get_with_key(path, key);
            (r.status == status).then_some(r)
        },
    );
    (r, started.elapsed())
}

fn error_code(r: &Reply) -> String {
    r.error_code()
}

#[test]
fn lifecycle_states_versions_side_by_side_and_subscription_states() {
    let sb = Sandbox::cluster(1);
    let up = Upstream::start();
    let edge = EdgeNode::start(&sb, "edge-life");
    let cfg = config(&up.url());
    sb.cli(0, &["apply", "-f", &sb.file("c.yaml", &cfg)]).ok();
    let out = sb
        .cli(
            0,
            &[
                "key", "create", "--app", "mobile", "--tenant", "acme", "-o", "json",
            ],
        )
        .ok()
        .stdout;
    let key = serde_json::from_str::<serde_json::Value>(&out).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();

    // Subscription states: pending (manual approval) -> approved -> revoked; missing.
    let (r, _) = within_a_second(&edge, "/v1/orders", &key, 403);
    assert_eq!(error_code(&r), "subscription_pending");
    sb.cli(
        0,
        &["subscription", "approve", "mobile:orders", "--tenant", "acme"],
    )
    .ok();
    let (_, took) = within_a_second(&edge, "/v1/orders", &key, 200);
    eprintln!("approval reached the edge in {took:?}");
    sb.cli(
        0,
        &["subscription", "revoke", "mobile:orders", "--tenant", "acme"],
    )
    .ok();
    let (r, _) = within_a_second(&edge, "/v1/orders", &key, 403);
    assert_eq!(error_code(&r), "not_subscribed");
    sb.cli(
        0,
        &["subscription", "approve", "mobile:orders", "--tenant", "acme"],
    )
    .ok();
    within_a_second(&edge, "/v1/orders", &key, 200);
    // Re-applying the file keeps the decision.
    sb.cli(0, &["apply", "-f", &sb.file("c2.yaml", &cfg)]).ok();
    assert_eq!(edge.get_with_key("/v1/orders", &key).status, 200);

    // Draft: not routable at all.
    let (r, _) = within_a_second(&edge, "/v2/orders", &key, 404);
    assert_eq!(error_code(&r), "no_route");

    // v2 published beside v1, with no subscription yet: both versions live on their routes.
    let v2 = cfg.replace("state: draft", "state: published");
    sb.cli(0, &["apply", "-f", &sb.file("v2.yaml", &v2)]).ok();
    let (r, _) = within_a_second(&edge, "/v2/orders", &key, 403);
    assert_eq!(error_code(&r), "not_subscribed", "a missing subscription");
    let with_sub = v2.replace(
        "subscriptions: [{app: mobile, service: orders, tenant: acme}]",
        "subscriptions: [{app: mobile, service: orders, tenant: acme}, {app: mobile, service: orders-v2, tenant: acme}]",
    );
    sb.cli(0, &["apply", "-f", &sb.file("v2s.yaml", &with_sub)]).ok();
    within_a_second(&edge, "/v2/orders", &key, 200);
    let r = edge.get_with_key("/v1/orders/7", &key);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/v1/orders/7");
    assert!(r.header("deprecation").is_none());

    // Deprecated: answers normally, with Deprecation and Sunset.
    let deprecated = with_sub.replace(
        "version: v1, state: published",
        "version: v1, state: deprecated, sunset: \"2027-06-30T00:00:00Z\"",
    );
    sb.cli(0, &["apply", "-f", &sb.file("dep.yaml", &deprecated)])
        .ok();
    let r = wait_for("the deprecation headers", Duration::from_secs(1), || {
        let r = edge.get_with_key("/v1/orders", &key);
        r.header("deprecation").is_some().then_some(r)
    });
    assert_eq!(r.status, 200);
    assert_eq!(r.header("deprecation"), Some("true"));
    assert_eq!(r.header("sunset"), Some("Wed, 30 Jun 2027 00:00:00 GMT"));

    // Retired: 403 api_retired, even without a credential; v2 unaffected.
    let retired = deprecated.replace("state: deprecated", "state: retired");
    sb.cli(0, &["apply", "-f", &sb.file("ret.yaml", &retired)]).ok();
    let (r, _) = within_a_second(&edge, "/v1/orders", "", 403);
    assert_eq!(error_code(&r), "api_retired");
    assert_eq!(edge.get_with_key("/v2/orders", &key).status, 200);
}
