//! Cluster-wide rate limits across three real edge processes sharing counts on their peer
//! ports: the limit holds for the cluster under a load of three times the limit, spread
//! evenly and then skewed onto one edge, within the declared error bound; an edge whose peer
//! link is cut (a fault-injecting proxy in front of its peer port) falls back as each
//! policy's `on_store_failure` says, and converges within a second once the link heals; a
//! daily quota holds across an edge restart and a control-plane leader change.
//!
//! Bound declared (ARCHITECTURE.md, "Cluster rate limits"): for steady load, admitted over
//! an interval <= limit × (1 + 5%) + edges × (the limit's traffic in one batch interval).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_integration_tests::edge::{send, EdgeNode, Upstream};
use tollgate_integration_tests::{http_get, wait_for, Sandbox};
use tollgate_testkit::fault::LinkProxy;

/// Requests per second the load test's limit admits.
const LIMIT: u64 = 40;
/// The counters' batch interval (edge-node `counters/peers.rs`).
const BATCH: Duration = Duration::from_millis(20);

fn config(upstream: &str) -> String {
    format!(
        r#"
tenants: [{{name: acme}}]
upstreams: [{{name: be, tenant: acme, targets: [{{url: "{upstream}"}}]}}]
policies:
  - {{name: shared, tenant: acme, rate_limit: {{limit: {LIMIT}, window: 1s, key: service, scope: cluster}}}}
  - {{name: share-local, tenant: acme, rate_limit: {{limit: 30, window: 1s, key: service, on_store_failure: local_share}}}}
  - {{name: share-open, tenant: acme, rate_limit: {{limit: 30, window: 1s, key: service, on_store_failure: open}}}}
  - {{name: share-closed, tenant: acme, rate_limit: {{limit: 30, window: 1s, key: service, on_store_failure: closed}}}}
  - {{name: slow, tenant: acme, rate_limit: {{limit: 100000, window: 1m, key: service}}}}
services:
  - {{name: load, tenant: acme, upstream: be, policies: [shared], routes: [{{paths: [/load]}}]}}
  - {{name: ls, tenant: acme, upstream: be, policies: [share-local], routes: [{{paths: [/ls]}}]}}
  - {{name: op, tenant: acme, upstream: be, policies: [share-open], routes: [{{paths: [/op]}}]}}
  - {{name: cl, tenant: acme, upstream: be, policies: [share-closed], routes: [{{paths: [/cl]}}]}}
  - {{name: conv, tenant: acme, upstream: be, policies: [slow], routes: [{{paths: [/conv]}}]}}
"#
    )
}

/// A control plane, an upstream and three edges; `proxied` edges announce their peer port
/// through a [`LinkProxy`] the test can cut.
struct Cluster {
    edges: Vec<EdgeNode>,
    links: Vec<Option<LinkProxy>>,
    _upstream: Upstream,
    sb: Sandbox,
}

impl Cluster {
    fn start(proxied: &[bool; 3]) -> Cluster {
        let upstream = Upstream::start();
        let sb = Sandbox::cluster(1);
        let file = sb.file("config.yaml", &config(&upstream.url()));
        sb.cli(0, &["apply", "-f", &file]).ok();
        let mut edges = Vec::new();
        let mut links = Vec::new();
        for (i, proxied) in proxied.iter().enumerate() {
            let mut edge = EdgeNode::for_sandbox(&sb, &format!("edge-{i}"), None);
            let link = proxied.then(|| LinkProxy::start(edge.peer));
            if let Some(link) = &link {
                edge.extra_args = vec!["--peer-advertise".into(), link.addr.to_string()];
            }
            edge.spawn();
            edges.push(edge);
            links.push(link);
        }
        let cluster = Cluster {
            edges,
            links,
            _upstream: upstream,
            sb,
        };
        for edge in &cluster.edges {
            wait_for(
                &format!("{} to route", edge.node_id),
                Duration::from_secs(15),
                || (edge.request("GET", "/conv", &[]).status == 200).then_some(()),
            );
        }
        for i in 0..3 {
            wait_for(
                &format!("edge-{i} in step with 3 edges"),
                Duration::from_secs(10),
                || {
                    let l = cluster.limits(i);
                    (l["in_step"] == true && l["edges"] == 3).then_some(())
                },
            );
        }
        cluster
    }

