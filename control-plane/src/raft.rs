//! Raft wiring: the timing config, the gRPC transport between control-plane nodes, and the
//! internal Raft service that receives it (laid out like openraft's raft-kv-memstore-grpc
//! example: the internal service is apart from the public admin API).
//!
//! Payloads are openraft's own request/response types as JSON inside a protobuf envelope, so
//! the transport never needs to change when openraft's messages do; snapshot chunks travel
//! as raw bytes beside the JSON. Every call carries the cluster credential (derived from the
//! master key all members share) and is refused without it: the Raft service shares the
//! `--grpc` port with the admin API, so it must not trust the network. Under mTLS the
//! credential stays as a second factor: a certificate from the cluster CA is also what edges
//! and operators hold, so it proves "inside the cluster", and the credential proves "member".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tollgate_proto::v1::raft_client::RaftClient;
use tollgate_proto::v1::raft_server;
use tollgate_proto::v1::RaftPayload;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::edges::EdgeRegistry;
use crate::mtls::{self, Connector};
use crate::raft_types::{NodeId, Raft, TypeConfig};
use crate::secrets::Keyring;
use crate::store::{StateMachineStore, SNAPSHOT_EVERY};

/// Raft timing for control planes on one LAN (or loopback): a leader is replaced within about
/// a second of dying.
pub fn config() -> openraft::Config {
    openraft::Config {
        cluster_name: "tollgate".into(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        install_snapshot_timeout: 4000,
        // Chunks and batches well under the gRPC message limit (MAX_MESSAGE_BYTES).
        snapshot_max_chunk_size: 1024 * 1024,
        max_payload_entries: 64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: 500,
        ..Default::default()
    }
}

/// Largest gRPC message the control plane sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Metadata key of the cluster credential on Raft calls.
pub const CLUSTER_CREDENTIAL: &str = "x-tollgate-cluster";

/// A lazily connecting gRPC channel to `addr` (host:port), over mTLS when `tls` is given.
pub fn channel(addr: &str, tls: Option<&Connector>) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true);
    Ok(mtls::connect_lazy(endpoint, tls))
}

/// Channels to peers by address, shared by Raft replication, call forwarding, the status
/// fan-out and the add-node probe; a channel reconnects by itself, so one per peer is
/// enough. Under mTLS each (re)connection presents the node's current certificate.
#[derive(Clone, Default)]
pub struct Channels {
    cache: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<Connector>,
}

impl Channels {
    /// Channels that connect over mTLS with `tls`, or in plaintext without it.
    pub fn new(tls: Option<Connector>) -> Self {
        Self {
            cache: Default::default(),
            tls,
        }
    }

    /// The mTLS connector, when the cluster runs mTLS.
    pub fn tls(&self) -> Option<&Connector> {
        self.tls.as_ref()
    }

    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut cache = self.cache.lock().expect("channel cache poisoned");
        if let Some(c) = cache.get(addr) {
            return Ok(c.clone());
        }
        let c = channel(addr, self.tls.as_ref())?;
        cache.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// What the cluster credential is derived for from a master key.
const CREDENTIAL_PURPOSE: &str = "tollgate raft v1";

/// The cluster credential: a node presents the one of the cluster's active master key and
/// accepts the one of any key it holds, so that a key rotation (`secret rotate-master`)
/// never splits the cluster: first every node learns the next key, then the state switches
/// the active one, then the old key goes.
#[derive(Clone)]
pub struct Credentials {
    /// (key id, credential) of every key the node holds, its own first: derived once.
    by_key: Arc<[(String, MetadataValue<tonic::metadata::Ascii>)]>,
    sm: StateMachineStore,
}

impl Credentials {
    pub fn new(keys: &Keyring, sm: StateMachineStore) -> Self {
        let by_key = keys
            .all()
            .map(|k| {
                let credential = k.derive(CREDENTIAL_PURPOSE).parse().expect("credentials are hex");
                (k.id().to_string(), credential)
            })
            .collect();
        Self { by_key, sm }
    }

    /// The credential to present now: of the cluster's active key when this node holds it,
    /// else of its own (see [`Keyring::active`]).
    pub(crate) fn metadata(&self) -> MetadataValue<tonic::metadata::Ascii> {
        let active = self.sm.read(|s| s.master_key_id.clone());
        let (_, credential) = self
            .by_key
            .iter()
            .find(|(id, _)| Some(id) == active.as_ref())
            .unwrap_or(&self.by_key[0]);
        credential.clone()
    }

    /// The ids of the master keys this node holds (ids are hashes: nothing of the key).
    pub fn key_ids(&self) -> Vec<String> {
        self.by_key.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Whether a presented credential is one of the keys this node holds.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.by_key
            .iter()
            .any(|(_, c)| aws_lc_rs::constant_time::verify_slices_are_equal(presented, c.as_bytes()).is_ok())
    }
}

/// Makes connections to peers.
#[derive(Clone)]
pub struct Network {
    channels: Channels,
    credentials: Credentials,
}

impl Network {
    pub fn new(channels: Channels, credentials: Credentials) -> Self {
        Self {
            channels,
            credentials,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            target,
            client: self
                .channels
                .get(&node.addr)
                .map(|c| {
                    RaftClient::new(c)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES)
                })
                .map_err(|e| e.to_string()),
            credentials: self.credentials.clone(),
        }
    }
}

