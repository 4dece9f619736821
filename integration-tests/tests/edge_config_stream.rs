//! Real control-plane processes, real edge processes, the real CLI: config reaches edges over
//! the config stream within a second, key and subscription decisions take effect on the
//! edges, NACKs show in `cluster status`, secrets never leave the control plane, and edges
//! keep serving their last-known-good config without a control plane, also after a restart.
//!
//! The tests take a file-wide lock: their time bounds (1 s propagation) are measured on a
//! 2-core machine and must not compete with each other for it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_integration_tests::edge::{EdgeNode, Reply, Upstream};
use tollgate_integration_tests::Sandbox;
use tollgate_proto::v1::config_stream_client::ConfigStreamClient;
use tollgate_proto::v1::edge_message::Msg;
use tollgate_proto::v1::{Ack, ConfigPush, EdgeMessage, Hello, Nack, Resource, ResourceError};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Propagation bound of DESIGN.md §5 as this suite checks it.
const PROPAGATION: Duration = Duration::from_secs(1);

/// Tenant acme: upstream -> `upstream_url`, service `orders` (api keys, route /orders,
/// approval `approval`), app `mobile` subscribed to it.
fn config(upstream_url: &str, approval: &str) -> String {
    format!(
        r#"
tenants: [{{name: acme}}]
upstreams: [{{name: orders-be, tenant: acme, targets: [{{url: "{upstream_url}"}}]}}]
services: [{{name: orders, tenant: acme, upstream: orders-be, approval: {approval}, auth: [api_key],
            routes: [{{paths: [/orders]}}]}}]
apps: [{{name: mobile, tenant: acme}}]
subscriptions: [{{app: mobile, service: orders, tenant: acme}}]
"#
    )
}

/// A second service on the same upstream, route /billing, `mobile` subscribed.
const BILLING: &str = r#"
services: [{name: billing, tenant: acme, upstream: orders-be, auth: [api_key], routes: [{paths: [/billing]}]}]
subscriptions: [{app: mobile, service: billing, tenant: acme}]
"#;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `tollgate apply -f` through node 0; returns the config version after it.
fn apply(sb: &Sandbox, yaml: &str) -> u64 {
    static N: AtomicU32 = AtomicU32::new(0);
    let file = sb.file(&format!("apply-{}.yaml", N.fetch_add(1, Ordering::SeqCst)), yaml);
    let out = sb.cli(0, &["apply", "-f", &file, "-o", "json"]).ok();
    json(&out.stdout)["version"].as_u64().expect("apply version")
}

/// `tollgate key create`: (key, id, version).
fn create_key(sb: &Sandbox, tenant: &str, app: &str) -> (String, String, u64) {
    let out = sb
        .cli(
            0,
            &["key", "create", "--app", app, "--tenant", tenant, "-o", "json"],
        )
        .ok();
    let v = json(&out.stdout);
    let key = v["key"].as_str().expect("key").to_string();
    let id = v["id"].as_str().expect("key id").to_string();
    assert!(key.starts_with("tgk_"), "{v}");
    (key, id, v["version"].as_u64().expect("key version"))
}

fn cluster_status(sb: &Sandbox) -> Value {
    json(&sb.cli(0, &["cluster", "status", "-o", "json"]).ok().stdout)
}

fn edge_in<'a>(status: &'a Value, node_id: &str) -> Option<&'a Value> {
    status["edges"]
        .as_array()?
        .iter()
        .find(|e| e["node_id"] == node_id)
}

