//! The vocabulary of credential lifecycle tasks (DESIGN §10) and the one
//! state machine every status change goes through — pure: no store, no
//! clock. The worker, the API's cancel and the store's fenced writes all
//! ask [`transition`] first, so a final task can never move again.
//!
//! ```text
//!                 Claim                 Succeed (create)
//!   ┌────────┐ ───────────▶ ┌────────────┐ ──────────────▶ credentials_created
//!   │ queued │              │ processing │ ──────────────▶ credentials_deleted
//!   └────────┘ ◀─────────── └────────────┘  Succeed (delete)
//!     │          Retry        │   ▲  │
//!     │ Cancel                │   └──┘ Reclaim (lease expired)
//!     ▼                       ▼ Fail | Cancel
//!   failed ◀──────────────────┘
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

macro_rules! names {
    ($(#[$meta:meta])* $vis:vis enum $ty:ident { $($(#[$vm:meta])* $variant:ident = $name:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        $vis enum $ty { $($(#[$vm])* $variant,)+ }

        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The name stored and sent (`snake_case`).
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name,)+ }
            }

            /// The value of a stored or sent name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some(Self::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// What a credential is.
    pub enum CredentialKind {
        /// The root keys of one issuer node (they sign grants).
        RootKey = "root_key",
        /// The `ap_wc_…` bootstrap credentials of one identity.
        WorkloadCredential = "workload_credential",
        /// One personal access token.
        Pat = "pat",
    }
}

names! {
    /// The life stage of a version, derived from its times by [`version_state`].
    pub enum VersionState {
        /// Created (a root key: published in the JWKS), not in use yet.
        Pending = "pending",
        /// In use: the root key that signs, the credential to hand out.
        Active = "active",
        /// Superseded but still valid: a root key whose grants may still
        /// be live, a workload credential in its grace.
        Retiring = "retiring",
        /// No longer valid anywhere.
        Retired = "retired",
    }
}

names! {
    /// What a task does.
    pub enum TaskType {
        /// Creates a version (creation or rotation).
        CreateCredentials = "create_credentials",
        /// Deletes a version (expiry) or every version (deletion).
        DeleteCredentials = "delete_credentials",
    }
}

names! {
    /// Where a task is. The last three are final.
    pub enum TaskStatus {
        /// Waiting until it is due, or for its next attempt.
        Queued = "queued",
        /// Claimed by a worker.
        Processing = "processing",
        /// A create task that succeeded.
        CredentialsCreated = "credentials_created",
        /// A delete task that succeeded.
        CredentialsDeleted = "credentials_deleted",
        /// Cancelled, or out of attempts; `errors` says why.
        Failed = "failed",
    }
}

names! {
    /// Why a task exists.
    pub enum Trigger {
        /// The credential's first version.
        CredentialCreation = "credential_creation",
        /// `POST /v1/credentials/{id}/rotate`.
        ManualRotation = "manual_rotation",
        /// `keys.rotate_every` / `credentials.rotate_every` came round.
        AutomaticRotation = "automatic_rotation",
        /// A superseded version reached the end of its life.
        VersionExpiration = "version_expiration",
        /// The credential itself is deleted.
        CredentialDeletion = "credential_deletion",
    }
}

impl TaskStatus {
    /// True for `credentials_created`, `credentials_deleted` and `failed`:
    /// no update is accepted any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::CredentialsCreated | Self::CredentialsDeleted | Self::Failed
        )
    }
}

/// Why an attempt failed, as the task's `errors` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// A stable code (`cancelled`, `provider_failed`, `provider_timeout`, …).
    pub code: String,
    /// What happened, for people. Never holds a secret.
    pub description: String,
}

impl TaskError {
    /// An error with this code and description.
    pub fn new(code: &str, description: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            description: description.into(),
        }
    }

    /// The error a cancelled task ends with.
    pub fn cancelled() -> Self {
        Self::new("cancelled", "cancelled through the API")
    }
}

/// Something that happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A worker takes a due task.
    Claim,
    /// A worker takes over a task whose previous worker's lease expired.
    Reclaim,
    /// The attempt did what the task is for.
    Succeed,
    /// The attempt failed, or must wait (a root key whose grants are still
    /// live); the task goes back to the queue for a later attempt.
    Retry,
    /// The attempt failed for good (no attempts left, or not retryable).
    Fail,
    /// Someone cancelled it (`DELETE …/tasks/{id}`).
    Cancel,
}

impl Event {
    /// Every event.
    pub const ALL: &'static [Self] = &[
        Self::Claim,
        Self::Reclaim,
        Self::Succeed,
        Self::Retry,
        Self::Fail,
        Self::Cancel,
    ];
}

/// Why [`transition`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The task is final: nothing changes it any more (HTTP 409).
    #[error("the task is {0}, which is final")]
    Final(TaskStatus),
    /// The event does not apply to a task in this status (only a worker
    /// holding the task may finish it; only a queued task may be claimed).
    #[error("a task that is {status} cannot {event:?}")]
    NotNow {
        /// Its status.
        status: TaskStatus,
        /// What was tried.
        event: Event,
    },
}

