//! The config stream client: keeps one `ConfigStream.Stream` open to a control plane,
//! rotating through the configured ones, and feeds every push to the [`Applier`].
//!
//! ```text
//!  connect(cp[i]) ─> Hello{node, caps, last_version} ─> push* ─> Applier ─> Ack/Nack
//!      ^                                                            │ applied
//!      │ jittered backoff 100ms..5s, next cp                        ├─> Shared::install
//!      └──────────── error / stream end / resync ───────────────────└─> lkg::save
//! ```
//! A push carrying only the peer list goes to the counters stage (`Peers::set_peers`), one
//! carrying only quota usage too (`Peers::receive_usage`); while a stream is open, this
//! edge's quota counts are reported to the same control plane every second.
//!
//! With `--tls-*` each connection is mutual TLS ([`ClusterTls`]: files re-read per connection).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::config_stream_client::ConfigStreamClient;
use tollgate_proto::v1::{
    edge_message::Msg, CallRecords, EdgeMessage, Hello, RecordRollupsRequest, RecordUsageRequest,
};
use tonic::transport::{Channel, Endpoint};

use crate::config::cluster_tls::ClusterTls;
use crate::config::lkg;
use crate::config::resources::ConfigState;
use crate::config::snapshot::Retained;
use crate::config::state::Shared;
use crate::config::sync::{Applier, Outcome};
use crate::counters::peers::Peers;
use crate::error::chain;
use crate::listen::signalled;
use crate::observe::rollup::{self, Rollups};
use crate::observe::tail::Tail;

/// What this edge announces it can do.
pub const CAPABILITIES: [&str; 3] = ["http1", "h2", "api_key"];

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("invalid control plane URL {url:?}")]
    BadUrl { url: String },
    #[error("cannot connect")]
    Connect(#[source] tonic::transport::Error),
    #[error("opening the stream failed")]
    Open(#[source] tonic::Status),
    #[error("stream failed")]
    Status(#[from] tonic::Status),
    #[error("the control plane stopped reading the stream")]
    Closed,
}

/// What a failure to open the stream probably means when TLS is the likely cause: a TLS 1.3
/// client learns that the server refused its certificate only as a closed connection, and a
/// plaintext client reads a TLS server's answer as a broken h2 frame.
fn hint(e: &StreamError, tls: bool) -> Option<&'static str> {
    let StreamError::Open(s) = e else { return None };
    match (tls, s.code()) {
        (true, tonic::Code::Cancelled | tonic::Code::Unknown) => Some(
            "the control plane closed the connection after the tls handshake: it may refuse this edge's certificate (is it issued by the cluster CA? the control plane's log says why)",
        ),
        (false, _) if s.message().starts_with("h2 protocol error") => Some(
            "does the control plane run mTLS? then start the edge with --tls-ca, --tls-cert, --tls-key and https:// URLs",
        ),
        _ => None,
    }
}

/// Checks a control plane URL without connecting.
pub fn endpoint(url: &str) -> Result<Endpoint, StreamError> {
    Endpoint::from_shared(url.to_string())
        .map(|e| {
            e.connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        })
        .map_err(|_| StreamError::BadUrl { url: url.to_string() })
}

/// Exponential backoff with jitter: each delay is drawn from `[d/2, d]`, `d` doubling from
/// `min` up to `max`.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let mut bytes = [0u8; 8];
        let r = if aws_lc_rs::rand::fill(&mut bytes).is_ok() {
            u64::from_le_bytes(bytes)
        } else {
            0
        };
        let half = d / 2;
        half + Duration::from_nanos(r % (half.as_nanos() as u64 + 1))
    }
}

/// Identity and addresses announced in `Hello`, and where to persist configs.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub node_id: String,
    pub control_planes: Vec<String>,
    pub proxy_addr: String,
    pub peer_addr: String,
    pub data_dir: PathBuf,
    /// Seals the last-known-good file.
    pub lkg_key: Arc<lkg::LkgKey>,
    pub join_token: Option<String>,
    /// mTLS towards the control planes (`https://` URLs); `None`: plaintext.
    pub tls: Option<ClusterTls>,
}

enum SessionEnd {
    /// The control plane ended the stream.
    Closed,
    /// Reconnect announcing this version.
    Resync { from_version: u64 },
}

pub struct StreamClient {
    cfg: StreamConfig,
    shared: Arc<Shared>,
    peers: Arc<Peers>,
    applier: Applier,
    clients: Retained,
    rollups: Arc<Rollups>,
    tail: Arc<Tail>,
}

impl StreamClient {
    pub fn new(
        cfg: StreamConfig,
        shared: Arc<Shared>,
        peers: Arc<Peers>,
        applier: Applier,
        clients: Retained,
        rollups: Arc<Rollups>,
        tail: Arc<Tail>,
    ) -> Self {
        Self {
            cfg,
            shared,
            peers,
            applier,
            clients,
            rollups,
            tail,
        }
    }

