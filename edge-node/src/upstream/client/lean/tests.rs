use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::body;
use crate::upstream::endpoint::Endpoint;
use crate::upstream::target::Target;
use crate::upstream::Clients;

/// What the scripted upstream does with the next request it reads.
#[derive(Clone, Copy)]
enum Answer {
    /// Writes these bytes, a few at a time, and keeps the connection open.
    Send(&'static [u8]),
    /// Writes these bytes, then closes the connection.
    SendAndClose(&'static [u8]),
    /// Closes the connection without answering.
    Close,
}

/// A raw-socket upstream that answers each request head it reads with the next scripted
/// answer; counts the connections it accepted.
async fn scripted(answers: &[Answer]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(Mutex::new(answers.iter().copied().collect::<VecDeque<_>>()));
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.fetch_add(1, SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    // One request head.
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.clear();
                    let next = script.lock().unwrap().pop_front();
                    let (bytes, close) = match next {
                        Some(Answer::Send(b)) => (b, false),
                        Some(Answer::SendAndClose(b)) => (b, true),
                        Some(Answer::Close) | None => return,
                    };
                    // In small pieces, so that the reader meets every boundary mid-way.
                    for piece in bytes.chunks(7) {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_micros(50)).await;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

struct Setup {
    client: HttpClient,
    dest: Destination,
    endpoint: Arc<Endpoint>,
    connections: Arc<AtomicUsize>,
}

async fn setup(answers: &[Answer]) -> Setup {
    let (addr, connections) = scripted(answers).await;
    Setup {
        client: Clients::default().get(Duration::from_secs(1)),
        dest: Target::parse(&format!("http://{addr}")).unwrap().dest,
        endpoint: Arc::new(Endpoint::new(crate::clock::now())),
        connections,
    }
}

fn request(method: Method) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("/x?y=1")
        .body(body::full(Bytes::new()))
        .unwrap()
}

/// Status, body and trailers of one request's answer, read to the end.
async fn call(s: &Setup, method: Method) -> Result<(StatusCode, Bytes, Option<HeaderMap>), String> {
    let (resp, conn) = s
        .client
        .send(&s.dest, s.endpoint.idle(), request(method))
        .await
        .map_err(|e| crate::error::chain(&e))?;
    assert!(
        conn.is_none(),
        "the lean path's body gives its connection back itself"
    );
    assert!(
        matches!(resp.body(), UpstreamBody::Lean(_)),
        "not on the lean path"
    );
    let status = resp.status();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| crate::error::chain(&*e))?;
    let trailers = collected.trailers().cloned();
    Ok((status, collected.to_bytes(), trailers))
}

#[tokio::test]
async fn content_length_and_chunked_bodies_and_reuse() {
    let s = setup(&[
        Answer::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"),
        Answer::Send(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 9\r\n\r\n",
        ),
        Answer::Send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        Answer::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"),
        Answer::Send(b"HTTP/1.1 204 No Content\r\n\r\n"),
    ])
    .await;
    let (status, body, _) = call(&s, Method::GET).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(s.endpoint.idle().len(), 1);

    let (status, body, trailers) = call(&s, Method::GET).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(&body[..], b"abc0123456789abcdef");
    assert_eq!(trailers.unwrap()["x-sum"], "9");

    let (status, body, _) = call(&s, Method::DELETE).await.unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"ok"[..]),
        "a 100 before the answer is skipped"
    );

    // HEAD: no body whatever Content-Length says.
    let (_, body, _) = call(&s, Method::HEAD).await.unwrap();
    assert!(body.is_empty());
    let (status, body, _) = call(&s, Method::GET).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));

    assert_eq!(
        s.connections.load(SeqCst),
        1,
        "every answer ended cleanly: one connection"
    );
    assert_eq!(s.endpoint.idle().len(), 1);
}

#[tokio::test]
async fn connections_are_not_reused_when_the_answer_says_so_or_framing_is_unsure() {
    let s = setup(&[
        Answer::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"),
        // More bytes than the answer's length: the next answer would be misread.
        Answer::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"),
        // Both framings: chunked wins, the connection is not trusted after it.
        Answer::Send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        Answer::Send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        // No framing: the body runs to the connection's end.
        Answer::SendAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
    ])
    .await;
    for (i, want) in [&b"ok"[..], b"ok", b"ok", b"ok", b"until the end"]
        .into_iter()
        .enumerate()
    {
        let (_, body, _) = call(&s, Method::GET).await.unwrap();
        assert_eq!(&body[..], want, "answer {i}");
        assert_eq!(
            s.endpoint.idle().len(),
            0,
            "answer {i} left a connection for reuse"
        );
        assert_eq!(s.connections.load(SeqCst), i + 1);
    }
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    let s = setup(&[
        Answer::SendAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        Answer::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew"),
    ])
    .await;
    call(&s, Method::GET).await.unwrap();
    assert_eq!(s.endpoint.idle().len(), 1, "the answer itself did not say close");
    // Let the close arrive: the idle connection is now readable (at its end).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, body, _) = call(&s, Method::GET).await.unwrap();
    assert_eq!(&body[..], b"new");
    assert_eq!(s.connections.load(SeqCst), 2);
}

