//! `server.rate_limit`: a token bucket in front of the token endpoint.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Up to `rate` requests a second, bursts of up to `rate`. Answers "retry
/// after N s" instead of queueing: a workload in a loop should back off, not
/// pile up.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub(crate) fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            state: Mutex::new((f64::from(rate), now)),
        }
    }

    /// Takes one request's token; `Err(seconds to wait)` when none is left.
    pub(crate) fn check(&self, now: Instant) -> Result<(), u64> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = *st;
        let refilled =
            (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        if refilled >= 1.0 {
            *st = (refilled - 1.0, now);
            Ok(())
        } else {
            *st = (refilled, now);
            let wait = ((1.0 - refilled) / self.rate).ceil().max(1.0);
            // `wait` is a small positive whole number of seconds.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Err(wait as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_rate_limiter_allows_a_burst_then_refills_over_time() {
        let t0 = Instant::now();
        let l = RateLimiter::new(2, t0);
        assert!(l.check(t0).is_ok());
        assert!(l.check(t0).is_ok());
        assert_eq!(l.check(t0), Err(1));
        assert!(l.check(t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check(t0 + Duration::from_millis(500)).is_err());
        assert!(l.check(t0 + Duration::from_secs(5)).is_ok());
    }
}
