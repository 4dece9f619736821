//! The peer list across control-plane nodes: an edge streams from one node, but shares
//! rate-limit counters with every edge of the cluster. Every second each node asks the other
//! members (the Raft `Edges` call, with the cluster credential) which edges are connected to
//! them, and keeps the union in its registry (`EdgeRegistry::set_remote`); a change is
//! streamed to its edges as a new peer list. A member that misses one answer keeps its last
//! list (a slow second must not tear down every edge's links to its edges); one that misses
//! [`FORGET_AFTER`] in a row contributes nothing: its edges are reconnecting elsewhere, or it
//! is partitioned with them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tollgate_proto::v1::raft_client::RaftClient;
use tollgate_proto::v1::{PeerEdge, RaftPayload};
use tonic::Request;

use crate::node::Node;
use crate::raft::CLUSTER_CREDENTIAL;

const EVERY: Duration = Duration::from_secs(1);
const ASK_TIMEOUT: Duration = Duration::from_millis(800);
/// Most edges taken from one member's answer.
const MAX_EDGES: usize = 10_000;
/// Missed answers in a row after which a member's last list is dropped.
const FORGET_AFTER: u32 = 3;

/// Merges the other members' edges into this node's peer list every second, until `stop`.
pub async fn run(node: Arc<Node>, stop: impl Future<Output = ()>) {
    let ticker = async {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Per member address: its last list and how many answers it missed since.
        let mut last: HashMap<String, (Vec<PeerEdge>, u32)> = HashMap::new();
        loop {
            tick.tick().await;
            let others: Vec<String> = {
                let m = node.raft.metrics().borrow().membership_config.clone();
                m.nodes()
                    .filter(|(id, _)| **id != node.id)
                    .map(|(_, n)| n.addr.clone())
                    .collect()
            };
            let answers = futures::future::join_all(others.iter().map(|addr| ask(&node, addr))).await;
            last.retain(|addr, _| others.contains(addr));
            for (addr, answer) in others.into_iter().zip(answers) {
                let entry = last.entry(addr).or_default();
                match answer {
                    Some(list) => *entry = (list, 0),
                    None => {
                        entry.1 += 1;
                        if entry.1 >= FORGET_AFTER {
                            entry.0.clear();
                        }
                    }
                }
            }
            node.edges
                .set_remote(last.values().flat_map(|(list, _)| list.iter().cloned()).collect());
        }
    };
    tokio::select! {
        _ = ticker => {}
        _ = stop => {}
    }
}

/// The edges connected to the member at `addr`; `None` if it does not answer in time.
async fn ask(node: &Node, addr: &str) -> Option<Vec<PeerEdge>> {
    let call = async {
        let mut client = RaftClient::new(node.channels.get(addr).ok()?);
        let mut req = Request::new(RaftPayload {
            json: b"{}".to_vec(),
            ..Default::default()
        });
        req.set_timeout(ASK_TIMEOUT);
        req.metadata_mut()
            .insert(CLUSTER_CREDENTIAL, node.credentials.metadata());
        let reply = client.edges(req).await.ok()?.into_inner();
        let list: Vec<serde_json::Value> = serde_json::from_slice(&reply.json).ok()?;
        Some(
            list.iter()
                .take(MAX_EDGES)
                .filter_map(|e| {
                    Some(PeerEdge {
                        node_id: e["node_id"].as_str()?.to_string(),
                        addr: e["addr"]
                            .as_str()?
                            .parse::<std::net::SocketAddr>()
                            .ok()?
                            .to_string(),
                    })
                })
                .collect(),
        )
    };
    tokio::time::timeout(ASK_TIMEOUT, call).await.ok().flatten()
}
