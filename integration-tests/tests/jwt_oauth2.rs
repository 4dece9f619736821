//! JWT and OAuth2 authentication through a real edge fed by a real control plane, with
//! tokens minted by PyJWT, a JWKS server the test rotates and an RFC 7662 introspection
//! server that counts its calls.
//!
//! Tenant `acme`: service `orders` (`/orders`, `auth: [jwt]`) and `opaque` (`/opaque`,
//! `auth: [oauth2]`), app `mobile` subscribed to both, app `web` subscribed to none. Issuer
//! `idp` (`https://idp.test`, audiences `[orders]`, RS256 only, keys from the JWKS server)
//! and issuer `noaud` (`https://noaud.test`, same keys, no audiences). Introspection
//! endpoint `idp` with its client secret stored as a secret.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tollgate_integration_tests::edge::{EdgeNode, Reply, Upstream};
use tollgate_integration_tests::idp::{mint, unix_now, MintRequest, MockServer};
use tollgate_integration_tests::{wait_for, Sandbox};

const ISSUER: &str = "https://idp.test";
const CLIENT_SECRET: &str = "introspection-s3cret";

/// An RSA key from PyJWT.
struct RsaKey {
    private_pem: String,
    public_pem: String,
    jwk: Value,
}

struct Fixture {
    sb: Sandbox,
    edge: EdgeNode,
    upstream: Upstream,
    /// The JWKS document the JWKS server serves; tests add keys to it.
    jwks_doc: Arc<Mutex<Value>>,
    jwks: MockServer,
    introspection: MockServer,
    /// kid `k1`, in the JWKS from the start.
    k1: RsaKey,
    /// kid `k2`, not in the JWKS until a test rotates it in.
    k2: RsaKey,
}

fn keys() -> (RsaKey, RsaKey) {
    let out = mint(&[
        MintRequest::RsaKey { kid: "k1".into() },
        MintRequest::RsaKey { kid: "k2".into() },
    ]);
    let key = |v: &Value| RsaKey {
        private_pem: v["private_pem"].as_str().unwrap().to_string(),
        public_pem: v["public_pem"].as_str().unwrap().to_string(),
        jwk: v["jwk"].clone(),
    };
    (key(&out[0]), key(&out[1]))
}

/// Answers RFC 7662 requests from the gateway's client: tokens starting `active-` are active
/// for app `mobile` (5 min), `garbage-` get a non-JSON answer, anything else is inactive.
fn introspection_server() -> MockServer {
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("gateway:{CLIENT_SECRET}"))
    );
    MockServer::start(move |req| {
        if req.method != "POST" || req.header("authorization") != Some(basic.as_str()) {
            return (401, vec![], json!({"error": "invalid_client"}).to_string());
        }
        let token = req
            .body
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .unwrap_or_default();
        if token.starts_with("garbage-") {
            return (200, vec![], "<html>oops</html>".into());
        }
        let answer = if token.starts_with("active-") {
            json!({"active": true, "client_id": "mobile", "scope": "read", "exp": unix_now() + 300})
        } else {
            json!({"active": false})
        };
        (200, vec![], answer.to_string())
    })
}

