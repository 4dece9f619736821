//! The config stream, server side (DESIGN.md §5). Any node serves it from its own applied
//! state, so the leader is never a bottleneck.
//!
//! ```text
//!   edge: Hello{last_version = v}
//!   cp:   v == 0, or deletions since v forgotten  -> snapshot in chunks (one nonce)
//!         else                                    -> delta since v (may be empty)
//!   edge: Ack{nonce, version} -> v = version      | Nack{nonce, errors} -> recorded, v kept
//!   cp:   waits for the next applied change, pushes the delta since v, ...
//! ```
//!
//! One push is in flight per edge: the next is computed only after the edge answered the
//! last, from the version it acknowledged, so a delta always starts where the edge is. After
//! a NACK nothing is resent until the config moves past the refused version.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tollgate_proto::keys::hex;
use tollgate_proto::v1::config_stream_server::ConfigStream;
use tollgate_proto::v1::edge_message::Msg;
use tollgate_proto::v1::*;
use tonic::{Request, Response, Status, Streaming};

use crate::node::{now_ms, Node};
use crate::secrets::random_bytes;
use crate::state::{ConfigState, Stored};

/// Resources per snapshot chunk.
pub const CHUNK_SIZE: usize = 256;
/// How long an edge may take to answer a push before the stream is dropped.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What this node knows of the edges that talk to it.
#[derive(Default)]
pub struct EdgeRegistry {
    edges: Mutex<BTreeMap<String, EdgeStatus>>,
}

impl EdgeRegistry {
    fn update(&self, node_id: &str, f: impl FnOnce(&mut EdgeStatus)) {
        let mut edges = self.edges.lock().expect("edge registry poisoned");
        let e = edges
            .entry(node_id.to_string())
            .or_insert_with(|| EdgeStatus {
                node_id: node_id.to_string(),
                ..Default::default()
            });
        e.last_contact_ms = now_ms();
        f(e);
    }

    /// The edges this node has seen, as reported by `cluster status`.
    pub fn list(&self, cp_node: u64) -> Vec<EdgeStatus> {
        let edges = self.edges.lock().expect("edge registry poisoned");
        edges
            .values()
            .map(|e| {
                let mut e = e.clone();
                e.cp_node = cp_node;
                if e.connected {
                    e.last_contact_ms = now_ms();
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

pub struct StreamService {
    node: Arc<Node>,
}

impl StreamService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn to_resource(key: &tollgate_proto::ResourceKey, stored: &Stored) -> Resource {
    Resource {
        kind: key.kind.as_str().into(),
        tenant: key.tenant.clone(),
        name: key.name.clone(),
        version: stored.version,
        spec_json: stored.spec.to_json(),
    }
}

fn nonce() -> String {
    let mut b = [0u8; 8];
    // A nonce only needs to differ between pushes; fall back to the clock if the RNG fails.
    if random_bytes(&mut b).is_err() {
        b = now_ms().to_be_bytes();
    }
    hex(&b)
}

/// The pushes that bring an edge from `since` to the current state: a delta when possible,
/// else a chunked snapshot.
pub fn pushes_since(state: &ConfigState, since: u64, force_snapshot: bool) -> Vec<ConfigPush> {
    let nonce = nonce();
    let delta = if force_snapshot || since == 0 {
        None
    } else {
        state.delta_since(since)
    };
    match delta {
        Some((upserts, removals)) => {
            let upserts: Vec<Resource> = upserts
                .into_iter()
                .map(|(k, s)| to_resource(k, s))
                .collect();
            let removals: Vec<ResourceKey> = removals
                .into_iter()
                .map(|k| ResourceKey {
                    kind: k.kind.as_str().into(),
                    tenant: k.tenant.clone(),
                    name: k.name.clone(),
                })
                .collect();
            let checksum = tollgate_proto::stream::checksum(&upserts, &removals);
            vec![ConfigPush {
                nonce,
                version: state.version,
                snapshot: false,
                chunk: 0,
                chunks: 1,
                upserts,
                removals,
                checksum,
                base_version: since,
            }]
        }
        None => {
            let all: Vec<Resource> = state.streamed().map(|(k, s)| to_resource(k, s)).collect();
            let checksum = tollgate_proto::stream::checksum(&all, &[]);
            let chunks: Vec<Vec<Resource>> = if all.is_empty() {
                vec![Vec::new()]
            } else {
                all.chunks(CHUNK_SIZE).map(<[Resource]>::to_vec).collect()
            };
            let count = chunks.len() as u32;
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, upserts)| ConfigPush {
                    nonce: nonce.clone(),
                    version: state.version,
                    snapshot: true,
                    chunk: i as u32,
                    chunks: count,
                    upserts,
                    removals: Vec::new(),
                    checksum: if i as u32 + 1 == count {
                        checksum.clone()
                    } else {
                        String::new()
                    },
                    base_version: 0,
                })
                .collect()
        }
    }
}

fn check_node_id(id: &str) -> Result<(), Status> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "hello.node_id must be 1-128 printable characters",
        ))
    }
}

