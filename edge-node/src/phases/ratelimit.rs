//! The rate-limit phase: a service's `rate_limit` and `quota` policies, compiled once per config and
//! decided per request by the counters stage (`counters/`). It runs after authorization, so
//! a limit counts only callers that may call, by app, tenant, service, client address,
//! header or JWT claim.
//!
//! Every policy a service names applies; a request refused by one is taken back from those
//! that admitted it, so refused requests use up no limit. The answer carries the tightest
//! policy's `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds), and a
//! 429 adds `Retry-After`.
//!
//! A limiter's id is `<window>ms/<limit>/<key>/<tenant>/<policy>` (a quota's: `day/...` or
//! `month/...`): edges with the same policy share its counts, and changing a policy's limit,
//! window or key starts afresh. A quota counts per UTC calendar day or month; its counts
//! are also recorded on the control plane, so they outlive edge restarts.
//!
//! `token_limit` policies compile here too (their keys are computed like every limit's),
//! but they are not decided in this phase: the AI stage reserves and settles them
//! (`ai/limit.rs`), because only it knows the model, its prices and the tokens used. Their
//! ids end in `#tokens` or `#usd`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_proto::model::{
    LimitAlgorithm, LimitScope, OnStoreFailure, Policy, Quota, QuotaPeriod, RateLimit, TokenLimit,
};
use tollgate_proto::validate::LimitKeyOf;

use crate::ai::limit::{TokenBudget, Unit};
use crate::consumer::Consumer;
use crate::counters::peers::Peers;
use crate::counters::{unix_ms, Decision, Limiter, LimiterKind, Period};
use crate::error::ProxyError;

/// What a limit counts by.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyOf {
    App,
    Tenant,
    Service,
    Ip,
    Header(HeaderName),
    Claim(String),
}

impl KeyOf {
    /// Compiles a key of the grammar the control plane validated ([`LimitKeyOf`]).
    fn parse(key: &str) -> Result<KeyOf, String> {
        Ok(
            match LimitKeyOf::parse(key).ok_or_else(|| format!("invalid limit key {key:?}"))? {
                LimitKeyOf::App => KeyOf::App,
                LimitKeyOf::Tenant => KeyOf::Tenant,
                LimitKeyOf::Service => KeyOf::Service,
                LimitKeyOf::Ip => KeyOf::Ip,
                LimitKeyOf::Header(h) => KeyOf::Header(
                    HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("invalid header name {h:?}"))?,
                ),
                LimitKeyOf::Claim(c) => KeyOf::Claim(c.to_string()),
            },
        )
    }
}

/// A limiter named by the policy's shape (the module doc's id format).
fn limiter(tenant: &str, p: &Policy, limit: u64, period: Period, key: &str, kind: LimiterKind) -> Limiter {
    Limiter {
        id: Arc::from(format!("{period}/{limit}/{key}/{tenant}/{}", p.name)),
        limit,
        period,
        kind,
    }
}

/// Who a request is counted as.
pub struct Caller<'a> {
    pub remote: SocketAddr,
    pub consumer: Option<&'a Consumer>,
    pub tenant: &'a str,
    pub service: &'a str,
    pub headers: &'a HeaderMap,
}

impl Caller<'_> {
    /// The key's value for this request; a missing app, header or claim counts by address.
    fn key(&self, of: &KeyOf) -> String {
        let by_ip = || format!("ip:{}", self.remote.ip());
        match of {
            KeyOf::App => self.consumer.map_or_else(by_ip, |c| format!("app:{}", c.app)),
            KeyOf::Tenant => format!("tenant:{}", self.tenant),
            KeyOf::Service => format!("service:{}", self.service),
            KeyOf::Ip => by_ip(),
            KeyOf::Header(h) => match self.headers.get(h).map(|v| v.as_bytes()) {
                Some(v) if !v.is_empty() => keyed(
                    "header:",
                    &String::from_utf8_lossy(&v[..v.len().min(MAX_KEY_BYTES)]),
                ),
                _ => by_ip(),
            },
            KeyOf::Claim(name) => {
                let claim = self
                    .consumer
                    .and_then(|c| c.claims.as_ref())
                    .and_then(|c| c.get(name));
                match claim {
                    Some(serde_json::Value::String(s)) => keyed("claim:", s),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        format!("claim:{v}")
                    }
                    _ => by_ip(),
                }
            }
        }
    }
}