fn setup() -> Fixture {
    let (k1, k2) = keys();
    let jwks_doc = Arc::new(Mutex::new(json!({"keys": [k1.jwk.clone()]})));
    let doc = jwks_doc.clone();
    let jwks = MockServer::start(move |_| {
        let cc = vec![("cache-control".to_string(), "public, max-age=600".to_string())];
        (200, cc, doc.lock().unwrap().to_string())
    });
    let introspection = introspection_server();
    let upstream = Upstream::start();
    let sb = Sandbox::cluster(1);
    // The secret needs its tenant; the introspection endpoint needs the secret.
    sb.cli(
        0,
        &["apply", "-f", &sb.file("tenant.yaml", "tenants: [{name: acme}]")],
    )
    .ok();
    sb.cli_with_stdin(
        0,
        &["secret", "set", "introspect-secret", "--tenant", "acme"],
        Some(CLIENT_SECRET),
    )
    .ok();
    let config = format!(
        r#"
upstreams: [{{name: be, tenant: acme, targets: [{{url: "{up}"}}]}}]
services:
  - {{name: orders, tenant: acme, upstream: be, auth: [jwt], routes: [{{paths: [/orders]}}]}}
  - {{name: opaque, tenant: acme, upstream: be, auth: [oauth2], routes: [{{paths: [/opaque]}}]}}
apps: [{{name: mobile, tenant: acme}}, {{name: web, tenant: acme}}]
subscriptions:
  - {{app: mobile, service: orders, tenant: acme}}
  - {{app: mobile, service: opaque, tenant: acme}}
jwt_issuers:
  - {{name: idp, tenant: acme, issuer: "{ISSUER}", jwks_url: "{jwks}", audiences: [orders], algorithms: [RS256], leeway: 5s}}
  - {{name: noaud, tenant: acme, issuer: "https://noaud.test", jwks_url: "{jwks}", algorithms: [RS256]}}
oauth2_introspections:
  - {{name: idp, tenant: acme, url: "{introspect}", client_id: gateway, client_secret_secret: introspect-secret}}
"#,
        up = upstream.url(),
        jwks = jwks.url("/jwks"),
        introspect = introspection.url("/introspect"),
    );
    sb.cli(0, &["apply", "-f", &sb.file("auth.yaml", &config)]).ok();
    let edge = EdgeNode::start(&sb, "e1");
    let fx = Fixture {
        sb,
        edge,
        upstream,
        jwks_doc,
        jwks,
        introspection,
        k1,
        k2,
    };
    // Ready once a valid token passes (config applied, key set fetched).
    let token = fx.sign(&fx.k1, json!({"kid": "k1"}), fx.claims(json!({})));
    wait_for("a valid token to pass", Duration::from_secs(15), || {
        let r = fx.get("/orders", &token);
        (r.status == 200).then_some(())
    });
    fx
}

impl Fixture {
    /// Valid claims for issuer `idp`, with `extra` merged over them (null removes).
    fn claims(&self, extra: Value) -> Value {
        let now = unix_now();
        let mut c = json!({"iss": ISSUER, "sub": "mobile", "aud": "orders", "iat": now, "exp": now + 300});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn sign(&self, key: &RsaKey, headers: Value, claims: Value) -> String {
        self.sign_all(&[(key, headers, claims)]).remove(0)
    }

    /// RS256 tokens, minted in one PyJWT run.
    fn sign_all(&self, tokens: &[(&RsaKey, Value, Value)]) -> Vec<String> {
        let reqs: Vec<MintRequest> = tokens
            .iter()
            .map(|(k, h, c)| MintRequest::Sign {
                alg: "RS256".into(),
                key: k.private_pem.clone(),
                headers: h.clone(),
                claims: c.clone(),
            })
            .collect();
        mint(&reqs)
            .into_iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    }

    fn get(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.edge.request("GET", path, &[("authorization", &auth)])
    }
}

/// Asserts a JSON error answer with `status` and `code`.
#[track_caller]
fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.error_code().as_str()), (status, code), "{r:?}");
    assert!(r.header("x-request-id").is_some(), "{r:?}");
}

#[test]
fn valid_rs256_token_reaches_the_upstream_as_its_app() {
    let fx = setup();
    let token = fx.sign(
        &fx.k1,
        json!({"kid": "k1"}),
        fx.claims(json!({"aud": ["billing", "orders"]})),
    );
    let r = fx.get("/orders/42", &token);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.upstream_headers();
    assert_eq!(seen["x-consumer-app"], "mobile");
    assert_eq!(seen["x-consumer-tenant"], "acme");
    assert!(
        seen.get("authorization").is_none(),
        "the token is not forwarded: {seen:?}"
    );
    // A token without kid is tried against the issuer's keys.
    let no_kid = fx.sign(&fx.k1, json!({}), fx.claims(json!({})));
    assert_eq!(fx.get("/orders", &no_kid).status, 200);
    // A valid token of an app without a subscription: authenticated, then forbidden.
    let web = fx.sign(&fx.k1, json!({"kid": "k1"}), fx.claims(json!({"sub": "web"})));
    refused(&fx.get("/orders", &web), 403, "not_subscribed");
}

