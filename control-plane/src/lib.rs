//! The Tollgate control plane: a Raft-replicated config store (openraft on sled) serving the
//! admin API and the config stream to edge nodes.
//!
//! ```text
//!   --grpc  ── tonic ──┬── Admin        (operators; forwarded to the leader)
//!                      ├── ConfigStream (edges; served from this node's applied state)
//!                      └── Raft         (peers)
//!   --http  ── hyper ──── /healthz, /metrics
//! ```
//!
//! With `--tls-cert/--tls-key/--tls-ca` the `--grpc` port and every connection the node opens
//! run over mutual TLS ([`mtls`]); without them, plaintext.
//!
//! Invariant: every change to the config goes through the Raft log as one [`state::Command`]
//! and is validated where it is applied, so replicas never diverge and a rejected change
//! writes nothing.

pub mod access;
pub mod admin;
pub mod edge_peers;
pub mod edges;
pub mod error;
pub mod forward;
pub mod http;
pub mod mtls;
pub mod node;
pub mod portal;
pub mod raft;
pub mod raft_types;
pub mod refusals;
pub mod rollups;
pub mod secrets;
pub mod state;
pub mod status;
pub mod store;
pub mod stream;
pub mod tails;
pub mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::admin_server::AdminServer;
use tollgate_proto::v1::config_stream_server::ConfigStreamServer;
use tollgate_proto::v1::raft_server::RaftServer;
use tollgate_proto::v1::AddNodeRequest;

pub use node::Node;

/// How a control-plane node is started (the flags of `tollgate control-plane`).
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// Address peers and clients use to reach `grpc` (defaults to the bound address).
    pub advertise: Option<String>,
    /// Ask this running member to add us to the cluster (with `join_token`).
    pub join: Option<String>,
    pub join_token: Option<String>,
    /// Master key for secrets; `<data-dir>/master.key` when not set.
    pub master_key_file: Option<PathBuf>,
    /// The master key a rotation (`secret rotate-master`) moves the cluster to; every node
    /// needs it before the rotation runs.
    pub next_master_key_file: Option<PathBuf>,
    /// mTLS inside the cluster: this node's certificate and key and the cluster CA; `None`
    /// serves and connects in plaintext.
    pub tls: Option<mtls::TlsFiles>,
    /// How long traffic rollups are kept per minute, per hour and per day (the leader's
    /// applies: give every node the same).
    pub rollup_retention: rollups::Retention,
    /// The edge address the portal's try-it console sends requests to (`http://host:port`).
    pub portal_gateway: Option<String>,
    /// Without `tls`, stream config (which carries secrets) to edges off loopback too.
    pub allow_plaintext_stream: bool,
}

/// A running control-plane node.
pub struct ControlPlane {
    pub node: Arc<Node>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    /// Stops serving and shuts Raft down.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let _ = self.node.raft.shutdown().await;
    }
}

