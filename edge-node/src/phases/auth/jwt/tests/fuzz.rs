//! Fuzzing token verification (issue 14): whatever is done to a genuinely signed token, and
//! whatever is forged from scratch, nothing verifies but the token as it was signed, and no
//! input panics. `PROPTEST_CASES` sets the number of cases (`scripts/fuzz` runs many more).

use std::sync::LazyLock;

use proptest::prelude::*;

use super::*;

/// One issuer per signing family, all of tenant `acme`: RS256 and EdDSA keys for
/// `https://idp`, the shared HS256 secret for `https://hs`.
struct World {
    keys: Keys,
    issuers: Issuers,
    rt: tokio::runtime::Runtime,
}

const HS_SECRET: &[u8] = b"the shared secret";

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let keys = keys();
    let asymmetric = issuer(json!({"algorithms": ["RS256", "EdDSA"]}), &keys);
    let mut symmetric = issuer(
        json!({"name": "hs", "issuer": "https://hs", "algorithms": ["HS256"], "public_keys": [], "hs_secret": "shared"}),
        &keys,
    );
    symmetric.hs_key_hex = Some(tollgate_proto::keys::hex(HS_SECRET));
    World {
        issuers: issuers(&[asymmetric, symmetric]),
        keys,
        rt: tokio::runtime::Builder::new_current_thread().build().unwrap(),
    }
});

fn verify(token: &str) -> Result<Verified, TokenError> {
    let w = &*WORLD;
    w.rt.block_on(w.issuers.verify("acme", token, NOW))
}

fn claims_for(iss: &str) -> Value {
    json!({"iss": iss, "sub": "mobile", "aud": ["orders"], "exp": NOW + 60, "iat": NOW})
}

/// A token each issuer accepts, by how it is signed (0 RS256, 1 EdDSA, 2 HS256).
fn genuine(which: u8) -> String {
    let k = &WORLD.keys;
    match which % 3 {
        0 => token(
            json!({"alg": "RS256", "typ": "JWT"}),
            claims_for("https://idp"),
            rs256(k),
        ),
        1 => token(json!({"alg": "EdDSA"}), claims_for("https://idp"), |m| {
            k.ed.sign(m).as_ref().to_vec()
        }),
        _ => token(
            json!({"alg": "HS256"}),
            claims_for("https://hs"),
            hs256(HS_SECRET),
        ),
    }
}

/// Bytes an attacker would try in a token: base64url's alphabet, the separator, padding,
/// and a few bytes outside it.
fn token_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => prop::sample::select(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".to_vec()),
        1 => prop::sample::select(b".=+/ \0\xff".to_vec()),
    ]
}

/// What a forger may put in a header: every alg spelling worth trying, with or without a kid.
fn forged_header() -> impl Strategy<Value = Value> {
    let alg = prop::sample::select(vec![
        "none", "None", "HS256", "HS384", "HS512", "RS256", "RS384", "PS256", "ES256", "EdDSA", "",
    ]);
    let kid = prop::option::of(prop::sample::select(vec!["k1", "../../etc/passwd", "", "\u{0}"]));
    (alg, kid, any::<bool>()).prop_map(|(alg, kid, crit)| {
        let mut h = json!({ "alg": alg });
        if let Some(kid) = kid {
            h["kid"] = json!(kid);
        }
        if crit {
            h["crit"] = json!(["exp"]);
        }
        h
    })
}

/// Signatures a forger can make without the keys: random bytes, nothing, HMACs keyed with
/// what is public (the PEM texts) or guessed, and genuine signatures over other bytes.
fn forged_signature(signed: &[u8], how: u8, noise: &[u8]) -> Vec<u8> {
    let k = &WORLD.keys;
    match how % 6 {
        0 => noise.to_vec(),
        1 => Vec::new(),
        2 => hs256(k.rsa_pem.as_bytes())(signed),
        3 => hs256(k.ed_pem.as_bytes())(signed),
        4 => hs256(b"shared")(signed),
        _ => rs256(k)(noise),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// A genuine token with any byte changed, added or removed no longer verifies.
    #[test]
    fn fuzz_an_altered_token_never_verifies(
        which in any::<u8>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), token_byte(), 0u8..3), 1..4),
    ) {
        let original = genuine(which);
        prop_assert!(verify(&original).is_ok(), "the genuine token must verify");
        let mut t = original.clone().into_bytes();
        for (at, byte, op) in edits {
            let i = at.index(t.len() + 1);
            match op {
                0 if i < t.len() => t[i] = byte,
                1 if i < t.len() => {
                    t.remove(i);
                }
                _ => t.insert(i, byte),
            }
        }
        let Ok(t) = String::from_utf8(t) else { return Ok(()) };
        if t != original {
            let got = verify(&t);
            prop_assert!(got.is_err(), "an altered token verified: {t:?} -> {got:?}");
        }
    }

    /// Tokens made without the keys, however their header and signature are chosen, never
    /// verify, even with claims the issuers would accept.
    #[test]
    fn fuzz_a_forged_token_never_verifies(
        header in forged_header(),
        iss in prop::sample::select(vec!["https://idp", "https://hs", "https://other"]),
        how in any::<u8>(),
        noise in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let signed = format!("{}.{}", b64(&header), b64(&claims_for(iss)));
        let sig = forged_signature(signed.as_bytes(), how, &noise);
        let t = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig));
        let got = verify(&t);
        prop_assert!(got.is_err(), "a forged token verified: {header} -> {got:?}");
    }

    /// Any string at all: an error or a verified token, never a panic.
    #[test]
    fn fuzz_arbitrary_tokens_never_panic(t in "[A-Za-z0-9_.=-]{0,200}|\\PC{0,64}") {
        prop_assert!(verify(&t).is_err());
    }
}
