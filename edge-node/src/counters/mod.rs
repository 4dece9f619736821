//! Stage "counters": the rate-limit counts of this edge and of its peers, and the sharing
//! that keeps them in step (`peers.rs`). The rate-limit phase asks [`Counters::hit`]; the
//! counts outlive config swaps (a new snapshot keeps counting where the old one was).
//!
//! Owns: the sharded count tables, the peer list and the peer port. May not touch the
//! request or the config snapshot: a limiter arrives as plain data ([`Limiter`]).
//!
//! ```text
//!  request ─> hit(limiter, key) ─> shard lock (ns) ─> estimate = prev·overlap + curr ─> admit?
//!                                                    └ admitted: local[curr] += 1, dirty
//!  every 20 ms: dirty local counts ─> peers (absolute values per window)
//!  peer batch  ─> peer table (per node and epoch) ─> deltas into peers[prev|curr]
//! ```
//!
//! **Sliding window.** A window of `w` ms has index `unix_ms / w`, the same on every edge.
//! A slot holds this edge's and the peers' admitted counts for the current and the previous
//! window; the estimate weights the previous window by how much of it still overlaps the
//! last `w` ms (Cloudflare's approximation: exact for steady traffic).
//!
//! **Invariant (the one lock on the request path besides the idle pools).** A hit takes one
//! of 64 shard mutexes for a hash lookup and a few additions, never across an await, and
//! allocates only for a key it has not seen. Sharing, sweeping and peer batches take the
//! same shard locks for as short, from their own tasks.
//!
//! Bounds against hostile input: at most [`MAX_SLOTS`] keys in all (past that, new keys
//! share one overflow slot per limiter, so a flood of distinct header values still counts),
//! and peer batches are capped in `peers.rs`.

pub mod peers;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tollgate_proto::v1::PeerCount;

const SHARDS: usize = 64;
/// Most keys held, over all limiters.
pub const MAX_SLOTS: usize = 1 << 20;
/// The key counted in place of new ones once [`MAX_SLOTS`] is reached.
pub const OVERFLOW_KEY: &str = "\u{0}overflow";

/// Unix milliseconds: windows are cut by the wall clock, so every edge cuts them alike.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub use tollgate_proto::period::Period;

/// One limit as the counters see it. `id` names the policy and its shape (tenant, name,
/// limit, window, key): edges with the same policy share counts, and a changed policy
/// starts afresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limiter {
    pub id: Arc<str>,
    pub limit: u64,
    /// Windows of a rate limit or token bucket; a quota's day or month. The id names it too.
    pub period: Period,
    pub kind: LimiterKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimiterKind {
    /// Shared with peers when `cluster`, else counted on this edge alone.
    SlidingWindow { cluster: bool },
    /// This edge alone: `limit` tokens per window, at most `burst` saved.
    TokenBucket { burst: u64 },
    /// `limit` per UTC day or month, shared with peers and recorded on the control plane.
    Quota,
}

/// How a cluster-scope limit is decided right now (see `peers.rs` for when each applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every peer is in step: this edge's counts plus the peers' against the limit.
    Cluster,
    /// Peers are missing: this edge's own counts against `limit / edges`.
    LocalShare { edges: usize },
    /// Peers are missing: admit (and count) everything.
    Open,
    /// Peers are missing: refuse everything.
    Closed,
}

/// What [`Counters::hit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub admitted: bool,
    /// The limit applied (a share of the policy's under `local_share`).
    pub limit: u64,
    /// Requests still admitted in the current window after this one.
    pub remaining: u64,
    /// Milliseconds until the current window ends (or a token is back).
    pub reset_ms: u64,
    /// Refused only because the peers are unreachable (`on_store_failure: closed`).
    pub store_unavailable: bool,
}

/// A key's counts in the current and the previous window: `[previous, current]`.
#[derive(Debug, Clone)]
struct Slot {
    period: Period,
    window: u64,
    local: [u64; 2],
    peers: [u64; 2],
    /// Local counts changed since the last batch.
    dirty: bool,
    /// Quotas: local counts changed since the last report to the control plane.
    unreported: bool,
}

impl Slot {
    fn new(period: Period, window: u64) -> Self {
        Self {
            period,
            window,
            local: [0, 0],
            peers: [0, 0],
            dirty: false,
            unreported: false,
        }
    }

    /// Moves the slot to window `w` (never backwards).
    fn roll(&mut self, w: u64) {
        if w == self.window + 1 {
            self.local = [self.local[1], 0];
            self.peers = [self.peers[1], 0];
        } else if w > self.window {
            self.local = [0, 0];
            self.peers = [0, 0];
        } else {
            return;
        }
        self.window = w;
    }

