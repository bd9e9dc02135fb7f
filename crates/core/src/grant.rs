//! Grants: root-signed JWTs binding one sidecar key to one workload, one
//! environment and a ceiling of authorizations (DESIGN §1, §5).
//!
//! The grant is what limits the damage of a stolen sidecar key: the key can
//! sign access tokens only inside its grant's ceiling and environment, and
//! only until the grant expires.

use serde::{Deserialize, Serialize};

use crate::authorization::ScopeSet;
use std::sync::Arc;

use crate::jws::{InvalidToken, MAX_TOKEN_BYTES, Part, check_header, check_time, decode_verified};
use crate::keys::{KeyError, PublicKey, RootKeys, SigningKey};
use crate::pat::PatName;
use crate::workload::{Environment, Subject, WorkloadId};

/// `typ` header value of a grant.
pub const GRANT_TYP: &str = "grant+jwt";

/// Longest grant lifetime (`exp - iat`), in seconds: 7 days. Issuers never
/// sign longer (`trust.grant_ttl`, the issuer's `grant_ttl`), and verifiers
/// refuse longer, so a root key that leaked briefly cannot have signed a
/// grant that outlives its rotation by years.
pub const MAX_GRANT_LIFETIME: u64 = 7 * 24 * 3600;

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
    /// The workload id, or `pat:<name>` for a grant made when a personal
    /// access token was exchanged for an access token.
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
    /// For a `pat:<name>` grant only: the `jti` of the PAT it was exchanged
    /// from, so that the PAT's revocation ends the tokens made from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pat: Option<String>,
}

/// A signed grant: its compact form and what it says.
#[derive(Clone)]
pub struct Grant {
    compact: String,
    claims: GrantClaims,
    subject: Subject,
    /// The `kid` of the root key that signed it.
    root_kid: String,
    /// The RFC 7638 thumbprint of that root key.
    root_thumbprint: String,
    /// Shared: the token endpoint hands the whole ceiling out per request.
    scope: Arc<ScopeSet>,
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

/// What a grant for a token exchanged from a personal access token is
/// issued for (the issuer's `POST /oauth2/token`).
#[derive(Debug, Clone, Copy)]
pub struct PatGrantRequest<'a> {
    /// The root issuer id (`iss`).
    pub issuer: &'a str,
    /// The PAT's name (`sub` becomes `pat:<name>`).
    pub pat: &'a PatName,
    /// The PAT's version id (`jti`), carried as the grant's `pat` claim.
    pub pat_id: &'a str,
    /// The PAT's environment.
    pub environment: &'a Environment,
    /// The PAT's scopes expanded against the catalogue: never a wildcard.
    pub ceiling: &'a ScopeSet,
    /// The (one-use) key that signs the token.
    pub token_key: &'a PublicKey,
    /// Lifetime in seconds.
    pub ttl_secs: u64,
}

