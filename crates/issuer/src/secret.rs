//! Bearer secrets the issuer hands out — workload credentials (`ap_wc_…`)
//! and admin tokens (`ap_admin_…`) — and the only form in which it keeps
//! them: their SHA-256.
//!
//! A secret is 256 bits from the OS CSPRNG, so a plain SHA-256 is enough to
//! store it (no password hashing: there is nothing to brute-force), and a
//! stolen database holds nothing that authenticates. The prefixes let secret
//! scanners recognise a leaked value.

use std::fmt;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Prefix of workload credentials.
pub const WORKLOAD_CREDENTIAL_PREFIX: &str = "ap_wc_";
/// Prefix of admin tokens.
pub const ADMIN_TOKEN_PREFIX: &str = "ap_admin_";

/// Longest secret accepted from a request, in bytes; anything longer is
/// refused before it is hashed.
const MAX_SECRET_BYTES: usize = 256;

/// A bearer secret. `Debug` and `Display` never show it; only
/// [`Secret::expose`] does, for the one place it is handed out. No
/// `PartialEq`: secrets are compared only as hashes, in constant time.
#[derive(Clone)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A fresh secret: `prefix` then 32 random bytes, base64url.
    pub fn generate(prefix: &str) -> Result<Self, aws_lc_rs::error::Unspecified> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes)?;
        Ok(Self(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))))
    }

    /// A secret presented by a client, if it has the expected prefix and a
    /// sane length. The check is only a cheap filter before hashing: what
    /// authenticates is the hash lookup.
    pub fn presented(value: &str, prefix: &str) -> Option<Self> {
        let ok = value.len() <= MAX_SECRET_BYTES
            && value.len() > prefix.len()
            && value.starts_with(prefix)
            && value.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(value.to_owned()))
    }

    /// A secret made elsewhere, such as a signed PAT value (`ap_pat_…`),
    /// kept in this type so that it is never printed by accident.
    pub fn issued(value: String) -> Self {
        Self(value)
    }

    /// The value, to hand out once or send.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its SHA-256.
    pub fn hash(&self) -> SecretHash {
        let d = digest::digest(&digest::SHA256, self.0.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        SecretHash(out)
    }
}

/// The SHA-256 of a [`Secret`]: what the store keeps.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash([u8; 32]);

impl fmt::Debug for SecretHash {
    // Not a secret, but a short prefix is all a log line needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl SecretHash {
    /// From the 32 bytes a store returns; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// True when `self` is one of `known`, comparing every candidate in
    /// constant time and without stopping at the first match, so the time
    /// taken tells nothing about which bytes matched.
    pub fn is_one_of(&self, known: &[SecretHash]) -> bool {
        known.iter().fold(false, |found, k| {
            let equal = aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &k.0).is_ok();
            found | equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_carry_their_prefix_and_differ() {
        let a = Secret::generate(WORKLOAD_CREDENTIAL_PREFIX).unwrap();
        let b = Secret::generate(WORKLOAD_CREDENTIAL_PREFIX).unwrap();
        assert!(a.expose().starts_with("ap_wc_"));
        assert_eq!(a.expose().len(), "ap_wc_".len() + 43);
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), a.clone().hash());
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::generate(ADMIN_TOKEN_PREFIX).unwrap();
        let shown = format!("{s:?} {:?}", s.hash());
        assert!(!shown.contains(&s.expose()["ap_admin_".len()..]), "{shown}");
        assert!(!shown.contains("ap_admin_"), "{shown}");
    }

    #[test]
    fn presented_values_need_the_prefix_and_a_sane_length() {
        assert!(Secret::presented("ap_wc_abc", WORKLOAD_CREDENTIAL_PREFIX).is_some());
        assert!(Secret::presented("ap_wc_", WORKLOAD_CREDENTIAL_PREFIX).is_none());
        assert!(Secret::presented("ap_admin_abc", WORKLOAD_CREDENTIAL_PREFIX).is_none());
        assert!(Secret::presented("ap_wc_a b", WORKLOAD_CREDENTIAL_PREFIX).is_none());
        let long = format!("ap_wc_{}", "a".repeat(300));
        assert!(Secret::presented(&long, WORKLOAD_CREDENTIAL_PREFIX).is_none());
    }

    #[test]
    fn membership_is_exact() {
        let a = Secret::generate(ADMIN_TOKEN_PREFIX).unwrap().hash();
        let b = Secret::generate(ADMIN_TOKEN_PREFIX).unwrap().hash();
        assert!(a.is_one_of(&[b, a]));
        assert!(!a.is_one_of(&[b]));
        assert!(!a.is_one_of(&[]));
        assert_eq!(SecretHash::from_bytes(a.as_bytes()), Some(a));
        assert_eq!(SecretHash::from_bytes(&[0; 31]), None);
    }
}
