//! Picking an upstream target for each request, by the upstream's `balance`:
//!
//! - `round_robin`: weighted, interleaved ([`wrr`]): weights `[3, 1]` give `A B A A`.
//! - `least_conn`: the target with the fewest requests in flight per weight
//!   (`in_flight / weight`); ties (an idle upstream) go by weighted round robin.
//! - `consistent_hash`: the `hash_header` value (else the client IP) on a hash ring with
//!   virtual nodes proportional to weight ([`ring`]); the same key keeps its target, and
//!   adding or removing a target moves only ~1/n of the keys.
//! - `ewma`: power of two choices over peak-EWMA latency (linkerd, finagle): two distinct
//!   random targets, the one with the lower `latency * (in_flight + 1) / weight` wins.
//!
//! Every algorithm skips targets that are out of rotation (weight 0, failing active health
//! checks, passively ejected: see [`endpoint`](crate::upstream::endpoint)) and those this request
//! already tried; when none is left the pick is `None` (503 `no_healthy_upstream`). The
//! request path only reads and bumps atomics.

mod ring;
mod wrr;

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use tollgate_proto::model::{Balance, Upstream};

use crate::upstream::client::HttpClient;
use crate::upstream::endpoint::{Endpoint, Registry};
use crate::upstream::health::{Checker, Checkers};
use crate::upstream::target::Target;
use ring::Ring;
use wrr::WeightedRoundRobin;

enum Algorithm {
    RoundRobin(WeightedRoundRobin),
    /// The round robin orders ties.
    LeastConn(WeightedRoundRobin),
    ConsistentHash(Ring),
    Ewma,
}

