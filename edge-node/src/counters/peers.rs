//! Counter sharing between edges: gossiped per-node counts (each edge sends only its own),
//! over gRPC on the `--peer` port.
//!
//! ```text
//!  control plane ─ PeerList{edges, key} ─> set_peers ─> one link (task + channel) per peer
//!  every 20 ms:  changed local counts ──> each link ──Exchange──> peer ──> its peer table
//!                (a link that failed, or whose peer restarted, sends all counts instead)
//!  peer batch:   key checked ─> sizes checked ─> per (node, epoch) table ─> growth added
//! ```
//!
//! **In step or not.** A cluster-scope limit is decided with the peers' counts while every
//! listed peer has been heard from within [`STALE`] (a peer listed less than [`JOIN_GRACE`]
//! after this edge knew its peers, and never heard yet, is not waited for: it has admitted
//! nothing). An edge whose inbound link is cut is out of step; its peers, which still hear
//! it, are not. Otherwise the policy's `on_store_failure` decides: `local_share` counts
//! this edge alone against `limit / edges` (edges listed, this one included), `open` admits,
//! `closed` refuses. An edge that just started is out of step until its peers' first full
//! batches arrive, so a joining edge never admits a burst; a leaving edge's counts stay until
//! their windows pass.
//!
//! **Error bound.** Each edge admits against counts that are at most one batch interval
//! plus one exchange old, so for steady traffic `admitted <= limit + Σ_peers rate × (batch +
//! rtt)`, which is at most `edges × (one batch interval of traffic)` (ARCHITECTURE.md).
//!
//! **Hostile input.** A batch without the cluster's peer key is refused; one over
//! [`MAX_BATCH_BYTES`] or [`MAX_COUNTS`] is refused by size; counts with oversized fields or
//! an unparsable limiter are skipped; each is counted in [`Dropped`]. Nothing a peer sends can
//! make this edge allocate more than those bounds per batch, or more than
//! [`super::MAX_SLOTS`] keys in all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tollgate_proto::v1::peers_client::PeersClient;
use tollgate_proto::v1::peers_server::{Peers as PeersService, PeersServer};
use tollgate_proto::v1::{CounterAck, CounterBatch, PeerCount, PeerEdge, PeerList, UsageEntry};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{unix_ms, Counters, Mode, Period};
use crate::listen::signalled;

/// How often an edge sends its changed counts (and a heartbeat when nothing changed).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);
/// A peer not heard from for this long is out of step.
pub const STALE: Duration = Duration::from_millis(500);
/// How long a newly listed peer that was never heard from is not waited for.
pub const JOIN_GRACE: Duration = Duration::from_secs(2);
/// Most bytes of one batch, and most counts in it.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
pub const MAX_COUNTS: usize = 200_000;
/// Longest limiter id and key accepted from a peer.
const MAX_FIELD: usize = 512;
/// Most counts kept from peers and the control plane, over all of them.
const MAX_TABLE_ENTRIES: usize = 1 << 20;
const SEND_TIMEOUT: Duration = Duration::from_millis(400);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Batches and counts refused, by reason (`/metrics`).
#[derive(Debug, Default)]
pub struct Dropped {
    pub unauthenticated: AtomicU64,
    pub oversized: AtomicU64,
    pub malformed: AtomicU64,
}

/// One peer this edge sends to.
struct Link {
    addr: String,
    listed_at: Instant,
    last_heard: Option<Instant>,
    /// When the peer last took a batch of this edge (`/limits`).
    last_taken: Option<Instant>,
    /// Its epoch as its last answer said.
    epoch: u64,
    /// Send everything next time (new link, failed send, restarted peer).
    needs_full: Arc<AtomicBool>,
    tx: mpsc::Sender<Arc<CounterBatch>>,
    task: tokio::task::AbortHandle,
    /// Round trip of the last exchange, in microseconds.
    rtt_us: u64,
    /// Listed after this edge knew its peers: a newcomer, not waited for in [`JOIN_GRACE`].
    /// (The peers an edge finds when it starts are waited for: they have traffic.)
    newcomer: bool,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A peer's counts as last reported, per (limiter, key, window).
type Table = HashMap<(String, String, u64), u64>;

#[derive(Default)]
struct Inner {
    key: Option<String>,
    links: HashMap<String, Link>,
    /// Listed edges, this one included when the control plane lists it.
    listed: usize,
    /// By (node id, epoch): a restarted peer's earlier counts stay until their windows pass.
    /// Quota counts the control plane recorded merge in here too (the larger count wins), so
    /// a count heard from both is counted once.
    tables: HashMap<(String, u64), Table>,
    /// The control plane's quota totals per (quota, key, period), as last pushed.
    stored: HashMap<(String, String, u64), u64>,
}

/// What a link reports back after an exchange.
enum Report {
    Taken { node: String, epoch: u64, rtt_us: u64 },
    Failed { node: String },
}

/// Counter sharing for one edge: the peer list, the links, the peers' tables and whether
/// this edge is in step.
pub struct Peers {
    pub counters: Arc<Counters>,
    node_id: String,
    epoch: u64,
    inner: Mutex<Inner>,
    in_step: AtomicBool,
    edges: AtomicUsize,
    pub dropped: Dropped,
    reports: mpsc::UnboundedSender<Report>,
    reports_rx: Mutex<Option<mpsc::UnboundedReceiver<Report>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("node_id", &self.node_id)
            .field("in_step", &self.in_step.load(Relaxed))
            .field("edges", &self.edges.load(Relaxed))
            .finish()
    }
}

