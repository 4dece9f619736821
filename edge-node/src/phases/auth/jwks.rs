//! JWKS: the signing keys of JWT issuers with a `jwks_url`, fetched by the edge, cached, and
//! kept fresh without a restart.
//!
//! ```text
//!  compile issuer ─> KeySets::ensure(url) ──live cache for that url?── yes ─> share it
//!                                             └─ no ─> new JwksCache + refresh task
//!  refresh task:  fetch now; then every Cache-Control max-age (clamped to 1m..1h, 10m when
//!                 absent); after a failure retry in 5s, 10s, ... up to 5m; the last good set
//!                 is kept whatever happens
//!  request:       kid in the set ──> keys
//!                 unknown kid ──> a fetch in the last 10 s? ── yes, none running ──> no key
//!                                     └─ wait (≤ 2 s) for the running fetch, or run one
//!                                        (2 s timeout); concurrent misses share it
//! ```
//! The request path reads the set through an `ArcSwap` (no lock). Only a miss may wait, for
//! at most [`REFETCH_TIMEOUT`], and at most one fetch per issuer URL runs per
//! [`REFETCH_MIN_INTERVAL`] however many tokens with unknown `kid`s arrive, so forged tokens
//! cannot make the edge hammer the issuer. A cache lives as long as some snapshot uses it; its
//! task stops with it.
//!
//! Only signing keys of known algorithms are kept: `use: enc` keys, symmetric (`oct`) keys
//! (a secret published at a URL is no secret) and keys of unknown types or curves are
//! skipped. A key's `alg`, when given, binds it to that algorithm; otherwise its type does
//! (RSA: RS*/PS*, P-256: ES256, P-384: ES384, Ed25519: EdDSA).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, Uri};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::task::AbortHandle;

use crate::clock::now;
use crate::phases::auth::idp::IdpClient;

/// Refresh period when the answer names no `max-age`.
pub const REFRESH_DEFAULT: Duration = Duration::from_secs(600);
/// Bounds on a `max-age` the edge honours.
pub const REFRESH_MIN: Duration = Duration::from_secs(60);
pub const REFRESH_MAX: Duration = Duration::from_secs(3600);
/// At most one fetch per issuer URL in this period, whatever tokens arrive.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// The longest a request waits for a fetch on an unknown `kid` (and that fetch's timeout).
pub const REFETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of a scheduled fetch.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delays after failed scheduled fetches: doubling from the first to the second.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Largest JWKS document read, and most keys kept from one.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const MAX_KEYS: usize = 64;

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    /// The one algorithm this key may verify, when known.
    pub alg: Option<Algorithm>,
    pub family: AlgorithmFamily,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Whether this key may verify a signature made with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// A parsed key set.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Arc<Key>>,
}

impl KeySet {
    /// Keys that may verify a token signed with `alg` and naming `kid` (any key that fits
    /// when the token names none).
    pub fn matching(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<Key>> {
        self.keys
            .iter()
            .filter(|k| k.fits(alg) && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .cloned()
            .collect()
    }

    fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }
}

/// The algorithm an unbound key of this curve may verify.
fn curve_algorithm(curve: &EllipticCurve) -> Option<Algorithm> {
    match curve {
        EllipticCurve::P256 => Some(Algorithm::ES256),
        EllipticCurve::P384 => Some(Algorithm::ES384),
        EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// One JWK as a verification key; `Err` says why it is skipped.
fn parse_key(value: &serde_json::Value) -> Result<Key, String> {
    if value.get("kty").and_then(|v| v.as_str()) == Some("oct") {
        return Err("symmetric keys are never taken from a JWKS".into());
    }
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    if matches!(
        &jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err("not a signing key (use is not sig)".into());
    }
    let declared = match jwk.common.key_algorithm {
        Some(a) => {
            Some(Algorithm::try_from(a).map_err(|_| format!("algorithm {a} is not a signing algorithm"))?)
        }
        None => None,
    };
    let (family, implied) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p) => (
            AlgorithmFamily::Ec,
            Some(curve_algorithm(&p.curve).ok_or_else(|| format!("unsupported curve {:?}", p.curve))?),
        ),
        AlgorithmParameters::OctetKeyPair(p) => (
            AlgorithmFamily::Ed,
            Some(curve_algorithm(&p.curve).ok_or_else(|| format!("unsupported curve {:?}", p.curve))?),
        ),
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are never taken from a JWKS".into()),
        _ => return Err("unsupported key type".into()),
    };
    let alg = match (declared, implied) {
        (Some(d), Some(i)) if d != i => return Err(format!("alg {d:?} does not match the key's curve")),
        (Some(d), _) if d.family() != family => return Err(format!("alg {d:?} does not match the key type")),
        (d, i) => d.or(i),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        key,
    })
}

/// Parses a JWKS document. Unusable keys are skipped; a document with no usable key at all
/// is an error (so it never replaces a good set).
pub fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array")?;
    let mut set = KeySet::default();
    for (i, value) in keys.iter().take(MAX_KEYS).enumerate() {
        match parse_key(value) {
            Ok(key) => set.keys.push(Arc::new(key)),
            Err(why) => tracing::debug!(index = i, kid = ?value.get("kid"), %why, "jwks key skipped"),
        }
    }
    if set.keys.is_empty() {
        return Err(format!("none of its {} keys is a usable signing key", keys.len()));
    }
    Ok(set)
}

/// `Cache-Control: max-age=N`, clamped to [`REFRESH_MIN`]..[`REFRESH_MAX`].
fn refresh_after(headers: &HeaderMap) -> Duration {
    let max_age = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let (name, value) = d.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        });
    match max_age {
        Some(secs) => Duration::from_secs(secs).clamp(REFRESH_MIN, REFRESH_MAX),
        None => REFRESH_DEFAULT,
    }
}

