//! Differential fuzzing of the edge's HTTP/1 request reading (issue 14, `scripts/fuzz`):
//! the lean loop's parser and the smuggling guard (`framing.rs`) against httparse and hyper,
//! on heads built from the pieces attackers combine (duplicate and conflicting framing
//! fields, odd separators, bare CR and LF, obs-fold, odd versions and targets) and then
//! mutated byte by byte.
//!
//! What must hold, for any bytes:
//! - nothing panics;
//! - a request the lean loop serves is one httparse and hyper read the same way (method,
//!   target, every field), with no body, and that the guard passes;
//! - where the guard passes a head and hyper takes it too, both read the same body framing;
//! - through the guard, hyper serves exactly the requests the client sent, however the body
//!   before the second request is framed: never a request made of body bytes.
//!
//! `PROPTEST_CASES` sets the number of cases (`scripts/fuzz` runs many more than CI).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{parse, Next};
use crate::listen::framing::{check_head, BodyKind, Guarded};

/// A request as a parser read it: method, target, fields in order, body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

/// One header line: name, separator, value, line end. Mostly well formed, as real heads
/// are, so the interesting combinations of framing fields are reached.
fn field() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        6 => pick(&["Content-Length", "content-length", "Transfer-Encoding", "Connection", "X-A", "Accept"]),
        2 => pick(&["Host", "host", "Expect", "Upgrade", "X-Forwarded-For"]),
        1 => pick(&["Bad Name", "X\u{7f}", "", "X:Y"]),
    ];
    let sep = prop_oneof![8 => Just(": "), 1 => pick(&[":", " : ", ":\t", ": \t"])];
    let value = prop_oneof![
        4 => pick(&["0", "5", "chunked", "close", "keep-alive", "edge.example", "text/plain"]),
        2 => pick(&[
            "05", "+5", " 5", "5, 5", "5,6", "-1", "99999999999999999999", "Chunked",
            "gzip, chunked", "chunked, gzip", "chunked,", "identity", "upgrade",
            "Upgrade, close", "websocket", "100-continue", "edge.example:8080",
        ]),
        1 => pick(&["a\u{7f}b", "", "caf\u{e9}"]),
    ];
    let end = prop_oneof![12 => Just("\r\n"), 1 => pick(&["\n", "\r", "\r\n \tfolded\r\n"])];
    (name, sep, value, end).prop_map(|(n, s, v, e)| format!("{n}{s}{v}{e}").into_bytes())
}

/// A whole request head.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        8 => pick(&["GET", "POST", "HEAD", "PUT", "DELETE"]),
        1 => pick(&["CONNECT", "get", "G@T", ""]),
    ];
    let target = prop_oneof![
        8 => pick(&["/", "/open/a", "/open/a?x=1&y=%20", "/%zz"]),
        1 => pick(&["*", "http://edge.example/x", "edge.example:443", "/caf\u{e9}", "/a b", ""]),
    ];
    let version = prop_oneof![
        12 => Just("HTTP/1.1"),
        2 => Just("HTTP/1.0"),
        1 => pick(&["HTTP/2.0", "http/1.1", "HTTP/1.1 "]),
    ];
    let line_end = prop_oneof![12 => Just("\r\n"), 1 => Just("\n")];
    let fields = proptest::collection::vec(field(), 0..6);
    let final_end = prop_oneof![12 => Just("\r\n"), 1 => Just("\n")];
    let hosts = prop_oneof![8 => Just(1usize), 1 => Just(0usize), 1 => Just(2usize)];
    (method, target, version, line_end, hosts, fields, final_end).prop_map(
        |(m, t, v, le, hosts, fields, fe)| {
            let mut out = format!("{m} {t} {v}{le}").into_bytes();
            // Most heads carry one Host, as real ones do.
            for _ in 0..hosts {
                out.extend_from_slice(b"Host: edge.example\r\n");
            }
            for f in fields {
                out.extend_from_slice(&f);
            }
            out.extend_from_slice(fe.as_bytes());
            out
        },
    )
}

