//! TLS through a real edge process fed by a real control plane, with certificates made at
//! test time (rcgen): the edge serves the certificate of each SNI from the config (keys set
//! as secrets through the CLI), refuses unknown names, speaks h2 and HTTP/1.1 by ALPN, picks
//! up a rotated key and certificate without a restart, and reaches https upstreams only when
//! their certificate verifies.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tollgate_integration_tests::edge::{send, EdgeNode, Reply, Upstream};
use tollgate_integration_tests::tls::{alpn, connect, https_upstream, served_certificate, Leaf, TestCa};
use tollgate_integration_tests::Sandbox;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_termination_by_sni_alpn_rotation_and_https_upstreams() {
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

    // The certificate of each SNI; none for an unknown name.
    let served = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| served_certificate(s);
    assert_eq!(
        served(&connect(tls, HOST_B, &ca.der(), &[]).await.unwrap()),
        b.der
    );
    assert_eq!(
        served(&connect(tls, "x.b.tls.test", &ca.der(), &[]).await.unwrap()),
        b.der
    );
    assert_eq!(
        served(&connect(tls, HOST_A, &ca.der(), &[]).await.unwrap()),
        a.der
    );
    let refused = connect(tls, "unknown.tls.test", &ca.der(), &[]).await;
    assert!(refused.is_err(), "a handshake for an unknown name succeeded");

    // ALPN h2: an h2-only client over TLS; the upstream hears x-forwarded-proto https.
    let stream = connect(tls, HOST_A, &ca.der(), &[b"h2", b"http/1.1"])
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
    let stream = connect(tls, HOST_B, &ca.der(), &[b"http/1.1"]).await.unwrap();
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
    let r = plain_get(edge.proxy, "/plain").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_headers()["x-forwarded-proto"], "http");

    // https upstreams: reached when their certificate verifies, 502 when it does not.
    for path in ["/secure", "/renamed", "/insecure"] {
        let r = plain_get(edge.proxy, path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.json()["tls"], true, "{path}: {r:?}");
        assert_eq!(r.json()["path"], path);
    }
    for path in ["/untrusted", "/wrong-ca"] {
        let r = plain_get(edge.proxy, path).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (502, "upstream_error"),
            "{path}: {r:?}"
        );
    }

    // The private keys never show in get or export, and the edge keeps them owner-only.
    for args in [
        &["get", "certificate", "a", "--tenant", "t", "-o", "json"][..],
        &["export"][..],
    ] {
        let out = sb.cli(0, args).ok();
        assert!(out.stdout.contains("key_secret"), "{args:?}: {}", out.stdout);
        assert!(
            !out.stdout.contains("PRIVATE KEY"),
            "{args:?} shows a private key"
        );
    }
    let lkg = edge.dir.join("lkg.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&lkg).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", lkg.display());
    }

    // Rotation: a new key, then its certificate. Between the two the edge refuses the
    // mismatched pair and keeps serving the old one; after the apply the new one is served
    // within 2 s, without a restart.
    let a2 = ca.leaf(&[HOST_A]);
    set_secret(&sb, "a-key", &a2.key_pem);
    let nack = wait_for_nack(&sb, "edge-tls", Duration::from_secs(5)).await;
    assert!(
        nack.contains("certificate t/a") && nack.contains("does not belong to the certificate"),
        "{nack}"
    );
    assert!(!nack.contains("PRIVATE KEY"), "{nack}");
    assert_eq!(
        served(&connect(tls, HOST_A, &ca.der(), &[]).await.unwrap()),
        a.der
    );
    let doc = config(&a2, &b, plain.addr, secure_up, &up_ca.pem(), &ca.pem());
    apply(&sb, "rotated.json", &doc);
    let took = wait_for_certificate(tls, HOST_A, &ca, &a2, Duration::from_secs(2)).await;
    eprintln!("rotated certificate served {took:?} after the apply");
    assert_eq!(
        served(&connect(tls, HOST_B, &ca.der(), &[]).await.unwrap()),
        b.der
    );
    assert!(edge.is_running());
}