#[test]
fn forged_expired_and_misdirected_tokens_are_refused() {
    let fx = setup();
    let now = unix_now();
    let signed = fx.sign_all(&[
        (&fx.k1, json!({"kid": "k1"}), fx.claims(json!({"exp": now - 60}))),
        (&fx.k1, json!({"kid": "k1"}), fx.claims(json!({"nbf": now + 600}))),
        (&fx.k1, json!({"kid": "k1"}), fx.claims(json!({"iat": now + 600}))),
        (
            &fx.k1,
            json!({"kid": "k1"}),
            fx.claims(json!({"iss": "https://evil.test"})),
        ),
        (&fx.k1, json!({"kid": "k1"}), fx.claims(json!({"aud": "billing"}))),
        (&fx.k1, json!({"kid": "k1"}), fx.claims(json!({"aud": null}))),
        (&fx.k1, json!({"kid": "k1"}), fx.claims(json!({"exp": null}))),
        (&fx.k1, json!({"kid": "k1"}), fx.claims(json!({"sub": "ghost"}))),
        // Signed by a key the issuer does not publish, under the published kid.
        (&fx.k2, json!({"kid": "k1"}), fx.claims(json!({}))),
    ]);
    let cases = [
        ("expired", 401, "token_expired"),
        ("not yet valid (nbf)", 401, "invalid_token"),
        ("issued in the future", 401, "invalid_token"),
        ("wrong issuer", 401, "invalid_token"),
        ("wrong audience", 401, "invalid_token"),
        ("no audience", 401, "invalid_token"),
        ("no exp", 401, "invalid_token"),
        ("unknown app", 401, "invalid_token"),
        ("signed by another key", 401, "invalid_token"),
    ];
    for ((what, status, code), token) in cases.iter().zip(&signed) {
        let r = fx.get("/orders", token);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (*status, *code),
            "{what}: {r:?}"
        );
    }

    let forged = mint(&[
        MintRequest::Sign {
            alg: "none".into(),
            key: String::new(),
            headers: json!({"kid": "k1"}),
            claims: fx.claims(json!({})),
        },
        // Algorithm confusion: HS256 keyed with the issuer's RSA public key.
        MintRequest::HmacWith {
            secret: fx.k1.public_pem.clone(),
            claims: fx.claims(json!({})),
        },
        MintRequest::HmacWith {
            secret: serde_json::to_string(&fx.k1.jwk).unwrap(),
            claims: fx.claims(json!({})),
        },
    ]);
    for token in &forged {
        let token = token.as_str().unwrap();
        let r = fx.get("/orders", token);
        refused(&r, 401, "invalid_token");
    }
    // `alg: none` with something in the signature slot is refused by name.
    let none = forged[0].as_str().unwrap();
    let r = fx.get("/orders", &format!("{none}c2ln"));
    refused(&r, 401, "invalid_token");
    assert!(r.body.contains("alg none"), "{r:?}");
    let r = fx.get("/orders", forged[1].as_str().unwrap());
    assert!(r.body.contains("alg is not allowed"), "{r:?}");
    assert_eq!(fx.upstream.requests().len(), 1, "only setup's probe got through");
}

