use std::any::TypeId;
use std::collections::HashMap;
use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::*;
use crate::body::{self, ClientBody};
use crate::listen::Handler;

/// Answers with who served the request (`x-served`), and a body naming the method, the path
/// and (on hyper's side) the request's body; `/stream` answers a body of unknown length.
#[derive(Clone)]
struct Echo;

fn answer(served: &'static str, method: &Method, path: &str, body: Bytes) -> Response<Body> {
    let text = format!("{method} {path} {}", String::from_utf8_lossy(&body));
    let mut resp = Response::new(body::full(text));
    resp.headers_mut()
        .insert("x-served", HeaderValue::from_static(served));
    resp
}

impl Handler for Echo {
    async fn handle<B: ClientBody + Unpin>(&self, _remote: SocketAddr, req: Request<B>) -> Response<Body> {
        // hyper hands over its own body type; the lean loop, an empty one.
        if TypeId::of::<B>() == TypeId::of::<Incoming>() {
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            let body = req.into_body().collect().await.map_err(Into::<BoxError>::into);
            return answer("hyper", &method, &path, body.unwrap().to_bytes());
        }
        if req.uri().path() == "/stream" {
            let frames = ["ab", "", "cde"].map(|s| Ok::<_, BoxError>(Frame::data(Bytes::from(s))));
            let mut resp = Response::new(body::stream(StreamBody::new(futures::stream::iter(frames))));
            resp.headers_mut()
                .insert("x-served", HeaderValue::from_static("lean"));
            return resp;
        }
        answer("lean", req.method(), req.uri().path(), Bytes::new())
    }
}

/// An edge-style listener with [`Echo`]; the sender stops it.
async fn start() -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(crate::listen::serve(
        "test",
        listener,
        Echo,
        stopped,
        crate::listen::Options {
            drain: Duration::from_secs(1),
            max_connections: 16,
            tls: None,
            send_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
        },
    ));
    (addr, stop)
}

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Reads one answer (`Content-Length` or chunked body; none after HEAD) off `stream`.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Answer {
    let mut chunk = [0u8; 4096];
    let mut fill = async |stream: &mut TcpStream, buf: &mut Vec<u8>| {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("no answer within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "the connection closed mid-answer: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let (len, status, headers) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(len) = resp.parse(buf).unwrap() {
            let headers = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect::<HashMap<_, _>>();
            break (len, resp.code.unwrap(), headers);
        }
        fill(stream, buf).await;
    };
    buf.drain(..len);
    let mut body = Vec::new();
    if head_only {
    } else if let Some(n) = headers.get("content-length") {
        let n: usize = n.parse().unwrap();
        while buf.len() < n {
            fill(stream, buf).await;
        }
        body.extend(buf.drain(..n));
    } else {
        assert_eq!(
            headers.get("transfer-encoding").map(String::as_str),
            Some("chunked")
        );
        loop {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                fill(stream, buf).await;
            }
            let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                fill(stream, buf).await;
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    Answer {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

/// A raw client on one connection, with what it read past the last answer.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).await.unwrap();
    }

    async fn read(&mut self, head_only: bool) -> Answer {
        read_answer(&mut self.stream, &mut self.buf, head_only).await
    }

    /// Sends `raw` (one request) and reads its answer.
    async fn ask(&mut self, raw: &[u8]) -> Answer {
        self.send(raw).await;
        self.read(raw.starts_with(b"HEAD ")).await
    }

    /// Whether the server closed the connection (within 5 s).
    async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

#[tokio::test]
async fn keep_alive_pipelining_head_and_chunked_answers_on_the_lean_loop() {
    let (addr, _stop) = start().await;
    let mut c = Client::connect(addr).await;
    // Two requests in one write (pipelined), then HEAD (of "HEAD /h "), then a body of
    // unknown length.
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await;
    for path in ["/a", "/b"] {
        let a = c.read(false).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, format!("GET {path} ").as_str())
        );
        assert_eq!(a.headers["x-served"], "lean");
        assert!(a.headers.contains_key("date"), "{:?}", a.headers);
        assert_eq!(a.headers["content-length"], a.body.len().to_string());
    }
    let a = c.ask(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        a.headers["content-length"], "8",
        "HEAD keeps the length of the body it omits"
    );
    let a = c.ask(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(a.body, "abcde");
    assert!(
        c.buf.is_empty(),
        "bytes after the last answer: {:?}",
        String::from_utf8_lossy(&c.buf)
    );
}

#[tokio::test]
async fn anything_else_goes_to_hyper_with_every_byte_read() {
    let (addr, _stop) = start().await;
    let mut c = Client::connect(addr).await;
    let a = c.ask(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(a.headers["x-served"], "lean");
    // A body: hyper from here on, and it reads the whole request.
    let a = c
        .ask(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(
        (a.headers["x-served"].as_str(), a.body.as_str()),
        ("hyper", "POST /p hello")
    );
    let a = c.ask(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(a.headers["x-served"], "hyper");

    // Each of these is hyper's from its first byte.
    for raw in [
        &b"GET /old HTTP/1.0\r\n\r\n"[..],
        b"GET /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        b"GET http://x/abs HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ] {
        let a = Client::connect(addr).await.ask(raw).await;
        assert_eq!(
            a.headers["x-served"],
            "hyper",
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // Malformed: hyper's own 400.
    let mut c = Client::connect(addr).await;
    let a = c.ask(b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n").await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn connection_close_and_drain_end_the_connection() {
    let (addr, stop) = start().await;
    let mut c = Client::connect(addr).await;
    let a = c
        .ask(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(a.headers["connection"], "close");
    assert!(
        c.closed().await,
        "the connection stayed open after Connection: close"
    );

    // An idle keep-alive connection closes as soon as the drain starts.
    let mut idle = Client::connect(addr).await;
    idle.ask(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    stop.send(true).unwrap();
    assert!(idle.closed().await, "an idle connection outlived the drain");
}
