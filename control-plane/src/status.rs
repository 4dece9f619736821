//! `tollgate cluster status`: each node reports itself and the edges connected to it; the node
//! asked merges the reports of all members (asking each with a short timeout), so the view
//! needs no Raft writes and shows unreachable members as such.

use std::collections::BTreeMap;
use std::time::Duration;

use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::{ClusterStatusRequest, ClusterStatusResponse, CpNodeStatus, EdgeStatus};
use tonic::metadata::MetadataValue;
use tonic::Request;

use crate::node::{now_ms, Node};

const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// This node alone, with the edges connected to it.
pub fn local_status(node: &Node) -> ClusterStatusResponse {
    let m = node.raft.metrics().borrow().clone();
    let voter = m.membership_config.voter_ids().any(|v| v == node.id);
    let applied = m.last_applied.map_or(0, |l| l.index);
    let version = node.sm.read(|s| s.version);
    ClusterStatusResponse {
        leader: m.current_leader.unwrap_or(0),
        version,
        nodes: vec![CpNodeStatus {
            node_id: node.id,
            addr: node.addr.clone(),
            role: node.role().into(),
            term: m.current_term,
            applied_index: applied,
            voter,
        }],
        edges: node.edges.list(node.id, now_ms()),
    }
}

/// Every member's report, merged.
pub async fn cluster_status(
    node: &Node,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
) -> ClusterStatusResponse {
    let mut out = local_status(node);
    let members: Vec<(u64, String, bool)> = {
        let m = node.raft.metrics().borrow().membership_config.clone();
        let voters: Vec<u64> = m.voter_ids().collect();
        m.nodes()
            .map(|(id, n)| (*id, n.addr.clone(), voters.contains(id)))
            .collect()
    };
    let asks = members
        .iter()
        .filter(|(id, _, _)| *id != node.id)
        .map(|(id, addr, voter)| {
            let token = token.clone();
            async move {
                let report = async {
                    let mut client = AdminClient::new(node.channels.get(addr).ok()?);
                    let mut req = Request::new(ClusterStatusRequest { local: true });
                    req.set_timeout(PEER_TIMEOUT);
                    if let Some(t) = token {
                        req.metadata_mut().insert("authorization", t);
                    }
                    client.cluster_status(req).await.ok().map(|r| r.into_inner())
                };
                let report = tokio::time::timeout(PEER_TIMEOUT, report).await.ok().flatten();
                (*id, addr.clone(), *voter, report)
            }
        });
    let mut edges: BTreeMap<String, EdgeStatus> =
        out.edges.drain(..).map(|e| (e.node_id.clone(), e)).collect();
    for (id, addr, voter, report) in futures::future::join_all(asks).await {
        match report {
            Some(r) => {
                out.version = out.version.max(r.version);
                out.nodes.extend(r.nodes);
                for e in r.edges {
                    let keep = edges.get(&e.node_id).is_none_or(|old| {
                        (e.connected, e.last_contact_ms) > (old.connected, old.last_contact_ms)
                    });
                    if keep {
                        edges.insert(e.node_id.clone(), e);
                    }
                }
            }
            None => out.nodes.push(CpNodeStatus {
                node_id: id,
                addr,
                role: "unreachable".into(),
                term: 0,
                applied_index: 0,
                voter,
            }),
        }
    }
    out.nodes.sort_by_key(|n| n.node_id);
    out.edges = edges
        .into_values()
        .map(|mut e| {
            e.lag = out.version.saturating_sub(e.applied_version);
            e
        })
        .collect();
    out
}