/// CVE-2020-26160 (jwt-go): an `aud` array skipped the audience check. Here an array must
/// name a configured audience, and an issuer that configures none refuses any `aud`.
#[test]
fn cve_2020_26160_aud_array_bypass() {
    let fx = setup();
    let tokens = fx.sign_all(&[
        (
            &fx.k1,
            json!({"kid": "k1"}),
            fx.claims(json!({"aud": ["billing", "admin"]})),
        ),
        (&fx.k1, json!({"kid": "k1"}), fx.claims(json!({"aud": []}))),
        (
            &fx.k1,
            json!({"kid": "k1"}),
            fx.claims(json!({"aud": [["orders"]]})),
        ),
        (
            &fx.k1,
            json!({"kid": "k1"}),
            fx.claims(json!({"iss": "https://noaud.test", "aud": ["billing", "admin"]})),
        ),
        (
            &fx.k1,
            json!({"kid": "k1"}),
            fx.claims(json!({"iss": "https://noaud.test", "aud": "orders"})),
        ),
        // The controls: the array naming the audience passes, and so does a token without
        // aud for the issuer without audiences.
        (
            &fx.k1,
            json!({"kid": "k1"}),
            fx.claims(json!({"aud": ["billing", "orders"]})),
        ),
        (
            &fx.k1,
            json!({"kid": "k1"}),
            fx.claims(json!({"iss": "https://noaud.test", "aud": null})),
        ),
    ]);
    for token in &tokens[..5] {
        refused(&fx.get("/orders", token), 401, "invalid_token");
    }
    for token in &tokens[5..] {
        assert_eq!(fx.get("/orders", token).status, 200);
    }
}

/// CVE-2021-27306 (Kong's JWT plugin let requests through without a valid token): every way
/// of not presenting a valid bearer JWT is 401, and the upstream never hears of it.
#[test]
fn cve_2021_27306_request_without_a_valid_jwt_is_refused() {
    let fx = setup();
    let before = fx.upstream.requests().len();
    let valid = fx.sign(&fx.k1, json!({"kid": "k1"}), fx.claims(json!({})));
    let (signed, _) = valid.rsplit_once('.').unwrap();
    let no_auth = fx.edge.request("GET", "/orders", &[]);
    refused(&no_auth, 401, "missing_credential");
    let attempts: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("empty bearer", vec![("authorization", "Bearer".into())]),
        ("garbage", vec![("authorization", "Bearer not-a-token".into())]),
        (
            "jwt-shaped garbage",
            vec![("authorization", "Bearer aaa.bbb.ccc".into())],
        ),
        (
            "no signature",
            vec![("authorization", format!("Bearer {signed}."))],
        ),
        (
            "bad signature",
            vec![("authorization", format!("Bearer {signed}.AAAA"))],
        ),
        ("basic", vec![("authorization", "Basic bW9iaWxlOnB3".into())]),
        ("token as api key", vec![("apikey", valid.clone())]),
        ("token in a cookie", vec![("cookie", format!("jwt={valid}"))]),
        ("other scheme", vec![("authorization", format!("JWT {valid}"))]),
    ];
    for (what, headers) in &attempts {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = fx.edge.request("GET", "/orders", &h);
        assert_eq!(r.status, 401, "{what}: {r:?}");
    }
    // In the query string (Kong reads `?jwt=`), the token is ignored.
    let r = fx.edge.request("GET", &format!("/orders?jwt={valid}"), &[]);
    refused(&r, 401, "missing_credential");
    assert_eq!(
        fx.upstream.requests().len(),
        before,
        "nothing reached the upstream"
    );
    // And the same token, presented properly, passes.
    assert_eq!(fx.get("/orders", &valid).status, 200);
}

