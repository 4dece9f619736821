//! `tollgate secret rotate-master` on a real three-node cluster, with an edge verifying HS256
//! JWTs whose key is a secret of the cluster, and writes going on throughout: a rolling
//! restart gives every node the next key, the rotation seals every secret again with it and
//! switches the cluster's credentials, and a second rolling restart leaves only the new key
//! (the old file deleted). Nothing is refused on the way, and a new edge then gets the
//! secret opened with the new key.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_integration_tests::edge::{EdgeNode, Upstream};
use tollgate_integration_tests::idp::{mint, unix_now, MintRequest};
use tollgate_integration_tests::{wait_for, Sandbox};

const HS_KEY: &str = "an HS256 key of the cluster, long enough for HMAC";
const ISSUER: &str = "https://idp.test";

fn config(upstream: &str) -> String {
    format!(
        r#"
tenants: [{{name: acme}}]
upstreams: [{{name: be, tenant: acme, targets: [{{url: "{upstream}"}}]}}]
services:
  - {{name: orders, tenant: acme, upstream: be, auth: [jwt], routes: [{{paths: [/orders]}}]}}
apps: [{{name: mobile, tenant: acme}}]
subscriptions: [{{app: mobile, service: orders, tenant: acme}}]
jwt_issuers:
  - {{name: idp, tenant: acme, issuer: "{ISSUER}", hs_secret: hs-key, audiences: [orders], algorithms: [HS256]}}
"#
    )
}

fn token() -> String {
    let now = unix_now();
    let claims = json!({"iss": ISSUER, "sub": "mobile", "aud": "orders", "iat": now, "exp": now + 600});
    mint(&[MintRequest::HmacWith {
        secret: HS_KEY.into(),
        claims,
    }])[0]
        .as_str()
        .unwrap()
        .to_string()
}

fn served(edge: &EdgeNode, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    edge.request("GET", "/orders", &[("authorization", &auth)]).status
}

/// A write through node `i` goes through (bounded wait, for elections after a restart).
fn write_through(sb: &Sandbox, i: usize, n: &str) {
    let file = sb.file(
        &format!("{n}.yaml"),
        &format!("apps: [{{name: {n}, tenant: acme}}]"),
    );
    wait_for(
        &format!("write {n} through node {}", i + 1),
        Duration::from_secs(20),
        || (sb.cli(i, &["apply", "-f", &file]).code == 0).then_some(()),
    );
}

/// Every node holds what the leader holds (a node its peers' Raft calls were refused by would
/// fall behind).
fn converged(sb: &Sandbox) {
    let want = sb.cli(0, &["export", "-o", "json"]).ok().stdout;
    for i in 0..sb.nodes.len() {
        wait_for(
            &format!("node {} to catch up", i + 1),
            Duration::from_secs(15),
            || (sb.cli(i, &["export", "--local", "-o", "json"]).stdout == want).then_some(()),
        );
    }
}

/// Restarts every node in turn, changing its flags with `change`, with a write after each and
/// every node in step.
fn rolling_restart(
    sb: &mut Sandbox,
    nodes: std::ops::Range<usize>,
    what: &str,
    change: impl Fn(&mut tollgate_integration_tests::CpNode),
) {
    for i in nodes {
        sb.nodes[i].kill();
        change(&mut sb.nodes[i]);
        sb.nodes[i].start();
        write_through(sb, (i + 1) % 3, &format!("{what}-{i}"));
        converged(sb);
    }
}

#[test]
fn the_master_key_rotates_without_downtime() {
    let upstream = Upstream::start();
    let mut sb = Sandbox::cluster(3);
    sb.cli(
        0,
        &["apply", "-f", &sb.file("tenant.yaml", "tenants: [{name: acme}]")],
    )
    .ok();
    sb.cli_with_stdin(0, &["secret", "set", "hs-key", "--tenant", "acme"], Some(HS_KEY))
        .ok();
    sb.cli(
        0,
        &["apply", "-f", &sb.file("config.yaml", &config(&upstream.url()))],
    )
    .ok();
    let edge = EdgeNode::start(&sb, "e1");
    let jwt = token();
    wait_for(
        "the edge to verify the HS256 token",
        Duration::from_secs(20),
        || (served(&edge, &jwt) == 200).then_some(()),
    );

    let old_key = sb.nodes[0].master_key.clone();
    let new_key = sb.dir.path().join("next.key");
    std::fs::write(&new_key, format!("{}\n", "5a".repeat(32))).unwrap();
    let new_arg = new_key.display().to_string();

    // Before every node holds the next key, the rotation is refused and changes nothing.
    let out = sb.cli(0, &["secret", "rotate-master"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("--next-master-key-file"), "{out:?}");

    // 1. Every node learns the next key. While one still lacks it, the rotation is refused
    // (by the leader, whichever node that is: it lacks the key itself, or a member does).
    let learn = |n: &mut tollgate_integration_tests::CpNode| {
        n.extra_args = vec!["--next-master-key-file".into(), new_arg.clone()];
    };
    rolling_restart(&mut sb, 0..2, "next", learn);
    // Make a node that holds the next key the leader (restart the third, as it was), so the
    // leader's check of the other members is what refuses.
    sb.nodes[2].kill();
    write_through(&sb, 0, "while-third-down");
    sb.nodes[2].start();
    converged(&sb);
    let out = sb.cli(0, &["secret", "rotate-master"]);
    assert!(
        out.code != 0
            && out.stderr.contains("node 3")
            && out.stderr.contains("does not hold the next master key"),
        "{out:?}"
    );
    rolling_restart(&mut sb, 2..3, "next", learn);
    assert_eq!(served(&edge, &jwt), 200);

    // 2. The rotation.
    let out = sb.cli(1, &["secret", "rotate-master", "-o", "json"]).ok().stdout;
    let rotated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rotated["secrets"], 1, "{out}");
    assert_ne!(rotated["from_key_id"], rotated["to_key_id"], "{out}");
    let again = sb.cli(0, &["secret", "rotate-master"]);
    assert!(
        again.code != 0 && again.stderr.contains("already uses"),
        "{again:?}"
    );
    write_through(&sb, 2, "after-rotation");
    converged(&sb);
    sb.cli_with_stdin(
        0,
        &["secret", "set", "later", "--tenant", "acme"],
        Some("sealed with the new key"),
    )
    .ok();
    assert_eq!(served(&edge, &jwt), 200);
    let audit = sb.cli(0, &["audit", "--limit", "20", "-o", "json"]).ok().stdout;
    assert!(audit.contains("secret rotate-master"), "{audit}");

    // 3. The old key goes: every node restarts with only the new one, then the file is
    // deleted.
    rolling_restart(&mut sb, 0..3, "new-only", |n| {
        n.extra_args.clear();
        n.master_key = new_key.clone();
    });
    std::fs::remove_file(&old_key).unwrap();
    write_through(&sb, 0, "old-key-gone");
    assert_eq!(served(&edge, &jwt), 200);

    // A new edge gets the issuer with its key opened by the new master key.
    let fresh = EdgeNode::start(&sb, "e2");
    wait_for(
        "a new edge to verify the HS256 token",
        Duration::from_secs(20),
        || (served(&fresh, &jwt) == 200).then_some(()),
    );
    let status = sb.cli(0, &["cluster", "status", "-o", "json"]).ok().stdout;
    assert!(!status.contains("unreachable"), "{status}");
}
