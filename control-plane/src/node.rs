//! One control-plane node: its Raft instance, state machine handle, master key and edge
//! registry, plus what every API call needs — the token check, deciding who answers (this
//! node or the leader) and turning a [`Command`] into a committed outcome.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use tollgate_proto::keys::sha256_hex;
use tollgate_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

type GrpcRequest<T> = tonic::Request<T>;

use crate::edges::EdgeRegistry;
use crate::error::AdminError;
use crate::forward::is_forwarded;
use crate::raft::{Channels, MAX_MESSAGE_BYTES};
use crate::raft_types::{NodeId, Raft};
use crate::secrets::{Keyring, MasterKey};
use crate::state::{Actor, AdminToken, Command, Outcome, Request, Role};
use crate::store::StateMachineStore;

/// How long a call waits for a leader (an election, a failover) before giving up.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);

pub struct Node {
    pub id: NodeId,
    /// gRPC address other nodes and clients reach this node at.
    pub addr: String,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub data_dir: PathBuf,
    /// This node's master keys: its own and, during a rotation, the next.
    pub keys: Arc<Keyring>,
    pub edges: Arc<EdgeRegistry>,
    pub channels: Channels,
    /// The cluster credential Raft peers present (derived from the active master key).
    pub credentials: crate::raft::Credentials,
    /// How long rollups are kept, stamped on the rollup commands this node leads.
    pub rollup_retention: crate::rollups::Retention,
    /// The live tails open on this node.
    pub tails: Arc<crate::tails::Tails>,
    /// Refused admin calls, audited within a budget.
    pub refusals: crate::refusals::Refusals,
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

/// The bearer token of a call, if it carries one.
fn bearer<T>(req: &GrpcRequest<T>) -> Option<&str> {
    req.metadata()
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Longest a refusal waits for its audit record to commit.
const REFUSAL_AUDIT_WAIT: Duration = Duration::from_secs(2);

fn raft_unavailable<E: std::fmt::Display>(e: E) -> AdminError {
    AdminError::Unavailable(format!("raft: {e}"))
}

impl Node {
    /// Whether this node belongs to an initialized cluster (asks the Raft core, so it is
    /// right also just after a restart).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// The token of a call, checked against this node's state: it must exist and have one
    /// of `roles`.
    pub fn authorize<T>(&self, req: &GrpcRequest<T>, roles: &[Role]) -> Result<AdminToken, AdminError> {
        let token = bearer(req).ok_or(AdminError::Unauthenticated(
            "missing token: pass --token or set TOLLGATE_TOKEN",
        ))?;
        match self.known_token(token) {
            Some(t) if roles.contains(&t.role) => Ok(t),
            Some(t) => Err(AdminError::PermissionDenied {
                who: format!("a {} token", t.role.as_str()),
                what: "do this".into(),
            }),
            None => Err(AdminError::Unauthenticated("invalid token")),
        }
    }

    /// Decides whether this node answers `req` or forwards it to the leader, waiting for an
    /// election in progress to finish.
    pub async fn route<T>(&self, req: &GrpcRequest<T>, deadline: Instant) -> Result<Route, AdminError> {
        if !self.is_initialized().await {
            return Err(AdminError::FailedPrecondition(
                "cluster not initialized: run `tollgate cluster init` on one node".into(),
            ));
        }
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
                    if is_forwarded(req) {
                        return Err(AdminError::NotApplied("leadership is moving"));
                    }
                    let channel = self
                        .channels
                        .get(&addr)
                        .map_err(|e| AdminError::Unavailable(format!("leader at {addr}: {e}")))?;
                    let client = AdminClient::new(channel)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES);
                    return Ok(Route::Forward(client));
                }
                _ => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AdminError::Unavailable(
                    "no control-plane leader; is a quorum of nodes up?".into(),
                ));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), metrics.changed()).await;
        }
    }

    /// After a call failed because the leader went away: waits (until `deadline`) for this
    /// node to learn of a different leader, or a moment if it already has.
    pub async fn wait_for_new_leader(&self, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        let old = metrics.borrow_and_update().current_leader;
        let until = deadline.min(Instant::now() + Duration::from_secs(2));
        while Instant::now() < until {
            let _ = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
            let now = metrics.borrow_and_update().current_leader;
            if now.is_some() && now != old {
                return;
            }
        }
    }

    /// The cluster's active master key: the one that seals new secrets and derives the
    /// credentials (this node's own before `cluster init`).
    pub fn active_key(&self) -> &MasterKey {
        let active = self.sm.read(|s| s.master_key_id.clone());
        self.keys.active(active.as_deref())
    }

    /// The token of a call, whatever its role (who was refused), if this node knows it.
    pub fn token_of<T>(&self, req: &GrpcRequest<T>) -> Option<AdminToken> {
        self.known_token(bearer(req)?)
    }

    fn known_token(&self, token: &str) -> Option<AdminToken> {
        let hash = sha256_hex(token.as_bytes());
        self.sm.read(|s| s.has_admin_token(&hash).cloned())
    }

    /// Audits the refusal of `method` (a gRPC method name, `create_key`) asked for with
    /// `token`, when it is one the audit log keeps ([`crate::refusals`]), before the caller
    /// hears of it (waiting at most [`REFUSAL_AUDIT_WAIT`]: a refusal is never held up long
    /// by a slow cluster).
    pub async fn audit_refusal(&self, token: &AdminToken, method: &str, error: &AdminError) {
        if !crate::refusals::is_audited(error) {
            return;
        }
        let action = method.replace('_', " ");
        if !self.refusals.admit(Instant::now()) {
            tracing::warn!(token = %token.id, %action, "refused admin call not audited: too many refusals");
            return;
        }
        let cmd = Command::Refused {
            action,
            tenants: token.tenant.iter().cloned().collect(),
            error: crate::refusals::message(error),
        };
        match tokio::time::timeout(REFUSAL_AUDIT_WAIT, self.write(cmd, Some(Actor::of(token)))).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not audit a refused admin call"),
            Err(_) => tracing::warn!("auditing a refused admin call is taking long; answering the caller"),
        }
    }

    /// Commits `cmd`, asked for by `actor`, through Raft (this node must be the leader).
    pub async fn write(&self, cmd: Command, actor: Option<Actor>) -> Result<Outcome, AdminError> {
        let req = Request {
            command: cmd,
            actor,
            at_ms: now_ms(),
        };
        match self.raft.client_write(req).await {
            Ok(resp) => match resp.data.result {
                Some(Ok(outcome)) => Ok(outcome),
                Some(Err(e)) => Err(e.into()),
                None => Err(AdminError::Internal("command produced no result".into())),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(AdminError::NotApplied("leadership changed"))
            }
            Err(e) => Err(raft_unavailable(e)),
        }
    }

    /// Waits until this node (the leader) has applied everything committed before now, so a
    /// read after it sees every acknowledged write.
    pub async fn linearizable(&self) -> Result<(), AdminError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(AdminError::NotApplied("leadership changed"))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(AdminError::Unavailable(format!("cannot confirm leadership: {e}")))
            }
            Err(e) => Err(raft_unavailable(e)),
        }
    }

    /// Why this node should not take traffic yet (`/readyz`), or `None` when it may: it
    /// must know a leader and have applied every log entry it holds (a node restarted
    /// behind the others is not ready until it caught up with what it was sent).
    pub fn not_ready(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let last = m.last_log_index.unwrap_or(0);
        if m.current_leader.is_none() {
            Some("no leader known (before `cluster init`, or during an election)".into())
        } else if applied < last {
            Some(format!("catching up: applied {applied} of {last} log entries"))
        } else {
            None
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