/// Polls `cluster status` (bounded) until `ok` holds; returns that status.
fn status_until(sb: &Sandbox, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = cluster_status(sb);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last status: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `probe` every 10 ms until it succeeds; asserts that took at most `limit` (gives up
/// after 5 s, reporting the last observation). Returns the time it took.
fn within(what: &str, limit: Duration, mut probe: impl FnMut() -> Result<(), String>) -> Duration {
    let started = Instant::now();
    let give_up = limit.max(Duration::from_secs(5));
    loop {
        let last = match probe() {
            Ok(()) => break,
            Err(e) => e,
        };
        assert!(
            started.elapsed() < give_up,
            "{what}: not within {give_up:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = started.elapsed();
    eprintln!("{what}: {took:?}");
    assert!(took <= limit, "{what} took {took:?}, more than {limit:?}");
    took
}

fn expect_status(r: Reply, status: u16) -> Result<Reply, String> {
    if r.status == status {
        Ok(r)
    } else {
        Err(format!("{} {}", r.status, r.body))
    }
}

/// Asserts a JSON error answer with `status` and `code`, and a request id.
fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.error_code(), code, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()), "{r:?}");
}

#[test]
fn config_reaches_two_edges_within_a_second_and_status_shows_acks() {
    let _serial = serial();
    let sb = Sandbox::cluster(1);
    let up = Upstream::start();
    let edges = [EdgeNode::start(&sb, "edge-a"), EdgeNode::start(&sb, "edge-b")];
    apply(&sb, &config(&up.url(), "auto"));
    let (key, _, key_version) = create_key(&sb, "acme", "mobile");
    for e in &edges {
        e.wait_for_version(key_version, Duration::from_secs(10));
    }

    for e in &edges {
        // The key in `apikey`: forwarded with the consumer, without the credential; a
        // client's own x-consumer-* header is not trusted.
        let r = e.request(
            "GET",
            "/orders/42?x=1",
            &[("apikey", &key), ("x-consumer-app", "spoofed")],
        );
        assert_eq!(r.status, 200, "{}: {r:?}", e.node_id);
        assert!(r.header("x-request-id").is_some(), "{r:?}");
        let seen = r.json();
        assert_eq!(seen["method"], "GET", "{seen}");
        assert_eq!(seen["path"], "/orders/42?x=1", "{seen}");
        let h = r.upstream_headers();
        assert_eq!(h.get("x-consumer-app"), Some(&Value::from("mobile")), "{seen}");
        assert_eq!(h.get("x-consumer-tenant"), Some(&Value::from("acme")), "{seen}");
        assert!(
            !h.contains_key("apikey"),
            "the api key reached the upstream: {seen}"
        );
        assert!(h.contains_key("x-request-id"), "{seen}");

        // The key as a bearer token.
        let bearer = format!("Bearer {key}");
        let r = e.request("GET", "/orders", &[("authorization", &bearer)]);
        assert_eq!(r.status, 200, "{r:?}");
        let h = r.upstream_headers();
        assert_eq!(h.get("x-consumer-app"), Some(&Value::from("mobile")), "{r:?}");
        assert!(
            !h.contains_key("authorization"),
            "the bearer key reached the upstream: {r:?}"
        );

        assert_error(&e.request("GET", "/orders", &[]), 401, "missing_credential");
        let wrong = format!("{}0", &key[..key.len() - 1]);
        let wrong = if wrong == key {
            format!("{}1", &key[..key.len() - 1])
        } else {
            wrong
        };
        assert_error(&e.get_with_key("/orders", &wrong), 401, "invalid_credential");
        assert_error(&e.get_with_key("/nowhere", &key), 404, "no_route");
        assert_error(&e.get_with_key("/billing", &key), 404, "no_route");
    }
    // Refused requests never reached the upstream.
    assert_eq!(up.requests().len(), 4, "{:#?}", up.requests());

    // A change reaches both edges within a second of the commit.
    let version = apply(&sb, BILLING);
    let committed = Instant::now();
    let mut served = [None, None];
    loop {
        for (i, e) in edges.iter().enumerate() {
            if served[i].is_none() && e.get_with_key("/billing/1", &key).status == 200 {
                served[i] = Some(committed.elapsed());
            }
        }
        if served.iter().all(Option::is_some) {
            break;
        }
        assert!(
            committed.elapsed() < Duration::from_secs(5),
            "the new route was not served by both edges within 5s: {served:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("new route served {served:?} after the apply returned (edge-a, edge-b)");
    for (e, t) in edges.iter().zip(served) {
        let t = t.expect("measured");
        assert!(t <= PROPAGATION, "{} served the change after {t:?}", e.node_id);
        assert_eq!(e.config_version(), Some(version), "{}", e.node_id);
    }

    // Status: both edges connected to node 1, acked the cluster's version, no lag.
    let status = status_until(&sb, "both edges acked", Duration::from_secs(5), |s| {
        ["edge-a", "edge-b"].iter().all(|id| {
            edge_in(s, id).is_some_and(|e| {
                e["connected"] == true && e["applied_version"] == s["version"] && e["lag"] == 0
            })
        })
    });
    assert_eq!(status["version"], version, "{status:#}");
    assert_eq!(status["edges"].as_array().map(Vec::len), Some(2), "{status:#}");
    for id in ["edge-a", "edge-b"] {
        let e = edge_in(&status, id).expect("listed");
        assert_eq!(e["cp_node"], 1, "{status:#}");
        assert_eq!(e["last_nack"], "", "{status:#}");
        assert!(e["last_contact_ms"].as_u64().is_some_and(|t| t > 0), "{status:#}");
    }
}

#[test]
fn key_revocation_and_subscription_decisions_reach_edges() {
    let _serial = serial();
    let sb = Sandbox::cluster(1);
    let up = Upstream::start();
    let edge = EdgeNode::start(&sb, "edge-m");
    apply(&sb, &config(&up.url(), "manual"));
    let (key1, id1, v) = create_key(&sb, "acme", "mobile");
    edge.wait_for_version(v, Duration::from_secs(10));
    assert_error(&edge.get_with_key("/orders", &key1), 403, "subscription_pending");

    sb.cli(
        0,
        &["subscription", "approve", "mobile:orders", "--tenant", "acme"],
    )
    .ok();
    within("approval to reach the edge", PROPAGATION, || {
        expect_status(edge.get_with_key("/orders", &key1), 200).map(drop)
    });

    let (key2, _, v2) = create_key(&sb, "acme", "mobile");
    edge.wait_for_version(v2, Duration::from_secs(5));
    assert_eq!(edge.get_with_key("/orders", &key2).status, 200);

    sb.cli(0, &["key", "revoke", &id1, "--tenant", "acme"]).ok();
    within("key revocation to reach the edge", PROPAGATION, || {
        expect_status(edge.get_with_key("/orders", &key1), 401).map(drop)
    });
    assert_error(&edge.get_with_key("/orders", &key1), 401, "invalid_credential");
    assert_eq!(
        edge.get_with_key("/orders", &key2).status,
        200,
        "the other key still works"
    );

    sb.cli(
        0,
        &["subscription", "reject", "mobile:orders", "--tenant", "acme"],
    )
    .ok();
    within("rejection to reach the edge", PROPAGATION, || {
        expect_status(edge.get_with_key("/orders", &key2), 403).map(drop)
    });
    assert_error(&edge.get_with_key("/orders", &key2), 403, "not_subscribed");
    // Only the three 200s above reached the upstream.
    assert_eq!(up.requests().len(), 3, "{:#?}", up.requests());
}

/// Checks what a push carries: never a secret (kind or value), never a plaintext API key.
fn assert_nothing_secret(upserts: &[Resource], secrets: &[&str]) {
    for r in upserts {
        assert_ne!(r.kind, "secret", "a secret was streamed: {r:?}");
        for s in secrets {
            assert!(!r.spec_json.contains(s), "{s:?} was streamed in {r:?}");
        }
    }
}

async fn next_push(pushes: &mut tonic::Streaming<ConfigPush>, timeout: Duration) -> Option<ConfigPush> {
    match tokio::time::timeout(timeout, pushes.message()).await {
        Err(_) => None,
        Ok(Ok(Some(p))) => Some(p),
        Ok(Ok(None)) => panic!("the control plane closed the config stream"),
        Ok(Err(e)) => panic!("config stream failed: {e}"),
    }
}

async fn say(tx: &tokio::sync::mpsc::Sender<EdgeMessage>, msg: Msg) {
    tx.send(EdgeMessage { msg: Some(msg) })
        .await
        .expect("the stream's request side is open");
}

#[test]
fn edge_nacks_a_config_it_cannot_apply_and_status_shows_it() {
    let _serial = serial();
    let sb = Sandbox::cluster(1);
    apply(&sb, &config("http://127.0.0.1:9", "auto"));
    let (key, _, _) = create_key(&sb, "acme", "mobile");
    let secret1 = "sk-first-secret-value-8c1f";
    let secret2 = "sk-rotated-secret-value-77ad";
    sb.cli_with_stdin(
        0,
        &["secret", "set", "openai-key", "--tenant", "acme"],
        Some(secret1),
    )
    .ok();
    let secrets = [secret1, secret2, key.as_str()];
    let snapshot_version = cluster_status(&sb)["version"].as_u64().expect("version");
    let url = sb.nodes[0].url();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut client = ConfigStreamClient::connect(url).await.expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let hello = Hello {
            node_id: "fake-edge".into(),
            capabilities: vec!["http1".into()],
            last_version: 0,
            proxy_addr: String::new(),
            peer_addr: String::new(),
        };
        say(&tx, Msg::Hello(hello)).await;
        // Without a token (or with a wrong one) the stream is refused.
        for auth in [None, Some("Bearer tge_0000")] {
            let (_tx, rx) = tokio::sync::mpsc::channel::<EdgeMessage>(1);
            let mut req = tonic::Request::new(ReceiverStream::new(rx));
            if let Some(a) = auth {
                req.metadata_mut().insert("authorization", a.parse().unwrap());
            }
            let err = client
                .stream(req)
                .await
                .expect_err("a stream without a valid token");
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
        }
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", sb.edge_token).parse().unwrap(),
        );
        let mut pushes = client.stream(req).await.expect("stream").into_inner();

        // First the peer list for counter sharing: no nonce, no config, the cluster's peer
        // key; this edge announced no peer address, so it is not listed.
        let peers = next_push(&mut pushes, Duration::from_secs(5))
            .await
            .expect("the peer list within 5s");
        let list = peers.peers.clone().expect("a peer list first");
        assert!(peers.nonce.is_empty() && peers.upserts.is_empty(), "{peers:?}");
        assert_eq!(list.key.len(), 64, "{list:?}");
        assert!(list.edges.iter().all(|e| e.node_id != "fake-edge"), "{list:?}");
        // Then the quota usage the control plane holds (none yet), also not acked.
        let usage = next_push(&mut pushes, Duration::from_secs(5))
            .await
            .expect("the quota usage within 5s");
        assert!(usage.nonce.is_empty() && usage.peers.is_none(), "{usage:?}");
        assert_eq!(usage.usage.map(|u| u.entries.len()), Some(0));

        // Then the whole config as a snapshot: chunks in order, one nonce, the checksum on
        // the last chunk covering all of them.
        let mut all: Vec<Resource> = Vec::new();
        let first = next_push(&mut pushes, Duration::from_secs(5))
            .await
            .expect("a snapshot within 5s");
        let (nonce, version) = (first.nonce.clone(), first.version);
        let mut push = first;
        loop {
            assert!(push.snapshot, "{push:?}");
            assert_eq!((push.nonce.as_str(), push.version), (nonce.as_str(), version));
            assert_eq!(push.base_version, 0);
            all.extend(push.upserts.iter().cloned());
            if push.chunk + 1 == push.chunks {
                assert_eq!(
                    push.checksum,
                    tollgate_proto::stream::checksum(&all, &[]),
                    "snapshot checksum"
                );
                break;
            }
            assert!(push.checksum.is_empty(), "checksum only on the last chunk");
            let next = next_push(&mut pushes, Duration::from_secs(5)).await;
            let next = next.expect("the next snapshot chunk");
            assert_eq!(next.chunk, push.chunk + 1, "chunks in order");
            push = next;
        }
        assert_eq!(version, snapshot_version);
        assert_nothing_secret(&all, &secrets);
        let kinds: Vec<&str> = all.iter().map(|r| r.kind.as_str()).collect();
        for k in ["tenant", "upstream", "service", "app", "subscription", "api_key"] {
            assert!(kinds.contains(&k), "no {k} in the snapshot: {kinds:?}");
        }
        say(&tx, Msg::Ack(Ack { nonce, version })).await;
        let mut acked = version;

        tokio::task::block_in_place(|| {
            status_until(&sb, "the fake edge's ack", Duration::from_secs(5), |s| {
                edge_in(s, "fake-edge").is_some_and(|e| {
                    e["connected"] == true && e["applied_version"] == version && e["lag"] == 0
                })
            });
        });

        // A secret change, then a change the fake edge will refuse.
        let refused_version = tokio::task::block_in_place(|| {
            sb.cli_with_stdin(
                0,
                &["secret", "set", "openai-key", "--tenant", "acme"],
                Some(secret2),
            )
            .ok();
            apply(&sb, "apps: [{name: web, tenant: acme}]")
        });
        let mut deltas = 0;
        loop {
            let p = next_push(&mut pushes, Duration::from_secs(5))
                .await
                .expect("a delta within 5s");
            deltas += 1;
            assert!(!p.snapshot, "a delta, not a snapshot: {p:?}");
            assert_eq!(
                p.base_version, acked,
                "the delta starts at the acked version: {p:?}"
            );
            assert!(p.version > acked, "{p:?}");
            assert_eq!(
                p.checksum,
                tollgate_proto::stream::checksum(&p.upserts, &p.removals),
                "delta checksum: {p:?}"
            );
            assert_nothing_secret(&p.upserts, &secrets);
            assert!(p.removals.iter().all(|k| k.kind != "secret"), "{p:?}");
            if p.version < refused_version {
                // The secret change alone: nothing the edge holds changed.
                say(
                    &tx,
                    Msg::Ack(Ack {
                        nonce: p.nonce,
                        version: p.version,
                    }),
                )
                .await;
                acked = p.version;
                continue;
            }
            assert_eq!(p.version, refused_version, "{p:?}");
            assert!(
                p.upserts.iter().any(|r| r.kind == "app" && r.name == "web"),
                "the delta carries the new app: {p:?}"
            );
            let error = ResourceError {
                kind: "app".into(),
                tenant: "acme".into(),
                name: "web".into(),
                message: "fake-edge cannot compile this app".into(),
            };
            let nack = Nack {
                nonce: p.nonce,
                version: p.version,
                errors: vec![error],
            };
            say(&tx, Msg::Nack(nack)).await;
            break;
        }
        eprintln!("{deltas} delta(s) after the secret change and the refused apply");

        let status = tokio::task::block_in_place(|| {
            status_until(&sb, "the NACK in cluster status", Duration::from_secs(5), |s| {
                edge_in(s, "fake-edge")
                    .is_some_and(|e| e["last_nack"].as_str().is_some_and(|n| !n.is_empty()))
            })
        });
        let e = edge_in(&status, "fake-edge").expect("listed");
        let last_nack = e["last_nack"].as_str().unwrap_or_default();
        assert!(
            last_nack.contains("fake-edge cannot compile this app"),
            "{status:#}"
        );
        assert!(last_nack.contains("web"), "{status:#}");
        assert_eq!(
            e["applied_version"], acked,
            "a NACK keeps the old version: {status:#}"
        );
        assert_eq!(e["connected"], true, "{status:#}");
        assert_eq!(e["lag"].as_u64(), Some(refused_version - acked), "{status:#}");

        // The refused version is not pushed again...
        let again = next_push(&mut pushes, Duration::from_millis(500)).await;
        assert!(again.is_none(), "the refused config was pushed again: {again:?}");
        // ...but the next change is, from the version the edge still holds.
        let fixed = tokio::task::block_in_place(|| apply(&sb, "apps: [{name: web2, tenant: acme}]"));
        let p = next_push(&mut pushes, Duration::from_secs(5))
            .await
            .expect("a delta after the next change");
        assert!(
            !p.snapshot && p.base_version == acked && p.version == fixed,
            "{p:?}"
        );
        assert_eq!(
            p.checksum,
            tollgate_proto::stream::checksum(&p.upserts, &p.removals)
        );
        let names: Vec<&str> = p.upserts.iter().map(|r| r.name.as_str()).collect();
        assert!(names.contains(&"web") && names.contains(&"web2"), "{names:?}");
        assert_nothing_secret(&p.upserts, &secrets);
        say(
            &tx,
            Msg::Ack(Ack {
                nonce: p.nonce,
                version: p.version,
            }),
        )
        .await;
        tokio::task::block_in_place(|| {
            status_until(&sb, "the ack after the NACK", Duration::from_secs(5), |s| {
                edge_in(s, "fake-edge").is_some_and(|e| e["applied_version"] == fixed && e["lag"] == 0)
            });
        });
    });
}

