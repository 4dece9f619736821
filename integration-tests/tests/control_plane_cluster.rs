//! A real three-node control plane: leader failover, catch-up after `kill -9`, and a
//! linearizability check of a concurrent history across repeated leader kills.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use todc_utils::linearizability::history::{Action, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::register::{RegisterOperation, RegisterSpecification};
use tollgate_integration_tests::{wait_for, Admin, Sandbox};
use tollgate_proto::v1::{ApplyRequest, GetRequest};

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

/// Waits (at most 20 s) until `n` more writes than now are acknowledged.
async fn more_writes(history: &Mutex<Vec<Event>>, n: usize, what: &str) {
    let written = || {
        let h = history.lock().unwrap();
        h.iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Return {
                        outcome: Outcome::Written,
                        ..
                    }
                )
            })
            .count()
    };
    let (target, deadline) = (written() + n, Instant::now() + Duration::from_secs(20));
    while written() < target {
        assert!(
            Instant::now() < deadline,
            "no progress: {what} ({} < {target})",
            written()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How an operation ended.
#[derive(Clone, Debug)]
enum Outcome {
    Read(u64),
    Written,
    /// The write may or may not have happened (timeout, connection lost mid-call).
    Unknown,
    /// Definitely not applied (the node could not even be reached).
    Failed,
}

/// One step of the recorded history.
#[derive(Clone, Debug)]
enum Event {
    Call {
        process: usize,
        key: usize,
        op: RegisterOperation<u64>,
    },
    Return {
        process: usize,
        key: usize,
        op: RegisterOperation<u64>,
        outcome: Outcome,
    },
}

const KEYS: usize = 3;

fn register_doc(key: usize, value: u64) -> String {
    format!("apps: [{{name: reg{key}, tenant: lin, description: '{value}'}}]")
}

async fn read(client: &mut Admin, key: usize) -> Result<u64, tonic::Status> {
    let r = client
        .get(GetRequest {
            kind: "app".into(),
            tenant: "lin".into(),
            name: format!("reg{key}"),
        })
        .await?
        .into_inner();
    let spec: serde_json::Value = serde_json::from_str(&r.resources[0].spec_json).unwrap();
    Ok(spec["description"].as_str().map_or(0, |d| d.parse().unwrap()))
}

fn definitely_not_sent(s: &tonic::Status) -> bool {
    let m = format!("{s:?}");
    m.contains("Connection refused") || m.contains("tcp connect error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_is_lost_across_five_leader_kills() {
    let mut sb = Sandbox::cluster(3);
    let setup = sb.file("lin.yaml", "tenants: [{name: lin}]\napps: [{name: reg0, tenant: lin}, {name: reg1, tenant: lin}, {name: reg2, tenant: lin}]");
    sb.cli(0, &["apply", "-f", &setup]).ok();

    let history: Arc<Mutex<Vec<Event>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let next_value = Arc::new(AtomicU64::new(1));
    let next_process = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..4usize {
        let mut admins = Vec::new();
        for i in 0..3 {
            admins.push(sb.admin(i).await);
        }
        let (history, stop, next_value, next_process) = (
            history.clone(),
            stop.clone(),
            next_value.clone(),
            next_process.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut process = next_process.fetch_add(1, Ordering::SeqCst) as usize;
            let mut seed = 0x9e3779b97f4a7c15u64 ^ (c as u64 + 1);
            let mut rand = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let (mut acked, mut reads) = (0u32, 0u32);
            while !stop.load(Ordering::SeqCst) {
                let key = (rand() % KEYS as u64) as usize;
                let node = (rand() % 3) as usize;
                let client = &mut admins[node];
                if rand() % 2 == 0 {
                    let value = next_value.fetch_add(1, Ordering::SeqCst);
                    let op = RegisterOperation::Write(value);
                    history.lock().unwrap().push(Event::Call { process, key, op });
                    let req = ApplyRequest {
                        document: register_doc(key, value),
                        prune: false,
                    };
                    let outcome = match tokio::time::timeout(Duration::from_secs(6), client.apply(req)).await
                    {
                        Ok(Ok(_)) => Outcome::Written,
                        Ok(Err(s)) if definitely_not_sent(&s) => Outcome::Failed,
                        _ => Outcome::Unknown,
                    };
                    if matches!(outcome, Outcome::Written) {
                        acked += 1;
                    }
                    let unknown = matches!(outcome, Outcome::Unknown);
                    history.lock().unwrap().push(Event::Return {
                        process,
                        key,
                        op,
                        outcome,
                    });
                    if unknown {
                        // The op stays open until the end of the history: continue as a new process.
                        process = next_process.fetch_add(1, Ordering::SeqCst) as usize;
                    }
                } else {
                    history.lock().unwrap().push(Event::Call {
                        process,
                        key,
                        op: RegisterOperation::Read(None),
                    });
                    let outcome = match tokio::time::timeout(Duration::from_secs(6), read(client, key)).await
                    {
                        Ok(Ok(v)) => {
                            reads += 1;
                            Outcome::Read(v)
                        }
                        _ => Outcome::Failed,
                    };
                    history.lock().unwrap().push(Event::Return {
                        process,
                        key,
                        op: RegisterOperation::Read(None),
                        outcome,
                    });
                }
            }
            (acked, reads)
        }));
    }

    // The nemesis: five times, once writes go through, kill -9 the leader, keep it down
    // until the others have taken writes, bring it back.
    let mut killed = Vec::new();
    for _ in 0..5 {
        more_writes(&history, 5, "writes with every node up").await;
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
        more_writes(&history, 2, "writes with the old leader down").await;
        sb.nodes[li].start();
    }
    more_writes(&history, 5, "writes after the last restart").await;
    stop.store(true, Ordering::SeqCst);
    let (mut acked, mut reads) = (0, 0);
    for c in clients {
        let (a, r) = c.await.unwrap();
        acked += a;
        reads += r;
    }
    eprintln!("killed leaders {killed:?}; {acked} acknowledged writes, {reads} reads");
    assert!(
        acked >= 20 && reads >= 20,
        "too little traffic to judge: {acked} writes, {reads} reads"
    );

    // Final linearizable reads join the history: every acknowledged write must be accounted for.
    let mut admin = sb.admin(0).await;
    let final_process = next_process.fetch_add(1, Ordering::SeqCst) as usize;
    for key in 0..KEYS {
        let v = read(&mut admin, key).await.expect("final read");
        let mut h = history.lock().unwrap();
        h.push(Event::Call {
            process: final_process,
            key,
            op: RegisterOperation::Read(None),
        });
        h.push(Event::Return {
            process: final_process,
            key,
            op: RegisterOperation::Read(None),
            outcome: Outcome::Read(v),
        });
    }

    let events = history.lock().unwrap().clone();
    for key in 0..KEYS {
        let actions = per_key_history(&events, key);
        let ops = actions.len() / 2;
        let linearizable =
            WGLChecker::<RegisterSpecification<u64>>::is_linearizable(History::from_actions(actions));
        assert!(
            linearizable,
            "history of reg{key} ({ops} operations) is not linearizable"
        );
    }
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

/// The history of one register for the checker: failed ops are dropped (reads and writes
/// that surely did nothing), unknown writes get their response at the very end.
fn per_key_history(events: &[Event], key: usize) -> Vec<(usize, Action<RegisterOperation<u64>>)> {
    // Pair each call with the next return of the same process.
    let mut actions = Vec::new();
    let mut pending_unknown = Vec::new();
    let mut open: std::collections::HashMap<usize, usize> = Default::default();
    let mut keep = vec![false; events.len()];
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Call { process, key: k, .. } if *k == key => {
                open.insert(*process, i);
            }
            Event::Return {
                process,
                key: k,
                outcome,
                ..
            } if *k == key => {
                let call = open.remove(process).expect("return without call");
                let kept = !matches!(outcome, Outcome::Failed);
                keep[call] = kept;
                keep[i] = kept;
            }
            _ => {}
        }
    }
    for (i, e) in events.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        match e {
            Event::Call { process, op, .. } => actions.push((*process, Action::Call(*op))),
            Event::Return {
                process, op, outcome, ..
            } => match outcome {
                Outcome::Read(v) => {
                    actions.push((*process, Action::Response(RegisterOperation::Read(Some(*v)))))
                }
                Outcome::Written => actions.push((*process, Action::Response(*op))),
                Outcome::Unknown => pending_unknown.push((*process, Action::Response(*op))),
                Outcome::Failed => {}
            },
        }
    }
    actions.extend(pending_unknown);
    actions
}