/// A head, then a few bytes overwritten or inserted anywhere in it.
fn mutated_head() -> impl Strategy<Value = Vec<u8>> {
    let edits = proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<bool>()), 0..3);
    (head(), edits).prop_map(|(mut h, edits)| {
        for (at, byte, insert) in edits {
            let i = at.index(h.len() + 1);
            if insert || i == h.len() {
                h.insert(i, byte);
            } else {
                h[i] = byte;
            }
        }
        h
    })
}

/// What httparse (strict, as the lean loop configures it) reads of `bytes`: the head's
/// length and the request.
fn httparse_reads(bytes: &[u8]) -> Option<(usize, Seen)> {
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => Some((
            len,
            Seen {
                method: req.method?.to_string(),
                // As `http::Uri` reads it, which is what lean and hyper hand on (a `#fragment`
                // is dropped, for one).
                target: req.path?.parse::<http::Uri>().ok()?.to_string(),
                fields: grouped(
                    req.headers
                        .iter()
                        .map(|f| (f.name.to_ascii_lowercase(), f.value.to_vec())),
                ),
                body: Vec::new(),
            },
        )),
        _ => None,
    }
}

/// Fields in the order an `http::HeaderMap` iterates them (what lean and hyper hand on):
/// names in the order they first appear, a repeated name's values together, in wire order.
fn grouped(fields: impl Iterator<Item = (String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, value) in fields {
        match out.iter().rposition(|(n, _)| *n == name) {
            Some(at) => out.insert(at + 1, (name, value)),
            None => out.push((name, value)),
        }
    }
    out
}

fn seen_of_lean(req: &http::Request<http_body_util::Empty<bytes::Bytes>>) -> Seen {
    Seen {
        method: req.method().to_string(),
        target: req.uri().to_string(),
        fields: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: Vec::new(),
    }
}

/// Every request hyper's HTTP/1 server serves from `bytes` (sent, then the write side
/// closed), optionally read through the guard, with the bodies it read.
fn hyper_serves(bytes: &[u8], guarded: bool) -> Vec<Seen> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let record = record.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes().to_vec());
                if let Ok(body) = body {
                    record.lock().unwrap().push(Seen {
                        method: parts.method.to_string(),
                        target: parts.uri.to_string(),
                        fields: parts
                            .headers
                            .iter()
                            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                            .collect(),
                        body,
                    });
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(
                    http_body_util::Empty::<bytes::Bytes>::new(),
                ))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.half_close(true);
        let conn = async move {
            if guarded {
                let io = TokioIo::new(Guarded::new(server, Duration::from_secs(5)));
                let _ = builder.serve_connection(io, service).await;
            } else {
                let _ = builder.serve_connection(TokioIo::new(server), service).await;
            }
        };
        let talk = async {
            client.write_all(bytes).await.unwrap();
            client.shutdown().await.unwrap();
            let mut answers = Vec::new();
            let _ = client.read_to_end(&mut answers).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(conn, talk) }).await;
        let out = seen.lock().unwrap().clone();
        out
    })
}

