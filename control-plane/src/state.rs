//! The replicated config state and the commands that change it.
//!
//! This is the deterministic heart of the control plane: the Raft state machine feeds each
//! committed [`Command`] to [`ConfigState::apply`], which validates it against the state as it
//! stands at that log index and either applies all of it or none of it. Because validation
//! happens here, at apply time, two concurrent applies can never both pass a check that only
//! one of them could (optimistic concurrency on `resource_version`, references, names).
//!
//! ```text
//!   admin call ──> Command ──raft log──> apply(index) ──> resources (+ version = index)
//!                                              └──────────> tombstones (for config deltas)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tollgate_proto::model::{ApiKey, SecretRecord, Subscription, SubscriptionStatus};
use tollgate_proto::validate::{
    check_certificate_hosts, check_duplicates, check_jwt_issuers, check_spec_references, publish_problems,
    references, validate_spec,
};
use tollgate_proto::{Document, Kind, ResourceKey, Spec};

use crate::rollups::{Retention, RollupRecord, Rollups};
use crate::usage::{Usage, UsageRecord};

/// How many deletions are remembered for deltas; an edge older than the oldest one forgotten
/// gets a snapshot instead.
pub const TOMBSTONE_CAPACITY: usize = 10_000;

/// Largest resource (as JSON) a document may hold; keeps every stream push and Raft entry
/// far below the gRPC message limits.
pub const MAX_RESOURCE_BYTES: usize = 256 * 1024;

/// A change to the config, as written into the Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Create or update every item of a document; with `prune`, also delete what the
    /// document's tenants hold but the document no longer names.
    Apply {
        specs: Vec<Spec>,
        prune: bool,
    },
    Delete {
        key: ResourceKey,
        expected_version: Option<u64>,
    },
    CreateKey(ApiKey),
    RevokeKey {
        tenant: String,
        id: String,
    },
    SetSubscriptionStatus {
        tenant: String,
        id: String,
        status: SubscriptionStatus,
    },
    PutSecret(SecretRecord),
    DeleteSecret {
        tenant: String,
        name: String,
    },
    /// The first command of a cluster: its first admin token and the id of the master key
    /// its members share.
    Bootstrap {
        token: AdminToken,
        master_key_id: String,
    },
    AddAdminToken(AdminToken),
    RevokeAdminToken {
        id: String,
    },
    /// Moves the cluster to master key `key_id`: every secret's record sealed again with it
    /// (by the leader), each given with the sealed value it replaces, which must still be
    /// the stored one. No config version: edges get the same values.
    RotateMasterKey {
        key_id: String,
        resealed: Vec<Resealed>,
    },
    /// An admin call refused before it reached Raft (no permission, bad input): only an
    /// audit record, with the call (`action`, like "apply") and the refusal (`error`).
    /// Not config: no version.
    Refused {
        action: String,
        tenants: Vec<String>,
        error: String,
    },
    /// Quota counts reported by edges (not config: no version, no audit record).
    RecordUsage(Vec<UsageRecord>),
    /// Traffic rollups reported by edges (not config either), stamped with the leader's
    /// clock and retention so every replica compacts alike.
    RecordRollups {
        now_ms: u64,
        retention: Retention,
        rows: Vec<RollupRecord>,
    },
}

impl Command {
    /// The tenants this command touches.
    pub fn tenants(&self) -> Vec<String> {
        let mut t: Vec<String> = match self {
            Command::Apply { specs, .. } => Document::tenants_named(specs).into_iter().collect(),
            Command::Delete { key, .. } if key.kind == Kind::Tenant => vec![key.name.clone()],
            Command::Delete { key, .. } => vec![key.tenant.clone()],
            Command::CreateKey(k) => vec![k.tenant.clone()],
            Command::RevokeKey { tenant, .. }
            | Command::SetSubscriptionStatus { tenant, .. }
            | Command::DeleteSecret { tenant, .. } => vec![tenant.clone()],
            Command::PutSecret(s) => vec![s.tenant.clone()],
            Command::AddAdminToken(t) => t.tenant.iter().cloned().collect(),
            Command::Refused { tenants, .. } => tenants.clone(),
            Command::RotateMasterKey { .. } => Vec::new(),
            Command::Bootstrap { .. }
            | Command::RevokeAdminToken { .. }
            | Command::RecordUsage(_)
            | Command::RecordRollups { .. } => Vec::new(),
        };
        t.sort();
        t.dedup();
        t
    }

