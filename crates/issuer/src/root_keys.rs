//! This node's root key versions in memory: the private keys (read from
//! `state_dir`, never from the store) with the times of their versions,
//! and the one rule that picks the key that signs.
//!
//! Which key signs is derived from the version times at `now`, not from a
//! stored flag: a new key starts signing at its `activates_at` exactly —
//! `keys.publish_ahead` after it was published — whether or not a worker
//! ran at that moment, and the previous key stops at the same instant
//! (its `retires_at`). Swapped at runtime by the worker
//! ([`RootKeyRing::sync`]); readers take a snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use authproxy_core::keys::SigningKey;
use authproxy_core::shared::Shared;

use crate::store::CredentialRecord;
use crate::tasks::model::{VersionState, VersionTimes, version_state};

/// A version this node can sign with.
#[derive(Debug, Clone)]
struct RingKey {
    key: Arc<SigningKey>,
    times: VersionTimes,
}

/// This node's root keys.
#[derive(Debug)]
pub struct RootKeyRing {
    /// Every private key read or created, by kid (including versions not
    /// yet recorded, and removed ones until [`Self::forget`]).
    private: Shared<BTreeMap<String, Arc<SigningKey>>>,
    /// The versions of the store's record that have a private key here.
    versions: Shared<Vec<RingKey>>,
    /// The latest `now` a key was picked for ([`Self::current_kid`]).
    last_now: AtomicU64,
}

impl RootKeyRing {
    /// A ring holding `keys` (as read from `state_dir`), with no version
    /// times yet: [`Self::sync`] gives them.
    pub fn new(keys: Vec<SigningKey>) -> Self {
        let private = keys
            .into_iter()
            .map(|k| (k.public().thumbprint().to_owned(), Arc::new(k)))
            .collect();
        Self {
            private: Shared::new(private),
            versions: Shared::new(Vec::new()),
            last_now: AtomicU64::new(0),
        }
    }

    /// Adds a private key just created.
    pub fn add(&self, key: SigningKey) {
        let mut private = (*self.private.load()).clone();
        private.insert(key.public().thumbprint().to_owned(), Arc::new(key));
        self.private.store(private);
    }

    /// Drops a private key from memory (its version was removed).
    pub fn forget(&self, kid: &str) {
        let mut private = (*self.private.load()).clone();
        private.remove(kid);
        self.private.store(private);
    }

    /// The private key of `kid`, if this node has it.
    pub fn private_key(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.private.load().get(kid).cloned()
    }

    /// Kids of the private keys held.
    pub fn kids(&self) -> Vec<String> {
        self.private.load().keys().cloned().collect()
    }

    /// Takes the version times of this node's root-key credential.
    pub fn sync(&self, record: &CredentialRecord) {
        let private = self.private.load();
        let versions = record
            .versions
            .iter()
            .filter(|v| v.times.removed_at.is_none())
            .filter_map(|v| {
                let key = private.get(v.kid.as_deref()?)?;
                Some(RingKey {
                    key: Arc::clone(key),
                    times: v.times,
                })
            })
            .collect();
        self.versions.store(versions);
    }

    /// The key that signs at `now`: the active version (the latest one
    /// activated, should two overlap). `None` if no version is active.
    pub fn signing_key(&self, now: u64) -> Option<Arc<SigningKey>> {
        self.last_now.fetch_max(now, Ordering::Relaxed);
        self.versions
            .load()
            .iter()
            .filter(|v| version_state(&v.times, now) == VersionState::Active)
            .max_by_key(|v| v.times.activates_at)
            .map(|v| Arc::clone(&v.key))
    }

    /// The kid of the key that signed last (or that signs now, at the
    /// latest time this node saw).
    pub fn current_kid(&self) -> Option<String> {
        let now = self.last_now.load(Ordering::Relaxed);
        self.signing_key(now)
            .map(|k| k.public().thumbprint().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::VersionRecord;
    use crate::tasks::model::CredentialKind;

    fn version(n: u32, key: &SigningKey, times: VersionTimes) -> VersionRecord {
        VersionRecord {
            version: n,
            kid: Some(key.public().thumbprint().to_owned()),
            secret_hash: None,
            pat_jti: None,
            created_at: times.activates_at,
            times,
        }
    }

    #[test]
    fn the_active_version_signs_and_a_pending_one_only_from_its_activation() {
        let old = SigningKey::generate().unwrap();
        let new = SigningKey::generate().unwrap();
        let (old_kid, new_kid) = (
            old.public().thumbprint().to_owned(),
            new.public().thumbprint().to_owned(),
        );
        let ring = RootKeyRing::new(vec![old]);
        ring.add(new);
        let record = CredentialRecord {
            id: "rk.n".into(),
            kind: CredentialKind::RootKey,
            name: "n".into(),
            node: Some("n".into()),
            environment: None,
            created_at: 0,
            versions: vec![
                version(
                    1,
                    &ring.private_key(&old_kid).unwrap(),
                    VersionTimes {
                        activates_at: 0,
                        retires_at: Some(1000),
                        ..VersionTimes::default()
                    },
                ),
                version(
                    2,
                    &ring.private_key(&new_kid).unwrap(),
                    VersionTimes {
                        activates_at: 1000,
                        ..VersionTimes::default()
                    },
                ),
            ],
        };
        ring.sync(&record);
        let kid = |now| {
            ring.signing_key(now)
                .unwrap()
                .public()
                .thumbprint()
                .to_owned()
        };
        assert_eq!(kid(999), old_kid);
        assert_eq!(kid(1000), new_kid);
        assert_eq!(ring.current_kid().unwrap(), new_kid);
        // A removed version never signs, even if its key is still held.
        let mut removed = record.clone();
        removed.versions[1].times.removed_at = Some(1500);
        ring.sync(&removed);
        assert!(ring.signing_key(1600).is_none());
    }
}
