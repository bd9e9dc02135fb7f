//! Verification of an access token and its grant (DESIGN §5 "Verification").
//!
//! The order of checks, and why each exists:
//! 1. size cap — bounds the work an attacker can make us do;
//! 2. token header: `typ` is `at+jwt` (a grant or an ID token presented as an
//!    access token is refused), `alg` is EdDSA (never `none`, never HMAC),
//!    no `crit`, an Ed25519 `jwk` whose thumbprint is the `kid`;
//! 3. token signature with that key — proves only that whoever holds it signed;
//! 4. the grant: `typ` `grant+jwt`, signed by a *trusted root* key found by
//!    `kid` (the algorithm comes from our allow-list, never from the header),
//!    in time, naming our environment;
//! 5. the binding: grant `cnf.jkt` equals the token key's thumbprint — this
//!    is what makes the self-signed token trustworthy;
//! 6. token claims against the grant (`iss`, `sub`, `client_id`, `env`,
//!    `exp` ≤ grant `exp`, scope ⊆ grant scope) and against us (`aud`, time,
//!    maximum lifetime).
//!
//! No URL named in a token (`jku`, `x5u`) is ever fetched. Time is a
//! parameter, so expiry and leeway are tested exactly.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::de::DeserializeOwned;

use crate::authorization::ScopeSet;
use crate::grant::{GRANT_TYP, GrantClaims};
use crate::keys::PublicKey;
use crate::token::{ACCESS_TOKEN_TYP, AccessTokenClaims};
use crate::workload::Environment;

/// Largest token accepted, in bytes. A real token with its grant is ~1.4 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest token lifetime (`exp - iat`) accepted: the sidecar's maximum `tokens.ttl`.
pub const MAX_TOKEN_LIFETIME: u64 = 3600;

/// Which of the two JWTs a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The access token.
    Token,
    /// The grant inside it.
    Grant,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Token => "token",
            Self::Grant => "grant",
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
}

impl InvalidToken {
    /// What the client is told (`error_description`): precise for expiry,
    /// which a client can act on, generic for the rest.
    pub fn public_description(&self) -> &'static str {
        match self {
            Self::Expired(_) => "the access token expired",
            _ => "the access token is invalid",
        }
    }
}

/// Who a verified token speaks for. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Principal(Arc<PrincipalInner>);

#[derive(Debug)]
struct PrincipalInner {
    sub: String,
    env: String,
    scopes: ScopeSet,
    jti: String,
    exp: u64,
}

impl Principal {
    /// The workload id (`app/web`, `task/send-report`, …).
    pub fn sub(&self) -> &str {
        &self.0.sub
    }
    /// The environment.
    pub fn env(&self) -> &str {
        &self.0.env
    }
    /// The token's scopes.
    pub fn scopes(&self) -> &ScopeSet {
        &self.0.scopes
    }
    /// The token id.
    pub fn jti(&self) -> &str {
        &self.0.jti
    }
    /// Expiry, unix seconds.
    pub fn exp(&self) -> u64 {
        self.0.exp
    }
}

/// The trusted root keys, by `kid`.
pub type RootKeys = HashMap<String, PublicKey>;

/// What a verified grant says, kept in the grant cache.
#[derive(Debug)]
struct VerifiedGrant {
    claims: GrantClaims,
    scope: ScopeSet,
}

/// The verification rules and caches of one upstream (one audience, one environment).
pub struct Verifier {
    audience: String,
    environment: Environment,
    leeway: u64,
    grants: BoundedCache<Arc<VerifiedGrant>>,
    tokens: BoundedCache<Principal>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("audience", &self.audience)
            .field("environment", &self.environment)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens meant for `audience` in `environment`;
    /// `leeway` seconds of clock skew are tolerated; each cache holds at most
    /// `cache_capacity` entries.
    pub fn new(
        audience: String,
        environment: Environment,
        leeway: u64,
        cache_capacity: usize,
    ) -> Self {
        Self {
            audience,
            environment,
            leeway,
            grants: BoundedCache::new(cache_capacity),
            tokens: BoundedCache::new(cache_capacity),
        }
    }