/// The parts of a grant common to workloads and PATs.
struct Unsigned<'a> {
    issuer: &'a str,
    environment: &'a Environment,
    ceiling: &'a ScopeSet,
    key: &'a PublicKey,
    ttl_secs: u64,
    pat: Option<&'a str>,
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
    /// Signs a grant with the root key, valid from `now` for `ttl_secs`,
    /// with the unique id `jti` (see [`crate::keys::random_id`]).
    pub fn issue(
        root: &SigningKey,
        req: GrantRequest<'_>,
        now: u64,
        jti: String,
    ) -> Result<Self, KeyError> {
        let subject = Subject::Workload(req.workload.clone());
        let unsigned = Unsigned {
            issuer: req.issuer,
            environment: req.environment,
            ceiling: req.ceiling,
            key: req.sidecar_key,
            ttl_secs: req.ttl_secs,
            pat: None,
        };
        Self::sign(root, subject, unsigned, now, jti)
    }

    /// Signs a grant for a token exchanged from a personal access token:
    /// `sub` is `pat:<name>` and the `pat` claim names the PAT's version,
    /// so revoking the PAT ends the token.
    pub fn issue_for_pat(
        root: &SigningKey,
        req: PatGrantRequest<'_>,
        now: u64,
        jti: String,
    ) -> Result<Self, KeyError> {
        let subject = Subject::Pat(req.pat.clone());
        let unsigned = Unsigned {
            issuer: req.issuer,
            environment: req.environment,
            ceiling: req.ceiling,
            key: req.token_key,
            ttl_secs: req.ttl_secs,
            pat: Some(req.pat_id),
        };
        Self::sign(root, subject, unsigned, now, jti)
    }

    fn sign(
        root: &SigningKey,
        subject: Subject,
        u: Unsigned<'_>,
        now: u64,
        jti: String,
    ) -> Result<Self, KeyError> {
        let claims = GrantClaims {
            iss: u.issuer.to_owned(),
            sub: subject.to_string(),
            env: u.environment.to_string(),
            scope: u.ceiling.to_string(),
            cnf: Confirmation {
                jkt: u.key.thumbprint().to_owned(),
            },
            iat: now,
            nbf: now,
            exp: now.saturating_add(u.ttl_secs),
            jti,
            pat: u.pat.map(str::to_owned),
        };
        let compact = root.sign(GRANT_TYP, &claims, false)?;
        Ok(Self {
            compact,
            claims,
            subject,
            root_kid: root.public().thumbprint().to_owned(),
            root_thumbprint: root.public().thumbprint().to_owned(),
            scope: Arc::new(u.ceiling.clone()),
        })
    }

    /// Verifies a compact grant at `now`: `typ` `grant+jwt`, EdDSA signed by
    /// the root key its `kid` names among `roots` (the algorithm comes from
    /// the allow-list, never from the header), a workload id as `sub`, in
    /// time within `leeway` seconds, and naming `environment`.
    ///
    /// Upstreams verify the grant inside every new token with this; remote
    /// sidecars verify the grant the issuer hands them.
    pub fn verify(
        compact: &str,
        roots: &RootKeys,
        environment: &Environment,
        leeway: u64,
        now: u64,
    ) -> Result<Self, InvalidToken> {
        if compact.len() > MAX_TOKEN_BYTES {
            return Err(InvalidToken::TooLarge);
        }
        let header = check_header(compact, Part::Grant, GRANT_TYP)?;
        let (root_kid, root) = header
            .kid
            .as_deref()
            .and_then(|kid| roots.get_key_value(kid))
            .ok_or(InvalidToken::UnknownRootKey)?;
        let claims: GrantClaims = decode_verified(compact, root, Part::Grant)?;
        if claims.exp.saturating_sub(claims.iat) > MAX_GRANT_LIFETIME {
            return Err(InvalidToken::GrantTooLongLived);
        }
        if claims.env != environment.as_str() {
            return Err(InvalidToken::WrongEnvironment);
        }
        let subject: Subject = claims
            .sub
            .parse()
            .map_err(|_| InvalidToken::Malformed(Part::Grant))?;
        // A `pat` claim exactly on `pat:` grants: a workload grant cannot
        // pose as revocable-by-PAT, nor a PAT grant escape its PAT's feed.
        if matches!(subject, Subject::Pat(_)) != claims.pat.is_some() {
            return Err(InvalidToken::Malformed(Part::Grant));
        }
        let scope =
            ScopeSet::parse(&claims.scope).map_err(|_| InvalidToken::BadScope(Part::Grant))?;
        check_time(claims.iat, claims.nbf, claims.exp, now, leeway, Part::Grant)?;
        Ok(Self {
            compact: compact.to_owned(),
            claims,
            subject,
            root_kid: root_kid.clone(),
            root_thumbprint: root.thumbprint().to_owned(),
            scope: Arc::new(scope),
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

    /// Who it is for (its `sub`, parsed).
    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    /// The workload it is for; `None` for a grant exchanged from a PAT.
    pub fn workload(&self) -> Option<&WorkloadId> {
        self.subject.workload()
    }

    /// The `jti` of the PAT it was exchanged from, if it was.
    pub fn pat_id(&self) -> Option<&str> {
        self.claims.pat.as_deref()
    }

    /// The `kid` of the root key that signed it.
    pub fn root_kid(&self) -> &str {
        &self.root_kid
    }

    /// True while the root key that signed it is among `roots` (the same
    /// key under the same `kid`). A grant verified earlier and cached is
    /// re-checked with this, so it dies with its root's removal.
    pub fn is_signed_by_one_of(&self, roots: &RootKeys) -> bool {
        roots
            .get(&self.root_kid)
            .is_some_and(|k| k.thumbprint() == self.root_thumbprint)
    }

    /// The ceiling, parsed.
    pub fn scope(&self) -> &ScopeSet {
        &self.scope
    }

    /// The ceiling, shared (no copy of the set).
    pub fn shared_scope(&self) -> Arc<ScopeSet> {
        Arc::clone(&self.scope)
    }

    /// True while `now` is before the grant's expiry.
    pub fn is_valid_at(&self, now: u64) -> bool {
        now >= self.claims.nbf && now < self.claims.exp
    }

    /// When the sidecar should ask for the next grant: two thirds into its
    /// life, leaving a third as margin for a slow or failing issuer.
    pub fn renew_at(&self) -> u64 {
        let life = u128::from(self.claims.exp.saturating_sub(self.claims.iat));
        // In u128: `life * 2` cannot overflow, and the result is < `exp`.
        let offset = u64::try_from(life * 2 / 3).unwrap_or(u64::MAX);
        self.claims.iat.saturating_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::random_id;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const T0: u64 = 1_700_000_000;
    const TTL: u64 = 900;

    struct Issued {
        root: SigningKey,
        sidecar: SigningKey,
        jti: String,
        grant: Grant,
    }

    fn main_env() -> Environment {
        Environment::parse("main").unwrap()
    }

    fn issue() -> Issued {
        let root = SigningKey::generate().unwrap();
        let sidecar = SigningKey::generate().unwrap();
        let workload: WorkloadId = "worker/web/queue".parse().unwrap();
        let ceiling = ScopeSet::parse("env:view task:operate:send-report").unwrap();
        let jti = random_id();
        let grant = Grant::issue(
            &root,
            GrantRequest {
                issuer: "authproxy-root",
                workload: &workload,
                environment: &main_env(),
                ceiling: &ceiling,
                sidecar_key: sidecar.public(),
                ttl_secs: TTL,
            },
            T0,
            jti.clone(),
        )
        .unwrap();
        Issued {
            root,
            sidecar,
            jti,
            grant,
        }
    }

    fn roots_of(key: &SigningKey) -> RootKeys {
        RootKeys::from([(key.public().thumbprint().to_owned(), key.public().clone())])
    }

    #[test]
    fn issue_writes_the_claims_it_was_asked_for() {
        let i = issue();
        let c = i.grant.claims();
        assert_eq!(c.iss, "authproxy-root");
        assert_eq!(c.sub, "worker/web/queue");
        assert_eq!(c.env, "main");
        assert_eq!((c.iat, c.nbf, c.exp), (T0, T0, T0 + TTL));
        assert_eq!(c.jti, i.jti);
        assert_eq!(c.cnf.jkt, i.sidecar.public().thumbprint());
        // Canonical order: task authorizations first.
        assert_eq!(c.scope, "task:operate:send-report env:view");
        assert_eq!(i.grant.root_kid(), i.root.public().thumbprint());

        let header = jsonwebtoken::decode_header(i.grant.compact()).unwrap();
        assert_eq!(header.typ.as_deref(), Some(GRANT_TYP));
        assert_eq!(header.kid.as_deref(), Some(i.root.public().thumbprint()));
        assert!(header.jwk.is_none(), "grants do not embed their key");
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_life() {
        let i = issue();
        assert_eq!(i.grant.renew_at(), T0 + TTL * 2 / 3);
        assert_eq!(i.grant.renew_at(), T0 + 600);
    }

    #[test]
    fn a_grant_is_valid_from_nbf_until_just_before_exp() {
        let g = issue().grant;
        assert!(!g.is_valid_at(T0 - 1));
        assert!(g.is_valid_at(T0));
        assert!(g.is_valid_at(T0 + TTL - 1));
        assert!(!g.is_valid_at(T0 + TTL));
    }

    #[test]
    fn an_issued_grant_verifies_and_round_trips() {
        let i = issue();
        let back =
            Grant::verify(i.grant.compact(), &roots_of(&i.root), &main_env(), 0, T0).unwrap();
        assert_eq!(back.workload(), Some(&"worker/web/queue".parse().unwrap()));
        assert_eq!(back.root_kid(), i.root.public().thumbprint());
        assert_eq!(back.scope(), i.grant.scope());
        assert_eq!(back.claims(), i.grant.claims());
        assert_eq!(back.compact(), i.grant.compact());
    }

    #[test]
    fn verify_refuses_a_grant_for_another_environment() {
        let i = issue();
        let staging = Environment::parse("staging").unwrap();
        assert!(matches!(
            Grant::verify(i.grant.compact(), &roots_of(&i.root), &staging, 0, T0),
            Err(InvalidToken::WrongEnvironment)
        ));
    }

    #[test]
    fn verify_refuses_a_grant_from_an_unknown_root() {
        let i = issue();
        let stranger = SigningKey::generate().unwrap();
        assert!(matches!(
            Grant::verify(i.grant.compact(), &roots_of(&stranger), &main_env(), 0, T0),
            Err(InvalidToken::UnknownRootKey)
        ));
    }

    #[test]
    fn verify_refuses_an_expired_grant() {
        let i = issue();
        let roots = roots_of(&i.root);
        assert!(Grant::verify(i.grant.compact(), &roots, &main_env(), 30, T0 + TTL + 29).is_ok());
        assert!(matches!(
            Grant::verify(i.grant.compact(), &roots, &main_env(), 30, T0 + TTL + 30),
            Err(InvalidToken::Expired(Part::Grant))
        ));
    }

    #[test]
    fn verify_refuses_a_tampered_payload() {
        let i = issue();
        let mut parts = i.grant.compact().split('.');
        let (header, payload, signature) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let mut claims: GrantClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims.scope.push_str(" task:operate:drop-database");
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let forged = format!("{header}.{forged_payload}.{signature}");
        assert!(matches!(
            Grant::verify(&forged, &roots_of(&i.root), &main_env(), 0, T0),
            Err(InvalidToken::BadSignature(Part::Grant))
        ));
    }

    #[test]
    fn a_pat_claim_must_come_with_a_pat_subject_and_only_with_it() {
        let i = issue();
        let mut claims = i.grant.claims().clone();
        claims.pat = Some("some-pat-id".into());
        let workload_with_pat = i.root.sign(GRANT_TYP, &claims, false).unwrap();
        claims.sub = "pat:ci".into();
        claims.pat = None;
        let pat_without_claim = i.root.sign(GRANT_TYP, &claims, false).unwrap();
        for compact in [workload_with_pat, pat_without_claim] {
            assert!(matches!(
                Grant::verify(&compact, &roots_of(&i.root), &main_env(), 0, T0),
                Err(InvalidToken::Malformed(Part::Grant))
            ));
        }
        claims.pat = Some("some-pat-id".into());
        let good = i.root.sign(GRANT_TYP, &claims, false).unwrap();
        let g = Grant::verify(&good, &roots_of(&i.root), &main_env(), 0, T0).unwrap();
        assert_eq!(g.subject().to_string(), "pat:ci");
        assert_eq!(g.pat_id(), Some("some-pat-id"));
        assert_eq!(g.workload(), None);
    }

    #[test]
    fn verify_refuses_a_grant_whose_sub_is_not_a_workload() {
        let i = issue();
        let mut claims = i.grant.claims().clone();
        claims.sub = "cron/web/nightly".into();
        let compact = i.root.sign(GRANT_TYP, &claims, false).unwrap();
        assert!(matches!(
            Grant::verify(&compact, &roots_of(&i.root), &main_env(), 0, T0),
            Err(InvalidToken::Malformed(Part::Grant))
        ));
    }
}
