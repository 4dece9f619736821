use std::sync::atomic::{AtomicU16, Ordering::SeqCst};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::json;

use super::*;
use crate::phases::auth::Idp;
use crate::testutil::http_server;

const NOW: u64 = 1_800_000_000;
const TTL: Duration = Duration::from_secs(60);

fn read(v: serde_json::Value, audiences: &[&str]) -> Result<(Answer, Duration), String> {
    let aud: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
    read_answer(v.to_string().as_bytes(), &aud, "client_id", TTL, NOW)
}

fn active(app: &str) -> Answer {
    Answer::Active { app: app.into() }
}

#[test]
fn answers_are_read_per_rfc_7662() {
    assert_eq!(
        read(json!({"active": true, "client_id": "mobile"}), &[]),
        Ok((active("mobile"), TTL))
    );
    // Cached no longer than the token lives.
    assert_eq!(
        read(
            json!({"active": true, "client_id": "mobile", "exp": NOW + 7}),
            &[]
        ),
        Ok((active("mobile"), Duration::from_secs(7)))
    );
    let inactive = |why| Ok((Answer::Inactive(why), NEGATIVE_TTL));
    assert_eq!(
        read(json!({"active": false}), &[]),
        inactive("the token is not active")
    );
    assert_eq!(
        read(json!({"active": true, "client_id": "m", "exp": NOW}), &[]),
        inactive("the token has expired")
    );
    assert_eq!(
        read(json!({"active": true, "client_id": "m", "nbf": NOW + 100}), &[]),
        inactive("the token is not valid yet (nbf)")
    );
    assert_eq!(
        read(json!({"active": true}), &[]),
        inactive("the introspection answer does not name an app")
    );
    // Audiences, as a string or an array.
    assert!(matches!(
        read(
            json!({"active": true, "client_id": "m", "aud": ["x", "orders"]}),
            &["orders"]
        ),
        Ok((Answer::Active { .. }, _))
    ));
    assert!(matches!(
        read(
            json!({"active": true, "client_id": "m", "aud": "orders"}),
            &["orders"]
        ),
        Ok((Answer::Active { .. }, _))
    ));
    for aud in [json!(["x", "y"]), json!("x"), json!(null), json!(3)] {
        assert_eq!(
            read(json!({"active": true, "client_id": "m", "aud": aud}), &["orders"]),
            inactive("the token is not meant for this audience")
        );
    }
    // Garbage is an error (the caller fails closed), not an inactive token.
    for garbage in [
        json!({"active": "yes"}),
        json!({}),
        json!([true]),
        json!("active"),
    ] {
        assert!(read(garbage.clone(), &[]).is_err(), "{garbage}");
    }
    assert!(read_answer(b"<html>", &[], "client_id", TTL, NOW).is_err());
}

#[test]
fn the_cache_is_bounded_and_expires() {
    let cache = TokenCache::default();
    let now = Instant::now();
    for i in 0..(MAX_ENTRIES + 500) as u32 {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key[0] = (i % 251) as u8;
        cache.insert(key, active("a"), now + TTL, now);
    }
    assert!(cache.len() <= MAX_ENTRIES, "{}", cache.len());
    let key = [7u8; 32];
    cache.insert(key, active("b"), now + Duration::from_secs(1), now);
    assert_eq!(cache.get(&key, now), Some(active("b")));
    assert_eq!(cache.get(&key, now + Duration::from_secs(2)), None);
}

fn spec(url: String, secret: Option<&str>) -> Oauth2Introspection {
    serde_json::from_value(json!({
        "name": "idp", "tenant": "acme", "url": url, "client_id": "gw",
        "client_secret_secret": "gw-secret", "client_secret": secret,
    }))
    .unwrap()
}

#[tokio::test]
async fn introspection_authenticates_caches_and_fails_closed() {
    let status = Arc::new(AtomicU16::new(200));
    let s = status.clone();
    let addr = http_server(move |parts, body| {
        // RFC 6749 §2.3.1 Basic client authentication, the token form-encoded.
        let auth = parts.headers["authorization"].to_str().unwrap().to_string();
        let form = String::from_utf8(body.to_vec()).unwrap();
        let ok_client = auth == format!("Basic {}", STANDARD.encode("gw:s%3Acret%2B"));
        let answer = match (ok_client, form.as_str()) {
            (false, _) => json!({"error": "invalid_client"}),
            (true, "token=good%2Ftoken&token_type_hint=access_token") => {
                json!({"active": true, "client_id": "mobile"})
            }
            (true, "token=garbage&token_type_hint=access_token") => json!({"hello": "world"}),
            (true, _) => json!({"active": false}),
        };
        let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
        *resp.status_mut() = StatusCode::from_u16(s.load(SeqCst)).unwrap();
        async move { resp }
    })
    .await;
    let mut idp = Idp::default();
    let i = idp
        .introspector(&spec(format!("http://{addr}/introspect"), Some("s:cret+")))
        .unwrap();
    assert!(!format!("{i:?}").contains("cret"), "the secret never prints");

    assert_eq!(i.check("good/token").await, Ok(active("mobile")));
    assert_eq!(i.check("good/token").await, Ok(active("mobile")));
    assert_eq!(i.calls(), 1, "the second answer came from the cache");
    assert_eq!(
        i.check("other").await,
        Ok(Answer::Inactive("the token is not active"))
    );
    assert!(i.check("garbage").await.is_err());

    // The endpoint fails: errors, never an active answer (cached ones stay until they expire).
    status.store(500, SeqCst);
    assert!(i.check("new-token").await.unwrap_err().contains("status 500"));
    assert_eq!(i.check("good/token").await, Ok(active("mobile")));

    // A config swap with the same settings keeps the cache; a changed secret does not.
    let same = idp
        .introspector(&spec(format!("http://{addr}/introspect"), Some("s:cret+")))
        .unwrap();
    assert_eq!(same.check("good/token").await, Ok(active("mobile")));
    let changed = idp
        .introspector(&spec(format!("http://{addr}/introspect"), Some("new")))
        .unwrap();
    assert!(changed.check("good/token").await.is_err());

    // Nothing listens: an error, quickly.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let down = idp
        .introspector(&spec(format!("http://{closed}/"), Some("x")))
        .unwrap();
    assert!(down.check("t").await.is_err());

    let err = idp
        .introspector(&spec(format!("http://{addr}/"), None))
        .unwrap_err();
    assert!(
        err.starts_with("client_secret_secret: the control plane sent no secret"),
        "{err}"
    );
}
