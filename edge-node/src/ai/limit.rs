//! Token limits (`token_limit` policies): tokens per minute or day, cost per day or month,
//! per app, tenant or any limit key, counted by the cluster's rate-limit counters.
//!
//! ```text
//!  before the call: reserve  estimate(prompt) + max_tokens  tokens   (cost: at the first
//!                   model's prices) on every budget ─ one refuses ─> 429 token_limited,
//!                   what the others reserved given back
//!  after the call:  settle   actual − reserved  (the window the reservation was made in)
//! ```
//! A minute budget is a cluster-wide sliding window; day and month budgets are quotas (also
//! recorded on the control plane). Cost is counted in micro-dollars. The phases compute
//! the keys (`phases/ratelimit.rs`); this stage reserves and settles, because only it knows
//! the model and its prices.

use std::sync::Arc;

use crate::ai::error::AiError;
use crate::ai::usage::Tokens;
use crate::counters::peers::Peers;
use crate::counters::{unix_ms, Limiter, Mode};

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Input and output tokens.
    Tokens,
    /// Cost in millionths of a USD.
    MicroUsd,
}

/// One budget a call counts against, with the caller's key already computed.
#[derive(Debug, Clone)]
pub struct TokenBudget {
    pub limiter: Limiter,
    pub key: String,
    pub unit: Unit,
    pub mode: Mode,
}

/// The reservation of one call, settled once when its answer ends.
pub struct Settle {
    peers: Arc<Peers>,
    at_ms: u64,
    reserved: Vec<(TokenBudget, u64)>,
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settle")
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

fn amount(unit: Unit, tokens: u64, cost: f64) -> u64 {
    match unit {
        Unit::Tokens => tokens,
        Unit::MicroUsd => (cost * 1e6).ceil().max(0.0) as u64,
    }
}

/// Reserves `tokens` (and `cost` USD) on every budget; `None` when there is none.
pub fn reserve(
    budgets: &[TokenBudget],
    peers: &Arc<Peers>,
    tokens: u64,
    cost: f64,
) -> Result<Option<Settle>, AiError> {
    if budgets.is_empty() {
        return Ok(None);
    }
    let now = unix_ms();
    let mut settle = Settle {
        peers: peers.clone(),
        at_ms: now,
        reserved: Vec::with_capacity(budgets.len()),
    };
    for b in budgets {
        let n = amount(b.unit, tokens, cost);
        let d = peers.counters.hit_n(&b.limiter, &b.key, now, b.mode, n);
        if !d.admitted {
            settle.settle(&Tokens::default(), 0.0);
            let what = match b.unit {
                Unit::Tokens => "tokens",
                Unit::MicroUsd => "spend",
            };
            let message = if n > d.limit {
                format!("this request may use more {what} than the whole budget allows ({n} > {}); ask for fewer max_tokens", d.limit)
            } else {
                format!("the {what} budget is used up; try again later")
            };
            let retry = d.reset_ms.div_ceil(1000).max(1);
            return Err(
                AiError::new(http::StatusCode::TOO_MANY_REQUESTS, "token_limited", message)
                    .with_retry_after(Some(retry)),
            );
        }
        settle.reserved.push((b.clone(), n));
    }
    Ok(Some(settle))
}

impl Settle {
    /// Counts what the call really used in place of what was reserved.
    pub fn settle(self, used: &Tokens, cost: f64) {
        for (b, reserved) in &self.reserved {
            let actual = amount(b.unit, used.total(), cost);
            let delta = actual as i64 - *reserved as i64;
            self.peers.counters.adjust(&b.limiter, &b.key, self.at_ms, delta);
        }
    }
}
