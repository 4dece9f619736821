//! HTTP/1.1 on a blocking socket: the head and body reader the mock servers and the raw
//! client share, and [`send`], one request with exactly the headers a test writes (no client
//! library normalising them away).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Map, Value};

/// Header (name, value) pairs, names lowercased, in the order received.
pub type Headers = Vec<(String, String)>;

/// Reads a start line and headers; `Ok(None)` on a clean EOF before anything.
pub fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<(String, Headers)>> {
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

/// The first value of header `name` (lowercase) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Reads a message body framed by `content-length` or chunked encoding; otherwise, if
/// `to_eof` (an answer), everything until the peer closes, else nothing (a request).
pub fn read_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
    to_eof: bool,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if header(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
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
    } else if let Some(len) = header(headers, "content-length") {
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

/// One HTTP answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Headers,
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, &name.to_ascii_lowercase())
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

    /// For answers from [`crate::mock::Upstream`]: the headers the upstream received
    /// (lowercase names).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        let raw = b"5\r\nhello\r\n6; ext=1\r\n world\r\n0\r\n\r\n";
        let headers = vec![("transfer-encoding".to_string(), "chunked".to_string())];
        let body = read_body(&mut &raw[..], &headers, true).unwrap();
        assert_eq!(body, b"hello world");
    }

    #[test]
    fn requests_without_framing_have_no_body_but_answers_run_to_eof() {
        let raw = b"rest of the stream";
        assert!(read_body(&mut &raw[..], &[], false).unwrap().is_empty());
        assert_eq!(read_body(&mut &raw[..], &[], true).unwrap(), raw);
    }
}
