//! OAuth2 opaque tokens (RFC 7662): services with `auth: [oauth2]` send bearer tokens that
//! are not JWTs to their tenant's introspection endpoint(s), in name order, until one says
//! the token is active.
//!
//! ```text
//!  token ─> SHA-256 ─> cache hit (not expired) ──> answer
//!                └─ miss ─> POST url (Basic client_id:secret; token=...; ≤ 3 s)
//!                     ├─ 200 + {"active": true, ...} ─> exp passed? aud (if configured)?
//!                     │     app_claim present? ─> active(app), cached ≤ cache_ttl and ≤ exp
//!                     ├─ 200 + {"active": false} ─> inactive, cached ≤ 5 s
//!                     └─ other status, garbage, timeout, refused ─> unavailable (503,
//!                        fail closed; nothing cached)
//! ```
//! The cache is keyed by the token's SHA-256 (tokens themselves are not kept), bounded to
//! [`MAX_ENTRIES`] per endpoint (expired entries go first, then arbitrary ones), split in
//! shards whose locks are held only for a map operation, never across a wait. It lives as
//! long as some snapshot uses the same endpoint settings, so config swaps keep it. The
//! client secret is sent only in the `Authorization` header (marked sensitive) and never
//! logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderValue, StatusCode, Uri};
use serde_json::Value;
use tollgate_proto::keys::sha256_hex;
use tollgate_proto::model::Oauth2Introspection;

use crate::phases::auth::idp::{self, IdpClient, IdpClients};
use crate::phases::auth::jwt::audience_matches;

/// Timeout of one introspection call (it runs on the request path).
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Longest an inactive answer is reused.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Most answers cached per endpoint.
pub const MAX_ENTRIES: usize = 10_000;
const SHARDS: usize = 16;
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What an endpoint said about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Active {
        app: Arc<str>,
    },
    /// Refused, with a fixed reason.
    Inactive(&'static str),
}

type Entry = (Answer, Instant);

/// Cached answers of one endpoint, by token hash.
#[derive(Debug)]
pub struct TokenCache {
    shards: Vec<Mutex<HashMap<[u8; 32], Entry>>>,
    /// Calls made to the endpoint (for tests).
    calls: AtomicU64,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            calls: AtomicU64::new(0),
        }
    }
}

