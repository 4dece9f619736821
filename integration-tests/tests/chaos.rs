//! The chaos suite: three control-plane nodes and three edges, each process in a network
//! namespace of its own on one bridge ([`netns`]), concurrent writers, steady traffic through
//! every edge, and a nemesis that kills and restarts the leader, partitions a minority,
//! partitions the leader, and isolates an edge from the control plane and from its peers
//! (nftables drops). Inside the cluster everything is mTLS, as it must be off loopback.
//! Afterwards:
//! - the write history is linearizable (the checker of `history.rs`, itself tested on
//!   histories known to be bad);
//! - no acknowledged write is lost: every marker write acknowledged during an event is in
//!   the final config;
//! - every edge converges to the last committed version;
//! - the edges' error rate through the events stays at the baseline measured before them.
//!
//! CI runs one event of each kind; `scripts/chaos` runs many (`CHAOS_EVENTS`, default 24).
//! A second test shows why the cluster runs mTLS here: off loopback, a plaintext config
//! stream (it carries secrets) is refused by the edge and by the control plane.
//! Needs root, iproute2 and nftables (`.ci/run` installs nftables).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_integration_tests::edge::{send, EdgeNode, Upstream};
use tollgate_integration_tests::history::Workload;
use tollgate_integration_tests::netns::{addr, exec_in, Net};
use tollgate_integration_tests::{tollgate_bin, wait_child, wait_for, Sandbox};
use tollgate_proto::v1::ClusterStatusRequest;

const EDGES: usize = 3;
/// How long each fault is held once writes have been seen to go through it.
const DWELL: Duration = Duration::from_secs(2);
/// How long writes may stall while the cluster elects a leader.
const PROGRESS: Duration = Duration::from_secs(30);

