//! Identifiers and secrets: `i-`/`t-`/`c-`/`act-`/`tok-` ids, AccessKey pairs, random secrets
//! and the hash under which a secret is stored.

use rand::distributions::Alphanumeric;
use rand::{Rng as _, RngCore};
use sha2::{Digest, Sha256};

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A new id: `prefix` + `-` + 20 lowercase base32 characters (100 random bits).
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut id = String::with_capacity(prefix.len() + 21);
    id.push_str(prefix);
    id.push('-');
    id.extend(bytes.iter().map(|b| BASE32[usize::from(b & 31)] as char));
    id
}

/// A new 256-bit secret, as 52 base32 characters.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 52];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| BASE32[usize::from(b & 31)] as char).collect()
}

/// A new AccessKey id, shaped like Alibaba's: `LTAI` + 20 letters and digits.
pub fn new_access_key_id() -> String {
    format!("LTAI{}", alphanumeric(20))
}

/// A new AccessKey secret, shaped like Alibaba's: 30 letters and digits (178 random bits).
pub fn new_access_key_secret() -> String {
    alphanumeric(30)
}

/// `n` characters drawn uniformly from `A-Z`, `a-z` and `0-9`.
fn alphanumeric(n: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// SHA-256 of a high-entropy secret, hex encoded: how tokens, activation codes and instance
/// secrets are stored. (Passwords, which are low-entropy, use argon2id instead.)
pub fn hash_secret(secret: &str) -> String {
    crate::protocol::hex(&Sha256::digest(secret.as_bytes()))
}

/// Whether `s` looks like an id made by [`new_id`] with this prefix.
pub fn is_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|tail| tail.len() == 20 && tail.bytes().all(|b| BASE32.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_documented_shape() {
        let id = new_id("i");
        assert_eq!(id.len(), 22);
        assert!(is_id(&id, "i"), "{id}");
        assert!(!is_id(&id, "t"));
        assert!(!is_id("i-short", "i"));
        assert_ne!(new_id("i"), new_id("i"));
    }

    #[test]
    fn access_key_pairs_look_like_alibabas() {
        let (id, secret) = (new_access_key_id(), new_access_key_secret());

        assert_eq!(id.len(), 24);
        assert!(
            id.starts_with("LTAI") && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id}"
        );
        assert_eq!(secret.len(), 30);
        assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()), "{secret}");
        assert_ne!(new_access_key_secret(), secret);
    }

    #[test]
    fn secrets_hash_deterministically() {
        let s = new_secret();
        assert_eq!(s.len(), 52);
        assert_eq!(hash_secret(&s), hash_secret(&s));
        assert_eq!(hash_secret(&s).len(), 64);
    }
}
