//! Access tokens (RFC 9068 JWTs) minted by a sidecar under its grant.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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
///
/// Renders the grant-derived parts anew; a minter that signs many tokens
/// under one grant holds a [`Minter`] instead.
pub fn mint(
    key: &SigningKey,
    grant: &Grant,
    req: MintRequest<'_>,
    now: u64,
    jti: String,
) -> Result<Minted, MintError> {
    finish(&render_prefix(key, grant), key, grant, req, None, now, jti)
}

/// A sidecar key and the grant that binds it, with everything they fix in
/// every token rendered once: the header (`typ`, `alg`, `kid`, the embedded
/// `jwk`) and the claims taken from the grant (`iss`, `sub`, `client_id`,
/// `env` and the 1 KiB compact `grant`), already base64url-encoded. Minting
/// then encodes only the token's own few claims before signing.
pub struct Minter {
    key: Arc<SigningKey>,
    grant: Arc<Grant>,
    /// `base64url(header) "." base64url(grant-derived claims)`.
    prefix: String,
    /// The grant's whole ceiling as a `scope` claim: what most tokens carry.
    ceiling: String,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("key", &self.key)
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter signing with `key` under `grant` (which must bind `key`:
    /// tokens from a key the grant does not bind are refused by verifiers).
    pub fn new(key: Arc<SigningKey>, grant: Arc<Grant>) -> Self {
        let prefix = render_prefix(&key, &grant);
        let ceiling = grant.scope().to_string();
        Self {
            key,
            grant,
            prefix,
            ceiling,
        }
    }

    /// The signing key.
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// The grant.
    pub fn grant(&self) -> &Arc<Grant> {
        &self.grant
    }

    /// As [`mint`], with the grant-derived parts already rendered.
    pub fn mint(&self, req: MintRequest<'_>, now: u64, jti: String) -> Result<Minted, MintError> {
        let ceiling = std::ptr::eq(req.scope, self.grant.scope()).then_some(self.ceiling.as_str());
        finish(&self.prefix, &self.key, &self.grant, req, ceiling, now, jti)
    }
}

/// `base64url(header) "." base64url(claims prefix)`, where the claims
/// prefix is the JSON object opened with the grant-derived members and
/// padded with spaces (JSON whitespace, RFC 8259 §2) to a multiple of three
/// bytes: base64 then ends on a group boundary, so the encoding of the
/// token's own members can be appended to it, and the result is the
/// encoding of the whole object.
fn render_prefix(key: &SigningKey, grant: &Grant) -> String {
    let public = key.public();
    let mut header = String::with_capacity(160);
    header.push_str("{\"typ\":");
    push_json_str(&mut header, ACCESS_TOKEN_TYP);
    header.push_str(",\"alg\":\"EdDSA\",\"kid\":");
    push_json_str(&mut header, public.thumbprint());
    header.push_str(",\"jwk\":{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":");
    push_json_str(&mut header, public.x());
    header.push_str("}}");

    let g = grant.claims();
    let mut claims = String::with_capacity(grant.compact().len() + 160);
    claims.push_str("{\"iss\":");
    push_json_str(&mut claims, &g.iss);
    claims.push_str(",\"sub\":");
    push_json_str(&mut claims, &g.sub);
    claims.push_str(",\"client_id\":");
    push_json_str(&mut claims, &g.sub);
    claims.push_str(",\"env\":");
    push_json_str(&mut claims, &g.env);
    claims.push_str(",\"grant\":");
    push_json_str(&mut claims, grant.compact());
    claims.push(',');
    while !claims.len().is_multiple_of(3) {
        claims.push(' ');
    }

    let mut prefix = String::with_capacity((header.len() + claims.len()) * 4 / 3 + 4);
    URL_SAFE_NO_PAD.encode_string(&header, &mut prefix);
    prefix.push('.');
    URL_SAFE_NO_PAD.encode_string(&claims, &mut prefix);
    prefix
}

/// Checks the request against the grant, renders the token's own claims
/// after `prefix` (see [`render_prefix`]) and signs. `scope_text` is the
/// request's scope already formatted, when known.
fn finish(
    prefix: &str,
    key: &SigningKey,
    grant: &Grant,
    req: MintRequest<'_>,
    scope_text: Option<&str>,
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
    let scope = scope_text.map_or_else(|| scope.to_string(), str::to_owned);
    let exp = now.saturating_add(ttl_secs).min(g.exp);

    let mut own = String::with_capacity(96 + audience.len() + scope.len() + jti.len());
    own.push_str("\"aud\":");
    push_json_str(&mut own, audience);
    own.push_str(",\"scope\":");
    push_json_str(&mut own, &scope);
    // Writing to a String cannot fail.
    let _ = write!(own, ",\"iat\":{now},\"nbf\":{now},\"exp\":{exp},\"jti\":");
    push_json_str(&mut own, &jti);
    own.push('}');

    let mut input = String::with_capacity(prefix.len() + own.len() * 4 / 3 + 4 + 88);
    input.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(&own, &mut input);
    let token = key.finish_jws(input);
    let claims = AccessTokenClaims {
        iss: g.iss.clone(),
        sub: g.sub.clone(),
        client_id: g.sub.clone(),
        aud: audience.to_owned(),
        env: g.env.clone(),
        scope,
        iat: now,
        nbf: now,
        exp,
        jti,
        grant: grant.compact().to_owned(),
    };
    Ok(Minted { token, claims })
}

/// Appends `s` as a JSON string (RFC 8259 §7): quotes, with `"`, `\\` and
/// the control characters escaped.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
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

    /// The token's signed payload is exactly its claims, whatever the
    /// strings in them, and `mint` and a [`Minter`] agree.
    #[test]
    fn the_signed_payload_decodes_to_the_claims() {
        let (key, grant) = granted();
        let key = Arc::new(key);
        let minter = Minter::new(Arc::clone(&key), Arc::new(grant.clone()));
        let s = scopes("env:view task:operate:send-report");
        for aud in [AUD, "", "a\"b\\c\u{1}d\u{1f}é\u{7f}\n"] {
            let req = MintRequest {
                audience: aud,
                scope: &s,
                ttl_secs: 60,
            };
            let a = mint(&key, &grant, req, T0 + 1, "j\"1".into()).unwrap();
            let b = minter.mint(req, T0 + 1, "j\"1".into()).unwrap();
            assert_eq!(a.token, b.token);
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            v.validate_aud = false;
            let decoded = jsonwebtoken::decode::<AccessTokenClaims>(
                &a.token,
                key.public().decoding_key(),
                &v,
            )
            .unwrap();
            assert_eq!(decoded.claims, a.claims);
            assert_eq!(decoded.claims.aud, aud);
        }
    }

    #[test]
    fn a_minter_minting_its_whole_ceiling_writes_the_same_token_as_mint() {
        let (key, grant) = granted();
        let key = Arc::new(key);
        let minter = Minter::new(Arc::clone(&key), Arc::new(grant.clone()));
        let whole = request(minter.grant().scope(), 60);
        let a = minter.mint(whole, T0, "j".into()).unwrap();
        let b = mint(&key, &grant, request(grant.scope(), 60), T0, "j".into()).unwrap();
        assert_eq!(a.token, b.token);
        assert_eq!(a.claims.scope, "task:operate:send-report env:view");
    }

    proptest::proptest! {
        #[test]
        fn json_strings_round_trip(s in ".*") {
            let mut out = String::new();
            push_json_str(&mut out, &s);
            proptest::prop_assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
        }
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
