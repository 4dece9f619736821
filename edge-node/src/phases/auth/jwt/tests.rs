use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _, RsaKeyPair, RSA_PKCS1_SHA256};
use aws_lc_rs::{encoding::AsDer, hmac, rsa::KeySize};
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use tollgate_proto::duration::HumanDuration;

use super::*;
use crate::phases::auth::Idp;

const NOW: u64 = 1_800_000_000;

fn rules(audiences: &[&str]) -> Rules {
    Rules {
        issuer: "https://idp".into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        leeway: 30,
        app_claim: "sub".into(),
    }
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// Valid claims for `rules(&["orders"])`, with `extra` merged over them.
fn with(extra: Value) -> Map<String, Value> {
    let mut c = claims(json!({"iss": "https://idp", "sub": "mobile", "aud": "orders", "exp": NOW + 60}));
    for (k, v) in claims(extra) {
        if v.is_null() {
            c.remove(&k);
        } else {
            c.insert(k, v);
        }
    }
    c
}

#[test]
fn exp_is_required_and_checked_with_the_leeway() {
    let r = rules(&["orders"]);
    assert_eq!(check_claims(&with(json!({})), &r, NOW), Ok("mobile".into()));
    assert_eq!(
        check_claims(&with(json!({"exp": null})), &r, NOW),
        Err(TokenError::Invalid("the token has no exp claim"))
    );
    assert_eq!(
        check_claims(&with(json!({"exp": "soon"})), &r, NOW),
        Err(TokenError::Invalid("exp is not a number"))
    );
    // Expired 10 s ago: inside the 30 s leeway. 31 s ago: outside.
    assert!(check_claims(&with(json!({"exp": NOW - 10})), &r, NOW).is_ok());
    assert_eq!(
        check_claims(&with(json!({"exp": NOW - 31})), &r, NOW),
        Err(TokenError::Expired)
    );
    assert_eq!(
        check_claims(&with(json!({"exp": NOW - 30})), &r, NOW),
        Err(TokenError::Expired)
    );
    // Fractional NumericDates are allowed.
    assert!(check_claims(&with(json!({"exp": (NOW + 5) as f64 + 0.5})), &r, NOW).is_ok());
    let strict = Rules { leeway: 0, ..r };
    assert_eq!(
        check_claims(&with(json!({"exp": NOW})), &strict, NOW),
        Err(TokenError::Expired)
    );
}

#[test]
fn nbf_and_iat_are_checked_with_the_leeway() {
    let r = rules(&["orders"]);
    assert!(check_claims(&with(json!({"nbf": NOW + 20, "iat": NOW + 20})), &r, NOW).is_ok());
    assert_eq!(
        check_claims(&with(json!({"nbf": NOW + 31})), &r, NOW),
        Err(TokenError::Invalid("the token is not valid yet (nbf)"))
    );
    assert_eq!(
        check_claims(&with(json!({"iat": NOW + 31})), &r, NOW),
        Err(TokenError::Invalid("the token was issued in the future (iat)"))
    );
    assert_eq!(
        check_claims(&with(json!({"nbf": [1]})), &r, NOW),
        Err(TokenError::Invalid("nbf is not a number"))
    );
    assert!(check_claims(&with(json!({"nbf": NOW - 100, "iat": NOW - 100})), &r, NOW).is_ok());
}

#[test]
fn iss_must_match_exactly() {
    let r = rules(&["orders"]);
    for iss in [
        json!("https://idp/"),
        json!("HTTPS://IDP"),
        json!(["https://idp"]),
        Value::Null,
    ] {
        assert_eq!(
            check_claims(&with(json!({ "iss": iss })), &r, NOW),
            Err(TokenError::Invalid("wrong issuer")),
            "{iss}"
        );
    }
}

#[test]
fn aud_string_or_array_must_name_a_configured_audience() {
    let r = rules(&["orders", "billing"]);
    assert!(check_claims(&with(json!({"aud": "billing"})), &r, NOW).is_ok());
    assert!(check_claims(&with(json!({"aud": ["other", "orders"]})), &r, NOW).is_ok());
    let wrong = Err(TokenError::Invalid("the token is not meant for this audience"));
    assert_eq!(check_claims(&with(json!({"aud": "other"})), &r, NOW), wrong);
    assert_eq!(check_claims(&with(json!({"aud": "Orders"})), &r, NOW), wrong);
    assert_eq!(check_claims(&with(json!({"aud": []})), &r, NOW), wrong);
    assert_eq!(
        check_claims(&with(json!({"aud": null})), &r, NOW),
        Err(TokenError::Invalid("the token names no audience"))
    );
    assert_eq!(
        check_claims(&with(json!({"aud": 7})), &r, NOW),
        Err(TokenError::Invalid(
            "aud is neither a string nor an array of strings"
        ))
    );
    assert_eq!(
        check_claims(&with(json!({"aud": ["orders", 7]})), &r, NOW),
        Err(TokenError::Invalid("aud holds something other than strings"))
    );
}

/// CVE-2020-26160 (jwt-go): an `aud` array was not checked at all. Here an array that names
/// no configured audience is refused, and an issuer without audiences refuses any `aud`.
#[test]
fn cve_2020_26160_aud_array_is_never_a_bypass() {
    let r = rules(&["orders"]);
    assert_eq!(
        check_claims(&with(json!({"aud": ["billing", "admin"]})), &r, NOW),
        Err(TokenError::Invalid("the token is not meant for this audience"))
    );
    let none = rules(&[]);
    for aud in [json!(["billing", "admin"]), json!("billing"), json!([])] {
        assert_eq!(
            check_claims(&with(json!({ "aud": aud })), &none, NOW),
            Err(TokenError::Invalid(
                "the token names an audience, and its issuer accepts none"
            )),
            "{aud}"
        );
    }
    assert!(check_claims(&with(json!({"aud": null})), &none, NOW).is_ok());
}

#[test]
fn the_app_comes_from_the_configured_claim() {
    let r = Rules {
        app_claim: "azp".into(),
        ..rules(&["orders"])
    };
    assert_eq!(
        check_claims(&with(json!({"azp": "web"})), &r, NOW),
        Ok("web".into())
    );
    for azp in [Value::Null, json!(""), json!(42)] {
        assert_eq!(
            check_claims(&with(json!({ "azp": azp })), &r, NOW),
            Err(TokenError::Invalid("the token does not name an app"))
        );
    }
}

#[test]
fn jwt_shape() {
    assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
    assert!(looks_like_jwt("a-_.b.c"));
    for not in [
        "a.b", "a.b.c.d", "a..c", "a.b.", ".b.c", "a.b.c=", "a b.c.d", "tgk_x", "",
    ] {
        assert!(!looks_like_jwt(not), "{not}");
    }
}

// ---- tokens signed for real ----

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn token(header: Value, claims: Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let signed = format!("{}.{}", b64(&header), b64(&claims));
    let sig = sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b = STANDARD.encode(der);
    let lines: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

struct Keys {
    rsa: RsaKeyPair,
    rsa_pem: String,
    ed: Ed25519KeyPair,
    ed_pem: String,
}

fn keys() -> Keys {
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let rsa_pem = pem("PUBLIC KEY", rsa.public_key().as_der().unwrap().as_ref());
    let ed = Ed25519KeyPair::generate().unwrap();
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(ed.public_key().as_ref());
    let ed_pem = pem("PUBLIC KEY", &spki);
    Keys {
        rsa,
        rsa_pem,
        ed,
        ed_pem,
    }
}

fn rs256(k: &Keys) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    |msg| {
        let mut sig = vec![0; k.rsa.public_modulus_len()];
        k.rsa
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig)
            .unwrap();
        sig
    }
}

