//! TLS through a real edge process fed by a real control plane, with certificates made at
//! test time (rcgen) and their keys set as secrets through the CLI. Each test starts its own
//! control plane and edge ([`fixture`]) and shows one behaviour:
//!
//! - the edge serves the certificate of each SNI from the config (exact and wildcard hosts)
//!   and refuses unknown names;
//! - it speaks h2 and HTTP/1.1 by ALPN and tells the upstream the request came over https;
//! - it reaches https upstreams only when their certificate verifies;
//! - the private keys never show in `get` or `export`, and the edge keeps them owner-only;
//! - it refuses a rotated key until its certificate follows, then serves the new pair
//!   without a restart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tollgate_integration_tests::edge::{send, EdgeNode, Reply, Upstream};
use tollgate_integration_tests::tls::{alpn, connect, https_upstream, served_certificate, Leaf, TestCa};
use tollgate_integration_tests::{wait_for, Sandbox};

const HOST_A: &str = "a.tls.test";
const HOST_B: &str = "b.tls.test";

/// The whole config: certificates `a` (host A) and `b` (host B and `*.b.tls.test`), a plain
/// upstream for `/`, and https upstreams on `secure_up` with each way of trusting it.
fn config(
    a: &Leaf,
    b: &Leaf,
    plain: SocketAddr,
    secure_up: SocketAddr,
    up_ca: &str,
    other_ca: &str,
) -> String {
    let https = format!("https://{secure_up}");
    let service = |name: &str, path: &str| json!({"name": name, "tenant": "t", "upstream": name, "routes": [{"paths": [path]}]});
    json!({
        "tenants": [{"name": "t"}],
        "certificates": [
            {"name": "a", "tenant": "t", "hosts": [HOST_A], "cert_pem": a.cert_pem, "key_secret": "a-key"},
            {"name": "b", "tenant": "t", "hosts": [HOST_B, "*.b.tls.test"], "cert_pem": b.cert_pem, "key_secret": "b-key"},
        ],
        "upstreams": [
            {"name": "plain", "tenant": "t", "targets": [{"url": format!("http://{plain}")}]},
            // The target's IP is in the upstream's certificate; its CA is named.
            {"name": "secure", "tenant": "t", "targets": [{"url": https}], "tls": {"ca_pem": up_ca}},
            // Verified under another name (SNI and check), same CA.
            {"name": "renamed", "tenant": "t", "targets": [{"url": https}],
             "tls": {"ca_pem": up_ca, "server_name": "upstream.tls.test"}},
            // The default roots do not know the test CA.
            {"name": "untrusted", "tenant": "t", "targets": [{"url": https}]},
            // Another CA than the upstream's.
            {"name": "wrong-ca", "tenant": "t", "targets": [{"url": https}], "tls": {"ca_pem": other_ca}},
            {"name": "insecure", "tenant": "t", "targets": [{"url": https}], "tls": {"insecure_skip_verify": true}},
        ],
        "services": [
            service("plain", "/"),
            service("secure", "/secure"),
            service("renamed", "/renamed"),
            service("untrusted", "/untrusted"),
            service("wrong-ca", "/wrong-ca"),
            service("insecure", "/insecure"),
        ],
    })
    .to_string()
}

fn set_secret(sb: &Sandbox, name: &str, pem: &str) {
    sb.cli_with_stdin(0, &["secret", "set", name, "--tenant", "t"], Some(pem))
        .ok();
}

fn apply(sb: &Sandbox, file: &str, doc: &str) {
    let path = sb.file(file, doc);
    sb.cli(0, &["apply", "-f", &path]).ok();
}

/// A request to the plain proxy listener, off the async workers (the https upstream runs
/// on them).
async fn plain_get(addr: SocketAddr, path: &str) -> Reply {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || send(addr, "GET", &path, &[], b""))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no answer from the proxy listener"))
}

