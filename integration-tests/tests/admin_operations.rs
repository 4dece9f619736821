//! Operator verbs beyond apply: keys, subscriptions, secrets, tokens and cluster membership,
//! through the real CLI.

use std::time::Duration;

use tollgate_integration_tests::{wait_for, Sandbox};

const BASE: &str = r#"
tenants: [{name: acme}]
upstreams: [{name: be, tenant: acme, targets: [{url: "http://127.0.0.1:9001"}]}]
services: [{name: orders, tenant: acme, approval: manual, auth: [api_key], upstream: be, routes: [{paths: [/orders]}]}]
apps: [{name: mobile, tenant: acme}]
subscriptions: [{app: mobile, service: orders, tenant: acme}]
"#;

/// Every file under `dir`, read raw.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn keys_subscriptions_and_secrets() {
    let sb = Sandbox::cluster(1);
    sb.cli(0, &["apply", "-f", &sb.file("base.yaml", BASE)]).ok();

    // Keys: shown once, prefixed, listed without their hash.
    let out = sb
        .cli(
            0,
            &[
                "key", "create", "--app", "mobile", "--tenant", "acme", "-o", "json",
            ],
        )
        .ok()
        .stdout;
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("tgk_") && key.len() > 60, "{key}");
    let listed = sb
        .cli(0, &["get", "api_key", "--tenant", "acme", "-o", "json"])
        .ok()
        .stdout;
    assert!(listed.contains(&id) && !listed.contains(&key[4..]), "{listed}");
    let out = sb.cli(0, &["key", "create", "--app", "nope", "--tenant", "acme"]);
    assert_eq!(out.code, 1, "keys need an existing app: {out:?}");
    assert!(out.stderr.contains("references app acme/nope"), "{out:?}");

    // Subscriptions: approve and reject.
    sb.cli(
        0,
        &["subscription", "approve", "mobile:orders", "--tenant", "acme"],
    )
    .ok();
    let sub = sb
        .cli(0, &["get", "subscription", "--tenant", "acme"])
        .ok()
        .stdout;
    assert!(sub.contains("approved"), "{sub}");
    sb.cli(
        0,
        &["subscription", "reject", "mobile:orders", "--tenant", "acme"],
    )
    .ok();
    let sub = sb
        .cli(0, &["get", "subscription", "--tenant", "acme"])
        .ok()
        .stdout;
    assert!(sub.contains("rejected"), "{sub}");
    assert_eq!(
        sb.cli(
            0,
            &["subscription", "approve", "mobile:nothing", "--tenant", "acme"]
        )
        .code,
        4
    );

    // Secrets: stored sealed, never exported or shown, never on disk in plaintext.
    let secret = "sk-live-b4f2e9c1d7a8";
    sb.cli_with_stdin(
        0,
        &["secret", "set", "openai-key", "--tenant", "acme"],
        Some(&format!("{secret}\n")),
    )
    .ok();
    let shown = sb
        .cli(0, &["get", "secret", "--tenant", "acme", "-o", "json"])
        .ok()
        .stdout;
    assert!(shown.contains("openai-key") && !shown.contains(secret), "{shown}");
    assert!(!sb.cli(0, &["export"]).ok().stdout.contains("openai-key"));
    // Revoke the key by id; a second revoke is "not found".
    sb.cli(0, &["key", "revoke", &id, "--tenant", "acme"]).ok();
    assert_eq!(sb.cli(0, &["key", "revoke", &id, "--tenant", "acme"]).code, 4);

    // Nothing secret is anywhere in the node's files: not the secret, not the API key, not
    // the admin token (only admin.token, written for the operator, holds the token).
    let node_dir = &sb.nodes[0].dir;
    let mut raft = all_bytes(&node_dir.join("raft"));
    raft.extend(std::fs::read(node_dir.with_extension("log")).unwrap_or_default());
    for (what, plain) in [
        ("secret", secret),
        ("api key", key.as_str()),
        ("admin token", sb.token.as_str()),
    ] {
        assert!(
            !contains(&raft, plain.as_bytes()),
            "the {what} is stored or logged in plaintext"
        );
    }
    assert!(sb.nodes[0].master_key.exists());
}