    /// Requests in the last window at `now_ms` (a quota: in its period), counting the
    /// peers' or not.
    fn estimate(&self, now_ms: u64, with_peers: bool) -> f64 {
        let (mut prev, mut curr) = (self.local[0], self.local[1]);
        if with_peers {
            prev = prev.saturating_add(self.peers[0]);
            curr = curr.saturating_add(self.peers[1]);
        }
        match self.period {
            Period::Window(w) => {
                let overlap = (w - now_ms % w) as f64 / w as f64;
                prev as f64 * overlap + curr as f64
            }
            Period::Day | Period::Month => curr as f64,
        }
    }

    /// Moves the slot to the period `now_ms` is in.
    fn roll_to(&mut self, now_ms: u64) {
        self.roll(self.period.index(now_ms));
    }
}

/// A token bucket (this edge alone).
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
    /// Tokens per millisecond, and most saved: a full bucket is the same as none.
    rate: f64,
    burst: u64,
}

impl Bucket {
    fn full_at(&self, now_ms: u64) -> bool {
        self.tokens + now_ms.saturating_sub(self.at_ms) as f64 * self.rate >= self.burst as f64
    }
}

#[derive(Default)]
struct Shard {
    windows: HashMap<Arc<str>, HashMap<Box<str>, Slot>>,
    buckets: HashMap<Arc<str>, HashMap<Box<str>, Bucket>>,
}

/// All counts of this edge, and what it knows of its peers'.
pub struct Counters {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    slots: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            slots: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("slots", &self.slots.load(Relaxed))
            .finish()
    }
}

impl Counters {
    fn shard(&self, limiter: &str, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let mut h = self.hasher.build_hasher();
        limiter.hash(&mut h);
        key.hash(&mut h);
        let i = (h.finish() as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether there is room for one more key; counts it when there is.
    fn reserve(&self) -> bool {
        self.slots
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_SLOTS as u64).then_some(n + 1))
            .is_ok()
    }

    /// Counts one request against `limiter` for `key` at `now_ms`, if it is admitted.
    /// Refused requests use up nothing.
    pub fn hit(&self, limiter: &Limiter, key: &str, now_ms: u64, mode: Mode) -> Decision {
        self.hit_n(limiter, key, now_ms, mode, 1)
    }

    /// Counts `n` units at once (an AI call's reserved tokens), admitted only if all fit.
    /// A token bucket takes one whatever `n` is (token limits use windows and quotas).
    pub fn hit_n(&self, limiter: &Limiter, key: &str, now_ms: u64, mode: Mode, n: u64) -> Decision {
        match limiter.kind {
            LimiterKind::TokenBucket { burst } => self.take_token(limiter, burst, key, now_ms),
            LimiterKind::SlidingWindow { cluster } => {
                let mode = if cluster { mode } else { Mode::Cluster };
                self.count(limiter, key, now_ms, mode, cluster, n)
            }
            // A quota always counts what it knows of the cluster (peers and the control
            // plane's record): a day's limit does not fall back for a lost link.
            LimiterKind::Quota => self.count(limiter, key, now_ms, Mode::Cluster, true, n),
        }
    }

    /// Settles a reservation [`Counters::hit_n`] made at `at_ms`: `delta` more units (or
    /// fewer, when negative) in the window the reservation was counted in. A window that
    /// has since been forgotten is left alone.
    pub fn adjust(&self, limiter: &Limiter, key: &str, at_ms: u64, delta: i64) {
        if delta == 0 || matches!(limiter.kind, LimiterKind::TokenBucket { .. }) {
            return;
        }
        let w = limiter.period.index(at_ms);
        let mut shard = self.shard(&limiter.id, key);
        let Some(slot) = shard.windows.get_mut(&*limiter.id).and_then(|k| k.get_mut(key)) else {
            return;
        };
        let i = match slot.window.checked_sub(w) {
            Some(0) => 1,
            Some(1) => 0,
            _ => return,
        };
        let c = &mut slot.local[i];
        *c = if delta < 0 {
            c.saturating_sub(delta.unsigned_abs())
        } else {
            c.saturating_add(delta as u64)
        };
        slot.dirty = true;
        slot.unreported |= !slot.period.slides();
    }

