//! Access tokens (RFC 9068 JWTs) minted by a sidecar under its grant.

use serde::{Deserialize, Serialize};

use crate::authorization::ScopeSet;
use crate::grant::Grant;
use crate::keys::{KeyError, SigningKey, random_id};

/// `typ` header value of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The claims of an access token (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// Same as the grant's `iss`.
    pub iss: String,
    /// The workload id.
    pub sub: String,
    /// The workload id again (RFC 9068 requires `client_id`).
    pub client_id: String,
    /// The upstream API's identifier.
    pub aud: String,
    /// The environment.
    pub env: String,
    /// The granted authorizations, space-separated.
    pub scope: String,
    /// Issued at.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Expiry; never past the grant's.
    pub exp: u64,
    /// Unique id (logged; the token itself never is).
    pub jti: String,
    /// The grant, compact, so a verifier needs only the root keys.
    pub grant: String,
}

/// A freshly minted access token.
#[derive(Clone)]
pub struct Minted {
    /// The compact JWS. A secret: never log it.
    pub token: String,
    /// Its claims (without needing to parse the token).
    pub claims: AccessTokenClaims,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("jti", &self.claims.jti)
            .field("sub", &self.claims.sub)
            .field("scope", &self.claims.scope)
            .field("exp", &self.claims.exp)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The requested scope exceeds the grant's ceiling.
    #[error("requested scope exceeds the grant")]
    BeyondGrant,
    /// The grant is expired or not yet valid.
    #[error("the grant is not valid now")]
    GrantNotValid,
    /// Signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Mints an access token for `scope` under `grant`, signed by `key` (the key
/// the grant binds), valid from `now` for `ttl_secs` but never past the
/// grant's expiry.
pub fn mint(
    key: &SigningKey,
    grant: &Grant,
    audience: &str,
    scope: &ScopeSet,
    ttl_secs: u64,
    now: u64,
) -> Result<Minted, MintError> {
    // Defence in depth: the server checks the ceiling too, but a minter that
    // could sign beyond its grant would produce tokens every layer refuses.
    if !scope.is_subset(grant.scope()) {
        return Err(MintError::BeyondGrant);
    }
    if !grant.is_valid_at(now) {
        return Err(MintError::GrantNotValid);
    }
    let g = grant.claims();
    let claims = AccessTokenClaims {
        iss: g.iss.clone(),
        sub: g.sub.clone(),
        client_id: g.sub.clone(),
        aud: audience.to_owned(),
        env: g.env.clone(),
        scope: scope.to_string(),
        iat: now,
        nbf: now,
        exp: (now + ttl_secs).min(g.exp),
        jti: random_id(),
        grant: grant.compact().to_owned(),
    };
    let token = key.sign(ACCESS_TOKEN_TYP, &claims, true)?;
    Ok(Minted { token, claims })
}
