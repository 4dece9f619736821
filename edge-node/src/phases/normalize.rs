//! Phase "normalize", before routing: framing checks (request smuggling, header limits,
//! control characters), then the path rule: one canonical form of the path, so that
//! the path the router matches is exactly the path the upstream receives and no spelling
//! of a path can match one route and reach another (CVE-2019-9901, CVE-2021-29492).
//!
//! The rule, in order:
//! 1. A raw backslash is refused (some servers read it as `/`), and so is a raw `;`:
//!    servlet containers strip `;params` from a segment, so `/admin;x` would match no
//!    `/admin` rule here yet reach `/admin` there. (`%3B` is kept escaped, a literal `;`.)
//! 2. Percent-escapes must be `%` and two hex digits. An escaped `/`, `\` or NUL (`%2F`,
//!    `%5C`, `%00`, any case) is refused; an escaped unreserved character (RFC 3986: letters,
//!    digits, `-`, `.`, `_`, `~`) is decoded (`/%61dmin` is `/admin`); every other escape
//!    is kept exactly as sent.
//! 3. Dot segments (`.`, `..`, also once decoded: `%2e%2E`) and empty segments (`//`, which
//!    many servers merge) are refused; a trailing `/` is kept.
//!
//! Refusals are 400 `bad_request`. Nothing else is changed.

use std::borrow::Cow;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Uri};

use crate::error::ProxyError;

/// Whether `b` is an RFC 3986 unreserved character.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The normalized path (borrowed when nothing changes), or why it is refused.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Err("backslash in the path");
    }
    if bytes.contains(&b';') {
        return Err("path parameters (;) in the path");
    }
    let path = if bytes.contains(&b'%') {
        let mut out = String::with_capacity(path.len());
        let mut rest = path;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            let esc = rest.as_bytes();
            let (Some(hi), Some(lo)) = (
                esc.get(i + 1).copied().and_then(hex),
                esc.get(i + 2).copied().and_then(hex),
            ) else {
                return Err("malformed percent-escape in the path");
            };
            match (hi << 4) | lo {
                b'/' | b'\\' | 0 => return Err("escaped slash, backslash or nul in the path"),
                b if unreserved(b) => out.push(char::from(b)),
                _ => out.push_str(&rest[i..i + 3]),
            }
            rest = &rest[i + 3..];
        }
        out.push_str(rest);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(path)
    };
    // The first segment is what precedes the leading `/` (empty); the last may be empty (a
    // trailing `/`).
    let mut segments = path.split('/').enumerate().peekable();
    while let Some((i, seg)) = segments.next() {
        if seg == "." || seg == ".." {
            return Err("dot segments in the path");
        }
        if seg.is_empty() && i > 0 && segments.peek().is_some() {
            return Err("empty segment in the path");
        }
    }
    Ok(path)
}

/// Most request headers the proxy accepts (hyper itself refuses more than 100 on HTTP/1.1,
/// with a bare 431).
pub const MAX_HEADERS: usize = 64;
/// Most bytes of request headers (names and values) the proxy accepts.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses ambiguous framing (request smuggling): Content-Length with Transfer-Encoding, or
/// Content-Length more than once; heads past [`MAX_HEADERS`] or [`MAX_HEADER_BYTES`]; and
/// control characters (NUL, CR, LF...; tab is allowed) in header values (CVE-2019-9900).
/// Both HTTP parsers refuse those already (hyper's h1 answers 400, h2 resets the stream);
/// this holds whatever the request came from.
pub fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    if headers.len() > MAX_HEADERS {
        return Err(ProxyError::HeadersTooLarge);
    }
    let (mut bytes, mut lengths, mut chunked) = (0, 0, false);
    for (k, v) in headers {
        bytes += k.as_str().len() + v.len();
        // No early exit: the compiler can then check many bytes at once.
        let control = v.as_bytes().iter().fold(false, |found, &b| {
            found | ((b < 0x20) & (b != b'\t')) | (b == 0x7f)
        });
        if control {
            return Err(ProxyError::BadRequest("control characters in a header value"));
        }
        // Standard names compare as enum values.
        lengths += usize::from(*k == CONTENT_LENGTH);
        chunked |= *k == TRANSFER_ENCODING;
    }
    if bytes > MAX_HEADER_BYTES {
        return Err(ProxyError::HeadersTooLarge);
    }
    if lengths > 0 && chunked {
        return Err(ProxyError::BadRequest(
            "content-length and transfer-encoding together",
        ));
    }
    if lengths > 1 {
        return Err(ProxyError::BadRequest("content-length more than once"));
    }
    Ok(())
}

/// Normalizes the path by the path rule (module doc), or refuses it; the request carries
/// the normalized path from here on, to the router and to the upstream.
pub fn check_path<B>(mut req: Request<B>) -> Result<Request<B>, ProxyError> {
    let normalized = match normalize_path(req.uri().path()).map_err(ProxyError::BadRequest)? {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(p) => Some(p),
    };
    let Some(path) = normalized else {
        return Ok(req);
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    let pq = match parts.path_and_query.as_ref().and_then(|pq| pq.query()) {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let unusable = || ProxyError::BadRequest("the request path cannot be normalized");
    parts.path_and_query = Some(pq.parse().map_err(|_| unusable())?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| unusable())?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> String {
        normalize_path(p)
            .unwrap_or_else(|e| panic!("{p:?} refused: {e}"))
            .into_owned()
    }

    #[test]
    fn plain_paths_pass_unchanged_and_borrowed() {
        for p in [
            "/",
            "/orders",
            "/orders/",
            "/orders/1.json",
            "/a/.well-known/x",
            "/a/...",
            "*",
        ] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn escaped_unreserved_characters_are_decoded() {
        assert_eq!(ok("/%61dmin"), "/admin");
        assert_eq!(ok("/%41%44MIN"), "/ADMIN");
        assert_eq!(ok("/a%2Db%5fc%7E%2e1"), "/a-b_c~.1");
        // Other escapes are kept as sent (case included).
        assert_eq!(ok("/a%20b%3f%25%3A"), "/a%20b%3f%25%3A");
        // Decoding happens once: %2561 is "%61" literally, not "a".
        assert_eq!(ok("/%2561dmin"), "/%2561dmin");
    }

    #[test]
    fn encoded_separators_and_nul_are_refused() {
        for p in [
            "/admin%2Fx",
            "/admin%2fx",
            "/public%2F..%2Fadmin",
            "/a%5Cb",
            "/a%5cb",
            "/a%00b",
            "/a\\b",
            "/a\\..\\admin",
        ] {
            assert!(normalize_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn dot_and_empty_segments_are_refused_also_when_escaped() {
        for p in [
            "/public/../admin",
            "/a/./b",
            "/..",
            "/.",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/.%2E/b",
            "/a/%2e/b",
            "//admin",
            "/a//b",
            "/a//",
        ] {
            assert!(normalize_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for p in ["/a%", "/a%4", "/a%zz", "/a%4g", "/%%41"] {
            assert!(normalize_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn path_parameters_are_refused_but_an_escaped_semicolon_is_kept() {
        for p in ["/admin;x=1", "/a;/b", "/;"] {
            assert!(normalize_path(p).is_err(), "{p}");
        }
        assert_eq!(ok("/a%3Bb"), "/a%3Bb");
    }
}
