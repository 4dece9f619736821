//! Tollgate's edge node: the data plane. It keeps a config stream open to the control plane,
//! compiles each config into an immutable snapshot swapped in atomically, proxies traffic by
//! it, and persists the last-known-good config so it serves without a control plane too.
//!
//! ```text
//!  control plane ──ConfigStream──> config/stream ─> config/sync (Applier) ─> Snapshot ──ArcSwap──┐
//!                                     └─> config/lkg (lkg.json)                                    │
//!  client ──> listen (proxy listener; TLS listener: SNI cert) ─> proxy: phases/ ─> upstream/ ──> upstream
//!  probes ──> listen (admin listener) ─> admin: /healthz /readyz /config/version /limits /metrics
//!  each answer ─> observe: metrics, call record ─> call log, rollups (to the control plane), OTLP
//! ```
//!
//! Invariant: the request path never waits on the control plane and never awaits a lock;
//! it reads one snapshot per request (ARCHITECTURE.md, "edge-node", names the two short-held
//! locks and the identity-provider waits).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod admin;
mod ai;
mod body;
mod clock;
mod config;
mod consumer;
mod counters;
mod error;
mod listen;
mod observe;
mod phases;
mod proxy;
mod request_id;
mod stall;
#[cfg(test)]
mod testutil;
mod upstream;
mod wire;

/// For `benches/router.rs` only (criterion benches can reach only public items): not part
/// of the edge's API, hidden from the docs, and free to change at any time.
#[doc(hidden)]
pub mod bench_support {
    use http::{HeaderMap, Method};
    use tollgate_proto::model::Route;

    use crate::phases::router::{RequestInfo, Router, RouterBuilder};

    /// A compiled routing table whose targets are route indexes.
    #[derive(Debug)]
    pub struct BenchRouter(Router<usize>);

    impl BenchRouter {
        /// Compiles `routes` in order, as the edge does for a config; route `i` leads to `i`.
        pub fn build(routes: &[Route]) -> Result<BenchRouter, String> {
            let mut b = RouterBuilder::default();
            for (i, r) in routes.iter().enumerate() {
                b.add_route(r, i).map_err(|e| format!("routes[{i}]: {e}"))?;
            }
            Ok(BenchRouter(b.build()))
        }

        /// The index of the route that a request matches, as the proxy asks on each request.
        pub fn route(
            &self,
            method: &Method,
            host: Option<&str>,
            path: &str,
            headers: &HeaderMap,
        ) -> Option<usize> {
            let req = RequestInfo {
                method,
                host,
                path,
                headers,
            };
            self.0.route(&req).map(|m| *m.target)
        }
    }
}

pub use config::cluster_tls::ClusterTlsFiles;
use config::resources::ConfigState;
use config::snapshot::Retained;
use config::snapshot::Snapshot;
use config::state::Shared;
use config::{cluster_tls, lkg, stream, sync};
use counters::peers::Peers;
use listen::tls;
pub use observe::calllog::LogConfig;
pub use observe::otlp::OtlpConfig;
pub use observe::ObserveOptions;

/// Default proxy address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Default admin address (`/healthz`, `/readyz`).
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));
/// Default peer address (counter sharing).
pub const DEFAULT_PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7900));
/// How long in-flight requests may take to finish at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on open proxy connections (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default for `--body-read-timeout`: how long a client may send no request body bytes.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `--upgrade-idle-timeout`: how long an upgraded connection may be silent.
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default for `--send-timeout`: how long a client may take no answer byte (slow read).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `--header-read-timeout`: how long a client may take to send a request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Cap on open admin connections (probes and scrapes).
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// How to run an edge node.
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    /// This node's name as the control plane shows it.
    pub node_id: String,
    /// Control plane gRPC URLs (`http://127.0.0.1:7700`), tried in turn.
    pub control_planes: Vec<String>,
    /// Proxy listener; port 0 picks a free port (see [`RunningEdge::proxy_addr`]).
    pub listen: SocketAddr,
    /// Admin listener; port 0 picks a free port.
    pub admin: SocketAddr,
    /// Peer listener: counter sharing with the other edges (gRPC); port 0 picks a free port.
    pub peer: SocketAddr,
    /// The address other edges reach the peer listener at (default: the bound one).
    pub peer_advertise: Option<SocketAddr>,
    /// Where the last-known-good config lives.
    pub data_dir: PathBuf,
    /// Token (role `edge`) presented to the control plane on the config stream.
    pub join_token: Option<String>,
    /// Most open proxy connections; past it, accepting waits.
    pub max_connections: usize,
    /// TLS proxy listener (certificates by SNI from the config); `None` serves no TLS. Its
    /// connections are capped by `max_connections` too, separately from the plain ones.
    pub tls_listen: Option<SocketAddr>,
    /// mTLS towards the control plane (`--tls-ca`, `--tls-cert`, `--tls-key`): the
    /// control-plane URLs are then `https://`. `None`: plaintext `http://` URLs.
    pub cluster_tls: Option<ClusterTlsFiles>,
    /// Without `cluster_tls`, accept a plaintext stream (it carries secrets) from control
    /// planes that are not on loopback.
    pub allow_plaintext_stream: bool,
    /// How long a client may send no request body bytes before the request is abandoned
    /// (408 while no answer has started, else the exchange is cut).
    pub body_read_timeout: Duration,
    /// How long an upgraded (WebSocket) connection may carry no byte before it is closed.
    pub upgrade_idle_timeout: Duration,
    /// How long a client may take no byte of an answer the edge is sending (slow read).
    pub send_timeout: Duration,
    /// How long a client may take to send a request's head (slowloris).
    pub header_read_timeout: Duration,
    /// The call log, traces and OTLP export.
    pub observe: ObserveOptions,
}

