//! Request ids: every answer carries `x-request-id`. A client's id is kept when it is sane
//! (1 to 128 characters of `[A-Za-z0-9._:-]`), otherwise the edge makes a random one.

use http::{HeaderMap, HeaderValue};

pub const HEADER: &str = "x-request-id";

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

/// 32 random hex characters.
pub fn generate() -> HeaderValue {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // The system RNG does not fail in practice; a time-based id still identifies the call.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = nanos.to_be_bytes();
    }
    HeaderValue::from_str(&tollgate_proto::keys::hex(&bytes)).expect("hex is a valid header value")
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
