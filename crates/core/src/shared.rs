//! A value read on every request and replaced rarely (the grant, the
//! ceiling, the root keys): readers take a cheap `Arc` snapshot, a writer
//! swaps the whole value.

use std::sync::{Arc, PoisonError, RwLock};

/// A swappable shared value.
#[derive(Debug)]
pub struct Shared<T>(RwLock<Arc<T>>);

impl<T> Shared<T> {
    /// Holds `value`.
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        // Poisoning cannot leave a half-written value: the only write is one
        // pointer assignment, so a poisoned lock still holds a whole value.
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the value; readers holding the old one keep it until they drop it.
    pub fn store(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}
