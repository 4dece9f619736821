//! A real three-node control plane: leader failover, catch-up after `kill -9`, and a
//! linearizability check of a concurrent history across repeated leader kills.

use std::time::{Duration, Instant};

use tollgate_integration_tests::history::Workload;
use tollgate_integration_tests::{http_get, wait_for, Sandbox};
use tollgate_proto::v1::ApplyRequest;

const CONFIG: &str = r#"
tenants: [{name: acme}]
upstreams: [{name: orders-be, tenant: acme, targets: [{url: "http://127.0.0.1:9001"}]}]
services: [{name: orders, tenant: acme, upstream: orders-be, routes: [{paths: [/orders]}]}]
apps: [{name: mobile, tenant: acme}]
"#;

fn index_of(sb: &Sandbox, id: u64) -> usize {
    sb.nodes.iter().position(|n| n.id == id).expect("node index")
}

fn local_export(sb: &Sandbox, i: usize) -> String {
    sb.cli(i, &["export", "--local", "-o", "json"]).ok().stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_failover_catch_up_and_identical_exports() {
    let mut sb = Sandbox::cluster(3);
    let file = sb.file("config.yaml", CONFIG);
    let out = sb.cli(1, &["apply", "-f", &file]).ok();
    assert!(out.stdout.contains("4 created"), "{}", out.stdout);

    let status = sb.cli(2, &["cluster", "status", "-o", "json"]).ok();
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{status}");
    assert_eq!(
        nodes.iter().filter(|n| n["role"] == "leader").count(),
        1,
        "{status}"
    );
    assert!(nodes.iter().all(|n| n["voter"] == true), "{status}");

    let leader = sb.leader().await;
    let li = index_of(&sb, leader);
    sb.nodes[li].kill();
    let other = (li + 1) % 3;
    let more = sb.file("more.yaml", "apps: [{name: web, tenant: acme}]");
    // One CLI call, sent right after the kill to a follower that still believes in the dead
    // leader: the node waits for the election and forwards the write, so the operator only
    // notices a delay.
    let started = Instant::now();
    let out = sb.cli(other, &["apply", "-f", &more]);
    let elapsed = started.elapsed();
    assert_eq!(
        out.code, 0,
        "the apply through a follower failed after the leader was killed: {out:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "the apply took {elapsed:?}");
    eprintln!(
        "apply through node {} succeeded {elapsed:?} after killing leader {leader}",
        sb.nodes[other].id
    );
    assert!(sb.leader().await != leader);

    // The killed node restarts from its own disk and catches up.
    sb.nodes[li].start();
    let want = sb.cli(other, &["export", "-o", "json"]).ok().stdout;
    assert!(want.contains("\"web\""), "{want}");
    for i in 0..3 {
        wait_for(
            &format!("node {} to catch up", sb.nodes[i].id),
            Duration::from_secs(15),
            || (local_export(&sb, i) == want).then_some(()),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_is_lost_across_five_leader_kills() {
    let mut sb = Sandbox::cluster(3);
    let workload = Workload::start(&sb, 4).await;
    let progress = Duration::from_secs(20);

    // The nemesis: five times, once writes go through, kill -9 the leader, keep it down
    // until the others have taken writes, bring it back.
    let mut killed = Vec::new();
    for _ in 0..5 {
        workload
            .more_writes(5, "writes with every node up", progress)
            .await;
        let leader = sb.leader().await;
        let li = index_of(&sb, leader);
        sb.nodes[li].kill();
        killed.push(leader);
        // Keep it down until the others have elected a new leader, so every round is a real
        // failover with writes in flight.
        let successor = tokio::time::timeout(Duration::from_secs(10), sb.leader())
            .await
            .expect("re-election");
        assert_ne!(successor, leader);
        workload
            .more_writes(2, "writes with the old leader down", progress)
            .await;
        sb.nodes[li].start();
    }
    workload
        .more_writes(5, "writes after the last restart", progress)
        .await;
    // Final linearizable reads join the history: every acknowledged write is accounted for.
    let summary = workload.finish(&sb, 0).await;
    eprintln!("killed leaders {killed:?}; {summary:?}");
    assert!(
        summary.acknowledged >= 20 && summary.reads >= 20,
        "too little traffic to judge: {summary:?}"
    );
    // And each node ends with the same state.
    let want = sb.cli(0, &["export", "-o", "json"]).ok().stdout;
    for i in 0..3 {
        wait_for("nodes to converge", Duration::from_secs(15), || {
            (local_export(&sb, i) == want).then_some(())
        });
    }
    let status = sb.cli(0, &["cluster", "status", "-o", "json"]).ok().stdout;
    assert!(!status.contains("unreachable"), "{status}");
}

fn metric(sb: &Sandbox, i: usize, name: &str) -> u64 {
    let (_, body) = tollgate_integration_tests::http_get(sb.nodes[i].http, "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_added_after_compaction_catches_up_from_a_snapshot() {
    let mut sb = Sandbox::cluster(1);
    sb.cli(0, &["apply", "-f", &sb.file("t.yaml", "tenants: [{name: bulk}]")])
        .ok();
    // Enough writes for a snapshot and a purge of the log (snapshots every 1000 entries).
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut admin = sb.admin(0).await;
        writers.push(tokio::spawn(async move {
            for i in 0..160 {
                let doc = format!("apps: [{{name: app-{w}-{i}, tenant: bulk}}]");
                admin
                    .apply(ApplyRequest {
                        document: doc,
                        prune: false,
                    })
                    .await
                    .expect("bulk apply");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    // Snapshots are built in the background: wait (bounded) for one and the purge after it.
    let purged = wait_for("a snapshot and a log purge", Duration::from_secs(10), || {
        let purged = metric(&sb, 0, "tollgate_cp_purged_index");
        let snapshot = metric(&sb, 0, "tollgate_cp_snapshot_index");
        (snapshot > 0 && purged > 0).then_some(purged)
    });

    // The new node cannot get the purged entries: it must install the snapshot.
    sb.add_node_process(2);
    let addr = sb.nodes[1].grpc.to_string();
    sb.cli(0, &["cluster", "add-node", "--node-id", "2", "--addr", &addr])
        .ok();
    let want = sb.cli(0, &["export", "-o", "json"]).ok().stdout;
    wait_for("node 2 to catch up", Duration::from_secs(20), || {
        (local_export(&sb, 1) == want).then_some(())
    });
    assert!(want.matches("app-").count() == 8 * 160);
    assert!(
        metric(&sb, 1, "tollgate_cp_snapshot_index") >= purged,
        "node 2 did not start from a snapshot"
    );
    // And it survives its own restart (snapshot + log on its disk).
    sb.nodes[1].kill();
    sb.nodes[1].start();
    wait_for("node 2 after restart", Duration::from_secs(20), || {
        (local_export(&sb, 1) == want).then_some(())
    });
}

/// `/readyz` on the HTTP port: 503 with a reason before `cluster init` and on a node left
/// without a quorum, 200 on every member of a healthy cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_needs_a_leader_and_a_caught_up_log() {
    let readyz = |sb: &Sandbox, i: usize| http_get(sb.nodes[i].http, "/readyz");
    let lone = Sandbox::uninitialized();
    let (status, body) = readyz(&lone, 0).expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no leader known"), "{body}");
    drop(lone);

    let mut sb = Sandbox::cluster(3);
    for i in 0..3 {
        wait_for(&format!("cp{} ready", i + 1), Duration::from_secs(15), || {
            readyz(&sb, i).filter(|(s, _)| *s == 200)
        });
    }
    // Two of three gone: the survivor loses its leader and says so.
    let survivor = (index_of(&sb, sb.leader().await) + 1) % 3;
    for i in (0..3).filter(|&i| i != survivor) {
        sb.nodes[i].kill();
    }
    let (_, body) = wait_for(
        "the survivor to report not ready",
        Duration::from_secs(20),
        || readyz(&sb, survivor).filter(|(s, _)| *s == 503),
    );
    assert!(body.contains("no leader known"), "{body}");
}