impl TokenCache {
    fn shard(&self, key: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], Entry>> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Answer> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        match shard.get(key) {
            Some((answer, until)) if *until > now => Some(answer.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: [u8; 32], answer: Answer, until: Instant, now: Instant) {
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        let cap = MAX_ENTRIES / SHARDS;
        if shard.len() >= cap && !shard.contains_key(&key) {
            shard.retain(|_, (_, until)| *until > now);
            if shard.len() >= cap {
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(key, (answer, until));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }

    #[cfg(test)]
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }
}

/// Live caches by endpoint settings (a digest of the whole spec, secret included, so any
/// change starts afresh). Used only while compiling a config.
#[derive(Debug, Default)]
pub struct TokenCaches {
    by_spec: HashMap<String, Weak<TokenCache>>,
    prune_at: usize,
}

impl TokenCaches {
    fn ensure(&mut self, o: &Oauth2Introspection) -> Arc<TokenCache> {
        let mut spec = o.clone();
        spec.resource_version = None;
        spec.description = None;
        let key = sha256_hex(serde_json::to_string(&spec).unwrap_or_default().as_bytes());
        if let Some(live) = self.by_spec.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        if self.by_spec.len() >= self.prune_at {
            self.by_spec.retain(|_, c| c.strong_count() > 0);
            self.prune_at = (self.by_spec.len() * 2).max(16);
        }
        let cache = Arc::new(TokenCache::default());
        self.by_spec.insert(key, Arc::downgrade(&cache));
        cache
    }
}

/// One introspection endpoint, compiled.
pub struct Introspector {
    pub name: String,
    url: Uri,
    /// `Basic base64(client_id:client_secret)`, marked sensitive.
    authorization: HeaderValue,
    audiences: Vec<String>,
    app_claim: String,
    cache_ttl: Duration,
    client: IdpClient,
    cache: Arc<TokenCache>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads an introspection answer at unix time `now`: the verdict and how long it may be
/// reused (`Err` for an answer that is not a valid RFC 7662 answer).
pub fn read_answer(
    body: &[u8],
    audiences: &[String],
    app_claim: &str,
    cache_ttl: Duration,
    now: u64,
) -> Result<(Answer, Duration), String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let obj = value.as_object().ok_or("answer is not a JSON object")?;
    let active = obj
        .get("active")
        .and_then(Value::as_bool)
        .ok_or("answer has no boolean \"active\"")?;
    let negative = |why| Ok((Answer::Inactive(why), cache_ttl.min(NEGATIVE_TTL)));
    if !active {
        return negative("the token is not active");
    }
    let date = |name: &str| obj.get(name).and_then(Value::as_f64).map(|f| f.max(0.0) as u64);
    let mut ttl = cache_ttl;
    if let Some(exp) = date("exp") {
        if exp <= now {
            return negative("the token has expired");
        }
        ttl = ttl.min(Duration::from_secs(exp - now));
    }
    if date("nbf").is_some_and(|nbf| nbf > now) {
        return negative("the token is not valid yet (nbf)");
    }
    if !audiences.is_empty() {
        let ok = match obj.get("aud") {
            Some(aud) => audience_matches(aud, audiences).unwrap_or(false),
            None => false,
        };
        if !ok {
            return negative("the token is not meant for this audience");
        }
    }
    match obj.get(app_claim).and_then(Value::as_str) {
        Some(app) if !app.is_empty() => Ok((Answer::Active { app: app.into() }, ttl)),
        _ => negative("the introspection answer does not name an app"),
    }
}

impl Introspector {
    /// Compiles an endpoint; the error names the field that is wrong.
    pub fn compile(
        o: &Oauth2Introspection,
        clients: &mut IdpClients,
        caches: &mut TokenCaches,
    ) -> Result<Introspector, String> {
        let url = idp::parse_url(&o.url, o.allow_internal_addresses).map_err(|e| format!("url: {e}"))?;
        let secret = o.client_secret.as_deref().ok_or_else(|| {
            format!(
                "client_secret_secret: the control plane sent no secret (it could not open secret {:?})",
                o.client_secret_secret
            )
        })?;
        // RFC 6749 §2.3.1: both parts form-encoded, then Basic.
        let credentials = format!("{}:{}", form_encode(&o.client_id), form_encode(secret));
        let mut authorization = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials)))
            .map_err(|_| "client_id: not a valid header value".to_string())?;
        authorization.set_sensitive(true);
        Ok(Introspector {
            name: o.name.clone(),
            url,
            authorization,
            audiences: o.audiences.clone(),
            app_claim: o.app_claim.clone(),
            cache_ttl: o.cache_ttl.0,
            client: clients.client(o.allow_internal_addresses),
            cache: caches.ensure(o),
        })
    }

    /// How many calls this endpoint's cache has made (for tests).
    #[cfg(test)]
    pub fn calls(&self) -> u64 {
        self.cache.calls()
    }

    /// What the endpoint says about `token`, from the cache when it can; `Err` (why, for the
    /// logs) when the endpoint cannot be asked or answers garbage.
    pub async fn check(&self, token: &str) -> Result<Answer, String> {
        let key: [u8; 32] = digest::digest(&digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        if let Some(answer) = self.cache.get(&key, Instant::now()) {
            return Ok(answer);
        }
        self.cache.calls.fetch_add(1, Relaxed);
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let fetched = self
            .client
            .post_form(&self.url, &self.authorization, form, TIMEOUT, MAX_ANSWER_BYTES)
            .await?;
        if fetched.status != StatusCode::OK {
            return Err(format!("status {}", fetched.status.as_u16()));
        }
        let (answer, ttl) = read_answer(
            &fetched.body,
            &self.audiences,
            &self.app_claim,
            self.cache_ttl,
            unix_now(),
        )?;
        if !ttl.is_zero() {
            let now = Instant::now();
            self.cache.insert(key, answer.clone(), now + ttl, now);
        }
        Ok(answer)
    }
}

/// The introspection endpoints of every tenant, in name order.
#[derive(Debug, Default)]
pub struct Introspectors {
    by_tenant: HashMap<String, Vec<Arc<Introspector>>>,
}

impl Introspectors {
    pub fn insert(&mut self, tenant: &str, i: Introspector) {
        self.by_tenant
            .entry(tenant.to_string())
            .or_default()
            .push(Arc::new(i));
    }

    pub fn of(&self, tenant: &str) -> &[Arc<Introspector>] {
        self.by_tenant.get(tenant).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests;