fn config(upstream: &str) -> String {
    format!(
        r#"
tenants: [{{name: acme}}, {{name: chaos}}]
upstreams: [{{name: be, tenant: acme, targets: [{{url: "{upstream}"}}]}}]
policies:
  - {{name: roomy, tenant: acme, rate_limit: {{limit: 1000000, window: 1s, key: service, scope: cluster, on_store_failure: local_share}}}}
services:
  - {{name: steady, tenant: acme, upstream: be, policies: [roomy], routes: [{{paths: [/steady]}}]}}
"#
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Event {
    KillLeader,
    PartitionMinority,
    PartitionLeader,
    IsolateEdge,
}

const KINDS: [Event; 4] = [
    Event::KillLeader,
    Event::PartitionMinority,
    Event::PartitionLeader,
    Event::IsolateEdge,
];

/// One request through an edge: when, which edge, whether it was served.
struct Sample {
    at: Instant,
    ok: bool,
}

/// Steady traffic through every edge until stopped: one client per edge, a request every
/// 20 ms, each on a fresh connection.
struct Traffic {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(edges: &[EdgeNode]) -> Traffic {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = edges
            .iter()
            .map(|e| {
                let (proxy, samples, stop) = (e.proxy, samples.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let at = Instant::now();
                        let ok = send(proxy, "GET", "/steady", &[], b"").is_some_and(|r| r.status == 200);
                        samples.lock().unwrap().push(Sample { at, ok });
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        Traffic {
            samples,
            stop,
            threads,
        }
    }

    /// (requests, failures) among those sent inside any of `windows`, and outside all of
    /// them before `before`.
    fn split(&self, windows: &[(Instant, Instant)], before: Instant) -> ((usize, usize), (usize, usize)) {
        let samples = self.samples.lock().unwrap();
        let (mut inside, mut baseline) = ((0, 0), (0, 0));
        for s in samples.iter() {
            let bucket = if windows.iter().any(|(a, b)| s.at >= *a && s.at < *b) {
                &mut inside
            } else if s.at < before {
                &mut baseline
            } else {
                continue;
            };
            bucket.0 += 1;
            bucket.1 += usize::from(!s.ok);
        }
        (inside, baseline)
    }

    fn stop(self) -> Arc<Mutex<Vec<Sample>>> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        self.samples
    }
}

/// The names in `names` but the one at `skip`.
fn all_but(names: &[String], skip: usize) -> Vec<&str> {
    names
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, n)| n.as_str())
        .collect()
}

fn live(sb: &Sandbox) -> impl Iterator<Item = usize> + '_ {
    (0..sb.nodes.len()).filter(|&i| sb.nodes[i].proc.is_some())
}

/// The leader every live node agrees on (bounded wait): after a heal, a deposed leader may
/// still believe in itself for a moment.
async fn agreed_leader(sb: &Sandbox) -> u64 {
    let nodes: Vec<usize> = live(sb).collect();
    leader_among(sb, &nodes, 0).await
}

/// The leader nodes `among` agree on, once it is not `old` (0: any), with a bounded wait.
async fn leader_among(sb: &Sandbox, among: &[usize], old: u64) -> u64 {
    let deadline = Instant::now() + PROGRESS;
    loop {
        let mut seen = Vec::new();
        for &i in among {
            let mut c = sb.admin(i).await;
            let status = c.cluster_status(ClusterStatusRequest { local: true }).await;
            seen.push(status.map(|s| s.into_inner().leader).unwrap_or(0));
        }
        if seen[0] != 0 && seen[0] != old && seen.iter().all(|l| *l == seen[0]) {
            return seen[0];
        }
        assert!(
            Instant::now() < deadline,
            "nodes {among:?} agreed on no leader other than {old} within {PROGRESS:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The committed config version, as the leader reports it.
async fn committed_version(sb: &Sandbox) -> u64 {
    let leader = agreed_leader(sb).await;
    let i = sb.nodes.iter().position(|n| n.id == leader).unwrap();
    let mut c = sb.admin(i).await;
    let status = c.cluster_status(ClusterStatusRequest { local: true }).await;
    status.expect("status of the leader").into_inner().version
}

/// A marker write: an app `chaos/mark-<n>`. `Some(true)`: acknowledged; `Some(false)`:
/// refused before it could apply; `None`: unknown.
fn mark(sb: &Sandbox, node: usize, n: usize) -> Option<bool> {
    let file = sb.file(
        &format!("mark-{n}.yaml"),
        &format!("apps: [{{name: mark-{n}, tenant: chaos}}]"),
    );
    let out = sb.cli(node, &["apply", "-f", &file]);
    match out.code {
        0 => Some(true),
        _ if out.stderr.contains("Connection refused") => Some(false),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_survives_kills_and_partitions_without_losing_a_write() {
    let events: usize = std::env::var("CHAOS_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KINDS.len());
    let net = Net::create();
    let upstream = Upstream::start_on(&Net::GATEWAY.to_string());
    let mut sb = Sandbox::cluster_in(&net, 3);
    let cps: Vec<String> = (1..=3).map(|i| format!("cp{i}")).collect();
    sb.cli(
        0,
        &["apply", "-f", &sb.file("config.yaml", &config(&upstream.url()))],
    )
    .ok();

    let mut edges = Vec::new();
    for i in 1..=EDGES {
        let host = net.host(&format!("edge{i}"));
        let mut edge = EdgeNode::for_sandbox(&sb, &format!("e{i}"), None);
        (edge.proxy, edge.admin, edge.peer) = (addr(&host, 8080), addr(&host, 9901), addr(&host, 7900));
        edge.host = Some(host);
        // The token from a file, as the deployment units give it.
        let token_file = sb.file(&format!("e{i}.token"), &format!("{}\n", edge.join_token));
        edge.join_token.clear();
        edge.extra_args = vec!["--join-token-file".into(), token_file];
        edge.spawn();
        edges.push(edge);
    }
    for e in &edges {
        wait_for(
            &format!("{} to route", e.node_id),
            Duration::from_secs(20),
            || send(e.proxy, "GET", "/steady", &[], b"").filter(|r| r.status == 200),
        );
    }

    let traffic = Traffic::start(&edges);
    let workload = Workload::start(&sb, 4).await;
    workload
        .more_writes(10, "writes before any fault", PROGRESS)
        .await;
    // The baseline: a few seconds of traffic and writes with nothing wrong.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first_event = Instant::now();

    let mut windows = Vec::new();
    let mut marks: Vec<(usize, Option<bool>)> = Vec::new();
    let mut log = Vec::new();
    for n in 0..events {
        let kind = KINDS[n % KINDS.len()];
        let leader = agreed_leader(&sb).await;
        let li = sb.nodes.iter().position(|x| x.id == leader).unwrap();
        let started = Instant::now();
        let what = match kind {
            Event::KillLeader => {
                sb.nodes[li].kill();
                workload
                    .more_writes(3, "writes with the leader killed", PROGRESS)
                    .await;
                tokio::time::sleep(DWELL).await;
                marks.push((n, mark(&sb, (li + 1) % 3, n)));
                sb.nodes[li].start();
                format!("killed and restarted leader cp{leader}")
            }
            Event::PartitionMinority => {
                let follower = (li + 1 + n / KINDS.len() % 2) % 3;
                let others = all_but(&cps, follower);
                net.cut(&[&cps[follower]], &others);
                workload
                    .more_writes(3, "writes with a follower cut off", PROGRESS)
                    .await;
                tokio::time::sleep(DWELL).await;
                marks.push((n, mark(&sb, li, n)));
                net.heal();
                format!("cut follower {} from {others:?}", cps[follower])
            }
            Event::PartitionLeader => {
                let others = all_but(&cps, li);
                net.cut(&[&cps[li]], &others);
                // The majority side elects a leader of its own.
                let majority: Vec<usize> = (0..3).filter(|&i| i != li).collect();
                let successor = leader_among(&sb, &majority, leader).await;
                workload
                    .more_writes(3, "writes with the leader cut off", PROGRESS)
                    .await;
                tokio::time::sleep(DWELL).await;
                marks.push((n, mark(&sb, (li + 1) % 3, n)));
                net.heal();
                format!("cut leader {} from {others:?}; cp{successor} took over", cps[li])
            }
            Event::IsolateEdge => {
                let e = n / KINDS.len() % EDGES;
                let isolated = format!("edge{}", e + 1);
                let mut rest: Vec<String> = cps.clone();
                rest.extend((1..=EDGES).filter(|i| *i != e + 1).map(|i| format!("edge{i}")));
                let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
                net.cut(&[&isolated], &rest);
                let held = edges[e].config_version().unwrap_or(0);
                workload
                    .more_writes(3, "writes with an edge isolated", PROGRESS)
                    .await;
                tokio::time::sleep(DWELL).await;
                // The cut is real: the edge missed the writes, and served all the same.
                let behind = committed_version(&sb).await;
                assert_eq!(
                    edges[e].config_version(),
                    Some(held),
                    "an isolated edge moved on (the committed version is {behind}):\n{}",
                    net.rules(&isolated)
                );
                assert!(
                    behind > held,
                    "no write reached the cluster while {isolated} was cut off"
                );
                marks.push((n, mark(&sb, li, n)));
                net.heal();
                format!("isolated {isolated} from the control plane and its peers")
            }
        };
        windows.push((started, Instant::now()));
        log.push(format!("{n:>3} {:>5.1}s {what}", started.elapsed().as_secs_f64()));
    }
    let last_event = Instant::now();
    workload
        .more_writes(5, "writes after the last event", PROGRESS)
        .await;

    // Linearizable, with a final read of every register through the agreed leader.
    let leader = agreed_leader(&sb).await;
    let li = sb.nodes.iter().position(|x| x.id == leader).unwrap();
    let summary = workload.finish(&sb, li).await;

    // Every acknowledged marker is in the final config.
    let export = sb.cli(li, &["export", "-o", "json"]).ok().stdout;
    let acked: Vec<usize> = marks
        .iter()
        .filter(|(_, m)| *m == Some(true))
        .map(|(n, _)| *n)
        .collect();
    let lost: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|n| !export.contains(&format!("\"mark-{n}\"")))
        .collect();
    assert!(lost.is_empty(), "acknowledged marker writes lost: {lost:?}");

    // Every edge converges on the last committed version.
    let version = committed_version(&sb).await;
    for e in &edges {
        let took = e.wait_for_version(version, Duration::from_secs(20));
        eprintln!(
            "{} at version {version} {took:?} after the check began",
            e.node_id
        );
    }
    // And the nodes agree with each other.
    for i in 0..3 {
        let want = export.clone();
        wait_for("nodes to converge", Duration::from_secs(15), || {
            (sb.cli(i, &["export", "-o", "json"]).stdout == want).then_some(())
        });
    }

    let (inside, baseline) = traffic.split(&windows, first_event);
    let samples = traffic.stop();
    let total = samples.lock().unwrap().len();
    let rate = |(n, failed): (usize, usize)| failed as f64 / n.max(1) as f64;
    eprintln!("chaos: {events} nemesis events in {:?}", last_event - first_event);
    for line in &log {
        eprintln!("  {line}");
    }
    eprintln!(
        "chaos: writes {} acknowledged, {} unknown, {} reads; markers {}/{} acknowledged, 0 lost",
        summary.acknowledged,
        summary.unknown,
        summary.reads,
        acked.len(),
        marks.len()
    );
    eprintln!(
        "chaos: edge requests {total}; baseline {} with {} failed ({:.3}%), during events {} with {} failed ({:.3}%)",
        baseline.0,
        baseline.1,
        100.0 * rate(baseline),
        inside.0,
        inside.1,
        100.0 * rate(inside)
    );
    assert!(
        baseline.0 >= 50 && inside.0 >= 200,
        "too little edge traffic to judge: {baseline:?} {inside:?}"
    );
    assert!(
        rate(inside) <= rate(baseline) + 0.001,
        "the edges' error rate rose during the events: {inside:?} against {baseline:?}"
    );
    assert!(summary.acknowledged >= 20, "too few writes to judge: {summary:?}");
    drop(edges);
    drop(sb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_config_streams_are_refused_off_loopback() {
    let net = Net::create();
    let mut sb = Sandbox::cluster_in_plaintext(&net, 1);
    let host = net.host("edge1");
    let url = sb.nodes[0].url();
    assert!(url.starts_with("http://10."), "{url}");

    // The edge refuses to start on a plaintext URL off loopback.
    let args: Vec<String> = [
        "edge",
        "--control-plane",
        &url,
        "--join-token",
        &sb.edge_token,
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([sb.dir.path().join("refused").display().to_string()])
    .collect();
    let (program, args) = exec_in(&host, &tollgate_bin(), &args);
    let child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_child(child, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the edge started on a plaintext remote URL: {stderr}"
    );
    assert!(
        stderr.contains("is plaintext and not on loopback") && stderr.contains("--allow-plaintext-stream"),
        "{stderr}"
    );

    // Told to accept plaintext, the edge starts, and the control plane refuses to send.
    let mut edge = EdgeNode::for_sandbox(&sb, "e1", None);
    (edge.proxy, edge.admin, edge.peer) = (addr(&host, 8080), addr(&host, 9901), addr(&host, 7900));
    edge.host = Some(host);
    edge.extra_args = vec!["--allow-plaintext-stream".into()];
    edge.spawn();
    wait_for(
        "the control plane's refusal in the edge's log",
        Duration::from_secs(20),
        || {
            let log = std::fs::read_to_string(&edge.log).unwrap_or_default();
            log.contains("serves it in plaintext: it is sent to edges on loopback only")
                .then_some(())
        },
    );
    assert_eq!(edge.config_version(), Some(0), "a refused edge holds no config");

    // Both sides allowing it, the stream flows.
    sb.nodes[0].kill();
    sb.nodes[0].extra_args = vec!["--allow-plaintext-stream".into()];
    sb.nodes[0].start();
    let version = committed_version(&sb).await;
    edge.wait_for_version(version, Duration::from_secs(30));
}