    /// Hands one push to the applier on a blocking thread: compiling a big config (a
    /// 10k-route `RegexSet`, every key and certificate) must not stall a worker that serves
    /// traffic. The applier and what outlives snapshots travel there and back.
    async fn apply(&mut self, push: tollgate_proto::v1::ConfigPush) -> Outcome {
        let mut applier = std::mem::replace(&mut self.applier, Applier::new(None));
        let mut clients = std::mem::take(&mut self.clients);
        let done = tokio::task::spawn_blocking(move || {
            let outcome = applier.on_push(push, &mut clients);
            (applier, clients, outcome)
        })
        .await;
        // A panic while compiling is a bug; it ends the stream task as it did on a worker.
        let (applier, clients, outcome) = done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.applier = applier;
        self.clients = clients;
        outcome
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        if self.cfg.control_planes.is_empty() {
            tracing::warn!("no control plane configured; serving the last-known-good config only");
            return signalled(&mut shutdown).await;
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut next = 0;
        let mut announce = self.applier.version();
        loop {
            let url = self.cfg.control_planes[next % self.cfg.control_planes.len()].clone();
            next += 1;
            let ended = tokio::select! {
                ended = self.session(&url, announce, &mut backoff) => ended,
                _ = signalled(&mut shutdown) => return,
            };
            self.applier.reset_pending();
            announce = self.applier.version();
            match ended {
                Ok(SessionEnd::Closed) => {
                    tracing::info!(control_plane = %url, "control plane closed the config stream")
                }
                Ok(SessionEnd::Resync { from_version }) => {
                    tracing::info!(control_plane = %url, from_version, "resynchronising config");
                    announce = from_version;
                }
                Err(e) => match hint(&e, self.cfg.tls.is_some()) {
                    Some(hint) => {
                        tracing::warn!(control_plane = %url, error = %chain(&e), hint, "config stream failed")
                    }
                    None => tracing::warn!(control_plane = %url, error = %chain(&e), "config stream failed"),
                },
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = signalled(&mut shutdown) => return,
            }
        }
    }

    async fn session(
        &mut self,
        url: &str,
        announce: u64,
        backoff: &mut Backoff,
    ) -> Result<SessionEnd, StreamError> {
        let mut endpoint = endpoint(url)?;
        if let Some(tls) = &mut self.cfg.tls {
            endpoint = endpoint.tls_config(tls.config()).map_err(StreamError::Connect)?;
        }
        let channel = endpoint.connect().await.map_err(StreamError::Connect)?;
        let _reporter = AbortOnDrop(tokio::spawn(report_usage(
            self.peers.clone(),
            AdminClient::new(channel.clone()),
            self.cfg.join_token.clone(),
        )));
        let _rollups = AbortOnDrop(tokio::spawn(report_rollups(
            self.rollups.clone(),
            AdminClient::new(channel.clone()),
            self.cfg.join_token.clone(),
        )));
        let mut client = ConfigStreamClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(8);
        let hello = Hello {
            node_id: self.cfg.node_id.clone(),
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            last_version: announce,
            proxy_addr: self.cfg.proxy_addr.clone(),
            peer_addr: self.cfg.peer_addr.clone(),
        };
        send(&tx, Msg::Hello(hello)).await?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = &self.cfg.join_token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                tonic::Status::invalid_argument("the join token has characters a header cannot carry")
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut pushes = client
            .stream(request)
            .await
            .map_err(StreamError::Open)?
            .into_inner();
        tracing::info!(control_plane = %url, last_version = announce, "config stream open");
        let _connected = Connected::mark(self.shared.clone());
        // A new session starts with no tail until the control plane asks for one.
        let tail = self.tail.clone();
        tail.set(Vec::new());
        let mut lines = tail.rx.lock().await;
        loop {
            let mut push = tokio::select! {
                push = pushes.message() => match push? {
                    Some(p) => p,
                    None => break,
                },
                Some(first) = lines.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < TAIL_BATCH {
                        match lines.try_recv() {
                            Ok(line) => batch.push(line),
                            Err(_) => break,
                        }
                    }
                    send(&tx, Msg::Records(CallRecords { lines: batch })).await?;
                    continue;
                }
            };
            backoff.reset();
            if let Some(t) = push.tail.take() {
                // The live tails' filters; nothing to acknowledge.
                tracing::debug!(filters = t.filters.len(), "live tail filters received");
                tail.set(t.filters);
                continue;
            }
            if let Some(list) = push.peers.take() {
                // The edges to share counters with; no config, nothing to acknowledge.
                tracing::debug!(edges = list.edges.len(), "peer list received");
                self.peers.set_peers(list);
                continue;
            }
            if let Some(usage) = push.usage.take() {
                // The quota usage the control plane holds; nothing to acknowledge.
                tracing::debug!(entries = usage.entries.len(), "quota usage received");
                self.peers.receive_usage(usage.entries);
                continue;
            }
            let (nonce, version, snapshot) = (push.nonce.clone(), push.version, push.snapshot);
            tracing::debug!(nonce = %nonce, version, snapshot, chunk = push.chunk, "config push received");
            match self.apply(push).await {
                Outcome::Pending => {}
                Outcome::Applied { ack, state, snapshot } => {
                    self.shared.install(snapshot);
                    tracing::info!(
                        version = ack.version,
                        resources = state.resources.len(),
                        "config applied"
                    );
                    self.persist(state).await;
                    send(&tx, Msg::Ack(ack)).await?;
                }
                Outcome::Rejected { nack } => {
                    for e in &nack.errors {
                        tracing::warn!(nonce = %nonce, version, kind = %e.kind, tenant = %e.tenant, name = %e.name, error = %e.message, "config rejected");
                    }
                    send(&tx, Msg::Nack(nack)).await?;
                }
                Outcome::Resync { nack, from_version } => {
                    let reason = nack.errors.first().map(|e| e.message.clone()).unwrap_or_default();
                    tracing::warn!(nonce = %nonce, version, %reason, "config push out of step");
                    send(&tx, Msg::Nack(nack)).await?;
                    return Ok(SessionEnd::Resync { from_version });
                }
            }
        }
        Ok(SessionEnd::Closed)
    }