    /// Commands that only read are answered without the log; everything here writes.
    pub fn describe(&self) -> &'static str {
        match self {
            Command::Apply { .. } => "apply",
            Command::Delete { .. } => "delete",
            Command::CreateKey(_) => "key create",
            Command::RevokeKey { .. } => "key revoke",
            Command::SetSubscriptionStatus { .. } => "subscription decide",
            Command::PutSecret(_) => "secret set",
            Command::DeleteSecret { .. } => "secret delete",
            Command::Bootstrap { .. } => "cluster init",
            Command::AddAdminToken(_) => "token create",
            Command::RevokeAdminToken { .. } => "token revoke",
            Command::Refused { .. } => "refused",
            Command::RotateMasterKey { .. } => "secret rotate-master",
            Command::RecordUsage(_) => "usage record",
            Command::RecordRollups { .. } => "rollup record",
        }
    }
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything in the admin API, every tenant.
    ClusterAdmin,
    /// Everything about one tenant: config, keys, subscription decisions, secrets, its tokens.
    TenantAdmin,
    /// In one tenant: read everything, manage apps, their keys and subscription requests.
    TenantDeveloper,
    /// Read only (one tenant, or all when the token has none).
    Viewer,
    /// Only the config stream (edge nodes).
    Edge,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::ClusterAdmin,
        Role::TenantAdmin,
        Role::TenantDeveloper,
        Role::Viewer,
        Role::Edge,
    ];

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ClusterAdmin => "cluster-admin",
            Role::TenantAdmin => "tenant-admin",
            Role::TenantDeveloper => "tenant-developer",
            Role::Viewer => "viewer",
            Role::Edge => "edge",
        }
    }

    /// Roles that are always bound to one tenant.
    pub fn needs_tenant(self) -> bool {
        matches!(self, Role::TenantAdmin | Role::TenantDeveloper)
    }
}

/// A token as stored: only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminToken {
    /// Public id (first 12 hex chars of the hash), for listing and revoking.
    pub id: String,
    pub sha256: String,
    pub role: Role,
    /// The tenant a tenant-bound role (or a viewer) is limited to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub label: String,
    pub created_ms: u64,
}

/// Who asked for a change, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Id of the token used (never the token).
    pub token_id: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub label: String,
}

impl Actor {
    pub fn of(token: &AdminToken) -> Actor {
        Actor {
            token_id: token.id.clone(),
            role: token.role,
            tenant: token.tenant.clone(),
            label: token.label.clone(),
        }
    }
}

/// One entry of the Raft log: a command, who asked for it and when (on the node that
/// proposed it, so that applying it is deterministic).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub command: Command,
    /// `None` only for `cluster init`, which no token can have asked for.
    pub actor: Option<Actor>,
    pub at_ms: u64,
}

/// A secret sealed again for a master-key rotation, and the sealed value it replaces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resealed {
    pub replaces: String,
    pub record: SecretRecord,
}

/// How many audit records the cluster keeps (older ones are dropped first).
pub const AUDIT_CAPACITY: usize = 50_000;

/// One admin write, as `tollgate audit` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The Raft index of the write: the config version after it, when it succeeded.
    pub index: u64,
    pub at_ms: u64,
    pub actor: Option<Actor>,
    pub action: String,
    /// Tenants the command touched (empty for cluster-wide ones).
    pub tenants: Vec<String>,
    /// `None` when it succeeded; why it was refused otherwise.
    pub error: Option<String>,
    pub changes: Vec<AuditChange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditChange {
    pub kind: String,
    pub tenant: String,
    pub name: String,
    pub action: Action,
    pub version_before: u64,
    pub version_after: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    Updated,
    Deleted,
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
            Action::Unchanged => "unchanged",
        }
    }
}

/// What one command did (or, planned only, would do) to one resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub key: ResourceKey,
    pub action: Action,
    pub old_version: u64,
    pub old: Option<Spec>,
    pub new: Option<Spec>,
}