    fn count(
        &self,
        limiter: &Limiter,
        key: &str,
        now_ms: u64,
        mode: Mode,
        cluster: bool,
        n: u64,
    ) -> Decision {
        let period = limiter.period;
        let w = period.index(now_ms);
        let reset_ms = period.until_end(now_ms);
        let quota = !period.slides();
        let (limit, with_peers) = match mode {
            Mode::Cluster => (limiter.limit, cluster),
            Mode::LocalShare { edges } => ((limiter.limit / edges.max(1) as u64).max(1), false),
            Mode::Open => (u64::MAX, false),
            Mode::Closed => {
                return Decision {
                    admitted: false,
                    limit: limiter.limit,
                    remaining: 0,
                    reset_ms,
                    store_unavailable: true,
                }
            }
        };
        let (estimate, admitted) = self.with_slot(limiter, key, w, |slot| {
            slot.roll(w);
            let estimate = slot.estimate(now_ms, with_peers);
            let admitted = estimate + n as f64 <= limit as f64;
            if admitted {
                slot.local[1] += n;
                slot.dirty = true;
                slot.unreported |= quota;
            }
            (estimate, admitted)
        });
        let after = estimate + if admitted { n as f64 } else { 0.0 };
        Decision {
            admitted,
            limit: limit.min(limiter.limit),
            remaining: (limit as f64 - after).max(0.0).min(limiter.limit as f64) as u64,
            reset_ms,
            store_unavailable: false,
        }
    }

    fn take_token(&self, limiter: &Limiter, burst: u64, key: &str, now_ms: u64) -> Decision {
        // Token buckets are compiled with windows only (`phases/ratelimit.rs`).
        let window_ms = match limiter.period {
            Period::Window(w) => w as f64,
            Period::Day | Period::Month => f64::from(u32::MAX),
        };
        let rate = limiter.limit as f64 / window_ms; // tokens per millisecond
        let new = Bucket {
            tokens: burst as f64,
            at_ms: now_ms,
            rate,
            burst,
        };
        let (admitted, tokens) = self.with_bucket(limiter, key, new, |bucket| {
            let elapsed = now_ms.saturating_sub(bucket.at_ms) as f64;
            bucket.tokens = (bucket.tokens + elapsed * rate).min(burst as f64);
            bucket.at_ms = bucket.at_ms.max(now_ms);
            let admitted = bucket.tokens >= 1.0;
            if admitted {
                bucket.tokens -= 1.0;
            }
            (admitted, bucket.tokens)
        });
        let missing = (1.0 - tokens).max(0.0);
        Decision {
            admitted,
            limit: burst,
            remaining: tokens.max(0.0) as u64,
            reset_ms: (missing / rate).ceil() as u64,
            store_unavailable: false,
        }
    }

    /// Runs `f` on the window slot of (`limiter`, `key`), made at window `w` if new; past
    /// [`MAX_SLOTS`] a new key uses the limiter's overflow slot instead.
    fn with_slot<R>(&self, limiter: &Limiter, key: &str, w: u64, f: impl FnOnce(&mut Slot) -> R) -> R {
        {
            let mut shard = self.shard(&limiter.id, key);
            let keys = match shard.windows.get_mut(&*limiter.id) {
                Some(keys) => keys,
                None => shard.windows.entry(limiter.id.clone()).or_default(),
            };
            if let Some(slot) = keys.get_mut(key) {
                return f(slot);
            }
            if key == OVERFLOW_KEY || self.reserve() {
                let slot = keys
                    .entry(key.into())
                    .or_insert_with(|| Slot::new(limiter.period, w));
                return f(slot);
            }
        }
        self.with_slot(limiter, OVERFLOW_KEY, w, f)
    }

    /// [`Counters::with_slot`] for token buckets.
    fn with_bucket<R>(
        &self,
        limiter: &Limiter,
        key: &str,
        new: Bucket,
        f: impl FnOnce(&mut Bucket) -> R,
    ) -> R {
        {
            let mut shard = self.shard(&limiter.id, key);
            let keys = match shard.buckets.get_mut(&*limiter.id) {
                Some(keys) => keys,
                None => shard.buckets.entry(limiter.id.clone()).or_default(),
            };
            if let Some(bucket) = keys.get_mut(key) {
                return f(bucket);
            }
            if key == OVERFLOW_KEY || self.reserve() {
                return f(keys.entry(key.into()).or_insert(new));
            }
        }
        self.with_bucket(limiter, OVERFLOW_KEY, new, f)
    }

    /// Takes back one request [`Counters::hit`] admitted at `now_ms` (another limit refused
    /// it).
    pub fn undo(&self, limiter: &Limiter, key: &str, now_ms: u64) {
        let mut shard = self.shard(&limiter.id, key);
        match limiter.kind {
            LimiterKind::SlidingWindow { .. } | LimiterKind::Quota => {
                let w = limiter.period.index(now_ms);
                if let Some(slot) = shard.windows.get_mut(&*limiter.id).and_then(|k| k.get_mut(key)) {
                    if slot.window == w && slot.local[1] > 0 {
                        slot.local[1] -= 1;
                        slot.dirty = true;
                        slot.unreported |= !slot.period.slides();
                    }
                }
            }
            LimiterKind::TokenBucket { burst } => {
                if let Some(b) = shard.buckets.get_mut(&*limiter.id).and_then(|k| k.get_mut(key)) {
                    b.tokens = (b.tokens + 1.0).min(burst as f64);
                }
            }
        }
    }

