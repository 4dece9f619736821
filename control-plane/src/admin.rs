//! The admin API (gRPC `tollgate.v1.Admin`): what every operator verb calls.
//!
//! Each call is answered by the leader: a follower forwards it unchanged (token included) and
//! relays the answer, so operators may talk to any node. Writes become one [`Command`] in the
//! Raft log; reads wait for [`Node::linearizable`] first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use tollgate_proto::keys::{format_key, parse_key, sha256_hex};
use tollgate_proto::model::{ApiKey, SubscriptionStatus};
use tollgate_proto::v1::admin_server::Admin;
use tollgate_proto::v1::*;
use tollgate_proto::validate::check_name;
use tollgate_proto::{Document, Kind, Spec};
use tonic::{Request, Response, Status};

use crate::node::{forwarded, now_ms, Node, Route};
use crate::secrets::{random_bytes, random_token, write_private};
use crate::state::{AdminToken, Change as StateChange, Command, Outcome};

/// Largest secret value accepted.
const MAX_SECRET_BYTES: usize = 64 * 1024;

pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

/// Answers locally when this node leads, else relays to the leader. The leader checks the
/// token; a follower cannot, as its copy of the tokens may lag.
macro_rules! lead {
    ($self:ident, $req:ident, $method:ident) => {
        match $self.node.route(&$req).await? {
            Route::Forward(mut client) => return client.$method(forwarded($req)).await,
            Route::Local => $self.node.authorize(&$req)?,
        }
    };
}

fn invalid(field: &str, e: String) -> Status {
    Status::invalid_argument(format!("{field}: {e}"))
}

fn parse_kind(kind: &str) -> Result<Kind, Status> {
    Kind::parse(kind).ok_or_else(|| {
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        Status::invalid_argument(format!(
            "unknown kind {kind:?}: use one of {}",
            kinds.join(", ")
        ))
    })
}

fn parse_document(text: &str) -> Result<Vec<Spec>, Status> {
    Document::parse(text)
        .map(Document::into_specs)
        .map_err(Status::invalid_argument)
}

fn to_yaml(spec: &Spec) -> String {
    let value: serde_json::Value = serde_json::from_str(&spec.to_json()).unwrap_or_default();
    serde_yaml::to_string(&value).unwrap_or_default()
}

/// A minimal line diff (longest common subsequence) of two small texts.
fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    out
}

fn change_to_proto(c: &StateChange, new_version: u64, with_diff: bool) -> Change {
    let diff = if with_diff {
        let old = c.old.as_ref().map(to_yaml).unwrap_or_default();
        let new = c.new.as_ref().map(to_yaml).unwrap_or_default();
        if old == new {
            String::new()
        } else {
            line_diff(&old, &new)
        }
    } else {
        String::new()
    };
    let changed = !matches!(c.action, crate::state::Action::Unchanged);
    Change {
        kind: c.key.kind.as_str().into(),
        tenant: c.key.tenant.clone(),
        name: c.key.name.clone(),
        action: c.action.as_str().into(),
        old_version: c.old_version,
        new_version: match (changed, &c.new) {
            (true, Some(_)) => new_version,
            (false, _) => c.old_version,
            (true, None) => 0,
        },
        diff,
    }
}

fn apply_response(out: Outcome, with_diff: bool) -> ApplyResponse {
    ApplyResponse {
        version: out.version,
        changes: out
            .changes
            .iter()
            .map(|c| change_to_proto(c, out.version, with_diff))
            .collect(),
    }
}