type PushStream = Pin<Box<dyn Stream<Item = Result<ConfigPush, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigStream for StreamService {
    type StreamStream = PushStream;

    async fn stream(
        &self,
        req: Request<Streaming<EdgeMessage>>,
    ) -> Result<Response<PushStream>, Status> {
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(EdgeMessage {
                msg: Some(Msg::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => return Err(Status::invalid_argument("the first message must be hello")),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("no hello received")),
        };
        check_node_id(&hello.node_id)?;
        let (tx, rx) = mpsc::channel(8);
        let node = self.node.clone();
        tokio::spawn(async move {
            let id = hello.node_id.clone();
            node.edges.update(&id, |e| {
                e.connected = true;
                e.applied_version = hello.last_version;
                e.capabilities = hello.capabilities.clone();
            });
            tracing::info!(edge = %id, last_version = hello.last_version, "edge connected");
            let end = session(&node, &hello, &mut inbound, &tx).await;
            node.edges.update(&id, |e| e.connected = false);
            tracing::info!(edge = %id, reason = %end, "edge disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn local_edges(
        &self,
        req: Request<LocalEdgesRequest>,
    ) -> Result<Response<LocalEdgesResponse>, Status> {
        self.node.authorize(&req)?;
        Ok(Response::new(LocalEdgesResponse {
            edges: self.node.edges.list(self.node.id),
        }))
    }
}

/// Serves one edge until it goes away; returns why.
async fn session(
    node: &Node,
    hello: &Hello,
    inbound: &mut Streaming<EdgeMessage>,
    tx: &mpsc::Sender<Result<ConfigPush, Status>>,
) -> String {
    let id = hello.node_id.as_str();
    let mut applied = node.sm.subscribe();
    let mut acked = hello.last_version;
    let mut force_snapshot = acked == 0;
    let mut refused: Option<u64> = None;
    // An edge that holds a newer version than this node has applied (it last talked to a more
    // up-to-date member) waits for this node to catch up, or starts over from a snapshot.
    if acked > *applied.borrow() {
        let caught_up =
            tokio::time::timeout(Duration::from_secs(5), applied.wait_for(|v| *v >= acked)).await;
        if !matches!(caught_up, Ok(Ok(_))) {
            force_snapshot = true;
        }
    }
    loop {
        let current = *applied.borrow_and_update();
        let due = force_snapshot || (current > acked && refused.is_none_or(|r| current > r));
        if due {
            let pushes = node.sm.read(|s| pushes_since(s, acked, force_snapshot));
            let Some(first) = pushes.first() else {
                return "nothing to push".into();
            };
            let (nonce, version) = (first.nonce.clone(), first.version);
            for p in pushes {
                if tx.send(Ok(p)).await.is_err() {
                    return "stream closed".into();
                }
            }
            loop {
                let reply = match tokio::time::timeout(REPLY_TIMEOUT, inbound.message()).await {
                    Err(_) => return format!("no reply to push {nonce} within {REPLY_TIMEOUT:?}"),
                    Ok(Err(e)) => return format!("stream error: {}", e.message()),
                    Ok(Ok(None)) => return "stream closed".into(),
                    Ok(Ok(Some(m))) => m,
                };
                match reply.msg {
                    Some(Msg::Ack(a)) if a.nonce == nonce => {
                        acked = a.version;
                        force_snapshot = false;
                        refused = None;
                        node.edges.update(id, |e| e.applied_version = a.version);
                        break;
                    }
                    Some(Msg::Nack(n)) if n.nonce == nonce => {
                        let reason = n
                            .errors
                            .iter()
                            .map(|r| format!("{} {}/{}: {}", r.kind, r.tenant, r.name, r.message))
                            .collect::<Vec<_>>()
                            .join("; ");
                        tracing::warn!(edge = %id, version, reason = %reason, "edge refused config");
                        node.edges
                            .update(id, |e| e.last_nack = format!("version {version}: {reason}"));
                        refused = Some(version);
                        force_snapshot = false;
                        break;
                    }
                    // A stale answer to an earlier push: note the contact and keep waiting.
                    _ => node.edges.update(id, |_| {}),
                }
            }
            continue;
        }
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return "control plane shutting down".into();
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(_)) => node.edges.update(id, |_| {}),
                Ok(None) => return "stream closed".into(),
                Err(e) => return format!("stream error: {}", e.message()),
            },
            _ = tx.closed() => return "stream closed".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::Document;

    use super::*;
    use crate::state::Command;

    fn state_with_apps(n: usize) -> ConfigState {
        let mut s = ConfigState::default();
        let mut doc = String::from("tenants: [{name: t}]\napps:\n");
        for i in 0..n {
            doc.push_str(&format!("  - {{name: a{i}, tenant: t}}\n"));
        }
        let specs = Document::parse(&doc).unwrap().into_specs();
        s.apply(
            1,
            &Command::Apply {
                specs,
                prune: false,
            },
        )
        .unwrap();
        s
    }

    #[test]
    fn snapshots_are_chunked_with_one_nonce_and_a_final_checksum() {
        let s = state_with_apps(600);
        let pushes = pushes_since(&s, 0, false);
        assert_eq!(pushes.len(), 3);
        assert!(pushes
            .iter()
            .all(|p| p.snapshot && p.nonce == pushes[0].nonce && p.chunks == 3));
        assert!(pushes[0].checksum.is_empty() && !pushes[2].checksum.is_empty());
        let all: Vec<Resource> = pushes.iter().flat_map(|p| p.upserts.clone()).collect();
        assert_eq!(all.len(), 601);
        assert_eq!(
            pushes[2].checksum,
            tollgate_proto::stream::checksum(&all, &[])
        );
    }

    #[test]
    fn deltas_carry_only_what_changed() {
        let mut s = state_with_apps(3);
        let specs = Document::parse("apps: [{name: a1, tenant: t, description: changed}]")
            .unwrap()
            .into_specs();
        s.apply(
            2,
            &Command::Apply {
                specs,
                prune: false,
            },
        )
        .unwrap();
        s.apply(
            3,
            &Command::Delete {
                key: tollgate_proto::ResourceKey::new(tollgate_proto::Kind::App, "t", "a2"),
                expected_version: None,
            },
        )
        .unwrap();
        let pushes = pushes_since(&s, 1, false);
        assert_eq!(pushes.len(), 1);
        let p = &pushes[0];
        assert!(!p.snapshot);
        assert_eq!((p.base_version, p.version), (1, 3));
        assert_eq!(
            p.upserts
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["a1"]
        );
        assert_eq!(
            p.removals
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["a2"]
        );
        assert_eq!(
            p.checksum,
            tollgate_proto::stream::checksum(&p.upserts, &p.removals)
        );
    }
}