/// An upstream's balancer: the algorithm and the live state of each target (index-aligned
/// with the upstream's targets).
pub struct Balancer {
    algorithm: Algorithm,
    weights: Vec<u32>,
    endpoints: Vec<Arc<Endpoint>>,
    /// Whether active health checks run (else their verdict is ignored).
    checked: bool,
    hash_header: Option<HeaderName>,
    rng: AtomicU64,
    /// Keeps the upstream's health checker running as long as this balancer lives.
    _checker: Option<Arc<Checker>>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("weights", &self.weights)
            .field("checked", &self.checked)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// The balancer of upstream `u`, whose targets are compiled already. Target state comes
    /// from `registry` and the health checker from `checkers` (both shared with live
    /// snapshots).
    pub fn compile(
        u: &Upstream,
        targets: &[Target],
        client: &HttpClient,
        registry: &mut Registry,
        checkers: &mut Checkers,
    ) -> Result<Balancer, String> {
        let endpoints: Vec<Arc<Endpoint>> = targets
            .iter()
            .map(|t| registry.endpoint(&u.tenant, &u.name, &t.url))
            .collect();
        let checker = checkers.ensure(u, targets, &endpoints, client)?;
        let hash_header = match &u.hash_header {
            Some(h) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("hash_header: invalid header name {h:?}"))?,
            ),
            None => None,
        };
        let spec: Vec<(&str, u32)> = targets
            .iter()
            .zip(&u.targets)
            .map(|(t, s)| (t.url.as_str(), s.weight))
            .collect();
        let mut b = Balancer::new(u.balance, &spec, endpoints, u.health.is_some(), hash_header);
        b._checker = checker;
        Ok(b)
    }

    fn new(
        balance: Balance,
        targets: &[(&str, u32)],
        endpoints: Vec<Arc<Endpoint>>,
        checked: bool,
        hash_header: Option<HeaderName>,
    ) -> Balancer {
        let weights: Vec<u32> = targets.iter().map(|(_, w)| *w).collect();
        let algorithm = match balance {
            Balance::RoundRobin => Algorithm::RoundRobin(WeightedRoundRobin::new(&weights)),
            Balance::LeastConn => Algorithm::LeastConn(WeightedRoundRobin::new(&weights)),
            Balance::ConsistentHash => Algorithm::ConsistentHash(Ring::new(targets)),
            Balance::Ewma => Algorithm::Ewma,
        };
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Balancer {
            algorithm,
            weights,
            endpoints,
            checked,
            hash_header,
            rng: AtomicU64::new(seed),
            _checker: None,
        }
    }

    /// The live state of target `i`.
    pub fn endpoint(&self, i: usize) -> &Arc<Endpoint> {
        &self.endpoints[i]
    }

    /// The request's key for `consistent_hash`: the `hash_header` value, else the client's
    /// IP. 0 (unused) for the other algorithms.
    pub fn hash_key(&self, headers: &HeaderMap, client: IpAddr) -> u64 {
        if !matches!(self.algorithm, Algorithm::ConsistentHash(_)) {
            return 0;
        }
        match self.hash_header.as_ref().and_then(|h| headers.get(h)) {
            Some(v) => ring::hash64(v.as_bytes()),
            None => match client.to_canonical() {
                IpAddr::V4(a) => ring::hash64(&a.octets()),
                IpAddr::V6(a) => ring::hash64(&a.octets()),
            },
        }
    }

    /// A target for a request with `hash_key`, other than those in `tried`; `None` when no
    /// target is in rotation.
    pub fn pick(&self, hash_key: u64, tried: &[usize]) -> Option<usize> {
        self.pick_at(hash_key, tried, crate::clock::now())
    }

    fn available(&self, i: usize, tried: &[usize], now: u64) -> bool {
        let e = &self.endpoints[i];
        self.weights[i] > 0 && (!self.checked || e.is_up()) && !e.is_ejected(now) && !tried.contains(&i)
    }

    fn pick_at(&self, hash_key: u64, tried: &[usize], now: u64) -> Option<usize> {
        let n = self.endpoints.len();
        let ok = |i: usize| self.available(i, tried, now);
        match &self.algorithm {
            Algorithm::RoundRobin(wrr) => match wrr.pick() {
                Some(i) if ok(i) => Some(i),
                _ => self.weighted_random(ok),
            },
            Algorithm::LeastConn(wrr) => {
                let start = wrr.pick().unwrap_or(0);
                let mut best: Option<(usize, u64, u64)> = None;
                for i in (0..n).map(|k| (start + k) % n).filter(|i| ok(*i)) {
                    let (load, weight) = (self.endpoints[i].in_flight(), u64::from(self.weights[i]));
                    // load / weight < best_load / best_weight, without dividing.
                    if best.is_none_or(|(_, bl, bw)| {
                        u128::from(load) * u128::from(bw) < u128::from(bl) * u128::from(weight)
                    }) {
                        best = Some((i, load, weight));
                    }
                }
                best.map(|(i, _, _)| i)
            }
            Algorithm::ConsistentHash(ring) => {
                if !(0..n).any(ok) {
                    return None;
                }
                ring.lookup(hash_key, ok)
            }
            Algorithm::Ewma => {
                let m = (0..n).filter(|i| ok(*i)).count();
                let nth = |r: usize| (0..n).filter(|i| ok(*i)).nth(r);
                match m {
                    0 => None,
                    1 => nth(0),
                    _ => {
                        let a = (self.random() % m as u64) as usize;
                        let mut b = (self.random() % (m as u64 - 1)) as usize;
                        if b >= a {
                            b += 1;
                        }
                        let (a, b) = (nth(a)?, nth(b)?);
                        Some(if self.cost(b, now) < self.cost(a, now) {
                            b
                        } else {
                            a
                        })
                    }
                }
            }
        }
    }

    /// Peak-EWMA cost: expected latency times the queue this request would join, per weight.
    fn cost(&self, i: usize, now: u64) -> f64 {
        let e = &self.endpoints[i];
        e.rtt_estimate(now) * (e.in_flight() + 1) as f64 / f64::from(self.weights[i].max(1))
    }

    /// A random target among those `ok` accepts, by weight.
    fn weighted_random(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let total: u64 = (0..self.weights.len())
            .filter(|i| ok(*i))
            .map(|i| u64::from(self.weights[i]))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = self.random() % total;
        for i in (0..self.weights.len()).filter(|i| ok(*i)) {
            let w = u64::from(self.weights[i]);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }

    /// splitmix64 over an atomic counter: lock-free, good enough to spread picks.
    fn random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