fn hs256(secret: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    move |msg| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), msg)
            .as_ref()
            .to_vec()
    }
}

fn issuer(extra: Value, k: &Keys) -> JwtIssuer {
    let mut v = json!({
        "name": "idp", "tenant": "acme", "issuer": "https://idp", "audiences": ["orders"],
        "public_keys": [k.rsa_pem, k.ed_pem],
    });
    for (key, val) in claims(extra) {
        v[key] = val;
    }
    serde_json::from_value(v).unwrap()
}

fn issuers(specs: &[JwtIssuer]) -> Issuers {
    let mut idp = Idp::default();
    let mut out = Issuers::default();
    for s in specs {
        out.insert(&s.tenant, idp.issuer(s).unwrap()).unwrap();
    }
    out
}

fn good_claims() -> Value {
    json!({"iss": "https://idp", "sub": "mobile", "aud": ["orders"], "exp": NOW + 60, "iat": NOW})
}

#[tokio::test]
async fn signed_tokens_are_verified_and_forgeries_refused() {
    let k = keys();
    let all = issuers(&[issuer(json!({"algorithms": ["RS256", "EdDSA"]}), &k)]);
    let verify = |t: String| {
        let all = &all;
        async move { all.verify("acme", &t, NOW).await }
    };
    let rs = rs256(&k);

    let ok = token(json!({"alg": "RS256", "typ": "JWT"}), good_claims(), &rs);
    let verified = verify(ok.clone()).await.unwrap();
    assert_eq!(
        (verified.app.as_str(), verified.issuer.as_str()),
        ("mobile", "idp")
    );
    assert_eq!(
        verified.claims.get("iss").and_then(serde_json::Value::as_str),
        good_claims()["iss"].as_str(),
        "the verified claims come along (a rate limit may count by one)"
    );
    let ed = token(json!({"alg": "EdDSA", "kid": "whatever"}), good_claims(), |m| {
        k.ed.sign(m).as_ref().to_vec()
    });
    assert!(verify(ed).await.is_ok(), "EdDSA with a static key (kid ignored)");

    // alg none, in any spelling, even with something in the signature slot.
    for none in ["none", "None", "NONE"] {
        let t = token(json!({ "alg": none }), good_claims(), |_| b"x".to_vec());
        assert_eq!(
            verify(t).await,
            Err(TokenError::Invalid("alg none is never accepted"))
        );
    }
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&good_claims()));
    assert_eq!(
        verify(unsigned).await,
        Err(TokenError::Invalid("malformed token"))
    );

    // Algorithm confusion: HS256 with the RSA public key (PEM text) as the HMAC secret.
    let confused = token(
        json!({"alg": "HS256"}),
        good_claims(),
        hs256(k.rsa_pem.as_bytes()),
    );
    assert_eq!(
        verify(confused).await,
        Err(TokenError::Invalid(
            "the token's alg is not allowed for its issuer"
        ))
    );
    let rs384 = token(json!({"alg": "RS384"}), good_claims(), &rs);
    assert_eq!(
        verify(rs384).await,
        Err(TokenError::Invalid(
            "the token's alg is not allowed for its issuer"
        ))
    );

    // Tampered claims, a signature of another key, a critical header.
    let (signed, sig) = ok.rsplit_once('.').unwrap();
    let (header, _) = signed.split_once('.').unwrap();
    let mut evil = good_claims();
    evil["sub"] = json!("admin");
    let tampered = format!("{header}.{}.{sig}", b64(&evil));
    assert_eq!(verify(tampered).await, Err(TokenError::Invalid("bad signature")));
    let other = keys();
    let foreign = token(json!({"alg": "RS256"}), good_claims(), rs256(&other));
    assert_eq!(verify(foreign).await, Err(TokenError::Invalid("bad signature")));
    let crit = token(json!({"alg": "RS256", "crit": ["exp"]}), good_claims(), &rs);
    assert!(matches!(verify(crit).await, Err(TokenError::Invalid(m)) if m.contains("critical")));

    // Claims are checked after the signature.
    let mut expired = good_claims();
    expired["exp"] = json!(NOW - 3600);
    assert_eq!(
        verify(token(json!({"alg": "RS256"}), expired, &rs)).await,
        Err(TokenError::Expired)
    );

    // Issuers are per tenant and matched by exact iss.
    let mut stranger = good_claims();
    stranger["iss"] = json!("https://evil");
    assert_eq!(
        verify(token(json!({"alg": "RS256"}), stranger, &rs)).await,
        Err(TokenError::Invalid("unknown issuer"))
    );
    assert_eq!(
        all.verify("other", &ok, NOW).await,
        Err(TokenError::Invalid("unknown issuer"))
    );
    assert_eq!(
        verify("a.b.c".into()).await,
        Err(TokenError::Invalid("malformed token header"))
    );
}