/// A resource as shown by `get`: key hashes and sealed secrets are never shown.
fn resource_to_proto(spec: &Spec, version: u64) -> Resource {
    let key = spec.key();
    let shown = match spec {
        Spec::ApiKey(k) => Spec::ApiKey(ApiKey {
            sha256: String::new(),
            ..k.clone()
        }),
        Spec::Secret(s) => Spec::Secret(tollgate_proto::model::SecretRecord {
            sealed: String::new(),
            ..s.clone()
        }),
        other => other.clone(),
    };
    Resource {
        kind: key.kind.as_str().into(),
        tenant: key.tenant,
        name: key.name,
        version,
        spec_json: shown.to_json(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, apply);
        let r = req.into_inner();
        let specs = parse_document(&r.document)?;
        let out = self
            .node
            .write(Command::Apply {
                specs,
                prune: r.prune,
            })
            .await?;
        Ok(Response::new(apply_response(out, false)))
    }

    async fn diff(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, diff);
        let r = req.into_inner();
        let specs = parse_document(&r.document)?;
        self.node.linearizable().await?;
        let cmd = Command::Apply {
            specs,
            prune: r.prune,
        };
        let out = self
            .node
            .sm
            .read(|s| s.dry_run(&cmd))
            .map_err(crate::node::command_status)?;
        Ok(Response::new(apply_response(out, true)))
    }

    async fn export(
        &self,
        req: Request<ExportRequest>,
    ) -> Result<Response<ExportResponse>, Status> {
        if req.get_ref().local {
            self.node.authorize(&req)?;
        } else {
            lead!(self, req, export);
            self.node.linearizable().await?;
        }
        let tenant = req.into_inner().tenant;
        let (version, doc) = self.node.sm.read(|s| {
            let t = (!tenant.is_empty()).then_some(tenant.as_str());
            (s.version, s.export(t))
        });
        let document_json =
            serde_json::to_string(&doc).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ExportResponse {
            version,
            document_json,
        }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        lead!(self, req, get);
        let r = req.into_inner();
        let kind = parse_kind(&r.kind)?;
        self.node.linearizable().await?;
        let (version, resources) = self.node.sm.read(|s| {
            let list: Vec<Resource> = s
                .resources
                .iter()
                .filter(|(k, _)| k.kind == kind)
                .filter(|(k, _)| {
                    r.tenant.is_empty()
                        || k.tenant == r.tenant
                        || (kind == Kind::Tenant && k.name == r.tenant)
                })
                .filter(|(k, _)| r.name.is_empty() || k.name == r.name)
                .map(|(_, stored)| resource_to_proto(&stored.spec, stored.version))
                .collect();
            (s.version, list)
        });
        if !r.name.is_empty() && resources.is_empty() {
            let where_ = if r.tenant.is_empty() {
                String::new()
            } else {
                format!(" in tenant {}", r.tenant)
            };
            return Err(Status::not_found(format!(
                "{kind} {}{where_} not found",
                r.name
            )));
        }
        Ok(Response::new(GetResponse { version, resources }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, delete);
        let r = req.into_inner();
        let key = r
            .key
            .ok_or_else(|| Status::invalid_argument("key is required"))?;
        let kind = parse_kind(&key.kind)?;
        let tenant = if kind == Kind::Tenant {
            String::new()
        } else {
            key.tenant
        };
        if kind != Kind::Tenant && tenant.is_empty() {
            return Err(Status::invalid_argument("tenant is required (--tenant)"));
        }
        let cmd = Command::Delete {
            key: tollgate_proto::ResourceKey::new(kind, tenant, key.name),
            expected_version: (r.expected_version != 0).then_some(r.expected_version),
        };
        let out = self.node.write(cmd).await?;
        Ok(Response::new(apply_response(out, false)))
    }

    async fn create_key(
        &self,
        req: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        lead!(self, req, create_key);
        let r = req.into_inner();
        check_name(&r.tenant).map_err(|e| invalid("tenant", e))?;
        check_name(&r.app).map_err(|e| invalid("app", e))?;
        let mut id_bytes = [0u8; 6];
        let mut secret = [0u8; 32];
        random_bytes(&mut id_bytes).map_err(|e| Status::internal(e.to_string()))?;
        random_bytes(&mut secret).map_err(|e| Status::internal(e.to_string()))?;
        let key = format_key(&id_bytes, &secret);
        let id = parse_key(&key)
            .expect("freshly formatted keys parse")
            .to_string();
        let record = ApiKey {
            id: id.clone(),
            tenant: r.tenant,
            app: r.app,
            sha256: sha256_hex(key.as_bytes()),
            label: (!r.label.is_empty()).then_some(r.label),
            created_ms: now_ms(),
        };
        let out = self.node.write(Command::CreateKey(record)).await?;
        Ok(Response::new(CreateKeyResponse {
            key,
            id,
            version: out.version,
        }))
    }

    async fn revoke_key(
        &self,
        req: Request<RevokeKeyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, revoke_key);
        let r = req.into_inner();
        // Accept the whole key as well as its id.
        let id = parse_key(&r.id).map(str::to_string).unwrap_or(r.id);
        let out = self
            .node
            .write(Command::RevokeKey {
                tenant: r.tenant,
                id,
            })
            .await?;
        Ok(Response::new(apply_response(out, false)))
    }

    async fn decide_subscription(
        &self,
        req: Request<DecideSubscriptionRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, decide_subscription);
        let r = req.into_inner();
        let status = SubscriptionStatus::parse(&r.status).ok_or_else(|| {
            invalid(
                "status",
                format!("{:?}: use approved, rejected or pending", r.status),
            )
        })?;
        if !r.id.contains(':') {
            return Err(invalid("id", format!("{:?}: write <app>:<service>", r.id)));
        }
        let out = self
            .node
            .write(Command::SetSubscriptionStatus {
                tenant: r.tenant,
                id: r.id,
                status,
            })
            .await?;
        Ok(Response::new(apply_response(out, false)))
    }

    async fn set_secret(
        &self,
        req: Request<SetSecretRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, set_secret);
        let r = req.into_inner();
        check_name(&r.tenant).map_err(|e| invalid("tenant", e))?;
        check_name(&r.name).map_err(|e| invalid("name", e))?;
        if r.value.is_empty() || r.value.len() > MAX_SECRET_BYTES {
            return Err(invalid(
                "value",
                format!("must be 1 to {MAX_SECRET_BYTES} bytes"),
            ));
        }
        let record = self
            .node
            .master_key
            .seal(&r.tenant, &r.name, &r.value, now_ms())
            .map_err(|e| Status::internal(e.to_string()))?;
        let out = self.node.write(Command::PutSecret(record)).await?;
        Ok(Response::new(apply_response(out, false)))
    }

    async fn delete_secret(
        &self,
        req: Request<DeleteSecretRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, delete_secret);
        let r = req.into_inner();
        let out = self
            .node
            .write(Command::DeleteSecret {
                tenant: r.tenant,
                name: r.name,
            })
            .await?;
        Ok(Response::new(apply_response(out, false)))
    }

    async fn cluster_init(
        &self,
        _req: Request<ClusterInitRequest>,
    ) -> Result<Response<ClusterInitResponse>, Status> {
        if self.node.is_initialized() {
            return Err(Status::failed_precondition(
                "cluster is already initialized",
            ));
        }
        let members = BTreeMap::from([(
            self.node.id,
            BasicNode {
                addr: self.node.addr.clone(),
            },
        )]);
        self.node
            .raft
            .initialize(members)
            .await
            .map_err(|e| Status::failed_precondition(format!("cannot initialize: {e}")))?;
        self.node
            .raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(self.node.id, "become leader after init")
            .await
            .map_err(|e| Status::unavailable(format!("no leader after init: {e}")))?;
        let admin_token = random_token("tga_").map_err(|e| Status::internal(e.to_string()))?;
        self.node
            .write(Command::AddAdminToken(AdminToken {
                sha256: sha256_hex(admin_token.as_bytes()),
                role: "cluster-admin".into(),
                label: "bootstrap".into(),
                created_ms: now_ms(),
            }))
            .await?;
        let path = self.node.data_dir.join("admin.token");
        write_private(&path, format!("{admin_token}\n").as_bytes())
            .map_err(|e| Status::internal(format!("writing {}: {e}", path.display())))?;
        tracing::info!(node = self.node.id, path = %path.display(), "cluster initialized; bootstrap admin token written");
        Ok(Response::new(ClusterInitResponse {
            admin_token,
            node_id: self.node.id,
        }))
    }

    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        lead!(self, req, add_node);
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(invalid("node_id", "must be above zero".into()));
        }
        if r.addr.parse::<std::net::SocketAddr>().is_err() && !r.addr.contains(':') {
            return Err(invalid("addr", format!("{:?}: write host:port", r.addr)));
        }
        let raft = &self.node.raft;
        raft.add_learner(
            r.node_id,
            BasicNode {
                addr: r.addr.clone(),
            },
            true,
        )
        .await
        .map_err(|e| Status::unavailable(format!("adding node {} as learner: {e}", r.node_id)))?;
        if !r.learner_only {
            raft.change_membership(ChangeMembers::AddVoterIds([r.node_id].into()), false)
                .await
                .map_err(|e| {
                    Status::unavailable(format!("promoting node {} to voter: {e}", r.node_id))
                })?;
        }
        tracing::info!(node = r.node_id, addr = %r.addr, "node added");
        Ok(Response::new(
            crate::status::cluster_status(&self.node, None).await,
        ))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        lead!(self, req, remove_node);
        let id = req.into_inner().node_id;
        let (is_voter, known) = {
            let m = self.node.raft.metrics().borrow().membership_config.clone();
            let known = m.nodes().any(|(n, _)| *n == id);
            (m.voter_ids().any(|v| v == id), known)
        };
        if !known {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        let change = if is_voter {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        self.node
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| Status::failed_precondition(format!("removing node {id}: {e}")))?;
        tracing::info!(node = id, "node removed");
        Ok(Response::new(
            crate::status::cluster_status(&self.node, None).await,
        ))
    }

    async fn cluster_status(
        &self,
        req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.node.authorize(&req)?;
        let local = req.get_ref().local;
        let token = req.metadata().get("authorization").cloned();
        let status = if local {
            crate::status::local_status(&self.node)
        } else {
            crate::status::cluster_status(&self.node, token).await
        };
        Ok(Response::new(status))
    }
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn line_diff_marks_changed_lines() {
        let d = line_diff("a: 1\nb: 2\n", "a: 1\nb: 3\n");
        assert_eq!(d, "  a: 1\n- b: 2\n+ b: 3\n");
        assert_eq!(line_diff("", "x\n"), "+ x\n");
    }
}
