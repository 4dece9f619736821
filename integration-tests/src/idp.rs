//! A mock identity provider for sandbox tests, and tokens minted by a real JWT library.
//!
//! - [`MockServer`] (from the test toolkit): a loopback HTTP/1.1 server answering each
//!   request with a closure the test controls (a JWKS document the test rotates, an RFC 7662
//!   introspection endpoint), recording every request it received. Stops when dropped.
//! - [`mint`]: runs Python's PyJWT (`pyjwt[crypto]`, installed by `scripts/check`) to make
//!   RSA keys with their JWKs and to sign tokens, so the edge is tested against tokens it did
//!   not produce itself. [`MintRequest::HmacWith`] forges an HS256 token keyed with arbitrary
//!   bytes (an RSA public key, for the algorithm-confusion attack) with PyJWT's own HMAC,
//!   since PyJWT refuses to use a PEM key as an HMAC secret.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

pub use tollgate_testkit::mock::{Answer, MockServer, Seen};

/// One thing for PyJWT to make.
#[derive(Clone, Debug)]
pub enum MintRequest {
    /// An RSA-2048 key: `{"private_pem", "public_pem", "jwk"}` (the JWK carries `kid`,
    /// `alg: RS256`, `use: sig`).
    RsaKey { kid: String },
    /// `jwt.encode(claims, key, algorithm=alg, headers=headers)`; `key` is a PEM or an
    /// HMAC secret, empty for `alg: none`.
    Sign {
        alg: String,
        key: String,
        headers: Value,
        claims: Value,
    },
    /// An HS256 token keyed with `secret` (any bytes, such as a public key's PEM).
    HmacWith { secret: String, claims: Value },
}

const MINT_SCRIPT: &str = r#"
import json, sys
import jwt
from jwt.algorithms import HMACAlgorithm, RSAAlgorithm
from jwt.utils import base64url_encode
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

out = []
for r in json.load(sys.stdin):
    op = r["op"]
    if op == "rsa_key":
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        priv = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()
        pub = k.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        jwk = json.loads(RSAAlgorithm.to_jwk(k.public_key()))
        jwk.update({"kid": r["kid"], "alg": "RS256", "use": "sig"})
        out.append({"private_pem": priv, "public_pem": pub, "jwk": jwk})
    elif op == "sign":
        key = r["key"] if r["alg"] != "none" else None
        out.append(jwt.encode(r["claims"], key, algorithm=r["alg"], headers=r["headers"] or None))
    elif op == "hmac_with":
        seg = lambda v: base64url_encode(json.dumps(v, separators=(",", ":")).encode())
        signing_input = seg({"alg": "HS256", "typ": "JWT"}) + b"." + seg(r["claims"])
        sig = HMACAlgorithm(HMACAlgorithm.SHA256).sign(signing_input, r["secret"].encode())
        out.append((signing_input + b"." + base64url_encode(sig)).decode())
print(json.dumps(out))
"#;

/// Runs PyJWT once for all `requests`; answers in order (keys as JSON objects, tokens as
/// strings). Panics with a hint when Python or PyJWT is missing.
pub fn mint(requests: &[MintRequest]) -> Vec<Value> {
    let input: Vec<Value> = requests
        .iter()
        .map(|r| match r {
            MintRequest::RsaKey { kid } => json!({"op": "rsa_key", "kid": kid}),
            MintRequest::Sign {
                alg,
                key,
                headers,
                claims,
            } => json!({"op": "sign", "alg": alg, "key": key, "headers": headers, "claims": claims}),
            MintRequest::HmacWith { secret, claims } => {
                json!({"op": "hmac_with", "secret": secret, "claims": claims})
            }
        })
        .collect();
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(MINT_SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is required to mint test tokens");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(Value::Array(input).to_string().as_bytes())
        .expect("writing to python3");
    let out = child.wait_with_output().expect("running python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "minting tokens with PyJWT failed (install it: python3 -m pip install 'pyjwt[crypto]'; scripts/check does):\n{stderr}"
    );
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).expect("PyJWT helper output is JSON");
    assert_eq!(answers.len(), requests.len());
    answers
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
