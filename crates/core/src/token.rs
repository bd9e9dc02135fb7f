//! Access tokens (RFC 9068 JWTs) minted by a sidecar under its grant.

use serde::{Deserialize, Serialize};

use crate::authorization::ScopeSet;
use crate::grant::Grant;
use crate::keys::{KeyError, SigningKey};

/// `typ` header value of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Longest access-token lifetime (`exp - iat`), in seconds: the most a
/// sidecar may mint with (`tokens.ttl`) and the most a verifier accepts.
pub const MAX_TOKEN_LIFETIME: u64 = 3600;

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

/// What to mint: the audience, the scopes and the lifetime.
#[derive(Debug, Clone, Copy)]
pub struct MintRequest<'a> {
    /// `aud`: the upstream API's identifier.
    pub audience: &'a str,
    /// The scopes; must lie within the grant's ceiling.
    pub scope: &'a ScopeSet,
    /// Lifetime in seconds (cut at the grant's expiry).
    pub ttl_secs: u64,
}

/// Mints an access token under `grant`, signed by `key` (the key the grant
/// binds), valid from `now` for `req.ttl_secs` but never past the grant's
/// expiry, with the unique id `jti` (see [`crate::keys::random_id`]).
pub fn mint(
    key: &SigningKey,
    grant: &Grant,
    req: MintRequest<'_>,
    now: u64,
    jti: String,
) -> Result<Minted, MintError> {
    let MintRequest {
        audience,
        scope,
        ttl_secs,
    } = req;
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
        exp: now.saturating_add(ttl_secs).min(g.exp),
        jti,
        grant: grant.compact().to_owned(),
    };
    let token = key.sign(ACCESS_TOKEN_TYP, &claims, true)?;
    Ok(Minted { token, claims })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::GrantRequest;
    use crate::keys::random_id;
    use crate::workload::{Environment, WorkloadId};

    const T0: u64 = 1_700_000_000;
    const GRANT_TTL: u64 = 600;
    const AUD: &str = "https://api.example.internal";

    fn scopes(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap()
    }

    /// A sidecar key and a grant binding it, valid `[T0, T0 + GRANT_TTL)`.
    fn granted() -> (SigningKey, Grant) {
        let root = SigningKey::generate().unwrap();
        let sidecar = SigningKey::generate().unwrap();
        let workload: WorkloadId = "task/send-report".parse().unwrap();
        let grant = Grant::issue(
            &root,
            GrantRequest {
                issuer: "authproxy-root",
                workload: &workload,
                environment: &Environment::parse("main").unwrap(),
                ceiling: &scopes("env:view task:operate:send-report"),
                sidecar_key: sidecar.public(),
                ttl_secs: GRANT_TTL,
            },
            T0,
            random_id(),
        )
        .unwrap();
        (sidecar, grant)
    }

    fn request(scope: &ScopeSet, ttl_secs: u64) -> MintRequest<'_> {
        MintRequest {
            audience: AUD,
            scope,
            ttl_secs,
        }
    }

    #[test]
    fn mint_refuses_a_scope_beyond_the_grant() {
        let (key, grant) = granted();
        let beyond = scopes("env:view task:operate:other");
        assert!(matches!(
            mint(&key, &grant, request(&beyond, 60), T0, random_id()),
            Err(MintError::BeyondGrant)
        ));
    }

    #[test]
    fn mint_refuses_a_grant_not_valid_now() {
        let (key, grant) = granted();
        let s = scopes("env:view");
        for now in [T0 - 1, T0 + GRANT_TTL, T0 + GRANT_TTL + 1] {
            assert!(
                matches!(
                    mint(&key, &grant, request(&s, 60), now, random_id()),
                    Err(MintError::GrantNotValid)
                ),
                "now = {now}"
            );
        }
        assert!(
            mint(
                &key,
                &grant,
                request(&s, 60),
                T0 + GRANT_TTL - 1,
                random_id()
            )
            .is_ok()
        );
    }

    #[test]
    fn minted_claims_follow_the_grant_and_the_request() {
        let (key, grant) = granted();
        let jti = random_id();
        let m = mint(
            &key,
            &grant,
            request(&scopes("env:view"), 60),
            T0 + 5,
            jti.clone(),
        )
        .unwrap();
        let c = &m.claims;
        let g = grant.claims();
        assert_eq!(c.iss, g.iss);
        assert_eq!(c.sub, "task/send-report");
        assert_eq!(c.client_id, "task/send-report");
        assert_eq!(c.env, "main");
        assert_eq!(c.aud, AUD);
        assert_eq!(c.scope, "env:view");
        assert_eq!((c.iat, c.nbf, c.exp), (T0 + 5, T0 + 5, T0 + 65));
        assert_eq!(c.jti, jti);
        assert_eq!(c.grant, grant.compact());
    }

    #[test]
    fn token_expiry_is_capped_at_the_grant_expiry() {
        let (key, grant) = granted();
        let s = scopes("env:view");
        let m = mint(&key, &grant, request(&s, 300), T0 + 500, random_id()).unwrap();
        assert_eq!(m.claims.exp, T0 + GRANT_TTL);
        assert_eq!(m.claims.exp, grant.claims().exp);
        let m = mint(&key, &grant, request(&s, u64::MAX), T0, random_id()).unwrap();
        assert_eq!(m.claims.exp, grant.claims().exp);
    }

    #[test]
    fn the_header_names_the_type_and_embeds_the_signing_key() {
        let (key, grant) = granted();
        let m = mint(
            &key,
            &grant,
            request(&scopes("env:view"), 60),
            T0,
            random_id(),
        )
        .unwrap();
        let header = jsonwebtoken::decode_header(&m.token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some(ACCESS_TOKEN_TYP));
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(key.public().thumbprint()));
        assert_eq!(header.kid.as_deref(), Some(grant.claims().cnf.jkt.as_str()));
        assert_eq!(header.jwk, Some(key.public().bare_jwk()));
    }
}