#[tokio::test]
async fn a_reused_connection_closed_as_the_request_went_out_is_retried_on_a_new_one() {
    let s = setup(&[
        Answer::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        // The upstream reads the second request and closes without a word (its idle
        // timeout struck as the request arrived).
        Answer::Close,
        Answer::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain"),
    ])
    .await;
    call(&s, Method::GET).await.unwrap();
    let (_, body, _) = call(&s, Method::GET).await.unwrap();
    assert_eq!(&body[..], b"again");
    assert_eq!(s.connections.load(SeqCst), 2);

    // On a fresh connection the same failure is the upstream's: no second try.
    let s = setup(&[
        Answer::Close,
        Answer::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    .await;
    let err = call(&s, Method::GET).await.unwrap_err();
    assert!(err.contains("closed before any answer"), "{err}");
    assert_eq!(s.connections.load(SeqCst), 1);
}

#[tokio::test]
async fn broken_answers_are_errors() {
    let cases: [(&'static [u8], &str); 7] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
            "Content-Length values differ",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
            "invalid Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "not the last",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "invalid chunk-size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n",
            "longer than its size",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "without an upgrade"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "invalid answer head"),
    ];
    for (answer, want) in cases {
        let s = setup(&[Answer::SendAndClose(answer)]).await;
        let err = call(&s, Method::GET).await.unwrap_err();
        assert!(err.contains(want), "{:?}: {err}", String::from_utf8_lossy(answer));
        assert_eq!(s.endpoint.idle().len(), 0);
    }
    // A body cut short.
    let s = setup(&[Answer::SendAndClose(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    )])
    .await;
    let err = call(&s, Method::GET).await.unwrap_err();
    assert!(err.contains("before the answer's body ended"), "{err}");
}

#[tokio::test]
async fn answer_heads_are_bounded() {
    static HUGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let huge = HUGE.get_or_init(|| {
        let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
        while h.len() <= MAX_HEAD {
            h.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        h
    });
    let s = setup(&[Answer::SendAndClose(huge)]).await;
    let err = call(&s, Method::GET).await.unwrap_err();
    assert!(
        err.contains("larger than 64 KiB") || err.contains("too many headers"),
        "{err}"
    );
}

#[test]
fn only_bodiless_idempotent_plain_requests_take_the_lean_path() {
    let plain = Target::parse("http://127.0.0.1:1").unwrap().dest;
    let tls = Target::parse("https://127.0.0.1:1").unwrap().dest;
    assert!(eligible(&plain, &request(Method::GET)));
    assert!(eligible(&plain, &request(Method::HEAD)));
    assert!(!eligible(&tls, &request(Method::GET)));
    assert!(!eligible(&plain, &request(Method::POST)));
    let with_body = Request::get("/").body(body::full("x")).unwrap();
    assert!(!eligible(&plain, &with_body));
    let mut upgrade = request(Method::GET);
    upgrade
        .headers_mut()
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    assert!(!eligible(&plain, &upgrade));
}

#[test]
fn request_heads_are_written_in_http_1_1() {
    let mut req = request(Method::GET);
    req.headers_mut()
        .insert("host", HeaderValue::from_static("up:8080"));
    req.headers_mut().append("x-many", HeaderValue::from_static("1"));
    req.headers_mut().append("x-many", HeaderValue::from_static("2"));
    assert_eq!(
        String::from_utf8(encode(&req)).unwrap(),
        "GET /x?y=1 HTTP/1.1\r\nhost: up:8080\r\nx-many: 1\r\nx-many: 2\r\n\r\n"
    );
}

#[test]
fn chunk_size_lines() {
    assert_eq!(chunk_size(b"1a\r").unwrap(), 26);
    assert_eq!(chunk_size(b"1A;name=value\r").unwrap(), 26);
    assert_eq!(chunk_size(b"0 ;x\r").unwrap(), 0);
    assert_eq!(chunk_size(b"ffffffffffffffff\r").unwrap(), u64::MAX);
    for bad in [
        &b"\r"[..],
        b"g\r",
        b"1a",
        b"1a x\r",
        b"11111111111111111\r",
        b"1\r\r",
        b"-1\r",
    ] {
        assert!(chunk_size(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[tokio::test]
async fn the_oldest_idle_connection_is_swept_once_the_upstream_closed_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let idle_conn = |io| Conn {
        io,
        buf: BytesMut::new(),
        client: 1,
        reused: true,
    };
    let older = TcpStream::connect(addr).await.unwrap();
    let (older_peer, _) = listener.accept().await.unwrap();
    let newer = TcpStream::connect(addr).await.unwrap();
    let (_newer_peer, _) = listener.accept().await.unwrap();
    let idle = crate::upstream::client::IdleList::default();
    let now = crate::clock::now();
    idle.lean.put(idle_conn(older), now);
    // The upstream closes the older one while it is idle.
    drop(older_peer);
    tokio::time::sleep(Duration::from_millis(50)).await;
    idle.lean.put(idle_conn(newer), now + 1);
    assert_eq!(idle.len(), 1, "the closed connection was kept");
    assert!(idle.lean.take(1, now + 2).is_some(), "the open one was lost");
}
