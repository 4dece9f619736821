//! The config stream, server side (DESIGN.md §5). Any node serves it from its own applied
//! state, so the leader is never a bottleneck.
//!
//! ```text
//!   edge: Hello{last_version = v}            (token of role edge in `authorization`)
//!   cp:   v == 0, or deletions since v forgotten  -> snapshot in chunks (one nonce)
//!         else                                    -> delta since v (may be empty)
//!   edge: Ack{nonce, version} -> v = version      | Nack{nonce, errors} -> recorded, v kept
//!   cp:   waits for the next applied change, pushes the delta since v, ...
//! ```
//!
//! One push is in flight per edge: the next is computed only after the edge answered the
//! last, from the version it acknowledged, so a delta always starts where the edge is. After
//! a NACK nothing is resent until the config moves past the refused version. A node never
//! sends an edge a version older than the one it holds (it tells the edge to try another
//! member instead). Pushes carry at most [`CHUNK_BYTES`] of resources; a bigger delta is sent
//! as a chunked snapshot.
//!
//! Edges authenticate with a token of role `edge` (`tollgate token create --role edge`,
//! given to the edge as `--join-token`).
//!
//! Every stream also carries the peer list for counter sharing: a push with only `peers`
//! set (no nonce, not acked) first, and again whenever the edges connected to this node
//! change. It names each connected edge's peer address and the key edges present to each
//! other, derived from the master key. Quota usage recorded by edges (`RecordUsage`) goes to
//! every edge the same way, at the start and within a second of each change.
//!
//! Secrets are never streamed, with the exceptions an edge cannot do without, each opened
//! with this node's master key as the push is built: a certificate is sent with its private
//! key (`key_pem`, from `key_secret`), a JWT issuer with its HS key (`hs_key_hex`, from
//! `hs_secret`), an OAuth2 introspection endpoint with its client secret (`client_secret`,
//! from `client_secret_secret`), an AI provider with its API keys (`api_keys`, from
//! `api_key_secret` and `api_key_secrets`). They exist in plaintext only in that push and on the edge
//! (memory, and its owner-only last-known-good file); the Raft log, snapshots and
//! `get`/`export` hold only the sealed secret.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tollgate_proto::keys::hex;
use tollgate_proto::v1::config_stream_server::ConfigStream;
use tollgate_proto::v1::edge_message::Msg;
use tollgate_proto::v1::*;
use tollgate_proto::{Kind, Spec};
use tonic::{Request, Response, Status, Streaming};

use crate::node::{now_ms, Node};
use crate::secrets::{random_bytes, Keyring};
use crate::state::{ConfigState, Role, Stored};

/// Most resource bytes (JSON) in one push; far below the gRPC message limit.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Most bytes kept of an edge-supplied text (NACK reasons).
const MAX_REPORT_BYTES: usize = 2048;
/// How long an edge may take to answer a push before the stream is dropped.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an edge that is ahead of this node waits for it to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);
/// What the edges' peer key is derived for from the master key (every CP node derives the
/// same key, so edges streaming from different nodes still trust each other).
const PEER_KEY_PURPOSE: &str = "tollgate edge peers v1";

pub struct StreamService {
    node: Arc<Node>,
    /// Served without TLS and without `--allow-plaintext-stream`: only edges on loopback
    /// get the stream.
    loopback_only: bool,
}

impl StreamService {
    /// `plaintext`: the gRPC port serves without TLS; `allow_plaintext`: the operator allows
    /// plaintext streams to edges off loopback (`--allow-plaintext-stream`).
    pub fn new(node: Arc<Node>, plaintext: bool, allow_plaintext: bool) -> Self {
        Self {
            node,
            loopback_only: plaintext && !allow_plaintext,
        }
    }
}

/// Every stream carries secrets (the edges' peer key, and certificate keys, HS keys, client
/// secrets and provider API keys when the config has them): in plaintext it goes to edges on
/// loopback only, unless the operator allowed it.
fn check_plaintext_peer(remote: Option<std::net::SocketAddr>) -> Result<(), Status> {
    match remote {
        Some(a) if a.ip().to_canonical().is_loopback() => Ok(()),
        _ => Err(Status::failed_precondition(format!(
            "the config stream carries secrets and this control plane serves it in plaintext: it is sent to edges on loopback only, and this edge connects from {}; set up mTLS inside the cluster (README, \"mTLS inside the cluster\"), or start the control plane with --allow-plaintext-stream if the network is protected otherwise",
            remote.map_or_else(|| "an unknown address".to_string(), |a| a.ip().to_string())
        ))),
    }
}

