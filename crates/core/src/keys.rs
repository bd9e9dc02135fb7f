//! Ed25519 keys: generation, PKCS#8 PEM storage, public JWKs and RFC 7638
//! thumbprints, JWS signing, random ids.
//!
//! Private key material never leaves this module except as the PKCS#8 PEM
//! that the embedded issuer writes to its 0600 root-key file; `Debug` shows
//! the key id only, so a stray `{:?}` cannot log a secret.

use std::fmt;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use serde::Serialize;

/// Errors of key handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The PEM is not an Ed25519 PKCS#8 private key.
    #[error("not an Ed25519 PKCS#8 private key: {0}")]
    InvalidPrivateKey(String),
    /// The crypto backend failed (it should not).
    #[error("crypto backend failure: {0}")]
    Crypto(String),
}

/// An Ed25519 signing key with its public half precomputed.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.public.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::generate().map_err(|e| KeyError::Crypto(e.to_string()))?;
        Self::from_pair(pair)
    }

    /// Loads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) Ed25519 key.
    pub fn from_pkcs8_pem(pem_text: &[u8]) -> Result<Self, KeyError> {
        let parsed =
            pem::parse(pem_text).map_err(|e| KeyError::InvalidPrivateKey(e.to_string()))?;
        if parsed.tag() != "PRIVATE KEY" {
            return Err(KeyError::InvalidPrivateKey(format!(
                "PEM label is `{}`, expected `PRIVATE KEY`",
                parsed.tag()
            )));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(parsed.contents())
            .map_err(|e| KeyError::InvalidPrivateKey(e.to_string()))?;
        Self::from_pair(pair)
    }

    /// The key as PKCS#8 v1 PEM — the format `openssl genpkey -algorithm ed25519` writes.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        let doc = self
            .pair
            .to_pkcs8v1()
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref())))
    }

    fn from_pair(pair: Ed25519KeyPair) -> Result<Self, KeyError> {
        let public = PublicKey::from_raw(pair.public_key().as_ref())?;
        Ok(Self { pair, public })
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `claims` as a compact JWS with `alg: EdDSA`, the given `typ`,
    /// and `kid` set to this key's thumbprint; `embed_jwk` also puts the
    /// public JWK in the header (access tokens do, grants do not).
    pub fn sign<T: Serialize>(
        &self,
        typ: &str,
        claims: &T,
        embed_jwk: bool,
    ) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.public.kid.clone());
        if embed_jwk {
            header.jwk = Some(self.public.bare_jwk());
        }
        let header = serde_json::to_vec(&header).map_err(|e| KeyError::Crypto(e.to_string()))?;
        let claims = serde_json::to_vec(claims).map_err(|e| KeyError::Crypto(e.to_string()))?;
        let mut input = String::with_capacity((header.len() + claims.len()) * 4 / 3 + 96);
        URL_SAFE_NO_PAD.encode_string(header, &mut input);
        input.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut input);
        Ok(self.finish_jws(input))
    }

    /// Completes a compact JWS: `signing_input` is `base64url(header) "."
    /// base64url(payload)`, to which `"." base64url(signature)` is appended.
    ///
    /// Signs with the key pair held in memory. (`jsonwebtoken::encode`
    /// rebuilt the pair from its PKCS#8 form on every call, deriving the
    /// public key again: a second scalar multiplication per token.)
    pub(crate) fn finish_jws(&self, mut signing_input: String) -> String {
        let signature = self.pair.sign(signing_input.as_bytes());
        signing_input.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut signing_input);
        signing_input
    }
}

/// An Ed25519 public key, with its RFC 7638 thumbprint as key id.
#[derive(Clone)]
pub struct PublicKey {
    x: String,
    kid: String,
    decoding: DecodingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey").field("kid", &self.kid).finish()
    }
}

impl PublicKey {
    /// From the 32 raw public key bytes.
    pub fn from_raw(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != 32 {
            return Err(KeyError::Crypto("Ed25519 public keys are 32 bytes".into()));
        }
        Self::from_x(&URL_SAFE_NO_PAD.encode(bytes))
    }

