//! The edge registry: what this node knows of the edges that talk to it. The config stream
//! notes each contact, `cluster status` lists the edges, `/metrics` counts the connected
//! ones, and the connected edges with their peer addresses are the peer list every edge is
//! sent for counter sharing ([`EdgeRegistry::peers`], changes announced on
//! [`EdgeRegistry::subscribe`]). It is plain bookkeeping under one lock: callers pass the
//! clock in, so it depends on nothing else in this crate.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::watch;
use tollgate_proto::v1::{EdgeStatus, PeerEdge};

/// Most edges one node remembers; disconnected ones are forgotten first.
const MAX_EDGES: usize = 10_000;

/// The edges this node has seen, by their node id.
pub struct EdgeRegistry {
    edges: Mutex<BTreeMap<String, EdgeStatus>>,
    /// Edges connected to the other control-plane nodes (`edge_peers.rs` asks them).
    remote: Mutex<Vec<PeerEdge>>,
    capacity: usize,
    /// Bumped whenever the peer list changes (an edge connects, goes, or moves its address).
    members: watch::Sender<u64>,
}

impl Default for EdgeRegistry {
    fn default() -> Self {
        Self::with_capacity(MAX_EDGES)
    }
}

impl EdgeRegistry {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            edges: Mutex::default(),
            remote: Mutex::default(),
            capacity,
            members: watch::Sender::new(0),
        }
    }

    /// Notes contact from an edge at `now_ms`. Returns false when the registry is full of
    /// connected edges (the new edge is refused).
    pub fn update(&self, node_id: &str, now_ms: u64, f: impl FnOnce(&mut EdgeStatus)) -> bool {
        let mut edges = self.edges.lock().expect("edge registry poisoned");
        if !edges.contains_key(node_id) && edges.len() >= self.capacity {
            let oldest = edges
                .values()
                .filter(|e| !e.connected)
                .min_by_key(|e| e.last_contact_ms)
                .map(|e| e.node_id.clone());
            match oldest {
                Some(id) => {
                    edges.remove(&id);
                }
                None => return false,
            }
        }
        let e = edges.entry(node_id.to_string()).or_insert_with(|| EdgeStatus {
            node_id: node_id.to_string(),
            ..Default::default()
        });
        e.last_contact_ms = now_ms;
        let before = (e.connected, e.peer_addr.clone());
        f(e);
        if (e.connected, &e.peer_addr) != (before.0, &before.1) {
            self.members.send_modify(|v| *v += 1);
        }
        true
    }

    /// The edges that share counters, connected here or to another control-plane node, by
    /// node id (an edge connected here wins over another node's word for it).
    pub fn peers(&self) -> Vec<PeerEdge> {
        let mut by_id: BTreeMap<String, PeerEdge> = self
            .remote
            .lock()
            .expect("edge registry poisoned")
            .iter()
            .map(|e| (e.node_id.clone(), e.clone()))
            .collect();
        by_id.extend(self.local_peers().into_iter().map(|e| (e.node_id.clone(), e)));
        by_id.into_values().collect()
    }

    /// What the other control-plane nodes say is connected to them; announces a change.
    pub fn set_remote(&self, mut edges: Vec<PeerEdge>) {
        edges.sort_by(|a, b| (&a.node_id, &a.addr).cmp(&(&b.node_id, &b.addr)));
        edges.dedup();
        let mut remote = self.remote.lock().expect("edge registry poisoned");
        if *remote != edges {
            *remote = edges;
            self.members.send_modify(|v| *v += 1);
        }
    }

    /// The edges connected to this node that share counters (they told their peer address).
    pub fn local_peers(&self) -> Vec<PeerEdge> {
        let edges = self.edges.lock().expect("edge registry poisoned");
        edges
            .values()
            .filter(|e| e.connected && !e.peer_addr.is_empty())
            .map(|e| PeerEdge {
                node_id: e.node_id.clone(),
                addr: e.peer_addr.clone(),
            })
            .collect()
    }

    /// Changes whenever [`EdgeRegistry::peers`] may have.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.members.subscribe()
    }

    /// The edges this node (`cp_node`) has seen, as reported by `cluster status`; a
    /// connected edge was last in contact `now_ms`.
    pub fn list(&self, cp_node: u64, now_ms: u64) -> Vec<EdgeStatus> {
        let edges = self.edges.lock().expect("edge registry poisoned");
        edges
            .values()
            .map(|e| {
                let mut e = e.clone();
                e.cp_node = cp_node;
                if e.connected {
                    e.last_contact_ms = now_ms;
                }
                e
            })
            .collect()
    }

    pub fn connected(&self) -> usize {
        let edges = self.edges.lock().expect("edge registry poisoned");
        edges.values().filter(|e| e.connected).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_registry_forgets_the_oldest_disconnected_edge_and_refuses_when_all_are_connected() {
        let r = EdgeRegistry::with_capacity(2);
        assert!(r.update("a", 1, |e| e.connected = true));
        assert!(r.update("b", 2, |e| e.connected = true));
        assert!(
            !r.update("c", 3, |e| e.connected = true),
            "full of connected edges"
        );
        assert!(r.update("a", 4, |e| e.connected = false));
        assert!(r.update("c", 5, |e| e.connected = true), "a is forgotten");
        let ids: Vec<String> = r.list(7, 9).into_iter().map(|e| e.node_id).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(r.connected(), 2);
        assert!(r
            .list(7, 9)
            .iter()
            .all(|e| e.cp_node == 7 && e.last_contact_ms == 9));
    }

    #[test]
    fn the_peer_list_is_the_connected_edges_and_changes_are_announced() {
        let r = EdgeRegistry::default();
        let mut changes = r.subscribe();
        r.update("b", 1, |e| {
            e.connected = true;
            e.peer_addr = "127.0.0.1:7902".into();
        });
        r.update("a", 1, |e| {
            e.connected = true;
            e.peer_addr = "127.0.0.1:7901".into();
        });
        r.update("old", 1, |e| e.connected = true);
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        let addrs: Vec<(String, String)> = r.peers().into_iter().map(|p| (p.node_id, p.addr)).collect();
        assert_eq!(
            addrs,
            [
                ("a".into(), "127.0.0.1:7901".into()),
                ("b".into(), "127.0.0.1:7902".into())
            ],
            "sorted by id; an edge without a peer address shares nothing"
        );
        r.update("a", 2, |_| {});
        assert!(
            !changes.has_changed().unwrap(),
            "mere contact changes no membership"
        );
        r.update("a", 3, |e| e.connected = false);
        assert!(changes.has_changed().unwrap());
        assert_eq!(r.peers().len(), 1);

        // Edges of other control-plane nodes join the list; a local one wins.
        changes.borrow_and_update();
        let edge = |id: &str, addr: &str| PeerEdge {
            node_id: id.into(),
            addr: addr.into(),
        };
        r.set_remote(vec![edge("z", "127.0.0.1:7909"), edge("b", "10.0.0.1:1")]);
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        r.set_remote(vec![edge("b", "10.0.0.1:1"), edge("z", "127.0.0.1:7909")]);
        assert!(!changes.has_changed().unwrap(), "the same list in another order");
        let peers: Vec<(String, String)> = r.peers().into_iter().map(|p| (p.node_id, p.addr)).collect();
        assert_eq!(
            peers,
            [
                ("b".into(), "127.0.0.1:7902".into()),
                ("z".into(), "127.0.0.1:7909".into())
            ]
        );
        assert_eq!(r.local_peers().len(), 1);
    }
}
