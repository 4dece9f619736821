use std::net::Ipv4Addr;
use std::time::Duration;

use http::HeaderValue;

use super::*;

const URLS: [&str; 4] = ["http://a", "http://b", "http://c", "http://d"];
const MS: u64 = 1_000_000;

fn balancer(balance: Balance, weights: &[u32]) -> Balancer {
    let targets: Vec<(&str, u32)> = URLS.iter().copied().zip(weights.iter().copied()).collect();
    let endpoints = targets.iter().map(|_| Arc::new(Endpoint::new(0))).collect();
    Balancer::new(
        balance,
        &targets,
        endpoints,
        true,
        Some(HeaderName::from_static("x-user")),
    )
}

fn shares(b: &Balancer, n: usize, now: u64) -> Vec<usize> {
    let mut counts = vec![0; b.weights.len()];
    for k in 0..n {
        counts[b.pick_at(ring::hash64(&k.to_le_bytes()), &[], now).unwrap()] += 1;
    }
    counts
}

fn eject(e: &Endpoint, now: u64) {
    while e.record_failure(now).is_none() {}
}

#[test]
fn round_robin_follows_weights_and_skips_targets_out_of_rotation() {
    let b = balancer(Balance::RoundRobin, &[3, 1]);
    assert_eq!(shares(&b, 400, 0), [300, 100]);

    // Down by active checks: all traffic to the other one.
    b.endpoint(0).record_check(false, 1, 1);
    assert_eq!(shares(&b, 100, 0), [0, 100]);
    b.endpoint(0).record_check(true, 1, 1);
    // Passively ejected: skipped until the cool-off ends.
    eject(b.endpoint(1), 0);
    assert_eq!(shares(&b, 100, MS), [100, 0]);
    assert_eq!(shares(&b, 400, 11_000 * MS), [300, 100]);
    // A retry never gets a target it tried; with none left, no pick.
    let later = 11_000 * MS;
    assert_eq!(b.pick_at(0, &[0], later), Some(1));
    assert_eq!(b.pick_at(0, &[0, 1], later), None);
}

#[test]
fn unchecked_upstreams_ignore_a_stale_health_verdict() {
    let mut b = balancer(Balance::RoundRobin, &[1, 1]);
    b.endpoint(0).record_check(false, 1, 1);
    b.checked = false;
    assert_eq!(shares(&b, 10, 0), [5, 5]);
}

#[test]
fn least_conn_prefers_the_least_loaded_per_weight() {
    let b = balancer(Balance::LeastConn, &[1, 1, 1]);
    let _busy: Vec<_> = (0..3).map(|_| b.endpoint(0).start()).collect();
    let _one = b.endpoint(1).start();
    for _ in 0..10 {
        assert_eq!(b.pick_at(0, &[], 0), Some(2));
    }
    // Per weight: 4 in flight at weight 4 beats 2 at weight 1.
    let w = balancer(Balance::LeastConn, &[4, 1]);
    let _a: Vec<_> = (0..4).map(|_| w.endpoint(0).start()).collect();
    let _b: Vec<_> = (0..2).map(|_| w.endpoint(1).start()).collect();
    assert_eq!(w.pick_at(0, &[], 0), Some(0));
    // Idle, ties go by weighted round robin.
    let idle = balancer(Balance::LeastConn, &[3, 1]);
    assert_eq!(shares(&idle, 400, 0), [300, 100]);
    // The loaded target still serves when it is the only one left.
    assert_eq!(b.pick_at(0, &[1, 2], 0), Some(0));
}

#[test]
fn consistent_hash_keeps_keys_on_their_target_and_moves_them_only_while_it_is_out() {
    let b = balancer(Balance::ConsistentHash, &[1, 1, 1, 1]);
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("alice"));
    let alice = b.hash_key(&h, ip);
    let home = b.pick_at(alice, &[], 0).unwrap();
    assert!((0..50).all(|_| b.pick_at(alice, &[], 0) == Some(home)));
    // Without the header, the client IP decides.
    assert_eq!(b.hash_key(&HeaderMap::new(), ip), ring::hash64(&[10, 0, 0, 1]));
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
    assert_eq!(
        b.hash_key(&HeaderMap::new(), mapped),
        b.hash_key(&HeaderMap::new(), ip)
    );

    let before: Vec<usize> = (0..1000u64)
        .map(|k| b.pick_at(ring::hash64(&k.to_le_bytes()), &[], 0).unwrap())
        .collect();
    let counts = shares(&b, 1000, 0);
    assert!(counts.iter().all(|c| (150..350).contains(c)), "{counts:?}");
    b.endpoint(home).record_check(false, 1, 1);
    let away = b.pick_at(alice, &[], 0).unwrap();
    assert_ne!(away, home);
    // Only the keys of the target that left move.
    for k in 0..1000u64 {
        let now = b.pick_at(ring::hash64(&k.to_le_bytes()), &[], 0).unwrap();
        if before[k as usize] != home {
            assert_eq!(now, before[k as usize]);
        }
    }
    b.endpoint(home).record_check(true, 1, 1);
    assert_eq!(b.pick_at(alice, &[], 0), Some(home));
    // A retry walks on to the next target of the ring.
    assert_eq!(b.pick_at(alice, &[home], 0), Some(away));

    // Other algorithms do not hash.
    assert_eq!(balancer(Balance::RoundRobin, &[1]).hash_key(&h, ip), 0);
}

#[test]
fn ewma_avoids_the_slow_target_until_the_fast_one_queues() {
    let b = balancer(Balance::Ewma, &[1, 1, 1]);
    let now = 10 * MS;
    b.endpoint(0).observe_rtt(Duration::from_millis(80), now);
    b.endpoint(1).observe_rtt(Duration::from_millis(1), now);
    b.endpoint(2).observe_rtt(Duration::from_millis(1), now);
    let counts = shares(&b, 300, now);
    assert_eq!(counts[0], 0, "{counts:?}");
    assert!(counts[1] > 50 && counts[2] > 50, "{counts:?}");

    // The fast targets' queues make the slow one the better bet.
    let _q1: Vec<_> = (0..200).map(|_| b.endpoint(1).start()).collect();
    let _q2: Vec<_> = (0..200).map(|_| b.endpoint(2).start()).collect();
    let counts = shares(&b, 300, now);
    assert!(counts[0] > 150, "{counts:?}");

    // Out of rotation: never picked, even when cheapest.
    let c = balancer(Balance::Ewma, &[1, 1]);
    c.endpoint(1).observe_rtt(Duration::from_millis(500), MS);
    eject(c.endpoint(0), MS);
    assert_eq!(shares(&c, 20, MS), [0, 20]);
    assert_eq!(c.pick_at(0, &[1], MS), None);
}

#[test]
fn zero_weights_are_never_picked() {
    for balance in [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::ConsistentHash,
        Balance::Ewma,
    ] {
        let b = balancer(balance, &[0, 2, 0]);
        assert_eq!(shares(&b, 50, 0), [0, 50, 0], "{balance:?}");
        assert_eq!(balancer(balance, &[0, 0]).pick_at(0, &[], 0), None, "{balance:?}");
    }
}