/// A started edge node. Dropping it stops it without waiting; prefer
/// [`RunningEdge::shutdown`].
pub struct RunningEdge {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    stream: JoinHandle<()>,
}

impl std::fmt::Debug for RunningEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEdge")
            .field("proxy_addr", &self.proxy_addr)
            .field("admin_addr", &self.admin_addr)
            .field("config_version", &self.config_version())
            .finish()
    }
}

impl RunningEdge {
    /// The address the proxy listener is bound to.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The address the admin listener is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The address the TLS proxy listener is bound to, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The version of the config being served; `None` until one is loaded (not ready).
    pub fn config_version(&self) -> Option<u64> {
        self.shared.version()
    }

    /// Stops accepting, lets in-flight requests finish (at most [`DRAIN_TIMEOUT`]), closes the
    /// config stream.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // Receivers see a dropped sender as shutdown too, so a send error is harmless.
        let _ = self.shutdown.send(true);
        for server in self.servers {
            server.await.context("a listener task panicked")?;
        }
        let mut stream = self.stream;
        if tokio::time::timeout(Duration::from_secs(1), &mut stream)
            .await
            .is_err()
        {
            stream.abort();
        }
        tracing::info!("edge node stopped");
        Ok(())
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {what} listener on {addr} (is the port already in use?)"))
}