/// Opens secret `tenant/name` with the master key that sealed it.
fn open_secret(state: &ConfigState, keys: &Keyring, tenant: &str, name: &str) -> Result<Vec<u8>, String> {
    let secret_key = tollgate_proto::ResourceKey::new(Kind::Secret, tenant, name);
    match state.resources.get(&secret_key).map(|s| &s.spec) {
        Some(Spec::Secret(record)) => keys.open(record).map_err(|e| e.to_string()),
        _ => Err(format!("{secret_key} does not exist")),
    }
}

fn utf8(value: Vec<u8>, what: &str) -> Result<String, String> {
    String::from_utf8(value).map_err(|_| format!("the {what} is not UTF-8 text"))
}

/// A resource as an edge receives it: a certificate carries its private key, a JWT issuer its
/// HS key, an introspection endpoint its client secret, an AI provider its keys, each opened from the secret it
/// names. When a secret cannot be opened (another master key, a corrupt record) the resource
/// goes without it and the edge refuses it, naming the resource. Values are never logged.
fn streamed(
    state: &ConfigState,
    keys: &Keyring,
    key: &tollgate_proto::ResourceKey,
    stored: &Stored,
) -> Resource {
    let warn = |e: String| {
        tracing::warn!(resource = %key, error = %e, "cannot open the secret this resource names; sending it without");
    };
    let spec = match &stored.spec {
        Spec::Certificate(cert) => {
            let mut cert = cert.clone();
            match open_secret(state, keys, &key.tenant, &cert.key_secret).and_then(|v| utf8(v, "key")) {
                Ok(pem) => cert.key_pem = Some(pem),
                Err(e) => warn(e),
            }
            Spec::Certificate(cert)
        }
        Spec::JwtIssuer(j) if j.hs_secret.is_some() => {
            let mut j = j.clone();
            let name = j.hs_secret.clone().unwrap_or_default();
            match open_secret(state, keys, &key.tenant, &name) {
                Ok(v) => j.hs_key_hex = Some(hex(&v)),
                Err(e) => warn(e),
            }
            Spec::JwtIssuer(j)
        }
        // The OpenAPI document is the portal's; the edge routes by the routes alone.
        Spec::Service(svc) if svc.openapi.is_some() => {
            let mut svc = svc.clone();
            svc.openapi = None;
            Spec::Service(svc)
        }
        Spec::Oauth2Introspection(o) => {
            let mut o = o.clone();
            match open_secret(state, keys, &key.tenant, &o.client_secret_secret)
                .and_then(|v| utf8(v, "client secret"))
            {
                Ok(secret) => o.client_secret = Some(secret),
                Err(e) => warn(e),
            }
            Spec::Oauth2Introspection(o)
        }
        Spec::AiProvider(p) if p.key_secrets().next().is_some() => {
            let mut p = p.clone();
            let keys: Result<Vec<String>, String> = p
                .key_secrets()
                .map(|name| open_secret(state, keys, &key.tenant, name).and_then(|v| utf8(v, "API key")))
                .collect();
            match keys {
                Ok(k) => p.api_keys = Some(k),
                Err(e) => warn(e),
            }
            Spec::AiProvider(p)
        }
        _ => return stored.spec.to_resource(stored.version),
    };
    spec.to_resource(stored.version)
}

fn nonce() -> String {
    let mut b = [0u8; 8];
    // A nonce only needs to differ between pushes; fall back to the clock if the RNG fails.
    if random_bytes(&mut b).is_err() {
        b = now_ms().to_be_bytes();
    }
    hex(&b)
}

/// Cuts `resources` into chunks of at most [`CHUNK_BYTES`] of JSON (at least one resource
/// each; a single resource is at most `MAX_RESOURCE_BYTES`).
fn chunk_by_bytes(resources: Vec<Resource>) -> Vec<Vec<Resource>> {
    let mut chunks: Vec<Vec<Resource>> = vec![Vec::new()];
    let mut size = 0;
    for r in resources {
        let len = r.spec_json.len();
        if size + len > CHUNK_BYTES && chunks.last().is_some_and(|c| !c.is_empty()) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += len;
        chunks.last_mut().expect("never empty").push(r);
    }
    chunks
}