/// Most bytes of a header's or claim's value a key keeps (longer values share a key with
/// those they start like): keys stay far below what peers and the control plane accept.
const MAX_KEY_BYTES: usize = 256;

/// `prefix` and at most [`MAX_KEY_BYTES`] of `value`, cut on a character boundary.
fn keyed(prefix: &str, value: &str) -> String {
    let mut end = value.len().min(MAX_KEY_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{prefix}{}", &value[..end])
}

/// One compiled `rate_limit` policy.
#[derive(Clone, Debug)]
struct Limit {
    limiter: Limiter,
    key: KeyOf,
    on_failure: OnStoreFailure,
}

/// One budget of a compiled `token_limit` policy.
#[derive(Clone, Debug)]
struct TokenLimitEntry {
    limit: Limit,
    unit: Unit,
}

/// A service's rate limits, in the order it names them.
#[derive(Clone, Debug, Default)]
pub struct RateLimits {
    limits: Vec<Limit>,
    tokens: Vec<TokenLimitEntry>,
}

/// The headers an answer carries for the tightest limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitHeaders {
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
    /// Set on a refusal: `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

impl LimitHeaders {
    pub fn apply(&self, headers: &mut HeaderMap) {
        let n = |v: u64| HeaderValue::from(v);
        headers.insert(HeaderName::from_static("ratelimit-limit"), n(self.limit));
        headers.insert(HeaderName::from_static("ratelimit-remaining"), n(self.remaining));
        headers.insert(HeaderName::from_static("ratelimit-reset"), n(self.reset_secs));
        if let Some(after) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, n(after));
        }
    }
}

fn headers_of(d: &Decision, refused: bool) -> LimitHeaders {
    let reset_secs = d.reset_ms.div_ceil(1000).max(u64::from(refused));
    LimitHeaders {
        limit: d.limit,
        remaining: d.remaining,
        reset_secs,
        retry_after: refused.then_some(reset_secs.max(1)),
    }
}

impl RateLimits {
    /// Adds `p`'s `rate_limit`, named `tenant/name`.
    pub fn add(&mut self, tenant: &str, p: &Policy, r: &RateLimit) -> Result<(), String> {
        let kind = match (r.algorithm, r.scope) {
            (LimitAlgorithm::SlidingWindow, scope) => LimiterKind::SlidingWindow {
                cluster: scope == LimitScope::Cluster,
            },
            (LimitAlgorithm::TokenBucket, LimitScope::Local) => LimiterKind::TokenBucket {
                burst: r.burst.unwrap_or(r.limit).max(1),
            },
            (LimitAlgorithm::TokenBucket, LimitScope::Cluster) => {
                return Err("a token_bucket rate limit needs scope: local".into())
            }
        };
        let period = Period::Window((r.window.0.as_millis() as u64).max(1));
        let limiter = limiter(tenant, p, r.limit, period, &r.key, kind);
        self.push(limiter, &r.key, r.on_store_failure)
    }

    /// Adds `p`'s `quota`, named `tenant/name`.
    pub fn add_quota(&mut self, tenant: &str, p: &Policy, q: &Quota) -> Result<(), String> {
        let period = match q.period {
            QuotaPeriod::Day => Period::Day,
            QuotaPeriod::Month => Period::Month,
        };
        let limiter = limiter(tenant, p, q.limit, period, &q.key, LimiterKind::Quota);
        // A quota never falls back; the mode is not read.
        self.push(limiter, &q.key, OnStoreFailure::LocalShare)
    }

