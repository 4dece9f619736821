//! Authentication phase: who is calling. API keys, JWTs (`jwt.rs`) and OAuth2 opaque
//! tokens (`introspect.rs`), as the service's `auth` allows.
//!
//! ```text
//!  service auth empty ─────────────────────────────────> open (no consumer)
//!  `apikey` header (api_key allowed) ──────────────────> API key
//!  Authorization: Bearer <t>
//!    t is an API key (tgk_..., api_key allowed) ───────> API key
//!    t looks like a JWT (jwt allowed) ─────────────────> JWT, against the tenant's issuers
//!    else (oauth2 allowed) ────────────────────────────> introspection, tenant's endpoints
//!    else (api_key allowed) ───────────────────────────> API key (refused: invalid_credential)
//!    else ──────────────────────────────────────────────> invalid_token
//!  nothing ─────────────────────────────────────────────> missing_credential
//! ```
//! API keys are checked for format (`tollgate_proto::keys::parse_key`), looked up by their
//! public id, and their SHA-256 compared in constant time with the stored one. Every
//! credential must belong to the service's tenant, and a token's app must be an app of it.
//! Credentials are never logged; only a key's public id or an issuer's name is.
//!
//! Only the unknown-`kid` JWKS refetch (bounded, `jwks.rs`) and introspection cache misses
//! wait on the network here; everything else reads the snapshot.

pub mod idp;
pub mod introspect;
pub mod jwks;
pub mod jwt;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};
use tollgate_proto::keys::{parse_key, sha256_hex_matches};
use tollgate_proto::model::AuthKind;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::consumer::Consumer;
use crate::error::ProxyError;
use crate::phases::ctx::RequestCtx;
use crate::phases::service::ServiceEntry;
use idp::IdpClients;
use introspect::{Answer, Introspector, Introspectors, TokenCaches};
use jwks::KeySets;
use jwt::{Issuer, Issuers, TokenError};
use tollgate_proto::model::{JwtIssuer, Oauth2Introspection};

pub const APIKEY_HEADER: &str = "apikey";

/// What the edge keeps for identity providers across config swaps: their clients, live
/// JWKS caches and introspection caches. Used only while compiling a config.
#[derive(Default)]
pub struct Idp {
    clients: IdpClients,
    key_sets: KeySets,
    token_caches: TokenCaches,
}

impl Idp {
    /// Compiles a JWT issuer, sharing its JWKS cache with live snapshots.
    pub fn issuer(&mut self, j: &JwtIssuer) -> Result<Issuer, String> {
        Issuer::compile(j, &mut self.clients, &mut self.key_sets)
    }

    /// Compiles an introspection endpoint, sharing its token cache with live snapshots.
    pub fn introspector(&mut self, o: &Oauth2Introspection) -> Result<Introspector, String> {
        Introspector::compile(o, &mut self.clients, &mut self.token_caches)
    }
}

/// What proves a caller, from one config: API keys by id, apps by tenant, JWT issuers and
/// introspection endpoints. Compiled with the snapshot, read by [`authenticate`].
#[derive(Debug, Default)]
pub struct Credentials {
    /// By key id.
    api_keys: HashMap<String, KeyEntry>,
    /// tenant -> app names.
    apps: HashMap<String, HashSet<String>>,
    /// JWT issuers by tenant and `iss`.
    pub issuers: Issuers,
    /// OAuth2 introspection endpoints by tenant.
    pub introspectors: Introspectors,
}

/// A stored API key (only its SHA-256 is known).
#[derive(Debug)]
pub struct KeyEntry {
    pub tenant: String,
    pub app: String,
    /// Lowercase hex SHA-256 of the whole key.
    pub sha256: String,
}

impl Credentials {
    pub fn add_app(&mut self, tenant: &str, app: &str) {
        self.apps
            .entry(tenant.to_string())
            .or_default()
            .insert(app.to_string());
    }

    pub fn add_key(&mut self, id: &str, key: KeyEntry) {
        self.api_keys.insert(id.to_string(), key);
    }

    fn api_key(&self, id: &str) -> Option<&KeyEntry> {
        self.api_keys.get(id)
    }

    /// Whether `app` is an app of `tenant`.
    fn has_app(&self, tenant: &str, app: &str) -> bool {
        self.apps.get(tenant).is_some_and(|apps| apps.contains(app))
    }
}

/// The bearer token of `Authorization: Bearer <token>`, if that is the scheme.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let auth = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = auth.split_at(auth.iter().position(|b| *b == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii())
}

/// Phase "authenticate": notes the caller in `ctx.consumer` (none for open services), or
/// refuses the request.
pub async fn authenticate(
    ctx: &mut RequestCtx,
    creds: &Credentials,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    // Fields, not `ctx.route()`: the route stays borrowed while the consumer is written.
    let service = &ctx.route.as_ref().ok_or(ProxyError::NoRoute)?.service;
    ctx.consumer = consumer(creds, service, headers).await?;
    Ok(())
}

