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

use crate::authorization::ScopeSet;
use crate::grant::Grant;
use crate::jws::{check_header, check_time, decode_verified, embedded_key};
use crate::pat::VerifiedPat;
use crate::scopes::Scopes;
use crate::token::{ACCESS_TOKEN_TYP, AccessTokenClaims, MAX_TOKEN_LIFETIME};
use crate::workload::{Environment, Subject};

pub use crate::jws::{InvalidToken, MAX_TOKEN_BYTES, Part};
pub use crate::keys::RootKeys;

/// What a verified token says: who it speaks for, with which scopes, until
/// when. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Verified(Arc<VerifiedInner>);

#[derive(Debug)]
struct VerifiedInner {
    sub: Subject,
    env: Environment,
    scopes: Scopes,
    jti: String,
    exp: u64,
    iat: u64,
    /// The grant it was verified under: a cache hit re-checks its root.
    grant: Arc<Grant>,
}

impl Verified {
    /// Who the token speaks for: a workload (`app/web`, …) or, for a token
    /// exchanged from a personal access token, `pat:<name>`.
    pub fn sub(&self) -> &Subject {
        &self.0.sub
    }
    /// The environment.
    pub fn env(&self) -> &Environment {
        &self.0.env
    }
    /// The token's scopes (always exact: tokens carry no wildcard).
    pub fn scopes(&self) -> &Scopes {
        &self.0.scopes
    }
    /// The id (`jti`) of the grant it was minted under: what the
    /// revocation feed names when a workload's grants are revoked.
    pub fn grant_id(&self) -> &str {
        &self.0.grant.claims().jti
    }
    /// The `jti` of the personal access token it was exchanged from, if any.
    pub fn pat_id(&self) -> Option<&str> {
        self.0.grant.pat_id()
    }
    /// Issued at, unix seconds.
    pub fn iat(&self) -> u64 {
        self.0.iat
    }
    /// The issuer (`iss`).
    pub fn iss(&self) -> &str {
        &self.0.grant.claims().iss
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

/// The verification rules and caches of one upstream (one audience, one environment).
pub struct Verifier {
    audience: String,
    environment: Environment,
    leeway: u64,
    grants: BoundedCache<Arc<Grant>>,
    tokens: BoundedCache<Verified>,
    pats: BoundedCache<Arc<VerifiedPat>>,
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
            pats: BoundedCache::new(cache_capacity),
        }
    }

