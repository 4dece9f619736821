//! Server subcommands: parse flags, start, wait for Ctrl-C/SIGTERM, drain. Nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tollgate_control_plane::secrets::write_private;
use tollgate_control_plane::ControlPlaneOptions;
use tollgate_edge::EdgeOptions;
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::{ClusterInitRequest, CreateTokenRequest};

use crate::client::CliResult;
use crate::{defaults, parse_addr};

#[derive(Args)]
pub struct DevArgs {
    /// Where state lives; the admin token is written to <data-dir>/admin.token
    #[arg(long, default_value = "./tollgate-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = defaults::GRPC, value_parser = parse_addr)]
    grpc: SocketAddr,
    #[arg(long, default_value = defaults::HTTP, value_parser = parse_addr)]
    http: SocketAddr,
    #[arg(long, default_value = defaults::LISTEN, value_parser = parse_addr)]
    listen: SocketAddr,
    #[arg(long, default_value = defaults::ADMIN, value_parser = parse_addr)]
    admin: SocketAddr,
    #[arg(long, default_value = defaults::PEER, value_parser = parse_addr)]
    peer: SocketAddr,
    /// Also serve the proxy over TLS here, with the certificates of the config (by SNI);
    /// off when not given
    #[arg(long, value_parser = parse_addr)]
    tls_listen: Option<SocketAddr>,
    #[command(flatten)]
    observe: ObserveArgs,
}

/// The call log, traces and OTLP export of an edge.
#[derive(Args)]
pub struct ObserveArgs {
    /// Where call records are written as JSON lines (default <data-dir>/calls; `off`: none)
    #[arg(long)]
    call_log_dir: Option<String>,
    /// Size at which the active call-log file is rotated (bytes; KiB, MiB, GiB suffixes)
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    call_log_file_bytes: u64,
    /// Most bytes the call-log directory holds; the oldest rotated files go first
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    call_log_total_bytes: u64,
    /// Age at which the active call-log file is rotated
    #[arg(long, default_value = "1h", value_parser = parse_timeout)]
    call_log_max_age: std::time::Duration,
    /// OTLP/HTTP collector base URL (http://127.0.0.1:4318): call records go to /v1/logs,
    /// sampled traces to /v1/traces, metrics to /v1/metrics; off when not given
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled, 0 to 1 (a client's traceparent keeps its own flag)
    #[arg(long, default_value_t = 1.0)]
    trace_sample_ratio: f64,
    /// How often metrics are exported over OTLP
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    otlp_metrics_interval: std::time::Duration,
}

impl ObserveArgs {
    fn options(&self, data_dir: &std::path::Path, node_id: &str) -> tollgate_edge::ObserveOptions {
        let dir = match self.call_log_dir.as_deref() {
            Some("off") => None,
            Some(d) => Some(PathBuf::from(d)),
            None => Some(data_dir.join("calls")),
        };
        tollgate_edge::ObserveOptions {
            call_log: dir.map(|dir| tollgate_edge::LogConfig {
                dir,
                max_file_bytes: self.call_log_file_bytes,
                max_total_bytes: self.call_log_total_bytes,
                max_age: self.call_log_max_age,
            }),
            otlp: self
                .otlp_endpoint
                .clone()
                .map(|endpoint| tollgate_edge::OtlpConfig {
                    endpoint,
                    node_id: node_id.to_string(),
                    metrics_interval: self.otlp_metrics_interval,
                }),
            sample_ratio: self.trace_sample_ratio,
        }
    }
}

/// A size in bytes: `4096`, `64KiB`, `64MiB`, `1GiB`.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 4096 or 64MiB)"))?;
    let scale = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{s:?}: the unit must be KiB, MiB or GiB")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Args)]
pub struct ControlPlaneArgs {
    /// This node's id (unique in the cluster, above zero, never reused)
    #[arg(long)]
    node_id: u64,
    #[arg(long)]
    data_dir: PathBuf,
    /// Admin API, config stream and Raft
    #[arg(long, default_value = defaults::GRPC, value_parser = parse_addr)]
    grpc: SocketAddr,
    /// /healthz, /metrics and the developer portal (/portal)
    #[arg(long, default_value = defaults::HTTP, value_parser = parse_addr)]
    http: SocketAddr,
    /// An edge's proxy address (http://host:port) the portal's try-it console sends
    /// developers' requests to; try-it is off when not given
    #[arg(long)]
    portal_gateway: Option<String>,
    /// Address others reach --grpc at, host:port (default: the bound --grpc address)
    #[arg(long)]
    advertise: Option<String>,
    /// Ask this running member (gRPC URL) to add this node; needs --token/TOLLGATE_TOKEN
    #[arg(long)]
    join: Option<String>,
    /// Admin token --join presents to the running member
    #[arg(long, env = "TOLLGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the admin token for --join (instead of --token; kept out of the
    /// environment and the process list)
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Master key for secrets at rest; every node of a cluster needs the same file
    /// (default <data-dir>/master.key, created when missing)
    #[arg(long, env = "TOLLGATE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// The master key `tollgate secret rotate-master` moves the cluster to (an existing
    /// file, the same on every node; make it with `openssl rand -hex 32`)
    #[arg(long, env = "TOLLGATE_NEXT_MASTER_KEY_FILE")]
    next_master_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) tls: crate::cert::ClusterTlsArgs,
    /// Without --tls-*, stream config (which carries secrets) to edges off loopback too;
    /// only for a network protected otherwise (a service mesh's mTLS, a private link)
    #[arg(long)]
    allow_plaintext_stream: bool,
    #[command(flatten)]
    retention: RetentionArgs,
}

