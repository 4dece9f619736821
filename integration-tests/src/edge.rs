//! Edge-node processes and a plain HTTP upstream for sandbox tests.
//!
//! - [`EdgeNode`]: one real `tollgate edge` process on loopback ports, its last-known-good
//!   config in a data dir under the sandbox's temp dir; killed (and its log printed on a
//!   failed test) when dropped, restartable on the same ports and data dir.
//! - [`Upstream`]: a loopback HTTP/1.1 server that answers every request `200` with a JSON
//!   echo of what it received (`{"method", "path", "headers", "body"}`), so a test sees
//!   exactly what the edge forwarded.
//! - [`send`]: a raw HTTP/1.1 client with custom headers, returning status, headers, body.
//! - TLS helpers (test CA, TLS client, HTTPS upstream) are in [`crate::tls`].
//!
//! Every wait is bounded; nothing here needs an async runtime.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::{free_port, http_get, loopback, wait_for, Proc, Sandbox, TlsFiles};

/// How long an edge process may take to answer `/healthz` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One `tollgate edge` process.
pub struct EdgeNode {
    pub node_id: String,
    /// Proxy listener (`--listen`).
    pub proxy: SocketAddr,
    /// Admin listener (`--admin`): `/healthz`, `/readyz`, `/config/version`.
    pub admin: SocketAddr,
    /// Counter-sharing listener (`--peer`).
    pub peer: SocketAddr,
    /// TLS proxy listener (`--tls-listen`), when started with one ([`EdgeNode::start_tls`]).
    pub tls: Option<SocketAddr>,
    /// `--data-dir`, where the last-known-good config lives.
    pub dir: PathBuf,
    pub log: PathBuf,
    pub control_planes: Vec<String>,
    /// `--join-token` (a token of role edge).
    pub join_token: String,
    /// More flags for `tollgate edge` (e.g. `--body-read-timeout 1s`), kept across restarts.
    pub extra_args: Vec<String>,
    /// `--tls-ca/--tls-cert/--tls-key` towards an mTLS control plane: in a
    /// [`Sandbox::cluster_tls`] sandbox a certificate `edge-<node_id>` of its CA.
    pub cluster_tls: Option<TlsFiles>,
    proc: Option<Proc>,
}

impl EdgeNode {
    /// Starts an edge named `node_id` pointed at every control-plane node of the sandbox, and
    /// waits (bounded) until it answers `/healthz`.
    pub fn start(sb: &Sandbox, node_id: &str) -> EdgeNode {
        let mut edge = Self::for_sandbox(sb, node_id, None);
        edge.spawn();
        edge
    }

    /// Like [`EdgeNode::start`], also serving TLS on a free loopback port ([`EdgeNode::tls`]).
    pub fn start_tls(sb: &Sandbox, node_id: &str) -> EdgeNode {
        let mut edge = Self::for_sandbox(sb, node_id, Some(loopback(free_port())));
        edge.spawn();
        edge
    }

    /// Like [`EdgeNode::start`], with more `tollgate edge` flags.
    pub fn start_with_args(sb: &Sandbox, node_id: &str, extra_args: &[&str]) -> EdgeNode {
        let mut edge = Self::for_sandbox(sb, node_id, None);
        edge.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        edge.spawn();
        edge
    }

    /// Like [`EdgeNode::start`] with the given `--tls-*` files towards the control plane
    /// (say, a certificate of another CA).
    pub fn start_with_cluster_tls(sb: &Sandbox, node_id: &str, files: TlsFiles) -> EdgeNode {
        let mut edge = Self::for_sandbox(sb, node_id, None);
        edge.cluster_tls = Some(files);
        edge.spawn();
        edge
    }

    /// An edge of the sandbox, not yet started: every control-plane URL, the edge token, and
    /// under mTLS a fresh certificate `edge-<node_id>` of the sandbox's CA.
    fn for_sandbox(sb: &Sandbox, node_id: &str, tls_listen: Option<SocketAddr>) -> EdgeNode {
        let urls = sb.nodes.iter().map(|n| n.url()).collect();
        let mut edge = Self::new(sb.dir.path(), node_id, urls, &sb.edge_token, tls_listen);
        edge.cluster_tls = sb
            .pki
            .as_ref()
            .map(|p| p.reissue(&format!("edge-{node_id}"), &[]));
        edge
    }