    /// From a JWK, accepting only `kty: OKP, crv: Ed25519` with a 32-byte `x`.
    ///
    /// This is the only way a key supplied by a token becomes a verification
    /// key, and it refuses every other key type — in particular `kty: oct`,
    /// which `DecodingKey::from_jwk` would turn into an HMAC secret.
    pub fn from_jwk(jwk: &Jwk) -> Option<Self> {
        match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                let raw = URL_SAFE_NO_PAD.decode(&p.x).ok()?;
                // Re-encode so the thumbprint is computed over the canonical
                // form, whatever padding or spare bits the sender used.
                Self::from_raw(&raw).ok()
            }
            _ => None,
        }
    }

    /// The public key bytes, base64url: the JWK's `x`.
    pub(crate) fn x(&self) -> &str {
        &self.x
    }

    fn from_x(x: &str) -> Result<Self, KeyError> {
        let bare = bare_jwk(x);
        let kid = bare
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        let decoding =
            DecodingKey::from_ed_components(x).map_err(|e| KeyError::Crypto(e.to_string()))?;
        Ok(Self {
            x: x.to_owned(),
            kid,
            decoding,
        })
    }

    /// The RFC 7638 SHA-256 thumbprint, base64url — used as `kid` and `cnf.jkt`.
    pub fn thumbprint(&self) -> &str {
        &self.kid
    }

    /// The key for `jsonwebtoken::decode`.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The public JWK with only the members the thumbprint covers.
    pub fn bare_jwk(&self) -> Jwk {
        bare_jwk(&self.x)
    }

    /// The public JWK as published in a JWKS: with `kid`, `alg` and `use`.
    pub fn published_jwk(&self) -> Jwk {
        let mut jwk = bare_jwk(&self.x);
        jwk.common = CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            key_id: Some(self.kid.clone()),
            ..CommonParameters::default()
        };
        jwk
    }
}

fn bare_jwk(x: &str) -> Jwk {
    Jwk {
        common: CommonParameters::default(),
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: x.to_owned(),
        }),
    }
}

/// Trusted root public keys, by `kid`.
pub type RootKeys = std::collections::HashMap<String, PublicKey>;

/// A JSON Web Key Set (RFC 7517) as authproxy publishes and reads it.
///
/// Our own type, so that a major version of the JWT library never shows in
/// another crate's API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Jwks(JwkSet);

impl Jwks {
    /// A set publishing the given public keys (with `kid`, `alg`, `use`).
    pub fn publish<'a>(keys: impl IntoIterator<Item = &'a PublicKey>) -> Self {
        Self(JwkSet {
            keys: keys.into_iter().map(PublicKey::published_jwk).collect(),
        })
    }

    /// Parses a JWKS document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The Ed25519 signature keys with a `kid`, by `kid`. Every other entry
    /// is skipped: an RSA or HMAC entry in a shared JWKS must never become a
    /// way in.
    pub fn usable_keys(&self) -> RootKeys {
        let mut out = RootKeys::new();
        for jwk in &self.0.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let sig_use = matches!(
                jwk.common.public_key_use,
                None | Some(PublicKeyUse::Signature)
            );
            let eddsa = matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::EdDSA));
            if !(sig_use && eddsa) {
                continue;
            }
            // `from_jwk` accepts only OKP / Ed25519.
            if let Some(k) = PublicKey::from_jwk(jwk) {
                out.insert(kid, k);
            }
        }
        out
    }
}

/// A random 128-bit identifier, base64url (for `jti`).
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // The OS CSPRNG does not fail on supported platforms; if it ever did, a
    // zero id would only weaken log correlation, not security (jti is not a
    // secret and tokens are signed).
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs and verifies one throwaway token, so that a binary built without a
/// working crypto backend fails at boot rather than inside a request
/// (DESIGN §10: jsonwebtoken panics on first use when misbuilt).
pub fn self_test() -> Result<(), KeyError> {
    let key = SigningKey::generate()?;
    let token = key.sign("JWT", &serde_json::json!({"self_test": true}), false)?;
    let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(&token, key.public().decoding_key(), &validation)
        .map(|_| ())
        .map_err(|e| KeyError::Crypto(format!("sign+verify self-test failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_keeps_the_key_id() {
        let k = SigningKey::generate().unwrap();
        let pem = k.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = SigningKey::from_pkcs8_pem(pem.as_bytes()).unwrap();
        assert_eq!(back.public().thumbprint(), k.public().thumbprint());
    }

    #[test]
    fn thumbprint_matches_rfc_8037_appendix_a3() {
        // RFC 8037 A.3: thumbprint of the Ed25519 key from A.2.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let raw = URL_SAFE_NO_PAD.decode(x).unwrap();
        let k = PublicKey::from_raw(&raw).unwrap();
        assert_eq!(
            k.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let k = SigningKey::generate().unwrap();
        let shown = format!("{k:?}");
        assert!(shown.contains(k.public().thumbprint()));
        assert!(!shown.contains(&k.public().x));
    }

    #[test]
    fn only_ed25519_jwks_become_verification_keys() {
        let k = SigningKey::generate().unwrap();
        assert!(PublicKey::from_jwk(&k.public().bare_jwk()).is_some());
        let oct: Jwk =
            serde_json::from_value(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})).unwrap();
        assert!(PublicKey::from_jwk(&oct).is_none());
    }

    #[test]
    fn self_test_passes() {
        self_test().unwrap();
    }
}
