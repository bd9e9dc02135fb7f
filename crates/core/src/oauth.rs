//! The one OAuth2 error body (RFC 6749 §5.2, RFC 6750 §3): what the token
//! endpoint, the forward proxy and the upstream layer send when they refuse,
//! and what the clients read back.

use serde::{Deserialize, Serialize};

/// `{"error", "error_description"[, "scope"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error code (`invalid_request`, `invalid_token`, …).
    pub error: String,
    /// A human-readable description; never holds a secret.
    #[serde(default)]
    pub error_description: String,
    /// The scope needed, for `insufficient_scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl ErrorBody {
    /// An error with a description.
    pub fn new(error: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            error_description: description.into(),
            scope: None,
        }
    }

    /// Adds the `scope` member.
    #[must_use]
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_member_appears_only_when_set() {
        let plain = serde_json::to_value(ErrorBody::new("invalid_token", "bad")).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"error": "invalid_token", "error_description": "bad"})
        );
        let scoped =
            serde_json::to_value(ErrorBody::new("insufficient_scope", "x").with_scope("env:view"))
                .unwrap();
        assert_eq!(scoped["scope"], "env:view");
    }
}
