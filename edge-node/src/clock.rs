//! A cheap monotonic clock that fits an atomic: what the live upstream state (ejection,
//! latency), idle connections and JWKS refetch pacing time themselves by.

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since the first call in this process.
pub fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