/// The pushes that bring an edge from `since` to the current state: a delta when possible,
/// else a chunked snapshot. `keys` opens certificates' private keys.
pub fn pushes_since(
    state: &ConfigState,
    since: u64,
    force_snapshot: bool,
    keys: &Keyring,
) -> Vec<ConfigPush> {
    let nonce = nonce();
    let delta = (!force_snapshot && since != 0)
        .then(|| state.delta_since(since))
        .flatten()
        .map(|(upserts, removals)| {
            let upserts: Vec<Resource> = upserts
                .into_iter()
                .map(|(k, s)| streamed(state, keys, k, s))
                .collect();
            (upserts, removals)
        })
        .filter(|(upserts, _)| upserts.iter().map(|r| r.spec_json.len()).sum::<usize>() <= CHUNK_BYTES);
    if let Some((upserts, removals)) = delta {
        let removals: Vec<ResourceKey> = removals
            .into_iter()
            .map(|k| ResourceKey {
                kind: k.kind.as_str().into(),
                tenant: k.tenant.clone(),
                name: k.name.clone(),
            })
            .collect();
        let checksum = tollgate_proto::stream::checksum(&upserts, &removals);
        return vec![ConfigPush {
            nonce,
            version: state.version,
            snapshot: false,
            chunk: 0,
            chunks: 1,
            upserts,
            removals,
            checksum,
            base_version: since,
            peers: None,
            usage: None,
            tail: None,
        }];
    }
    let all: Vec<Resource> = state
        .streamed()
        .map(|(k, s)| streamed(state, keys, k, s))
        .collect();
    let checksum = tollgate_proto::stream::checksum(&all, &[]);
    let chunks = chunk_by_bytes(all);
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
            peers: None,
            usage: None,
            tail: None,
        })
        .collect()
}

