//! Secrets, tokens and their hashes.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every API token starts with this, so a password that is a token is told
/// apart from a device secret (and secret scanners can find leaked ones).
pub const TOKEN_PREFIX: &str = "fltd_";

/// 192 bits from the OS's random source, hex (48 characters).
pub fn new_secret() -> String {
    random_hex::<24>()
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    // Without the OS's random source no secret can be made safely: there
    // is nothing sensible to fall back on.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// SHA-256 of a secret, hex: what the store keeps. A fast hash is enough
/// because fleetd makes every secret itself with 192 random bits; no one
/// can guess one from a dictionary.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares two hashes in constant time.
pub(crate) fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A new token: its public id (64 bits, hex), its secret and the whole
/// string `fltd_{id}_{secret}`.
pub(crate) fn new_token() -> (String, String, String) {
    let id = random_hex::<8>();
    let secret = new_secret();
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    (id, secret, token)
}

/// Splits `fltd_{id}_{secret}` into id and secret.
pub(crate) fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_distinct() {
        let a = new_secret();
        let b = new_secret();
        assert_eq!(a.len(), 48);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn hashes_match_the_sha256_reference() {
        // echo -n abc | sha256sum
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(same_hash(&hash_secret("x"), &hash_secret("x")));
        assert!(!same_hash(&hash_secret("x"), &hash_secret("y")));
        assert!(!same_hash("ab", "abc"));
    }

    #[test]
    fn tokens_split_back_into_id_and_secret() {
        let (id, secret, token) = new_token();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(split_token(&token), Some((id.as_str(), secret.as_str())));
        assert_eq!(split_token("fltd__x"), None);
        assert_eq!(split_token("fltd_abc"), None);
        assert_eq!(split_token("bearer"), None);
    }
}
