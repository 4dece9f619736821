//! Authentication phase: who is calling. API keys only for now.
//!
//! The key is read from `apikey` or `Authorization: Bearer <key>`, checked for format
//! (`tollgate_proto::keys::parse_key`), looked up by its public id, and its SHA-256 compared
//! in constant time with the stored one. The key's tenant must be the service's. Keys are
//! never logged; only their public id is.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};
use tollgate_proto::keys::{parse_key, sha256_hex};
use tollgate_proto::model::AuthKind;

use crate::error::ProxyError;
use crate::snapshot::{ServiceEntry, Snapshot};

pub const APIKEY_HEADER: &str = "apikey";

/// The calling app, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    pub tenant: String,
    pub app: String,
    /// The header that carried the credential (stripped before forwarding).
    pub credential_header: HeaderName,
}

/// The credential as presented, with the header it came in.
fn api_key_credential(headers: &HeaderMap) -> Option<(HeaderName, &[u8])> {
    if let Some(v) = headers.get(APIKEY_HEADER) {
        return Some((HeaderName::from_static(APIKEY_HEADER), v.as_bytes()));
    }
    let auth = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = auth.split_at(auth.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| (AUTHORIZATION, token.trim_ascii()))
}

/// Authenticates the request for `service`: `Ok(None)` for open services.
pub fn authenticate(
    snapshot: &Snapshot,
    service: &ServiceEntry,
    headers: &HeaderMap,
) -> Result<Option<Consumer>, ProxyError> {
    if service.auth.is_empty() {
        return Ok(None);
    }
    if !service.auth.contains(&AuthKind::ApiKey) {
        // JWT and OAuth2 come later: fail closed.
        return Err(if headers.contains_key(AUTHORIZATION) {
            ProxyError::InvalidCredential
        } else {
            ProxyError::MissingCredential
        });
    }
    let (header, raw) = api_key_credential(headers).ok_or(ProxyError::MissingCredential)?;
    let key = std::str::from_utf8(raw).map_err(|_| ProxyError::InvalidCredential)?;
    let id = parse_key(key).ok_or(ProxyError::InvalidCredential)?;
    let Some(stored) = snapshot.api_key(id) else {
        tracing::debug!(key_id = id, "unknown api key");
        return Err(ProxyError::InvalidCredential);
    };
    let presented = sha256_hex(key.as_bytes());
    if verify_slices_are_equal(presented.as_bytes(), stored.sha256.as_bytes()).is_err() {
        tracing::debug!(key_id = id, "api key hash mismatch");
        return Err(ProxyError::InvalidCredential);
    }
    if stored.tenant != service.tenant {
        tracing::debug!(key_id = id, key_tenant = %stored.tenant, "api key of another tenant");
        return Err(ProxyError::InvalidCredential);
    }
    Ok(Some(Consumer {
        tenant: stored.tenant.clone(),
        app: stored.app.clone(),
        credential_header: header,
    }))
}
