//! Operator verbs: each builds one admin API request and prints the answer.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use tollgate_proto::v1::*;

use crate::client::{connect, CliResult, Failure};
use crate::output::{ago, print, Table};
use crate::Global;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Make the node at --server the first member; prints the bootstrap admin token once and
    /// writes it to <data-dir>/admin.token on that node
    Init,
    /// Add a node (as learner, then voter)
    AddNode {
        #[arg(long)]
        node_id: u64,
        /// The new node's gRPC address, host:port
        #[arg(long)]
        addr: String,
        /// Keep it a non-voting learner
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster
    RemoveNode {
        #[arg(long)]
        node_id: u64,
    },
    /// Control-plane nodes (role, term, applied index) and edges (version, lag, contact)
    Status,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// YAML or JSON file; `-` reads standard input
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Also delete, within the file's tenants, what the file no longer names
    #[arg(long)]
    prune: bool,
}

#[derive(Args)]
pub struct DiffArgs {
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    #[arg(long)]
    prune: bool,
    /// Exit with 1 when there are differences
    #[arg(long)]
    exit_code: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Only this tenant
    #[arg(long, env = "TOLLGATE_TENANT")]
    tenant: Option<String>,
    /// Read the --server node's own copy instead of the leader's (may lag; no quorum needed)
    #[arg(long)]
    local: bool,
}

#[derive(Args)]
pub struct GetArgs {
    /// tenant, upstream, service, policy, app, subscription, jwt_issuer, oauth2_introspection, ai_provider, certificate, api_key, secret; or `openapi SERVICE`: the service's OpenAPI 3.1 document, generated (JSON unless -o yaml)
    kind: String,
    name: Option<String>,
    #[arg(long, env = "TOLLGATE_TENANT")]
    tenant: Option<String>,
}