    /// Like [`EdgeNode::start`] with explicit control-plane URLs; files go under `root`.
    pub fn start_with(root: &Path, node_id: &str, control_planes: Vec<String>, join_token: &str) -> EdgeNode {
        Self::start_full(root, node_id, control_planes, join_token, None)
    }

    fn start_full(
        root: &Path,
        node_id: &str,
        control_planes: Vec<String>,
        join_token: &str,
        tls: Option<SocketAddr>,
    ) -> EdgeNode {
        let mut edge = Self::new(root, node_id, control_planes, join_token, tls);
        edge.spawn();
        edge
    }

    /// The edge's ports and paths, not yet started.
    fn new(
        root: &Path,
        node_id: &str,
        control_planes: Vec<String>,
        join_token: &str,
        tls: Option<SocketAddr>,
    ) -> EdgeNode {
        EdgeNode {
            node_id: node_id.to_string(),
            proxy: loopback(free_port()),
            admin: loopback(free_port()),
            peer: loopback(free_port()),
            tls,
            dir: root.join(format!("edge-{node_id}")),
            log: root.join(format!("edge-{node_id}.log")),
            control_planes,
            join_token: join_token.to_string(),
            extra_args: Vec::new(),
            cluster_tls: None,
            proc: None,
        }
    }

    /// Spawns the process (same ports, same data dir) and waits for `/healthz`.
    pub fn spawn(&mut self) {
        assert!(self.proc.is_none(), "edge {} already running", self.node_id);
        let mut args: Vec<String> = [
            "edge",
            "--control-plane",
            &self.control_planes.join(","),
            "--listen",
            &self.proxy.to_string(),
            "--admin",
            &self.admin.to_string(),
            "--peer",
            &self.peer.to_string(),
            "--data-dir",
            &self.dir.display().to_string(),
            "--node-id",
            &self.node_id,
            "--join-token",
            &self.join_token,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(tls) = self.tls {
            args.extend(["--tls-listen".to_string(), tls.to_string()]);
        }
        args.extend(self.extra_args.iter().cloned());
        if let Some(files) = &self.cluster_tls {
            args.extend(files.args());
        }
        let name = format!("edge {}", self.node_id);
        self.proc = Some(Proc::spawn(&name, &args, self.log.clone()));
        let admin = self.admin;
        wait_for(&format!("{name} /healthz"), START_TIMEOUT, || {
            http_get(admin, "/healthz").filter(|(s, _)| *s == 200)
        });
    }

    /// `kill -9` the process (no-op when it is not running).
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }

    /// `kill -9`, then start again on the same ports and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// The version `/config/version` reports (0 before any config), `None` if no answer.
    pub fn config_version(&self) -> Option<u64> {
        let (status, body) = http_get(self.admin, "/config/version")?;
        if status != 200 {
            return None;
        }
        serde_json::from_str::<Value>(&body).ok()?["version"].as_u64()
    }

    /// The status of `/readyz`, `None` if no answer.
    pub fn readyz(&self) -> Option<u16> {
        http_get(self.admin, "/readyz").map(|(s, _)| s)
    }

    /// Waits (bounded) until the edge serves config version `at_least` or newer; returns how
    /// long that took.
    pub fn wait_for_version(&self, at_least: u64, timeout: Duration) -> Duration {
        let started = Instant::now();
        wait_for(
            &format!("edge {} to reach config version {at_least}", self.node_id),
            timeout,
            || self.config_version().filter(|v| *v >= at_least),
        );
        started.elapsed()
    }

