//! Personal access tokens (DESIGN §9): named, scoped, time-limited bearer
//! tokens for people and automation outside the platform.
//!
//! # The value
//! `ap_pat_` + a root-signed compact JWS (`typ: pat+jwt`) + a 6-character
//! checksum. The prefix lets secret scanners find leaked values; the
//! checksum (the first 4 bytes of the SHA-256 of everything before it,
//! base64url) refuses a typo or a truncated paste before any signature is
//! checked; the signed body lets an upstream verify a PAT with the root
//! keys alone, without calling the issuer per request. Revocation reaches
//! upstreams through the issuer's revocation feed, keyed by the PAT's `jti`
//! (its version id: an update issues a new one).
//!
//! The issuer keeps no value: it keeps the PAT's name, scopes, times and
//! current `jti`, which is all it needs to recognise and revoke it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::jws::{InvalidToken, MAX_TOKEN_BYTES, Part, check_header, check_time, decode_verified};
use crate::keys::{KeyError, RootKeys, SigningKey};
use crate::scopes::Scopes;
use crate::workload::{Environment, Subject};

/// Prefix of every PAT value.
pub const PAT_PREFIX: &str = "ap_pat_";
/// `typ` header value of a PAT's signed body.
pub const PAT_TYP: &str = "pat+jwt";
/// Longest PAT lifetime, in seconds: 366 days (`pats.max_valid_minutes`
/// may only lower it). Verifiers refuse longer.
pub const MAX_PAT_LIFETIME: u64 = 366 * 24 * 3600;
/// Prefix of a PAT's `sub` claim: `pat:<name>`.
pub const PAT_SUBJECT_PREFIX: &str = "pat:";

const CHECKSUM_LEN: usize = 6;

/// A PAT name: `[a-z0-9][a-z0-9_.-]{0,63}`, unique within an issuer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PatName(String);

/// A PAT name that does not follow the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a valid PAT name: use 1-64 characters of a-z, 0-9, `_`, `.` and `-`, starting with a letter or digit"
)]
pub struct InvalidPatName(pub String);

impl PatName {
    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self, InvalidPatName> {
        let b = s.as_bytes();
        let first = b
            .first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest = b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        });
        if first && rest && b.len() <= 64 {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidPatName(s.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PatName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The claims of a PAT's signed body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatClaims {
    /// The issuer (its public URL).
    pub iss: String,
    /// `pat:<name>`.
    pub sub: String,
    /// The environment it is bound to.
    pub env: String,
    /// Scopes and wildcards, space-separated.
    pub scope: String,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Expiry (unix seconds).
    pub exp: u64,
    /// This version's id: what the revocation feed names.
    pub jti: String,
}

/// What a PAT is issued for.
#[derive(Debug, Clone, Copy)]
pub struct PatRequest<'a> {
    /// The issuer (`iss`).
    pub issuer: &'a str,
    /// Its name.
    pub name: &'a PatName,
    /// Its environment.
    pub environment: &'a Environment,
    /// Its scopes (wildcards allowed).
    pub scopes: &'a Scopes,
    /// Lifetime in seconds (at most [`MAX_PAT_LIFETIME`]).
    pub ttl_secs: u64,
}

/// Signs a PAT with a root key, valid from `now`, with version id `jti`;
/// returns the value (shown once, stored nowhere) and its claims.
pub fn issue(
    root: &SigningKey,
    req: PatRequest<'_>,
    now: u64,
    jti: String,
) -> Result<(String, PatClaims), KeyError> {
    let claims = PatClaims {
        iss: req.issuer.to_owned(),
        sub: format!("{PAT_SUBJECT_PREFIX}{}", req.name),
        env: req.environment.to_string(),
        scope: req.scopes.to_string(),
        iat: now,
        exp: now.saturating_add(req.ttl_secs.min(MAX_PAT_LIFETIME)),
        jti,
    };
    let body = root.sign(PAT_TYP, &claims, false)?;
    Ok((value_of(&body), claims))
}

/// The value carrying a signed body: prefix, body, checksum (the inverse
/// of [`body`]).
fn value_of(signed_body: &str) -> String {
    let mut value = String::with_capacity(PAT_PREFIX.len() + signed_body.len() + CHECKSUM_LEN);
    value.push_str(PAT_PREFIX);
    value.push_str(signed_body);
    let sum = checksum(&value);
    value.push_str(&sum);
    value
}

/// True when `token` looks like a PAT (by prefix): the layer picks the
/// PAT path on this.
pub fn is_pat(token: &str) -> bool {
    token.starts_with(PAT_PREFIX)
}

