//! Admin roles, tenant isolation and the audit log, through the real CLI against a real
//! control plane.

use tollgate_integration_tests::Sandbox;

const TWO_TENANTS: &str = r#"
tenants: [{name: a}, {name: b}]
upstreams:
  - {name: be, tenant: a, targets: [{url: "http://127.0.0.1:9001"}]}
  - {name: be, tenant: b, targets: [{url: "http://127.0.0.1:9002"}]}
services:
  - {name: orders, tenant: a, approval: manual, auth: [api_key], upstream: be, routes: [{paths: [/a]}]}
  - {name: orders, tenant: b, upstream: be, routes: [{paths: [/b]}]}
apps: [{name: web, tenant: b}]
"#;

fn token(sb: &Sandbox, role: &str, tenant: Option<&str>, label: &str) -> String {
    let mut args = vec!["token", "create", "--role", role, "--label", label, "-o", "json"];
    if let Some(t) = tenant {
        args.extend(["--tenant", t]);
    }
    let out = sb.cli(0, &args).ok().stdout;
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs the CLI with `token` instead of the bootstrap token.
fn as_token(sb: &mut Sandbox, token: &str, args: &[&str]) -> tollgate_integration_tests::CliOutput {
    let admin = std::mem::replace(&mut sb.token, token.to_string());
    let out = sb.cli(0, args);
    sb.token = admin;
    out
}

#[test]
fn tenant_tokens_see_and_change_only_their_tenant() {
    let mut sb = Sandbox::cluster(1);
    sb.cli(0, &["apply", "-f", &sb.file("two.yaml", TWO_TENANTS)])
        .ok();
    let admin_a = token(&sb, "tenant-admin", Some("a"), "alice");
    let dev_a = token(&sb, "tenant-developer", Some("a"), "dave");
    let viewer_a = token(&sb, "viewer", Some("a"), "vic");

    // Reads are limited to the token's tenant; asking for another is refused.
    let listed = as_token(&mut sb, &admin_a, &["get", "services", "-o", "json"])
        .ok()
        .stdout;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let tenants: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["a"]);
    let out = as_token(&mut sb, &admin_a, &["get", "apps", "--tenant", "b"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("cannot read tenant b"), "{out:?}");
    let export = as_token(&mut sb, &viewer_a, &["export", "-o", "json"])
        .ok()
        .stdout;
    assert!(export.contains("\"a\"") && !export.contains("9002"), "{export}");
    assert_eq!(as_token(&mut sb, &viewer_a, &["export", "--tenant", "b"]).code, 3);

    // Writes into another tenant are refused, and nothing of them is written.
    let into_b = sb.file(
        "into-b.yaml",
        "apps: [{name: x, tenant: a}, {name: evil, tenant: b}]",
    );
    let out = as_token(&mut sb, &admin_a, &["apply", "-f", &into_b]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("cannot write app b/evil"), "{out:?}");
    assert!(!sb
        .cli(0, &["get", "apps", "--tenant", "a"])
        .ok()
        .stdout
        .contains(" x "));
    assert_eq!(
        as_token(
            &mut sb,
            &admin_a,
            &["key", "create", "--app", "web", "--tenant", "b"]
        )
        .code,
        3
    );
    assert_eq!(
        as_token(
            &mut sb,
            &admin_a,
            &["delete", "service", "orders", "--tenant", "b"]
        )
        .code,
        3
    );
    assert_eq!(as_token(&mut sb, &admin_a, &["cluster", "status"]).code, 3);
    assert_eq!(
        as_token(
            &mut sb,
            &admin_a,
            &["token", "create", "--role", "tenant-admin", "--tenant", "b"]
        )
        .code,
        3
    );

    // The tenant admin runs its own tenant; the developer manages apps, keys and asks for
    // subscriptions, but cannot approve them or change services; the viewer only reads.
    let own = sb.file("own.yaml", "apps: [{name: mobile, tenant: a}]");
    as_token(&mut sb, &admin_a, &["apply", "-f", &own]).ok();
    let ask = sb.file(
        "ask.yaml",
        "apps: [{name: app2, tenant: a}]\nsubscriptions: [{app: app2, service: orders, tenant: a}]",
    );
    as_token(&mut sb, &dev_a, &["apply", "-f", &ask]).ok();
    let self_approve = sb.file(
        "self.yaml",
        "subscriptions: [{app: app2, service: orders, tenant: a, status: approved}]",
    );
    assert_eq!(as_token(&mut sb, &dev_a, &["apply", "-f", &self_approve]).code, 3);
    assert_eq!(
        as_token(
            &mut sb,
            &dev_a,
            &["subscription", "approve", "app2:orders", "--tenant", "a"]
        )
        .code,
        3
    );
    as_token(
        &mut sb,
        &dev_a,
        &["key", "create", "--app", "app2", "--tenant", "a"],
    )
    .ok();
    let svc = sb.file(
        "svc.yaml",
        "services: [{name: s2, tenant: a, upstream: be, routes: [{paths: [/s2]}]}]",
    );
    assert_eq!(as_token(&mut sb, &dev_a, &["apply", "-f", &svc]).code, 3);
    as_token(
        &mut sb,
        &admin_a,
        &["subscription", "approve", "app2:orders", "--tenant", "a"],
    )
    .ok();
    assert_eq!(as_token(&mut sb, &viewer_a, &["apply", "-f", &own]).code, 3);
    assert_eq!(
        as_token(
            &mut sb,
            &viewer_a,
            &["key", "create", "--app", "mobile", "--tenant", "a"]
        )
        .code,
        3
    );
    // A tenant admin lists and revokes only its tenant's tokens.
    let tokens = as_token(&mut sb, &admin_a, &["token", "list", "-o", "json"])
        .ok()
        .stdout;
    let tokens: serde_json::Value = serde_json::from_str(&tokens).unwrap();
    assert!(
        tokens.as_array().unwrap().iter().all(|t| t["tenant"] == "a"),
        "{tokens}"
    );
    assert_eq!(tokens.as_array().unwrap().len(), 3, "{tokens}");
}

#[test]
fn every_admin_write_is_audited() {
    let mut sb = Sandbox::cluster(1);
    sb.cli(0, &["apply", "-f", &sb.file("two.yaml", TWO_TENANTS)])
        .ok();
    let admin_a = token(&sb, "tenant-admin", Some("a"), "alice");
    let change = sb.file(
        "a.yaml",
        "upstreams: [{name: be, tenant: a, targets: [{url: 'http://127.0.0.1:9003'}]}]",
    );
    as_token(&mut sb, &admin_a, &["apply", "-f", &change]).ok();
    let refused = sb.file("bad.yaml", "apps: [{name: nope, tenant: a, colour: red}]");
    assert_ne!(sb.cli(0, &["apply", "-f", &refused]).code, 0);
    sb.cli_with_stdin(0, &["secret", "set", "k", "--tenant", "a"], Some("v"))
        .ok();

    let out = sb.cli(0, &["audit", "-o", "json"]).ok().stdout;
    let records: serde_json::Value = serde_json::from_str(&out).unwrap();
    let records = records.as_array().unwrap();
    // Newest first: secret set, the tenant admin's apply, token create, the first apply,
    // edge token create, cluster init.
    let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "secret set",
            "apply",
            "apply",
            "token create",
            "apply",
            "token create",
            "cluster init"
        ],
        "{out}"
    );
    // A refused write never reached Raft as a write, but is recorded with its reason.
    let refused = &records[1];
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{refused}"
    );
    assert!(refused["changes"].as_array().unwrap().is_empty(), "{refused}");
    // The tenant admin's apply: who, when, what, versions before and after.
    let by_alice = &records[2];
    assert_eq!(by_alice["actor_label"], "alice");
    assert_eq!(by_alice["actor_role"], "tenant-admin");
    assert!(by_alice["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let change = &by_alice["changes"][0];
    assert_eq!(
        (
            change["kind"].as_str(),
            change["name"].as_str(),
            change["action"].as_str()
        ),
        (Some("upstream"), Some("be"), Some("updated"))
    );
    assert!(change["version_before"].as_u64().unwrap() < change["version_after"].as_u64().unwrap());
    assert_eq!(change["version_after"], by_alice["index"]);
    assert_eq!(records[6]["actor_token"], "bootstrap");
    // The secret's value is nowhere in the audit log.
    assert!(!out.contains("\"v\""));
    // So is a call refused for want of permission: who tried what, and why not.
    let elsewhere = sb.file("b.yaml", "apps: [{name: sneaky, tenant: b}]");
    assert_ne!(as_token(&mut sb, &admin_a, &["apply", "-f", &elsewhere]).code, 0);
    let out = sb.cli(0, &["audit", "--limit", "1", "-o", "json"]).ok().stdout;
    let denied: serde_json::Value = serde_json::from_str(&out).unwrap();
    let denied = &denied[0];
    assert_eq!(
        (denied["action"].as_str(), denied["actor_label"].as_str()),
        (Some("apply"), Some("alice")),
        "{out}"
    );
    assert!(denied["error"].as_str().unwrap().contains("cannot"), "{out}");
    // One refused by the state machine is recorded with its reason too.
    let conflict = sb.file(
        "stale.yaml",
        "apps: [{name: web, tenant: b, resource_version: 999}]",
    );
    assert_eq!(sb.cli(0, &["apply", "-f", &conflict]).code, 5);
    let out = sb.cli(0, &["audit", "--limit", "1", "-o", "json"]).ok().stdout;
    assert!(out.contains("does not match the stored version"), "{out}");
    // A tenant admin sees only its tenant's records.
    let out = as_token(&mut sb, &admin_a, &["audit", "-o", "json"]).ok().stdout;
    let records: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenants"].as_array().unwrap().iter().any(|t| t == "a")),
        "{out}"
    );
    let table = sb.cli(0, &["audit"]).ok().stdout;
    assert!(
        table.starts_with("VERSION") && table.contains("alice (tenant-admin"),
        "{table}"
    );
}
