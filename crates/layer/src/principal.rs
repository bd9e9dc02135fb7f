//! [`Principal`]: who a verified request speaks for, as handlers see it.

use authproxy_core::pat::VerifiedPat;
use authproxy_core::verify::Verified;
use authproxy_core::{Authorization, Environment, Scopes, Subject, WorkloadId};
use std::sync::Arc;

/// Who a verified bearer token speaks for: a workload's access token, or a
/// personal access token (`ap_pat_…`). The layer puts it in the request's
/// extensions; handlers take it as an extractor argument. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Principal(Kind);

#[derive(Debug, Clone)]
enum Kind {
    Token(Verified),
    Pat(Arc<VerifiedPat>),
}

impl Principal {
    pub(crate) fn token(verified: Verified) -> Self {
        Self(Kind::Token(verified))
    }

    pub(crate) fn pat(pat: Arc<VerifiedPat>) -> Self {
        Self(Kind::Pat(pat))
    }

    /// Who it speaks for: a workload (`app/web`, `task/send-report`, …) or
    /// `pat:<name>` for a personal access token and the tokens exchanged
    /// from one.
    pub fn sub(&self) -> &Subject {
        match &self.0 {
            Kind::Token(v) => v.sub(),
            Kind::Pat(p) => &p.subject,
        }
    }

    /// The workload, for a workload's access token.
    pub fn workload(&self) -> Option<&WorkloadId> {
        self.sub().workload()
    }

    /// True for a personal access token presented as it is (`ap_pat_…`).
    /// A token exchanged from a PAT is an access token: false, but its
    /// [`sub`](Self::sub) names the PAT.
    pub fn is_pat(&self) -> bool {
        matches!(self.0, Kind::Pat(_))
    }

    /// The environment it is bound to.
    pub fn env(&self) -> &Environment {
        match &self.0 {
            Kind::Token(v) => v.env(),
            Kind::Pat(p) => &p.env,
        }
    }

    /// Its scopes: exact for access tokens; a PAT's may hold wildcards
    /// (`task:operate:*`, `*`), which [`covers`](Self::covers) expands.
    pub fn scopes(&self) -> &Scopes {
        match &self.0 {
            Kind::Token(v) => v.scopes(),
            Kind::Pat(p) => &p.scopes,
        }
    }

    /// True when its scopes cover `required`, wildcards included.
    pub fn covers(&self, required: &Authorization) -> bool {
        self.scopes().covers(required)
    }

    /// The token id (`jti`; a PAT's version id), for logs and audit.
    pub fn jti(&self) -> &str {
        match &self.0 {
            Kind::Token(v) => v.jti(),
            Kind::Pat(p) => &p.claims.jti,
        }
    }

    /// Issued at, unix seconds.
    pub fn iat(&self) -> u64 {
        match &self.0 {
            Kind::Token(v) => v.iat(),
            Kind::Pat(p) => p.claims.iat,
        }
    }

    /// Expiry, unix seconds.
    pub fn exp(&self) -> u64 {
        match &self.0 {
            Kind::Token(v) => v.exp(),
            Kind::Pat(p) => p.claims.exp,
        }
    }

    /// The issuer (`iss`).
    pub fn iss(&self) -> &str {
        match &self.0 {
            Kind::Token(v) => v.iss(),
            Kind::Pat(p) => &p.claims.iss,
        }
    }

    /// The ids the revocation feed may name for it: its grant's and, for a
    /// PAT or a token exchanged from one, the PAT version's.
    pub(crate) fn revocation_ids(&self) -> (Option<&str>, Option<&str>) {
        match &self.0 {
            Kind::Token(v) => (Some(v.grant_id()), v.pat_id()),
            Kind::Pat(p) => (None, Some(&p.claims.jti)),
        }
    }

    /// True when it is, or derives from, a personal access token.
    pub(crate) fn is_pat_derived(&self) -> bool {
        self.is_pat() || self.revocation_ids().1.is_some()
    }
}
