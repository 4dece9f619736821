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

#[test]
fn limiter_ids_name_their_period() {
    assert_eq!(Period::of(L), Some(Period::Window(1000)));
    assert_eq!(Period::of("day/5/app/t/q"), Some(Period::Day));
    assert_eq!(Period::of("month/5/app/t/q"), Some(Period::Month));
    assert_eq!(Period::of("0ms/1/app/t/p"), None);
    assert_eq!(Period::of("garbage"), None);
}

#[test]
fn the_control_planes_record_counts_once_with_what_peers_said() {
    let p = Peers::new("me");
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

#[test]
fn batches_carry_absolute_counts_so_repeats_add_nothing_and_epochs_add_up() {
    let p = Peers::new("me");
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
    // Our own batches coming back are ignored.
    assert_eq!(p.receive(batch("me", 1, vec![count(L, "k", w, 100)])), 1);
}

#[test]
fn malformed_counts_are_skipped_and_counted() {
    let p = Peers::new("me");
    let long = "k".repeat(MAX_FIELD + 1);
    let skipped = p.receive(batch(
        "b",
        1,
        vec![
            count("no-window", "k", 1, 1),
            count(L, &long, 1, 1),
            count(L, "ok", 1, 1),
        ],
    ));
    assert_eq!(skipped, 2);
    assert_eq!(p.dropped.malformed.load(Relaxed), 2);
}

#[tokio::test]
async fn batches_need_the_cluster_key_and_a_bounded_size() {
    let p = Peers::new("me");
    let service = Service(p.clone());
    let unauthenticated = service.exchange(Request::new(batch("b", 1, vec![]))).await;
    assert_eq!(
        unauthenticated.unwrap_err().code(),
        tonic::Code::Unauthenticated,
        "no key yet: nobody is trusted"
    );
    p.set_peers(PeerList {
        edges: vec![],
        key: "k3y".into(),
    });
    let mut req = Request::new(batch("b", 1, vec![]));
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        service.exchange(req).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut req = Request::new(batch("b", 1, vec![count(L, "k", 1, 1); MAX_COUNTS + 1]));
    req.metadata_mut()
        .insert("authorization", "Bearer k3y".parse().unwrap());
    assert_eq!(
        service.exchange(req).await.unwrap_err().code(),
        tonic::Code::ResourceExhausted
    );
    let mut req = Request::new(batch("b", 1, vec![]));
    req.metadata_mut()
        .insert("authorization", "Bearer k3y".parse().unwrap());
    assert_eq!(service.exchange(req).await.unwrap().into_inner().epoch, p.epoch);
    assert_eq!(p.dropped.unauthenticated.load(Relaxed), 2);
    assert_eq!(p.dropped.oversized.load(Relaxed), 1);
}

#[tokio::test]
async fn an_edge_is_out_of_step_until_its_first_peers_are_heard_but_newcomers_get_grace() {
    let p = Peers::new("me");
    assert!(p.in_step(), "alone");
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
