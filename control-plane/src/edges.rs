//! The edge registry: what this node knows of the edges that talk to it. The config stream
//! notes each contact, `cluster status` lists the edges and `/metrics` counts the connected
//! ones. It is plain bookkeeping under one lock: callers pass the clock in, so it depends on
//! nothing else in this crate.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tollgate_proto::v1::EdgeStatus;

/// Most edges one node remembers; disconnected ones are forgotten first.
const MAX_EDGES: usize = 10_000;

/// The edges this node has seen, by their node id.
pub struct EdgeRegistry {
    edges: Mutex<BTreeMap<String, EdgeStatus>>,
    capacity: usize,
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
            capacity,
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
        f(e);
        true
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
}
