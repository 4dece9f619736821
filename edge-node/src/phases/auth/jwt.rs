//! JWT verification for services with `auth: [jwt]`: a bearer token shaped like a JWT is
//! checked against the issuers of the service's tenant.
//!
//! ```text
//!  token ─> three base64url parts? ─> header: alg (none: refused; crit: refused), kid
//!        ─> payload: iss ─> the tenant's issuer with that exact `issuer` (else refused)
//!        ─> alg in the issuer's allow-list (else refused: this is what stops HS256 signed
//!           with the RSA public key, or any algorithm swap)
//!        ─> keys of alg's family: static PEMs, the HS secret, the JWKS (kid; on an unknown
//!           kid one bounded refetch, see `jwks.rs`)
//!        ─> signature (jsonwebtoken, aws-lc-rs)
//!        ─> claims: exp required; exp, nbf, iat with the issuer's leeway; iss exact; aud
//!           (string or array) must name a configured audience, and with none configured
//!           a token naming any audience is refused; the app from `app_claim`
//! ```
//! Claims are read before the signature is checked only to pick the issuer, and checked
//! again after. Header parameters that point at keys (`jku`, `x5u`, `jwk`) are ignored: keys
//! come only from the issuer's configuration. Tokens are never logged.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};
use tollgate_proto::model::JwtIssuer;

use crate::phases::auth::idp::{self, IdpClients};
use crate::phases::auth::jwks::{JwksCache, Key, KeySets, Lookup};

/// Longest token looked at (the header limits bound it anyway).
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most keys a signature is tried against (tokens without `kid`, several static keys).
const MAX_CANDIDATES: usize = 8;

/// Why a token is refused. The reasons are fixed texts: nothing from the token is echoed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    Invalid(&'static str),
    Expired,
    /// The issuer's key set could not be fetched yet.
    KeysUnavailable,
}

/// Whether a bearer token is shaped like a JWS compact serialization: three non-empty
/// dot-separated base64url parts.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3
}

/// The claim rules of one issuer.
#[derive(Clone, Debug)]
pub struct Rules {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: u64,
    pub app_claim: String,
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional; `None` when not a number.
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f.is_finite() && f >= 0.0).then(|| f.floor() as u64)
}

/// Whether `aud` (a string or an array of strings) names one of `audiences`. Any other shape
/// is refused, so an array can never skip the check (CVE-2020-26160).
pub fn audience_matches(aud: &Value, audiences: &[String]) -> Result<bool, &'static str> {
    match aud {
        Value::String(s) => Ok(audiences.iter().any(|a| a == s)),
        Value::Array(items) => {
            let mut found = false;
            for item in items {
                let s = item.as_str().ok_or("aud holds something other than strings")?;
                found |= audiences.iter().any(|a| a == s);
            }
            Ok(found)
        }
        _ => Err("aud is neither a string nor an array of strings"),
    }
}

/// Checks verified claims at unix time `now`; returns the app they name.
pub fn check_claims(claims: &Map<String, Value>, rules: &Rules, now: u64) -> Result<String, TokenError> {
    use TokenError::Invalid;
    let exp = claims.get("exp").ok_or(Invalid("the token has no exp claim"))?;
    let exp = numeric_date(exp).ok_or(Invalid("exp is not a number"))?;
    if now >= exp.saturating_add(rules.leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf).ok_or(Invalid("nbf is not a number"))?;
        if nbf > now.saturating_add(rules.leeway) {
            return Err(Invalid("the token is not valid yet (nbf)"));
        }
    }
    if let Some(iat) = claims.get("iat") {
        let iat = numeric_date(iat).ok_or(Invalid("iat is not a number"))?;
        if iat > now.saturating_add(rules.leeway) {
            return Err(Invalid("the token was issued in the future (iat)"));
        }
    }
    if claims.get("iss").and_then(Value::as_str) != Some(rules.issuer.as_str()) {
        return Err(Invalid("wrong issuer"));
    }
    match (claims.get("aud"), rules.audiences.is_empty()) {
        (None, true) => {}
        (None, false) => return Err(Invalid("the token names no audience")),
        (Some(_), true) => {
            return Err(Invalid(
                "the token names an audience, and its issuer accepts none",
            ))
        }
        (Some(aud), false) => {
            if !audience_matches(aud, &rules.audiences).map_err(Invalid)? {
                return Err(Invalid("the token is not meant for this audience"));
            }
        }
    }
    match claims.get(&rules.app_claim).and_then(Value::as_str) {
        Some(app) if !app.is_empty() => Ok(app.to_string()),
        _ => Err(Invalid("the token does not name an app")),
    }
}

