//! The AI gateway's errors ([`AiError`], in `error.rs` with every error of the request path,
//! answered in OpenAI's shape) and what keeps provider keys out of them.
//!
//! A provider's own error text reaches the caller only for a request the provider found
//! wrong (400, 404, 413, 422), and only after every key of the provider has been taken out
//! of it; on 401 and 403 the caller learns only that the provider refused the gateway's
//! credential, which is the operator's business, not the caller's.

pub use crate::error::AiError;

/// Takes every secret of `secrets` out of `text` (a provider's error message may quote the
/// key it was given).
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "[redacted]");
        // Also the key's long prefixes and suffixes: "sk-abc...wxyz" style echoes.
        let (head, tail) = (&s[..s.len().min(12)], &s[s.len().saturating_sub(6)..]);
        if head.len() >= 8 {
            out = out.replace(head, "[redacted]");
        }
        if tail.len() >= 6 {
            out = out.replace(tail, "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_taken_out_of_provider_messages() {
        let keys = vec!["sk-live-0123456789abcdef".to_string()];
        let m = redact(
            "Incorrect API key provided: sk-live-0123456789abcdef, or sk-live-0123***abcdef",
            &keys,
        );
        assert!(!m.contains("0123456789abcdef") && !m.contains("abcdef"), "{m}");
        assert!(m.starts_with("Incorrect API key provided: [redacted]"), "{m}");
    }
}
