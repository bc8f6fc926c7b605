//! Time as a value, so the policy, the authenticators and the store can be tested at any instant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that reads a settable instant (milliseconds since the Unix epoch). For tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn at(time: SystemTime) -> Self {
        let clock = Self::default();
        clock.set(time);
        clock
    }

    pub fn set(&self, time: SystemTime) {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.0.store(millis, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Milliseconds since the Unix epoch (negative before it), saturating.
pub fn unix_millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The time `seconds` after the Unix epoch (before it when negative), in whole seconds, so
/// that `unix_seconds` gives `seconds` back; the epoch itself where the platform cannot
/// represent it (a corrupt or hostile record, never a real certificate).
pub fn from_unix_seconds(seconds: i64) -> SystemTime {
    let offset = Duration::from_secs(seconds.unsigned_abs());
    match seconds >= 0 {
        true => UNIX_EPOCH.checked_add(offset),
        false => UNIX_EPOCH.checked_sub(offset),
    }
    .unwrap_or(UNIX_EPOCH)
}

/// The time `millis` milliseconds after the Unix epoch (before it when negative).
pub fn from_unix_millis(millis: i64) -> SystemTime {
    let offset = Duration::from_millis(millis.unsigned_abs());
    match millis >= 0 {
        true => UNIX_EPOCH.checked_add(offset),
        false => UNIX_EPOCH.checked_sub(offset),
    }
    .unwrap_or(UNIX_EPOCH)
}

/// RFC 3339 UTC text of a time.
pub fn format_time(time: SystemTime) -> String {
    time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "invalid-time".to_owned())
}

/// Parses durations such as `500ms`, `90s`, `15m`, `24h`, `7d`, `1h30m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total_ms: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, unit_len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.chars().next()? {
                's' => (1_000, 1),
                'm' => (60_000, 1),
                'h' => (3_600_000, 1),
                'd' => (86_400_000, 1),
                _ => return None,
            }
        };
        total_ms = total_ms.checked_add(value.checked_mul(unit_ms)?)?;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_millis(total_ms))
}

/// Formats a duration the way `parse_duration` reads it.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `record` fuzz target: a record whose time is near i64::MAX seconds decoded,
    /// re-encoded and decoded to another time.
    #[test]
    fn unix_times_round_trip_at_the_extremes() {
        for seconds in [
            i64::MAX,
            i64::MAX / 1000 + 1,
            9_223_372_036_854_775,
            -1,
            i64::MIN,
            0,
            1_800_000_000,
        ] {
            let time = from_unix_seconds(seconds);
            assert_eq!(from_unix_seconds(unix_seconds(time)), time, "{seconds}");
        }
        for millis in [i64::MAX, i64::MIN, -1, 0, 1_800_000_000_123] {
            let time = from_unix_millis(millis);
            assert_eq!(from_unix_millis(unix_millis(time)), time, "{millis}");
        }
        assert_eq!(
            unix_seconds(from_unix_seconds(1_800_000_000)),
            1_800_000_000
        );
    }

    #[test]
    fn parses_and_formats_durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604800)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(format_duration(Duration::from_secs(86400)), "1d");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
    }
}
