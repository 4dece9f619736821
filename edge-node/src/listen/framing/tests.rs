use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn head(s: &str) -> Result<Head, &'static str> {
    check_head(s.as_bytes())
}

#[test]
fn plain_heads_pass_with_their_framing() {
    let h = head("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(
        h,
        Head {
            body: BodyKind::None,
            upgrade: false
        }
    );
    let h = head("POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 12\r\n\r\n").unwrap();
    assert_eq!(h.body, BodyKind::Length(12));
    let h = head("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
    assert_eq!(h.body, BodyKind::Chunked);
    let h = head("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
    assert!(h.upgrade);
    assert!(
        head("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
            .unwrap()
            .upgrade
    );
    assert!(head("GET / HTTP/1.0\r\n\r\n").is_ok(), "HTTP/1.0 needs no Host");
}

#[test]
fn every_ambiguous_framing_is_refused() {
    for (case, raw) in [
        (
            "cl+te",
            "POST /open HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "te+cl",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
        ),
        (
            "two equal cl",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        ),
        (
            "cl list",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
        ),
        (
            "cl sign",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
        ),
        (
            "te gzip",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
        (
            "te chunked, gzip",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ),
        (
            "te gzip, chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        ),
        (
            "te twice",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "te on 1.0",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n"),
        ("bare lf", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n"),
        ("all bare lf", "GET / HTTP/1.1\nHost: a\n\n"),
        ("bare cr", "GET / HTTP/1.1\r\nHost: a\r\nX: y\rz\r\n\r\n"),
        ("two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("no host", "GET / HTTP/1.1\r\n\r\n"),
        ("space before colon", "GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n"),
        ("request line", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("version", "GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
    ] {
        assert!(head(raw).is_err(), "{case} passed");
    }
}

/// Writes `input` (then ends the stream) and reads everything through the guard.
async fn through(input: &[u8]) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    client.write_all(input).await.unwrap();
    drop(client);
    let mut g = Guarded::new(server, std::time::Duration::from_secs(30));
    let mut out = Vec::new();
    g.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn pipelined_requests_pass_unchanged_bodies_and_chunks_included() {
    let input = b"\r\nPOST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
        POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nGET /\r\n3\r\nx\r\n\r\n0\r\nTrailer: t\r\n\r\n\
        GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(through(input).await, input.to_vec());
}

#[tokio::test]
async fn a_smuggled_request_after_a_good_one_becomes_the_poison() {
    let good = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok";
    let bad = b"POST /open HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n";
    let out = through(&[&good[..], &bad[..]].concat()).await;
    assert_eq!(out, [&good[..], POISON].concat());
    // A body that lies about its chunks is refused at the lie.
    let lie = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n";
    let out = through(lie).await;
    assert!(
        out.ends_with(POISON) && out.starts_with(b"POST / HTTP/1.1"),
        "{out:?}"
    );
}

#[tokio::test]
async fn h2_and_accepted_upgrades_pass_through_refused_upgrades_are_checked_again() {
    let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    assert_eq!(through(h2).await, h2.to_vec());

    for (status, after) in [
        ("101 Switching Protocols", &b"\x81\x05hello"[..]),
        ("400 Bad Request", b"GET / HTTP/1.1\r\n\r\n"),
    ] {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let up = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        client.write_all(up).await.unwrap();
        client.write_all(after).await.unwrap();
        client.shutdown().await.unwrap(); // the answer can still be written back
        let mut g = Guarded::new(server, std::time::Duration::from_secs(30));
        let mut got = vec![0; up.len()];
        g.read_exact(&mut got).await.unwrap();
        assert_eq!(got, up.to_vec());
        // Nothing more until the answer is written.
        let mut more = [0u8; 64];
        let held = tokio::time::timeout(std::time::Duration::from_millis(50), g.read(&mut more)).await;
        assert!(
            held.is_err(),
            "bytes after an upgrade request were released early"
        );
        g.write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut rest = Vec::new();
        g.read_to_end(&mut rest).await.unwrap();
        if status.starts_with("101") {
            assert_eq!(rest, after.to_vec(), "upgraded bytes pass");
        } else {
            assert_eq!(rest, POISON.to_vec(), "back to checking: no Host");
        }
    }
}
