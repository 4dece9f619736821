//! Raft wiring: the type config, the gRPC transport between control-plane nodes, and the
//! internal Raft service that receives it (laid out like openraft's raft-kv-memstore-grpc
//! example: the internal service is apart from the public admin API).
//!
//! Payloads are openraft's own request/response types as JSON inside a protobuf envelope, so
//! the transport never needs to change when openraft's messages do.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
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
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::state::{Command, CommandResponse};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Tollgate's Raft types: commands in, command responses out, nodes known by gRPC address.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// Raft timing for control planes on one LAN (or loopback): a leader is replaced within about
/// a second of dying.
pub fn config() -> openraft::Config {
    openraft::Config {
        cluster_name: "tollgate".into(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        install_snapshot_timeout: 2000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(crate::store::SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: 500,
        ..Default::default()
    }
}

/// A lazily connecting gRPC channel to `addr` (host:port).
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Makes connections to peers; channels are cached per address and reconnect by themselves.
#[derive(Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        let channel = {
            let mut channels = self.channels.lock().expect("channel cache poisoned");
            match channels.get(&node.addr) {
                Some(c) => Ok(c.clone()),
                None => channel(&node.addr).inspect(|c| {
                    channels.insert(node.addr.clone(), c.clone());
                }),
            }
        };
        Connection {
            target,
            client: channel.map(RaftClient::new).map_err(|e| e.to_string()),
        }
    }
}

pub struct Connection {
    target: NodeId,
    client: Result<RaftClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
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
        });
        request.set_timeout(option.hard_ttl());
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
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        if !reply.error.is_empty() {
            let err: RaftError<NodeId, E> = serde_json::from_slice(&reply.error)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
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
        self.call(Method::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, &option).await
    }
}

/// The internal Raft service: hands peers' messages to the local Raft node.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        Self { raft }
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
}

fn encode<T: Serialize, E: Serialize>(
    result: Result<T, E>,
) -> Result<Response<RaftPayload>, Status> {
    let payload = match result {
        Ok(v) => RaftPayload {
            json: serde_json::to_vec(&v).map_err(|e| Status::internal(e.to_string()))?,
            error: Vec::new(),
        },
        Err(e) => RaftPayload {
            json: Vec::new(),
            error: serde_json::to_vec(&e).map_err(|e| Status::internal(e.to_string()))?,
        },
    };
    Ok(Response::new(payload))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        encode(self.raft.vote(decode(req)?).await)
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        encode(self.raft.append_entries(decode(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        encode(self.raft.install_snapshot(decode(req)?).await)
    }
}
