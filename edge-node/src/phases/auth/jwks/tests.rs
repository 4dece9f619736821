use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::*;
use crate::testutil::http_server;

fn ed_jwk(kid: &str) -> Value {
    let key = Ed25519KeyPair::generate().unwrap();
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(key.public_key().as_ref())})
}

const RSA_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

#[test]
fn jwks_documents_keep_only_usable_signing_keys() {
    let doc = json!({"keys": [
        {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB"},
        {"kty": "RSA", "kid": "r2", "n": RSA_N, "e": "AQAB"},
        ed_jwk("e1"),
        {"kty": "EC", "crv": "P-256", "kid": "p256",
         "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
        {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": RSA_N, "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "kid": "mismatch", "alg": "ES384",
         "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty": "weird", "kid": "w"},
    ]});
    let set = parse_jwks(doc.to_string().as_bytes()).unwrap();
    assert_eq!(set.kids(), ["r1", "r2", "e1", "p256"]);
    // r1 is bound to RS256; r2 (no alg) serves any RSA algorithm.
    assert_eq!(set.matching(Some("r1"), Algorithm::RS256).len(), 1);
    assert!(set.matching(Some("r1"), Algorithm::PS256).is_empty());
    assert_eq!(set.matching(Some("r2"), Algorithm::PS512).len(), 1);
    assert_eq!(set.matching(None, Algorithm::RS256).len(), 2);
    assert_eq!(set.matching(Some("p256"), Algorithm::ES256).len(), 1);
    assert!(set.matching(Some("p256"), Algorithm::ES384).is_empty());
    // Never an HMAC key from a URL.
    assert!(set.matching(None, Algorithm::HS256).is_empty());

    for bad in [
        "not json",
        "{}",
        r#"{"keys": []}"#,
        r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
    ] {
        assert!(parse_jwks(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn max_age_is_honoured_within_bounds() {
    let h = |v: &str| {
        let mut m = HeaderMap::new();
        m.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
        refresh_after(&m)
    };
    assert_eq!(h("public, max-age=300"), Duration::from_secs(300));
    assert_eq!(h("no-cache, Max-Age=120"), Duration::from_secs(120));
    assert_eq!(h("max-age=5"), REFRESH_MIN);
    assert_eq!(h("max-age=9999999"), REFRESH_MAX);
    assert_eq!(h("max-age=soon"), REFRESH_DEFAULT);
    assert_eq!(refresh_after(&HeaderMap::new()), REFRESH_DEFAULT);
}

/// A JWKS server whose document and status the test changes, counting fetches.
struct Server {
    url: Uri,
    doc: Arc<Mutex<Value>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
}

async fn server(doc: Value) -> Server {
    let doc = Arc::new(Mutex::new(doc));
    let status = Arc::new(AtomicU16::new(200));
    let delay_ms = Arc::new(AtomicU64::new(0));
    let hits = Arc::new(AtomicU64::new(0));
    let (d, s, dl, h) = (doc.clone(), status.clone(), delay_ms.clone(), hits.clone());
    let addr = http_server(move |_, _| {
        h.fetch_add(1, SeqCst);
        let delay = Duration::from_millis(dl.load(SeqCst));
        let mut resp = Response::new(Full::new(Bytes::from(d.lock().unwrap().to_string())));
        *resp.status_mut() = StatusCode::from_u16(s.load(SeqCst)).unwrap();
        async move {
            tokio::time::sleep(delay).await;
            resp
        }
    })
    .await;
    Server {
        url: format!("http://{addr}/jwks").parse().unwrap(),
        doc,
        status,
        delay_ms,
        hits,
    }
}

impl JwksCache {
    /// Lets the next miss refetch at once (as if the last fetch were long ago).
    fn forget_last_attempt(&self) {
        self.last_attempt.store(0, Relaxed);
    }
}

#[tokio::test]
async fn unknown_kids_refetch_at_a_bounded_rate_and_share_one_fetch() {
    let srv = server(json!({"keys": [ed_jwk("k1")]})).await;
    let cache = Arc::new(JwksCache::new(srv.url.clone(), IdpClient::new(false)));

    // Nothing fetched yet: the first miss fetches.
    assert!(matches!(cache.lookup(Some("k1"), Algorithm::EdDSA).await, Lookup::Keys(k) if k.len() == 1));
    assert_eq!(srv.hits.load(SeqCst), 1);

    // Unknown kids right after a fetch: no new fetch, however many.
    for i in 0..20 {
        let kid = format!("forged-{i}");
        assert!(matches!(
            cache.lookup(Some(&kid), Algorithm::EdDSA).await,
            Lookup::NoKey
        ));
    }
    assert_eq!(srv.hits.load(SeqCst), 1);

    // The issuer rotates; once the interval passed, concurrent misses share one fetch.
    srv.doc.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(ed_jwk("k2"));
    srv.delay_ms.store(200, SeqCst);
    cache.forget_last_attempt();
    let lookups = (0..10).map(|_| {
        let cache = cache.clone();
        tokio::spawn(async move { cache.lookup(Some("k2"), Algorithm::EdDSA).await })
    });
    for l in futures::future::join_all(lookups).await {
        assert!(matches!(l.unwrap(), Lookup::Keys(_)));
    }
    assert_eq!(srv.hits.load(SeqCst), 2);
    assert_eq!(cache.fetches(), 2);
}

#[tokio::test]
async fn the_last_good_set_is_kept_when_the_issuer_fails() {
    let srv = server(json!({"keys": [ed_jwk("k1")]})).await;
    let cache = JwksCache::new(srv.url.clone(), IdpClient::new(false));
    assert!(matches!(
        cache.lookup(Some("k1"), Algorithm::EdDSA).await,
        Lookup::Keys(_)
    ));

    for (status, doc) in [
        (500, json!({"keys": [ed_jwk("k9")]})),
        (200, json!({"keys": []})),
        (200, json!("garbage")),
    ] {
        srv.status.store(status, SeqCst);
        *srv.doc.lock().unwrap() = doc;
        cache.forget_last_attempt();
        assert!(matches!(
            cache.lookup(Some("k9"), Algorithm::EdDSA).await,
            Lookup::NoKey
        ));
        assert!(matches!(
            cache.lookup(Some("k1"), Algorithm::EdDSA).await,
            Lookup::Keys(_)
        ));
    }

    // An issuer that never answered: unavailable, and a slow one is not waited for long.
    let down = server(json!({})).await;
    down.status.store(503, SeqCst);
    let never = JwksCache::new(down.url.clone(), IdpClient::new(false));
    assert!(matches!(
        never.lookup(Some("k1"), Algorithm::EdDSA).await,
        Lookup::Unavailable
    ));
    down.delay_ms.store(5_000, SeqCst);
    never.forget_last_attempt();
    let started = std::time::Instant::now();
    assert!(matches!(
        never.lookup(Some("k1"), Algorithm::EdDSA).await,
        Lookup::Unavailable
    ));
    assert!(started.elapsed() < REFETCH_TIMEOUT + Duration::from_millis(500));
}

#[tokio::test]
async fn key_sets_are_shared_while_used_and_refreshed_in_the_background() {
    let srv = server(json!({"keys": [ed_jwk("k1")]})).await;
    let mut sets = KeySets::default();
    let a = sets.ensure(srv.url.clone(), false, IdpClient::new(false));
    let b = sets.ensure(srv.url.clone(), false, IdpClient::new(false));
    assert!(Arc::ptr_eq(&a, &b));
    // The background task fetches at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.keys.load().is_none() {
        assert!(std::time::Instant::now() < deadline, "no background fetch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        a.lookup(Some("k1"), Algorithm::EdDSA).await,
        Lookup::Keys(_)
    ));
    let weak = Arc::downgrade(&a);
    drop((a, b));
    assert!(weak.upgrade().is_none(), "the task holds no strong reference");
    let c = sets.ensure(srv.url.clone(), false, IdpClient::new(false));
    assert_eq!(c.fetches(), 0, "a new cache after the last user went");
}
