//! A mock identity provider for sandbox tests, and tokens minted by a real JWT library.
//!
//! - [`MockServer`]: a loopback HTTP/1.1 server answering each request with a closure the
//!   test controls (a JWKS document the test rotates, an RFC 7662 introspection endpoint),
//!   recording every request it received. Stops when dropped.
//! - [`mint`]: runs Python's PyJWT (`pyjwt[crypto]`, installed by `scripts/check`) to make
//!   RSA keys with their JWKs and to sign tokens, so the edge is tested against tokens it did
//!   not produce itself. [`MintRequest::HmacWith`] forges an HS256 token keyed with arbitrary
//!   bytes (an RSA public key, for the algorithm-confusion attack) with PyJWT's own HMAC,
//!   since PyJWT refuses to use a PEM key as an HMAC secret.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// A request as the mock server received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the mock answers: status, extra headers, body (sent as JSON).
pub type Answer = (u16, Vec<(String, String)>, String);

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

pub struct MockServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl MockServer {
    pub fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the mock server");
        let addr = listener.local_addr().expect("mock server address");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (seen, handler, stop) = (seen2.clone(), handler.clone(), stop2.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &seen, &*handler, &stop);
                });
            }
        });
        MockServer { addr, seen, stop }
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("mock log poisoned").clone()
    }

    /// Stops answering: new connections are refused, kept-alive ones closed at their next
    /// request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }

    /// How many requests were received so far.
    pub fn hits(&self) -> usize {
        self.seen.lock().expect("mock log poisoned").len()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves requests on one connection (keep-alive) until the peer closes it or the server
/// stops (then the connection is closed without an answer, as a dead server's would be).
fn serve(
    conn: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    handler: &Handler,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let mut start = String::new();
        if reader.read_line(&mut start)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut parts = start.split_whitespace();
        let req = Seen {
            method: parts.next().unwrap_or_default().to_string(),
            path: parts.next().unwrap_or_default().to_string(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        seen.lock().expect("mock log poisoned").push(req.clone());
        let (status, extra, body) = handler(&req);
        let mut head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (n, v) in extra {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes())?;
        writer.write_all(body.as_bytes())?;
        writer.flush()?;
    }
}

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
