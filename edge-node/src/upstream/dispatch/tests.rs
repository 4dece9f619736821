use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tollgate_proto::model::Document;

use super::*;
use crate::phases::policy::Policies;
use crate::upstream::endpoint;
use crate::upstream::Clients;

/// An upstream answering `status` to everything, counting requests.
async fn upstream(status: u16, hits: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    hits.fetch_add(1, SeqCst);
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"hello")));
                    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

fn pool(targets: &[SocketAddr], retries: u32) -> UpstreamPool {
    let targets: Vec<String> = targets.iter().map(|a| format!("{{url: 'http://{a}'}}")).collect();
    let doc = format!(
        "upstreams: [{{name: be, tenant: acme, retries: {retries}, targets: [{}]}}]",
        targets.join(", ")
    );
    let spec = Document::parse(&doc).unwrap().upstreams.remove(0);
    UpstreamPool::compile(&spec, &mut Clients::default()).unwrap()
}

/// What the proxy would pass for a plain request from 10.0.0.1 to `pool`.
fn dispatch(pool: &UpstreamPool) -> Dispatch<'_> {
    static REQUEST_ID: HeaderValue = HeaderValue::from_static("rid");
    static POLICIES: std::sync::LazyLock<Policies> = std::sync::LazyLock::new(Policies::default);
    Dispatch {
        pool,
        headers: &*POLICIES,
        forward: Forward {
            strip_len: None,
            remote: "10.0.0.1:5000".parse().unwrap(),
            request_id: &REQUEST_ID,
            consumer: None,
            upgrade: None,
            client_tls: false,
            traceparent: None,
        },
    }
}

async fn call(pool: &UpstreamPool, req: Request<Full<Bytes>>) -> Result<StatusCode, ProxyError> {
    let d = dispatch(pool);
    let (resp, _) = send(req, &d).await?;
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    Ok(status)
}

fn request(method: Method, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("/x")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

#[test]
fn only_idempotent_requests_without_a_body_are_replayable() {
    for m in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
    ] {
        assert!(replayable(&request(m.clone(), b"")), "{m}");
        assert!(!replayable(&request(m.clone(), b"x")), "{m} with a body");
    }
    for m in [Method::POST, Method::PATCH, Method::CONNECT, Method::TRACE] {
        assert!(!replayable(&request(m.clone(), b"")), "{m}");
    }
    // A body of unknown length may hold bytes: not replayable.
    let body = http_body_util::StreamBody::new(futures::stream::empty::<Result<Frame<Bytes>, Infallible>>());
    assert!(!replayable(&Request::get("/").body(body).unwrap()));
}

#[tokio::test]
async fn a_refused_get_is_retried_on_another_target_a_post_is_not() {
    let hits = Arc::new(AtomicUsize::new(0));
    let live = upstream(200, hits.clone()).await;
    let dead = closed_port().await;
    let p = pool(&[dead, live], 1);
    // Round robin starts with the dead target: the GET fails there, then succeeds.
    assert_eq!(call(&p, request(Method::GET, b"")).await.unwrap(), StatusCode::OK);
    assert_eq!(hits.load(SeqCst), 1);
    // The dead target's turn again: the POST is not retried; the next one reaches the live one.
    let err = call(&p, request(Method::POST, b"")).await.unwrap_err();
    assert_eq!(err.code(), "upstream_error");
    assert_eq!(
        call(&p, request(Method::POST, b"")).await.unwrap(),
        StatusCode::OK
    );
    // Nor is a PUT with a body.
    assert_eq!(call(&p, request(Method::GET, b"")).await.unwrap(), StatusCode::OK);
    let err = call(&p, request(Method::PUT, b"data")).await.unwrap_err();
    assert_eq!(err.code(), "upstream_error");
    assert_eq!(hits.load(SeqCst), 3);

    // Without retries configured, a GET fails like anything else.
    let p = pool(&[dead, live], 0);
    assert_eq!(
        call(&p, request(Method::GET, b"")).await.unwrap_err().code(),
        "upstream_error"
    );
    // Retries never go back to a target already tried.
    let p = pool(&[dead], 3);
    assert_eq!(
        call(&p, request(Method::GET, b"")).await.unwrap_err().code(),
        "upstream_error"
    );
}