/// The result of a command that was applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub version: u64,
    pub changes: Vec<Change>,
}

/// Why a command changed nothing. Committed to the log all the same: rejection is
/// deterministic, so every replica rejects it identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum CommandError {
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
}

/// The state machine's answer to one log entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// `None` for entries without a command (blank, membership).
    pub result: Option<Result<Outcome, CommandError>>,
}

/// Upserts and removals since a version (see [`ConfigState::delta_since`]).
pub type Delta<'a> = (Vec<(&'a ResourceKey, &'a Stored)>, Vec<&'a ResourceKey>);

/// A stored resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// Raft log index of the change that last wrote it.
    pub version: u64,
    pub spec: Spec,
}

/// Everything the control plane replicates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigState {
    #[serde(with = "resource_list")]
    pub resources: BTreeMap<ResourceKey, Stored>,
    /// Log index -> keys deleted at that index (bounded by [`TOMBSTONE_CAPACITY`]).
    pub tombstones: BTreeMap<u64, Vec<ResourceKey>>,
    /// Deltas can be computed only from versions at or after this one.
    pub tombstone_floor: u64,
    pub admin_tokens: BTreeMap<String, AdminToken>,
    /// Id of the master key the cluster's secrets are sealed with (set by `cluster init`).
    #[serde(default)]
    pub master_key_id: Option<String>,
    /// The newest admin writes, oldest first (at most [`AUDIT_CAPACITY`]).
    #[serde(default)]
    pub audit: std::collections::VecDeque<AuditRecord>,
    /// Index of the last command applied that changed config (the global config version).
    pub version: u64,
    /// Quota usage reported by edges.
    #[serde(default)]
    pub usage: Usage,
    /// Traffic rollups reported by edges.
    #[serde(default)]
    pub rollups: Rollups,
}

/// The planned effect of a command: new content per touched key (`None` deletes).
struct Plan {
    writes: BTreeMap<ResourceKey, Option<Spec>>,
    /// Unchanged resources that still get a new version, so edges receive them again (a
    /// certificate, JWT issuer or introspection endpoint whose secret changed).
    resend: Vec<ResourceKey>,
    changes: Vec<Change>,
}