/// How long traffic rollups are kept; the leader's apply, so give every node the same.
#[derive(Args)]
pub struct RetentionArgs {
    /// How long per-minute rollups are kept before they are merged into hours
    #[arg(long, default_value = "24h")]
    rollup_minutes: tollgate_proto::duration::HumanDuration,
    /// How long per-hour rollups are kept before they are merged into days
    #[arg(long, default_value = "30days")]
    rollup_hours: tollgate_proto::duration::HumanDuration,
    /// How long per-day rollups are kept
    #[arg(long, default_value = "400days")]
    rollup_days: tollgate_proto::duration::HumanDuration,
}

impl RetentionArgs {
    fn retention(&self) -> Result<tollgate_control_plane::rollups::Retention, crate::client::Failure> {
        tollgate_control_plane::rollups::Retention::from_durations(
            self.rollup_minutes.0,
            self.rollup_hours.0,
            self.rollup_days.0,
        )
        .map_err(|message| crate::client::Failure { message, code: 2 })
    }
}

#[derive(Args)]
pub struct EdgeArgs {
    /// Control-plane gRPC URLs, comma separated
    #[arg(long, value_delimiter = ',', required = true)]
    control_plane: Vec<String>,
    #[arg(long, default_value = defaults::LISTEN, value_parser = parse_addr)]
    listen: SocketAddr,
    #[arg(long, default_value = defaults::ADMIN, value_parser = parse_addr)]
    admin: SocketAddr,
    /// Counter sharing with the other edges (cluster-wide rate limits)
    #[arg(long, default_value = defaults::PEER, value_parser = parse_addr)]
    peer: SocketAddr,
    /// The address other edges reach --peer at, host:port (default: the bound --peer
    /// address; needed when --peer listens on 0.0.0.0 or behind NAT)
    #[arg(long, value_parser = parse_addr)]
    peer_advertise: Option<SocketAddr>,
    /// Where the last-known-good config is kept
    #[arg(long, default_value = "./tollgate-edge-data")]
    data_dir: PathBuf,
    /// Name reported to the control plane (default: edge-<host>-<listen port>)
    #[arg(long)]
    node_id: Option<String>,
    /// Token of role edge (`tollgate token create --role edge`) presented to the control plane
    #[arg(long, env = "TOLLGATE_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file holding the join token (instead of --join-token; kept out of the environment
    /// and the process list)
    #[arg(long, conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,
    /// Most open client connections (upgraded ones included); past it, a new connection is
    /// answered 503 and closed
    #[arg(long, default_value_t = tollgate_edge::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Also serve the proxy over TLS here, with the certificates of the config (by SNI);
    /// off when not given
    #[arg(long, value_parser = parse_addr)]
    tls_listen: Option<SocketAddr>,
    /// How long a client may send no request body bytes before its request is abandoned
    /// (408, or the exchange is cut once the answer has started)
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    body_read_timeout: std::time::Duration,
    /// How long an upgraded (WebSocket) connection may carry no byte either way before it
    /// is closed
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    upgrade_idle_timeout: std::time::Duration,
    /// How long a client may take no byte of an answer being sent (a slow reader) before
    /// its connection is closed
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    send_timeout: std::time::Duration,
    /// How long a client may take to send a request's head (slowloris) before its connection
    /// is closed
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    header_read_timeout: std::time::Duration,
    #[command(flatten)]
    observe: ObserveArgs,
    // mTLS towards the control plane (then its URLs are https://).
    #[command(flatten)]
    pub(crate) tls: crate::cert::ClusterTlsArgs,
    /// Without --tls-*, take a plaintext config stream (it carries secrets) from control
    /// planes off loopback; only for a network protected otherwise
    #[arg(long)]
    allow_plaintext_stream: bool,
}

