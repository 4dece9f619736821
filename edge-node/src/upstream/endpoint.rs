//! The live state of one upstream target: requests in flight, a peak-EWMA of its latency,
//! what active health checks say, and passive ejection after failures of real traffic. All
//! atomics: the request path reads and updates it without locks.
//!
//! ```text
//!  Registry (owned by the compiling task, beside `Clients`)
//!    (tenant, upstream, url) ──Weak──> Endpoint <──Arc── every snapshot using that target
//! ```
//! A config swap that keeps a target keeps its `Endpoint` (counts, latency, health). The
//! registry holds only `Weak`s, so an endpoint lives exactly as long as some snapshot (or a
//! request holding one) uses it.
//!
//! Passive ejection: [`EJECT_AFTER`] consecutive failures (a 5xx answer, a connect error, a
//! timeout) eject the target for [`EJECT_BASE`]; it then gets traffic again (half-open): one
//! more failure ejects it again for twice as long (up to [`EJECT_MAX`]), one success clears
//! the record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::upstream::client::IdleList;

/// Consecutive failures of real traffic that eject a target.
pub const EJECT_AFTER: u32 = 5;
/// How long the first ejection lasts; each ejection in a row doubles it.
pub const EJECT_BASE: Duration = Duration::from_secs(10);
/// The longest ejection.
pub const EJECT_MAX: Duration = Duration::from_secs(300);

/// Latency assumed for a target never measured (linkerd's default).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Time constant of the latency average: an observation's weight halves every ~7 s.
const DECAY: Duration = Duration::from_secs(10);

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Live state of one target.
#[derive(Debug)]
pub struct Endpoint {
    in_flight: AtomicU64,
    /// Peak-EWMA latency estimate in nanoseconds (`f64` bits), as of `rtt_at`.
    rtt_ns: AtomicU64,
    rtt_at: AtomicU64,
    /// What active health checks last concluded (only read when the upstream has them).
    up: AtomicBool,
    check_successes: AtomicU32,
    check_failures: AtomicU32,
    /// Passive ejection: consecutive failures, ejections in a row, ejected until (clock).
    failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: AtomicU64,
    /// Keep-alive connections to the target, waiting for the next request (shared with the
    /// answers whose bodies give their connection back).
    idle: Arc<IdleList>,
}