impl ConfigState {
    /// Applies `cmd` at log `index`. All or nothing.
    /// Applies one log entry and records it in the audit log, whether it succeeded or not.
    pub fn apply_request(&mut self, index: u64, req: &Request) -> Result<Outcome, CommandError> {
        if let Command::RecordUsage(_) | Command::RecordRollups { .. } = &req.command {
            return self.apply(index, &req.command);
        }
        let mut tenants = req.command.tenants();
        if let Command::RevokeAdminToken { id } = &req.command {
            tenants.extend(
                self.admin_tokens
                    .values()
                    .filter(|t| &t.id == id)
                    .filter_map(|t| t.tenant.clone()),
            );
        }
        if let Command::Refused { action, error, .. } = &req.command {
            self.record_audit(AuditRecord {
                index,
                at_ms: req.at_ms,
                actor: req.actor.clone(),
                action: action.clone(),
                tenants,
                error: Some(error.clone()),
                changes: Vec::new(),
            });
            return self.apply(index, &req.command);
        }
        let result = self.apply(index, &req.command);
        let changes = match &result {
            Ok(out) => out
                .changes
                .iter()
                .filter(|c| c.action != Action::Unchanged)
                .map(|c| AuditChange {
                    kind: c.key.kind.as_str().into(),
                    tenant: c.key.tenant.clone(),
                    name: c.key.name.clone(),
                    action: c.action,
                    version_before: c.old_version,
                    version_after: if c.new.is_some() { index } else { 0 },
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        self.record_audit(AuditRecord {
            index,
            at_ms: req.at_ms,
            actor: req.actor.clone(),
            action: req.command.describe().into(),
            tenants,
            error: result.as_ref().err().map(ToString::to_string),
            changes,
        });
        result
    }

    /// All or nothing: every stored secret must be in `resealed`, sealed with `key_id`, in
    /// place of the value still stored (a secret set or deleted meanwhile: run it again).
    fn rotate_master_key(&mut self, key_id: &str, resealed: &[Resealed]) -> Result<(), CommandError> {
        if self.master_key_id.as_deref() == Some(key_id) {
            return Err(CommandError::Conflict(format!(
                "the cluster already uses master key {key_id}"
            )));
        }
        let secrets: Vec<ResourceKey> = self
            .resources
            .iter()
            .filter(|(_, s)| matches!(s.spec, Spec::Secret(_)))
            .map(|(k, _)| k.clone())
            .collect();
        if secrets.len() != resealed.len() {
            return Err(CommandError::Conflict(
                "secrets changed during the rotation; run it again".into(),
            ));
        }
        let mut next = Vec::with_capacity(secrets.len());
        for key in &secrets {
            let Some(Spec::Secret(stored)) = self.resources.get(key).map(|s| &s.spec) else {
                unreachable!("filtered above");
            };
            let r = resealed
                .iter()
                .find(|r| r.record.tenant == stored.tenant && r.record.name == stored.name)
                .filter(|r| r.replaces == stored.sealed && r.record.key_id == key_id)
                .ok_or_else(|| {
                    CommandError::Conflict("secrets changed during the rotation; run it again".into())
                })?;
            next.push((key.clone(), r.record.clone()));
        }
        for (key, record) in next {
            if let Some(stored) = self.resources.get_mut(&key) {
                stored.spec = Spec::Secret(record);
            }
        }
        self.master_key_id = Some(key_id.to_string());
        Ok(())
    }

    fn record_audit(&mut self, record: AuditRecord) {
        self.audit.push_back(record);
        while self.audit.len() > AUDIT_CAPACITY {
            self.audit.pop_front();
        }
    }

    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<Outcome, CommandError> {
        if let Command::RecordUsage(records) = cmd {
            // Not config: the version stays, nothing is pushed to edges as config.
            self.usage.record(records);
            return Ok(Outcome {
                version: self.version,
                changes: Vec::new(),
            });
        }
        if let Command::Refused { .. } = cmd {
            // Only its audit record (`apply_request`).
            return Ok(Outcome {
                version: self.version,
                changes: Vec::new(),
            });
        }
        if let Command::RotateMasterKey { key_id, resealed } = cmd {
            self.rotate_master_key(key_id, resealed)?;
            return Ok(Outcome {
                version: self.version,
                changes: Vec::new(),
            });
        }
        if let Command::RecordRollups {
            now_ms,
            retention,
            rows,
        } = cmd
        {
            self.rollups.record(*now_ms, *retention, rows);
            return Ok(Outcome {
                version: self.version,
                changes: Vec::new(),
            });
        }
        self.version = index;
        let done = Ok(Outcome {
            version: index,
            changes: Vec::new(),
        });
        match cmd {
            Command::Bootstrap { token, master_key_id } => {
                if !self.admin_tokens.is_empty() {
                    return Err(CommandError::Conflict("cluster is already initialized".into()));
                }
                self.master_key_id = Some(master_key_id.clone());
                self.admin_tokens.insert(token.sha256.clone(), token.clone());
                return done;
            }
            Command::AddAdminToken(t) => {
                self.admin_tokens.insert(t.sha256.clone(), t.clone());
                return done;
            }
            Command::RevokeAdminToken { id } => {
                let Some(hash) = self
                    .admin_tokens
                    .values()
                    .find(|t| &t.id == id)
                    .map(|t| t.sha256.clone())
                else {
                    return Err(CommandError::NotFound(format!("token {id} not found")));
                };
                let admins_left = self
                    .admin_tokens
                    .values()
                    .filter(|t| t.role == Role::ClusterAdmin && t.sha256 != hash)
                    .count();
                if admins_left == 0 {
                    return Err(CommandError::Conflict(
                        "refusing to revoke the last cluster-admin token (create another first)".into(),
                    ));
                }
                self.admin_tokens.remove(&hash);
                return done;
            }
            _ => {}
        }
        let plan = self.plan(cmd)?;
        for key in &plan.resend {
            if let Some(stored) = self.resources.get_mut(key) {
                stored.version = index;
            }
        }
        for (key, spec) in plan.writes {
            match spec {
                Some(spec) => {
                    self.resources.insert(key, Stored { version: index, spec });
                }
                None => {
                    self.resources.remove(&key);
                    self.tombstones.entry(index).or_default().push(key);
                }
            }
        }
        self.trim_tombstones();
        Ok(Outcome {
            version: index,
            changes: plan.changes,
        })
    }

    /// What `cmd` would change, without changing anything (for `diff`).
    pub fn dry_run(&self, cmd: &Command) -> Result<Outcome, CommandError> {
        Ok(Outcome {
            version: self.version,
            changes: self.plan(cmd)?.changes,
        })
    }

    fn trim_tombstones(&mut self) {
        let mut count: usize = self.tombstones.values().map(Vec::len).sum();
        while count > TOMBSTONE_CAPACITY {
            let Some((index, keys)) = self.tombstones.pop_first() else {
                break;
            };
            count -= keys.len();
            self.tombstone_floor = index;
        }
    }

    fn get(&self, key: &ResourceKey) -> Option<&Stored> {
        self.resources.get(key)
    }

    fn plan(&self, cmd: &Command) -> Result<Plan, CommandError> {
        let mut writes: BTreeMap<ResourceKey, Option<Spec>> = BTreeMap::new();
        match cmd {
            Command::Apply { specs, prune } => {
                let mut found = Vec::new();
                check_duplicates(specs, &mut found);
                let mut errors: Vec<String> = Vec::new();
                for s in specs {
                    if !s.kind().is_declarative() {
                        errors.push(format!("{}: cannot be applied from a document", s.key()));
                    }
                    validate_spec(s, &mut found);
                }
                errors.extend(found.iter().map(ToString::to_string));
                for s in specs {
                    let size = s.to_json().len();
                    if size > MAX_RESOURCE_BYTES {
                        errors.push(format!(
                            "{}: is {size} bytes; the limit is {MAX_RESOURCE_BYTES}",
                            s.key()
                        ));
                    }
                }
                if !errors.is_empty() {
                    return Err(CommandError::Invalid(errors));
                }
                let mut conflicts = Vec::new();
                for s in specs {
                    let key = s.key();
                    let stored = self.get(&key).map(|r| r.version).unwrap_or(0);
                    if let Some(want) = s.resource_version() {
                        if want != stored {
                            conflicts.push(format!(
                                "{key}: resource_version {want} does not match the stored version {stored}"
                            ));
                        }
                    }
                    writes.insert(key, Some(s.clone().without_resource_version()));
                }
                if !conflicts.is_empty() {
                    return Err(CommandError::Conflict(conflicts.join("\n")));
                }
                if *prune {
                    let tenants = Document::tenants_named(specs);
                    for key in self.resources.keys() {
                        if key.kind.is_declarative()
                            && key.kind != Kind::Tenant
                            && tenants.contains(&key.tenant)
                            && !writes.contains_key(key)
                        {
                            writes.insert(key.clone(), None);
                        }
                    }
                }
            }
            Command::Delete {
                key,
                expected_version,
            } => {
                if !key.kind.is_declarative() {
                    return Err(CommandError::Invalid(vec![format!(
                        "{} cannot be deleted with delete; use `tollgate {}`",
                        key.kind,
                        if key.kind == Kind::ApiKey {
                            "key revoke"
                        } else {
                            "secret delete"
                        }
                    )]));
                }
                let stored = self.get(key).ok_or_else(|| not_found(key))?;
                if let Some(want) = expected_version {
                    if *want != stored.version {
                        return Err(CommandError::Conflict(format!(
                            "{key}: expected version {want}, stored version is {}",
                            stored.version
                        )));
                    }
                }
                writes.insert(key.clone(), None);
            }
            Command::CreateKey(k) => {
                let key = ResourceKey::new(Kind::ApiKey, &k.tenant, &k.id);
                if self.get(&key).is_some() {
                    return Err(CommandError::Conflict(format!("{key} already exists")));
                }
                writes.insert(key, Some(Spec::ApiKey(k.clone())));
            }
            Command::RevokeKey { tenant, id } => {
                let key = ResourceKey::new(Kind::ApiKey, tenant, id);
                self.get(&key).ok_or_else(|| not_found(&key))?;
                writes.insert(key, None);
            }
            Command::SetSubscriptionStatus { tenant, id, status } => {
                let key = ResourceKey::new(Kind::Subscription, tenant, id);
                let stored = self.get(&key).ok_or_else(|| not_found(&key))?;
                let Spec::Subscription(mut sub) = stored.spec.clone() else {
                    unreachable!("subscription keys hold subscriptions");
                };
                sub.status = Some(*status);
                writes.insert(key, Some(Spec::Subscription(sub)));
            }
            Command::PutSecret(s) => {
                let key = ResourceKey::new(Kind::Secret, &s.tenant, &s.name);
                let mut errors = Vec::new();
                validate_spec(&Spec::Secret(s.clone()), &mut errors);
                if !errors.is_empty() {
                    return Err(CommandError::Invalid(
                        errors.iter().map(ToString::to_string).collect(),
                    ));
                }
                writes.insert(key, Some(Spec::Secret(s.clone())));
            }
            Command::DeleteSecret { tenant, name } => {
                let key = ResourceKey::new(Kind::Secret, tenant, name);
                self.get(&key).ok_or_else(|| not_found(&key))?;
                writes.insert(key, None);
            }
            Command::Bootstrap { .. }
            | Command::AddAdminToken(_)
            | Command::RevokeAdminToken { .. }
            | Command::Refused { .. }
            | Command::RotateMasterKey { .. }
            | Command::RecordUsage(_)
            | Command::RecordRollups { .. } => {}
        }
        self.cascade(&mut writes);
        self.settle_subscriptions(&mut writes);
        self.check_result(&writes)?;
        let resend = match cmd {
            Command::PutSecret(s) => self.secret_users(&s.tenant, &s.name),
            _ => Vec::new(),
        };
        let mut changes: Vec<Change> = writes
            .iter()
            .map(|(key, new)| {
                let old = self.get(key);
                let action = match (old, new) {
                    (None, Some(_)) => Action::Created,
                    (Some(_), None) => Action::Deleted,
                    (Some(o), Some(n)) if &o.spec == n => Action::Unchanged,
                    (Some(_), Some(_)) => Action::Updated,
                    (None, None) => Action::Unchanged,
                };
                Change {
                    key: key.clone(),
                    action,
                    old_version: old.map_or(0, |o| o.version),
                    old: old.map(|o| o.spec.clone()),
                    new: new.clone(),
                }
            })
            .collect();
        // Re-sent resources count as updated: they get a new version, and edges the secret.
        changes.extend(resend.iter().filter_map(|key| {
            let stored = self.get(key)?;
            Some(Change {
                key: key.clone(),
                action: Action::Updated,
                old_version: stored.version,
                old: Some(stored.spec.clone()),
                new: Some(stored.spec.clone()),
            })
        }));
        // Unchanged items are reported but not rewritten, so their version stays.
        writes.retain(|key, new| self.get(key).map(|o| &o.spec) != new.as_ref());
        Ok(Plan {
            writes,
            resend,
            changes,
        })
    }

    /// Streamed resources that carry secret `tenant/name` to edges (certificates' keys, JWT
    /// issuers' HS keys, introspection client secrets).
    fn secret_users(&self, tenant: &str, name: &str) -> Vec<ResourceKey> {
        let secret = ResourceKey::new(Kind::Secret, tenant, name);
        self.resources
            .iter()
            .filter(|(k, s)| {
                k.kind.is_streamed()
                    && k.tenant == tenant
                    && references(k, &s.spec).iter().any(|(_, target)| *target == secret)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Deleting an app revokes its keys.
    fn cascade(&self, writes: &mut BTreeMap<ResourceKey, Option<Spec>>) {
        let deleted_apps: BTreeSet<(String, String)> = writes
            .iter()
            .filter(|(k, v)| k.kind == Kind::App && v.is_none())
            .map(|(k, _)| (k.tenant.clone(), k.name.clone()))
            .collect();
        if deleted_apps.is_empty() {
            return;
        }
        for (key, stored) in &self.resources {
            if let Spec::ApiKey(k) = &stored.spec {
                if deleted_apps.contains(&(k.tenant.clone(), k.app.clone())) {
                    writes.insert(key.clone(), None);
                }
            }
        }
    }

    /// A subscription written without a status keeps the one it has, or starts `approved`
    /// for `approval: auto` services and `pending` for `manual` ones.
    fn settle_subscriptions(&self, writes: &mut BTreeMap<ResourceKey, Option<Spec>>) {
        let keys: Vec<ResourceKey> = writes
            .iter()
            .filter(|(k, v)| {
                k.kind == Kind::Subscription && matches!(v, Some(Spec::Subscription(s)) if s.status.is_none())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let previous = match self.get(&key).map(|s| &s.spec) {
                Some(Spec::Subscription(Subscription { status, .. })) => *status,
                _ => None,
            };
            let Some(Some(Spec::Subscription(sub))) = writes.get(&key) else {
                continue;
            };
            let service_key = ResourceKey::new(Kind::Service, &key.tenant, &sub.service);
            let service = match writes.get(&service_key) {
                Some(s) => s.clone(),
                None => self.get(&service_key).map(|s| s.spec.clone()),
            };
            let derived = match service {
                Some(Spec::Service(s)) if s.approval == tollgate_proto::model::Approval::Manual => {
                    SubscriptionStatus::Pending
                }
                _ => SubscriptionStatus::Approved,
            };
            if let Some(Some(Spec::Subscription(sub))) = writes.get_mut(&key) {
                sub.status = Some(previous.unwrap_or(derived));
            }
        }
    }

    /// Checks references over the config as it would be after `writes`: those of every
    /// written resource, and those of untouched resources that point at a deleted one.
    fn check_result(&self, writes: &BTreeMap<ResourceKey, Option<Spec>>) -> Result<(), CommandError> {
        let exists = |k: &ResourceKey| match writes.get(k) {
            Some(new) => new.is_some(),
            None => self.resources.contains_key(k),
        };
        let deleting = |k: &ResourceKey| matches!(writes.get(k), Some(None));
        let mut errors = Vec::new();
        for (key, spec) in writes {
            if let Some(spec) = spec {
                check_spec_references(key, spec, &exists, &deleting, &mut errors);
            }
        }
        if writes.values().any(Option::is_none) {
            for (key, stored) in &self.resources {
                if writes.contains_key(key) {
                    continue;
                }
                let refs = references(key, &stored.spec);
                if refs.iter().any(|(_, target)| deleting(target)) {
                    check_spec_references(key, &stored.spec, &exists, &deleting, &mut errors);
                }
            }
        }
        // A service takes at most one CORS policy (two would answer preflights differently).
        // Checked for written services and for services naming a written policy.
        let current = |k: &ResourceKey| -> Option<&Spec> {
            match writes.get(k) {
                Some(new) => new.as_ref(),
                None => self.resources.get(k).map(|s| &s.spec),
            }
        };
        let written_policies: Vec<&ResourceKey> = writes
            .iter()
            .filter(|(k, s)| k.kind == Kind::Policy && s.is_some())
            .map(|(k, _)| k)
            .collect();
        let services = self
            .resources
            .range(ResourceKey::new(Kind::Service, "", "")..)
            .take_while(|(k, _)| k.kind == Kind::Service)
            .map(|(k, _)| k)
            .chain(writes.keys().filter(|k| k.kind == Kind::Service))
            .collect::<std::collections::BTreeSet<_>>();
        for key in services {
            let Some(Spec::Service(svc)) = current(key) else {
                continue;
            };
            // The tenant's publishing rules, for services this change writes.
            if writes.contains_key(key) {
                if let Some(Spec::Tenant(t)) = current(&ResourceKey::new(Kind::Tenant, "", &svc.tenant)) {
                    errors.extend(publish_problems(svc, &t.publish_requires));
                }
            }
            let touched = writes.contains_key(key)
                || written_policies
                    .iter()
                    .any(|p| p.tenant == svc.tenant && svc.policies.contains(&p.name));
            if !touched {
                continue;
            }
            let cors: Vec<&str> = svc
                .policies
                .iter()
                .filter(|name| {
                    matches!(current(&ResourceKey::new(Kind::Policy, &svc.tenant, name.as_str())),
                        Some(Spec::Policy(p)) if p.cors.is_some())
                })
                .map(String::as_str)
                .collect();
            if cors.len() > 1 {
                errors.push(tollgate_proto::ValidationError {
                    resource: key.to_string(),
                    field: "policies".into(),
                    message: format!("names more than one cors policy ({}); use one", cors.join(", ")),
                });
            }
        }
        // Uniqueness across resources of one kind: a host is claimed by one certificate (any
        // tenant), an `iss` names one issuer per tenant. Checked over the resulting config,
        // sorted by key, whenever the change writes a resource of that kind.
        let writes_kind = |kind: Kind| writes.iter().any(|(k, s)| k.kind == kind && s.is_some());
        let resulting = |kind: Kind| -> Vec<(&ResourceKey, &Spec)> {
            let stored = self
                .resources
                .range(ResourceKey::new(kind, "", "")..)
                .take_while(|(k, _)| k.kind == kind)
                .filter(|(k, _)| !writes.contains_key(*k))
                .map(|(k, s)| (k, &s.spec));
            let written = writes
                .iter()
                .filter(|(k, _)| k.kind == kind)
                .filter_map(|(k, s)| s.as_ref().map(|s| (k, s)));
            let mut all: Vec<(&ResourceKey, &Spec)> = stored.chain(written).collect();
            all.sort_by(|a, b| a.0.cmp(b.0));
            all
        };
        if writes_kind(Kind::Certificate) {
            let certs = resulting(Kind::Certificate);
            let certs = certs.iter().filter_map(|(k, s)| match s {
                Spec::Certificate(c) => Some((*k, c)),
                _ => None,
            });
            check_certificate_hosts(certs, &mut errors);
        }
        if writes_kind(Kind::JwtIssuer) {
            let issuers = resulting(Kind::JwtIssuer);
            let issuers = issuers.iter().filter_map(|(k, s)| match s {
                Spec::JwtIssuer(j) => Some((*k, j)),
                _ => None,
            });
            check_jwt_issuers(issuers, &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CommandError::Invalid(
                errors.iter().map(ToString::to_string).collect(),
            ))
        }
    }

    /// Declarative resources, optionally of one tenant, as a document.
    pub fn export(&self, tenant: Option<&str>) -> Document {
        Document::from_specs(
            self.resources
                .iter()
                .filter(|(k, _)| k.kind.is_declarative())
                .filter(|(k, s)| match tenant {
                    None => true,
                    Some(t) => k.tenant == t || matches!(&s.spec, Spec::Tenant(x) if x.name == t),
                })
                .map(|(_, s)| &s.spec),
        )
    }

    /// Resources an edge should hold, and removals, changed after `since`; `None` when
    /// deletions that old are forgotten (the edge needs a snapshot).
    pub fn delta_since(&self, since: u64) -> Option<Delta<'_>> {
        if since < self.tombstone_floor {
            return None;
        }
        let upserts = self
            .resources
            .iter()
            .filter(|(k, s)| k.kind.is_streamed() && s.version > since)
            .collect();
        let removals = self
            .tombstones
            .range(since + 1..)
            .flat_map(|(_, keys)| keys)
            .filter(|k| k.kind.is_streamed() && !self.resources.contains_key(k))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Some((upserts, removals))
    }

    /// Everything an edge should hold.
    pub fn streamed(&self) -> impl Iterator<Item = (&ResourceKey, &Stored)> {
        self.resources.iter().filter(|(k, _)| k.kind.is_streamed())
    }

    pub fn has_admin_token(&self, sha256: &str) -> Option<&AdminToken> {
        self.admin_tokens.get(sha256)
    }
}

/// Resources serialize as a list (JSON map keys must be strings); keys derive from specs.
mod resource_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};
    use tollgate_proto::ResourceKey;

    use super::Stored;

    pub fn serialize<S: Serializer>(map: &BTreeMap<ResourceKey, Stored>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<ResourceKey, Stored>, D::Error> {
        let list = Vec::<Stored>::deserialize(d)?;
        Ok(list.into_iter().map(|s| (s.spec.key(), s)).collect())
    }
}

fn not_found(key: &ResourceKey) -> CommandError {
    CommandError::NotFound(format!("{key} not found"))
}

#[cfg(test)]
mod tests;