pub struct Connection {
    target: NodeId,
    client: Result<RaftClient<Channel>, String>,
    credentials: Credentials,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                    e.clone(),
                ))))
            }
        };
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = Request::new(RaftPayload {
            json,
            error: Vec::new(),
            data,
        });
        request.set_timeout(option.hard_ttl());
        request
            .metadata_mut()
            .insert(CLUSTER_CREDENTIAL, self.credentials.metadata());
        let reply = match method {
            Method::Vote => client.vote(request).await,
            Method::Append => client.append_entries(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = TransportError(status.message().to_string());
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        if !reply.error.is_empty() {
            let err: RaftError<NodeId, E> =
                serde_json::from_slice(&reply.error).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            return Err(RPCError::RemoteError(RemoteError::new(self.target, err)));
        }
        serde_json::from_slice(&reply.json).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

#[derive(Clone, Copy)]
enum Method {
    Vote,
    Append,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Append, &rpc, Vec::new(), &option).await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let data = std::mem::take(&mut rpc.data);
        self.call(Method::Snapshot, &rpc, data, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, Vec::new(), &option).await
    }
}

/// The internal Raft service: hands peers' messages to the local Raft node.
pub struct RaftService {
    raft: Raft,
    id: NodeId,
    credentials: Credentials,
    edges: Arc<EdgeRegistry>,
}

impl RaftService {
    pub fn new(raft: Raft, id: NodeId, credentials: Credentials, edges: Arc<EdgeRegistry>) -> Self {
        Self {
            raft,
            id,
            credentials,
            edges,
        }
    }

    /// Checks the caller's cluster credential, then decodes the JSON payload.
    fn decode<T: DeserializeOwned>(&self, req: Request<RaftPayload>) -> Result<(T, Vec<u8>), Status> {
        let presented = req
            .metadata()
            .get(CLUSTER_CREDENTIAL)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !self.credentials.accepts(presented) {
            return Err(Status::permission_denied(
                "raft call without this cluster's credential (do all nodes share the master key file?)",
            ));
        }
        let payload = req.into_inner();
        let value = serde_json::from_slice(&payload.json)
            .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))?;
        Ok((value, payload.data))
    }
}

fn encode<T: Serialize, E: Serialize>(result: Result<T, E>) -> Result<Response<RaftPayload>, Status> {
    let payload = match result {
        Ok(v) => RaftPayload {
            json: serde_json::to_vec(&v).map_err(|e| Status::internal(e.to_string()))?,
            ..Default::default()
        },
        Err(e) => RaftPayload {
            error: serde_json::to_vec(&e).map_err(|e| Status::internal(e.to_string()))?,
            ..Default::default()
        },
    };
    Ok(Response::new(payload))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (rpc, _) = self.decode(req)?;
        encode(self.raft.vote(rpc).await)
    }

    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (rpc, _) = self.decode(req)?;
        encode(self.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (mut rpc, data): (InstallSnapshotRequest<TypeConfig>, _) = self.decode(req)?;
        rpc.data = data;
        encode(self.raft.install_snapshot(rpc).await)
    }

    async fn probe(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (_, _): (serde_json::Value, _) = self.decode(req)?;
        let keys = self.credentials.key_ids();
        encode::<_, ()>(Ok(
            serde_json::json!({ "node_id": self.id, "master_key_ids": keys }),
        ))
    }

    async fn edges(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (_, _): (serde_json::Value, _) = self.decode(req)?;
        let edges: Vec<serde_json::Value> = self
            .edges
            .local_peers()
            .into_iter()
            .map(|e| serde_json::json!({"node_id": e.node_id, "addr": e.addr}))
            .collect();
        encode::<_, ()>(Ok(edges))
    }
}

/// Checks that the node at `addr` is `expected` and holds this cluster's credential; the
/// ids of the master keys it holds.
pub async fn probe(
    channels: &Channels,
    credentials: &Credentials,
    addr: &str,
    expected: NodeId,
) -> Result<Vec<String>, String> {
    let channel = channels.get(addr).map_err(|e| format!("{addr}: {e}"))?;
    let mut client = RaftClient::new(channel);
    let mut req = Request::new(RaftPayload {
        json: b"{}".to_vec(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(3));
    req.metadata_mut()
        .insert(CLUSTER_CREDENTIAL, credentials.metadata());
    let reply = client.probe(req).await.map_err(|s| match s.code() {
        tonic::Code::PermissionDenied => format!(
            "node at {addr} refused this cluster's credential: it must use the same master key file as the cluster"
        ),
        _ => match mtls::tls_failure(&s) {
            Some(reason) => format!("node at {addr}: mTLS failed: {reason}"),
            None => format!("node at {addr} did not answer: {}", s.message()),
        },
    })?;
    let v: serde_json::Value = serde_json::from_slice(&reply.into_inner().json).unwrap_or_default();
    let keys = v["master_key_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    match v["node_id"].as_u64() {
        Some(id) if id == expected => Ok(keys),
        Some(id) => Err(format!("the node at {addr} is node {id}, not node {expected}")),
        None => Err(format!("node at {addr} gave a malformed answer")),
    }
}