/// Loads and compiles the last-known-good config, on a blocking thread (it may be large);
/// any problem is logged and the file ignored as a whole. `clients` goes there and back.
async fn load_last_known_good(
    dir: &Path,
    key: Arc<lkg::LkgKey>,
    clients: Retained,
) -> (Retained, Option<(Arc<ConfigState>, Snapshot)>) {
    let owned = dir.to_path_buf();
    let done = tokio::task::spawn_blocking(move || {
        let mut clients = clients;
        let loaded = compile_last_known_good(&owned, &key, &mut clients);
        (clients, loaded)
    })
    .await;
    done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn compile_last_known_good(
    dir: &Path,
    key: &lkg::LkgKey,
    clients: &mut Retained,
) -> Option<(Arc<ConfigState>, Snapshot)> {
    let state = match lkg::load(dir, key) {
        Ok(Some(state)) => state,
        Ok(None) => {
            tracing::info!(data_dir = %dir.display(), "no last-known-good config; waiting for the control plane");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the last-known-good config");
            return None;
        }
    };
    match Snapshot::compile(&state, clients) {
        Ok(snapshot) => {
            tracing::info!(
                version = state.version,
                resources = state.resources.len(),
                "serving the last-known-good config"
            );
            Some((Arc::new(state), snapshot))
        }
        Err(errors) => {
            tracing::warn!(version = state.version, errors = errors.len(), first = %errors[0], "ignoring the last-known-good config: it does not compile");
            None
        }
    }
}

/// Binds the listeners, loads the last-known-good config, starts serving and opens the config
/// stream. Returns once the listeners are bound.
pub async fn start(opts: EdgeOptions) -> anyhow::Result<RunningEdge> {
    for url in &opts.control_planes {
        stream::endpoint(url).with_context(|| format!("invalid --control-plane {url:?}"))?;
        match (url.starts_with("https://"), opts.cluster_tls.is_some()) {
            (true, false) => anyhow::bail!(
                "--control-plane {url:?} is https: give the cluster's --tls-ca, --tls-cert and --tls-key"
            ),
            (false, true) => anyhow::bail!(
                "--control-plane {url:?}: with --tls-ca/--tls-cert/--tls-key the control planes are reached over mTLS, so use https:// URLs"
            ),
            (false, false) if !opts.allow_plaintext_stream && !tollgate_proto::validate::is_local_url(url) => anyhow::bail!(
                "--control-plane {url:?} is plaintext and not on loopback, but the config stream carries secrets: reach the control planes over mTLS (--tls-ca, --tls-cert, --tls-key and https:// URLs; README \"mTLS inside the cluster\"), or pass --allow-plaintext-stream if the network is protected otherwise"
            ),
            _ => {}
        }
    }
    let cluster_tls = match opts.cluster_tls.clone() {
        Some(files) => {
            Some(cluster_tls::ClusterTls::load(files).map_err(|e| anyhow::anyhow!("cluster tls: {e}"))?)
        }
        None => None,
    };
    let proxy_listener = bind(opts.listen, "proxy").await?;
    let admin_listener = bind(opts.admin, "admin").await?;
    let peer_listener = bind(opts.peer, "peer").await?;
    let peer_addr = peer_listener.local_addr().context("peer listener address")?;
    let proxy_addr = proxy_listener.local_addr().context("proxy listener address")?;
    let admin_addr = admin_listener.local_addr().context("admin listener address")?;
    let tls_listener = match opts.tls_listen {
        Some(addr) => Some(bind(addr, "tls").await?),
        None => None,
    };
    let tls_addr = match &tls_listener {
        Some(l) => Some(l.local_addr().context("tls listener address")?),
        None => None,
    };

    let shared = Arc::new(Shared::default());
    let registry = Arc::new(observe::metrics::Registry::default());
    let observer = observe::start(&opts.observe, registry.clone(), &opts.node_id)?;
    let kept = Retained {
        stats: registry,
        ..Retained::default()
    };
    let lkg_key = Arc::new(
        lkg::LkgKey::for_edge(opts.join_token.as_deref(), &opts.data_dir)
            .context("the last-known-good key")?,
    );
    let (clients, loaded) = load_last_known_good(&opts.data_dir, lkg_key.clone(), kept).await;
    let initial = match loaded {
        Some((state, snapshot)) => {
            shared.install(Arc::new(snapshot));
            Some(state)
        }
        None => None,
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let peers = Peers::new(&opts.node_id);
    let mut servers = vec![
        tokio::spawn(counters::peers::run(
            peers.clone(),
            peer_listener,
            shutdown_rx.clone(),
        )),
        tokio::spawn(listen::serve(
            "proxy",
            proxy_listener,
            proxy::Proxy::new(shared.clone(), peers.clone(), observer.clone())
                .with_body_read_timeout(opts.body_read_timeout)
                .with_upgrade_idle_timeout(opts.upgrade_idle_timeout),
            shutdown_rx.clone(),
            listen::Options {
                drain: DRAIN_TIMEOUT,
                max_connections: opts.max_connections,
                tls: None,
                send_timeout: opts.send_timeout,
                header_read_timeout: opts.header_read_timeout,
            },
        )),
        tokio::spawn(listen::serve(
            "admin",
            admin_listener,
            admin::Admin::new(shared.clone(), peers.clone(), observer.clone()),
            shutdown_rx.clone(),
            listen::Options {
                drain: DRAIN_TIMEOUT,
                max_connections: ADMIN_MAX_CONNECTIONS,
                tls: None,
                send_timeout: opts.send_timeout,
                header_read_timeout: opts.header_read_timeout,
            },
        )),
    ];
    if let Some(listener) = tls_listener {
        servers.push(tokio::spawn(listen::serve(
            "tls",
            listener,
            proxy::Proxy::new(shared.clone(), peers.clone(), observer.clone())
                .with_body_read_timeout(opts.body_read_timeout)
                .with_upgrade_idle_timeout(opts.upgrade_idle_timeout),
            shutdown_rx.clone(),
            listen::Options {
                drain: DRAIN_TIMEOUT,
                max_connections: opts.max_connections,
                tls: Some(tls::acceptor(shared.clone())),
                send_timeout: opts.send_timeout,
                header_read_timeout: opts.header_read_timeout,
            },
        )));
    }
    let client = stream::StreamClient::new(
        stream::StreamConfig {
            node_id: opts.node_id.clone(),
            control_planes: opts.control_planes.clone(),
            proxy_addr: proxy_addr.to_string(),
            peer_addr: opts.peer_advertise.unwrap_or(peer_addr).to_string(),
            data_dir: opts.data_dir.clone(),
            lkg_key,
            join_token: opts.join_token.clone(),
            tls: cluster_tls,
        },
        shared.clone(),
        peers.clone(),
        sync::Applier::new(initial),
        clients,
        observer.rollups.clone(),
        observer.tail.clone(),
    );
    let stream = tokio::spawn(client.run(shutdown_rx));
    tracing::info!(node_id = %opts.node_id, proxy = %proxy_addr, admin = %admin_addr, tls = ?tls_addr, "edge node started");
    Ok(RunningEdge {
        proxy_addr,
        admin_addr,
        tls_addr,
        shared,
        shutdown: shutdown_tx,
        servers,
        stream,
    })
}

/// Runs an edge node until `shutdown` resolves, then drains gracefully.
pub async fn run(
    opts: EdgeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let edge = start(opts).await?;
    shutdown.await;
    tracing::info!("shutting down the edge node");
    edge.shutdown().await
}