/// Waits (at most `within`) until a handshake for `sni` presents `want`; returns how long.
async fn wait_for_certificate(
    addr: SocketAddr,
    sni: &str,
    ca: &TestCa,
    want: &Leaf,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(s) = connect(addr, sni, &ca.der(), &[]).await {
            if served_certificate(&s) == want.der {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < within,
            "the edge did not serve the expected certificate for {sni} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `cluster status` shows a NACK from edge `node_id`; returns it.
async fn wait_for_nack(sb: &Sandbox, node_id: &str, within: Duration) -> String {
    let started = Instant::now();
    loop {
        let out = sb.cli(0, &["cluster", "status", "-o", "json"]).ok();
        let status: Value = serde_json::from_str(&out.stdout).expect("status is JSON");
        let nack = status["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["node_id"] == node_id)
            .and_then(|e| e["last_nack"].as_str())
            .unwrap_or_default();
        if !nack.is_empty() {
            return nack.to_string();
        }
        assert!(
            started.elapsed() < within,
            "no NACK from {node_id} within {within:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn upstream_headers(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    v["headers"].clone()
}

/// One control plane and one edge with a TLS listener, fed [`config`]: the keys of `a` and
/// `b` are set as secrets before the config that names them, and the fixture is ready once
/// a handshake for host A presents `a`. Each test starts its own.
struct Fixture {
    sb: Sandbox,
    edge: EdgeNode,
    /// The edge's TLS listener.
    tls: SocketAddr,
    /// The CA of `a` and `b` (and the wrong CA for the `wrong-ca` upstream).
    ca: TestCa,
    a: Leaf,
    b: Leaf,
    /// The CA of the https upstream's certificate.
    up_ca: TestCa,
    /// The https upstream (an echo presenting `upstream.tls.test` and `127.0.0.1`).
    secure_up: SocketAddr,
    plain: Upstream,
}

async fn fixture() -> Fixture {
    let ca = TestCa::new("edge test CA");
    let (a, b) = (ca.leaf(&[HOST_A]), ca.leaf(&[HOST_B, "*.b.tls.test"]));
    let up_ca = TestCa::new("upstream test CA");
    let secure_up = https_upstream(&up_ca.leaf(&["upstream.tls.test", "127.0.0.1"])).await;
    let plain = Upstream::start();

    let sb = Sandbox::cluster(1);
    apply(&sb, "tenant.yaml", "tenants: [{name: t}]");
    set_secret(&sb, "a-key", &a.key_pem);
    set_secret(&sb, "b-key", &b.key_pem);
    let doc = config(&a, &b, plain.addr, secure_up, &up_ca.pem(), &ca.pem());
    apply(&sb, "config.json", &doc);
    let edge = EdgeNode::start_tls(&sb, "edge-tls");
    let tls = edge.tls.expect("a tls listener");
    wait_for_certificate(tls, HOST_A, &ca, &a, Duration::from_secs(10)).await;
    Fixture {
        sb,
        edge,
        tls,
        ca,
        a,
        b,
        up_ca,
        secure_up,
        plain,
    }
}

impl Fixture {
    /// The certificate the edge presents for `sni`; panics if the handshake fails.
    async fn served(&self, sni: &str) -> CertificateDer<'static> {
        let stream = connect(self.tls, sni, &self.ca.der(), &[])
            .await
            .unwrap_or_else(|e| panic!("no handshake for {sni}: {e}"));
        served_certificate(&stream)
    }

    /// The fixture's config with `a` as host A's certificate.
    fn config_with(&self, a: &Leaf) -> String {
        let (up_ca, ca) = (self.up_ca.pem(), self.ca.pem());
        config(a, &self.b, self.plain.addr, self.secure_up, &up_ca, &ca)
    }
}

/// The edge presents the certificate of each SNI, matching exact and wildcard hosts, and
/// refuses a handshake for a name no certificate covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sni_gets_its_certificate_and_unknown_names_are_refused() {
    let f = fixture().await;
    assert_eq!(f.served(HOST_B).await, f.b.der);
    assert_eq!(f.served("x.b.tls.test").await, f.b.der);
    assert_eq!(f.served(HOST_A).await, f.a.der);
    let refused = connect(f.tls, "unknown.tls.test", &f.ca.der(), &[]).await;
    assert!(refused.is_err(), "a handshake for an unknown name succeeded");
}

/// ALPN picks h2 or HTTP/1.1 as the client offers, the request is answered over that
/// protocol, and the upstream hears `x-forwarded-proto: https` (and the SNI's host); over
/// the plain listener it still hears `http`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_picks_h2_or_http1_and_the_upstream_hears_https() {
    let f = fixture().await;

    // ALPN h2: an h2-capable client over TLS.
    let stream = connect(f.tls, HOST_A, &f.ca.der(), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn(&stream), b"h2");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("https://{HOST_A}/over-h2"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(
        (resp.status(), resp.version()),
        (StatusCode::OK, http::Version::HTTP_2)
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let headers = upstream_headers(&body);
    assert_eq!(headers["x-forwarded-proto"], "https", "{headers}");
    assert_eq!(headers["x-forwarded-host"], HOST_A, "{headers}");

    // ALPN http/1.1 (with SNI B).
    let stream = connect(f.tls, HOST_B, &f.ca.der(), &[b"http/1.1"]).await.unwrap();
    assert_eq!(alpn(&stream), b"http/1.1");
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/over-h1")
        .header("host", HOST_B)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = h1.send_request(req).await.unwrap();
    assert_eq!(
        (resp.status(), resp.version()),
        (StatusCode::OK, http::Version::HTTP_11)
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(upstream_headers(&body)["x-forwarded-proto"], "https");

    // The plain listener still says http.
    let r = plain_get(f.edge.proxy, "/plain").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_headers()["x-forwarded-proto"], "http");
}

/// An https upstream is reached when its certificate verifies (named CA, another server
/// name under the same CA, or verification explicitly off) and answers 502
/// `upstream_error` when it does not (default roots, the wrong CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_reached_only_when_their_certificate_verifies() {
    let f = fixture().await;
    for path in ["/secure", "/renamed", "/insecure"] {
        let r = plain_get(f.edge.proxy, path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.json()["tls"], true, "{path}: {r:?}");
        assert_eq!(r.json()["path"], path);
    }
    for path in ["/untrusted", "/wrong-ca"] {
        let r = plain_get(f.edge.proxy, path).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (502, "upstream_error"),
            "{path}: {r:?}"
        );
    }
}

/// The private keys never show in `get certificate` or `export` (only the name of their
/// secret does), and the edge keeps the config it holds them in (`lkg.json`) sealed and
/// owner-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_keys_never_show_in_get_or_export_and_stay_owner_only_on_the_edge() {
    let f = fixture().await;
    for args in [
        &["get", "certificate", "a", "--tenant", "t", "-o", "json"][..],
        &["export"][..],
    ] {
        let out = f.sb.cli(0, args).ok();
        assert!(out.stdout.contains("key_secret"), "{args:?}: {}", out.stdout);
        assert!(
            !out.stdout.contains("PRIVATE KEY"),
            "{args:?} shows a private key"
        );
    }
    // Saved (atomically, by rename) just after the config is applied, so it may trail
    // the first handshake by a moment.
    let lkg = f.edge.dir.join("lkg.json");
    let meta = wait_for("the edge to save lkg.json", Duration::from_secs(5), || {
        std::fs::metadata(&lkg).ok()
    });
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", lkg.display());
    }
    #[cfg(not(unix))]
    assert!(meta.is_file(), "{}", lkg.display());
    let text = std::fs::read_to_string(&lkg).unwrap();
    assert!(text.contains("\"sealed\""), "{text}");
    assert!(
        !text.contains("PRIVATE KEY"),
        "lkg.json holds a private key in the clear"
    );
}

/// Rotation: a new key, then its certificate. Between the two the edge refuses the
/// mismatched pair (a NACK that names the certificate and shows no key) and keeps serving
/// the old one; after the apply the new one is served within 2 s, without a restart, and
/// the other certificate is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_refused_until_its_certificate_follows_and_needs_no_restart() {
    let mut f = fixture().await;
    let a2 = f.ca.leaf(&[HOST_A]);
    set_secret(&f.sb, "a-key", &a2.key_pem);
    let nack = wait_for_nack(&f.sb, "edge-tls", Duration::from_secs(5)).await;
    assert!(
        nack.contains("certificate t/a") && nack.contains("does not belong to the certificate"),
        "{nack}"
    );
    assert!(!nack.contains("PRIVATE KEY"), "{nack}");
    assert_eq!(f.served(HOST_A).await, f.a.der);

    apply(&f.sb, "rotated.json", &f.config_with(&a2));
    let took = wait_for_certificate(f.tls, HOST_A, &f.ca, &a2, Duration::from_secs(2)).await;
    eprintln!("rotated certificate served {took:?} after the apply");
    assert_eq!(f.served(HOST_B).await, f.b.der);
    assert!(f.edge.is_running());
}