    /// Edge `i`'s `/limits`.
    fn limits(&self, i: usize) -> Value {
        let (status, body) = http_get(self.edges[i].admin, "/limits").expect("an answer from /limits");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON from /limits")
    }

    /// Edge `i`'s cluster-wide estimate for the only key of `policy`.
    fn cluster_count(&self, i: usize, policy: &str) -> f64 {
        let l = self.limits(i);
        let limit = l["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["policy"] == policy)
            .unwrap_or_else(|| panic!("no {policy} in {l}"))
            .clone();
        limit["keys"][0]["cluster"].as_f64().unwrap_or(0.0)
    }
}

/// What a run of paced requests got back.
#[derive(Debug, Default)]
struct Tally {
    admitted: u64,
    refused: u64,
}

/// Sends `rate` requests per second for `run` to each `(edge, rate)`, paced evenly; counts
/// the answers that started at least `warm_up` in (so the windows are in steady state).
/// Every answer must be 200 or a 429 `rate_limited` with its headers.
fn drive(targets: &[(SocketAddr, u64)], path: &str, run: Duration, warm_up: Duration) -> Tally {
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = targets
        .iter()
        .flat_map(|&(addr, rate)| {
            // At most 40 requests per second per thread: each waits for its answer.
            let senders = rate.div_ceil(40).max(1);
            (0..senders).map(move |k| (addr, rate, senders, k))
        })
        .map(|(addr, rate, senders, k)| {
            let path = path.to_string();
            std::thread::spawn(move || {
                let gap = Duration::from_secs_f64(1.0 / rate as f64);
                let mut tally = Tally::default();
                let mut n = k;
                loop {
                    let at = start + gap * n as u32;
                    if at >= start + run {
                        return tally;
                    }
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let r = send(addr, "GET", &path, &[], b"").expect("an answer from the edge");
                    let counted = at >= start + warm_up;
                    match r.status {
                        200 => {
                            assert!(r.header("ratelimit-remaining").is_some(), "{r:?}");
                            tally.admitted += u64::from(counted);
                        }
                        429 => {
                            assert_eq!(r.error_code(), "rate_limited", "{r:?}");
                            assert!(
                                r.header("retry-after").is_some() && r.header("ratelimit-limit").is_some(),
                                "{r:?}"
                            );
                            tally.refused += u64::from(counted);
                        }
                        other => panic!("unexpected {other}: {r:?}"),
                    }
                    n += senders;
                }
            })
        })
        .collect();
    threads.into_iter().fold(Tally::default(), |mut all, t| {
        let t = t.join().expect("a load thread panicked");
        all.admitted += t.admitted;
        all.refused += t.refused;
        all
    })
}

/// Admitted over a 10 s measurement is within [0.95, 1.05] × the limit, plus the bound.
fn assert_within_bound(what: &str, tally: &Tally, offered_per_s: u64) {
    let limit = (LIMIT * 10) as f64;
    let bound = 3.0 * LIMIT as f64 * BATCH.as_secs_f64();
    let admitted = tally.admitted as f64;
    eprintln!(
        "{what}: admitted {admitted} of {} over 10 s (limit {limit}, declared bound {bound}, offered {offered_per_s}/s)",
        tally.admitted + tally.refused
    );
    assert!(
        admitted >= 0.95 * limit && admitted <= 1.05 * limit + bound,
        "{what}: admitted {admitted}, limit {limit}, bound {bound}"
    );
    assert!(tally.refused > 0, "{what}: the load never reached the limit");
}

#[test]
fn a_cluster_limit_holds_under_three_times_its_load_spread_evenly_and_skewed() {
    let c = Cluster::start(&[false; 3]);
    let (a, b, e) = (c.edges[0].proxy, c.edges[1].proxy, c.edges[2].proxy);
    let run = Duration::from_secs(12);
    let warm_up = Duration::from_secs(2);
    let even = drive(&[(a, LIMIT), (b, LIMIT), (e, LIMIT)], "/load", run, warm_up);
    assert_within_bound("even", &even, 3 * LIMIT);
    let skewed = drive(
        &[(a, 2 * LIMIT + LIMIT / 2), (b, LIMIT / 4), (e, LIMIT / 4)],
        "/load",
        run,
        warm_up,
    );
    assert_within_bound("skewed", &skewed, 3 * LIMIT);
    // The metric says what bound applies now, and that nobody fell back.
    let (status, metrics) = http_get(c.edges[0].admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"tollgate_ratelimit_fallback{policy="acme/shared",limiter="1000ms/40/service/acme/shared"} 0"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_ratelimit_error_bound{policy=\"acme/shared\""),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_peer_edges 3"), "{metrics}");
}

#[test]
fn a_cut_peer_link_falls_back_by_policy_and_heals_within_a_second() {
    let c = Cluster::start(&[false, false, true]);
    let cut = c.edges[2].proxy;
    let link = c.links[2].as_ref().unwrap();
    link.cut();
    wait_for("edge-2 out of step", Duration::from_secs(3), || {
        (c.limits(2)["in_step"] == false).then_some(())
    });
    // Its peers still hear it: they stay in step.
    assert_eq!(c.limits(0)["in_step"], true, "{}", c.limits(0));

    // local_share: the cut edge admits a third of the limit (30/s / 3 edges), alone.
    let local = drive(
        &[(cut, 40)],
        "/ls",
        Duration::from_secs(4),
        Duration::from_secs(1),
    );
    eprintln!("local_share: {local:?} over 3 s");
    assert!(
        (24..=36).contains(&local.admitted),
        "local_share admitted {local:?}, want about 30"
    );
    // open: everything.
    let open = drive(&[(cut, 40)], "/op", Duration::from_secs(2), Duration::ZERO);
    assert_eq!((open.admitted, open.refused), (80, 0), "open");
    // closed: nothing at the cut edge; an edge in step still admits.
    let closed = drive(&[(cut, 20)], "/cl", Duration::from_secs(1), Duration::ZERO);
    assert_eq!((closed.admitted, closed.refused), (0, 20), "closed");
    assert_eq!(c.edges[0].request("GET", "/cl", &[]).status, 200);

    // While cut, edge-0 admits 50 on a slow limit that edge-2 cannot hear of.
    for _ in 0..50 {
        assert_eq!(c.edges[0].request("GET", "/conv", &[]).status, 200);
    }
    let seen_by = |i: usize| c.cluster_count(i, "acme/slow");
    assert!(seen_by(2) < 40.0, "edge-2 heard while cut: {}", seen_by(2));
    let healed = Instant::now();
    link.heal();
    wait_for("edge-2 in step again", Duration::from_secs(3), || {
        (c.limits(2)["in_step"] == true).then_some(())
    });
    wait_for("edge-2 to converge", Duration::from_secs(3), || {
        ((seen_by(2) - seen_by(0)).abs() <= 2.0 && seen_by(2) >= 49.0).then_some(())
    });
    let took = healed.elapsed();
    eprintln!("converged {took:?} after the link healed");
    assert!(took <= Duration::from_secs(1), "converged only after {took:?}");

    // The operator's view of the same, through the CLI.
    let admin = c.edges[2].admin.to_string();
    let table = c.sb.cli(0, &["stats", "limits", "--edge", &admin]).ok().stdout;
    assert!(table.starts_with("edges: 3, in step: yes"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("acme/slow"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("cluster") && row.contains("service:conv"), "{row}");
    let json: Value = serde_json::from_str(
        &c.sb
            .cli(0, &["stats", "limits", "--edge", &admin, "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(json["peers"].as_array().map(Vec::len), Some(2), "{json}");
    let down = c.sb.cli(0, &["stats", "limits", "--edge", "127.0.0.1:1"]);
    assert_eq!(down.code, 6, "{}", down.stderr);
}

/// Edge `edge`'s view of `policy`'s only key: (cluster count, control plane's record).
fn quota_view(edge: &EdgeNode, policy: &str) -> (f64, u64) {
    let Some((200, body)) = http_get(edge.admin, "/limits") else {
        return (0.0, 0);
    };
    let l: Value = serde_json::from_str(&body).unwrap();
    let limit = l["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["policy"] == policy)
        .cloned();
    let key = limit.as_ref().map(|l| l["keys"][0].clone()).unwrap_or_default();
    (
        key["cluster"].as_f64().unwrap_or(0.0),
        key["stored"].as_u64().unwrap_or(0),
    )
}

/// Sends `n` requests to `edge`; how many were admitted (the rest must be 429s).
fn admitted_of(edge: &EdgeNode, path: &str, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            let r = edge.request("GET", path, &[]);
            match r.status {
                200 => true,
                429 => {
                    assert_eq!(r.error_code(), "rate_limited", "{r:?}");
                    let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
                    assert!(
                        (1..=86_400).contains(&reset),
                        "resets by the end of the UTC day: {r:?}"
                    );
                    false
                }
                s => panic!("unexpected {s}: {r:?}"),
            }
        })
        .count()
}

/// `kill -9`s and restarts `edge`, then waits until it counts at least `used` of the quota.
fn restart_knowing(edge: &mut EdgeNode, used: f64) {
    edge.kill();
    edge.spawn();
    wait_for(
        &format!("the restarted edge to know of {used}"),
        Duration::from_secs(15),
        || (quota_view(edge, "acme/daily").0 >= used).then_some(()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_survives_an_edge_restart_and_a_leader_change() {
    let upstream = Upstream::start();
    let mut sb = Sandbox::cluster(3);
    let doc = format!(
        r#"
tenants: [{{name: acme}}]
upstreams: [{{name: be, tenant: acme, targets: [{{url: "{}"}}]}}]
policies: [{{name: daily, tenant: acme, quota: {{limit: 30, period: day, key: service}}}}]
services: [{{name: metered, tenant: acme, upstream: be, policies: [daily], routes: [{{paths: [/metered]}}]}}]
"#,
        upstream.url()
    );
    let file = sb.file("quota.yaml", &doc);
    sb.cli(0, &["apply", "-f", &file]).ok();
    let mut edge = EdgeNode::start(&sb, "edge-q");
    wait_for("the quota to load", Duration::from_secs(15), || {
        (quota_view(&edge, "acme/daily") == (0.0, 0) && edge.readyz() == Some(200)).then_some(())
    });
    assert_eq!(admitted_of(&edge, "/metered", 20), 20);
    wait_for("the control plane to record 20", Duration::from_secs(10), || {
        (quota_view(&edge, "acme/daily").1 == 20).then_some(())
    });

    // kill -9 and back: the count comes back from the control plane, not from zero.
    restart_knowing(&mut edge, 20.0);
    assert_eq!(admitted_of(&edge, "/metered", 15), 10, "30 a day in all");
    wait_for("the control plane to record 30", Duration::from_secs(10), || {
        (quota_view(&edge, "acme/daily").1 == 30).then_some(())
    });

    // The leader goes; the edge restarts again and reconnects to a survivor.
    let leader = sb.leader().await;
    let li = sb.nodes.iter().position(|n| n.id == leader).unwrap();
    sb.nodes[li].kill();
    let successor = tokio::time::timeout(Duration::from_secs(15), sb.leader())
        .await
        .expect("a new leader");
    assert_ne!(successor, leader);
    restart_knowing(&mut edge, 30.0);
    assert_eq!(admitted_of(&edge, "/metered", 5), 0, "the day's quota is used up");
}

/// Edges streaming from different control-plane nodes still find each other: each node
/// merges the others' connected edges into the peer list it sends.
#[test]
fn edges_on_different_control_plane_nodes_share_counts() {
    let upstream = Upstream::start();
    let sb = Sandbox::cluster(3);
    let file = sb.file("config.yaml", &config(&upstream.url()));
    sb.cli(0, &["apply", "-f", &file]).ok();
    let edges: Vec<EdgeNode> = (0..2)
        .map(|i| {
            EdgeNode::start_with(
                sb.dir.path(),
                &format!("edge-{i}"),
                vec![sb.nodes[i].url()],
                &sb.edge_token,
            )
        })
        .collect();
    for edge in &edges {
        wait_for(
            &format!("{} in step with 2 edges", edge.node_id),
            Duration::from_secs(15),
            || {
                let (_, body) = http_get(edge.admin, "/limits")?;
                let l: Value = serde_json::from_str(&body).ok()?;
                (l["in_step"] == true && l["edges"] == 2).then_some(())
            },
        );
    }
    // 30/s through each edge on a 40/s limit: 40/s in all, not 60 (2 s measured after 2 s).
    let both = drive(
        &[(edges[0].proxy, 30), (edges[1].proxy, 30)],
        "/load",
        Duration::from_secs(4),
        Duration::from_secs(2),
    );
    // Unshared counts would admit 120. The upper end is the declared bound; below, a 2 s
    // measurement that does not line up with the limit's windows can miss a few admissions
    // (75 seen once on the 2-core CI machine), which says nothing about sharing.
    assert!(
        (72..=86).contains(&both.admitted),
        "admitted {both:?} of 80 across two edges"
    );
}

/// An edge that joins under load, and later leaves (`kill -9`), moves the cluster's admitted
/// total by no more than the bound: the joiner counts alone against its share until its
/// peers' counts arrive, and the leaver's counts stay with its peers until their windows
/// pass.
#[test]
fn an_edge_joining_and_leaving_under_load_admits_no_burst() {
    let c = Cluster::start(&[false; 3]);
    let (a, b) = (c.edges[0].proxy, c.edges[1].proxy);
    let mut late = EdgeNode::for_sandbox(&c.sb, "edge-late", None);
    let late_proxy = late.proxy;
    // The two first edges take 1.5x the limit each for 20 s, measured after 2 s.
    let steady = std::thread::spawn(move || {
        drive(
            &[(a, LIMIT * 3 / 2), (b, LIMIT * 3 / 2)],
            "/load",
            Duration::from_secs(20),
            Duration::from_secs(2),
        )
    });
    std::thread::sleep(Duration::from_secs(5));
    late.spawn();
    // It takes traffic once ready, as a load balancer probing /readyz would send it.
    wait_for("the late edge to be ready", Duration::from_secs(10), || {
        (late.readyz() == Some(200)).then_some(())
    });
    let joined = drive(
        &[(late_proxy, LIMIT)],
        "/load",
        Duration::from_secs(8),
        Duration::ZERO,
    );
    late.kill();
    let steady = steady.join().expect("the steady load");
    let total = Tally {
        admitted: steady.admitted + joined.admitted,
        refused: steady.refused + joined.refused,
    };
    let limit = (LIMIT * 18) as f64;
    let bound = 3.0 * LIMIT as f64 * BATCH.as_secs_f64();
    let admitted = total.admitted as f64;
    eprintln!("join and leave: admitted {admitted} over 18 s (limit {limit}, bound {bound}); the late edge {joined:?}");
    assert!(
        admitted >= 0.95 * limit && admitted <= 1.05 * limit + bound,
        "admitted {admitted}, limit {limit}, bound {bound}"
    );
    assert!(joined.admitted > 0, "the late edge admitted nothing: {joined:?}");
}