#[tokio::test]
async fn hs_algorithms_use_the_shared_secret_only() {
    let k = keys();
    let mut spec = issuer(
        json!({"algorithms": ["RS256", "EdDSA", "HS256"], "hs_secret": "shared"}),
        &k,
    );
    spec.hs_key_hex = Some(tollgate_proto::keys::hex(b"the shared secret"));
    let all = issuers(&[spec.clone()]);
    let good = token(
        json!({"alg": "HS256"}),
        good_claims(),
        hs256(b"the shared secret"),
    );
    assert!(all.verify("acme", &good, NOW).await.is_ok());
    // Even with HS256 allowed, the RSA public key is no HMAC secret here.
    let confused = token(
        json!({"alg": "HS256"}),
        good_claims(),
        hs256(k.rsa_pem.as_bytes()),
    );
    assert_eq!(
        all.verify("acme", &confused, NOW).await,
        Err(TokenError::Invalid("bad signature"))
    );
    // Without the key from the control plane the issuer does not compile.
    spec.hs_key_hex = None;
    let err = Idp::default().issuer(&spec).unwrap_err();
    assert!(
        err.starts_with("hs_secret: the control plane sent no key"),
        "{err}"
    );
}

#[test]
fn issuers_compile_with_clear_errors() {
    let k = keys();
    let mut spec = issuer(json!({"algorithms": ["EdDSA"]}), &k);
    let err = Idp::default().issuer(&spec).unwrap_err();
    assert_eq!(
        err,
        "public_keys[0]: an RSA key, and algorithms allow none of its algorithms"
    );
    spec.public_keys = vec!["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into()];
    let err = Idp::default().issuer(&spec).unwrap_err();
    assert!(
        err.starts_with("public_keys[0]: not an RSA, EC or Ed25519 public key"),
        "{err}"
    );
    spec.public_keys.clear();
    spec.jwks_url = Some("http://169.254.169.254/jwks".into());
    let err = Idp::default().issuer(&spec).unwrap_err();
    assert!(err.starts_with("jwks_url: URL"), "{err}");
    spec.allow_internal_addresses = true;
    spec.leeway = HumanDuration::from_secs(5);
    assert!(Idp::default().issuer(&spec).is_ok());

    let mut two = Issuers::default();
    let a = issuer(json!({"algorithms": ["RS256", "EdDSA"]}), &k);
    two.insert("acme", Idp::default().issuer(&a).unwrap()).unwrap();
    let mut b = a.clone();
    b.name = "idp2".into();
    let err = two
        .insert("acme", Idp::default().issuer(&b).unwrap())
        .unwrap_err();
    assert_eq!(
        err,
        "issuer: \"https://idp\" is also the issuer of jwt_issuer acme/idp"
    );
}

mod fuzz;
