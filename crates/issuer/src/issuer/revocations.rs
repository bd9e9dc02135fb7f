//! The revocation feed (DESIGN §8, §9): what every layer polls so that a
//! deleted or updated PAT, and a revoked grant, are refused within seconds
//! everywhere — and `authproxy issuer grants revoke`, which puts a
//! workload's live grants on it.

use authproxy_core::{Environment, WorkloadId};

use super::Issuer;
use crate::error::IssuerError;
use crate::store::RevocationRecord;

/// How often `authproxy issuer serve` deletes expired feed entries. Only
/// storage hygiene: the feed never serves an expired entry anyway.
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// A position in the feed: the `seq` of the last entry a layer has seen.
/// Written as a decimal string in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(u64);

impl Cursor {
    /// Parses a cursor: decimal digits only (no sign, space or exponent),
    /// at most `i64::MAX` (what SQL stores).
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>()
            .ok()
            .filter(|&n| i64::try_from(n).is_ok())
            .map(Self)
    }

    /// The `seq` it stands at.
    pub fn seq(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One answer of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// Where the next poll starts (`?since=`).
    pub cursor: Cursor,
    /// The revocations, in feed order.
    pub entries: Vec<RevocationRecord>,
}

impl Issuer {
    /// The feed at `now`. Without `since`: a snapshot of every revocation
    /// still unexpired, with the newest cursor. With `since`: the unexpired
    /// entries after it, and the cursor of the last one (`since` when
    /// there is none).
    ///
    /// A `since` beyond the newest entry cannot come from this store (it was
    /// replaced, or the cursor came from elsewhere): the answer is then a
    /// snapshot, so that a layer never waits for a `seq` that may never
    /// come while revocations go by below it.
    pub async fn revocations(&self, since: Option<Cursor>, now: u64) -> Result<Feed, IssuerError> {
        let after = since.map_or(0, Cursor::seq);
        let read = self.store.revocations_after(after, now).await?;
        let (cursor, read) = match since {
            Some(since) if since.seq() > read.newest => {
                tracing::debug!(%since, newest = read.newest, "revocation cursor from elsewhere; answering a snapshot");
                let snapshot = self.store.revocations_after(0, now).await?;
                (Cursor(snapshot.newest), snapshot)
            }
            Some(since) => (read.entries.last().map_or(since, |e| Cursor(e.seq)), read),
            None => (Cursor(read.newest), read),
        };
        Ok(Feed {
            cursor,
            entries: read.entries,
        })
    }

    /// Revokes every grant of `workload` in `environment` that is still
    /// unexpired (through the feed: its tokens are refused by every layer
    /// within seconds); returns how many were newly revoked. 404 for a
    /// workload never synced in that environment.
    ///
    /// The workload's bootstrap credential is untouched: its sidecar (or
    /// whoever holds the credential) can ask for a new grant.
    pub async fn revoke_workload_grants(
        &self,
        environment: &Environment,
        workload: &WorkloadId,
        now: u64,
    ) -> Result<u64, IssuerError> {
        if self.store.workload(environment, workload).await?.is_none() {
            return Err(IssuerError::UnknownWorkload {
                workload: workload.clone(),
                environment: environment.clone(),
            });
        }
        let revoked = self
            .store
            .revoke_workload_grants(environment, workload, now)
            .await?;
        tracing::warn!(
            workload = %workload,
            environment = %environment,
            revoked,
            "grants revoked"
        );
        Ok(revoked)
    }

    /// Deletes the feed entries that expired by `now`; returns how many.
    pub async fn prune_revocations(&self, now: u64) -> Result<u64, IssuerError> {
        let pruned = self.store.prune_revocations(now).await?;
        if pruned > 0 {
            tracing::debug!(pruned, "expired revocations pruned");
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_plain_decimal_digits_within_sql_range() {
        for ok in ["0", "1", "42", "9223372036854775807"] {
            assert_eq!(Cursor::parse(ok).unwrap().to_string(), ok);
        }
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1e3",
            "0x10",
            "9223372036854775808",
            "99999999999999999999",
            "abc",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }
}