/// One issuer, compiled.
#[derive(Debug)]
pub struct Issuer {
    /// The resource's name (for logs).
    pub name: String,
    rules: Rules,
    algorithms: Vec<Algorithm>,
    /// Static PEM keys and the HS key.
    static_keys: Vec<Arc<Key>>,
    jwks: Option<Arc<JwksCache>>,
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}

/// A PEM public key as a verification key of whichever family it is.
fn pem_key(pem: &str) -> Option<Key> {
    let bytes = pem.as_bytes();
    let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
        (AlgorithmFamily::Rsa, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
        (AlgorithmFamily::Ec, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
        (AlgorithmFamily::Ed, k)
    } else {
        return None;
    };
    Some(Key {
        kid: None,
        alg: None,
        family,
        key,
    })
}

impl Issuer {
    /// Compiles an issuer; the error names the field that is wrong.
    pub fn compile(
        j: &JwtIssuer,
        clients: &mut IdpClients,
        key_sets: &mut KeySets,
    ) -> Result<Issuer, String> {
        let mut algorithms = Vec::new();
        for (i, a) in j.algorithms.iter().enumerate() {
            let alg = Algorithm::from_str(a)
                .map_err(|_| format!("algorithms[{i}]: unsupported algorithm {a:?}"))?;
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err("algorithms: at least one algorithm is required".into());
        }
        let families: Vec<AlgorithmFamily> = algorithms.iter().map(|a| a.family()).collect();
        let mut static_keys = Vec::new();
        for (i, pem) in j.public_keys.iter().enumerate() {
            let key = pem_key(pem)
                .ok_or_else(|| format!("public_keys[{i}]: not an RSA, EC or Ed25519 public key"))?;
            if !families.contains(&key.family) {
                return Err(format!(
                    "public_keys[{i}]: an {} key, and algorithms allow none of its algorithms",
                    family_name(key.family)
                ));
            }
            static_keys.push(Arc::new(key));
        }
        if families.contains(&AlgorithmFamily::Hmac) {
            let secret = j.hs_secret.as_deref().unwrap_or_default();
            let hex = j.hs_key_hex.as_deref().ok_or_else(|| {
                format!("hs_secret: the control plane sent no key (it could not open secret {secret:?})")
            })?;
            let bytes = tollgate_proto::keys::unhex(hex)
                .filter(|b| !b.is_empty())
                .ok_or("hs_key_hex: not a hex key")?;
            static_keys.push(Arc::new(Key {
                kid: None,
                alg: None,
                family: AlgorithmFamily::Hmac,
                key: DecodingKey::from_secret(&bytes),
            }));
        }
        let jwks = match &j.jwks_url {
            Some(url) => {
                let uri =
                    idp::parse_url(url, j.allow_internal_addresses).map_err(|e| format!("jwks_url: {e}"))?;
                let client = clients.client(j.allow_internal_addresses);
                Some(key_sets.ensure(uri, j.allow_internal_addresses, client))
            }
            None => None,
        };
        Ok(Issuer {
            name: j.name.clone(),
            rules: Rules {
                issuer: j.issuer.clone(),
                audiences: j.audiences.clone(),
                leeway: j.leeway.0.as_secs(),
                app_claim: j.app_claim.clone(),
            },
            algorithms,
            static_keys,
            jwks,
        })
    }

    /// Candidate keys for a token signed with `alg` naming `kid`.
    async fn keys(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<Arc<Key>>, TokenError> {
        // Static keys carry no kid: any of the right family may have signed.
        let mut keys: Vec<Arc<Key>> = self.static_keys.iter().filter(|k| k.fits(alg)).cloned().collect();
        if alg.family() != AlgorithmFamily::Hmac {
            if let Some(jwks) = &self.jwks {
                match jwks.lookup(kid, alg).await {
                    Lookup::Keys(found) => keys.extend(found),
                    Lookup::Unavailable if keys.is_empty() => return Err(TokenError::KeysUnavailable),
                    Lookup::Unavailable | Lookup::NoKey => {}
                }
            }
        }
        if keys.is_empty() {
            return Err(TokenError::Invalid(if kid.is_some() {
                "no key of the issuer matches the token's kid"
            } else {
                "no key of the issuer fits the token's algorithm"
            }));
        }
        keys.truncate(MAX_CANDIDATES);
        Ok(keys)
    }
}

/// A token split and decoded (header and payload); nothing verified yet.
struct Parsed<'a> {
    signed: &'a str,
    signature: &'a str,
    alg: Algorithm,
    kid: Option<String>,
    claims: Map<String, Value>,
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn parse(token: &str) -> Result<Parsed<'_>, TokenError> {
    use TokenError::Invalid;
    if token.len() > MAX_TOKEN_BYTES || !looks_like_jwt(token) {
        return Err(Invalid("malformed token"));
    }
    let (signed, signature) = token.rsplit_once('.').ok_or(Invalid("malformed token"))?;
    let (header, payload) = signed.split_once('.').ok_or(Invalid("malformed token"))?;
    let header = decode_object(header).ok_or(Invalid("malformed token header"))?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Invalid("the token header names no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(Invalid("alg none is never accepted"));
    }
    if header.contains_key("crit") {
        return Err(Invalid(
            "the token header has critical extensions the edge does not support",
        ));
    }
    let alg = Algorithm::from_str(alg).map_err(|_| Invalid("unsupported alg"))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Invalid("kid is not a string")),
    };
    let claims = decode_object(payload).ok_or(Invalid("malformed token payload"))?;
    Ok(Parsed {
        signed,
        signature,
        alg,
        kid,
        claims,
    })
}

