//! Edge policies and limits through a real control plane and a real edge process: CORS
//! (preflights answered by the edge without credentials; grants only for allowed origins)
//! the body-read timeout for clients that stall mid-body (`--body-read-timeout`), the
//! header-read timeout for slowloris heads (`--header-read-timeout`), and request smuggling.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_integration_tests::edge::{EdgeNode, Reply, Upstream};
use tollgate_integration_tests::{wait_for, Sandbox};

fn config(upstream: &str) -> String {
    format!(
        r#"
tenants: [{{name: t}}]
upstreams: [{{name: up, tenant: t, targets: [{{url: "{upstream}"}}]}}]
policies:
  - {{name: web, tenant: t, cors: {{allow_origins: ["https://app.example.com"], allow_methods: [GET, PUT],
      allow_headers: [x-trace, authorization, apikey], expose_headers: [x-total], allow_credentials: true, max_age: 10m}}}}
services:
  - {{name: api, tenant: t, upstream: up, auth: [api_key], policies: [web],
      routes: [{{paths: ["/api"], methods: [GET, PUT, DELETE]}}]}}
  - {{name: open, tenant: t, upstream: up, routes: [{{paths: ["/open"]}}]}}
apps: [{{name: spa, tenant: t}}]
subscriptions: [{{app: spa, service: api, tenant: t, status: approved}}]
"#
    )
}

fn start(extra_args: &[&str]) -> (Sandbox, EdgeNode, Upstream) {
    let up = Upstream::start();
    let sb = Sandbox::cluster(1);
    sb.cli(0, &["apply", "-f", &sb.file("config.yaml", &config(&up.url()))])
        .ok();
    let edge = EdgeNode::start_with_args(&sb, "edge-a", extra_args);
    wait_for("the edge to route", Duration::from_secs(10), || {
        (edge.request("GET", "/open/ready", &[]).status == 200).then_some(())
    });
    (sb, edge, up)
}

const APP: &str = "https://app.example.com";

fn assert_no_grant(r: &Reply, what: &str) {
    for h in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
    ] {
        assert!(r.header(h).is_none(), "{what}: {h} in {r:?}");
    }
}

#[test]
fn cors_preflights_are_answered_by_the_edge_and_grants_follow_the_policy() {
    let (sb, edge, up) = start(&[]);
    let out = sb
        .cli(
            0,
            &["key", "create", "--app", "spa", "--tenant", "t", "-o", "json"],
        )
        .ok();
    let key = serde_json::from_str::<Value>(&out.stdout).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the key to reach the edge", Duration::from_secs(5), || {
        (edge.get_with_key("/api/x", &key).status == 200).then_some(())
    });
    let before = up.requests().len();

    // A preflight carries no credential: the edge answers it, the upstream never sees it.
    let r = edge.request(
        "OPTIONS",
        "/api/items/1",
        &[
            ("origin", APP),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-trace, apikey, content-type"),
        ],
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("x-trace, apikey, content-type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert!(r.header("x-request-id").is_some());

    // Refused preflights: 403 cors_denied, no grant.
    for (origin, method, headers) in [
        ("https://evil.example.com", "GET", ""),
        ("https://app.example.com.evil.test", "GET", ""),
        ("null", "GET", ""),
        (APP, "DELETE", ""),
        (APP, "GET", "x-secret"),
    ] {
        let mut h = vec![("origin", origin), ("access-control-request-method", method)];
        if !headers.is_empty() {
            h.push(("access-control-request-headers", headers));
        }
        let r = edge.request("OPTIONS", "/api/items/1", &h);
        let what = format!("{origin} {method} {headers}");
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert_eq!(r.error_code(), "cors_denied", "{what}");
        assert_no_grant(&r, &what);
    }
    assert_eq!(up.requests().len(), before, "a preflight reached the upstream");

    // Actual requests: the grant for the allowed origin, on successes and on errors alike.
    let r = edge.request("GET", "/api/items", &[("origin", APP), ("apikey", &key)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-expose-headers"), Some("x-total"));
    assert_eq!(r.header("vary"), Some("origin"));
    let r = edge.request("GET", "/api/items", &[("origin", APP)]);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    // Another origin gets its answer, without a grant (the browser keeps it from the page).
    let r = edge.request(
        "GET",
        "/api/items",
        &[("origin", "https://evil.example.com"), ("apikey", &key)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_no_grant(&r, "evil origin");
    assert_eq!(r.header("vary"), Some("origin"));
    // A service without a cors policy is left alone.
    let r = edge.request("GET", "/open/x", &[("origin", APP)]);
    assert_eq!(r.status, 200);
    assert_no_grant(&r, "no policy");
    assert!(r.header("vary").is_none());
}

/// Sends a POST announcing `announced` body bytes, then `chunks` with `gap` between them, and
/// returns the raw answer and how long after the last chunk it came.
fn trickle(
    addr: std::net::SocketAddr,
    announced: usize,
    chunks: &[&[u8]],
    gap: Duration,
) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /open/upload HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Length: {announced}\r\n\r\n"
    )
    .unwrap();
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        s.write_all(c).unwrap();
    }
    let sent = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    (String::from_utf8_lossy(&answer).into_owned(), sent.elapsed())
}

#[test]
fn a_stalled_request_body_is_cut_off_with_408() {
    let (_sb, edge, up) = start(&["--body-read-timeout", "1s"]);

    // 10 of 100 announced bytes, then nothing: 408 after about a second.
    let (answer, after) = trickle(edge.proxy, 100, &[b"0123456789"], Duration::ZERO);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"body_timeout\""), "{answer}");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "answered after {after:?}"
    );
    assert!(
        !up.requests().iter().any(|r| r["path"] == "/open/upload"),
        "the upstream got a complete request"
    );

    // A slow but steady body (a chunk every 400 ms, 2.4 s in all) is not cut.
    let chunks: Vec<&[u8]> = vec![b"aaaa"; 6];
    let (answer, _) = trickle(edge.proxy, 24, &chunks, Duration::from_millis(400));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&"a".repeat(24)), "{answer}");
}

