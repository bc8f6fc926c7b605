//! SHA-256 and hex: how meshroot fingerprints and names bytes (CSRs, keys, certificates,
//! records, serial numbers) in records, logs and the audit API.

use std::fmt::Write as _;

use ring::digest;

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Parses lowercase or uppercase hex, with optional ':' separators.
pub(crate) fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if !digits.len().is_multiple_of(2) || digits.is_empty() {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_accepts_colons() {
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
        assert_eq!(parse_hex("0A:FF"), Some(vec![0x0a, 0xff]));
        assert_eq!(parse_hex("abc"), None);
        assert_eq!(parse_hex("zz"), None);
    }
}