    /// This edge's counts for peers: those changed since the last call (marking them sent),
    /// or with `full` every count held (marking nothing).
    pub fn local_counts(&self, full: bool) -> Vec<PeerCount> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (limiter, keys) in shard.windows.iter_mut() {
                for (key, slot) in keys.iter_mut() {
                    if !(full || slot.dirty) {
                        continue;
                    }
                    if !full {
                        slot.dirty = false;
                    }
                    for (i, count) in slot.local.iter().enumerate() {
                        let Some(window) = (slot.window + i as u64).checked_sub(1) else {
                            continue;
                        };
                        if *count > 0 {
                            out.push(PeerCount {
                                limiter: limiter.to_string(),
                                key: key.to_string(),
                                window,
                                count: *count,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// This edge's quota counts for the control plane: (limiter, key, period, count) of the
    /// current and previous period, those changed since the last call (marking them
    /// reported), or with `all` every one.
    pub fn quota_counts(&self, all: bool) -> Vec<(String, String, u64, u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (limiter, keys) in shard.windows.iter_mut() {
                for (key, slot) in keys.iter_mut() {
                    if slot.period.slides() || !(all || slot.unreported) {
                        continue;
                    }
                    slot.unreported = false;
                    for (i, count) in slot.local.iter().enumerate() {
                        let Some(period) = (slot.window + i as u64).checked_sub(1) else {
                            continue;
                        };
                        if *count > 0 {
                            out.push((limiter.to_string(), key.to_string(), period, *count));
                        }
                    }
                }
            }
        }
        out
    }

    /// Adds `delta` more admitted requests of a peer in window `window` (its count there
    /// grew by that much). Unknown keys are created, as the peer may be ahead of this edge.
    pub fn add_peer(&self, limiter: &str, key: &str, period: Period, window: u64, delta: u64) {
        if delta == 0 {
            return;
        }
        let mut shard = self.shard(limiter, key);
        let keys = match shard.windows.get_mut(limiter) {
            Some(keys) => keys,
            None => shard.windows.entry(Arc::from(limiter)).or_default(),
        };
        let slot = match keys.get_mut(key) {
            Some(slot) => slot,
            None => {
                if !self.reserve() {
                    return;
                }
                keys.entry(key.into())
                    .or_insert_with(|| Slot::new(period, window))
            }
        };
        if window > slot.window {
            slot.roll(window);
        }
        if window == slot.window {
            slot.peers[1] = slot.peers[1].saturating_add(delta);
        } else if window + 1 == slot.window {
            slot.peers[0] = slot.peers[0].saturating_add(delta);
        }
    }

    /// Drops keys whose windows have both passed at `now_ms` and whose counts were sent, and
    /// full token buckets.
    pub fn sweep(&self, now_ms: u64) {
        let mut dropped = 0u64;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.windows.retain(|_, keys| {
                keys.retain(|key, slot| {
                    let keep = slot.dirty || slot.unreported || slot.period.index(now_ms) <= slot.window + 1;
                    // Overflow slots were never reserved.
                    dropped += u64::from(!keep && &**key != OVERFLOW_KEY);
                    keep
                });
                !keys.is_empty()
            });
            shard.buckets.retain(|_, keys| {
                keys.retain(|key, b| {
                    let full = b.full_at(now_ms);
                    dropped += u64::from(full && &**key != OVERFLOW_KEY);
                    !full
                });
                !keys.is_empty()
            });
        }
        self.slots
            .fetch_sub(dropped.min(self.slots.load(Relaxed)), Relaxed);
    }

    /// Usage per key of one limiter at `now_ms`: (key, this edge's estimate, the cluster's).
    pub fn usage(&self, limiter: &str, now_ms: u64) -> Vec<(String, f64, f64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(keys) = shard.windows.get(limiter) {
                for (key, slot) in keys {
                    let mut slot = slot.clone();
                    slot.roll_to(now_ms);
                    out.push((
                        key.to_string(),
                        slot.estimate(now_ms, false),
                        slot.estimate(now_ms, true),
                    ));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The peers' admitted requests in the previous window of `limiter`, for its busiest
    /// key: what the error bound is computed from.
    pub fn peer_load(&self, limiter: &str, now_ms: u64) -> u64 {
        let mut most = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(keys) = shard.windows.get(limiter) {
                for slot in keys.values() {
                    let mut slot = slot.clone();
                    slot.roll_to(now_ms);
                    most = most.max(slot.peers[0]);
                }
            }
        }
        most
    }
}

#[cfg(test)]
mod tests;
