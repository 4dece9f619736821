//! One control-plane node: its Raft instance, state machine handle, master key and edge
//! registry, plus the two things every API call needs — deciding who answers (this node or
//! the leader) and turning a [`Command`] into a committed outcome.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use tollgate_proto::keys::sha256_hex;
use tollgate_proto::v1::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::raft::{NodeId, Raft};
use crate::secrets::MasterKey;
use crate::state::{Command, CommandError, Outcome};
use crate::store::StateMachineStore;
use crate::stream::EdgeRegistry;

/// Metadata set on calls a node forwards to the leader, so they are never forwarded twice.
const FORWARDED: &str = "x-tollgate-forwarded";
/// How long a call waits for a leader to be elected before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(5);

pub struct Node {
    pub id: NodeId,
    /// gRPC address other nodes and clients reach this node at.
    pub addr: String,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub data_dir: PathBuf,
    pub master_key: MasterKey,
    pub edges: EdgeRegistry,
}

/// Who answers a call.
pub enum Route {
    Local,
    Forward(AdminClient<Channel>),
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Maps a command's rejection to a gRPC status (the admin API's one error mapping).
pub fn command_status(e: CommandError) -> Status {
    match e {
        CommandError::Invalid(_) => Status::invalid_argument(e.to_string()),
        CommandError::Conflict(_) => Status::aborted(e.to_string()),
        CommandError::NotFound(_) => Status::not_found(e.to_string()),
    }
}

fn raft_status<E: std::fmt::Display>(e: E) -> Status {
    Status::unavailable(format!("raft: {e}; retry"))
}

impl Node {
    pub fn is_initialized(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .next()
            .is_some()
    }

    /// Checks the call's admin token against this node's state.
    pub fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("missing admin token: pass --token or set TOLLGATE_TOKEN")
            })?;
        let hash = sha256_hex(token.as_bytes());
        if self.sm.read(|s| s.has_admin_token(&hash).is_some()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid admin token"))
        }
    }

    /// Decides whether this node answers `req` or forwards it to the leader, waiting for an
    /// election in progress to finish.
    pub async fn route<T>(&self, req: &Request<T>) -> Result<Route, Status> {
        if !self.is_initialized() {
            return Err(Status::failed_precondition(
                "cluster not initialized: run `tollgate cluster init` on one node",
            ));
        }
        let deadline = Instant::now() + LEADER_WAIT;
        let mut metrics = self.raft.metrics();
        loop {
            let (leader, addr) = {
                let m = metrics.borrow_and_update();
                let leader = m.current_leader;
                let addr = leader.and_then(|l| {
                    m.membership_config
                        .membership()
                        .get_node(&l)
                        .map(|n| n.addr.clone())
                });
                (leader, addr)
            };
            match (leader, addr) {
                (Some(l), _) if l == self.id => return Ok(Route::Local),
                (Some(_), Some(addr)) => {
                    if req.metadata().contains_key(FORWARDED) {
                        return Err(Status::unavailable("leadership is moving; retry"));
                    }
                    let channel = crate::raft::channel(&addr)
                        .map_err(|e| Status::unavailable(format!("leader at {addr}: {e}")))?;
                    return Ok(Route::Forward(AdminClient::new(channel)));
                }
                _ => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::unavailable(
                    "no control-plane leader; is a quorum of nodes up?",
                ));
            }
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(100)), metrics.changed()).await;
        }
    }

    /// Commits `cmd` through Raft (this node must be the leader).
    pub async fn write(&self, cmd: Command) -> Result<Outcome, Status> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => match resp.data.result {
                Some(Ok(outcome)) => Ok(outcome),
                Some(Err(e)) => Err(command_status(e)),
                None => Err(Status::internal("command produced no result")),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(
                Status::unavailable("leadership changed during the write; retry"),
            ),
            Err(e) => Err(raft_status(e)),
        }
    }

    /// Waits until this node (the leader) has applied everything committed before now, so a
    /// read after it sees every acknowledged write.
    pub async fn linearizable(&self) -> Result<(), Status> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Err(
                Status::unavailable("leadership changed during the read; retry"),
            ),
            Err(e) => Err(raft_status(e)),
        }
    }

    pub fn role(&self) -> &'static str {
        match self.raft.metrics().borrow().state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        }
    }
}

/// Re-sends `req` to the leader with its metadata, marked as forwarded.
pub fn forwarded<T>(req: Request<T>) -> Request<T> {
    let (mut metadata, extensions, message) = req.into_parts();
    metadata.insert(FORWARDED, MetadataValue::from_static("1"));
    Request::from_parts(metadata, extensions, message)
}
