//! Grants: root-signed JWTs binding one sidecar key to one workload, one
//! environment and a ceiling of authorizations (DESIGN §1, §5).
//!
//! The grant is what limits the damage of a stolen sidecar key: the key can
//! sign access tokens only inside its grant's ceiling and environment, and
//! only until the grant expires.

use serde::{Deserialize, Serialize};

use crate::authorization::ScopeSet;
use crate::keys::{KeyError, PublicKey, SigningKey, random_id};
use crate::workload::{Environment, WorkloadId};

/// `typ` header value of a grant.
pub const GRANT_TYP: &str = "grant+jwt";

/// RFC 7800 confirmation: the thumbprint of the key the grant binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// RFC 7638 SHA-256 thumbprint of the sidecar's public key.
    pub jkt: String,
}

/// The claims of a grant. Typed, so a duplicate member (two `scope`s) fails
/// to parse instead of silently keeping the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    /// The root issuer id.
    pub iss: String,
    /// The workload id.
    pub sub: String,
    /// The environment.
    pub env: String,
    /// The ceiling of authorizations, space-separated.
    pub scope: String,
    /// The sidecar key this grant binds.
    pub cnf: Confirmation,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Not before (unix seconds).
    pub nbf: u64,
    /// Expiry (unix seconds).
    pub exp: u64,
    /// Unique id.
    pub jti: String,
}

/// A signed grant: its compact form and what it says.
#[derive(Clone)]
pub struct Grant {
    compact: String,
    claims: GrantClaims,
    scope: ScopeSet,
}

impl std::fmt::Debug for Grant {
    // The compact grant is a bearer credential ingredient: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("sub", &self.claims.sub)
            .field("env", &self.claims.env)
            .field("scope", &self.claims.scope)
            .field("exp", &self.claims.exp)
            .field("jti", &self.claims.jti)
            .finish()
    }
}

/// What a grant is issued for.
#[derive(Debug, Clone, Copy)]
pub struct GrantRequest<'a> {
    /// The root issuer id (`iss`).
    pub issuer: &'a str,
    /// The workload.
    pub workload: &'a WorkloadId,
    /// The environment.
    pub environment: &'a Environment,
    /// The ceiling: the workload's declared authorizations.
    pub ceiling: &'a ScopeSet,
    /// The sidecar key to bind.
    pub sidecar_key: &'a PublicKey,
    /// Lifetime in seconds.
    pub ttl_secs: u64,
}

impl Grant {
    /// Signs a grant with the root key, valid from `now` for `ttl_secs`.
    pub fn issue(root: &SigningKey, req: GrantRequest<'_>, now: u64) -> Result<Self, KeyError> {
        let claims = GrantClaims {
            iss: req.issuer.to_owned(),
            sub: req.workload.to_string(),
            env: req.environment.to_string(),
            scope: req.ceiling.to_string(),
            cnf: Confirmation {
                jkt: req.sidecar_key.thumbprint().to_owned(),
            },
            iat: now,
            nbf: now,
            exp: now + req.ttl_secs,
            jti: random_id(),
        };
        let compact = root.sign(GRANT_TYP, &claims, false)?;
        Ok(Self {
            compact,
            claims,
            scope: req.ceiling.clone(),
        })
    }

    /// The compact JWS.
    pub fn compact(&self) -> &str {
        &self.compact
    }

    /// The claims.
    pub fn claims(&self) -> &GrantClaims {
        &self.claims
    }

    /// The ceiling, parsed.
    pub fn scope(&self) -> &ScopeSet {
        &self.scope
    }

    /// True while `now` is before the grant's expiry.
    pub fn is_valid_at(&self, now: u64) -> bool {
        now >= self.claims.nbf && now < self.claims.exp
    }

    /// When the sidecar should ask for the next grant: two thirds into its
    /// life, leaving a third as margin for a slow or failing issuer.
    pub fn renew_at(&self) -> u64 {
        let life = self.claims.exp.saturating_sub(self.claims.iat);
        self.claims.iat + life * 2 / 3
    }
}