    async fn persist(&self, state: Arc<ConfigState>) {
        let dir = self.cfg.data_dir.clone();
        let key = self.cfg.lkg_key.clone();
        let version = state.version;
        match tokio::task::spawn_blocking(move || lkg::save(&dir, &key, &state)).await {
            Ok(Ok(())) => tracing::debug!(version, "last-known-good config saved"),
            Ok(Err(e)) => {
                tracing::warn!(version, error = %e, "cannot save the last-known-good config")
            }
            Err(e) => {
                tracing::warn!(version, error = %e, "saving the last-known-good config panicked")
            }
        }
    }
}

/// How often quota counts are reported to the control plane (what a `kill -9` can lose).
pub const USAGE_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Most counts in one `RecordUsage` call (one Raft entry, under 1 MB even with the longest
/// keys, so 64 entries fit one Raft message).
const USAGE_REPORT_CHUNK: usize = 2_000;

/// Most call records in one `CallRecords` message to the control plane.
const TAIL_BATCH: usize = 256;

/// `Shared::connected` while the stream is open.
struct Connected(Arc<Shared>);

impl Connected {
    fn mark(shared: Arc<Shared>) -> Self {
        shared.connected.store(true, std::sync::atomic::Ordering::Relaxed);
        Connected(shared)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0
            .connected
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Aborts a task when dropped (the reporter lives as long as its session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reports this edge's changed quota counts every [`USAGE_REPORT_EVERY`]: all of them first
/// and after a failure (the control plane keeps the larger count, so resending is harmless).
async fn report_usage(peers: Arc<Peers>, mut client: AdminClient<Channel>, token: Option<String>) {
    let mut all = true;
    let mut tick = tokio::time::interval(USAGE_REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let entries = peers.usage_report(all);
        if entries.is_empty() {
            all = false;
            continue;
        }
        let count = entries.len();
        let mut failed = None;
        for part in entries.chunks(USAGE_REPORT_CHUNK) {
            let req = bearer(
                RecordUsageRequest {
                    entries: part.to_vec(),
                },
                token.as_deref(),
            );
            if let Err(status) = client.record_usage(req).await {
                failed = Some(status);
                break;
            }
        }
        all = failed.is_some();
        match failed {
            None => tracing::debug!(count, "quota usage reported"),
            Some(status) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "cannot report quota usage; will resend")
            }
        }
    }
}

/// A report to the control plane, carrying the edge's join token.
fn bearer<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        req.metadata_mut().insert("authorization", value);
    }
    req
}

/// Rows in one `RecordRollups` call (one Raft entry of well under 1 MB).
const ROLLUP_REPORT_CHUNK: usize = 1_000;

/// Reports this edge's changed traffic rollups every [`rollup::REPORT_EVERY`]; rows of a
/// failed report go again (values are absolute, so resending is harmless).
async fn report_rollups(rollups: Arc<Rollups>, mut client: AdminClient<Channel>, token: Option<String>) {
    let mut tick = tokio::time::interval(rollup::REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rows = rollups.report(crate::counters::unix_ms());
        for (i, part) in rows.chunks(ROLLUP_REPORT_CHUNK).enumerate() {
            let req = bearer(
                RecordRollupsRequest {
                    rollups: part.to_vec(),
                },
                token.as_deref(),
            );
            if let Err(status) = client.record_rollups(req).await {
                rollups.unreported(&rows[i * ROLLUP_REPORT_CHUNK..]);
                tracing::warn!(code = ?status.code(), error = %status.message(), "cannot report traffic rollups; will resend");
                break;
            }
        }
    }
}

async fn send(tx: &mpsc::Sender<EdgeMessage>, msg: Msg) -> Result<(), StreamError> {
    tx.send(EdgeMessage { msg: Some(msg) })
        .await
        .map_err(|_| StreamError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        assert!(delays[9] >= Duration::from_millis(2500) && delays[9] <= Duration::from_secs(5));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn control_plane_urls_are_checked() {
        assert!(endpoint("http://127.0.0.1:7700").is_ok());
        assert!(matches!(endpoint("not a url"), Err(StreamError::BadUrl { .. })));
    }
}
