//! API key format, shared by the control plane (which mints keys) and the edge (which checks
//! them).
//!
//! A key reads `tgk_<id>_<secret><check>`: `id` (12 hex chars) names the key publicly (for
//! `key revoke`), `secret` is 32 random bytes in hex, and `check` is 6 hex chars of
//! SHA-256 over what precedes it, so that typos and truncated keys are told apart from
//! revoked ones without a lookup. Only SHA-256 of the whole key is ever stored.

use aws_lc_rs::digest;

pub const PREFIX: &str = "tgk_";
const CHECK_LEN: usize = 6;
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 64;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The bytes of an even-length hex string (either case); `None` for anything else, signs
/// and spaces included.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

/// Whether `hex` is the lowercase hex SHA-256 of `data`, compared in constant time (the
/// digest is not turned into a string: this runs per request).
pub fn sha256_hex_matches(data: &[u8], hex: &[u8]) -> bool {
    let digest = digest::digest(&digest::SHA256, data);
    let mut expected = [0u8; 64];
    hex::encode_to_slice(digest.as_ref(), &mut expected).expect("a SHA-256 is 64 hex digits");
    aws_lc_rs::constant_time::verify_slices_are_equal(&expected, hex).is_ok()
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// Builds a key from random material: `id_bytes` (6) and `secret_bytes` (32).
pub fn format_key(id_bytes: &[u8; 6], secret_bytes: &[u8; 32]) -> String {
    let body = format!("{PREFIX}{}_{}", hex(id_bytes), hex(secret_bytes));
    let check = &sha256_hex(body.as_bytes())[..CHECK_LEN];
    format!("{body}{check}")
}

/// The public id of a well-formed key, or `None` when the key is malformed or its checksum
/// does not match.
pub fn parse_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    if rest.len() != ID_LEN + 1 + SECRET_LEN + CHECK_LEN || !rest.is_ascii() {
        return None;
    }
    let (id, rest) = rest.split_at(ID_LEN);
    let rest = rest.strip_prefix('_')?;
    if !id.bytes().chain(rest.bytes()).all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let body_len = key.len() - CHECK_LEN;
    let digest = digest::digest(&digest::SHA256, &key.as_bytes()[..body_len]);
    let mut check = [0u8; CHECK_LEN];
    hex::encode_to_slice(&digest.as_ref()[..CHECK_LEN / 2], &mut check)
        .expect("three bytes are six hex digits");
    (check == key.as_bytes()[body_len..]).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hashes_are_checked_without_building_strings() {
        let key = format_key(&[9; 6], &[3; 32]);
        let stored = sha256_hex(key.as_bytes());
        assert!(sha256_hex_matches(key.as_bytes(), stored.as_bytes()));
        assert!(!sha256_hex_matches(b"another key", stored.as_bytes()));
        assert!(!sha256_hex_matches(key.as_bytes(), &stored.as_bytes()[..63]));
        assert!(!sha256_hex_matches(
            key.as_bytes(),
            stored.to_uppercase().as_bytes()
        ));
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abFF"), Some(vec![0x00, 0xab, 0xff]));
        // `u8::from_str_radix` would take "+f"; a hex key never has a sign.
        assert_eq!(unhex("+f"), None);
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn keys_round_trip_and_checksum_catches_typos() {
        let key = format_key(&[1, 2, 3, 4, 5, 6], &[7; 32]);
        assert!(key.starts_with("tgk_010203040506_"));
        assert_eq!(parse_key(&key), Some("010203040506"));
        let mut typo = key.clone().into_bytes();
        let i = typo.len() - 10;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(parse_key(std::str::from_utf8(&typo).unwrap()), None);
        assert_eq!(parse_key(&key[..key.len() - 1]), None);
        assert_eq!(parse_key("Bearer something"), None);
    }
}