/// A token given on the command line or in the environment, or read from `file` (its first
/// line, trimmed); the error names `flag` and the file, never its content.
fn token_from(
    given: Option<String>,
    file: Option<&std::path::Path>,
    flag: &str,
) -> Result<Option<String>, crate::client::Failure> {
    let Some(path) = file else { return Ok(given) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::client::Failure::other(format!("{flag} {}: {e}", path.display())))?;
    match text.lines().next().map(str::trim) {
        Some(t) if !t.is_empty() => Ok(Some(t.to_string())),
        _ => Err(crate::client::Failure::other(format!(
            "{flag} {}: the file holds no token",
            path.display()
        ))),
    }
}

/// A positive duration such as `30s` or `500ms`.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<tollgate_proto::duration::HumanDuration>()?.0 {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

fn default_edge_id(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("edge-{host}-{}", listen.port())
}

pub async fn control_plane(a: ControlPlaneArgs) -> CliResult {
    let opts = ControlPlaneOptions {
        node_id: a.node_id,
        data_dir: a.data_dir,
        grpc: a.grpc,
        http: a.http,
        advertise: a.advertise,
        join: a.join,
        join_token: token_from(a.token, a.token_file.as_deref(), "--token-file")?,
        master_key_file: a.master_key_file,
        next_master_key_file: a.next_master_key_file,
        tls: a.tls.files()?,
        rollup_retention: a.retention.retention()?,
        portal_gateway: a.portal_gateway,
        allow_plaintext_stream: a.allow_plaintext_stream,
    };
    tollgate_control_plane::run(opts, shutdown_signal()).await?;
    Ok(())
}

pub async fn edge(a: EdgeArgs) -> CliResult {
    let node_id = a.node_id.unwrap_or_else(|| default_edge_id(a.listen));
    let opts = EdgeOptions {
        observe: a.observe.options(&a.data_dir, &node_id),
        node_id,
        control_planes: a.control_plane,
        listen: a.listen,
        admin: a.admin,
        peer: a.peer,
        peer_advertise: a.peer_advertise,
        data_dir: a.data_dir,
        join_token: token_from(a.join_token, a.join_token_file.as_deref(), "--join-token-file")?,
        max_connections: a.max_connections,
        tls_listen: a.tls_listen,
        body_read_timeout: a.body_read_timeout,
        upgrade_idle_timeout: a.upgrade_idle_timeout,
        send_timeout: a.send_timeout,
        header_read_timeout: a.header_read_timeout,
        cluster_tls: a.tls.files()?.map(|f| tollgate_edge::ClusterTlsFiles {
            ca: f.ca,
            cert: f.cert,
            key: f.key,
        }),
        allow_plaintext_stream: a.allow_plaintext_stream,
    };
    tollgate_edge::run(opts, shutdown_signal()).await?;
    Ok(())
}

