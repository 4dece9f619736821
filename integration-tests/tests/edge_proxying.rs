//! Proxying through a real edge process fed by a real control plane, one behaviour per test
//! (each with its own control plane, edge and upstream): header transforms, upstream
//! failures as JSON errors, header limits, server-sent events unbuffered, large uploads
//! streamed and request size limits, h2 from the client, and WebSocket upgrades.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_integration_tests::edge::EdgeNode;
use tollgate_integration_tests::{free_port, Sandbox};

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).boxed()
}

/// The size of `/big`'s answer.
const BIG: usize = 16 << 20;

/// An upstream with one behaviour per path.
async fn upstream(req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    Ok(match path.as_str() {
        "/sse" => {
            // Two events 800 ms apart: an edge that buffers delivers both at once.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: one\n\n")))).await;
                tokio::time::sleep(Duration::from_millis(800)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: two\n\n")))).await;
            });
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(full("late"))
        }
        "/big" => Response::new(full(vec![b'x'; BIG])),
        "/ws" => {
            let mut req = req;
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(full(""))
                .unwrap()
        }
        "/unhealthy" => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(full("sick"))
            .unwrap(),
        "/upload" => {
            let n = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            Response::new(full(serde_json::json!({ "received": n }).to_string()))
        }
        _ => Response::builder()
            .header("x-upstream-secret", "internal")
            .body(full(
                serde_json::json!({ "path": path, "headers": headers }).to_string(),
            ))
            .unwrap(),
    })
}

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tollgate_testkit::serve::http1(listener, None, upstream);
    addr
}

fn config(up: SocketAddr, dead: u16) -> String {
    format!(
        r#"
tenants: [{{name: t}}]
upstreams:
  - {{name: up, tenant: t, targets: [{{url: "http://{up}"}}], timeouts: {{connect: 1s, request: 1s}}}}
  - {{name: dead, tenant: t, targets: [{{url: "http://127.0.0.1:{dead}"}}]}}
  - {{name: sick, tenant: t, targets: [{{url: "http://{up}"}}], health: {{path: /unhealthy, interval: 200ms, unhealthy_after: 1}}}}
policies:
  - {{name: small, tenant: t, request_size: {{max_bytes: 1000}}}}
  - {{name: hdrs, tenant: t, headers: {{request: {{add: {{x-added: yes}}, remove: [x-drop]}}, response: {{remove: [x-upstream-secret], add: {{x-served-by: tollgate}}}}}}}}
services:
  - {{name: main, tenant: t, upstream: up, policies: [hdrs], routes: [{{paths: ["/"]}}]}}
  - {{name: limited, tenant: t, upstream: up, policies: [small], routes: [{{paths: ["/limited"], strip_prefix: true}}]}}
  - {{name: gone, tenant: t, upstream: dead, routes: [{{paths: ["/dead"]}}]}}
  - {{name: ill, tenant: t, upstream: sick, routes: [{{paths: ["/ill"]}}]}}
"#
    )
}

/// An HTTP/1.1 connection to the edge.
async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, String) {
    let mut send = h1(addr).await;
    let req = Request::get(path).header("host", "edge").body(full("")).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into())
}

fn error_code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {body}"))
        .to_string()
}

/// A control plane, an upstream with one behaviour per path, and an edge routing to it.
/// (The edge stops before the control plane: fields drop in order.)
struct Fixture {
    edge: EdgeNode,
    _sb: Sandbox,
}

impl Fixture {
    async fn start() -> Fixture {
        Self::start_with(&[]).await
    }

    /// With more `tollgate edge` flags.
    async fn start_with(args: &[&str]) -> Fixture {
        let up = start_upstream().await;
        let sb = Sandbox::cluster(1);
        let file = sb.file("config.yaml", &config(up, free_port()));
        sb.cli(0, &["apply", "-f", &file]).ok();
        let edge = EdgeNode::start_with_args(&sb, "edge-a", args);
        tollgate_integration_tests::wait_for("the edge to route", Duration::from_secs(10), || {
            let r = edge.request("GET", "/hello", &[]);
            (r.status == 200).then_some(())
        });
        Fixture { edge, _sb: sb }
    }
}

/// Request headers are added and removed, and response headers too, by a `headers` policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_transforms_apply_both_ways() {
    let fx = Fixture::start().await;
    let e = fx.edge.proxy;
    let mut send = h1(e).await;
    let req = Request::get("/hello")
        .header("host", "edge")
        .header("x-drop", "1")
        .body(full(""))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["x-served-by"], "tollgate");
    assert!(resp.headers().get("x-upstream-secret").is_none());
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["headers"]["x-added"], "yes");
    assert!(body["headers"].get("x-drop").is_none(), "{body}");
}

