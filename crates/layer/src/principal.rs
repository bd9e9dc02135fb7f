//! [`Principal`]: who a verified request speaks for, as handlers see it.

use authproxy_core::verify::Verified;
use authproxy_core::{Environment, ScopeSet, WorkloadId};

/// Who a verified token speaks for. The layer puts it in the request's
/// extensions; handlers take it as an extractor argument. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Principal(Verified);

impl Principal {
    pub(crate) fn new(verified: Verified) -> Self {
        Self(verified)
    }

    /// The workload the token speaks for (`app/web`, `task/send-report`, …).
    pub fn sub(&self) -> &WorkloadId {
        self.0.sub()
    }

    /// The environment the token is bound to.
    pub fn env(&self) -> &Environment {
        self.0.env()
    }

    /// The token's scopes.
    pub fn scopes(&self) -> &ScopeSet {
        self.0.scopes()
    }

    /// The token id (`jti`), for logs and audit.
    pub fn jti(&self) -> &str {
        self.0.jti()
    }

    /// Expiry, unix seconds.
    pub fn exp(&self) -> u64 {
        self.0.exp()
    }

    /// Issue time, unix seconds (for RFC 7662 introspection).
    pub fn iat(&self) -> u64 {
        self.0.iat()
    }

    /// Who issued the credential (`iss`; for RFC 7662 introspection).
    pub fn iss(&self) -> &str {
        self.0.iss()
    }
}