/// Why a string is not a well-formed PAT value. Checked before any crypto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatFormatError {
    /// No `ap_pat_` prefix.
    #[error("not a personal access token (no `ap_pat_` prefix)")]
    Prefix,
    /// Over [`MAX_TOKEN_BYTES`] or too short to hold a body.
    #[error("personal access token has the wrong length")]
    Length,
    /// The checksum does not match: a typo or a truncated value.
    #[error("personal access token checksum does not match (a typo or a truncated value?)")]
    Checksum,
}

/// Checks prefix, length and checksum; returns the signed body.
pub fn body(value: &str) -> Result<&str, PatFormatError> {
    if !is_pat(value) {
        return Err(PatFormatError::Prefix);
    }
    if value.len() > MAX_TOKEN_BYTES || value.len() < PAT_PREFIX.len() + CHECKSUM_LEN + 5 {
        return Err(PatFormatError::Length);
    }
    let cut = value.len() - CHECKSUM_LEN;
    let (Some(signed), Some(sum)) = (value.get(..cut), value.get(cut..)) else {
        return Err(PatFormatError::Checksum);
    };
    // Constant time is not needed: the checksum is no secret, it is a
    // function of the (public) rest of the value.
    if checksum(signed) != sum {
        return Err(PatFormatError::Checksum);
    }
    Ok(&signed[PAT_PREFIX.len()..])
}

fn checksum(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    URL_SAFE_NO_PAD.encode(&d.as_ref()[..4])
}

/// A PAT whose signature, time and environment were verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPat {
    /// `pat:<name>`.
    pub subject: Subject,
    /// The environment it is bound to.
    pub env: Environment,
    /// Its scopes (wildcards included).
    pub scopes: Scopes,
    /// Its claims.
    pub claims: PatClaims,
    /// The `kid` of the root key that signed it.
    pub root_kid: String,
    /// The RFC 7638 thumbprint of that root key.
    pub root_thumbprint: String,
}

impl VerifiedPat {
    /// Its name.
    pub fn name(&self) -> Option<&PatName> {
        self.subject.pat()
    }

    /// True while the root key that signed it is among `roots` (a cached
    /// PAT is re-checked with this, so it dies with its root's removal).
    pub fn is_signed_by_one_of(&self, roots: &RootKeys) -> bool {
        roots
            .get(&self.root_kid)
            .is_some_and(|k| k.thumbprint() == self.root_thumbprint)
    }
}