#[test]
fn admin_calls_need_a_valid_token() {
    let mut sb = Sandbox::cluster(1);
    // No default credentials: a second init is refused and creates no token.
    let out = sb.cli(0, &["cluster", "init"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("already initialized"), "{out:?}");
    let token = std::mem::take(&mut sb.token);
    let out = sb.cli(0, &["get", "tenants"]);
    assert_eq!(out.code, 3, "no token: {out:?}");
    assert!(out.stderr.contains("missing token"), "{out:?}");
    sb.token = "tga_0000000000000000000000000000000000000000000000000000000000000000".into();
    let out = sb.cli(0, &["get", "tenants"]);
    assert_eq!(out.code, 3, "wrong token: {out:?}");
    assert!(out.stderr.contains("invalid token"), "{out:?}");
    sb.token = token;
    sb.cli(0, &["get", "tenants"]).ok();
    // An unreachable server is one line and exit code 6.
    sb.nodes[0].kill();
    let out = sb.cli(0, &["get", "tenants"]);
    assert_eq!(out.code, 6, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

#[test]
fn membership_changes_from_the_cli() {
    let mut sb = Sandbox::cluster(1);
    // A node can join by itself with --join (the same as cluster add-node).
    sb.add_node_process(2);
    sb.cli(
        0,
        &[
            "cluster",
            "add-node",
            "--node-id",
            "2",
            "--addr",
            &sb.nodes[1].grpc.to_string(),
            "--learner",
        ],
    )
    .ok();
    let status = sb.cli(1, &["cluster", "status", "-o", "json"]).ok().stdout;
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(s["nodes"][1]["role"], "learner", "{status}");
    assert_eq!(s["nodes"][1]["voter"], false, "{status}");
    // Promote by adding it again as a voter, then remove it.
    sb.cli(
        0,
        &[
            "cluster",
            "add-node",
            "--node-id",
            "2",
            "--addr",
            &sb.nodes[1].grpc.to_string(),
        ],
    )
    .ok();
    let status = sb.cli(0, &["cluster", "status", "-o", "json"]).ok().stdout;
    assert!(
        status.contains("\"voter\": true") && !status.contains("learner"),
        "{status}"
    );
    // A write through the new node reaches the leader.
    sb.cli(1, &["apply", "-f", &sb.file("t.yaml", "tenants: [{name: t1}]")])
        .ok();
    sb.cli(0, &["cluster", "remove-node", "--node-id", "2"]).ok();
    wait_for("node 2 to leave", Duration::from_secs(10), || {
        let s = sb.cli(0, &["cluster", "status", "-o", "json"]).ok().stdout;
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        (v["nodes"].as_array().unwrap().len() == 1).then_some(())
    });
    assert_eq!(sb.cli(0, &["cluster", "remove-node", "--node-id", "9"]).code, 4);
    let table = sb.cli(0, &["cluster", "status"]).ok().stdout;
    assert!(table.contains("leader") && table.contains("edges (0)"), "{table}");
    let _ = sb.node(2);
}

#[test]
fn tokens_have_roles_and_the_last_admin_token_stays() {
    let mut sb = Sandbox::cluster(1);
    // The sandbox created an edge token: it may stream config but not administer.
    let admin = std::mem::replace(&mut sb.token, sb.edge_token.clone());
    let out = sb.cli(0, &["get", "tenants"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("a edge token cannot do this") || out.stderr.contains("edge token"),
        "{out:?}"
    );
    sb.token = admin;

    let out = sb
        .cli(
            0,
            &[
                "token",
                "create",
                "--role",
                "cluster-admin",
                "--label",
                "ci",
                "-o",
                "json",
            ],
        )
        .ok();
    let created: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let second = created["token"].as_str().unwrap().to_string();
    assert!(second.starts_with("tga_"));
    let list = sb.cli(0, &["token", "list", "-o", "json"]).ok().stdout;
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(
        !serde_json::to_string(&list).unwrap().contains(&second[4..]),
        "tokens are never listed"
    );
    let bootstrap_id = list.iter().find(|t| t["label"] == "bootstrap").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let second_id = created["id"].as_str().unwrap().to_string();

    // Revoke the bootstrap token using the second; then the second is the last admin token.
    sb.token = second;
    sb.cli(0, &["token", "revoke", &bootstrap_id]).ok();
    let out = sb.cli(0, &["token", "revoke", &second_id]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("last cluster-admin token"), "{out:?}");
    let bootstrap = std::fs::read_to_string(sb.nodes[0].dir.join("admin.token")).unwrap();
    sb.token = bootstrap.trim().to_string();
    assert_eq!(
        sb.cli(0, &["get", "tenants"]).code,
        3,
        "a revoked token still works"
    );
    let out = sb.cli(0, &["token", "create", "--role", "root"]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_calls_without_the_cluster_credential_are_refused() {
    use tollgate_proto::v1::raft_client::RaftClient;
    use tollgate_proto::v1::RaftPayload;
    let sb = Sandbox::cluster(1);
    let term_before = {
        let s = sb.cli(0, &["cluster", "status", "-o", "json"]).ok().stdout;
        serde_json::from_str::<serde_json::Value>(&s).unwrap()["nodes"][0]["term"]
            .as_u64()
            .unwrap()
    };
    // A vote request with a huge term would depose the leader if it were believed.
    let vote = serde_json::json!({
        "vote": {"leader_id": {"term": 1_000_000, "node_id": 99}, "committed": false},
        "last_log_id": null
    });
    let mut client = RaftClient::connect(sb.nodes[0].url()).await.unwrap();
    for credential in [None, Some("00".repeat(32))] {
        let mut req = tonic::Request::new(RaftPayload {
            json: vote.to_string().into_bytes(),
            ..Default::default()
        });
        if let Some(c) = credential {
            req.metadata_mut()
                .insert("x-tollgate-cluster", c.parse().unwrap());
        }
        let err = client.vote(req).await.expect_err("an unauthenticated vote");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    }
    let s = sb.cli(0, &["cluster", "status", "-o", "json"]).ok().stdout;
    let s: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(s["nodes"][0]["term"].as_u64().unwrap(), term_before);
    assert_eq!(s["nodes"][0]["role"], "leader");
}

#[test]
fn a_node_with_another_master_key_cannot_join() {
    let mut sb = Sandbox::cluster(1);
    sb.add_node_process(2);
    // Give node 2 its own master key, as if the operator forgot to copy the cluster's.
    sb.nodes[1].kill();
    sb.nodes[1].master_key = sb.nodes[1].dir.join("own.key");
    sb.nodes[1].start();
    let started = std::time::Instant::now();
    let out = sb.cli(
        0,
        &[
            "cluster",
            "add-node",
            "--node-id",
            "2",
            "--addr",
            &sb.nodes[1].grpc.to_string(),
        ],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("must use the same master key file"),
        "{out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal should be quick"
    );
    // A wrong node id at that address is caught too.
    let out = sb.cli(
        0,
        &[
            "cluster",
            "add-node",
            "--node-id",
            "7",
            "--addr",
            &sb.nodes[0].grpc.to_string(),
        ],
    );
    assert!(out.stderr.contains("is node 1, not node 7"), "{out:?}");
}