/// The check above must be able to fail: a write acknowledged before a read began, which the
/// read does not see, is a lost write.
#[test]
fn the_checker_catches_a_lost_write() {
    let write = RegisterOperation::Write(7);
    let events = vec![
        Event::Call {
            process: 0,
            key: 0,
            op: write,
        },
        Event::Return {
            process: 0,
            key: 0,
            op: write,
            outcome: Outcome::Written,
        },
        Event::Call {
            process: 1,
            key: 0,
            op: RegisterOperation::Read(None),
        },
        Event::Return {
            process: 1,
            key: 0,
            op: RegisterOperation::Read(None),
            outcome: Outcome::Read(0),
        },
    ];
    let lost = per_key_history(&events, 0);
    assert!(!WGLChecker::<RegisterSpecification<u64>>::is_linearizable(
        History::from_actions(lost)
    ));
    // The same read is fine if the write's outcome was unknown (it may never have happened)...
    let mut unknown = events.clone();
    unknown[1] = Event::Return {
        process: 0,
        key: 0,
        op: write,
        outcome: Outcome::Unknown,
    };
    let h = per_key_history(&unknown, 0);
    assert!(WGLChecker::<RegisterSpecification<u64>>::is_linearizable(
        History::from_actions(h)
    ));
    // ...or if the read overlapped the write.
    let overlapping = vec![
        events[0].clone(),
        events[2].clone(),
        events[1].clone(),
        events[3].clone(),
    ];
    let h = per_key_history(&overlapping, 0);
    assert!(WGLChecker::<RegisterSpecification<u64>>::is_linearizable(
        History::from_actions(h)
    ));
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