/// Sends `raw` on one connection and reads until the edge closes it (bounded): every answer
/// head's status, and whether the connection was closed.
fn exchange(edge: &EdgeNode, raw: &[u8]) -> (Vec<u16>, bool) {
    let mut s = TcpStream::connect(edge.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(raw).unwrap();
    let mut got = Vec::new();
    let closed = loop {
        let mut buf = [0u8; 8192];
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&got);
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..i + 12].parse().ok())
        .collect();
    (statuses, closed)
}

/// Request smuggling as an attacker tries it (DESIGN.md §10): every ambiguous framing gets
/// 400 and the connection closed, whether it comes first on a connection (the lean loop's
/// head) or after a request with a body (hyper's), and the upstream never sees the request
/// hidden behind it.
#[test]
fn ambiguous_framing_gets_400_and_a_closed_connection_on_either_parser() {
    let (_sb, edge, up) = start(&[]);
    let cases: [(&str, &str); 12] = [
        ("cl+te", "POST /open HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("te+cl", "POST /open HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
        ("two hosts", "GET /open HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("no host", "GET /open HTTP/1.1\r\n\r\n"),
        ("bare lf", "GET /open HTTP/1.1\r\nHost: a\nX: y\r\n\r\n"),
        ("bare cr", "GET /open HTTP/1.1\r\nHost: a\r\nX: y\rz\r\n\r\n"),
        ("two equal cl", "POST /open HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"),
        ("cl list", "POST /open HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\nx"),
        ("te not final chunked", "POST /open HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
        ("te twice", "POST /open HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold", "GET /open HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n"),
        ("space before colon", "GET /open HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n"),
    ];
    let smuggled = "GET /open/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let first = "POST /open/first HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok";
    for (case, raw) in cases {
        // First on its connection.
        let (statuses, closed) = exchange(&edge, format!("{raw}{smuggled}").as_bytes());
        assert_eq!((statuses.as_slice(), closed), (&[400][..], true), "{case}, first");
        // After a request with a body, which hyper serves.
        let (statuses, closed) = exchange(&edge, format!("{first}{raw}{smuggled}").as_bytes());
        assert_eq!(
            (statuses.as_slice(), closed),
            (&[200, 400][..], true),
            "{case}, second"
        );
    }
    let paths: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_string))
        .collect();
    assert!(!paths.iter().any(|p| p.contains("smuggled")), "{paths:?}");
    assert_eq!(paths.iter().filter(|p| *p == "/open/first").count(), cases.len());
    // A well-framed chunked body and a keep-alive request after it still pass.
    let chunked =
        "POST /open/c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                   GET /open/d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    assert_eq!(exchange(&edge, chunked.as_bytes()), (vec![200, 200], true));
}

/// Sends a request head one header line every 200 ms (slowloris), first on a fresh
/// connection or, with `after_body`, after a request with a body (so hyper reads the slow
/// head, not the lean loop). Returns how long after the first byte of the slow head the edge
/// closed the connection, or `None` if it still held it after 8 s.
fn slowloris(addr: std::net::SocketAddr, after_body: bool) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    if after_body {
        s.write_all(b"POST /open/first HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\n\r\nhi")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) => panic!("closed before answering the first request"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        // The answer's body, if any, is drained by the reads below.
    }
    let started = Instant::now();
    let mut lines = std::iter::once(&b"GET /open/slow HTTP/1.1\r\nHost: edge\r\n"[..])
        .chain(std::iter::repeat(&b"X-Slow: still-coming\r\n"[..]));
    while started.elapsed() < Duration::from_secs(8) {
        if s.write_all(lines.next().unwrap()).is_err() {
            return Some(started.elapsed());
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {} // an answer to the first request, or a 408 before the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// Slowloris (issue 14): heads trickled a line at a time are cut off once
/// `--header-read-timeout` has passed since they began, on a fresh connection (the lean
/// loop) and after a request with a body (hyper), while other clients are served.
#[test]
fn slowloris_heads_are_cut_off_after_the_header_read_timeout() {
    let (_sb, edge, up) = start(&["--header-read-timeout", "1s"]);
    let addr = edge.proxy;
    let attackers: Vec<_> = (0..40)
        .map(|i| std::thread::spawn(move || slowloris(addr, i % 2 == 1)))
        .collect();
    // Served meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(edge.request("GET", "/open/meanwhile", &[]).status, 200);
    }
    let mut cut = Vec::new();
    for (i, a) in attackers.into_iter().enumerate() {
        let after = a.join().unwrap();
        let after = after.unwrap_or_else(|| panic!("slow head {i} was still held after 8 s"));
        cut.push(after);
    }
    cut.sort();
    let (first, last) = (cut[0], cut[cut.len() - 1]);
    eprintln!("40 slow heads cut after {first:?} .. {last:?}");
    assert!(first >= Duration::from_millis(800), "cut too early: {first:?}");
    assert!(last < Duration::from_secs(3), "cut too late: {last:?}");
    assert!(
        !up.requests().iter().any(|r| r["path"] == "/open/slow"),
        "a slow head reached the upstream"
    );
}
