//! mTLS inside the cluster, with real processes: a CA and certificates made by the real
//! `tollgate cert`, three control-plane nodes that require client certificates of that CA
//! (Raft, forwarding, status fan-out, add-node probe all over it), the CLI over `https://`,
//! an edge with a certificate of the CA (gets config, serves traffic) and one with a
//! certificate of another CA (refused at the handshake), CLI calls without a certificate,
//! with a foreign one and in plaintext (each refused with one line and exit code 3 or 6), and
//! a node's certificate replaced in place while it runs.

use std::path::Path;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use tollgate_integration_tests::edge::{EdgeNode, Upstream};
use tollgate_integration_tests::{run_cli, run_cli_tls, tls, CliOutput, Pki, Sandbox, TlsFiles};

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Tenant acme, an open service `orders` on `/orders` proxied to `upstream`.
fn config(upstream: &str, extra_tenant: &str) -> String {
    format!(
        r#"
tenants: [{{name: acme}}, {{name: {extra_tenant}}}]
upstreams: [{{name: orders-be, tenant: acme, targets: [{{url: "{upstream}"}}]}}]
services: [{{name: orders, tenant: acme, upstream: orders-be, auth: [], routes: [{{paths: [/orders]}}]}}]
"#
    )
}

/// `tollgate apply -f` through node `i`; the config version after it.
fn apply(sb: &Sandbox, i: usize, name: &str, yaml: &str) -> u64 {
    let file = sb.file(name, yaml);
    let out = sb.cli(i, &["apply", "-f", &file, "-o", "json"]).ok();
    json(&out.stdout)["version"].as_u64().expect("apply version")
}

/// A failed CLI call: exit code 3 or 6 and exactly one `error:` line containing `reason`.
fn assert_refused(out: &CliOutput, reason: &str) {
    assert!(
        out.code == 3 || out.code == 6,
        "exit code 3 or 6 expected: {out:#?}"
    );
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {out:#?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(reason),
        "{reason:?} expected: {out:#?}"
    );
}

fn pem_certificate(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_mtls_refuses_strangers_and_rotates_certificates() {
    let started = Instant::now();
    // Certificates by `tollgate cert`; init, add-node (probe, Raft) and token create through
    // the CLI over https with the operator's certificate.
    let mut sb = Sandbox::cluster_tls(3);
    let pki = sb.pki.clone().expect("tls sandbox");
    let status = json(&sb.cli(1, &["cluster", "status", "-o", "json"]).ok().stdout);
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{status}");
    assert!(
        nodes
            .iter()
            .all(|n| n["voter"] == true && n["role"] != "unreachable"),
        "every member reachable over mTLS: {status}"
    );
    for n in &sb.nodes {
        assert!(n.url().starts_with("https://"));
    }

    // An edge with a certificate of the cluster CA gets config and serves a route. Applied
    // through node 2: forwarded to the leader over mTLS.
    let upstream = Upstream::start();
    let version = apply(&sb, 1, "v1.yaml", &config(&upstream.url(), "t1"));
    let good = EdgeNode::start(&sb, "good");
    good.wait_for_version(version, Duration::from_secs(10));
    let reply = good.request("GET", "/orders/1", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");

    // An edge with a certificate of another CA (trusting the cluster's) is refused at the
    // handshake: never ready, no config, unknown to the cluster.
    let other = Pki::create(&sb.dir.path().join("other-pki"));
    let foreign = TlsFiles {
        ca: pki.ca(),
        ..other.issue("rogue", &[])
    };
    let rogue = EdgeNode::start_with_cluster_tls(&sb, "rogue", foreign.clone());
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        assert_ne!(rogue.readyz(), Some(200), "the rogue edge became ready");
        assert!(
            rogue.config_version().unwrap_or(0) == 0,
            "the rogue edge got config"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = json(&sb.cli(0, &["cluster", "status", "-o", "json"]).ok().stdout);
    let edges: Vec<&str> = status["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node_id"].as_str())
        .collect();
    assert!(edges.contains(&"good") && !edges.contains(&"rogue"), "{status}");
    let logs: String = sb
        .nodes
        .iter()
        .map(|n| std::fs::read_to_string(n.dir.with_extension("log")).unwrap_or_default())
        .collect();
    assert!(
        logs.lines()
            .any(|l| l.contains("tls handshake refused") && l.contains("not issued by the cluster CA")),
        "the control planes log the refusal"
    );

    // The CLI without a client certificate, with a foreign one, trusting another CA, and in
    // plaintext against the TLS port: one line, exit code 3 or 6.
    let (dir, url, token) = (sb.dir.path(), sb.nodes[0].url(), Some(sb.token.as_str()));
    let ca = pki.ca().display().to_string();
    let out = run_cli(dir, &url, token, &["--tls-ca", &ca, "cluster", "status"], None);
    assert_refused(&out, "requires a client certificate");
    let out = run_cli_tls(dir, &url, token, Some(&foreign), &["cluster", "status"], None);
    assert_refused(&out, "refused our client certificate");
    let stranger = other.issue("stranger", &[]);
    let out = run_cli_tls(dir, &url, token, Some(&stranger), &["cluster", "status"], None);
    assert_refused(&out, "certificate: not issued by the cluster CA");
    let plain = format!("http://{}", sb.nodes[0].grpc);
    let out = run_cli(dir, &plain, token, &["cluster", "status"], None);
    assert_refused(&out, "https://");

    // Rotation: a follower's certificate and key are replaced in place by new ones of the
    // same CA while it runs. New connections get the new certificate...
    let leader = sb.leader().await;
    let rotated = sb.nodes.iter().position(|n| n.id != leader).expect("a follower");
    let (rotated_id, rotated_addr) = (sb.nodes[rotated].id, sb.nodes[rotated].grpc);
    let pid = sb.nodes[rotated].proc.as_ref().expect("running").pid();
    let before = pem_certificate(&pki.files(&format!("cp{rotated_id}")).cert);
    let files = pki.reissue(&format!("cp{rotated_id}"), &["127.0.0.1"]);
    let after = pem_certificate(&files.cert);
    assert_ne!(before, after);
    let ca_der = pem_certificate(&pki.ca());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = tls::connect(rotated_addr, "127.0.0.1", &ca_der, &[b"h2"])
            .await
            .map(|s| tls::served_certificate(&s))
            .expect("the rotated node answers tls");
        if served == after {
            break;
        }
        assert_eq!(served, before, "an unexpected certificate");
        assert!(
            Instant::now() < deadline,
            "node {rotated_id} still serves its old certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... a CLI call through it works ...
    sb.cli(rotated, &["cluster", "status", "-o", "json"]).ok();
    // ... and Raft over new connections: the leader is killed, the two left (one of them the
    // rotated node) elect a leader and apply, through the rotated node.
    sb.node(leader).kill();
    let new_leader = sb.leader().await;
    assert_ne!(new_leader, leader);
    let v2 = apply(&sb, rotated, "v2.yaml", &config(&upstream.url(), "t2"));
    assert!(v2 > version, "{v2} > {version}");
    good.wait_for_version(v2, Duration::from_secs(10));
    let log = std::fs::read_to_string(sb.nodes[rotated].dir.with_extension("log")).unwrap_or_default();
    assert!(
        log.contains("cluster tls certificate reloaded"),
        "the rotated node logs the reload"
    );
    assert_eq!(
        sb.nodes[rotated].proc.as_ref().map(|p| p.pid()),
        Some(pid),
        "never restarted"
    );

    drop(rogue);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