impl Endpoint {
    pub fn new(now: u64) -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            rtt_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            rtt_at: AtomicU64::new(now),
            up: AtomicBool::new(true),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            idle: Arc::default(),
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// Idle keep-alive connections to the target (`client.rs`).
    pub fn idle(&self) -> &Arc<IdleList> {
        &self.idle
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Whether active checks say the target is up (always true without checks).
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Failures of real traffic in a row.
    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failures.load(Relaxed)
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Relaxed)
    }

    /// The latency estimate at `now`: the stored peak-EWMA decayed towards zero for the time
    /// since it was updated, so an idle target slowly becomes worth another try.
    pub fn rtt_estimate(&self, now: u64) -> f64 {
        let rtt = f64::from_bits(self.rtt_ns.load(Relaxed));
        let elapsed = now.saturating_sub(self.rtt_at.load(Relaxed)) as f64;
        rtt * (-elapsed / DECAY.as_nanos() as f64).exp()
    }

    /// Folds one observed latency into the peak-EWMA: a slower observation replaces the
    /// estimate at once (the peak), a faster one pulls it down with a weight growing with the
    /// time since the last update. Concurrent updates never corrupt the value; one may
    /// occasionally be lost, which an estimate tolerates.
    pub fn observe_rtt(&self, rtt: Duration, now: u64) {
        let rtt = rtt.as_nanos() as f64;
        let mut current = self.rtt_ns.load(Relaxed);
        loop {
            let at = self.rtt_at.load(Relaxed);
            let elapsed = now.saturating_sub(at) as f64;
            let decay = (-elapsed / DECAY.as_nanos() as f64).exp();
            let next = (f64::from_bits(current) * decay + rtt * (1.0 - decay)).max(rtt);
            match self
                .rtt_ns
                .compare_exchange_weak(current, next.to_bits(), Relaxed, Relaxed)
            {
                Ok(_) => {
                    self.rtt_at.fetch_max(now, Relaxed);
                    return;
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// A request got an answer below 500: the failure record is cleared (once the target is
    /// back in rotation).
    pub fn record_success(&self, now: u64) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.ejections.load(Relaxed) != 0 && !self.is_ejected(now) {
            self.ejections.store(0, Relaxed);
        }
    }

    /// A request failed (5xx, connect error, timeout). Returns how long the target is now
    /// ejected for, when this failure ejected it.
    pub fn record_failure(&self, now: u64) -> Option<Duration> {
        let until = self.ejected_until.load(Relaxed);
        if now < until {
            // Requests sent before the ejection are still failing; they say nothing new.
            return None;
        }
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        let half_open = self.ejections.load(Relaxed) > 0;
        if failures < EJECT_AFTER && !half_open {
            return None;
        }
        let round = self.ejections.load(Relaxed).min(16);
        let cool_off = EJECT_BASE.saturating_mul(1 << round).min(EJECT_MAX);
        // Only one of several concurrent failures ejects.
        self.ejected_until
            .compare_exchange(until, now.saturating_add(nanos(cool_off)), Relaxed, Relaxed)
            .ok()?;
        self.failures.store(0, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        Some(cool_off)
    }

    /// One active check result; returns the new verdict when it changed.
    pub fn record_check(&self, ok: bool, unhealthy_after: u32, healthy_after: u32) -> Option<bool> {
        if ok {
            self.check_failures.store(0, Relaxed);
            let n = self.check_successes.fetch_add(1, Relaxed).saturating_add(1);
            if !self.is_up() && n >= healthy_after {
                self.up.store(true, Relaxed);
                return Some(true);
            }
        } else {
            self.check_successes.store(0, Relaxed);
            let n = self.check_failures.fetch_add(1, Relaxed).saturating_add(1);
            if self.is_up() && n >= unhealthy_after {
                self.up.store(false, Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// A request in flight to an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn endpoint(&self) -> &Endpoint {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Endpoints that outlive config snapshots. Used only while compiling a config, by the
/// single task that compiles.
#[derive(Debug, Default)]
pub struct Registry {
    endpoints: HashMap<(String, String, String), Weak<Endpoint>>,
    prune_at: usize,
}

impl Registry {
    /// The endpoint of `url` in upstream `tenant/upstream`: the one live snapshots share, or
    /// a fresh one.
    pub fn endpoint(&mut self, tenant: &str, upstream: &str, url: &str) -> Arc<Endpoint> {
        let key = (tenant.to_string(), upstream.to_string(), url.to_string());
        if let Some(e) = self.endpoints.get(&key).and_then(Weak::upgrade) {
            return e;
        }
        if self.endpoints.len() >= self.prune_at {
            self.endpoints.retain(|_, e| e.strong_count() > 0);
            self.prune_at = (self.endpoints.len() * 2).max(64);
        }
        let e = Arc::new(Endpoint::new(crate::clock::now()));
        self.endpoints.insert(key, Arc::downgrade(&e));
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let e = Arc::new(Endpoint::new(0));
        let a = e.start();
        let b = e.start();
        assert_eq!(e.in_flight(), 2);
        drop(a);
        assert_eq!(e.in_flight(), 1);
        drop(b);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn peak_ewma_jumps_up_decays_down() {
        let e = Endpoint::new(0);
        assert!((e.rtt_estimate(0) - 30.0 * MS as f64).abs() < 1.0);
        // A slow answer is taken at once.
        e.observe_rtt(Duration::from_millis(80), MS);
        assert!((e.rtt_estimate(MS) - 80.0 * MS as f64).abs() < 1.0);
        // A fast one right after barely moves it; the weight grows with time.
        e.observe_rtt(Duration::from_millis(1), 2 * MS);
        assert!(e.rtt_estimate(2 * MS) > 79.0 * MS as f64);
        e.observe_rtt(Duration::from_millis(1), 20 * S);
        assert!(
            e.rtt_estimate(20 * S) < 12.0 * MS as f64,
            "{}",
            e.rtt_estimate(20 * S)
        );
        // Idle, it decays towards zero.
        assert!(e.rtt_estimate(60 * S) < e.rtt_estimate(20 * S) / 50.0);
    }

    #[test]
    fn passive_ejection_after_consecutive_failures_doubles_and_caps() {
        let e = Endpoint::new(0);
        let mut t = S;
        for _ in 0..EJECT_AFTER - 1 {
            assert_eq!(e.record_failure(t), None);
        }
        // A success in between starts the count over.
        e.record_success(t);
        for _ in 0..EJECT_AFTER - 1 {
            assert_eq!(e.record_failure(t), None);
        }
        assert_eq!(e.record_failure(t), Some(EJECT_BASE));
        assert!(e.is_ejected(t + 9 * S));
        // Failures of requests sent before the ejection change nothing.
        assert_eq!(e.record_failure(t + S), None);
        assert!(!e.is_ejected(t + 10 * S));

        // Half-open: one failure ejects again, for twice as long.
        t += 10 * S;
        assert_eq!(e.record_failure(t), Some(EJECT_BASE * 2));
        t += 20 * S;
        assert!(!e.is_ejected(t));
        assert_eq!(e.record_failure(t), Some(EJECT_BASE * 4));
        for _ in 0..10 {
            t += nanos(EJECT_MAX);
            assert!(e.record_failure(t).unwrap() <= EJECT_MAX);
        }
        // A success once back in rotation clears the record.
        t += nanos(EJECT_MAX);
        e.record_success(t);
        for _ in 0..EJECT_AFTER - 1 {
            assert_eq!(e.record_failure(t), None);
        }
        assert_eq!(e.record_failure(t), Some(EJECT_BASE));
    }

    #[test]
    fn active_checks_need_runs_of_results() {
        let e = Endpoint::new(0);
        assert!(e.is_up());
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), Some(false));
        assert!(!e.is_up());
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), Some(true));
        assert!(e.is_up());
    }

    #[test]
    fn registry_shares_live_endpoints_and_forgets_dead_ones() {
        let mut r = Registry::default();
        let a = r.endpoint("acme", "be", "http://a");
        let a2 = r.endpoint("acme", "be", "http://a");
        assert!(Arc::ptr_eq(&a, &a2));
        // Same URL in another upstream: its own state.
        let other = r.endpoint("acme", "be2", "http://a");
        assert!(!Arc::ptr_eq(&a, &other));
        a.failures.store(3, Relaxed);
        drop((a, a2));
        // Nothing used it any more: a re-added target starts afresh.
        let fresh = r.endpoint("acme", "be", "http://a");
        assert_eq!(fresh.failures.load(Relaxed), 0);
        for i in 0..200 {
            r.endpoint("acme", "be", &format!("http://t{i}"));
        }
        assert!(r.endpoints.len() < 150, "{}", r.endpoints.len());
    }
}