/// A body for `kind`: exactly `n` bytes, or a chunked encoding of `content` with chunk
/// extensions and a trailer, as hyper and the guard must both read it.
fn body_for(kind: BodyKind, content: &[u8], chunk: usize) -> Vec<u8> {
    match kind {
        BodyKind::None => Vec::new(),
        BodyKind::Length(n) => content.iter().copied().cycle().take(n as usize).collect(),
        BodyKind::Chunked => {
            let mut out = Vec::new();
            for (i, c) in content.chunks(chunk.max(1)).enumerate() {
                let ext = if i % 2 == 1 { ";ext=1" } else { "" };
                out.extend_from_slice(format!("{:x}{ext}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
            out
        }
    }
}

/// Body content an attacker would hide a request in.
fn smuggled_content() -> impl Strategy<Value = Vec<u8>> {
    let hidden = pick(&[
        "GET /smuggled HTTP/1.1\r\nHost: edge.example\r\n\r\n",
        "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: edge.example\r\n\r\n",
        "\r\n\r\nPOST /smuggled HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "hello",
    ]);
    (hidden, proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(h, tail)| {
        let mut b = h.as_bytes().to_vec();
        b.extend_from_slice(&tail);
        b
    })
}

const SECOND: &[u8] = b"GET /second HTTP/1.1\r\nHost: edge.example\r\n\r\n";

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// The lean loop serves only what httparse and hyper read the same way, bodiless, and
    /// what the guard passes; framing the guard passes is the framing hyper reads.
    #[test]
    fn fuzz_lean_parser_agrees_with_httparse_and_hyper(h in prop_oneof![3 => head(), 1 => mutated_head()]) {
        // The guard checks a head up to its empty line; a mutation may leave bytes after it.
        let head_len = h.windows(4).position(|w| w == b"\r\n\r\n").map_or(h.len(), |at| at + 4);
        let checked = check_head(&h[..head_len]);
        let mut buf = BytesMut::from(&h[..]);
        match parse(&mut buf) {
            Next::Serve { req, .. } => {
                let (len, by_httparse) = httparse_reads(&h).expect("lean served what httparse refuses");
                prop_assert_eq!(h.len() - buf.len(), len, "lean consumed a different head length");
                let lean = seen_of_lean(&req);
                prop_assert_eq!(&lean.method, &by_httparse.method);
                prop_assert_eq!(&lean.target, &by_httparse.target);
                prop_assert_eq!(&lean.fields, &by_httparse.fields);
                prop_assert_eq!(checked.map(|c| c.body), Ok(BodyKind::None));
                let by_hyper = hyper_serves(&h[..len], false);
                prop_assert_eq!(by_hyper.len(), 1, "hyper did not serve what lean served");
                prop_assert_eq!(&by_hyper[0].method, &lean.method);
                prop_assert_eq!(&by_hyper[0].target, &lean.target);
                prop_assert_eq!(&by_hyper[0].fields, &lean.fields);
                prop_assert!(by_hyper[0].body.is_empty());
            }
            Next::More | Next::HandOver => {
                // Nothing consumed: hyper gets every byte.
                prop_assert_eq!(&buf[..], &h[..]);
            }
        }
        if let Ok(head) = checked {
            if head.upgrade {
                return Ok(());
            }
            let content = b"0123456789abcdef";
            let body = body_for(head.body, content, 5);
            let mut wire = h[..head_len].to_vec();
            wire.extend_from_slice(&body);
            let by_hyper = hyper_serves(&wire, false);
            if let Some(first) = by_hyper.first() {
                let want: Vec<u8> = match head.body {
                    BodyKind::None => Vec::new(),
                    BodyKind::Length(n) => content.iter().copied().cycle().take(n as usize).collect(),
                    BodyKind::Chunked => content.to_vec(),
                };
                prop_assert_eq!(&first.body, &want, "the guard and hyper frame the body differently");
            }
        }
    }

    /// Through the guard, hyper serves the first request and then the second, never one made
    /// of body bytes, whatever the body hides and however it is framed.
    #[test]
    fn fuzz_guard_never_lets_body_bytes_become_a_request(
        framing in pick(&["length", "chunked", "none"]),
        content in smuggled_content(),
        chunk in 1usize..24,
    ) {
        let (kind, field) = match framing {
            "length" => (BodyKind::Length(content.len() as u64), format!("Content-Length: {}\r\n", content.len())),
            "chunked" => (BodyKind::Chunked, "Transfer-Encoding: chunked\r\n".to_string()),
            _ => (BodyKind::None, String::new()),
        };
        let mut wire = format!("POST /first HTTP/1.1\r\nHost: edge.example\r\n{field}\r\n").into_bytes();
        if kind != BodyKind::None {
            wire.extend_from_slice(&body_for(kind, &content, chunk));
        }
        wire.extend_from_slice(SECOND);
        let served = hyper_serves(&wire, true);
        let targets: Vec<&str> = served.iter().map(|s| s.target.as_str()).collect();
        prop_assert_eq!(targets, vec!["/first", "/second"]);
        if kind != BodyKind::None {
            prop_assert_eq!(&served[0].body, &content);
        }
    }

    /// Any bytes at all: nothing panics, and what the guard lets hyper serve is never more
    /// than what hyper alone would serve.
    #[test]
    fn fuzz_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = check_head(&bytes);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = parse(&mut buf);
        let guarded = hyper_serves(&bytes, true);
        let plain = hyper_serves(&bytes, false);
        prop_assert!(guarded.len() <= plain.len());
    }
}
