//! Upstream balancing, health and retries end to end: a real edge (config from a fake control
//! plane) in front of loopback upstreams that tests slow down, fail or take away.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use common::{closed_port, config, Backend, TestClient, TestEdge};
use http::{Method, StatusCode};

/// Sends `n` GETs one after another; counts answers by upstream name (the body).
async fn spread(
    client: &TestClient,
    edge: &TestEdge,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let a = client.send(edge.proxy(), Method::GET, "/", headers).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        *counts.entry(a.body).or_insert(0) += 1;
    }
    counts
}

fn count(counts: &HashMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

/// Sends GETs until `done` holds for an answer, for at most `limit`.
async fn until(
    client: &TestClient,
    edge: &TestEdge,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&common::Answer) -> bool,
) {
    let started = Instant::now();
    while started.elapsed() < limit {
        let a = client.get(edge.proxy(), "/").await;
        if done(&a) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within {limit:?}: {what}");
}

#[tokio::test]
async fn round_robin_follows_weights() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let edge = TestEdge::start(&config(&[(a.url(), 3), (b.url(), 1)], "balance: round_robin")).await;
    let counts = spread(&TestClient::default(), &edge, 400, &[]).await;
    assert!((280..=320).contains(&count(&counts, "a")), "{counts:?}");
    assert_eq!(count(&counts, "a") + count(&counts, "b"), 400);
    edge.shutdown().await;
}

#[tokio::test]
async fn least_conn_sends_to_the_idle_target_while_the_other_is_slow() {
    let (slow, fast) = (Backend::start("slow").await, Backend::start("fast").await);
    slow.delay_ms.store(300, SeqCst);
    let edge = TestEdge::start(&config(
        &[(slow.url(), 1), (fast.url(), 1)],
        "balance: least_conn",
    ))
    .await;
    let client = TestClient::default();
    let mut calls = Vec::new();
    for _ in 0..40 {
        let (client, addr) = (client.clone(), edge.proxy());
        calls.push(tokio::spawn(async move { client.get(addr, "/").await }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in calls {
        assert_eq!(c.await.unwrap().status, StatusCode::OK);
    }
    // Round robin would give the slow target 20 of them.
    let to_slow = slow.hits.load(SeqCst);
    assert!(to_slow <= 8, "{to_slow} of 40 requests went to the slow target");
    assert_eq!(to_slow + fast.hits.load(SeqCst), 40);
    edge.shutdown().await;
}

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_target() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
    ];
    let targets: Vec<(String, u32)> = backends.iter().map(|b| (b.url(), 1)).collect();
    let edge = TestEdge::start(&config(&targets, "balance: consistent_hash, hash_header: x-user")).await;
    let client = TestClient::default();
    let mut homes = HashMap::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let counts = spread(&client, &edge, 5, &[("x-user", &user)]).await;
        assert_eq!(counts.len(), 1, "{user} went to {counts:?}");
        homes.insert(user, counts.into_keys().next().unwrap());
    }
    let used: std::collections::HashSet<&String> = homes.values().collect();
    assert!(used.len() >= 3, "40 keys on {used:?}");
    // Without the header the client IP is the key: one client, one target.
    assert_eq!(spread(&client, &edge, 10, &[]).await.len(), 1);
    edge.shutdown().await;
}

#[tokio::test]
async fn ewma_moves_traffic_off_a_slow_target() {
    let (slow, fast) = (Backend::start("slow").await, Backend::start("fast").await);
    slow.delay_ms.store(50, SeqCst);
    let edge = TestEdge::start(&config(&[(slow.url(), 1), (fast.url(), 1)], "balance: ewma")).await;
    let counts = spread(&TestClient::default(), &edge, 100, &[]).await;
    // Once measured, the slow target costs more than the fast one (round robin: 50).
    assert!(count(&counts, "slow") <= 5, "{counts:?}");
    edge.shutdown().await;
}

