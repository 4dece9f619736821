//! The admin API (gRPC `tollgate.v1.Admin`): what every operator verb calls.
//!
//! Each call is answered by the leader: a follower forwards it unchanged (token included) and
//! relays the answer, so operators may talk to any node. Writes become one [`Command`] in the
//! Raft log; reads wait for [`Node::linearizable`] first. The leader's side of each call
//! fails with an [`AdminError`], turned into a gRPC status in one place (`error.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers};
use tollgate_proto::keys::{format_key, parse_key, sha256_hex};
use tollgate_proto::model::{ApiKey, SecretRecord, SubscriptionStatus};
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::admin_server::Admin;
use tollgate_proto::v1::*;
use tollgate_proto::validate::check_name;
use tollgate_proto::{Document, Kind, Spec};
use tonic::{Request, Response, Status};

use crate::access;
use crate::error::AdminError;
use crate::forward::{forwarded, retryable};
use crate::node::{now_ms, Node, Route, LEADER_WAIT};
use crate::rollups::{GroupBy, Query, RollupRecord};
use crate::secrets::{random_bytes, random_token, write_private};
use crate::state::{Actor, AdminToken, Change as StateChange, Command, CommandError, Outcome, Role};
use crate::usage::UsageRecord;

/// Roles that may use the admin API at all (what each may do is `access`'s business).
const ADMIN_ROLES: [Role; 4] = [
    Role::ClusterAdmin,
    Role::TenantAdmin,
    Role::TenantDeveloper,
    Role::Viewer,
];

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

/// Answers locally (`$local`) when this node leads, else relays the call to the leader. The
/// leader checks the token: a follower cannot, as its copy of the tokens may lag. A call that
/// failed because leadership moved, and surely changed nothing, is tried again (against the
/// new leader) until [`LEADER_WAIT`] runs out, so a failover is invisible to the caller.
macro_rules! lead {
    ($self:ident, $req:ident, $method:ident, $local:ident) => {
        lead!($self, $req, $method, $local, ADMIN_ROLES)
    };
    ($self:ident, $req:ident, $method:ident, $local:ident, $roles:expr) => {{
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let result = match $self.node.route(&$req, deadline).await? {
                Route::Forward(mut client) => client.$method(forwarded(&$req)).await,
                // A refusal (no permission, bad input) of a known token is audited.
                Route::Local => match $self.node.authorize(&$req, &$roles) {
                    Err(e) => {
                        if let Some(token) = $self.node.token_of(&$req) {
                            $self.node.audit_refusal(&token, stringify!($method), &e).await;
                        }
                        Err(Status::from(e))
                    }
                    Ok(token) => match $self.$local(&token, $req.get_ref().clone()).await {
                        Ok(answer) => Ok(Response::new(answer)),
                        Err(e) => {
                            $self.node.audit_refusal(&token, stringify!($method), &e).await;
                            Err(Status::from(e))
                        }
                    },
                },
            };
            match result {
                Err(s) if retryable(&s) && Instant::now() < deadline => {
                    $self.node.wait_for_new_leader(deadline).await;
                }
                other => return other,
            }
        }
    }};
}

fn parse_kind(kind: &str) -> Result<Kind, AdminError> {
    Kind::parse(kind).ok_or_else(|| {
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        AdminError::InvalidArgument(format!("unknown kind {kind:?}: use one of {}", kinds.join(", ")))
    })
}

fn parse_document(text: &str) -> Result<Vec<Spec>, AdminError> {
    Document::parse(text)
        .map(Document::into_specs)
        .map_err(AdminError::InvalidArgument)
}