#[tokio::test]
async fn upstream_answers_are_never_retried_and_5xx_count_towards_ejection() {
    let (bad_hits, good_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let bad = upstream(503, bad_hits.clone()).await;
    let good = upstream(200, good_hits.clone()).await;
    let p = pool(&[bad, good], 2);
    assert_eq!(
        call(&p, request(Method::GET, b"")).await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!((bad_hits.load(SeqCst), good_hits.load(SeqCst)), (1, 0));
    // Four more 503s in a row eject the bad target; then everything goes to the good one.
    for _ in 0..30 {
        call(&p, request(Method::GET, b"")).await.unwrap();
    }
    assert_eq!(bad_hits.load(SeqCst), endpoint::EJECT_AFTER as usize);
    assert!(p.balancer.endpoint(0).is_ejected(crate::clock::now()));
}

#[tokio::test]
async fn all_targets_ejected_is_no_healthy_upstream() {
    let dead = closed_port().await;
    let p = pool(&[dead], 0);
    for _ in 0..endpoint::EJECT_AFTER {
        assert_eq!(
            call(&p, request(Method::GET, b"")).await.unwrap_err().code(),
            "upstream_error"
        );
    }
    let err = call(&p, request(Method::GET, b"")).await.unwrap_err();
    assert_eq!(err.code(), "no_healthy_upstream");
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn requests_count_in_flight_until_the_answer_body_ends() {
    let live = upstream(200, Arc::new(AtomicUsize::new(0))).await;
    let p = pool(&[live], 0);
    let d = dispatch(&p);
    let (resp, _) = send(request(Method::GET, b""), &d).await.unwrap();
    assert_eq!(p.balancer.endpoint(0).in_flight(), 1);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    assert_eq!(p.balancer.endpoint(0).in_flight(), 0);
    // Dropped unread, it ends too.
    let (resp, _) = send(request(Method::GET, b""), &d).await.unwrap();
    drop(resp);
    assert_eq!(p.balancer.endpoint(0).in_flight(), 0);
}

#[tokio::test]
async fn a_timeout_while_the_client_still_uploads_is_not_the_targets_fault() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let doc = format!(
        "upstreams: [{{name: be, tenant: acme, targets: [{{url: 'http://{addr}'}}], timeouts: {{request: 100ms}}}}]"
    );
    let spec = Document::parse(&doc).unwrap().upstreams.remove(0);
    let p = UpstreamPool::compile(&spec, &mut Clients::default()).unwrap();
    let d = dispatch(&p);
    // A body that never ends (a client trickling its upload).
    let trickle =
        http_body_util::StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, Infallible>>());
    let err = send(Request::post("/x").body(trickle).unwrap(), &d)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "upstream_timeout");
    assert_eq!(p.balancer.endpoint(0).failures(), 0);
    // The whole request sent and no answer: that one counts.
    let err = send(request(Method::POST, b"complete"), &d).await.unwrap_err();
    assert_eq!(err.code(), "upstream_timeout");
    assert_eq!(p.balancer.endpoint(0).failures(), 1);
}

#[test]
fn a_replayed_request_keeps_its_head_and_extensions() {
    #[derive(Clone, Debug, PartialEq)]
    struct Mark(u8);
    let mut req = Request::put("http://h/x?q=1")
        .header("x-a", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut().insert(Mark(7));
    let (parts, _) = req.into_parts();
    for _ in 0..2 {
        let again = replay(&parts);
        assert_eq!(again.method(), Method::PUT);
        assert_eq!(again.uri(), "http://h/x?q=1");
        assert_eq!(again.headers()["x-a"], "1");
        assert_eq!(again.extensions().get::<Mark>(), Some(&Mark(7)));
        assert!(again.body().is_end_stream());
    }
}

/// Connections go back to the target once the answer was read; not when the answer came
/// while the client's body was still being sent (the connection is still busy with it).
#[tokio::test]
async fn connections_are_reused_only_after_the_whole_exchange() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers each request as soon as its head arrives and keeps reading, whatever follows
    // (as an upstream that answers early yet keeps the connection does).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let p = pool(&[addr], 0);
    let endpoint = p.balancer.endpoint(0).clone();
    // Requests with a body go through hyper's client (bodiless GETs take the lean path).
    assert_eq!(
        call(&p, request(Method::POST, b"complete")).await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(
        endpoint.idle().len(),
        1,
        "a finished exchange gives its connection back"
    );

    let d = dispatch(&p);
    // A body that never ends, answered before it does.
    let trickle =
        http_body_util::StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, Infallible>>());
    let (resp, _) = send(Request::post("/x").body(trickle).unwrap(), &d)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    assert_eq!(
        endpoint.idle().len(),
        0,
        "a connection still sending the request was kept"
    );
}
