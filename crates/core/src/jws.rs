//! Checks of one compact JWS, shared by the grant and the access token:
//! header (`typ`, `alg`, `crit`), signature with a trusted key, time.
//! And why each one refuses: [`InvalidToken`].

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::de::DeserializeOwned;

use crate::keys::PublicKey;

/// Largest token accepted, in bytes. A real token with its grant is ~1.4 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Which of the two JWTs a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The access token.
    Token,
    /// The grant inside it.
    Grant,
    /// A personal access token's signed body.
    Pat,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Token => "token",
            Self::Grant => "grant",
            Self::Pat => "personal access token",
        })
    }
}

/// Why a token was refused. Every variant answers `401 invalid_token`; the
/// detail is logged at debug, and only "expired" is told to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidToken {
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("token exceeds {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not a compact JWS with JSON header and typed claims.
    #[error("{0} is malformed")]
    Malformed(Part),
    /// `typ` is not `at+jwt` (token) or `grant+jwt` (grant).
    #[error("{0} has the wrong typ")]
    WrongType(Part),
    /// `alg` is not on the allow-list.
    #[error("{0} uses a disallowed algorithm")]
    AlgorithmNotAllowed(Part),
    /// A `crit` header we do not understand.
    #[error("{0} has a critical header extension")]
    CriticalHeader(Part),
    /// The token header has no Ed25519 `jwk`, or `kid` is not its thumbprint.
    #[error("token header key is missing, not Ed25519, or does not match its kid")]
    EmbeddedKey,
    /// The grant's `kid` names no trusted root key.
    #[error("grant is signed by an unknown root key")]
    UnknownRootKey,
    /// A signature does not verify.
    #[error("{0} signature is invalid")]
    BadSignature(Part),
    /// Past `exp` (plus leeway).
    #[error("{0} expired")]
    Expired(Part),
    /// Before `nbf` (minus leeway).
    #[error("{0} is not yet valid")]
    NotYetValid(Part),
    /// `iat` in the future (beyond leeway).
    #[error("{0} is issued in the future")]
    IssuedInFuture(Part),
    /// The grant names another environment.
    #[error("grant is for another environment")]
    WrongEnvironment,
    /// `aud` is not this API.
    #[error("token is for another audience")]
    WrongAudience,
    /// The grant does not bind the key that signed the token.
    #[error("token is signed by a key its grant does not bind")]
    KeyNotBound,
    /// A claim differs between token and grant.
    #[error("token `{0}` does not match its grant")]
    ClaimMismatch(&'static str),
    /// Token `exp` after grant `exp`.
    #[error("token outlives its grant")]
    OutlivesGrant,
    /// Grant lifetime (`exp - iat`) over [`crate::grant::MAX_GRANT_LIFETIME`]:
    /// a grant signed once with a briefly stolen root must not live for years.
    #[error("grant lifetime exceeds the maximum")]
    GrantTooLongLived,
    /// Token lifetime over [`MAX_TOKEN_LIFETIME`].
    #[error("token lifetime exceeds the maximum")]
    TooLongLived,
    /// A scope is malformed.
    #[error("{0} scope is malformed")]
    BadScope(Part),
    /// Token scope beyond the grant's ceiling.
    #[error("token scope exceeds its grant")]
    BeyondGrant,
    /// The root keys could not be refreshed for longer than the allowed
    /// staleness: fail closed rather than trust keys that may be revoked.
    #[error("root keys are stale")]
    KeysStale,
    /// A value with the `ap_pat_` prefix that is not a well-formed PAT.
    #[error(transparent)]
    PatFormat(#[from] crate::pat::PatFormatError),
    /// The PAT, or the PAT or grant a token derives from, was revoked.
    #[error("revoked")]
    Revoked,
    /// This verifier has no revocation feed, or its feed could not be read
    /// for longer than allowed: personal access tokens, and tokens exchanged
    /// from them, are refused (fail closed).
    #[error("personal access tokens need a current revocation feed")]
    RevocationsUnavailable,
}

impl InvalidToken {
    /// What the client is told (`error_description`): precise for expiry,
    /// which a client can act on, generic for the rest.
    pub fn public_description(&self) -> &'static str {
        match self {
            Self::Expired(_) => "the access token expired",
            Self::PatFormat(_) => "the personal access token is malformed (checksum or length)",
            _ => "the access token is invalid",
        }
    }
}

/// Checks `typ`, `alg` and `crit` of a JWT header.
pub(crate) fn check_header(jwt: &str, part: Part, typ: &str) -> Result<Header, InvalidToken> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| InvalidToken::Malformed(part))?;
    // RFC 9068 §4: accept `at+jwt` and its long form `application/at+jwt`.
    let ok_typ = header.typ.as_deref().is_some_and(|t| {
        let t = t.strip_prefix("application/").unwrap_or(t);
        t.eq_ignore_ascii_case(typ)
    });
    if !ok_typ {
        return Err(InvalidToken::WrongType(part));
    }
    if header.alg != Algorithm::EdDSA {
        return Err(InvalidToken::AlgorithmNotAllowed(part));
    }
    // RFC 7515 §4.1.11: a recipient must refuse `crit` extensions it does
    // not understand, and we understand none.
    if header.crit.is_some() {
        return Err(InvalidToken::CriticalHeader(part));
    }
    Ok(header)
}

/// Verifies the signature with `key` (EdDSA only) and parses typed claims.
/// Time and audience are checked by the caller, with its own clock.
pub(crate) fn decode_verified<T: DeserializeOwned>(
    jwt: &str,
    key: &PublicKey,
    part: Part,
) -> Result<T, InvalidToken> {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    jsonwebtoken::decode::<T>(jwt, key.decoding_key(), &v)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => InvalidToken::BadSignature(part),
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                InvalidToken::AlgorithmNotAllowed(part)
            }
            _ => InvalidToken::Malformed(part),
        })
}

/// The Ed25519 key a self-signed JWS carries in its header (`jwk`), which
/// its `kid` must name by RFC 7638 thumbprint. Trusted only once a grant
/// binds it (`cnf.jkt`); `from_jwk` refuses every other key type.
pub(crate) fn embedded_key(header: &Header) -> Result<PublicKey, InvalidToken> {
    let key = header
        .jwk
        .as_ref()
        .and_then(PublicKey::from_jwk)
        .ok_or(InvalidToken::EmbeddedKey)?;
    if header.kid.as_deref() != Some(key.thumbprint()) {
        return Err(InvalidToken::EmbeddedKey);
    }
    Ok(key)
}

/// `iat`/`nbf`/`exp` against `now`, with `leeway` seconds of skew allowed.
/// Saturating: an `exp` near `u64::MAX` cannot wrap into the past.
pub(crate) fn check_time(
    iat: u64,
    nbf: u64,
    exp: u64,
    now: u64,
    leeway: u64,
    part: Part,
) -> Result<(), InvalidToken> {
    if now >= exp.saturating_add(leeway) {
        return Err(InvalidToken::Expired(part));
    }
    if nbf > now.saturating_add(leeway) {
        return Err(InvalidToken::NotYetValid(part));
    }
    if iat > now.saturating_add(leeway) {
        return Err(InvalidToken::IssuedInFuture(part));
    }
    Ok(())
}