/// An unknown `kid` costs at most one JWKS fetch per 10 s and is refused; a key the issuer
/// adds is picked up on its first use once that interval has passed, with no restart.
#[test]
fn unknown_kid_is_refused_and_jwks_rotation_needs_no_restart() {
    // Setup waited for a k1 token to pass, so the edge's first fetch has finished.
    let fx = setup();
    let fetches = fx.jwks.hits();
    let last_fetch = Instant::now();
    assert!(fetches >= 1);
    let signed = fx.sign_all(&[
        (&fx.k2, json!({"kid": "k2"}), fx.claims(json!({}))),
        (&fx.k2, json!({"kid": "forged"}), fx.claims(json!({}))),
    ]);
    let (rotated, forged) = (&signed[0], &signed[1]);

    // The issuer rotates in k2. Within 10 s of the last fetch, unknown kids (k2 included)
    // are refused without fetching again, however many arrive.
    fx.jwks_doc.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(fx.k2.jwk.clone());
    for token in [rotated, forged, forged, rotated, forged] {
        refused(&fx.get("/orders", token), 401, "invalid_token");
    }
    assert!(
        last_fetch.elapsed() < Duration::from_secs(9),
        "test too slow to check the bound"
    );
    assert_eq!(fx.jwks.hits(), fetches, "no refetch within 10 s");

    // Keep presenting k2: refused until the interval has passed, then the first unknown kid
    // refetches, once however many arrived: k2 is now known.
    let r = wait_for("k2 to be picked up", Duration::from_secs(15), || {
        let r = fx.get("/orders", rotated);
        (r.status != 401).then_some(r)
    });
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        last_fetch.elapsed() >= Duration::from_secs(9),
        "refetched {:?} after the last fetch",
        last_fetch.elapsed()
    );
    assert_eq!(r.upstream_headers()["x-consumer-app"], "mobile");
    assert_eq!(fx.jwks.hits(), fetches + 1);
    // A kid still unknown after that refetch is refused, without another fetch.
    let r = fx.get("/orders", forged);
    refused(&r, 401, "invalid_token");
    assert!(r.body.contains("kid"), "{r:?}");
    assert_eq!(fx.jwks.hits(), fetches + 1);
    // The old key still works.
    let old = fx.sign(&fx.k1, json!({"kid": "k1"}), fx.claims(json!({})));
    assert_eq!(fx.get("/orders", &old).status, 200);
}

#[test]
fn opaque_tokens_are_introspected_cached_and_fail_closed() {
    let fx = setup();
    let calls = |token: &str| {
        fx.introspection
            .requests()
            .iter()
            .filter(|r| r.body.contains(&format!("token={token}&")))
            .count()
    };

    // Active: the app comes from client_id; the second call is served from the cache.
    let r = fx.get("/opaque/1", "active-one");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_headers()["x-consumer-app"], "mobile");
    assert!(r.upstream_headers().get("authorization").is_none());
    assert_eq!(fx.get("/opaque/2", "active-one").status, 200);
    assert_eq!(calls("active-one"), 1, "the second answer came from the cache");
    let seen = &fx.introspection.requests()[0];
    assert_eq!(
        seen.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );

    // Inactive, and a JWT-shaped token the endpoint does not know: 401.
    refused(&fx.get("/opaque", "revoked-token"), 401, "invalid_token");
    refused(&fx.get("/opaque", "aaa.bbb.ccc"), 401, "invalid_token");
    // Garbage from the endpoint: fail closed.
    refused(&fx.get("/opaque", "garbage-1"), 503, "introspection_unavailable");

    // The endpoint goes down: new tokens fail closed; a cached answer is still used.
    fx.introspection.stop();
    refused(&fx.get("/opaque", "active-two"), 503, "introspection_unavailable");
    assert_eq!(fx.get("/opaque", "active-one").status, 200);

    // The client secret never shows in the edge's log or the control plane's output.
    let log = std::fs::read_to_string(&fx.edge.log).unwrap();
    assert!(!log.contains(CLIENT_SECRET), "secret in the edge log");
    let exported = fx.sb.cli(0, &["export", "-o", "yaml"]).ok().stdout;
    assert!(
        exported.contains("client_secret_secret: introspect-secret") && !exported.contains(CLIENT_SECRET),
        "{exported}"
    );
    let got = fx
        .sb
        .cli(
            0,
            &[
                "get",
                "oauth2_introspection",
                "idp",
                "--tenant",
                "acme",
                "-o",
                "json",
            ],
        )
        .ok()
        .stdout;
    assert!(!got.contains(CLIENT_SECRET), "{got}");
}