    /// Verifies `token` at time `now` against `roots`.
    pub fn verify(
        &self,
        token: &str,
        roots: &RootKeys,
        now: u64,
    ) -> Result<Principal, InvalidToken> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(InvalidToken::TooLarge);
        }
        let token_key = cache_key(token);
        // A cached token was fully verified before; only time can change
        // its verdict (the root that signed its grant stays trusted for the
        // grant's life — revocation arrives with a later issue).
        if let Some(p) = self.tokens.get(&token_key, now) {
            if now >= p.exp() + self.leeway {
                return Err(InvalidToken::Expired(Part::Token));
            }
            return Ok(p);
        }

        // 2. Token header.
        let header = check_header(token, Part::Token, ACCESS_TOKEN_TYP)?;
        let key = header
            .jwk
            .as_ref()
            .and_then(PublicKey::from_jwk)
            .ok_or(InvalidToken::EmbeddedKey)?;
        if header.kid.as_deref() != Some(key.thumbprint()) {
            return Err(InvalidToken::EmbeddedKey);
        }

        // 3. Token signature with its own key (trusted only after step 5).
        let claims: AccessTokenClaims = decode_verified(token, &key, Part::Token)?;

        // 4. The grant.
        let grant = self.verify_grant(&claims.grant, roots, now)?;
        let g = &grant.claims;

        // 5. The binding.
        if g.cnf.jkt != key.thumbprint() {
            return Err(InvalidToken::KeyNotBound);
        }

        // 6. Token against grant and against us.
        for (name, ours, theirs) in [
            ("iss", &claims.iss, &g.iss),
            ("sub", &claims.sub, &g.sub),
            ("client_id", &claims.client_id, &g.sub),
            ("env", &claims.env, &g.env),
        ] {
            if ours != theirs {
                return Err(InvalidToken::ClaimMismatch(name));
            }
        }
        if claims.aud != self.audience {
            return Err(InvalidToken::WrongAudience);
        }
        self.check_time(claims.iat, claims.nbf, claims.exp, now, Part::Token)?;
        if claims.exp > g.exp {
            return Err(InvalidToken::OutlivesGrant);
        }
        if claims.exp.saturating_sub(claims.iat) > MAX_TOKEN_LIFETIME {
            return Err(InvalidToken::TooLongLived);
        }
        let scopes =
            ScopeSet::parse(&claims.scope).map_err(|_| InvalidToken::BadScope(Part::Token))?;
        if !scopes.is_subset(&grant.scope) {
            return Err(InvalidToken::BeyondGrant);
        }

        let principal = Principal(Arc::new(PrincipalInner {
            sub: claims.sub,
            env: claims.env,
            scopes,
            jti: claims.jti,
            exp: claims.exp,
        }));
        self.tokens
            .insert(token_key, claims.exp + self.leeway, principal.clone(), now);
        Ok(principal)
    }

    fn verify_grant(
        &self,
        grant: &str,
        roots: &RootKeys,
        now: u64,
    ) -> Result<Arc<VerifiedGrant>, InvalidToken> {
        let grant_key = cache_key(grant);
        let verified = match self.grants.get(&grant_key, now) {
            Some(v) => v,
            None => {
                if grant.len() > MAX_TOKEN_BYTES {
                    return Err(InvalidToken::TooLarge);
                }
                let header = check_header(grant, Part::Grant, GRANT_TYP)?;
                let root = header
                    .kid
                    .as_deref()
                    .and_then(|kid| roots.get(kid))
                    .ok_or(InvalidToken::UnknownRootKey)?;
                let claims: GrantClaims = decode_verified(grant, root, Part::Grant)?;
                if claims.env != self.environment.as_str() {
                    return Err(InvalidToken::WrongEnvironment);
                }
                let scope = ScopeSet::parse(&claims.scope)
                    .map_err(|_| InvalidToken::BadScope(Part::Grant))?;
                let v = Arc::new(VerifiedGrant { claims, scope });
                self.grants
                    .insert(grant_key, v.claims.exp + self.leeway, Arc::clone(&v), now);
                v
            }
        };
        let c = &verified.claims;
        self.check_time(c.iat, c.nbf, c.exp, now, Part::Grant)?;
        Ok(verified)
    }

    fn check_time(
        &self,
        iat: u64,
        nbf: u64,
        exp: u64,
        now: u64,
        part: Part,
    ) -> Result<(), InvalidToken> {
        if now >= exp.saturating_add(self.leeway) {
            return Err(InvalidToken::Expired(part));
        }
        if nbf > now.saturating_add(self.leeway) {
            return Err(InvalidToken::NotYetValid(part));
        }
        if iat > now.saturating_add(self.leeway) {
            return Err(InvalidToken::IssuedInFuture(part));
        }
        Ok(())
    }
}

/// Checks `typ`, `alg` and `crit` of a JWT header.
fn check_header(jwt: &str, part: Part, typ: &str) -> Result<Header, InvalidToken> {
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
fn decode_verified<T: DeserializeOwned>(
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

type CacheKey = [u8; 32];

fn cache_key(s: &str) -> CacheKey {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

/// A size-bounded map whose entries expire. Keys are SHA-256 digests, so
/// memory per entry is fixed whatever the token size.
struct BoundedCache<V> {
    capacity: usize,
    // RwLock: every request of a reused token reads, only a new token
    // writes, and an upstream's worker threads should not queue on hits.
    map: RwLock<HashMap<CacheKey, (u64, V)>>,
}

impl<V: Clone> BoundedCache<V> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: RwLock::new(HashMap::new()),
        }
    }

    // Each operation is one map call: a poisoned lock holds a consistent map.
    fn get(&self, key: &CacheKey, now: u64) -> Option<V> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .filter(|(until, _)| now < *until)
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, key: CacheKey, until: u64, value: V, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= self.capacity {
            map.retain(|_, (u, _)| now < *u);
            // Still full of live entries (a flood of distinct valid tokens):
            // start over rather than grow. Correctness never depends on a hit.
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(key, (until, value));
    }
}