/// A refused connection is 502, a slow answer 504 within the request timeout, no healthy target 503; each a JSON error with a request id. A catch-all route still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_json_502_504_and_503() {
    let fx = Fixture::start().await;
    let e = fx.edge.proxy;
    let (status, headers, body) = get(e, "/dead").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::BAD_GATEWAY, "upstream_error")
    );
    assert!(headers.contains_key("x-request-id"));
    let started = Instant::now();
    let (status, _, body) = get(e, "/slow").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the request timeout (1s) was not applied"
    );
    // 503 when no target is healthy (the active check fails).
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (status, _, body) = get(e, "/ill").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the health check never took the target out: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(error_code(&body), "no_healthy_upstream");
    let (status, _, body) = get(e, "/nothing-here-but-main-catches-all").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Too many or too large request headers: 431 with a JSON error and a request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_are_431() {
    let fx = Fixture::start().await;
    let e = fx.edge.proxy;
    for (count, size) in [(80, 10), (5, 20_000)] {
        let mut b = Request::get("/hello").header("host", "edge");
        for i in 0..count {
            b = b.header(format!("x-h{i}"), "v".repeat(size));
        }
        let mut send = h1(e).await;
        let resp = send.send_request(b.body(full("")).unwrap()).await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{count} headers of {size} bytes"
        );
        assert!(resp.headers().contains_key("x-request-id"));
        let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).to_string();
        assert_eq!(error_code(&body), "headers_too_large");
    }
}

/// Server-sent events arrive as they are sent, not when the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_are_not_buffered() {
    let fx = Fixture::start().await;
    let e = fx.edge.proxy;
    let mut send = h1(e).await;
    let resp = send
        .send_request(
            Request::get("/sse")
                .header("host", "edge")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let started = Instant::now();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the first event was held back"
    );
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&second[..], b"data: two\n\n");
    assert!(started.elapsed() >= Duration::from_millis(600));
}

/// A 20 MiB upload streams through; the size policy answers 413 by length and while a chunked body streams, and lets a body at the limit through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_and_the_size_policy_answers_413() {
    let fx = Fixture::start().await;
    let e = fx.edge.proxy;
    let big = vec![b'x'; 20 << 20];
    let mut send = h1(e).await;
    let req = Request::post("/upload")
        .header("host", "edge")
        .body(full(big))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["received"],
        20 << 20
    );
    let mut send = h1(e).await;
    let req = Request::post("/limited/upload")
        .header("host", "edge")
        .body(full(vec![b'y'; 1001]))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).to_string();
    assert_eq!(error_code(&body), "body_too_large");
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..20)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'z'; 100]))))
        .collect();
    let streamed = StreamBody::new(futures::stream::iter(chunks)).boxed();
    let mut send = h1(e).await;
    let req = Request::post("/limited/upload")
        .header("host", "edge")
        .body(streamed)
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "a chunked body past the limit"
    );
    let mut send = h1(e).await;
    let req = Request::post("/limited/upload")
        .header("host", "edge")
        .body(full(vec![b'y'; 1000]))
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), StatusCode::OK);
}

/// h2 from the client (prior knowledge, plain TCP), HTTP/1.1 to the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_clients_reach_http1_upstreams() {
    let fx = Fixture::start().await;
    let e = fx.edge.proxy;
    let stream = TcpStream::connect(e).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://edge{}", "/via-h2"))
        .body(full(""))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["path"], "/via-h2");
}

/// A WebSocket-style upgrade: 101, then bytes both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_carry_bytes_both_ways() {
    let fx = Fixture::start().await;
    let e = fx.edge.proxy;
    let mut send = h1(e).await;
    let req = Request::get("/ws")
        .header("host", "edge")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(full(""))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "echo");
    let upgraded = hyper::upgrade::on(resp).await.expect("upgrade");
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"ping through the edge").await.unwrap();
    let mut buf = vec![0u8; 21];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping through the edge");
}

/// An upgraded tunnel through the edge at `addr`, its echo checked once.
async fn tunnel(addr: SocketAddr) -> TokioIo<hyper::upgrade::Upgraded> {
    let mut send = h1(addr).await;
    let req = Request::get("/ws")
        .header("host", "edge")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(full(""))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgrade"));
    echo(&mut io, b"hi").await;
    io
}

async fn echo(io: &mut TokioIo<hyper::upgrade::Upgraded>, msg: &[u8]) {
    io.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .expect("the echo within 5 s")
        .unwrap();
    assert_eq!(buf, msg);
}