/// The status a task of type `kind` in `status` moves to on `event`, or
/// why it may not. The whole lifecycle is this one match.
pub fn transition(kind: TaskType, status: TaskStatus, event: Event) -> Result<TaskStatus, Refused> {
    use TaskStatus::*;
    if status.is_final() {
        return Err(Refused::Final(status));
    }
    match (status, event) {
        (Queued, Event::Claim) => Ok(Processing),
        (Queued | Processing, Event::Cancel) => Ok(Failed),
        (Processing, Event::Reclaim) => Ok(Processing),
        (Processing, Event::Succeed) => Ok(match kind {
            TaskType::CreateCredentials => CredentialsCreated,
            TaskType::DeleteCredentials => CredentialsDeleted,
        }),
        (Processing, Event::Retry) => Ok(Queued),
        (Processing, Event::Fail) => Ok(Failed),
        (status, event) => Err(Refused::NotNow { status, event }),
    }
}

/// The times that decide a version's state (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VersionTimes {
    /// When it starts being used (a root key: starts signing). A root key
    /// is published from its creation, `keys.publish_ahead` before this.
    pub activates_at: u64,
    /// When it was superseded (a root key: stops signing).
    pub retires_at: Option<u64>,
    /// When it stops being valid (a workload credential: end of its
    /// grace; a PAT: its expiry).
    pub expires_at: Option<u64>,
    /// When a delete task removed it.
    pub removed_at: Option<u64>,
}

/// A version's state at `now`. Derived, never stored, so a root key starts
/// signing at `activates_at` exactly, whether or not a worker ran then.
pub fn version_state(t: &VersionTimes, now: u64) -> VersionState {
    if t.removed_at.is_some() || t.expires_at.is_some_and(|e| e <= now) {
        VersionState::Retired
    } else if now < t.activates_at {
        VersionState::Pending
    } else if t.retires_at.is_some_and(|r| r <= now) {
        VersionState::Retiring
    } else {
        VersionState::Active
    }
}