    /// Verifies `token` at time `now` against `roots`.
    pub fn verify(
        &self,
        token: &str,
        roots: &RootKeys,
        now: u64,
    ) -> Result<Verified, InvalidToken> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(InvalidToken::TooLarge);
        }
        let token_key = cache_key(token);
        // A cached token was fully verified before; time and the root of
        // its grant can change its verdict. The root is re-checked on every
        // hit: a grant signed by a root that has since been removed (a
        // rotation after a leak) must stop working at once, not at its exp.
        if let Some(p) = self.tokens.get(&token_key, now) {
            if !p.0.grant.is_signed_by_one_of(roots) {
                return Err(InvalidToken::UnknownRootKey);
            }
            return Ok(p);
        }

        // 2. Token header.
        let header = check_header(token, Part::Token, ACCESS_TOKEN_TYP)?;
        let key = embedded_key(&header)?;

        // 3. Token signature with its own key (trusted only after step 5).
        let claims: AccessTokenClaims = decode_verified(token, &key, Part::Token)?;

        // 4. The grant.
        let grant = self.verify_grant(&claims.grant, roots, now)?;
        let g = grant.claims();

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
        check_time(
            claims.iat,
            claims.nbf,
            claims.exp,
            now,
            self.leeway,
            Part::Token,
        )?;
        if claims.exp > g.exp {
            return Err(InvalidToken::OutlivesGrant);
        }
        if claims.exp.saturating_sub(claims.iat) > MAX_TOKEN_LIFETIME {
            return Err(InvalidToken::TooLongLived);
        }
        let scopes =
            ScopeSet::parse(&claims.scope).map_err(|_| InvalidToken::BadScope(Part::Token))?;
        if !scopes.is_subset(grant.scope()) {
            return Err(InvalidToken::BeyondGrant);
        }

        let principal = Verified(Arc::new(VerifiedInner {
            sub: grant.subject().clone(),
            env: self.environment.clone(),
            scopes: Scopes::from(scopes),
            iat: claims.iat,
            jti: claims.jti,
            exp: claims.exp,
            grant: Arc::clone(&grant),
        }));
        self.tokens.insert(
            token_key,
            claims.exp.saturating_add(self.leeway),
            principal.clone(),
            now,
        );
        Ok(principal)
    }

    /// Verifies a personal access token value at `now` against `roots`
    /// ([`crate::pat::verify`]: checksum, root signature, time, lifetime,
    /// environment), cached like tokens: a hit re-checks the root. Whether
    /// it was revoked is the caller's question (the revocation feed).
    pub fn verify_pat(
        &self,
        value: &str,
        roots: &RootKeys,
        now: u64,
    ) -> Result<Arc<VerifiedPat>, InvalidToken> {
        if value.len() > MAX_TOKEN_BYTES {
            return Err(InvalidToken::TooLarge);
        }
        let key = cache_key(value);
        if let Some(p) = self.pats.get(&key, now) {
            if !p.is_signed_by_one_of(roots) {
                return Err(InvalidToken::UnknownRootKey);
            }
            return Ok(p);
        }
        let p = Arc::new(crate::pat::verify(
            value,
            roots,
            &self.environment,
            self.leeway,
            now,
        )?);
        self.pats.insert(
            key,
            p.claims.exp.saturating_add(self.leeway),
            Arc::clone(&p),
            now,
        );
        Ok(p)
    }

    fn verify_grant(
        &self,
        compact: &str,
        roots: &RootKeys,
        now: u64,
    ) -> Result<Arc<Grant>, InvalidToken> {
        let grant_key = cache_key(compact);
        if let Some(g) = self.grants.get(&grant_key, now) {
            if !g.is_signed_by_one_of(roots) {
                return Err(InvalidToken::UnknownRootKey);
            }
            let c = g.claims();
            check_time(c.iat, c.nbf, c.exp, now, self.leeway, Part::Grant)?;
            return Ok(g);
        }
        let g = Arc::new(Grant::verify(
            compact,
            roots,
            &self.environment,
            self.leeway,
            now,
        )?);
        self.grants.insert(
            grant_key,
            g.claims().exp.saturating_add(self.leeway),
            Arc::clone(&g),
            now,
        );
        Ok(g)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::GrantRequest;
    use crate::keys::{SigningKey, random_id};
    use crate::token::{MintRequest, Minted, mint};
    use crate::workload::WorkloadId;

    const T0: u64 = 1_700_000_000;
    const AUD: &str = "https://api.example.internal";
    const LEEWAY: u64 = 30;
    const CEILING: &str = "env:view task:operate:send-report";
    const DAY: u64 = 24 * 3600;

    fn env(s: &str) -> Environment {
        Environment::parse(s).unwrap()
    }

    fn scopes(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap()
    }

    /// An honest chain in memory: a root, a sidecar key, and a grant for
    /// `app/web` binding the sidecar key, issued at `T0`.
    struct Chain {
        root: SigningKey,
        sidecar: SigningKey,
        grant: Grant,
    }

    impl Chain {
        fn new(environment: &str, grant_ttl: u64) -> Self {
            let root = SigningKey::generate().unwrap();
            let sidecar = SigningKey::generate().unwrap();
            let workload: WorkloadId = "app/web".parse().unwrap();
            let grant = Grant::issue(
                &root,
                GrantRequest {
                    issuer: "authproxy-root",
                    workload: &workload,
                    environment: &env(environment),
                    ceiling: &scopes(CEILING),
                    sidecar_key: sidecar.public(),
                    ttl_secs: grant_ttl,
                },
                T0,
                random_id(),
            )
            .unwrap();
            Self {
                root,
                sidecar,
                grant,
            }
        }

        fn roots(&self) -> RootKeys {
            let public = self.root.public();
            RootKeys::from([(public.thumbprint().to_owned(), public.clone())])
        }

        fn minted(&self, scope: &str, ttl: u64, now: u64) -> Minted {
            let req = MintRequest {
                audience: AUD,
                scope: &scopes(scope),
                ttl_secs: ttl,
            };
            mint(&self.sidecar, &self.grant, req, now, random_id()).unwrap()
        }

        fn token(&self, scope: &str, ttl: u64, now: u64) -> String {
            self.minted(scope, ttl, now).token
        }

        /// Signs claims `mint` would never write, with the bound sidecar key.
        fn forge(&self, claims: &AccessTokenClaims) -> String {
            self.sidecar.sign(ACCESS_TOKEN_TYP, claims, true).unwrap()
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(AUD.into(), env("main"), LEEWAY, 100)
    }

    #[test]
    fn an_honest_token_verifies_and_says_who_it_speaks_for() {
        let chain = Chain::new("main", DAY);
        let minted = chain.minted("env:view", 300, T0);
        let v = verifier()
            .verify(&minted.token, &chain.roots(), T0 + 10)
            .unwrap();
        assert_eq!(v.sub(), &"app/web".parse::<WorkloadId>().unwrap());
        assert_eq!(v.env(), &env("main"));
        assert_eq!(v.scopes().exact(), &scopes("env:view"));
        assert_eq!(v.jti(), minted.claims.jti);
        assert_eq!(v.exp(), T0 + 300);
    }

    #[test]
    fn a_token_for_another_audience_is_refused() {
        let chain = Chain::new("main", DAY);
        let token = chain.token("env:view", 300, T0);
        let other = Verifier::new(
            "https://other.example.internal".into(),
            env("main"),
            30,
            100,
        );
        assert_eq!(
            other.verify(&token, &chain.roots(), T0).unwrap_err(),
            InvalidToken::WrongAudience
        );
    }

    #[test]
    fn a_grant_for_another_environment_is_refused() {
        let chain = Chain::new("staging", DAY);
        let token = chain.token("env:view", 300, T0);
        assert_eq!(
            verifier().verify(&token, &chain.roots(), T0).unwrap_err(),
            InvalidToken::WrongEnvironment
        );
    }

    #[test]
    fn a_grant_signed_by_an_unknown_root_is_refused() {
        let chain = Chain::new("main", DAY);
        let token = chain.token("env:view", 300, T0);
        let stranger = SigningKey::generate().unwrap();
        let other_roots = RootKeys::from([(
            stranger.public().thumbprint().to_owned(),
            stranger.public().clone(),
        )]);
        assert_eq!(
            verifier().verify(&token, &other_roots, T0).unwrap_err(),
            InvalidToken::UnknownRootKey
        );
        assert_eq!(
            verifier().verify(&token, &RootKeys::new(), T0).unwrap_err(),
            InvalidToken::UnknownRootKey
        );
    }

    #[test]
    fn a_token_signed_by_a_key_its_grant_does_not_bind_is_refused() {
        let chain = Chain::new("main", DAY);
        let thief = SigningKey::generate().unwrap();
        let req = MintRequest {
            audience: AUD,
            scope: &scopes("env:view"),
            ttl_secs: 300,
        };
        let token = mint(&thief, &chain.grant, req, T0, random_id())
            .unwrap()
            .token;
        assert_eq!(
            verifier().verify(&token, &chain.roots(), T0).unwrap_err(),
            InvalidToken::KeyNotBound
        );
    }

    #[test]
    fn a_token_expires_at_exp_plus_leeway_and_not_a_second_before() {
        let chain = Chain::new("main", DAY);
        let token = chain.token("env:view", 300, T0);
        let exp = T0 + 300;
        // Fresh verifiers: the full path, not the cache.
        assert!(
            verifier()
                .verify(&token, &chain.roots(), exp + LEEWAY - 1)
                .is_ok()
        );
        assert_eq!(
            verifier()
                .verify(&token, &chain.roots(), exp + LEEWAY)
                .unwrap_err(),
            InvalidToken::Expired(Part::Token)
        );
    }

    #[test]
    fn an_expired_grant_is_refused() {
        let chain = Chain::new("main", 600);
        // `mint` caps the token at the grant's expiry.
        let token = chain.token("env:view", 3600, T0);
        let grant_exp = T0 + 600;
        assert!(
            verifier()
                .verify(&token, &chain.roots(), grant_exp + LEEWAY - 1)
                .is_ok()
        );
        // The grant is checked before the token's own time.
        assert_eq!(
            verifier()
                .verify(&token, &chain.roots(), grant_exp + LEEWAY)
                .unwrap_err(),
            InvalidToken::Expired(Part::Grant)
        );
    }

    #[test]
    fn a_token_outliving_its_grant_is_refused() {
        let chain = Chain::new("main", 600);
        let mut claims = chain.minted("env:view", 300, T0).claims;
        claims.exp = T0 + 601;
        let token = chain.forge(&claims);
        assert_eq!(
            verifier().verify(&token, &chain.roots(), T0).unwrap_err(),
            InvalidToken::OutlivesGrant
        );
    }

    #[test]
    fn a_token_scope_beyond_its_grant_is_refused() {
        let chain = Chain::new("main", DAY);
        let mut claims = chain.minted("env:view", 300, T0).claims;
        claims.scope = "env:view task:operate:other".into();
        let token = chain.forge(&claims);
        assert_eq!(
            verifier().verify(&token, &chain.roots(), T0).unwrap_err(),
            InvalidToken::BeyondGrant
        );
    }

    #[test]
    fn a_token_living_longer_than_the_maximum_is_refused() {
        let chain = Chain::new("main", DAY);
        let longest = chain.token("env:view", MAX_TOKEN_LIFETIME, T0);
        assert!(verifier().verify(&longest, &chain.roots(), T0).is_ok());
        let too_long = chain.token("env:view", MAX_TOKEN_LIFETIME + 1, T0);
        assert_eq!(
            verifier()
                .verify(&too_long, &chain.roots(), T0)
                .unwrap_err(),
            InvalidToken::TooLongLived
        );
    }

    #[test]
    fn a_grant_presented_as_a_token_is_refused_for_its_type() {
        let chain = Chain::new("main", DAY);
        assert_eq!(
            verifier()
                .verify(chain.grant.compact(), &chain.roots(), T0)
                .unwrap_err(),
            InvalidToken::WrongType(Part::Token)
        );
    }

    #[test]
    fn an_oversize_token_is_refused_before_parsing() {
        let chain = Chain::new("main", DAY);
        let mut token = chain.token("env:view", 300, T0);
        token.push_str(&"A".repeat(MAX_TOKEN_BYTES + 1 - token.len()));
        assert_eq!(
            verifier().verify(&token, &chain.roots(), T0).unwrap_err(),
            InvalidToken::TooLarge
        );
    }

    #[test]
    fn a_cached_token_is_refused_once_expired() {
        let chain = Chain::new("main", DAY);
        let token = chain.token("env:view", 300, T0);
        let exp = T0 + 300;
        let v = verifier();
        v.verify(&token, &chain.roots(), T0).unwrap();
        assert!(
            v.tokens.get(&cache_key(&token), T0 + 1).is_some(),
            "the first verification must cache the token"
        );
        // A hit within its life (its root still trusted).
        assert!(v.verify(&token, &chain.roots(), exp + LEEWAY - 1).is_ok());
        assert_eq!(
            v.verify(&token, &chain.roots(), exp + LEEWAY).unwrap_err(),
            InvalidToken::Expired(Part::Token)
        );
    }

    #[test]
    fn token_claims_that_differ_from_the_grant_are_refused() {
        let chain = Chain::new("main", DAY);
        let honest = chain.minted("env:view", 300, T0).claims;
        type Alteration = fn(&mut AccessTokenClaims);
        let cases: [(&str, Alteration); 4] = [
            ("iss", |c| c.iss = "someone-else".into()),
            ("sub", |c| c.sub = "app/admin".into()),
            ("client_id", |c| c.client_id = "app/admin".into()),
            ("env", |c| c.env = "staging".into()),
        ];
        for (name, alter) in cases {
            let mut claims = honest.clone();
            alter(&mut claims);
            let token = chain.forge(&claims);
            assert_eq!(
                verifier().verify(&token, &chain.roots(), T0).unwrap_err(),
                InvalidToken::ClaimMismatch(name),
                "{name}"
            );
        }
    }

    // Issue #11, item 1: a cached grant must not outlive its root key.
    #[test]
    fn a_cached_grant_is_refused_once_its_root_leaves_the_keys() {
        let chain = Chain::new("main", DAY);
        let v = verifier();
        let first = chain.token("env:view", 300, T0);
        v.verify(&first, &chain.roots(), T0).unwrap(); // grant and token cached
        let rotated_out = RootKeys::new();
        // A new token under the cached grant.
        let second = chain.token("env:view", 300, T0 + 1);
        assert_eq!(
            v.verify(&second, &rotated_out, T0 + 1).unwrap_err(),
            InvalidToken::UnknownRootKey
        );
        // The cached token itself.
        assert_eq!(
            v.verify(&first, &rotated_out, T0 + 2).unwrap_err(),
            InvalidToken::UnknownRootKey
        );
        // A different key published under the same kid is not the root either.
        let impostor = SigningKey::generate().unwrap();
        let swapped = RootKeys::from([(
            chain.root.public().thumbprint().to_owned(),
            impostor.public().clone(),
        )]);
        assert_eq!(
            v.verify(&first, &swapped, T0 + 3).unwrap_err(),
            InvalidToken::UnknownRootKey
        );
        // Back in the keys: accepted again.
        assert!(v.verify(&first, &chain.roots(), T0 + 4).is_ok());
    }

    #[test]
    fn a_grant_living_longer_than_seven_days_is_refused() {
        let ok = Chain::new("main", crate::grant::MAX_GRANT_LIFETIME);
        assert!(
            verifier()
                .verify(&ok.token("env:view", 300, T0), &ok.roots(), T0)
                .is_ok()
        );
        let century = Chain::new("main", 100 * 365 * DAY);
        assert_eq!(
            verifier()
                .verify(&century.token("env:view", 300, T0), &century.roots(), T0)
                .unwrap_err(),
            InvalidToken::GrantTooLongLived
        );
    }

    #[test]
    fn times_near_the_end_of_u64_do_not_overflow() {
        // exp saturates at u64::MAX; verification must refuse, not panic.
        let chain = Chain::new("main", u64::MAX);
        let token = chain.token("env:view", 300, T0);
        assert_eq!(
            verifier().verify(&token, &chain.roots(), T0).unwrap_err(),
            InvalidToken::GrantTooLongLived
        );
        let life = u128::from(u64::MAX - T0);
        assert_eq!(
            u128::from(chain.grant.renew_at()),
            u128::from(T0) + life * 2 / 3
        );
    }
}