/// What a request found for its token.
#[derive(Debug)]
pub enum Lookup {
    /// Candidate keys (at least one).
    Keys(Vec<Arc<Key>>),
    /// The set holds no key for this token, even after a refetch (or one was not allowed).
    NoKey,
    /// No key set could be fetched yet.
    Unavailable,
}

/// The key set of one JWKS URL.
pub struct JwksCache {
    url: Uri,
    client: IdpClient,
    keys: ArcSwapOption<KeySet>,
    /// `now()` + 1 at the start of the last fetch; 0 before any.
    last_attempt: AtomicU64,
    /// Held while fetching: concurrent misses wait for the fetch under way.
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    task: OnceLock<AbortHandle>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("url", &self.url)
            .field("keys", &self.keys.load().as_ref().map(|s| s.keys.len()))
            .finish_non_exhaustive()
    }
}

impl Drop for JwksCache {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

impl JwksCache {
    fn new(url: Uri, client: IdpClient) -> JwksCache {
        JwksCache {
            url,
            client,
            keys: ArcSwapOption::empty(),
            last_attempt: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            task: OnceLock::new(),
        }
    }

    /// How many fetches were started.
    #[cfg(test)]
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Relaxed)
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Vec<Arc<Key>>> {
        let set = self.keys.load();
        let found = set.as_ref()?.matching(kid, alg);
        (!found.is_empty()).then_some(found)
    }

    /// The keys for a token naming `kid` and signed with `alg`; on a miss, at most one
    /// bounded refetch (see the module docs).
    pub async fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        if let Some(keys) = self.find(kid, alg) {
            return Lookup::Keys(keys);
        }
        self.refetch_bounded().await;
        match self.find(kid, alg) {
            Some(keys) => Lookup::Keys(keys),
            None if self.keys.load().is_none() => Lookup::Unavailable,
            None => Lookup::NoKey,
        }
    }

    fn fetched_recently(&self) -> bool {
        let last = self.last_attempt.load(Relaxed);
        last != 0 && now().saturating_sub(last - 1) < REFETCH_MIN_INTERVAL.as_nanos() as u64
    }

    async fn refetch_bounded(&self) {
        // Fetched recently and nothing under way: there is nothing to wait for.
        if self.fetched_recently() && self.fetching.try_lock().is_ok() {
            return;
        }
        let attempt = async {
            let _fetching = self.fetching.lock().await;
            // Whoever held the lock has just fetched: use their result.
            if self.fetched_recently() {
                return;
            }
            if let Err(e) = self.fetch(REFETCH_TIMEOUT).await {
                tracing::warn!(url = %self.url, error = %e, "jwks refetch for an unknown kid failed");
            }
        };
        let _ = tokio::time::timeout(REFETCH_TIMEOUT, attempt).await;
    }

    /// One fetch; the caller holds `fetching`. Returns when to refresh next.
    async fn fetch(&self, timeout: Duration) -> Result<Duration, String> {
        self.last_attempt.store(now() + 1, Relaxed);
        self.fetches.fetch_add(1, Relaxed);
        let fetched = self.client.get(&self.url, timeout, MAX_JWKS_BYTES).await?;
        if !fetched.status.is_success() {
            return Err(format!("status {}", fetched.status.as_u16()));
        }
        let set = parse_jwks(&fetched.body)?;
        let old = self.keys.load();
        let old_kids = old.as_ref().map(|s| s.kids());
        if old_kids.as_ref() != Some(&set.kids()) {
            tracing::info!(url = %self.url, keys = set.keys.len(), kids = ?set.kids(), "jwks key set loaded");
        }
        drop(old);
        self.keys.store(Some(Arc::new(set)));
        Ok(refresh_after(&fetched.headers))
    }
}

/// Fetches the set now and on schedule, while the cache lives.
async fn refresh_loop(cache: Weak<JwksCache>) {
    let mut failures = 0u32;
    loop {
        let delay = {
            let Some(cache) = cache.upgrade() else {
                return;
            };
            let _fetching = cache.fetching.lock().await;
            match cache.fetch(BACKGROUND_TIMEOUT).await {
                Ok(next) => {
                    failures = 0;
                    next
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let kept = cache.keys.load().is_some();
                    tracing::warn!(url = %cache.url, error = %e, keeping_last_good_set = kept, "jwks fetch failed");
                    RETRY_FIRST
                        .saturating_mul(1u32 << (failures - 1).min(10))
                        .min(RETRY_MAX)
                }
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// Live caches by URL (and whether internal addresses are allowed). Used only while
/// compiling a config; holds `Weak`s, so a cache lives exactly as long as some snapshot uses
/// it.
#[derive(Debug, Default)]
pub struct KeySets {
    by_url: HashMap<(String, bool), Weak<JwksCache>>,
    prune_at: usize,
}

impl KeySets {
    /// The cache of `url`, shared with live snapshots; a new one starts fetching at once
    /// (when a Tokio runtime is running: plain unit tests compile without one).
    pub fn ensure(&mut self, url: Uri, allow_internal: bool, client: IdpClient) -> Arc<JwksCache> {
        let key = (url.to_string(), allow_internal);
        if let Some(live) = self.by_url.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        if self.by_url.len() >= self.prune_at {
            self.by_url.retain(|_, c| c.strong_count() > 0);
            self.prune_at = (self.by_url.len() * 2).max(16);
        }
        let cache = Arc::new(JwksCache::new(url, client));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let task = runtime.spawn(refresh_loop(Arc::downgrade(&cache)));
            let _ = cache.task.set(task.abort_handle());
        }
        self.by_url.insert(key, Arc::downgrade(&cache));
        cache
    }
}

#[cfg(test)]
mod tests;