/// `--upgrade-idle-timeout`: a tunnel that carries nothing is closed after it, one that
/// keeps talking stays open past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upgraded_connections_are_closed_busy_ones_kept() {
    let fx = Fixture::start_with(&["--upgrade-idle-timeout", "1s"]).await;
    let e = fx.edge.proxy;
    let (mut idle, mut busy) = (tunnel(e).await, tunnel(e).await);
    let opened = Instant::now();
    let idle_closed = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
        (n.map(|r| r.unwrap_or(0)), opened.elapsed())
    });
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        echo(&mut busy, b"still here").await;
    }
    let (n, after) = idle_closed.await.unwrap();
    assert_eq!(
        n.expect("the idle tunnel closed within 5 s"),
        0,
        "closed, not data"
    );
    assert!(after >= Duration::from_millis(900), "closed too early: {after:?}");
    assert!(
        opened.elapsed() > Duration::from_millis(2400),
        "the busy tunnel outlived the timeout"
    );
}

/// Tunnels hold their connection's slot: with `--max-connections 2` and two tunnels open, a
/// third connection is answered 503 at once (JSON, `Retry-After`, a request id) and closed;
/// once a tunnel closes, connections are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_count_against_max_connections() {
    let fx = Fixture::start_with(&["--max-connections", "2"]).await;
    let e = fx.edge.proxy;
    // The fixture's readiness probe connections must have closed first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = tunnel(e).await;
    let _second = tunnel(e).await;
    let ask = || async {
        let mut c = TcpStream::connect(e).await.unwrap();
        c.write_all(b"GET /hello HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer))
            .await
            .expect("answered and closed within 5 s")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    let refused = ask().await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    for part in ["retry-after: 1", "x-request-id: ", "\"code\":\"overloaded\""] {
        assert!(refused.contains(part), "{part} in {refused}");
    }
    drop(first);
    let served = wait_until_served(&ask).await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}

/// Asks (bounded) until the answer is not a 503.
async fn wait_until_served<F, Fut>(ask: &F) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = ask().await;
        if !a.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection flood far past the cap: every connection is answered (200 or 503) or closed
/// at once, none waits, and the edge's memory does not grow with the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_the_cap_is_answered_503_without_memory_growth() {
    let fx = Fixture::start_with(&["--max-connections", "8"]).await;
    let e = fx.edge.proxy;
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", fx.edge.pid().unwrap())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .to_string();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    // Eight slow clients hold every slot (a head never finished).
    let mut holders = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(e).await.unwrap();
        c.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap();
        holders.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let flood = |n: usize| async move {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                tokio::spawn(async move {
                    let mut c = TcpStream::connect(e).await.ok()?;
                    let _ = c.write_all(b"GET /hello HTTP/1.1\r\nHost: edge\r\n\r\n").await;
                    let mut answer = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut answer))
                        .await
                        .ok()?;
                    Some(answer.starts_with(b"HTTP/1.1 503"))
                })
            })
            .collect();
        let mut refused = 0;
        for t in tasks {
            refused += usize::from(t.await.unwrap() == Some(true));
        }
        refused
    };
    let warm = flood(200).await;
    let before = rss();
    let mut refused = warm;
    for _ in 0..5 {
        refused += flood(400).await;
    }
    let after = rss();
    eprintln!("503s: {refused} of 2200; RSS {before} -> {after} KiB");
    assert!(refused >= 2000, "most of the flood gets its 503: {refused}");
    assert!(after < before + 8 * 1024, "RSS grew from {before} to {after} KiB");
    drop(holders);
}

/// A graceful drain waits for tunnels too: after SIGTERM a tunnel still carries bytes, is
/// closed as the drain ends (5 s), and the edge then exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_keeps_tunnels_until_its_end_then_closes_them() {
    let mut fx = Fixture::start().await;
    let mut io = tunnel(fx.edge.proxy).await;
    let started = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || {
        let clean = fx.edge.terminate(Duration::from_secs(15));
        (clean, started.elapsed())
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    echo(&mut io, b"during the drain").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(8), io.read(&mut buf)).await;
    let closed_after = started.elapsed();
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "the tunnel was closed by the drain: {n:?}"
    );
    assert!(
        closed_after >= Duration::from_secs(3),
        "closed before the drain ended: {closed_after:?}"
    );
    let (clean, exited_after) = stopped.await.unwrap();
    assert!(clean, "the edge exited cleanly");
    assert!(exited_after < Duration::from_secs(8), "{exited_after:?}");
}

/// Slow read: a client that takes no answer byte for `--send-timeout` is cut off, on the lean
/// path (a GET) and on hyper's (a POST with a body), instead of holding its connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let fx = Fixture::start_with(&["--send-timeout", "1s"]).await;
    let e = fx.edge.proxy;
    for (what, head) in [
        (
            "lean",
            "GET /big HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n",
        ),
        (
            "hyper",
            "POST /big HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ),
    ] {
        let mut c = TcpStream::connect(e).await.unwrap();
        c.write_all(head.as_bytes()).await.unwrap();
        // Read nothing while the edge's send stalls past its timeout.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "{what}: the connection was not closed");
        assert!(
            got.len() < BIG,
            "{what}: the whole answer was sent after all ({} bytes)",
            got.len()
        );
    }
}