/// Opens the stores, starts Raft and binds the listeners.
pub async fn start(opts: ControlPlaneOptions) -> anyhow::Result<ControlPlane> {
    anyhow::ensure!(opts.node_id > 0, "--node-id must be above zero");
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
    let key_path = opts
        .master_key_file
        .clone()
        .unwrap_or_else(|| opts.data_dir.join("master.key"));
    let master_key = secrets::MasterKey::load_or_create(&key_path)?;
    let next_key = match &opts.next_master_key_file {
        // Never created here: a next key must be the same file on every node.
        Some(p) => Some(
            secrets::MasterKey::load(p).with_context(|| format!("--next-master-key-file {}", p.display()))?,
        ),
        None => None,
    };
    let keys = Arc::new(secrets::Keyring::new(master_key, next_key));
    let db = store::open(&opts.data_dir.join("raft")).with_context(|| {
        format!(
            "opening the store in {} (is another node using it?)",
            opts.data_dir.display()
        )
    })?;
    let (log_store, sm) = store::stores(&db)?;

    let gateway = opts
        .portal_gateway
        .as_deref()
        .map(portal::Gateway::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--portal-gateway: {e}"))?;
    let grpc = TcpListener::bind(opts.grpc)
        .await
        .with_context(|| format!("binding --grpc {}", opts.grpc))?;
    let http = TcpListener::bind(opts.http)
        .await
        .with_context(|| format!("binding --http {}", opts.http))?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    let addr = opts.advertise.clone().unwrap_or_else(|| grpc_addr.to_string());
    admin::check_peer_addr(&addr).map_err(|e| {
        anyhow::anyhow!("--advertise: {e} (when --grpc binds all interfaces, set --advertise host:port)")
    })?;

    let tls = match opts.tls.clone() {
        Some(files) => Some(Arc::new(
            mtls::ClusterTls::load(files, &addr)
                .context("loading the cluster tls files (--tls-cert, --tls-key, --tls-ca)")?,
        )),
        None => None,
    };

    // Peers prove membership with a credential derived from the shared master key (under
    // mTLS too: a certificate of the cluster CA does not tell a member from an edge).
    let credentials = raft::Credentials::new(&keys, sm.clone());
    let channels = raft::Channels::new(tls.as_ref().map(|t| t.connector()));
    if let Some(url) = &opts.join {
        mtls::endpoint(url, channels.tls()).map_err(|e| anyhow::anyhow!("--join: {e}"))?;
    }
    let raft = raft_types::Raft::new(
        opts.node_id,
        Arc::new(raft::config().validate()?),
        raft::Network::new(channels.clone(), credentials.clone()),
        log_store,
        sm.clone(),
    )
    .await?;
    let node = Arc::new(Node {
        credentials: credentials.clone(),
        id: opts.node_id,
        addr: addr.clone(),
        raft: raft.clone(),
        sm,
        data_dir: opts.data_dir.clone(),
        keys,
        edges: Default::default(),
        channels,
        rollup_retention: opts.rollup_retention,
        tails: Default::default(),
        refusals: Default::default(),
    });
    let edges = node.edges.clone();

    let (stop, stopped) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(
            AdminServer::new(admin::AdminService::new(node.clone()))
                .max_decoding_message_size(raft::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(raft::MAX_MESSAGE_BYTES),
        )
        .add_service(ConfigStreamServer::new(stream::StreamService::new(
            node.clone(),
            tls.is_none(),
            opts.allow_plaintext_stream,
        )))
        .add_service(
            RaftServer::new(raft::RaftService::new(
                raft,
                opts.node_id,
                credentials.clone(),
                edges,
            ))
            .max_decoding_message_size(raft::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(raft::MAX_MESSAGE_BYTES),
        );
    let server: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match &tls {
        Some(t) => Box::pin(
            router.serve_with_incoming_shutdown(mtls::incoming(grpc, t.clone()), wait(stopped.clone())),
        ),
        None => {
            Box::pin(router.serve_with_incoming_shutdown(TcpListenerStream::new(grpc), wait(stopped.clone())))
        }
    };
    if let Some(t) = &tls {
        tasks.push(tokio::spawn(t.clone().watch(wait(stopped.clone()))));
    }
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "grpc server failed");
        }
    }));
    tasks.push(tokio::spawn(edge_peers::run(node.clone(), wait(stopped.clone()))));
    tasks.push(tokio::spawn(http::serve(
        http,
        node.clone(),
        gateway,
        wait(stopped.clone()),
    )));
    if let Some(url) = opts.join.clone() {
        let token = opts.join_token.clone().unwrap_or_default();
        let (id, stopped, tls) = (opts.node_id, stopped.clone(), node.channels.tls().cloned());
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                r = join(url, token, id, addr, tls) => if let Err(e) = r { tracing::error!(error = %e, "join failed") },
                _ = wait(stopped) => {}
            }
        }));
    }
    tracing::info!(node = opts.node_id, grpc = %grpc_addr, http = %http_addr, mtls = tls.is_some(), "control plane started");
    Ok(ControlPlane {
        node,
        grpc_addr,
        http_addr,
        stop,
        tasks,
    })
}

/// Asks the member at `url` to add this node, retrying for a minute while it is unreachable.
async fn join(
    url: String,
    token: String,
    node_id: u64,
    addr: String,
    tls: Option<mtls::Connector>,
) -> anyhow::Result<()> {
    let endpoint = mtls::endpoint(&url, tls.as_ref())
        .map_err(|e| anyhow::anyhow!("--join: {e}"))?
        .connect_timeout(Duration::from_secs(3));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let channel = match &tls {
                Some(c) => endpoint.connect_with_connector(c.clone()).await?,
                None => endpoint.connect().await?,
            };
            let mut client = AdminClient::new(channel);
            let mut req = tonic::Request::new(AddNodeRequest {
                node_id,
                addr: addr.clone(),
                learner_only: false,
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
            client.add_node(req).await?;
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => {
                tracing::info!(node = node_id, via = %url, "joined the cluster");
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, via = %url, "join attempt failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context(format!("joining via {url}"))),
        }
    }
}

/// Runs a node until `shutdown` resolves.
pub async fn run(
    opts: ControlPlaneOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let cp = start(opts).await?;
    shutdown.await;
    cp.shutdown().await;
    Ok(())
}