impl Peers {
    pub fn new(node_id: &str) -> Arc<Peers> {
        let (reports, rx) = mpsc::unbounded_channel();
        Arc::new(Peers {
            counters: Arc::default(),
            node_id: node_id.to_string(),
            epoch: unix_ms() * 1000 + u64::from(std::process::id() % 1000),
            inner: Mutex::default(),
            // Out of step until the control plane has listed the peers: an edge serving its
            // last-known-good config before it reaches one must not admit a whole limit.
            in_step: AtomicBool::new(false),
            edges: AtomicUsize::new(1),
            dropped: Dropped::default(),
            reports,
            reports_rx: Mutex::new(Some(rx)),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How a cluster-scope limit with `on_failure` is decided now.
    pub fn share(&self, on_failure: tollgate_proto::model::OnStoreFailure) -> Mode {
        use tollgate_proto::model::OnStoreFailure as F;
        if self.in_step.load(Relaxed) {
            return Mode::Cluster;
        }
        match on_failure {
            F::LocalShare => Mode::LocalShare {
                edges: self.edges.load(Relaxed),
            },
            F::Open => Mode::Open,
            F::Closed => Mode::Closed,
        }
    }

    /// Whether cluster-scope limits are decided with every peer's counts right now.
    pub fn in_step(&self) -> bool {
        self.in_step.load(Relaxed)
    }

    /// Edges listed (at least this one).
    pub fn edges(&self) -> usize {
        self.edges.load(Relaxed)
    }

    /// The longest round trip to a peer lately, for the error bound.
    pub fn max_rtt(&self) -> Duration {
        let inner = self.inner();
        Duration::from_micros(inner.links.values().map(|l| l.rtt_us).max().unwrap_or(0))
    }

    /// Per peer: (node id, address, heard from lately, took this edge's last batches).
    pub fn links(&self) -> Vec<(String, String, bool, bool)> {
        let inner = self.inner();
        let now = Instant::now();
        let fresh = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < STALE);
        let mut out: Vec<_> = inner
            .links
            .iter()
            .map(|(id, l)| {
                (
                    id.clone(),
                    l.addr.clone(),
                    link_in_step(l, now),
                    fresh(l.last_taken),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The control plane's peer list: links to new peers, none to gone ones. Must be called
    /// on a tokio runtime (links are tasks).
    pub fn set_peers(self: &Arc<Self>, list: PeerList) {
        let mut inner = self.inner();
        let newcomers = inner.key.is_some();
        inner.key = Some(list.key).filter(|k| !k.is_empty());
        let others: Vec<PeerEdge> = list
            .edges
            .into_iter()
            .filter(|e| e.node_id != self.node_id)
            .collect();
        inner.listed = others.len() + 1;
        inner
            .links
            .retain(|id, link| others.iter().any(|e| &e.node_id == id && e.addr == link.addr));
        for edge in others {
            if inner.links.contains_key(&edge.node_id) {
                continue;
            }
            let Ok(endpoint) = Endpoint::from_shared(format!("http://{}", edge.addr)) else {
                tracing::warn!(peer = %edge.node_id, addr = %edge.addr, "unusable peer address");
                continue;
            };
            let channel = endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(SEND_TIMEOUT)
                .connect_lazy();
            let (tx, rx) = mpsc::channel(2);
            let needs_full = Arc::new(AtomicBool::new(true));
            let task = tokio::spawn(link_loop(
                self.clone(),
                edge.node_id.clone(),
                channel,
                rx,
                needs_full.clone(),
            ))
            .abort_handle();
            tracing::info!(peer = %edge.node_id, addr = %edge.addr, "peer listed");
            inner.links.insert(
                edge.node_id,
                Link {
                    addr: edge.addr,
                    listed_at: Instant::now(),
                    last_heard: None,
                    last_taken: None,
                    epoch: 0,
                    needs_full,
                    tx,
                    task,
                    rtt_us: 0,
                    newcomer: newcomers,
                },
            );
        }
        self.update_step(&inner);
    }

    fn update_step(&self, inner: &Inner) {
        let now = Instant::now();
        let in_step = inner.key.is_some() && inner.links.values().all(|l| link_in_step(l, now));
        self.edges.store(inner.listed.max(1), Relaxed);
        let was = self.in_step.swap(in_step, Relaxed);
        if was != in_step {
            tracing::info!(
                in_step,
                edges = inner.listed,
                "counter sharing {}",
                if in_step {
                    "in step"
                } else {
                    "out of step: limits fall back"
                }
            );
        }
    }

    /// One tick: hands each link its batch, applies links' reports, updates the step.
    fn tick(&self, reports: &mut mpsc::UnboundedReceiver<Report>) {
        // Built before `inner` is taken: it visits every shard. With no peer to tell, it
        // forgets what changed all the same.
        let changes = Arc::new(self.batch(false));
        let mut inner = self.inner();
        while let Ok(report) = reports.try_recv() {
            match report {
                Report::Taken { node, epoch, rtt_us } => {
                    if let Some(l) = inner.links.get_mut(&node) {
                        l.last_taken = Some(Instant::now());
                        l.rtt_us = rtt_us;
                        if l.epoch != 0 && l.epoch != epoch {
                            // It restarted: it lost what this edge sent it.
                            l.needs_full.store(true, Relaxed);
                        }
                        l.epoch = epoch;
                    }
                }
                Report::Failed { node } => {
                    if let Some(l) = inner.links.get_mut(&node) {
                        l.needs_full.store(true, Relaxed);
                    }
                }
            }
        }
        for link in inner.links.values() {
            // A link still busy with an earlier batch sends everything once it is free.
            if link.tx.try_send(changes.clone()).is_err() {
                link.needs_full.store(true, Relaxed);
            }
        }
        self.update_step(&inner);
    }

    fn batch(&self, full: bool) -> CounterBatch {
        CounterBatch {
            node_id: self.node_id.clone(),
            epoch: self.epoch,
            full,
            counts: self.counters.local_counts(full),
        }
    }

    /// Drops peer counts and local keys whose windows have passed.
    fn sweep(&self) {
        let now = unix_ms();
        {
            let mut inner = self.inner();
            inner.tables.retain(|_, table| {
                table.retain(|(limiter, _, window), _| {
                    Period::of(limiter).is_some_and(|p| p.index(now) <= window + 1)
                });
                !table.is_empty()
            });
        }
        self.counters.sweep(now);
    }

    /// Takes a peer's batch: checks each count, keeps it in the peer's table, adds what grew.
    /// Returns how many counts were skipped, or `None` for a sender the control plane did not
    /// list (it is told so, and sends everything once it is listed).
    pub fn receive(&self, batch: CounterBatch) -> Option<usize> {
        let (skipped, grew) = {
            let mut inner = self.inner();
            let link = inner.links.get_mut(&batch.node_id)?;
            link.last_heard = Some(Instant::now());
            let absorbed = absorb(&mut inner, (batch.node_id, batch.epoch), batch.counts);
            self.update_step(&inner);
            absorbed
        };
        Some(self.add_grown(grew, skipped))
    }

    /// Takes the control plane's record of quota usage: merged into the same tables as the
    /// peers' batches, per edge and epoch (this edge's current epoch is its own live count).
    pub fn receive_usage(&self, entries: Vec<UsageEntry>) -> usize {
        let (skipped, grew) = {
            let mut inner = self.inner();
            inner.stored.clear();
            let mut by_source: HashMap<(String, u64), Vec<PeerCount>> = HashMap::new();
            for e in entries {
                let total = inner
                    .stored
                    .entry((e.quota.clone(), e.key.clone(), e.period))
                    .or_insert(0);
                *total = total.saturating_add(e.count);
                if e.node_id == self.node_id && e.epoch == self.epoch {
                    continue;
                }
                by_source
                    .entry((e.node_id, e.epoch))
                    .or_default()
                    .push(PeerCount {
                        limiter: e.quota,
                        key: e.key,
                        window: e.period,
                        count: e.count,
                    });
            }
            let mut all = (0, Vec::new());
            for (source, counts) in by_source {
                let (skipped, grew) = absorb(&mut inner, source, counts);
                all.0 += skipped;
                all.1.extend(grew);
            }
            all
        };
        self.add_grown(grew, skipped)
    }

    fn add_grown(&self, grew: Vec<Grown>, skipped: usize) -> usize {
        for (limiter, key, period, window, delta) in grew {
            self.counters.add_peer(&limiter, &key, period, window, delta);
        }
        if skipped > 0 {
            self.dropped.malformed.fetch_add(skipped as u64, Relaxed);
        }
        skipped
    }

    /// The control plane's recorded total for a quota key in a period.
    pub fn stored(&self, quota: &str, key: &str, period: u64) -> Option<u64> {
        self.inner()
            .stored
            .get(&(quota.to_string(), key.to_string(), period))
            .copied()
    }

    /// This edge's quota counts for `RecordUsage`: those changed since the last report, or
    /// with `all` every one (after a failed report, or on a new connection).
    pub fn usage_report(&self, all: bool) -> Vec<UsageEntry> {
        self.counters
            .quota_counts(all)
            .into_iter()
            .map(|(quota, key, period, count)| UsageEntry {
                quota,
                key,
                period,
                node_id: self.node_id.clone(),
                epoch: self.epoch,
                count,
            })
            .collect()
    }

    fn authorized<T>(&self, req: &Request<T>) -> bool {
        let Some(key) = self.inner().key.clone() else {
            return false;
        };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), key.as_bytes()).is_ok()
    }

    fn key(&self) -> Option<String> {
        self.inner().key.clone()
    }
}

/// A count that grew: (limiter, key, period, window, by how much).
type Grown = (String, String, Period, u64, u64);

/// Keeps `counts` from `source` in its table; returns how many were skipped (unparsable,
/// oversized, for a window other than the previous, current or next one, or past the
/// table's bound) and what grew.
fn absorb(inner: &mut Inner, source: (String, u64), counts: Vec<PeerCount>) -> (usize, Vec<Grown>) {
    let mut skipped = 0;
    let mut grew = Vec::new();
    let now = unix_ms();
    let entries: usize = inner.tables.values().map(HashMap::len).sum();
    let mut room = MAX_TABLE_ENTRIES.saturating_sub(entries);
    let table = inner.tables.entry(source).or_default();
    for c in counts {
        let usable = |p: &Period| {
            let current = p.index(now);
            c.limiter.len() <= MAX_FIELD
                && c.key.len() <= MAX_FIELD
                && c.window.saturating_add(1) >= current
                && c.window <= current.saturating_add(1)
        };
        let Some(period) = Period::of(&c.limiter).filter(usable) else {
            skipped += 1;
            continue;
        };
        let id = (c.limiter.clone(), c.key.clone(), c.window);
        if !table.contains_key(&id) {
            if room == 0 {
                skipped += 1;
                continue;
            }
            room -= 1;
        }
        let old = table.entry(id).or_insert(0);
        if c.count > *old {
            grew.push((c.limiter, c.key, period, c.window, c.count - *old));
            *old = c.count;
        }
    }
    (skipped, grew)
}

/// Whether this edge holds the peer's current counts: it heard from it within [`STALE`]
/// (or the peer is a newcomer in its grace). Whether the peer takes this edge's batches is
/// the peer's concern: it decides by what it hears.
fn link_in_step(l: &Link, now: Instant) -> bool {
    let heard = l.last_heard.is_some_and(|t| now.duration_since(t) < STALE);
    heard || (l.newcomer && l.last_heard.is_none() && now.duration_since(l.listed_at) < JOIN_GRACE)
}

/// Most counts, and about the most bytes, one batch carries: well inside what a peer takes
/// ([`MAX_COUNTS`], [`MAX_BATCH_BYTES`]), so a full batch of a big table goes in parts.
const CHUNK_COUNTS: usize = MAX_COUNTS / 4;
const CHUNK_BYTES: usize = MAX_BATCH_BYTES / 4;

/// `batch` cut into parts of at most [`CHUNK_COUNTS`] counts and about [`CHUNK_BYTES`];
/// always at least one (an empty batch is a heartbeat).
fn chunks(batch: CounterBatch) -> Vec<CounterBatch> {
    let part = |counts| CounterBatch {
        node_id: batch.node_id.clone(),
        epoch: batch.epoch,
        full: batch.full,
        counts,
    };
    let mut out = Vec::new();
    let (mut current, mut bytes) = (Vec::new(), 0);
    for c in batch.counts.iter().cloned() {
        let size = c.limiter.len() + c.key.len() + 32;
        if !current.is_empty() && (current.len() == CHUNK_COUNTS || bytes + size > CHUNK_BYTES) {
            out.push(part(std::mem::take(&mut current)));
            bytes = 0;
        }
        bytes += size;
        current.push(c);
    }
    out.push(part(current));
    out
}

/// Sends the batches of one link, in order; after a failure or when told, everything.
async fn link_loop(
    peers: Arc<Peers>,
    node: String,
    channel: Channel,
    mut rx: mpsc::Receiver<Arc<CounterBatch>>,
    needs_full: Arc<AtomicBool>,
) {
    let mut client = PeersClient::new(channel).max_encoding_message_size(MAX_BATCH_BYTES);
    while let Some(changes) = rx.recv().await {
        let full = needs_full.swap(false, Relaxed);
        let batch = if full {
            peers.batch(true)
        } else {
            (*changes).clone()
        };
        let Some(key) = peers.key() else { continue };
        let Ok(auth) = format!("Bearer {key}").parse::<tonic::metadata::MetadataValue<_>>() else {
            continue;
        };
        let mut report = Report::Failed { node: node.clone() };
        for part in chunks(batch) {
            let mut req = Request::new(part);
            req.metadata_mut().insert("authorization", auth.clone());
            let started = Instant::now();
            report = match tokio::time::timeout(SEND_TIMEOUT, client.exchange(req)).await {
                Ok(Ok(ack)) => Report::Taken {
                    node: node.clone(),
                    epoch: ack.into_inner().epoch,
                    rtt_us: started.elapsed().as_micros() as u64,
                },
                Ok(Err(status)) => {
                    tracing::debug!(peer = %node, code = ?status.code(), error = %status.message(), "peer refused a batch");
                    Report::Failed { node: node.clone() }
                }
                Err(_) => Report::Failed { node: node.clone() },
            };
            if matches!(report, Report::Failed { .. }) {
                break;
            }
        }
        if matches!(report, Report::Failed { .. }) {
            needs_full.store(true, Relaxed);
        }
        if peers.reports.send(report).is_err() {
            return;
        }
    }
}

/// The peer port's key check, run on a call's metadata before its batch is decoded:
/// strangers cost no decoding.
fn gate(peers: Arc<Peers>) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req| {
        if peers.authorized(&req) {
            Ok(req)
        } else {
            peers.dropped.unauthenticated.fetch_add(1, Relaxed);
            Err(Status::unauthenticated(
                "a peer batch needs the cluster's peer key",
            ))
        }
    }
}

/// The peer port's gRPC service (behind [`gate`]).
struct Service(Arc<Peers>);

#[tonic::async_trait]
impl PeersService for Service {
    async fn exchange(&self, req: Request<CounterBatch>) -> Result<Response<CounterAck>, Status> {
        // The key was checked by `gate`, before the batch was decoded.
        let peers = &self.0;
        let batch = req.into_inner();
        if batch.counts.len() > MAX_COUNTS {
            peers.dropped.oversized.fetch_add(1, Relaxed);
            return Err(Status::resource_exhausted("too many counts in one batch"));
        }
        match peers.receive(batch) {
            Some(_) => Ok(Response::new(CounterAck { epoch: peers.epoch })),
            None => Err(Status::failed_precondition(
                "not a peer the control plane listed to this edge",
            )),
        }
    }
}

/// Serves the peer port and runs the batch ticker until `shutdown`.
pub async fn run(peers: Arc<Peers>, listener: tokio::net::TcpListener, mut shutdown: watch::Receiver<bool>) {
    let Some(mut reports) = peers.reports_rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let service = tonic::service::interceptor::InterceptedService::new(
        PeersServer::new(Service(peers.clone())).max_decoding_message_size(MAX_BATCH_BYTES),
        gate(peers.clone()),
    );
    let mut stop = shutdown.clone();
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move { signalled(&mut stop).await },
        );
    let ticker = async {
        let mut tick = tokio::time::interval(BATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        loop {
            tick.tick().await;
            peers.tick(&mut reports);
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                peers.sweep();
            }
        }
    };
    tokio::select! {
        served = server => {
            if let Err(e) = served {
                tracing::warn!(error = %crate::error::chain(&e), "peer listener failed");
            }
        }
        _ = ticker => {}
        _ = signalled(&mut shutdown) => {}
    }
    peers.inner().links.clear();
}

#[cfg(test)]
mod tests;