    /// Adds `p`'s `token_limit`: one budget per field it sets.
    pub fn add_token_limit(&mut self, tenant: &str, p: &Policy, t: &TokenLimit) -> Result<(), String> {
        let key = KeyOf::parse(&t.key)?;
        let usd = |v: f64| (v * 1e6).round() as u64;
        let budgets = [
            (t.tokens_per_minute, Period::Window(60_000), Unit::Tokens),
            (t.tokens_per_day, Period::Day, Unit::Tokens),
            (t.cost_per_day.map(usd), Period::Day, Unit::MicroUsd),
            (t.cost_per_month.map(usd), Period::Month, Unit::MicroUsd),
        ];
        for (limit, period, unit) in budgets {
            let Some(limit) = limit else { continue };
            let kind = match period {
                Period::Window(_) => LimiterKind::SlidingWindow { cluster: true },
                _ => LimiterKind::Quota,
            };
            let mut limiter = limiter(tenant, p, limit, period, &t.key, kind);
            let suffix = match unit {
                Unit::Tokens => "#tokens",
                Unit::MicroUsd => "#usd",
            };
            limiter.id = Arc::from(format!("{}{suffix}", limiter.id));
            self.tokens.push(TokenLimitEntry {
                limit: Limit {
                    limiter,
                    key: key.clone(),
                    on_failure: OnStoreFailure::LocalShare,
                },
                unit,
            });
        }
        Ok(())
    }

    /// The token budgets of a call, with the caller's keys.
    pub fn token_budgets(&self, caller: &Caller<'_>, peers: &Peers) -> Vec<TokenBudget> {
        self.tokens
            .iter()
            .map(|t| TokenBudget {
                limiter: t.limit.limiter.clone(),
                key: caller.key(&t.limit.key),
                unit: t.unit,
                mode: peers.share(t.limit.on_failure),
            })
            .collect()
    }

    fn push(&mut self, limiter: Limiter, key: &str, on_failure: OnStoreFailure) -> Result<(), String> {
        self.limits.push(Limit {
            limiter,
            key: KeyOf::parse(key)?,
            on_failure,
        });
        Ok(())
    }

    /// The policies by id, for `/limits` and `/metrics`: (id, cluster scope).
    pub fn ids(&self) -> impl Iterator<Item = (&Arc<str>, bool)> + '_ {
        self.limits
            .iter()
            .chain(self.tokens.iter().map(|t| &t.limit))
            .map(|l| {
                let cluster = matches!(
                    l.limiter.kind,
                    LimiterKind::SlidingWindow { cluster: true } | LimiterKind::Quota
                );
                (&l.limiter.id, cluster)
            })
    }

    /// Counts the request against every limit; `Err(RateLimited)` if one refuses (what the
    /// others admitted is taken back). The headers of the tightest limit come back either way.
    pub fn check(
        &self,
        caller: &Caller<'_>,
        peers: &Peers,
    ) -> (Option<LimitHeaders>, Result<(), ProxyError>) {
        if self.limits.is_empty() {
            return (None, Ok(()));
        }
        let now = unix_ms();
        let mut admitted: Vec<(&Limiter, String)> = Vec::with_capacity(self.limits.len());
        let mut tightest: Option<Decision> = None;
        for l in &self.limits {
            let key = caller.key(&l.key);
            let share = peers.share(l.on_failure);
            let d = peers.counters.hit(&l.limiter, &key, now, share);
            if !d.admitted {
                for (limiter, key) in admitted {
                    peers.counters.undo(limiter, &key, now);
                }
                let reason = if d.store_unavailable {
                    "the cluster's rate-limit counters are unreachable and this policy fails closed"
                } else {
                    "too many requests: the rate limit is used up"
                };
                return (Some(headers_of(&d, true)), Err(ProxyError::RateLimited(reason)));
            }
            admitted.push((&l.limiter, key));
            if tightest.is_none_or(|t| d.remaining < t.remaining) {
                tightest = Some(d);
            }
        }
        (tightest.map(|d| headers_of(&d, false)), Ok(()))
    }
}

#[cfg(test)]
mod tests;