fn to_yaml(spec: &Spec) -> String {
    let value: serde_json::Value = serde_json::from_str(&spec.to_json()).unwrap_or_default();
    serde_saphyr::to_string(&value).unwrap_or_default()
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
fn shown_resource(stored: &crate::state::Stored) -> Resource {
    let shown = match &stored.spec {
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
    shown.to_resource(stored.version)
}

/// Relays another member's tail of its own edges into this node's session, until the
/// session ends or the member goes (retrying every second while the session lasts).
async fn tail_member(
    mut client: AdminClient<tonic::transport::Channel>,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    filter: TailFilter,
    tx: tokio::sync::mpsc::Sender<TailLogsResponse>,
) {
    loop {
        let mut req = Request::new(TailLogsRequest {
            filter: Some(filter.clone()),
            local: true,
        });
        if let Some(a) = &auth {
            req.metadata_mut().insert("authorization", a.clone());
        }
        let relay = async {
            let mut stream = client.tail_logs(req).await?.into_inner();
            while let Some(batch) = stream.message().await? {
                if tx.send(batch).await.is_err() {
                    break;
                }
            }
            Ok::<(), Status>(())
        };
        tokio::select! {
            _ = relay => {}
            _ = tx.closed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Most rows one rollup report may carry.
const MAX_ROLLUP_ROWS: usize = 10_000;

/// One row of `tollgate stats`.
fn stats_row(group: &str, g: &crate::rollups::Group) -> StatsRow {
    let v = &g.value;
    let ms = |q: f64| v.latency.quantile(q) / 1e3;
    StatsRow {
        group: group.to_string(),
        requests: v.requests,
        by_class: g.by_class.to_vec(),
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        bytes_in: v.bytes_in,
        bytes_out: v.bytes_out,
        input_tokens: v.input_tokens,
        output_tokens: v.output_tokens,
        cost: v.cost,
    }
}

/// Most entries one usage report may carry.
const MAX_USAGE_ENTRIES: usize = 100_000;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn record_usage(
        &self,
        req: Request<RecordUsageRequest>,
    ) -> Result<Response<RecordUsageResponse>, Status> {
        lead!(self, req, record_usage, record_usage_local, [Role::Edge])
    }

    async fn record_rollups(
        &self,
        req: Request<RecordRollupsRequest>,
    ) -> Result<Response<RecordRollupsResponse>, Status> {
        lead!(self, req, record_rollups, record_rollups_local, [Role::Edge])
    }

    async fn stats(&self, req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        lead!(self, req, stats, stats_local)
    }

    type TailLogsStream = tokio_stream::wrappers::ReceiverStream<Result<TailLogsResponse, Status>>;

    /// Served by the node asked (no leader needed): its own edges' records, and unless
    /// `local`, every other member's, asked with the caller's token.
    async fn tail_logs(
        &self,
        req: Request<TailLogsRequest>,
    ) -> Result<Response<Self::TailLogsStream>, Status> {
        let token = self.node.authorize(&req, &ADMIN_ROLES)?;
        let r = req.get_ref().clone();
        let mut filter = r.filter.unwrap_or_default();
        if !tollgate_proto::tail::valid_status(&filter.status) {
            return Err(AdminError::invalid("filter.status", "a class like 5xx or a code like 404").into());
        }
        if let Some(own) = access::audit_scope(&token)? {
            if !filter.tenant.is_empty() && filter.tenant != own {
                return Err(AdminError::PermissionDenied {
                    who: format!("a tenant-admin token of tenant {own}"),
                    what: format!("tail the records of tenant {}", filter.tenant),
                }
                .into());
            }
            filter.tenant = own.to_string();
        }
        let (subscription, mut records, tx) = self.node.tails.subscribe(filter.clone());
        if !r.local {
            let members: Vec<String> = {
                let m = self.node.raft.metrics().borrow().membership_config.clone();
                m.nodes()
                    .filter(|(id, _)| **id != self.node.id)
                    .map(|(_, n)| n.addr.clone())
                    .collect()
            };
            let auth = req.metadata().get("authorization").cloned();
            for addr in members {
                let Ok(channel) = self.node.channels.get(&addr) else {
                    continue;
                };
                tokio::spawn(tail_member(
                    AdminClient::new(channel),
                    auth.clone(),
                    filter.clone(),
                    tx.clone(),
                ));
            }
        }
        drop(tx);
        let (out, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _open = subscription;
            loop {
                tokio::select! {
                    got = records.recv() => match got {
                        Some(batch) => if out.send(Ok(batch)).await.is_err() { break },
                        None => break,
                    },
                    _ = out.closed() => break,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, apply, apply_local)
    }

    async fn diff(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, diff, diff_local)
    }

    async fn export(&self, req: Request<ExportRequest>) -> Result<Response<ExportResponse>, Status> {
        if req.get_ref().local {
            let token = self.node.authorize(&req, &ADMIN_ROLES)?;
            return self
                .export_from_state(&token, req.into_inner().tenant)
                .map(Response::new)
                .map_err(Status::from);
        }
        lead!(self, req, export, export_local)
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        lead!(self, req, get, get_local)
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, delete, delete_local)
    }

    async fn create_key(
        &self,
        req: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        lead!(self, req, create_key, create_key_local)
    }

    async fn revoke_key(&self, req: Request<RevokeKeyRequest>) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, revoke_key, revoke_key_local)
    }

    async fn decide_subscription(
        &self,
        req: Request<DecideSubscriptionRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, decide_subscription, decide_subscription_local)
    }

    async fn set_secret(&self, req: Request<SetSecretRequest>) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, set_secret, set_secret_local)
    }

    async fn delete_secret(
        &self,
        req: Request<DeleteSecretRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, delete_secret, delete_secret_local)
    }

    async fn rotate_master_key(
        &self,
        req: Request<RotateMasterKeyRequest>,
    ) -> Result<Response<RotateMasterKeyResponse>, Status> {
        lead!(self, req, rotate_master_key, rotate_master_key_local)
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        lead!(self, req, create_token, create_token_local)
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        lead!(self, req, revoke_token, revoke_token_local)
    }

    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        lead!(self, req, list_audit, list_audit_local)
    }

    async fn list_tokens(
        &self,
        req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        lead!(self, req, list_tokens, list_tokens_local)
    }

    async fn cluster_init(
        &self,
        _req: Request<ClusterInitRequest>,
    ) -> Result<Response<ClusterInitResponse>, Status> {
        self.init().await.map(Response::new).map_err(Status::from)
    }

    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        lead!(self, req, add_node, add_node_local)
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        lead!(self, req, remove_node, remove_node_local)
    }

    async fn cluster_status(
        &self,
        req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        // Any member answers, even without a leader. A member that has not yet caught up
        // with a new token asks the leader to check it instead.
        let authorized = self
            .node
            .authorize(&req, &ADMIN_ROLES)
            .and_then(|t| access::cluster(&t));
        if let Err(denied) = authorized {
            let unknown_token = matches!(denied, AdminError::Unauthenticated(_));
            if !unknown_token || req.get_ref().local || self.node.role() == "leader" {
                return Err(denied.into());
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            return match self.node.route(&req, deadline).await {
                Ok(Route::Forward(mut client)) => client.cluster_status(forwarded(&req)).await,
                _ => Err(denied.into()),
            };
        }
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

/// The leader's side of each call: checks what the caller's token allows, then acts.
impl AdminService {
    async fn apply_local(&self, t: &AdminToken, r: ApplyRequest) -> Result<ApplyResponse, AdminError> {
        let specs = parse_document(&r.document)?;
        access::write_specs(t, &specs, r.prune)?;
        let cmd = Command::Apply {
            specs,
            prune: r.prune,
        };
        Ok(apply_response(
            self.node.write(cmd, Some(Actor::of(t))).await?,
            false,
        ))
    }

    async fn diff_local(&self, t: &AdminToken, r: ApplyRequest) -> Result<ApplyResponse, AdminError> {
        let specs = parse_document(&r.document)?;
        access::write_specs(t, &specs, r.prune)?;
        self.node.linearizable().await?;
        let cmd = Command::Apply {
            specs,
            prune: r.prune,
        };
        let out = self.node.sm.read(|s| s.dry_run(&cmd))?;
        Ok(apply_response(out, true))
    }

    async fn export_local(&self, t: &AdminToken, r: ExportRequest) -> Result<ExportResponse, AdminError> {
        self.node.linearizable().await?;
        self.export_from_state(t, r.tenant)
    }

    /// The export a token may see: its tenant's, when it is bound to one.
    fn export_from_state(&self, t: &AdminToken, tenant: String) -> Result<ExportResponse, AdminError> {
        access::read(t, &tenant)?;
        let scope = access::read_scope(t)?
            .map(str::to_string)
            .or((!tenant.is_empty()).then_some(tenant));
        let (version, doc) = self.node.sm.read(|s| (s.version, s.export(scope.as_deref())));
        let document_json = serde_json::to_string(&doc).map_err(AdminError::internal)?;
        Ok(ExportResponse {
            version,
            document_json,
        })
    }

    async fn get_local(&self, t: &AdminToken, r: GetRequest) -> Result<GetResponse, AdminError> {
        let kind = parse_kind(&r.kind)?;
        access::read(t, &r.tenant)?;
        let scope = access::read_scope(t)?.map(str::to_string);
        self.node.linearizable().await?;
        let in_tenant = |k: &tollgate_proto::ResourceKey, tenant: &str| {
            k.tenant == tenant || (k.kind == Kind::Tenant && k.name == tenant)
        };
        let (version, resources) = self.node.sm.read(|s| {
            let list: Vec<Resource> = s
                .resources
                .iter()
                .filter(|(k, _)| k.kind == kind)
                .filter(|(k, _)| r.tenant.is_empty() || in_tenant(k, &r.tenant))
                .filter(|(k, _)| scope.as_deref().is_none_or(|own| in_tenant(k, own)))
                .filter(|(k, _)| r.name.is_empty() || k.name == r.name)
                .map(|(_, stored)| shown_resource(stored))
                .collect();
            (s.version, list)
        });
        if !r.name.is_empty() && resources.is_empty() {
            let where_ = if r.tenant.is_empty() {
                String::new()
            } else {
                format!(" in tenant {}", r.tenant)
            };
            return Err(AdminError::not_found(format!("{kind} {}{where_}", r.name)));
        }
        Ok(GetResponse { version, resources })
    }

    async fn delete_local(&self, t: &AdminToken, r: DeleteRequest) -> Result<ApplyResponse, AdminError> {
        let key = r
            .key
            .ok_or_else(|| AdminError::InvalidArgument("key is required".into()))?;
        let kind = parse_kind(&key.kind)?;
        let tenant = if kind == Kind::Tenant {
            String::new()
        } else {
            key.tenant
        };
        if kind != Kind::Tenant && tenant.is_empty() {
            return Err(AdminError::InvalidArgument(
                "tenant is required (--tenant)".into(),
            ));
        }
        access::delete(t, kind, if kind == Kind::Tenant { &key.name } else { &tenant })?;
        let cmd = Command::Delete {
            key: tollgate_proto::ResourceKey::new(kind, tenant, key.name),
            expected_version: (r.expected_version != 0).then_some(r.expected_version),
        };
        Ok(apply_response(
            self.node.write(cmd, Some(Actor::of(t))).await?,
            false,
        ))
    }

    async fn create_key_local(
        &self,
        t: &AdminToken,
        r: CreateKeyRequest,
    ) -> Result<CreateKeyResponse, AdminError> {
        check_name(&r.tenant).map_err(|e| AdminError::invalid("tenant", e))?;
        check_name(&r.app).map_err(|e| AdminError::invalid("app", e))?;
        access::manage_keys(t, &r.tenant)?;
        if r.label.len() > 200 {
            return Err(AdminError::invalid("label", "must be at most 200 characters"));
        }
        let mut id_bytes = [0u8; 6];
        let mut secret = [0u8; 32];
        random_bytes(&mut id_bytes).map_err(AdminError::internal)?;
        random_bytes(&mut secret).map_err(AdminError::internal)?;
        let key = format_key(&id_bytes, &secret);
        let id = parse_key(&key).expect("freshly formatted keys parse").to_string();
        let record = ApiKey {
            id: id.clone(),
            tenant: r.tenant,
            app: r.app,
            sha256: sha256_hex(key.as_bytes()),
            label: (!r.label.is_empty()).then_some(r.label),
            created_ms: now_ms(),
        };
        let out = self
            .node
            .write(Command::CreateKey(record), Some(Actor::of(t)))
            .await?;
        Ok(CreateKeyResponse {
            key,
            id,
            version: out.version,
        })
    }

    async fn record_usage_local(
        &self,
        _t: &AdminToken,
        r: RecordUsageRequest,
    ) -> Result<RecordUsageResponse, AdminError> {
        if r.entries.len() > MAX_USAGE_ENTRIES {
            return Err(AdminError::invalid(
                "entries",
                format!("at most {MAX_USAGE_ENTRIES} per report"),
            ));
        }
        // A malformed count is dropped, not the report: one bad key must not stop the rest.
        let now = crate::node::now_ms();
        let good = |e: &UsageEntry| crate::usage::usable(e, now);
        let total = r.entries.len();
        let records: Vec<UsageRecord> = r
            .entries
            .into_iter()
            .filter(good)
            .map(UsageRecord::from)
            .collect();
        if records.len() < total {
            tracing::warn!(
                dropped = total - records.len(),
                "usage report with malformed counts"
            );
        }
        if !records.is_empty() {
            self.node.write(Command::RecordUsage(records), None).await?;
        }
        Ok(RecordUsageResponse {})
    }

    async fn record_rollups_local(
        &self,
        _t: &AdminToken,
        r: RecordRollupsRequest,
    ) -> Result<RecordRollupsResponse, AdminError> {
        if r.rollups.len() > MAX_ROLLUP_ROWS {
            return Err(AdminError::invalid(
                "rollups",
                format!("at most {MAX_ROLLUP_ROWS} per report"),
            ));
        }
        // A malformed row is dropped, not the report.
        let total = r.rollups.len();
        let rows: Vec<RollupRecord> = r
            .rollups
            .iter()
            .filter_map(tollgate_proto::rollup::from_proto)
            .map(|(minute, key, value, node, epoch)| RollupRecord {
                minute,
                key,
                value,
                node,
                epoch,
            })
            .collect();
        if rows.len() < total {
            tracing::warn!(dropped = total - rows.len(), "rollup report with malformed rows");
        }
        if !rows.is_empty() {
            let cmd = Command::RecordRollups {
                now_ms: crate::node::now_ms(),
                retention: self.node.rollup_retention,
                rows,
            };
            self.node.write(cmd, None).await?;
        }
        Ok(RecordRollupsResponse {})
    }

    async fn stats_local(&self, t: &AdminToken, r: StatsRequest) -> Result<StatsResponse, AdminError> {
        let scope = access::stats_scope(t)?.map(str::to_string);
        let tenant = match (&scope, r.tenant.is_empty()) {
            (Some(own), false) if own != &r.tenant => {
                return Err(AdminError::PermissionDenied {
                    who: format!("a tenant-admin token of tenant {own}"),
                    what: format!("read the traffic of tenant {}", r.tenant),
                })
            }
            (Some(own), _) => Some(own.clone()),
            (None, false) => Some(r.tenant.clone()),
            (None, true) => None,
        };
        let group_by = GroupBy::parse(&r.group_by).ok_or_else(|| {
            AdminError::invalid(
                "group_by",
                "one of service, app, status, model, tenant, minute, hour, day (or empty for a total)",
            )
        })?;
        let to_ms = if r.to_ms == 0 {
            crate::node::now_ms()
        } else {
            r.to_ms
        };
        if r.from_ms >= to_ms {
            return Err(AdminError::invalid(
                "from_ms",
                "the range must start before it ends",
            ));
        }
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let q = Query {
            from_ms: r.from_ms,
            to_ms,
            tenant,
            service: nonempty(&r.service),
            app: nonempty(&r.app),
            group_by,
        };
        let groups = self.node.sm.read(|s| s.rollups.query(&q));
        let mut total = crate::rollups::Group::default();
        for g in groups.values() {
            total.value.merge(&g.value);
            total
                .by_class
                .iter_mut()
                .zip(g.by_class)
                .for_each(|(t, n)| *t += n);
        }
        Ok(StatsResponse {
            rows: groups.iter().map(|(name, g)| stats_row(name, g)).collect(),
            total: Some(stats_row("total", &total)),
            relative_error: tollgate_proto::rollup::RELATIVE_ERROR,
        })
    }

    async fn revoke_key_local(
        &self,
        t: &AdminToken,
        r: RevokeKeyRequest,
    ) -> Result<ApplyResponse, AdminError> {
        access::manage_keys(t, &r.tenant)?;
        // Accept the whole key as well as its id.
        let id = parse_key(&r.id).map(str::to_string).unwrap_or(r.id);
        let cmd = Command::RevokeKey { tenant: r.tenant, id };
        Ok(apply_response(
            self.node.write(cmd, Some(Actor::of(t))).await?,
            false,
        ))
    }

    async fn decide_subscription_local(
        &self,
        t: &AdminToken,
        r: DecideSubscriptionRequest,
    ) -> Result<ApplyResponse, AdminError> {
        access::administer(t, &r.tenant, "decide subscriptions")?;
        let status = SubscriptionStatus::parse(&r.status).ok_or_else(|| {
            AdminError::invalid(
                "status",
                format!("{:?}: use approved, rejected or pending", r.status),
            )
        })?;
        if !r.id.contains(':') {
            return Err(AdminError::invalid(
                "id",
                format!("{:?}: write <app>:<service>", r.id),
            ));
        }
        let cmd = Command::SetSubscriptionStatus {
            tenant: r.tenant,
            id: r.id,
            status,
        };
        Ok(apply_response(
            self.node.write(cmd, Some(Actor::of(t))).await?,
            false,
        ))
    }

    async fn set_secret_local(
        &self,
        t: &AdminToken,
        r: SetSecretRequest,
    ) -> Result<ApplyResponse, AdminError> {
        check_name(&r.tenant).map_err(|e| AdminError::invalid("tenant", e))?;
        check_name(&r.name).map_err(|e| AdminError::invalid("name", e))?;
        access::administer(t, &r.tenant, "set secrets")?;
        if r.value.is_empty() || r.value.len() > MAX_SECRET_BYTES {
            return Err(AdminError::invalid(
                "value",
                format!("must be 1 to {MAX_SECRET_BYTES} bytes"),
            ));
        }
        let key = self.node.active_key();
        let cluster_key = self.node.sm.read(|s| s.master_key_id.clone());
        if cluster_key.as_deref().is_some_and(|k| k != key.id()) {
            return Err(AdminError::FailedPrecondition(format!(
                "this node's master key ({}) is not the cluster's ({}); give every node the same --master-key-file",
                key.id(),
                cluster_key.unwrap_or_default()
            )));
        }
        let record = key
            .seal(&r.tenant, &r.name, &r.value, now_ms())
            .map_err(AdminError::internal)?;
        Ok(apply_response(
            self.node
                .write(Command::PutSecret(record), Some(Actor::of(t)))
                .await?,
            false,
        ))
    }

    /// Seals every secret again with this node's next key and switches the cluster to it, in
    /// one Raft entry; conditional on every secret being unchanged since it was read here.
    async fn rotate_master_key_local(
        &self,
        t: &AdminToken,
        _r: RotateMasterKeyRequest,
    ) -> Result<RotateMasterKeyResponse, AdminError> {
        access::cluster(t)?;
        let Some(next) = self.node.keys.next() else {
            return Err(AdminError::FailedPrecondition(
                "this node holds no next master key: restart every node, one at a time, with --next-master-key-file (the same new key file on each), then rotate".into(),
            ));
        };
        self.node.linearizable().await?;
        // Every member must hold the next key first: one that does not could neither open
        // the secrets it streams nor, after its restart, talk to the others.
        let members: Vec<(crate::raft_types::NodeId, String)> = {
            let m = self.node.raft.metrics().borrow().membership_config.clone();
            m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
        };
        for (id, addr) in members.into_iter().filter(|(id, _)| *id != self.node.id) {
            let held = crate::raft::probe(&self.node.channels, &self.node.credentials, &addr, id)
                .await
                .map_err(|e| {
                    AdminError::FailedPrecondition(format!("node {id} could not be asked for its keys: {e}"))
                })?;
            if !held.iter().any(|k| k == next.id()) {
                return Err(AdminError::FailedPrecondition(format!(
                    "node {id} ({addr}) does not hold the next master key {}: restart it with --next-master-key-file first",
                    next.id()
                )));
            }
        }
        let from = self.node.sm.read(|s| s.master_key_id.clone()).unwrap_or_default();
        if from == next.id() {
            return Err(AdminError::FailedPrecondition(format!(
                "the cluster already uses master key {from}: restart the nodes with it as --master-key-file and without --next-master-key-file"
            )));
        }
        let records: Vec<SecretRecord> = self.node.sm.read(|s| {
            s.resources
                .values()
                .filter_map(|stored| match &stored.spec {
                    Spec::Secret(r) => Some(r.clone()),
                    _ => None,
                })
                .collect()
        });
        let mut resealed = Vec::with_capacity(records.len());
        for r in &records {
            let value = self.node.keys.open(r).map_err(|e| {
                AdminError::FailedPrecondition(format!(
                    "cannot open secret {}/{} to seal it again: {e}",
                    r.tenant, r.name
                ))
            })?;
            let record = next
                .seal(&r.tenant, &r.name, &value, r.updated_ms)
                .map_err(AdminError::internal)?;
            resealed.push(crate::state::Resealed {
                replaces: r.sealed.clone(),
                record,
            });
        }
        let cmd = Command::RotateMasterKey {
            key_id: next.id().to_string(),
            resealed,
        };
        self.node.write(cmd, Some(Actor::of(t))).await?;
        Ok(RotateMasterKeyResponse {
            from_key_id: from,
            to_key_id: next.id().to_string(),
            secrets: records.len() as u64,
        })
    }

    async fn delete_secret_local(
        &self,
        t: &AdminToken,
        r: DeleteSecretRequest,
    ) -> Result<ApplyResponse, AdminError> {
        access::administer(t, &r.tenant, "delete secrets")?;
        let cmd = Command::DeleteSecret {
            tenant: r.tenant,
            name: r.name,
        };
        Ok(apply_response(
            self.node.write(cmd, Some(Actor::of(t))).await?,
            false,
        ))
    }

    async fn create_token_local(
        &self,
        t: &AdminToken,
        r: CreateTokenRequest,
    ) -> Result<CreateTokenResponse, AdminError> {
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        let role = Role::parse(&r.role).ok_or_else(|| {
            AdminError::invalid("role", format!("{:?}: use one of {}", r.role, roles.join(", ")))
        })?;
        let tenant = (!r.tenant.is_empty()).then_some(r.tenant);
        match (&tenant, role) {
            (None, role) if role.needs_tenant() => {
                return Err(AdminError::invalid(
                    "tenant",
                    format!("a {} token needs --tenant", role.as_str()),
                ))
            }
            (Some(_), Role::ClusterAdmin | Role::Edge) => {
                return Err(AdminError::invalid(
                    "tenant",
                    format!("a {} token is not bound to a tenant", role.as_str()),
                ))
            }
            (Some(tn), _) => check_name(tn).map_err(|e| AdminError::invalid("tenant", e))?,
            _ => {}
        }
        if let Some(tn) = &tenant {
            let exists = self.node.sm.read(|s| {
                s.resources
                    .contains_key(&tollgate_proto::ResourceKey::new(Kind::Tenant, "", tn.as_str()))
            });
            if !exists {
                return Err(AdminError::not_found(format!("tenant {tn}")));
            }
        }
        access::create_token(t, role, tenant.as_deref())?;
        if r.label.len() > 200 {
            return Err(AdminError::invalid("label", "must be at most 200 characters"));
        }
        let (token, record) = mint_token(role, tenant, r.label)?;
        let id = record.id.clone();
        let out = self
            .node
            .write(Command::AddAdminToken(record), Some(Actor::of(t)))
            .await?;
        Ok(CreateTokenResponse {
            token,
            id,
            version: out.version,
        })
    }

    async fn revoke_token_local(
        &self,
        t: &AdminToken,
        r: RevokeTokenRequest,
    ) -> Result<ApplyResponse, AdminError> {
        let other = self
            .node
            .sm
            .read(|s| s.admin_tokens.values().find(|x| x.id == r.id).cloned());
        let other = other.ok_or_else(|| AdminError::not_found(format!("token {}", r.id)))?;
        access::manage_token(t, &other)?;
        let cmd = Command::RevokeAdminToken { id: r.id };
        Ok(apply_response(
            self.node.write(cmd, Some(Actor::of(t))).await?,
            false,
        ))
    }

    async fn list_tokens_local(
        &self,
        t: &AdminToken,
        _r: ListTokensRequest,
    ) -> Result<ListTokensResponse, AdminError> {
        access::audit_scope(t)?;
        self.node.linearizable().await?;
        let mut tokens: Vec<TokenInfo> = self.node.sm.read(|s| {
            s.admin_tokens
                .values()
                .filter(|x| access::manage_token(t, x).is_ok())
                .map(|x| TokenInfo {
                    id: x.id.clone(),
                    role: x.role.as_str().into(),
                    label: x.label.clone(),
                    created_ms: x.created_ms,
                    tenant: x.tenant.clone().unwrap_or_default(),
                })
                .collect()
        });
        tokens.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(ListTokensResponse { tokens })
    }

    async fn list_audit_local(
        &self,
        t: &AdminToken,
        r: ListAuditRequest,
    ) -> Result<ListAuditResponse, AdminError> {
        let scope = access::audit_scope(t)?.map(str::to_string);
        if let Some(own) = &scope {
            if !r.tenant.is_empty() && &r.tenant != own {
                return Err(AdminError::PermissionDenied {
                    who: format!("a tenant-admin token of tenant {own}"),
                    what: format!("read tenant {}", r.tenant),
                });
            }
        }
        let tenant = scope.or((!r.tenant.is_empty()).then_some(r.tenant));
        let limit = if r.limit == 0 { 100 } else { r.limit.min(10_000) } as usize;
        self.node.linearizable().await?;
        let records = self.node.sm.read(|s| {
            s.audit
                .iter()
                .rev()
                .filter(|a| tenant.as_ref().is_none_or(|tn| a.tenants.contains(tn)))
                .take(limit)
                .map(audit_to_proto)
                .collect()
        });
        Ok(ListAuditResponse { records })
    }

    /// `cluster init`: makes this node a one-node cluster and mints the bootstrap token.
    /// Allowed only while the cluster has no token, so a node that crashed half-way through
    /// init can finish it; never once an operator holds a token.
    async fn init(&self) -> Result<ClusterInitResponse, AdminError> {
        let node = &self.node;
        if !node.is_initialized().await {
            let members = BTreeMap::from([(
                node.id,
                BasicNode {
                    addr: node.addr.clone(),
                },
            )]);
            node.raft
                .initialize(members)
                .await
                .map_err(|e| AdminError::FailedPrecondition(format!("cannot initialize: {e}")))?;
        } else {
            let sole_member = {
                let m = node.raft.metrics().borrow().membership_config.clone();
                let ids: Vec<u64> = m.nodes().map(|(id, _)| *id).collect();
                ids == [node.id]
            };
            let has_tokens = node.sm.read(|s| !s.admin_tokens.is_empty());
            if has_tokens || !sole_member {
                return Err(already_initialized());
            }
        }
        node.raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(node.id, "become leader after init")
            .await
            .map_err(|e| AdminError::Unavailable(format!("no leader after init: {e}")))?;
        let (admin_token, record) = mint_token(Role::ClusterAdmin, None, "bootstrap".into())?;
        node.write(
            Command::Bootstrap {
                token: record,
                master_key_id: node.keys.current().id().to_string(),
            },
            None,
        )
        .await
        .map_err(|e| match e {
            AdminError::Rejected(CommandError::Conflict(_)) => already_initialized(),
            e => e,
        })?;
        let path = node.data_dir.join("admin.token");
        write_private(&path, format!("{admin_token}\n").as_bytes())
            .map_err(|e| AdminError::Internal(format!("writing {}: {e}", path.display())))?;
        tracing::info!(node = node.id, path = %path.display(), "cluster initialized; bootstrap admin token written");
        Ok(ClusterInitResponse {
            admin_token,
            node_id: node.id,
        })
    }

    async fn add_node_local(
        &self,
        t: &AdminToken,
        r: AddNodeRequest,
    ) -> Result<ClusterStatusResponse, AdminError> {
        access::cluster(t)?;
        if r.node_id == 0 {
            return Err(AdminError::invalid("node_id", "must be above zero"));
        }
        check_peer_addr(&r.addr).map_err(|e| AdminError::invalid("addr", e))?;
        crate::raft::probe(&self.node.channels, &self.node.credentials, &r.addr, r.node_id)
            .await
            .map_err(AdminError::FailedPrecondition)?;
        let raft = &self.node.raft;
        let learner = raft.add_learner(r.node_id, BasicNode { addr: r.addr.clone() }, true);
        match tokio::time::timeout(ADD_NODE_TIMEOUT, learner).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(AdminError::Unavailable(format!(
                    "adding node {} as learner: {e}",
                    r.node_id
                )))
            }
            Err(_) => {
                return Err(AdminError::Timeout(format!(
                    "node {} at {} did not catch up within {ADD_NODE_TIMEOUT:?}: is it running, and does it share the cluster's master key file?",
                    r.node_id, r.addr
                )))
            }
        }
        if !r.learner_only {
            raft.change_membership(ChangeMembers::AddVoterIds([r.node_id].into()), false)
                .await
                .map_err(|e| {
                    AdminError::Unavailable(format!("promoting node {} to voter: {e}", r.node_id))
                })?;
        }
        tracing::info!(node = r.node_id, addr = %r.addr, "node added");
        Ok(crate::status::cluster_status(&self.node, None).await)
    }

    async fn remove_node_local(
        &self,
        t: &AdminToken,
        r: RemoveNodeRequest,
    ) -> Result<ClusterStatusResponse, AdminError> {
        access::cluster(t)?;
        let id = r.node_id;
        let (is_voter, known) = {
            let m = self.node.raft.metrics().borrow().membership_config.clone();
            let known = m.nodes().any(|(n, _)| *n == id);
            (m.voter_ids().any(|v| v == id), known)
        };
        if !known {
            return Err(AdminError::NotMember(id));
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
            .map_err(|e| AdminError::FailedPrecondition(format!("removing node {id}: {e}")))?;
        tracing::info!(node = id, "node removed");
        Ok(crate::status::cluster_status(&self.node, None).await)
    }
}

/// How long `add-node` waits for the new node to catch up as a learner.
const ADD_NODE_TIMEOUT: Duration = Duration::from_secs(60);

fn already_initialized() -> AdminError {
    AdminError::FailedPrecondition("cluster is already initialized".into())
}

/// A fresh random token and its stored form.
fn mint_token(role: Role, tenant: Option<String>, label: String) -> Result<(String, AdminToken), AdminError> {
    let prefix = match role {
        Role::Edge => "tge_",
        _ => "tga_",
    };
    let token = random_token(prefix).map_err(AdminError::internal)?;
    let sha256 = sha256_hex(token.as_bytes());
    let record = AdminToken {
        id: sha256[..12].to_string(),
        sha256,
        role,
        tenant,
        label,
        created_ms: now_ms(),
    };
    Ok((token, record))
}

fn audit_to_proto(a: &crate::state::AuditRecord) -> AuditRecord {
    let actor = a.actor.as_ref();
    AuditRecord {
        index: a.index,
        at_ms: a.at_ms,
        actor_token: actor.map_or_else(|| "bootstrap".into(), |x| x.token_id.clone()),
        actor_role: actor.map(|x| x.role.as_str().to_string()).unwrap_or_default(),
        actor_tenant: actor.and_then(|x| x.tenant.clone()).unwrap_or_default(),
        actor_label: actor.map(|x| x.label.clone()).unwrap_or_default(),
        action: a.action.clone(),
        tenants: a.tenants.clone(),
        error: a.error.clone().unwrap_or_default(),
        changes: a
            .changes
            .iter()
            .map(|c| AuditChange {
                kind: c.kind.clone(),
                tenant: c.tenant.clone(),
                name: c.name.clone(),
                action: c.action.as_str().into(),
                version_before: c.version_before,
                version_after: c.version_after,
            })
            .collect(),
    }
}

/// A peer address must be host:port and name one host (not `0.0.0.0`).
pub fn check_peer_addr(addr: &str) -> Result<(), String> {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        if sa.ip().is_unspecified() || sa.port() == 0 {
            return Err(format!(
                "{addr:?} is not an address peers can reach; give the node's own host:port"
            ));
        }
        return Ok(());
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(format!("{addr:?}: write host:port")),
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
