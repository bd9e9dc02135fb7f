//! The one place that reads the wall clock.
//!
//! Everything on a token path takes `now` (unix seconds) as a parameter;
//! only the daemons' loops and request handlers ask this module for it.
//! `clippy.toml` forbids `SystemTime::now` and
//! `jsonwebtoken::get_current_timestamp` everywhere else.

/// Seconds since the Unix epoch, now.
#[allow(clippy::disallowed_methods)] // the one sanctioned reader of the clock
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