/// A verified token.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub app: String,
    /// The issuer resource that verified it.
    pub issuer: String,
    pub claims: Map<String, Value>,
}

/// The issuers of every tenant, by `iss`.
#[derive(Debug, Default)]
pub struct Issuers {
    by_tenant: HashMap<String, HashMap<String, Arc<Issuer>>>,
}

impl Issuers {
    /// Adds an issuer; the error names the issuer already holding its `iss`.
    pub fn insert(&mut self, tenant: &str, issuer: Issuer) -> Result<(), String> {
        let by_iss = self.by_tenant.entry(tenant.to_string()).or_default();
        if let Some(other) = by_iss.get(&issuer.rules.issuer) {
            return Err(format!(
                "issuer: {:?} is also the issuer of jwt_issuer {tenant}/{}",
                issuer.rules.issuer, other.name
            ));
        }
        by_iss.insert(issuer.rules.issuer.clone(), Arc::new(issuer));
        Ok(())
    }

    /// Verifies `token` for a service of `tenant` at unix time `now`.
    pub async fn verify(&self, tenant: &str, token: &str, now: u64) -> Result<Verified, TokenError> {
        use TokenError::Invalid;
        let parsed = parse(token)?;
        let iss = parsed
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(Invalid("the token has no iss claim"))?;
        let issuer = self
            .by_tenant
            .get(tenant)
            .and_then(|m| m.get(iss))
            .ok_or(Invalid("unknown issuer"))?;
        if !issuer.algorithms.contains(&parsed.alg) {
            return Err(Invalid("the token's alg is not allowed for its issuer"));
        }
        let keys = issuer.keys(parsed.kid.as_deref(), parsed.alg).await?;
        let verified = keys.iter().any(|k| {
            jsonwebtoken::crypto::verify(parsed.signature, parsed.signed.as_bytes(), &k.key, parsed.alg)
                .unwrap_or(false)
        });
        if !verified {
            return Err(Invalid("bad signature"));
        }
        let app = check_claims(&parsed.claims, &issuer.rules, now)?;
        Ok(Verified {
            app,
            issuer: issuer.name.clone(),
            claims: parsed.claims,
        })
    }
}

#[cfg(test)]
mod tests;