/// How long a task waits after its `attempt`-th failed attempt (1-based):
/// `base` doubling each time, at most `max`.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::*;

    /// Every (type, status, event) triple, and what it gives: the whole
    /// table, refusals included. A change to the lifecycle must change
    /// this table.
    #[test]
    fn every_transition_and_every_refusal() {
        use Event::*;
        let create = TaskType::CreateCredentials;
        let delete = TaskType::DeleteCredentials;
        let not_now = |status, event| Err(Refused::NotNow { status, event });
        #[rustfmt::skip]
        let table: &[(TaskType, TaskStatus, Event, Result<TaskStatus, Refused>)] = &[
            // queued: claimed or cancelled, nothing else
            (create, Queued, Claim, Ok(Processing)),
            (create, Queued, Reclaim, not_now(Queued, Reclaim)),
            (create, Queued, Succeed, not_now(Queued, Succeed)),
            (create, Queued, Retry, not_now(Queued, Retry)),
            (create, Queued, Fail, not_now(Queued, Fail)),
            (create, Queued, Cancel, Ok(Failed)),
            (delete, Queued, Claim, Ok(Processing)),
            (delete, Queued, Reclaim, not_now(Queued, Reclaim)),
            (delete, Queued, Succeed, not_now(Queued, Succeed)),
            (delete, Queued, Retry, not_now(Queued, Retry)),
            (delete, Queued, Fail, not_now(Queued, Fail)),
            (delete, Queued, Cancel, Ok(Failed)),
            // processing: finished by its worker, taken over, or cancelled
            (create, Processing, Claim, not_now(Processing, Claim)),
            (create, Processing, Reclaim, Ok(Processing)),
            (create, Processing, Succeed, Ok(CredentialsCreated)),
            (create, Processing, Retry, Ok(Queued)),
            (create, Processing, Fail, Ok(Failed)),
            (create, Processing, Cancel, Ok(Failed)),
            (delete, Processing, Claim, not_now(Processing, Claim)),
            (delete, Processing, Reclaim, Ok(Processing)),
            (delete, Processing, Succeed, Ok(CredentialsDeleted)),
            (delete, Processing, Retry, Ok(Queued)),
            (delete, Processing, Fail, Ok(Failed)),
            (delete, Processing, Cancel, Ok(Failed)),
            // final: every event refused, whatever the type
            (create, CredentialsCreated, Claim, Err(Refused::Final(CredentialsCreated))),
            (create, CredentialsCreated, Reclaim, Err(Refused::Final(CredentialsCreated))),
            (create, CredentialsCreated, Succeed, Err(Refused::Final(CredentialsCreated))),
            (create, CredentialsCreated, Retry, Err(Refused::Final(CredentialsCreated))),
            (create, CredentialsCreated, Fail, Err(Refused::Final(CredentialsCreated))),
            (create, CredentialsCreated, Cancel, Err(Refused::Final(CredentialsCreated))),
            (delete, CredentialsDeleted, Claim, Err(Refused::Final(CredentialsDeleted))),
            (delete, CredentialsDeleted, Reclaim, Err(Refused::Final(CredentialsDeleted))),
            (delete, CredentialsDeleted, Succeed, Err(Refused::Final(CredentialsDeleted))),
            (delete, CredentialsDeleted, Retry, Err(Refused::Final(CredentialsDeleted))),
            (delete, CredentialsDeleted, Fail, Err(Refused::Final(CredentialsDeleted))),
            (delete, CredentialsDeleted, Cancel, Err(Refused::Final(CredentialsDeleted))),
            (create, Failed, Claim, Err(Refused::Final(Failed))),
            (create, Failed, Reclaim, Err(Refused::Final(Failed))),
            (create, Failed, Succeed, Err(Refused::Final(Failed))),
            (create, Failed, Retry, Err(Refused::Final(Failed))),
            (create, Failed, Fail, Err(Refused::Final(Failed))),
            (create, Failed, Cancel, Err(Refused::Final(Failed))),
            (delete, Failed, Claim, Err(Refused::Final(Failed))),
            (delete, Failed, Reclaim, Err(Refused::Final(Failed))),
            (delete, Failed, Succeed, Err(Refused::Final(Failed))),
            (delete, Failed, Retry, Err(Refused::Final(Failed))),
            (delete, Failed, Fail, Err(Refused::Final(Failed))),
            (delete, Failed, Cancel, Err(Refused::Final(Failed))),
            // a final status of the other type's kind: refused all the same
            (delete, CredentialsCreated, Cancel, Err(Refused::Final(CredentialsCreated))),
            (create, CredentialsDeleted, Cancel, Err(Refused::Final(CredentialsDeleted))),
        ];
        for (kind, status, event, expected) in table {
            assert_eq!(
                transition(*kind, *status, *event),
                *expected,
                "{kind} {status} {event:?}"
            );
        }
        // The table is complete: every reachable (type, status, event).
        let mut covered = 0;
        for kind in TaskType::ALL {
            for status in TaskStatus::ALL {
                for event in Event::ALL {
                    let listed = table
                        .iter()
                        .any(|(k, s, e, _)| k == kind && s == status && e == event);
                    // A create task never is credentials_deleted, nor a
                    // delete task credentials_created: those two rows
                    // stand for the other final statuses above.
                    let unreachable = matches!(
                        (kind, status),
                        (TaskType::CreateCredentials, CredentialsDeleted)
                            | (TaskType::DeleteCredentials, CredentialsCreated)
                    );
                    assert!(
                        listed || unreachable,
                        "{kind} {status} {event:?} not in the table"
                    );
                    covered += usize::from(listed);
                }
            }
        }
        assert_eq!(covered, table.len());
    }

    #[test]
    fn no_transition_leaves_a_final_status_or_reaches_queued_from_outside_processing() {
        for kind in TaskType::ALL {
            for status in TaskStatus::ALL {
                for event in Event::ALL {
                    if let Ok(next) = transition(*kind, *status, *event) {
                        assert!(!status.is_final());
                        if next == Queued {
                            assert_eq!((*status, *event), (Processing, Event::Retry));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for t in Trigger::ALL {
            assert_eq!(Trigger::parse(t.as_str()), Some(*t));
        }
        for k in CredentialKind::ALL {
            assert_eq!(CredentialKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(TaskType::parse("rotate"), None);
    }

    #[test]
    fn a_version_state_follows_its_times() {
        let t = VersionTimes {
            activates_at: 100,
            retires_at: Some(200),
            expires_at: Some(300),
            removed_at: None,
        };
        assert_eq!(version_state(&t, 99), VersionState::Pending);
        assert_eq!(version_state(&t, 100), VersionState::Active);
        assert_eq!(version_state(&t, 199), VersionState::Active);
        assert_eq!(version_state(&t, 200), VersionState::Retiring);
        assert_eq!(version_state(&t, 299), VersionState::Retiring);
        assert_eq!(version_state(&t, 300), VersionState::Retired);
        let removed = VersionTimes {
            removed_at: Some(150),
            ..t
        };
        assert_eq!(version_state(&removed, 120), VersionState::Retired);
        let open = VersionTimes {
            activates_at: 0,
            ..VersionTimes::default()
        };
        assert_eq!(version_state(&open, u64::MAX), VersionState::Active);
    }

    #[test]
    fn retries_back_off_doubling_up_to_the_cap() {
        let base = Duration::from_secs(30);
        let max = Duration::from_secs(3600);
        let delays: Vec<u64> = (1..=9)
            .map(|a| retry_delay(a, base, max).as_secs())
            .collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_delay(u32::MAX, base, max), max);
    }
}