pub async fn dev(a: DevArgs) -> CliResult {
    let cp = tollgate_control_plane::start(ControlPlaneOptions {
        node_id: 1,
        data_dir: a.data_dir.clone(),
        grpc: a.grpc,
        http: a.http,
        advertise: None,
        join: None,
        join_token: None,
        master_key_file: None,
        next_master_key_file: None,
        tls: None,
        rollup_retention: Default::default(),
        portal_gateway: Some(format!("http://{}", a.listen)),
        // `tollgate dev`'s edge is in the same process, on loopback.
        allow_plaintext_stream: false,
    })
    .await?;
    let server = format!("http://{}", cp.grpc_addr);
    let token_path = a.data_dir.join("admin.token");
    let edge_token_path = a.data_dir.join("edge.token");
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .with_context(|| format!("reading {}", p.display()))
    };
    let (token, edge_token) = if cp.node.is_initialized().await {
        (read(&token_path)?, read(&edge_token_path)?)
    } else {
        // First start: initialize, and mint the token the in-process edge joins with.
        let mut client = AdminClient::connect(server.clone())
            .await
            .context("connecting to the local control plane")?;
        let token = client
            .cluster_init(ClusterInitRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("initializing: {}", s.message()))?
            .into_inner()
            .admin_token;
        let mut req = tonic::Request::new(CreateTokenRequest {
            role: "edge".into(),
            label: "dev edge".into(),
            tenant: String::new(),
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().context("admin token")?,
        );
        let edge_token = client
            .create_token(req)
            .await
            .map_err(|s| anyhow::anyhow!("creating the edge token: {}", s.message()))?
            .into_inner()
            .token;
        write_private(&edge_token_path, format!("{edge_token}\n").as_bytes())
            .with_context(|| format!("writing {}", edge_token_path.display()))?;
        (token, edge_token)
    };
    let (stop_edge, edge_stopped) = tokio::sync::oneshot::channel::<()>();
    let edge = tokio::spawn(tollgate_edge::run(
        EdgeOptions {
            node_id: "dev-edge".into(),
            control_planes: vec![server.clone()],
            listen: a.listen,
            admin: a.admin,
            peer: a.peer,
            peer_advertise: None,
            data_dir: a.data_dir.join("edge"),
            join_token: Some(edge_token),
            max_connections: tollgate_edge::DEFAULT_MAX_CONNECTIONS,
            tls_listen: a.tls_listen,
            body_read_timeout: tollgate_edge::DEFAULT_BODY_READ_TIMEOUT,
            upgrade_idle_timeout: tollgate_edge::DEFAULT_UPGRADE_IDLE_TIMEOUT,
            send_timeout: tollgate_edge::DEFAULT_SEND_TIMEOUT,
            header_read_timeout: tollgate_edge::DEFAULT_HEADER_READ_TIMEOUT,
            cluster_tls: None,
            allow_plaintext_stream: false,
            observe: a.observe.options(&a.data_dir.join("edge"), "dev-edge"),
        },
        async move {
            let _ = edge_stopped.await;
        },
    ));
    println!("tollgate dev is running (data in {})", a.data_dir.display());
    println!("  proxy          http://{}", a.listen);
    if let Some(tls) = a.tls_listen {
        println!("  proxy (tls)    https://{tls} (certificates from the config, by SNI)");
    }
    println!("  edge admin     http://{}/readyz, /metrics", a.admin);
    println!("  admin API      {server}");
    println!("  control plane  http://{}/healthz, /metrics", cp.http_addr);
    println!(
        "  portal         http://{}/portal (log in with a token)",
        cp.http_addr
    );
    println!("  admin token    {token}");
    println!(
        "                 (also in {}; the CLI reads ./tollgate-data/admin.token by default)",
        token_path.display()
    );
    println!("Ctrl-C stops it; state is kept for the next start.");
    tokio::pin!(edge);
    let edge_result = tokio::select! {
        _ = shutdown_signal() => {
            let _ = stop_edge.send(());
            tokio::time::timeout(std::time::Duration::from_secs(10), &mut edge).await.ok()
        }
        r = &mut edge => Some(r),
    };
    cp.shutdown().await;
    match edge_result {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e.into()),
        Some(Err(e)) => Err(anyhow::anyhow!("edge task failed: {e}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_flag_or_the_first_line_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        assert_eq!(
            token_from(Some("t1".into()), None, "--x").unwrap().as_deref(),
            Some("t1")
        );
        assert_eq!(token_from(None, None, "--x").unwrap(), None);
        std::fs::write(&file, "tg_secret_value\n").unwrap();
        assert_eq!(
            token_from(None, Some(&file), "--x").unwrap().as_deref(),
            Some("tg_secret_value")
        );
        std::fs::write(&file, "\n").unwrap();
        let e = token_from(None, Some(&file), "--x").unwrap_err();
        assert!(e.message.contains("holds no token"), "{}", e.message);
        let e = token_from(None, Some(&dir.path().join("missing")), "--x").unwrap_err();
        assert!(e.message.starts_with("--x "), "{}", e.message);
    }
}