/// Who calls `service`: `Ok(None)` for open services.
async fn consumer(
    creds: &Credentials,
    service: &ServiceEntry,
    headers: &HeaderMap,
) -> Result<Option<Consumer>, ProxyError> {
    if service.auth.is_empty() {
        return Ok(None);
    }
    let allows = |k: AuthKind| service.auth.contains(&k);
    if allows(AuthKind::ApiKey) {
        if let Some(v) = headers.get(APIKEY_HEADER) {
            return api_key(
                creds,
                service,
                HeaderName::from_static(APIKEY_HEADER),
                v.as_bytes(),
            )
            .map(Some);
        }
    }
    let Some(raw) = bearer(headers) else {
        return Err(if headers.contains_key(AUTHORIZATION) {
            ProxyError::InvalidCredential
        } else {
            ProxyError::MissingCredential
        });
    };
    let token = std::str::from_utf8(raw).unwrap_or_default();
    if token.is_empty() {
        return Err(ProxyError::MissingCredential);
    }
    if allows(AuthKind::ApiKey) && parse_key(token).is_some() {
        return api_key(creds, service, AUTHORIZATION, raw).map(Some);
    }
    // The token checks may fetch (JWKS, introspection): their futures are boxed, so that the
    // request's own future, moved on every request, stays small.
    let (app, claims) = if allows(AuthKind::Jwt) && jwt::looks_like_jwt(token) {
        Box::pin(jwt_app(creds, service, token)).await?
    } else if allows(AuthKind::Oauth2) {
        (Box::pin(introspected_app(creds, service, token)).await?, None)
    } else if allows(AuthKind::ApiKey) {
        return api_key(creds, service, AUTHORIZATION, raw).map(Some);
    } else {
        return Err(ProxyError::InvalidToken(
            "this api does not accept this kind of token",
        ));
    };
    if !creds.has_app(&service.tenant, &app) {
        tracing::debug!(tenant = %service.tenant, app = %app, "token names no app of the tenant");
        return Err(ProxyError::InvalidToken(
            "the token's app is not an app of this api's tenant",
        ));
    }
    Ok(Some(Consumer {
        tenant: service.tenant.clone(),
        app,
        credential_header: AUTHORIZATION,
        key_id: None,
        claims,
    }))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn jwt_app(
    creds: &Credentials,
    service: &ServiceEntry,
    token: &str,
) -> Result<(String, Claims), ProxyError> {
    match creds.issuers.verify(&service.tenant, token, unix_now()).await {
        Ok(v) => Ok((v.app, Some(Arc::new(v.claims)))),
        Err(e) => {
            tracing::debug!(tenant = %service.tenant, service = %service.name, reason = ?e, "jwt refused");
            Err(match e {
                TokenError::Invalid(why) => ProxyError::InvalidToken(why),
                TokenError::Expired => ProxyError::TokenExpired,
                TokenError::KeysUnavailable => ProxyError::JwksUnavailable,
            })
        }
    }
}

/// A JWT's verified claims, shared with the request context.
type Claims = Option<Arc<serde_json::Map<String, serde_json::Value>>>;

/// Asks the tenant's introspection endpoints in turn; the first that says active wins.
/// Fails closed: when none says active and one could not be asked, 503.
async fn introspected_app(
    creds: &Credentials,
    service: &ServiceEntry,
    token: &str,
) -> Result<String, ProxyError> {
    let endpoints = creds.introspectors.of(&service.tenant);
    if endpoints.is_empty() {
        tracing::warn!(tenant = %service.tenant, service = %service.name, "oauth2 service but the tenant has no oauth2_introspection");
        return Err(ProxyError::InvalidToken(
            "no introspection endpoint is configured for this api",
        ));
    }
    let mut refused = "the token is not active";
    let mut unavailable = false;
    for endpoint in endpoints {
        match endpoint.check(token).await {
            Ok(Answer::Active { app }) => return Ok(app.to_string()),
            Ok(Answer::Inactive(why)) => refused = why,
            Err(e) => {
                tracing::warn!(tenant = %service.tenant, introspection = %endpoint.name, error = %e, "token introspection failed");
                unavailable = true;
            }
        }
    }
    Err(if unavailable {
        ProxyError::IntrospectionUnavailable
    } else {
        ProxyError::InvalidToken(refused)
    })
}

/// Checks an API key presented in `header`.
fn api_key(
    creds: &Credentials,
    service: &ServiceEntry,
    header: HeaderName,
    raw: &[u8],
) -> Result<Consumer, ProxyError> {
    let key = std::str::from_utf8(raw).map_err(|_| ProxyError::InvalidCredential)?;
    let id = parse_key(key).ok_or(ProxyError::InvalidCredential)?;
    let Some(stored) = creds.api_key(id) else {
        tracing::debug!(key_id = id, "unknown api key");
        return Err(ProxyError::InvalidCredential);
    };
    if !sha256_hex_matches(key.as_bytes(), stored.sha256.as_bytes()) {
        tracing::debug!(key_id = id, "api key hash mismatch");
        return Err(ProxyError::InvalidCredential);
    }
    if stored.tenant != service.tenant {
        tracing::debug!(key_id = id, key_tenant = %stored.tenant, "api key of another tenant");
        return Err(ProxyError::InvalidCredential);
    }
    Ok(Consumer {
        tenant: stored.tenant.clone(),
        app: stored.app.clone(),
        credential_header: header,
        key_id: Some(format!("{}{id}", tollgate_proto::keys::PREFIX)),
        claims: None,
    })
}
