//! Request ids: every answer carries `x-request-id`. A client's id is kept when it is sane
//! (1 to 128 characters of `[A-Za-z0-9._:-]`), otherwise the edge makes a random one.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The client's request id if it is sane, else a new one.
pub fn from_headers(headers: &HeaderMap) -> HeaderValue {
    match headers.get(HEADER) {
        Some(v) if is_sane(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

fn is_sane(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// 32 hex characters: a random prefix drawn once per process, then a counter. Unique and
/// not guessable across restarts, without a trip to the random number generator per request.
pub fn generate() -> HeaderValue {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            // The system RNG does not fail in practice; the clock still separates processes.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            bytes = nanos.to_be_bytes();
        }
        u64::from_be_bytes(bytes)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&prefix.to_be_bytes());
    raw[8..].copy_from_slice(&n.to_be_bytes());
    let mut out = [0u8; 32];
    hex::encode_to_slice(raw, &mut out).expect("16 bytes are 32 hex digits");
    HeaderValue::from_bytes(&out).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("abc-123:x.y_z"));
        assert_eq!(from_headers(&h), "abc-123:x.y_z");
        h.insert(HEADER, HeaderValue::from_static("has space"));
        let id = from_headers(&h);
        assert_eq!(id.len(), 32);
        assert_ne!(id, "has space");
        h.insert(HEADER, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_eq!(from_headers(&h).len(), 32);
        assert_ne!(generate(), generate());
    }
}