#[test]
fn edges_keep_serving_when_the_control_plane_dies_and_after_their_own_restart() {
    let _serial = serial();
    let mut sb = Sandbox::cluster(1);
    let up = Upstream::start();
    let mut edge = EdgeNode::start(&sb, "edge-lkg");
    let other = EdgeNode::start(&sb, "edge-other");
    apply(&sb, &config(&up.url(), "auto"));
    let (key, _, version) = create_key(&sb, "acme", "mobile");
    edge.wait_for_version(version, Duration::from_secs(10));
    other.wait_for_version(version, Duration::from_secs(10));
    assert_eq!(edge.get_with_key("/orders", &key).status, 200);
    // The edge acks after it saved the config: once acked, the last-known-good file is there.
    status_until(&sb, "the edge's ack", Duration::from_secs(5), |s| {
        edge_in(s, "edge-lkg").is_some_and(|e| e["applied_version"] == version)
    });
    assert!(
        edge.dir.join("lkg.json").exists(),
        "no lkg.json in {}",
        edge.dir.display()
    );

    sb.nodes[0].kill();
    for _ in 0..5 {
        for e in [&edge, &other] {
            let r = e.get_with_key("/orders", &key);
            assert_eq!(r.status, 200, "{} with the control plane gone: {r:?}", e.node_id);
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Restarted with no control plane reachable: ready at once, serving the saved config.
    edge.restart();
    assert_eq!(
        edge.readyz(),
        Some(200),
        "/readyz after a restart without control plane"
    );
    assert_eq!(edge.config_version(), Some(version));
    let r = edge.get_with_key("/orders/7", &key);
    assert_eq!(r.status, 200, "after a restart without control plane: {r:?}");
    assert_eq!(
        r.upstream_headers().get("x-consumer-app"),
        Some(&Value::from("mobile")),
        "{r:?}"
    );
    assert_error(&edge.get_with_key("/orders", ""), 401, "missing_credential");
    assert_error(&edge.get_with_key("/billing", &key), 404, "no_route");

    // The control plane comes back: the edge reconnects from its saved version and follows.
    sb.nodes[0].start();
    let deadline = Instant::now() + Duration::from_secs(15);
    let next = loop {
        let file = sb.file("billing.yaml", BILLING);
        let out = sb.cli(0, &["apply", "-f", &file, "-o", "json"]);
        if out.code == 0 {
            break json(&out.stdout)["version"].as_u64().expect("version");
        }
        assert!(Instant::now() < deadline, "apply after the restart: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = edge.wait_for_version(next, Duration::from_secs(15));
    eprintln!("edge caught up {took:?} after the control plane's restart");
    assert_eq!(edge.get_with_key("/billing", &key).status, 200);
}
