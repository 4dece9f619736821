use tollgate_proto::model::OnStoreFailure;
use tollgate_proto::v1::PeerCount;

use super::*;

fn count(limiter: &str, key: &str, window: u64, count: u64) -> PeerCount {
    PeerCount {
        limiter: limiter.into(),
        key: key.into(),
        window,
        count,
    }
}

fn batch(node: &str, epoch: u64, counts: Vec<PeerCount>) -> CounterBatch {
    CounterBatch {
        node_id: node.into(),
        epoch,
        full: false,
        counts,
    }
}

const L: &str = "1000ms/10/app/t/p";

/// Lists `ids` as this edge's peers (batches from others are refused).
fn listed(p: &Arc<Peers>, ids: &[&str]) {
    let edges = ids
        .iter()
        .map(|id| PeerEdge {
            node_id: id.to_string(),
            addr: "127.0.0.1:9".into(),
        })
        .collect();
    p.set_peers(PeerList {
        edges,
        key: "k".into(),
    });
}

#[test]
fn limiter_ids_name_their_period() {
    assert_eq!(Period::of(L), Some(Period::Window(1000)));
    assert_eq!(Period::of("day/5/app/t/q"), Some(Period::Day));
    assert_eq!(Period::of("month/5/app/t/q"), Some(Period::Month));
    assert_eq!(Period::of("0ms/1/app/t/p"), None);
    assert_eq!(Period::of("garbage"), None);
}

#[tokio::test]
async fn the_control_planes_record_counts_once_with_what_peers_said() {
    let p = Peers::new("me");
    listed(&p, &["b"]);
    let q = "day/100/app/t/q";
    let day = Period::Day.index(unix_ms());
    p.receive(batch("b", 1, vec![count(q, "k", day, 7)]));
    let stored = |node: &str, epoch: u64, count: u64| UsageEntry {
        quota: q.into(),
        key: "k".into(),
        period: day,
        node_id: node.into(),
        epoch,
        count,
    };
    // b's 5 are older than the 7 it told us; b's earlier run and ours before a restart add.
    p.receive_usage(vec![
        stored("b", 1, 5),
        stored("b", 0, 4),
        stored("me", 3, 2),
        stored("me", p.epoch, 9),
    ]);
    let cluster = p.counters.usage(q, unix_ms())[0].2;
    assert_eq!(
        cluster, 13.0,
        "7 + 4 + 2; this run's own count is live, not stored"
    );
    assert_eq!(p.stored(q, "k", day), Some(20));
}

#[tokio::test]
async fn batches_carry_absolute_counts_so_repeats_add_nothing_and_epochs_add_up() {
    let p = Peers::new("me");
    listed(&p, &["b", "c"]);
    let now = unix_ms();
    let w = now / 1000;
    p.receive(batch("b", 1, vec![count(L, "k", w, 3)]));
    p.receive(batch("b", 1, vec![count(L, "k", w, 3)]));
    p.receive(batch("b", 1, vec![count(L, "k", w, 5)]));
    let cluster = |p: &Peers| p.counters.usage(L, unix_ms())[0].2;
    assert!((cluster(&p) - 5.0).abs() < 1e-9, "{}", cluster(&p));
    // A restarted peer starts again from zero; what it admitted before still counts.
    p.receive(batch("b", 2, vec![count(L, "k", w, 2)]));
    assert!((cluster(&p) - 7.0).abs() < 1e-9, "{}", cluster(&p));
    // A count for the previous window lands there.
    p.receive(batch("c", 1, vec![count(L, "old", w - 1, 4)]));
    assert_eq!(p.counters.peer_load(L, now), 4);
    // Our own batches coming back, and a sender nobody listed, are refused.
    assert_eq!(p.receive(batch("me", 1, vec![count(L, "k", w, 100)])), None);
    assert_eq!(p.receive(batch("stranger", 1, vec![count(L, "k", w, 100)])), None);
    // Counts for windows far from now could hold a key refused for good: skipped.
    assert_eq!(
        p.receive(batch(
            "b",
            1,
            vec![count(L, "k", u64::MAX, 1), count(L, "k", w + 5, 1)]
        )),
        Some(2)
    );
    assert!((cluster(&p) - 7.0).abs() < 1e-9, "{}", cluster(&p));
}

#[tokio::test]
async fn malformed_counts_are_skipped_and_counted() {
    let p = Peers::new("me");
    listed(&p, &["b"]);
    let long = "k".repeat(MAX_FIELD + 1);
    let w = unix_ms() / 1000;
    let skipped = p.receive(batch(
        "b",
        1,
        vec![
            count("no-window", "k", w, 1),
            count(L, &long, w, 1),
            count(L, "ok", w, 1),
        ],
    ));
    assert_eq!(skipped, Some(2));
    assert_eq!(p.dropped.malformed.load(Relaxed), 2);
}

/// A call to the peer port as tonic runs it: the key gate on the metadata, then the service.
async fn call(p: &Arc<Peers>, req: Request<CounterBatch>) -> Result<CounterAck, Status> {
    let (metadata, extensions, batch) = req.into_parts();
    let checked = gate(p.clone())(Request::from_parts(metadata, extensions, ()))?;
    let (metadata, extensions, ()) = checked.into_parts();
    let req = Request::from_parts(metadata, extensions, batch);
    Service(p.clone()).exchange(req).await.map(Response::into_inner)
}