/// Keeps at most [`MAX_REPORT_BYTES`] of an edge-supplied text.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_REPORT_BYTES {
        return text.to_string();
    }
    let mut end = MAX_REPORT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
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

    async fn stream(&self, req: Request<Streaming<EdgeMessage>>) -> Result<Response<PushStream>, Status> {
        if self.loopback_only {
            check_plaintext_peer(req.remote_addr())?;
        }
        self.node.authorize(&req, &[Role::Edge, Role::ClusterAdmin])?;
        let mut inbound = req.into_inner();
        let mut hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(EdgeMessage {
                msg: Some(Msg::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => return Err(Status::invalid_argument("the first message must be hello")),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("no hello received")),
        };
        check_node_id(&hello.node_id)?;
        hello.capabilities.truncate(32);
        hello.capabilities.iter_mut().for_each(|c| c.truncate(64));
        // An edge already ahead of this node waits for it to catch up, or is sent elsewhere:
        // pushing it an older config would undo changes it already serves.
        let mut applied = self.node.sm.subscribe();
        let want = hello.last_version;
        if want > *applied.borrow() {
            let caught_up = tokio::time::timeout(CATCH_UP_WAIT, applied.wait_for(|v| *v >= want))
                .await
                .is_ok_and(|r| r.is_ok());
            if !caught_up {
                return Err(Status::unavailable(format!(
                    "this control-plane node is behind the edge (at {}, edge at {want}); try another",
                    *applied.borrow()
                )));
            }
        }
        let id = hello.node_id.clone();
        let peer_addr = shareable_peer_addr(&hello.peer_addr);
        let registered = self.node.edges.update(&id, now_ms(), |e| {
            e.connected = true;
            e.applied_version = want;
            e.capabilities = hello.capabilities.clone();
            e.peer_addr = peer_addr;
        });
        if !registered {
            return Err(Status::resource_exhausted(
                "too many edges connected to this node",
            ));
        }
        let (tx, rx) = mpsc::channel(8);
        let node = self.node.clone();
        tokio::spawn(async move {
            tracing::info!(edge = %id, last_version = want, "edge connected");
            let end = session(&node, &hello, &mut inbound, &tx).await;
            node.edges.update(&id, now_ms(), |e| e.connected = false);
            tracing::info!(edge = %id, reason = %end, "edge disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The peer address an edge announced, if other edges can use it: an IP address and port,
/// not the unspecified address (an edge listening on 0.0.0.0 names its reachable address
/// with `--peer-advertise`). Anything else is ignored: that edge then shares no counters.
fn shareable_peer_addr(announced: &str) -> String {
    match announced.parse::<std::net::SocketAddr>() {
        Ok(a) if !a.ip().is_unspecified() && a.port() != 0 => a.to_string(),
        _ => String::new(),
    }
}

/// The push that tells an edge who its peers are and the key they share.
fn peer_push(node: &Node) -> ConfigPush {
    ConfigPush {
        peers: Some(PeerList {
            edges: node.edges.peers(),
            key: node.active_key().derive(PEER_KEY_PURPOSE),
        }),
        ..Default::default()
    }
}

/// How often a session checks whether quota usage changed (and pushes it when it did).
const USAGE_EVERY: Duration = Duration::from_secs(1);
/// Most usage entries one push carries.
const MAX_USAGE_PUSH: usize = 200_000;

/// The push with every edge's quota usage, if it changed since `sent`; updates `sent`.
fn usage_push(node: &Node, sent: &mut Option<u64>) -> Option<ConfigPush> {
    let (changes, mut entries) = node.sm.read(|s| {
        let changes = s.usage.changes;
        let entries = (Some(changes) != *sent).then(|| s.usage.entries());
        (changes, entries)
    });
    let entries = entries.take()?;
    *sent = Some(changes);
    let mut entries = entries;
    entries.truncate(MAX_USAGE_PUSH);
    Some(ConfigPush {
        usage: Some(UsageTable { entries }),
        ..Default::default()
    })
}

/// The live tails' filters, for an edge.
fn tail_push(filters: &[tollgate_proto::v1::TailFilter]) -> ConfigPush {
    ConfigPush {
        tail: Some(tollgate_proto::v1::TailRequest {
            filters: filters.to_vec(),
        }),
        ..Default::default()
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
    let mut members = node.edges.subscribe();
    members.borrow_and_update();
    if tx.send(Ok(peer_push(node))).await.is_err() {
        return "stream closed".into();
    }
    let mut usage_sent = None;
    if let Some(push) = usage_push(node, &mut usage_sent) {
        if tx.send(Ok(push)).await.is_err() {
            return "stream closed".into();
        }
    }
    let mut tails = node.tails.watch();
    let open = tails.borrow_and_update().clone();
    if !open.is_empty() && tx.send(Ok(tail_push(&open))).await.is_err() {
        return "stream closed".into();
    }
    let mut usage_tick = tokio::time::interval(USAGE_EVERY);
    usage_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut applied = node.sm.subscribe();
    let mut acked = hello.last_version;
    let mut force_snapshot = acked == 0;
    let mut refused: Option<u64> = None;
    // The peer key is derived from the active master key: after a rotation, every edge gets
    // the new one.
    let mut peer_key_of = node.sm.read(|s| s.master_key_id.clone());
    loop {
        let current = *applied.borrow_and_update();
        let key_now = node.sm.read(|s| s.master_key_id.clone());
        if key_now != peer_key_of {
            peer_key_of = key_now;
            if tx.send(Ok(peer_push(node))).await.is_err() {
                return "stream closed".into();
            }
        }
        let due = force_snapshot || (current > acked && refused.is_none_or(|r| current > r));
        if due {
            let pushes = node
                .sm
                .read(|s| pushes_since(s, acked, force_snapshot, &node.keys));
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
                        node.edges.update(id, now_ms(), |e| e.applied_version = a.version);
                        break;
                    }
                    Some(Msg::Nack(n)) if n.nonce == nonce => {
                        let reason = n
                            .errors
                            .iter()
                            .take(20)
                            .map(|r| format!("{} {}/{}: {}", r.kind, r.tenant, r.name, r.message))
                            .collect::<Vec<_>>()
                            .join("; ");
                        let reason = bounded(&reason);
                        tracing::warn!(edge = %id, version, reason = %reason, "edge refused config");
                        node.edges.update(id, now_ms(), |e| {
                            e.last_nack = format!("version {version}: {reason}")
                        });
                        refused = Some(version);
                        force_snapshot = false;
                        break;
                    }
                    Some(Msg::Records(r)) => node.tails.publish(id, r.lines),
                    // A stale answer to an earlier push: note the contact and keep waiting.
                    _ => {
                        node.edges.update(id, now_ms(), |_| {});
                    }
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
            _ = usage_tick.tick() => {
                if let Some(push) = usage_push(node, &mut usage_sent) {
                    if tx.send(Ok(push)).await.is_err() {
                        return "stream closed".into();
                    }
                }
            }
            changed = members.changed() => {
                if changed.is_err() {
                    return "control plane shutting down".into();
                }
                members.borrow_and_update();
                if tx.send(Ok(peer_push(node))).await.is_err() {
                    return "stream closed".into();
                }
            }
            changed = tails.changed() => {
                if changed.is_err() {
                    return "control plane shutting down".into();
                }
                let push = tail_push(&tails.borrow_and_update());
                if tx.send(Ok(push)).await.is_err() {
                    return "stream closed".into();
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(EdgeMessage { msg: Some(Msg::Records(r)) })) => {
                    node.tails.publish(id, r.lines);
                }
                Ok(Some(_)) => {
                    node.edges.update(id, now_ms(), |_| {});
                }
                Ok(None) => return "stream closed".into(),
                Err(e) => return format!("stream error: {}", e.message()),
            },
            _ = tx.closed() => return "stream closed".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::{Document, Kind};

    use super::*;
    use crate::state::Command;

    /// A keyring of one master key in a temporary file (the file may go: the key stays in
    /// memory).
    fn test_key() -> Keyring {
        Keyring::new(master_key(), None)
    }

    fn master_key() -> crate::secrets::MasterKey {
        let dir = tempfile::tempdir().unwrap();
        crate::secrets::MasterKey::load_or_create(&dir.path().join("master.key")).unwrap()
    }

    fn apply(s: &mut ConfigState, index: u64, yaml: &str) {
        let specs = Document::parse(yaml).unwrap().into_specs();
        s.apply(index, &Command::Apply { specs, prune: false }).unwrap();
    }

    fn apps(n: usize, description: &str) -> String {
        let mut doc = String::from("apps:\n");
        for i in 0..n {
            doc.push_str(&format!(
                "  - {{name: a{i}, tenant: t, description: '{description}'}}\n"
            ));
        }
        doc
    }

    #[test]
    fn only_usable_peer_addresses_are_shared() {
        assert_eq!(shareable_peer_addr("127.0.0.1:7900"), "127.0.0.1:7900");
        assert_eq!(shareable_peer_addr("[::1]:7900"), "[::1]:7900");
        for unusable in [
            "0.0.0.0:7900",
            "[::]:7900",
            "127.0.0.1:0",
            "edge-a:7900",
            "",
            "junk",
        ] {
            assert_eq!(shareable_peer_addr(unusable), "", "{unusable}");
        }
    }

    #[test]
    fn snapshots_are_chunked_by_bytes_with_one_nonce_and_a_final_checksum() {
        let mut s = ConfigState::default();
        apply(&mut s, 1, "tenants: [{name: t}]");
        // ~110 bytes per app: about 3 MiB in all.
        apply(&mut s, 2, &apps(30_000, &"x".repeat(60)));
        let pushes = pushes_since(&s, 0, false, &test_key());
        let n = pushes.len();
        assert!(n >= 3, "{n} chunks");
        assert!(pushes
            .iter()
            .all(|p| p.snapshot && p.nonce == pushes[0].nonce && p.chunks as usize == n));
        let biggest = pushes
            .iter()
            .map(|p| p.upserts.iter().map(|r| r.spec_json.len()).sum::<usize>())
            .max();
        assert!(biggest.unwrap() <= CHUNK_BYTES);
        assert!(pushes[..n - 1].iter().all(|p| p.checksum.is_empty()));
        let all: Vec<Resource> = pushes.iter().flat_map(|p| p.upserts.clone()).collect();
        assert_eq!(all.len(), 30_001);
        assert_eq!(
            pushes[n - 1].checksum,
            tollgate_proto::stream::checksum(&all, &[])
        );

        // A small change is a delta; a delta bigger than a chunk becomes a snapshot.
        apply(&mut s, 3, "apps: [{name: a1, tenant: t, description: y}]");
        assert!(pushes_since(&s, 2, false, &test_key())
            .iter()
            .all(|p| !p.snapshot));
        apply(&mut s, 4, &apps(30_000, &"y".repeat(60)));
        assert!(pushes_since(&s, 3, false, &test_key()).iter().all(|p| p.snapshot));
    }

    #[test]
    fn deltas_carry_only_what_changed() {
        let mut s = ConfigState::default();
        apply(&mut s, 1, &format!("tenants: [{{name: t}}]\n{}", apps(3, "x")));
        apply(&mut s, 2, "apps: [{name: a1, tenant: t, description: changed}]");
        let key = tollgate_proto::ResourceKey::new(Kind::App, "t", "a2");
        s.apply(
            3,
            &Command::Delete {
                key,
                expected_version: None,
            },
        )
        .unwrap();
        let pushes = pushes_since(&s, 1, false, &test_key());
        assert_eq!(pushes.len(), 1);
        let p = &pushes[0];
        assert!(!p.snapshot);
        assert_eq!((p.base_version, p.version), (1, 3));
        let names = |rs: Vec<&str>| rs.into_iter().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(names(p.upserts.iter().map(|r| r.name.as_str()).collect()), ["a1"]);
        assert_eq!(
            names(p.removals.iter().map(|r| r.name.as_str()).collect()),
            ["a2"]
        );
        assert_eq!(
            p.checksum,
            tollgate_proto::stream::checksum(&p.upserts, &p.removals)
        );
    }

    const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\\nMIIBxjCCAWugAwIBAgIUSy7Y1QKPWpR5xKuhRq2vlaV15X0wCgYIKoZIzj0EAwIw\\nGzEZMBcGA1UEAwwQVG9sbGdhdGUgdGVzdCBDQTAgFw0yNjExMjYwOTM1MjBaGA8y\\nMTI2MTEwMjA5MzUyMFowGDEWMBQGA1UEAwwNYS5leGFtcGxlLmNvbTBZMBMGByqG\\nSM49AgEGCCqGSM49AwEHA0IABGFPyOpkewDDZLL+8PUN1xjqsdzehxR0WeHGIO1Y\\n8poazLC3UVxIDcgjkdDepT6uhGgawkuohTMAEK1HQDf1K/mjgY0wgYowGAYDVR0R\\nBBEwD4INYS5leGFtcGxlLmNvbTAJBgNVHRMEAjAAMA4GA1UdDwEB/wQEAwIHgDAT\\nBgNVHSUEDDAKBggrBgEFBQcDATAdBgNVHQ4EFgQUUzt1YPyUp+Dg0iuOmsJIb4Qy\\nVcAwHwYDVR0jBBgwFoAUrV1ZkvYCo0s+ps2su63YSW/KUKIwCgYIKoZIzj0EAwID\\nSQAwRgIhANzVbAZpGBOarMwUQoazBaanDdoeQ6PCmddrXMOyG3JaAiEA6eYYyV5O\\nDZqG/NZQ2upaOLHg6kbGuqsIARUrrPYxxBY=\\n-----END CERTIFICATE-----\\n";
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\\nnot-really-a-key\\n-----END PRIVATE KEY-----\\n";

    fn certificate_doc() -> String {
        format!(
            "tenants: [{{name: t}}]\ncertificates: [{{name: web, tenant: t, hosts: [a.example.com], cert_pem: \"{CERT_PEM}\", key_secret: web-key}}]"
        )
    }

    fn put_secret(s: &mut ConfigState, index: u64, keys: &Keyring, value: &str) -> crate::state::Outcome {
        let record = keys.current().seal("t", "web-key", value.as_bytes(), 0).unwrap();
        s.apply(index, &Command::PutSecret(record)).unwrap()
    }

    /// The certificate in a push, decoded.
    fn pushed_certificate(pushes: &[ConfigPush]) -> Option<tollgate_proto::model::Certificate> {
        let r = pushes
            .iter()
            .flat_map(|p| &p.upserts)
            .find(|r| r.kind == "certificate")?;
        match Spec::from_json(Kind::Certificate, &r.spec_json).unwrap() {
            Spec::Certificate(c) => Some(c),
            _ => None,
        }
    }

    #[test]
    fn a_master_key_rotation_reseals_every_secret_and_refuses_a_stale_one() {
        let (old, new) = (master_key(), master_key());
        let new_id = new.id().to_string();
        let mut s = ConfigState::default();
        apply(&mut s, 1, "tenants: [{name: t}]");
        s.master_key_id = Some(old.id().to_string());
        let before = old.seal("t", "web-key", KEY_PEM.as_bytes(), 0).unwrap();
        s.apply(2, &Command::PutSecret(before.clone())).unwrap();
        apply(&mut s, 3, &certificate_doc());
        let version = s.version;
        let resealed = |replaces: &str| crate::state::Resealed {
            replaces: replaces.to_string(),
            record: new.seal("t", "web-key", KEY_PEM.as_bytes(), 0).unwrap(),
        };
        let rotate = |r| Command::RotateMasterKey {
            key_id: new_id.clone(),
            resealed: vec![r],
        };
        // A record that does not replace the stored value (a secret set meanwhile): refused.
        assert!(s.apply(4, &rotate(resealed("stale"))).is_err());
        assert_eq!(s.master_key_id.as_deref(), Some(old.id()));
        s.apply(5, &rotate(resealed(&before.sealed))).unwrap();
        assert_eq!(s.master_key_id.as_deref(), Some(new_id.as_str()));
        assert_eq!(s.version, version, "a rotation is no config change");
        // A node holding both keys, and one holding only the new, open the certificate's key.
        let ring = Keyring::new(master_key(), Some(new));
        let cert = pushed_certificate(&pushes_since(&s, 0, false, &ring)).unwrap();
        assert_eq!(cert.key_pem.as_deref(), Some(KEY_PEM));
        let only_old = Keyring::new(old, None);
        let cert = pushed_certificate(&pushes_since(&s, 0, false, &only_old)).unwrap();
        assert_eq!(
            cert.key_pem, None,
            "without the new key the secret cannot be opened"
        );
    }

    #[test]
    fn certificates_carry_their_opened_key_and_are_resent_when_it_changes() {
        let keys = test_key();
        let mut s = ConfigState::default();
        apply(&mut s, 1, "tenants: [{name: t}]");
        put_secret(&mut s, 2, &keys, "placeholder");
        apply(&mut s, 2, &certificate_doc());
        let out = put_secret(&mut s, 3, &keys, KEY_PEM);

        // The key change re-sends the certificate, reported as updated.
        let cert_key = tollgate_proto::ResourceKey::new(Kind::Certificate, "t", "web");
        assert!(
            out.changes
                .iter()
                .any(|c| c.key == cert_key && c.action == crate::state::Action::Updated),
            "{:?}",
            out.changes
        );
        assert_eq!(s.resources[&cert_key].version, 3);
        let delta = pushes_since(&s, 2, false, &keys);
        assert!(!delta[0].snapshot);
        assert_eq!(
            pushed_certificate(&delta).unwrap().key_pem.as_deref(),
            Some(KEY_PEM)
        );
        let snapshot = pushes_since(&s, 0, false, &keys);
        assert_eq!(
            pushed_certificate(&snapshot).unwrap().key_pem.as_deref(),
            Some(KEY_PEM)
        );
        assert!(delta
            .iter()
            .chain(&snapshot)
            .flat_map(|p| &p.upserts)
            .all(|r| r.kind != "secret"));

        // What is stored, shown and exported never holds the key.
        assert!(!serde_json::to_string(&s).unwrap().contains("not-really-a-key"));
        let exported = serde_saphyr::to_string(&s.export(None)).unwrap();
        assert!(
            exported.contains("key_secret: web-key") && !exported.contains("key_pem"),
            "{exported}"
        );

        // A node with another master key cannot open it: the certificate goes without.
        let other = test_key();
        assert_eq!(
            pushed_certificate(&pushes_since(&s, 0, false, &other))
                .unwrap()
                .key_pem,
            None
        );
    }

    #[test]
    fn ai_providers_carry_their_opened_keys_in_order_and_export_none() {
        let keys = test_key();
        let mut s = ConfigState::default();
        apply(&mut s, 1, "tenants: [{name: t}]");
        for (i, (name, value)) in [("k1", "sk-first-0123456789"), ("k2", "sk-second-9876543210")]
            .into_iter()
            .enumerate()
        {
            let record = keys.current().seal("t", name, value.as_bytes(), 0).unwrap();
            s.apply(2 + i as u64, &Command::PutSecret(record)).unwrap();
        }
        let doc = "tenants: [{name: t}]\nai_providers: [{name: oa, tenant: t, kind: openai, base_url: \"https://api.openai.com\", api_key_secret: k2, api_key_secrets: [k1]}]";
        apply(&mut s, 4, doc);
        let pushed = pushes_since(&s, 0, false, &keys);
        let r = pushed
            .iter()
            .flat_map(|p| &p.upserts)
            .find(|r| r.kind == "ai_provider")
            .unwrap();
        let Spec::AiProvider(p) = Spec::from_json(Kind::AiProvider, &r.spec_json).unwrap() else {
            panic!("not a provider: {}", r.spec_json)
        };
        // `api_key_secret` first, then the pool.
        assert_eq!(
            p.api_keys.as_deref(),
            Some(
                &[
                    "sk-second-9876543210".to_string(),
                    "sk-first-0123456789".to_string()
                ][..]
            )
        );
        // Stored, exported and debug-printed: never a key.
        assert!(!serde_json::to_string(&s).unwrap().contains("sk-first"));
        let exported = serde_saphyr::to_string(&s.export(None)).unwrap();
        assert!(
            exported.contains("api_key_secret: k2") && !exported.contains("sk-"),
            "{exported}"
        );
        assert!(!format!("{p:?}").contains("sk-"), "{p:?}");
        // A document cannot carry the keys themselves.
        let smuggled = doc.replace("api_key_secrets: [k1]", "api_keys: [sk-x]");
        let specs = Document::parse(&smuggled).unwrap().into_specs();
        assert!(s.apply(5, &Command::Apply { specs, prune: false }).is_err());
    }

    #[test]
    fn a_secret_in_use_by_a_certificate_cannot_be_deleted() {
        let keys = test_key();
        let mut s = ConfigState::default();
        apply(&mut s, 1, "tenants: [{name: t}]");
        put_secret(&mut s, 2, &keys, KEY_PEM);
        apply(&mut s, 2, &certificate_doc());
        let err = s
            .apply(
                3,
                &Command::DeleteSecret {
                    tenant: "t".into(),
                    name: "web-key".into(),
                },
            )
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "certificate t/web: key_secret: references secret t/web-key, which this change deletes"
            ),
            "{err}"
        );
        // A document cannot smuggle a key in.
        let with_key = certificate_doc().replace("key_secret: web-key", "key_secret: web-key, key_pem: x");
        let specs = Document::parse(&with_key).unwrap().into_specs();
        let err = s.apply(4, &Command::Apply { specs, prune: false }).unwrap_err();
        assert!(
            err.to_string()
                .contains("key_pem: private keys are not written in documents"),
            "{err}"
        );
    }

    #[test]
    fn issuers_and_introspection_carry_their_opened_secrets_and_are_resent() {
        let keys = test_key();
        let mut s = ConfigState::default();
        apply(&mut s, 1, "tenants: [{name: t}]");
        for (i, (name, value)) in [("hs", "first"), ("cs", "client-secret")].iter().enumerate() {
            let record = keys.current().seal("t", name, value.as_bytes(), 0).unwrap();
            s.apply(2 + i as u64, &Command::PutSecret(record)).unwrap();
        }
        apply(
            &mut s,
            4,
            "jwt_issuers: [{name: i, tenant: t, issuer: x, algorithms: [HS256], hs_secret: hs}]\noauth2_introspections: [{name: o, tenant: t, url: 'https://idp/i', client_id: gw, client_secret_secret: cs}]",
        );
        let pushed = |pushes: &[ConfigPush], kind: &str| -> Spec {
            let r = pushes
                .iter()
                .flat_map(|p| &p.upserts)
                .find(|r| r.kind == kind)
                .unwrap();
            Spec::from_json(Kind::parse(kind).unwrap(), &r.spec_json).unwrap()
        };
        let snapshot = pushes_since(&s, 0, false, &keys);
        let Spec::JwtIssuer(j) = pushed(&snapshot, "jwt_issuer") else {
            unreachable!()
        };
        assert_eq!(j.hs_key_hex.as_deref(), Some(hex(b"first").as_str()));
        let Spec::Oauth2Introspection(o) = pushed(&snapshot, "oauth2_introspection") else {
            unreachable!()
        };
        assert_eq!(o.client_secret.as_deref(), Some("client-secret"));

        // Setting the secret again re-sends the issuer with the new key.
        let record = keys.current().seal("t", "hs", b"second", 0).unwrap();
        s.apply(5, &Command::PutSecret(record)).unwrap();
        let delta = pushes_since(&s, 4, false, &keys);
        assert!(!delta[0].snapshot);
        let Spec::JwtIssuer(j) = pushed(&delta, "jwt_issuer") else {
            unreachable!()
        };
        assert_eq!(j.hs_key_hex.as_deref(), Some(hex(b"second").as_str()));
        assert!(delta
            .iter()
            .flat_map(|p| &p.upserts)
            .all(|r| r.kind != "oauth2_introspection"));

        // Never stored or exported.
        let stored = serde_json::to_string(&s).unwrap();
        assert!(!stored.contains("client-secret") && !stored.contains(&hex(b"second")));
        let exported = serde_saphyr::to_string(&s.export(None)).unwrap();
        assert!(
            !exported.contains("hs_key_hex") && !exported.contains("client_secret:"),
            "{exported}"
        );
    }

    #[test]
    fn edge_reports_are_bounded() {
        let long = "é".repeat(5000);
        let b = bounded(&long);
        assert!(b.len() <= MAX_REPORT_BYTES + 3 && b.ends_with("..."));
    }

    #[test]
    fn plaintext_streams_go_to_loopback_edges_only() {
        let at = |a: &str| Some(a.parse::<std::net::SocketAddr>().unwrap());
        assert!(check_plaintext_peer(at("127.0.0.1:5000")).is_ok());
        assert!(check_plaintext_peer(at("[::1]:5000")).is_ok());
        assert!(check_plaintext_peer(at("[::ffff:127.0.0.1]:5000")).is_ok());
        for remote in [at("10.0.0.5:5000"), at("[2001:db8::1]:5000"), None] {
            let e = check_plaintext_peer(remote).unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition);
            assert!(
                e.message().contains("--allow-plaintext-stream"),
                "{}",
                e.message()
            );
        }
    }
}
