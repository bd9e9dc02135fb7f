//! The credential lifecycle as tasks (DESIGN §10): every creation,
//! rotation and deletion of a credential version is a task, persisted in
//! the store and run by a worker inside `issuer serve`.
//!
//! - [`model`] — statuses, types, triggers and the one state machine (pure).
//! - [`worker`] — claims due tasks and runs them; `step(now)` takes the
//!   time, so tests drive schedules without waiting.
//! - [`provider`] — where a new workload credential value goes: a
//!   directory (built in) or an external command.

pub mod model;
pub mod provider;
pub mod worker;
