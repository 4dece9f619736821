//! Blocking loopback HTTP/1.1 servers for tests: one thread per connection, keep-alive,
//! every request recorded. They stop when dropped.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::raw::{header, read_body, read_head, Headers};

/// A request as the mock server received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// The request target as sent: path and query.
    pub path: String,
    /// Names lowercased, in the order received.
    pub headers: Headers,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// What the mock answers: status, extra headers, body (sent as `application/json`). An
/// extra `connection: close` closes the connection after the answer.
pub type Answer = (u16, Vec<(String, String)>, String);

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

/// A loopback HTTP/1.1 server answering each request with a closure the test controls (a
/// JWKS document it rotates, an introspection endpoint, an echo), recording every request.
pub struct MockServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl MockServer {
    pub fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> MockServer {
        Self::start_on("127.0.0.1", handler)
    }

    /// Like [`MockServer::start`], on a free port of address `ip` (a test network's).
    pub fn start_on(ip: &str, handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> MockServer {
        let listener = TcpListener::bind((ip, 0)).expect("binding the mock server");
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

    /// How many requests were received so far.
    pub fn hits(&self) -> usize {
        self.seen.lock().expect("mock log poisoned").len()
    }

    /// Stops answering: new connections are refused, kept-alive ones closed at their next
    /// request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves requests on one connection (keep-alive) until the peer closes it, an answer says
/// `connection: close`, or the server stops (then the connection is closed without an
/// answer, as a dead server's would be).
fn serve(
    conn: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    handler: &Handler,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    while let Some((start, headers)) = read_head(&mut reader)? {
        let body = read_body(&mut reader, &headers, false)?;
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
        let mut close = false;
        for (n, v) in extra {
            close |= n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close");
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes())?;
        writer.write_all(body.as_bytes())?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// What [`Upstream`] answers for `req`:
/// `{"method": "GET", "path": "/orders/1?x=y", "headers": {"name": "value", ...}, "body": "..."}`
/// (header names lowercased; repeated headers joined with `, `).
pub fn echo(req: &Seen) -> Value {
    let mut headers = Map::new();
    for (n, v) in &req.headers {
        let joined = match headers.get(n).and_then(Value::as_str) {
            Some(prev) => format!("{prev}, {v}"),
            None => v.clone(),
        };
        headers.insert(n.clone(), Value::String(joined));
    }
    json!({"method": req.method, "path": req.path, "headers": headers, "body": req.body})
}

/// A loopback HTTP/1.1 upstream answering every request `200` with its [`echo`], so a test
/// sees exactly what the edge forwarded. Each answer closes its connection. Stops when
/// dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    server: MockServer,
}

impl Upstream {
    pub fn start() -> Upstream {
        Self::start_on("127.0.0.1")
    }

    /// Like [`Upstream::start`], on a free port of address `ip`.
    pub fn start_on(ip: &str) -> Upstream {
        let server = MockServer::start_on(ip, |req| {
            (
                200,
                vec![("connection".into(), "close".into())],
                echo(req).to_string(),
            )
        });
        Upstream {
            addr: server.addr,
            server,
        }
    }

    /// `http://<address>:<port>`, for an upstream target.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, as echoed.
    pub fn requests(&self) -> Vec<Value> {
        self.server.requests().iter().map(echo).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::send;

    #[test]
    fn upstream_echoes_what_it_received() {
        let up = Upstream::start();
        let r = send(
            up.addr,
            "POST",
            "/a/b?c=d",
            &[("X-Thing", "1"), ("x-thing", "2")],
            b"hello",
        )
        .expect("an answer");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("connection"), Some("close"));
        let v = r.json();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/a/b?c=d");
        assert_eq!(v["body"], "hello");
        assert_eq!(r.upstream_headers()["x-thing"], "1, 2");
        assert_eq!(up.requests(), vec![v]);
    }

    #[test]
    fn a_stopped_mock_answers_nothing() {
        let mock = MockServer::start(|_| (204, vec![], String::new()));
        assert_eq!(send(mock.addr, "GET", "/", &[], b"").map(|r| r.status), Some(204));
        mock.stop();
        assert!(send(mock.addr, "GET", "/", &[], b"").is_none());
        assert_eq!(mock.hits(), 1);
    }
}