#[derive(Args)]
pub struct DeleteArgs {
    kind: String,
    name: String,
    #[arg(long, env = "TOLLGATE_TENANT")]
    tenant: Option<String>,
    /// Delete only if the resource is still at this version
    #[arg(long = "if-version")]
    if_version: Option<u64>,
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create an API key for an app; the key is printed once and stored only as a hash
    Create {
        #[arg(long)]
        app: String,
        #[arg(long, env = "TOLLGATE_TENANT")]
        tenant: String,
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke a key by its id (or the key itself)
    Revoke {
        id: String,
        #[arg(long, env = "TOLLGATE_TENANT")]
        tenant: String,
    },
}

#[derive(Subcommand)]
pub enum SubscriptionCmd {
    /// Approve a subscription, ID = <app>:<service>
    Approve {
        id: String,
        #[arg(long, env = "TOLLGATE_TENANT")]
        tenant: String,
    },
    /// Reject a subscription request, ID = <app>:<service>
    Reject {
        id: String,
        #[arg(long, env = "TOLLGATE_TENANT")]
        tenant: String,
    },
    /// Revoke an approved subscription (the app is refused from then on; re-applying a file
    /// that names it keeps it revoked), ID = <app>:<service>
    Revoke {
        id: String,
        #[arg(long, env = "TOLLGATE_TENANT")]
        tenant: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; it is printed once and stored only as a hash
    Create {
        /// cluster-admin, tenant-admin, tenant-developer, viewer, or edge (the config
        /// stream only, for an edge's --join-token)
        #[arg(long)]
        role: String,
        /// The tenant a tenant-admin or tenant-developer (required) or viewer is limited to
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a token by its id (see `token list`)
    Revoke { id: String },
    /// List tokens (ids, roles, labels; never the tokens)
    List,
}

#[derive(Subcommand)]
pub enum ImportCmd {
    /// Create a draft service from an OpenAPI 3 document (YAML or JSON): one route per path
    /// with its methods, named after info.title, the document attached as its docs
    Openapi {
        /// The document (`-`: stdin)
        file: PathBuf,
        #[arg(long)]
        tenant: String,
        /// The upstream the service forwards to (it must exist in the tenant)
        #[arg(long)]
        upstream: String,
        /// The service's name (default: from info.title)
        #[arg(long)]
        name: Option<String>,
        /// Show what would change, change nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Set a secret; the value is read from standard input (a trailing newline is dropped)
    Set {
        name: String,
        #[arg(long, env = "TOLLGATE_TENANT")]
        tenant: String,
    },
    /// Delete a secret
    Delete {
        name: String,
        #[arg(long, env = "TOLLGATE_TENANT")]
        tenant: String,
    },
    /// Move the cluster to a new master key without downtime: first restart every node,
    /// one at a time, with --next-master-key-file NEW (the same file on each); then run
    /// this (every secret is sealed again with NEW); then restart every node, one at a
    /// time, with --master-key-file NEW and without --next-master-key-file
    RotateMaster,
}

fn read_file(path: &PathBuf) -> Result<String, Failure> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| Failure::other(format!("reading {}: {e}", path.display())))
}

#[derive(Serialize)]
struct ChangeOut {
    action: String,
    kind: String,
    tenant: String,
    name: String,
    old_version: u64,
    new_version: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    diff: String,
}

#[derive(Serialize)]
struct ApplyOut {
    version: u64,
    changes: Vec<ChangeOut>,
}

fn apply_out(r: ApplyResponse) -> ApplyOut {
    ApplyOut {
        version: r.version,
        changes: r
            .changes
            .into_iter()
            .map(|c| ChangeOut {
                action: c.action,
                kind: c.kind,
                tenant: c.tenant,
                name: c.name,
                old_version: c.old_version,
                new_version: c.new_version,
                diff: c.diff,
            })
            .collect(),
    }
}

fn summary(out: &ApplyOut) -> String {
    let count = |a: &str| out.changes.iter().filter(|c| c.action == a).count();
    format!(
        "{} created, {} updated, {} deleted, {} unchanged",
        count("created"),
        count("updated"),
        count("deleted"),
        count("unchanged")
    )
}

fn changes_table(out: &ApplyOut) -> String {
    let mut t = Table::new(&["ACTION", "KIND", "TENANT", "NAME", "VERSION"]);
    for c in &out.changes {
        t.row(vec![
            c.action.clone(),
            c.kind.clone(),
            c.tenant.clone(),
            c.name.clone(),
            c.new_version.to_string(),
        ]);
    }
    t.render()
}

pub async fn apply(g: &Global, a: ApplyArgs) -> CliResult {
    let document = read_file(&a.file)?;
    let mut client = connect(g).await?;
    let r = client
        .apply(ApplyRequest {
            document,
            prune: a.prune,
        })
        .await?
        .into_inner();
    let out = apply_out(r);
    print(g.output, &out, || {
        format!(
            "{}applied: {} (config version {})\n",
            changes_table(&out),
            summary(&out),
            out.version
        )
    });
    Ok(())
}

pub async fn import(g: &Global, c: ImportCmd) -> CliResult {
    let ImportCmd::Openapi {
        file,
        tenant,
        upstream,
        name,
        dry_run,
    } = c;
    let text = read_file(&file)?;
    let doc: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|e| Failure::other(format!("{} is not YAML or JSON: {e}", file.display())))?;
    let svc = tollgate_proto::openapi::import(&doc, &tenant, &upstream, name.as_deref())
        .map_err(|e| Failure::other(format!("{}: {e}", file.display())))?;
    let routes = svc.routes.len();
    let spec = tollgate_proto::Spec::Service(svc);
    let document = serde_json::to_string(&tollgate_proto::Document::from_specs([&spec]))
        .map_err(|e| Failure::other(format!("encoding the service: {e}")))?;
    let mut client = connect(g).await?;
    let req = ApplyRequest {
        document,
        prune: false,
    };
    let r = if dry_run {
        client.diff(req).await?
    } else {
        client.apply(req).await?
    }
    .into_inner();
    let out = apply_out(r);
    let tollgate_proto::Spec::Service(svc) = &spec else {
        unreachable!("built as a service")
    };
    print(g.output, &out, || {
        format!(
            "{}{}: service {}/{} (draft) with {routes} routes from {}; publish it with state: published\n",
            changes_table(&out),
            if dry_run { "would apply" } else { "applied" },
            svc.tenant,
            svc.name,
            file.display()
        )
    });
    Ok(())
}

pub async fn diff(g: &Global, a: DiffArgs) -> CliResult {
    let document = read_file(&a.file)?;
    let mut client = connect(g).await?;
    let r = client
        .diff(ApplyRequest {
            document,
            prune: a.prune,
        })
        .await?
        .into_inner();
    let out = apply_out(r);
    let changed = out.changes.iter().any(|c| c.action != "unchanged");
    print(g.output, &out, || {
        let mut s = String::new();
        for c in out.changes.iter().filter(|c| c.action != "unchanged") {
            let sign = match c.action.as_str() {
                "created" => "+",
                "deleted" => "-",
                _ => "~",
            };
            let who = if c.tenant.is_empty() {
                c.name.clone()
            } else {
                format!("{}/{}", c.tenant, c.name)
            };
            s.push_str(&format!("{sign} {} {who} ({})\n", c.kind, c.action));
            for line in c.diff.lines() {
                s.push_str(&format!("    {line}\n"));
            }
        }
        s.push_str(&format!(
            "diff against config version {}: {}\n",
            out.version,
            summary(&out)
        ));
        s
    });
    if a.exit_code && changed {
        return Err(Failure {
            message: String::new(),
            code: 1,
        });
    }
    Ok(())
}

pub async fn export(g: &Global, a: ExportArgs) -> CliResult {
    let mut client = connect(g).await?;
    let r = client
        .export(ExportRequest {
            tenant: a.tenant.unwrap_or_default(),
            local: a.local,
        })
        .await?
        .into_inner();
    let doc: serde_json::Value = serde_json::from_str(&r.document_json)
        .map_err(|e| Failure::other(format!("malformed export: {e}")))?;
    match g.output {
        crate::Format::Json => {
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default())
        }
        // The declarative file format is YAML; the table format prints it too.
        _ => {
            let yaml = serde_saphyr::to_string(&doc).unwrap_or_default();
            print!("# tollgate export, config version {}\n{yaml}", r.version);
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct ResourceOut {
    kind: String,
    tenant: String,
    name: String,
    version: u64,
    spec: serde_json::Value,
}

/// One-line summary of a resource for tables.
/// `get openapi SERVICE`: the service's own document, or one generated from its spec.
async fn get_openapi(g: &Global, a: GetArgs) -> CliResult {
    let (Some(name), Some(tenant)) = (a.name, a.tenant) else {
        return Err(Failure::other("usage: tollgate get openapi SERVICE --tenant T"));
    };
    let mut client = connect(g).await?;
    let r = client
        .get(GetRequest {
            kind: "service".into(),
            tenant,
            name,
        })
        .await?
        .into_inner();
    let [res] = &r.resources[..] else {
        return Err(Failure::other(format!(
            "expected one service, the control plane answered {}",
            r.resources.len()
        )));
    };
    let svc: tollgate_proto::model::Service = serde_json::from_str(&res.spec_json)
        .map_err(|e| Failure::other(format!("malformed service {}: {e}", res.name)))?;
    let doc = tollgate_proto::openapi::for_service(&svc);
    match g.output {
        crate::Format::Yaml => print(g.output, &doc, String::new),
        _ => print(crate::Format::Json, &doc, String::new),
    }
    Ok(())
}

fn describe(kind: &str, spec: &serde_json::Value) -> String {
    let s = |k: &str| spec.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    match kind {
        "service" => {
            let paths: Vec<String> = spec["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["paths"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            format!(
                "{} {} {}",
                s("state").if_empty("published"),
                s("upstream"),
                paths.join(",")
            )
        }
        "upstream" => spec["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["url"].as_str())
            .collect::<Vec<_>>()
            .join(","),
        "subscription" => s("status"),
        "api_key" => format!("app={} {}", s("app"), s("label")),
        "jwt_issuer" => s("issuer"),
        "oauth2_introspection" => format!("{} client_id={}", s("url"), s("client_id")),
        "ai_provider" => format!("{} {}", s("kind"), s("base_url")),
        "certificate" => {
            let hosts: Vec<&str> = spec["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_str())
                .collect();
            format!("{} key={}", hosts.join(","), s("key_secret"))
        }
        _ => s("description"),
    }
}

trait IfEmpty {
    fn if_empty(self, default: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, default: &str) -> String {
        if self.is_empty() {
            default.to_string()
        } else {
            self
        }
    }
}

pub async fn get(g: &Global, a: GetArgs) -> CliResult {
    if a.kind == "openapi" {
        return get_openapi(g, a).await;
    }
    let mut client = connect(g).await?;
    let r = client
        .get(GetRequest {
            kind: a.kind,
            tenant: a.tenant.unwrap_or_default(),
            name: a.name.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    let list: Vec<ResourceOut> = r
        .resources
        .into_iter()
        .map(|res| ResourceOut {
            spec: serde_json::from_str(&res.spec_json).unwrap_or_default(),
            kind: res.kind,
            tenant: res.tenant,
            name: res.name,
            version: res.version,
        })
        .collect();
    let one = a.name.is_some() && list.len() == 1;
    let table = || {
        let mut t = Table::new(&["KIND", "TENANT", "NAME", "VERSION", "DETAILS"]);
        for res in &list {
            t.row(vec![
                res.kind.clone(),
                res.tenant.clone(),
                res.name.clone(),
                res.version.to_string(),
                describe(&res.kind, &res.spec),
            ]);
        }
        t.render()
    };
    if one {
        print(g.output, &list[0], table);
    } else {
        print(g.output, &list, table);
    }
    Ok(())
}

pub async fn delete(g: &Global, a: DeleteArgs) -> CliResult {
    let mut client = connect(g).await?;
    let r = client
        .delete(DeleteRequest {
            key: Some(ResourceKey {
                kind: a.kind,
                tenant: a.tenant.unwrap_or_default(),
                name: a.name,
            }),
            expected_version: a.if_version.unwrap_or(0),
        })
        .await?
        .into_inner();
    let out = apply_out(r);
    print(g.output, &out, || {
        format!(
            "{}deleted (config version {})\n",
            changes_table(&out),
            out.version
        )
    });
    Ok(())
}

#[derive(Serialize)]
struct KeyOut {
    key: String,
    id: String,
    version: u64,
}

pub async fn key(g: &Global, c: KeyCmd) -> CliResult {
    let mut client = connect(g).await?;
    match c {
        KeyCmd::Create { app, tenant, label } => {
            let r = client
                .create_key(CreateKeyRequest {
                    tenant,
                    app,
                    label: label.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let out = KeyOut {
                key: r.key,
                id: r.id,
                version: r.version,
            };
            print(g.output, &out, || {
                format!(
                    "{}\n# key id {} — this is the only time the key is shown\n",
                    out.key, out.id
                )
            });
        }
        KeyCmd::Revoke { id, tenant } => {
            let r = client
                .revoke_key(RevokeKeyRequest { tenant, id })
                .await?
                .into_inner();
            let out = apply_out(r);
            print(g.output, &out, || {
                format!("revoked (config version {})\n", out.version)
            });
        }
    }
    Ok(())
}

pub async fn subscription(g: &Global, c: SubscriptionCmd) -> CliResult {
    let (id, tenant, status, done) = match c {
        SubscriptionCmd::Approve { id, tenant } => (id, tenant, "approved", "approved"),
        SubscriptionCmd::Reject { id, tenant } => (id, tenant, "rejected", "rejected"),
        SubscriptionCmd::Revoke { id, tenant } => (id, tenant, "rejected", "revoked"),
    };
    let mut client = connect(g).await?;
    let r = client
        .decide_subscription(DecideSubscriptionRequest {
            tenant,
            id: id.clone(),
            status: status.into(),
        })
        .await?
        .into_inner();
    let out = apply_out(r);
    print(g.output, &out, || {
        format!("subscription {id} {done} (config version {})\n", out.version)
    });
    Ok(())
}

pub async fn secret(g: &Global, c: SecretCmd) -> CliResult {
    let mut client = connect(g).await?;
    let r = match c {
        SecretCmd::Set { name, tenant } => {
            let mut value = Vec::new();
            std::io::stdin().read_to_end(&mut value)?;
            if value.ends_with(b"\n") {
                value.pop();
                if value.ends_with(b"\r") {
                    value.pop();
                }
            }
            client
                .set_secret(SetSecretRequest { tenant, name, value })
                .await?
        }
        SecretCmd::Delete { name, tenant } => {
            client.delete_secret(DeleteSecretRequest { tenant, name }).await?
        }
        SecretCmd::RotateMaster => {
            let r = client
                .rotate_master_key(RotateMasterKeyRequest {})
                .await?
                .into_inner();
            #[derive(Serialize)]
            struct Rotated {
                from_key_id: String,
                to_key_id: String,
                secrets: u64,
            }
            let out = Rotated {
                from_key_id: r.from_key_id,
                to_key_id: r.to_key_id,
                secrets: r.secrets,
            };
            print(g.output, &out, || {
                format!(
                    "master key {} -> {}: {} secrets sealed again; now restart each node with --master-key-file set to the new key and without --next-master-key-file\n",
                    out.from_key_id, out.to_key_id, out.secrets
                )
            });
            return Ok(());
        }
    };
    let out = apply_out(r.into_inner());
    print(g.output, &out, || {
        format!("{}config version {}\n", changes_table(&out), out.version)
    });
    Ok(())
}

#[derive(Serialize)]
struct NodeOut {
    node_id: u64,
    addr: String,
    role: String,
    voter: bool,
    term: u64,
    applied_index: u64,
}

#[derive(Serialize)]
struct EdgeOut {
    node_id: String,
    connected: bool,
    cp_node: u64,
    applied_version: u64,
    lag: u64,
    last_contact_ms: u64,
    last_nack: String,
}

#[derive(Serialize)]
struct StatusOut {
    leader: u64,
    version: u64,
    nodes: Vec<NodeOut>,
    edges: Vec<EdgeOut>,
}

fn status_out(r: ClusterStatusResponse) -> StatusOut {
    StatusOut {
        leader: r.leader,
        version: r.version,
        nodes: r
            .nodes
            .into_iter()
            .map(|n| NodeOut {
                node_id: n.node_id,
                addr: n.addr,
                role: n.role,
                voter: n.voter,
                term: n.term,
                applied_index: n.applied_index,
            })
            .collect(),
        edges: r
            .edges
            .into_iter()
            .map(|e| EdgeOut {
                node_id: e.node_id,
                connected: e.connected,
                cp_node: e.cp_node,
                applied_version: e.applied_version,
                lag: e.lag,
                last_contact_ms: e.last_contact_ms,
                last_nack: e.last_nack,
            })
            .collect(),
    }
}

fn status_table(s: &StatusOut) -> String {
    let mut t = Table::new(&["NODE", "ADDR", "ROLE", "VOTER", "TERM", "APPLIED"]);
    for n in &s.nodes {
        t.row(vec![
            n.node_id.to_string(),
            n.addr.clone(),
            n.role.clone(),
            if n.voter { "yes" } else { "no" }.into(),
            n.term.to_string(),
            n.applied_index.to_string(),
        ]);
    }
    let mut out = format!(
        "control plane (leader {}, config version {})\n{}",
        s.leader,
        s.version,
        t.render()
    );
    let mut e = Table::new(&[
        "EDGE",
        "STATE",
        "CP",
        "VERSION",
        "LAG",
        "LAST CONTACT",
        "LAST NACK",
    ]);
    for edge in &s.edges {
        e.row(vec![
            edge.node_id.clone(),
            if edge.connected {
                "connected"
            } else {
                "disconnected"
            }
            .into(),
            edge.cp_node.to_string(),
            edge.applied_version.to_string(),
            edge.lag.to_string(),
            ago(edge.last_contact_ms),
            if edge.last_nack.is_empty() {
                "-".into()
            } else {
                edge.last_nack.clone()
            },
        ]);
    }
    out.push_str(&format!("\nedges ({})\n{}", s.edges.len(), e.render()));
    out
}

pub async fn cluster(g: &Global, c: ClusterCmd) -> CliResult {
    let mut client = connect(g).await?;
    match c {
        ClusterCmd::Init => {
            let r = client.cluster_init(ClusterInitRequest {}).await?.into_inner();
            #[derive(Serialize)]
            struct InitOut {
                node_id: u64,
                admin_token: String,
            }
            let out = InitOut {
                node_id: r.node_id,
                admin_token: r.admin_token,
            };
            print(g.output, &out, || {
                format!(
                    "cluster initialized on node {}\nbootstrap admin token (shown once; also in <data-dir>/admin.token on that node):\n{}\n",
                    out.node_id, out.admin_token
                )
            });
        }
        ClusterCmd::AddNode {
            node_id,
            addr,
            learner,
        } => {
            let r = client
                .add_node(AddNodeRequest {
                    node_id,
                    addr,
                    learner_only: learner,
                })
                .await?
                .into_inner();
            let out = status_out(r);
            print(g.output, &out, || status_table(&out));
        }
        ClusterCmd::RemoveNode { node_id } => {
            let r = client
                .remove_node(RemoveNodeRequest { node_id })
                .await?
                .into_inner();
            let out = status_out(r);
            print(g.output, &out, || status_table(&out));
        }
        ClusterCmd::Status => {
            let r = client
                .cluster_status(ClusterStatusRequest { local: false })
                .await?
                .into_inner();
            let out = status_out(r);
            print(g.output, &out, || status_table(&out));
        }
    }
    Ok(())
}

pub async fn token(g: &Global, c: TokenCmd) -> CliResult {
    let mut client = connect(g).await?;
    match c {
        TokenCmd::Create { role, tenant, label } => {
            let req = CreateTokenRequest {
                role,
                label,
                tenant: tenant.unwrap_or_default(),
            };
            let r = client.create_token(req).await?.into_inner();
            #[derive(Serialize)]
            struct TokenOut {
                token: String,
                id: String,
            }
            let out = TokenOut {
                token: r.token,
                id: r.id,
            };
            print(g.output, &out, || {
                format!(
                    "{}\n# token id {} — this is the only time the token is shown\n",
                    out.token, out.id
                )
            });
        }
        TokenCmd::Revoke { id } => {
            let r = client
                .revoke_token(RevokeTokenRequest { id: id.clone() })
                .await?
                .into_inner();
            let out = apply_out(r);
            print(g.output, &out, || {
                format!("token {id} revoked (config version {})\n", out.version)
            });
        }
        TokenCmd::List => {
            let r = client.list_tokens(ListTokensRequest {}).await?.into_inner();
            #[derive(Serialize)]
            struct TokenInfoOut {
                id: String,
                role: String,
                tenant: String,
                label: String,
                created_ms: u64,
            }
            let list: Vec<TokenInfoOut> = r
                .tokens
                .into_iter()
                .map(|t| TokenInfoOut {
                    id: t.id,
                    role: t.role,
                    tenant: t.tenant,
                    label: t.label,
                    created_ms: t.created_ms,
                })
                .collect();
            print(g.output, &list, || {
                let mut t = Table::new(&["ID", "ROLE", "TENANT", "LABEL", "CREATED"]);
                for tok in &list {
                    t.row(vec![
                        tok.id.clone(),
                        tok.role.clone(),
                        tok.tenant.clone(),
                        tok.label.clone(),
                        ago(tok.created_ms),
                    ]);
                }
                t.render()
            });
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only writes that touched this tenant
    #[arg(long, env = "TOLLGATE_TENANT")]
    tenant: Option<String>,
    /// Newest first, at most this many
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

#[derive(Serialize)]
struct AuditChangeOut {
    kind: String,
    tenant: String,
    name: String,
    action: String,
    version_before: u64,
    version_after: u64,
}

#[derive(Serialize)]
struct AuditOut {
    index: u64,
    at_ms: u64,
    actor_token: String,
    actor_role: String,
    actor_tenant: String,
    actor_label: String,
    action: String,
    tenants: Vec<String>,
    error: String,
    changes: Vec<AuditChangeOut>,
}

pub async fn audit(g: &Global, a: AuditArgs) -> CliResult {
    let mut client = connect(g).await?;
    let r = client
        .list_audit(ListAuditRequest {
            tenant: a.tenant.unwrap_or_default(),
            limit: a.limit,
        })
        .await?
        .into_inner();
    let list: Vec<AuditOut> = r
        .records
        .into_iter()
        .map(|x| AuditOut {
            index: x.index,
            at_ms: x.at_ms,
            actor_token: x.actor_token,
            actor_role: x.actor_role,
            actor_tenant: x.actor_tenant,
            actor_label: x.actor_label,
            action: x.action,
            tenants: x.tenants,
            error: x.error,
            changes: x
                .changes
                .into_iter()
                .map(|c| AuditChangeOut {
                    kind: c.kind,
                    tenant: c.tenant,
                    name: c.name,
                    action: c.action,
                    version_before: c.version_before,
                    version_after: c.version_after,
                })
                .collect(),
        })
        .collect();
    print(g.output, &list, || {
        let mut t = Table::new(&["VERSION", "WHEN", "WHO", "ACTION", "RESULT", "CHANGES"]);
        for x in &list {
            let who = if x.actor_label.is_empty() {
                x.actor_token.clone()
            } else {
                format!("{} ({}, {})", x.actor_label, x.actor_role, x.actor_token)
            };
            let changes: Vec<String> = x
                .changes
                .iter()
                .map(|c| {
                    format!(
                        "{} {} {}/{} v{}->v{}",
                        c.action, c.kind, c.tenant, c.name, c.version_before, c.version_after
                    )
                })
                .collect();
            let result = if x.error.is_empty() {
                "ok".to_string()
            } else {
                format!("refused: {}", x.error.lines().next().unwrap_or(""))
            };
            t.row(vec![
                x.index.to_string(),
                ago(x.at_ms),
                who,
                x.action.clone(),
                result,
                changes.join("; "),
            ]);
        }
        t.render()
    });
    Ok(())
}