fn with_key(batch: CounterBatch, key: &str) -> Request<CounterBatch> {
    let mut req = Request::new(batch);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

#[tokio::test]
async fn batches_need_the_cluster_key_and_a_bounded_size() {
    let p = Peers::new("me");
    let unauthenticated = call(&p, Request::new(batch("b", 1, vec![]))).await;
    assert_eq!(
        unauthenticated.unwrap_err().code(),
        tonic::Code::Unauthenticated,
        "no key yet: nobody is trusted"
    );
    p.set_peers(PeerList {
        edges: vec![PeerEdge {
            node_id: "b".into(),
            addr: "127.0.0.1:9".into(),
        }],
        key: "k3y".into(),
    });
    let wrong = call(&p, with_key(batch("b", 1, vec![]), "wrong")).await;
    assert_eq!(wrong.unwrap_err().code(), tonic::Code::Unauthenticated);
    let big = batch("b", 1, vec![count(L, "k", 1, 1); MAX_COUNTS + 1]);
    assert_eq!(
        call(&p, with_key(big, "k3y")).await.unwrap_err().code(),
        tonic::Code::ResourceExhausted
    );
    let ok = call(&p, with_key(batch("b", 1, vec![]), "k3y")).await;
    assert_eq!(ok.unwrap().epoch, p.epoch);
    let stranger = call(&p, with_key(batch("stranger", 1, vec![]), "k3y")).await;
    assert_eq!(
        stranger.unwrap_err().code(),
        tonic::Code::FailedPrecondition,
        "not listed"
    );
    assert_eq!(p.dropped.unauthenticated.load(Relaxed), 2);
    assert_eq!(p.dropped.oversized.load(Relaxed), 1);
}

#[tokio::test]
async fn an_edge_is_out_of_step_until_its_first_peers_are_heard_but_newcomers_get_grace() {
    let p = Peers::new("me");
    assert!(
        !p.in_step(),
        "out of step until the control plane lists the peers"
    );
    let alone = Peers::new("solo");
    listed(&alone, &["solo"]);
    assert!(alone.in_step() && alone.edges() == 1, "alone");
    let edge = |id: &str| PeerEdge {
        node_id: id.into(),
        addr: "127.0.0.1:9".into(),
    };
    p.set_peers(PeerList {
        edges: vec![edge("me"), edge("b")],
        key: "k".into(),
    });
    assert!(!p.in_step(), "b may have traffic this edge has not seen");
    assert_eq!(p.edges(), 2);
    assert_eq!(p.share(OnStoreFailure::LocalShare), Mode::LocalShare { edges: 2 });
    assert_eq!(p.share(OnStoreFailure::Open), Mode::Open);
    assert_eq!(p.share(OnStoreFailure::Closed), Mode::Closed);
    // Heard from and taking batches: in step.
    p.receive(batch("b", 1, vec![]));
    p.reports
        .send(Report::Taken {
            node: "b".into(),
            epoch: 1,
            rtt_us: 100,
        })
        .unwrap();
    let mut reports = p.reports_rx.lock().unwrap().take().unwrap();
    p.tick(&mut reports);
    assert!(p.in_step());
    assert_eq!(p.share(OnStoreFailure::Closed), Mode::Cluster);
    // A newcomer is not waited for at first: it has admitted nothing yet.
    p.set_peers(PeerList {
        edges: vec![edge("me"), edge("b"), edge("c")],
        key: "k".into(),
    });
    assert!(p.in_step());
    assert_eq!(p.edges(), 3);
    // A peer that restarted (new epoch in its answer) is sent everything next.
    p.reports
        .send(Report::Taken {
            node: "b".into(),
            epoch: 2,
            rtt_us: 100,
        })
        .unwrap();
    p.inner().links["b"].needs_full.store(false, Relaxed);
    p.tick(&mut reports);
    assert!(p.inner().links["b"].needs_full.load(Relaxed));
    // Gone from the list: no link.
    p.set_peers(PeerList {
        edges: vec![edge("me")],
        key: "k".into(),
    });
    assert!(p.links().is_empty() && p.in_step());
}

#[test]
fn big_batches_go_in_parts_a_peer_takes() {
    let counts: Vec<PeerCount> = (0..CHUNK_COUNTS * 2 + 3)
        .map(|i| count(L, &format!("k{i}"), 1, 1))
        .collect();
    let parts = chunks(batch("me", 1, counts));
    assert_eq!(parts.len(), 3);
    assert!(parts
        .iter()
        .all(|p| p.counts.len() <= CHUNK_COUNTS && p.epoch == 1));
    assert_eq!(
        parts.iter().map(|p| p.counts.len()).sum::<usize>(),
        CHUNK_COUNTS * 2 + 3
    );
    let big = "x".repeat(400);
    let parts = chunks(batch(
        "me",
        1,
        (0..10_000).map(|_| count(L, &big, 1, 1)).collect(),
    ));
    assert!(parts.len() > 1, "by bytes too");
    assert_eq!(chunks(batch("me", 1, vec![])).len(), 1, "a heartbeat");
}
