//! Durations as configuration files write them (`30s`, `5m`, `1h30m`, `24h`,
//! or bare seconds), checked against a range — shared by the sidecar's and
//! the issuer's configuration (feature `config`).

use std::time::Duration;

/// Parses `s` and checks it lies in `[min, max]`; the error is a phrase to
/// put after the key's name (`` `tokens.ttl` = 2h is out of range: … ``).
pub fn parse_in(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("`{s}` is not a duration like 30s, 5m or 1h ({e})"))?,
    };
    if d < min || d > max {
        return Err(format!(
            "= {s} is out of range: allowed {} to {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds_parse_and_the_range_is_enforced() {
        let (min, max) = (Duration::from_secs(30), Duration::from_secs(3600));
        assert_eq!(parse_in("5m", min, max), Ok(Duration::from_secs(300)));
        assert_eq!(parse_in(" 90 ", min, max), Ok(Duration::from_secs(90)));
        assert!(
            parse_in("29s", min, max)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            parse_in("soon", min, max)
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