    /// Sends a request to the proxy listener; panics if nothing answers.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        send(self.proxy, method, path, headers, b"")
            .unwrap_or_else(|| panic!("edge {} did not answer {method} {path}", self.node_id))
    }

    /// `GET path` with the API key in the `apikey` header (or none when `key` is empty).
    pub fn get_with_key(&self, path: &str, key: &str) -> Reply {
        if key.is_empty() {
            self.request("GET", path, &[])
        } else {
            self.request("GET", path, &[("apikey", key)])
        }
    }
}

/// One HTTP answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// `error.code` of a JSON error answer (`{"error": {"code": ..., "message": ...}}`);
    /// panics unless the body has that shape.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let code = v["error"]["code"].as_str();
        let message = v["error"]["message"].as_str();
        match (code, message) {
            (Some(c), Some(_)) => c.to_string(),
            _ => panic!("not a JSON error answer: {self:?}"),
        }
    }

    /// For answers from [`Upstream`]: the headers the upstream received (lowercase names).
    pub fn upstream_headers(&self) -> Map<String, Value> {
        match self.json()["headers"].as_object() {
            Some(h) => h.clone(),
            None => panic!("not an upstream echo: {self:?}"),
        }
    }
}

/// A raw HTTP/1.1 request (`Connection: close`) with custom headers and body. `None` when
/// nothing answers or the answer cannot be parsed. Chunked answers are decoded.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut reader = BufReader::new(s);
    let (status_line, headers) = read_head(&mut reader).ok()??;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let body = read_body(&mut reader, &headers, true).ok()?;
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Header (name, value) pairs, names lowercased.
type Headers = Vec<(String, String)>;

/// Reads a start line and headers; `Ok(None)` on a clean EOF before anything.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<(String, Headers)>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Some((start.trim_end().to_string(), headers)))
}

/// Reads a message body framed by `content-length` or chunked encoding; otherwise, if
/// `to_eof`, everything until the peer closes, else nothing.
fn read_body(r: &mut impl BufRead, headers: &[(String, String)], to_eof: bool) -> std::io::Result<Vec<u8>> {
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let size = size.trim().split(';').next().unwrap_or("");
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| std::io::Error::other("bad content-length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if to_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// A loopback HTTP/1.1 upstream answering every request `200` with a JSON echo:
/// `{"method": "GET", "path": "/orders/1?x=y", "headers": {"name": "value", ...}, "body": "..."}`
/// (header names lowercased; repeated headers joined with `, `). Each answer closes its
/// connection. Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the upstream");
        let addr = listener.local_addr().expect("upstream address");
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let seen = seen2.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &seen);
                });
            }
        });
        Upstream { addr, seen, stop }
    }

    /// `http://127.0.0.1:<port>`, for an upstream target.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, as echoed.
    pub fn requests(&self) -> Vec<Value> {
        self.seen.lock().expect("upstream log poisoned").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve_one(conn: TcpStream, seen: &Mutex<Vec<Value>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let Some((start, headers)) = read_head(&mut reader)? else {
        return Ok(());
    };
    let body = read_body(&mut reader, &headers, false)?;
    let mut parts = start.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let mut hmap = Map::new();
    for (n, v) in &headers {
        let joined = match hmap.get(n).and_then(Value::as_str) {
            Some(prev) => format!("{prev}, {v}"),
            None => v.clone(),
        };
        hmap.insert(n.clone(), Value::String(joined));
    }
    let echo = json!({
        "method": method,
        "path": path,
        "headers": hmap,
        "body": String::from_utf8_lossy(&body),
    });
    seen.lock().expect("upstream log poisoned").push(echo.clone());
    let text = echo.to_string();
    write!(
        writer,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let v = r.json();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/a/b?c=d");
        assert_eq!(v["body"], "hello");
        assert_eq!(r.upstream_headers()["x-thing"], "1, 2");
        assert_eq!(up.requests().len(), 1);
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let raw = b"5\r\nhello\r\n6; ext=1\r\n world\r\n0\r\n\r\n";
        let headers = vec![("transfer-encoding".to_string(), "chunked".to_string())];
        let body = read_body(&mut &raw[..], &headers, true).unwrap();
        assert_eq!(body, b"hello world");
    }
}