/// Verifies a PAT value at `now`: format and checksum first, then a body of
/// `typ` `pat+jwt` signed by the root key its `kid` names among `roots`, in
/// time within `leeway`, no longer-lived than [`MAX_PAT_LIFETIME`], bound
/// to `environment`. Revocation is the caller's: this knows no feed.
pub fn verify(
    value: &str,
    roots: &RootKeys,
    environment: &Environment,
    leeway: u64,
    now: u64,
) -> Result<VerifiedPat, InvalidToken> {
    let body = body(value).map_err(InvalidToken::PatFormat)?;
    let header = check_header(body, Part::Pat, PAT_TYP)?;
    let (root_kid, root) = header
        .kid
        .as_deref()
        .and_then(|kid| roots.get_key_value(kid))
        .ok_or(InvalidToken::UnknownRootKey)?;
    let claims: PatClaims = decode_verified(body, root, Part::Pat)?;
    if claims.exp.saturating_sub(claims.iat) > MAX_PAT_LIFETIME {
        return Err(InvalidToken::TooLongLived);
    }
    check_time(claims.iat, claims.iat, claims.exp, now, leeway, Part::Pat)?;
    if claims.env != environment.as_str() {
        return Err(InvalidToken::WrongEnvironment);
    }
    let name = claims
        .sub
        .strip_prefix(PAT_SUBJECT_PREFIX)
        .and_then(|n| PatName::parse(n).ok())
        .ok_or(InvalidToken::Malformed(Part::Pat))?;
    let scopes = Scopes::parse(&claims.scope).map_err(|_| InvalidToken::BadScope(Part::Pat))?;
    Ok(VerifiedPat {
        subject: Subject::Pat(name),
        env: environment.clone(),
        scopes,
        claims,
        root_kid: root_kid.clone(),
        root_thumbprint: root.thumbprint().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::random_id;
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000;

    fn env(s: &str) -> Environment {
        Environment::parse(s).unwrap()
    }

    fn issued(ttl: u64) -> (SigningKey, String) {
        let root = SigningKey::generate().unwrap();
        let (value, _) = issue(
            &root,
            PatRequest {
                issuer: "http://127.0.0.1:8400",
                name: &PatName::parse("ci.deploy-1").unwrap(),
                environment: &env("main"),
                scopes: &Scopes::parse("task:operate:* env:view").unwrap(),
                ttl_secs: ttl,
            },
            T0,
            random_id(),
        )
        .unwrap();
        (root, value)
    }

    fn roots(root: &SigningKey) -> RootKeys {
        [(root.public().thumbprint().to_owned(), root.public().clone())].into()
    }

    #[test]
    fn names_follow_the_documented_pattern() {
        for ok in ["ci", "ci.deploy", "a_b-c.d", "0", &"a".repeat(64)] {
            assert!(PatName::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", ".ci", "-ci", "Ci", "c i", "c/i", "c:i", &"a".repeat(65)] {
            assert!(PatName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_pat_verifies_with_its_root_in_its_environment() {
        let (root, value) = issued(3600);
        assert!(value.starts_with("ap_pat_"));
        let v = verify(&value, &roots(&root), &env("main"), 0, T0 + 10).unwrap();
        assert_eq!(v.name().unwrap().as_str(), "ci.deploy-1");
        assert_eq!(v.scopes.to_string(), "env:view task:operate:*");
        assert_eq!(v.claims.sub, "pat:ci.deploy-1");
    }

    #[test]
    fn every_typo_and_truncation_is_refused_by_the_checksum() {
        let (_, value) = issued(3600);
        // Flip one character anywhere after the prefix.
        for i in PAT_PREFIX.len()..value.len() {
            let mut bytes = value.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let typo = String::from_utf8(bytes).unwrap();
            assert_eq!(body(&typo), Err(PatFormatError::Checksum), "position {i}");
        }
        for cut in 1..40 {
            assert!(body(&value[..value.len() - cut]).is_err(), "cut {cut}");
        }
        assert_eq!(body("ap_pat_"), Err(PatFormatError::Length));
        assert_eq!(body("ghp_xxx"), Err(PatFormatError::Prefix));
    }

    #[test]
    fn other_roots_environments_and_times_are_refused() {
        let (root, value) = issued(3600);
        let other = SigningKey::generate().unwrap();
        assert_eq!(
            verify(&value, &roots(&other), &env("main"), 0, T0),
            Err(InvalidToken::UnknownRootKey)
        );
        assert_eq!(
            verify(&value, &roots(&root), &env("staging"), 0, T0),
            Err(InvalidToken::WrongEnvironment)
        );
        assert_eq!(
            verify(&value, &roots(&root), &env("main"), 0, T0 + 3600),
            Err(InvalidToken::Expired(Part::Pat))
        );
        assert_eq!(
            verify(&value, &roots(&root), &env("main"), 0, T0 - 100),
            Err(InvalidToken::NotYetValid(Part::Pat))
        );
    }

    #[test]
    fn a_re_signed_body_with_a_valid_checksum_still_needs_the_root() {
        // An attacker can compute the checksum: it is no secret. The
        // signature is what they cannot make.
        let (root, value) = issued(3600);
        let body = body(&value).unwrap();
        let (head, _sig) = body.rsplit_once('.').unwrap();
        let forged_body = format!("{head}.{}", "A".repeat(86));
        let forged = value_of(&forged_body);
        assert_eq!(
            verify(&forged, &roots(&root), &env("main"), 0, T0),
            Err(InvalidToken::BadSignature(Part::Pat))
        );
    }

    #[test]
    fn an_access_token_typ_cannot_pass_as_a_pat() {
        let root = SigningKey::generate().unwrap();
        let claims = PatClaims {
            iss: "x".into(),
            sub: "pat:x".into(),
            env: "main".into(),
            scope: "*".into(),
            iat: T0,
            exp: T0 + 60,
            jti: random_id(),
        };
        let value = value_of(&root.sign("grant+jwt", &claims, false).unwrap());
        assert_eq!(
            verify(&value, &roots(&root), &env("main"), 0, T0),
            Err(InvalidToken::WrongType(Part::Pat))
        );
    }

    #[test]
    fn a_lifetime_over_the_maximum_is_refused() {
        let root = SigningKey::generate().unwrap();
        let claims = PatClaims {
            iss: "x".into(),
            sub: "pat:x".into(),
            env: "main".into(),
            scope: "*".into(),
            iat: T0,
            exp: T0 + MAX_PAT_LIFETIME + 1,
            jti: random_id(),
        };
        let value = value_of(&root.sign(PAT_TYP, &claims, false).unwrap());
        assert_eq!(
            verify(&value, &roots(&root), &env("main"), 0, T0),
            Err(InvalidToken::TooLongLived)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_with_the_prefix_never_panics(s in "\\PC{0,200}") {
            let root = SigningKey::generate().unwrap();
            let _ = verify(&format!("{PAT_PREFIX}{s}"), &roots(&root), &env("main"), 0, T0);
        }
    }
}