#[tokio::test]
async fn health_checks_take_a_target_out_bring_it_back_and_503_when_none_is_left() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let health =
        "health: {path: /healthz, interval: 100ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2}";
    let edge = TestEdge::start(&config(&[(a.url(), 1), (b.url(), 1)], health)).await;
    let client = TestClient::default();
    let counts = spread(&client, &edge, 20, &[]).await;
    assert_eq!((count(&counts, "a"), count(&counts, "b")), (10, 10));
    assert!(a.health_checks.load(SeqCst) >= 1);

    // a fails its checks: within two intervals (and change) it gets no traffic.
    a.health.store(500, SeqCst);
    let mut run = 0;
    until(
        &client,
        &edge,
        Duration::from_secs(3),
        "a leaves the rotation",
        |ans| {
            run = if ans.body == "b" { run + 1 } else { 0 };
            run >= 20
        },
    )
    .await;
    let counts = spread(&client, &edge, 20, &[]).await;
    assert_eq!(count(&counts, "b"), 20, "{counts:?}");

    // Healthy again: it rejoins.
    a.health.store(200, SeqCst);
    until(
        &client,
        &edge,
        Duration::from_secs(3),
        "a rejoins the rotation",
        |ans| ans.body == "a",
    )
    .await;

    // Every target down: 503 no_healthy_upstream; then back.
    a.health.store(503, SeqCst);
    b.health.store(503, SeqCst);
    until(
        &client,
        &edge,
        Duration::from_secs(3),
        "503 no_healthy_upstream",
        |ans| ans.status == StatusCode::SERVICE_UNAVAILABLE && ans.code() == "no_healthy_upstream",
    )
    .await;
    b.health.store(200, SeqCst);
    until(&client, &edge, Duration::from_secs(3), "b serves again", |ans| {
        ans.body == "b"
    })
    .await;
    edge.shutdown().await;
}

#[tokio::test]
async fn consecutive_5xx_eject_a_target_from_real_traffic() {
    let (bad, good) = (Backend::start("bad").await, Backend::start("good").await);
    bad.status.store(500, SeqCst);
    let edge = TestEdge::start(&config(&[(bad.url(), 1), (good.url(), 1)], "")).await;
    let client = TestClient::default();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(client.get(edge.proxy(), "/").await.status);
    }
    // Five 500s in a row eject it (for 10 s); the rest all goes to the good target.
    assert_eq!(bad.hits.load(SeqCst), 5);
    assert_eq!(good.hits.load(SeqCst), 35);
    assert!(
        statuses[20..].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn a_get_is_retried_on_another_target_when_the_first_refuses_a_post_is_not() {
    let dead = closed_port().await;
    let live = Backend::start("live").await;
    let edge = TestEdge::start(&config(
        &[(format!("http://{dead}"), 1), (live.url(), 1)],
        "retries: 1",
    ))
    .await;
    let client = TestClient::default();
    // Round robin starts on the refusing target; each GET is retried on the live one.
    for _ in 0..2 {
        let a = client.get(edge.proxy(), "/").await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "live"));
    }
    assert_eq!(live.hits.load(SeqCst), 2);

    let mut posts = Vec::new();
    for _ in 0..2 {
        posts.push(client.send(edge.proxy(), Method::POST, "/", &[]).await);
    }
    let failed: Vec<_> = posts.iter().filter(|a| a.status != StatusCode::OK).collect();
    assert_eq!(failed.len(), 1, "{posts:?}");
    assert_eq!(failed[0].status, StatusCode::BAD_GATEWAY);
    assert_eq!(failed[0].code(), "upstream_error");
    // The refused POST never reached the live target.
    assert_eq!(live.posts.load(SeqCst), 1);
    edge.shutdown().await;
}

#[tokio::test]
async fn health_checks_stop_with_the_edge() {
    let a = Backend::start("a").await;
    let health = "health: {path: /healthz, interval: 100ms, timeout: 500ms}";
    let edge = TestEdge::start(&config(&[(a.url(), 1)], health)).await;
    let client = TestClient::default();
    assert_eq!(client.get(edge.proxy(), "/").await.status, StatusCode::OK);
    edge.shutdown().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = a.health_checks.load(SeqCst);
    assert!(after >= 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        a.health_checks.load(SeqCst),
        after,
        "health checks outlived the edge"
    );
}
