//! Time as a value, so the policy, the authenticators and the store can be tested at any instant.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;

    /// How long the wall clock must run until this clock reads `deadline`; None when this clock
    /// does not follow the wall clock (a [`ManualClock`]), so a waiter waits on
    /// [`Clock::changed`] alone.
    fn wall_time_until(&self, deadline: SystemTime) -> Option<Duration> {
        Some(deadline.duration_since(self.now()).unwrap_or_default())
    }

    /// Resolves the next time the clock is set or advanced; never, for a clock that moves on
    /// its own. Take it before reading the time, so no move in between is missed.
    fn changed(&self) -> Changed {
        Changed::never()
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that reads a settable instant (milliseconds since the Unix epoch), and wakes whoever
/// waits on it when a test moves it. For tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<ManualState>);

#[derive(Debug, Default)]
struct ManualState {
    millis: AtomicU64,
    /// +1 at every set or advance.
    moves: AtomicU64,
    waiting: Mutex<Vec<Waker>>,
}

impl ManualState {
    fn moved(&self) {
        self.moves.fetch_add(1, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *lock(&self.waiting));
        waiting.into_iter().for_each(Waker::wake);
    }
}

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
        self.0.millis.store(millis, Ordering::SeqCst);
        self.0.moved();
    }

    pub fn advance(&self, by: Duration) {
        self.0
            .millis
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        self.0.moved();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.millis.load(Ordering::SeqCst))
    }

    fn wall_time_until(&self, _deadline: SystemTime) -> Option<Duration> {
        None
    }

    fn changed(&self) -> Changed {
        Changed {
            clock: Some((self.0.clone(), self.0.moves.load(Ordering::SeqCst))),
        }
    }
}

/// A future that resolves when a clock moves (see [`Clock::changed`]). Plain `std`: the domain
/// knows no runtime.
#[derive(Debug)]
#[must_use = "a future does nothing unless awaited"]
pub struct Changed {
    /// The manual clock and how many moves it had made; None: never resolves.
    clock: Option<(Arc<ManualState>, u64)>,
}

impl Changed {
    pub fn never() -> Self {
        Self { clock: None }
    }
}

impl Future for Changed {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        let Some((state, seen)) = &self.clock else {
            return Poll::Pending;
        };
        if state.moves.load(Ordering::SeqCst) != *seen {
            return Poll::Ready(());
        }
        lock(&state.waiting).push(context.waker().clone());
        // A move between the check and the registration woke nobody: look again.
        if state.moves.load(Ordering::SeqCst) != *seen {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
pub(crate) fn from_unix_seconds(seconds: i64) -> SystemTime {
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

/// RFC 3339 UTC text of a time; past 9999 `after 9999-12-31T23:59:59Z`, before year 1
/// `invalid-time` (never a panic: `OffsetDateTime::from(SystemTime)` panics there).
pub fn format_time(time: SystemTime) -> String {
    if unix_seconds(time) > LATEST_UNIX_SECONDS {
        return "after 9999-12-31T23:59:59Z".to_owned();
    }
    let nanos = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok(),
        Err(before) => i128::try_from(before.duration().as_nanos())
            .ok()
            .map(|n| -n),
    };
    nanos
        .and_then(|nanos| time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "invalid-time".to_owned())
}

// Times from outside (a client's request, another member, a file) are range-checked here, at
// the boundary, and nowhere turned into a `SystemTime` or added to one unchecked: a value past
// the range panicked worker threads when formatted (issue 30, N5) and `SystemTime + Duration`
// panics on overflow. Every such value goes through one of the functions below.

/// The last instant meshroot accepts from outside: 9999-12-31T23:59:59Z, the last that X.509
/// (GeneralizedTime) and RFC 3339 can write.
pub const LATEST_UNIX_SECONDS: i64 = 253_402_300_799;

/// The longest duration meshroot accepts from outside (a lifetime, a block, a CRL validity):
/// 100 years.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A time or duration from outside that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeRangeError {
    #[error("{0} is outside 1970-01-01T00:00:00Z..9999-12-31T23:59:59Z")]
    Time(String),
    #[error("{0} is not a duration between 1 second and 100 years")]
    Duration(String),
}

/// `millis` after the Unix epoch, if within 1970..=9999.
pub(crate) fn time_from_unix_millis(millis: i64) -> Result<SystemTime, TimeRangeError> {
    if (0..=LATEST_UNIX_SECONDS.saturating_mul(1000).saturating_add(999)).contains(&millis) {
        Ok(from_unix_millis(millis))
    } else {
        Err(TimeRangeError::Time(format!("{millis} ms since the epoch")))
    }
}

/// `seconds` after the Unix epoch, if within 1970..=9999.
pub(crate) fn time_from_unix_seconds(seconds: i64) -> Result<SystemTime, TimeRangeError> {
    if (0..=LATEST_UNIX_SECONDS).contains(&seconds) {
        Ok(from_unix_seconds(seconds))
    } else {
        Err(TimeRangeError::Time(format!("{seconds} s since the epoch")))
    }
}

/// A duration of `seconds`, if between 1 second and [`MAX_DURATION`].
pub(crate) fn duration_from_seconds(seconds: i64) -> Result<Duration, TimeRangeError> {
    match u64::try_from(seconds) {
        Ok(seconds) if seconds > 0 && seconds <= MAX_DURATION.as_secs() => {
            Ok(Duration::from_secs(seconds))
        }
        _ => Err(TimeRangeError::Duration(format!("{seconds} s"))),
    }
}

/// `time + by`, if at most [`LATEST_UNIX_SECONDS`].
pub fn later(time: SystemTime, by: Duration) -> Result<SystemTime, TimeRangeError> {
    time.checked_add(by)
        .filter(|at| unix_seconds(*at) <= LATEST_UNIX_SECONDS)
        .ok_or_else(|| TimeRangeError::Time(format!("{} + {by:?}", format_time(time))))
}

/// Parses durations such as `500ms`, `90s`, `15m`, `24h`, `7d`, `1h30m`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
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
pub(crate) fn format_duration(duration: Duration) -> String {
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

    #[test]
    fn a_manual_clock_wakes_its_waiters_when_moved_and_only_then() {
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(100));
        let mut changed = std::pin::pin!(clock.changed());
        let mut context = Context::from_waker(Waker::noop());
        assert!(changed.as_mut().poll(&mut context).is_pending());
        assert_eq!(clock.wall_time_until(UNIX_EPOCH), None);
        clock.advance(Duration::from_secs(1));
        assert!(changed.as_mut().poll(&mut context).is_ready());
        let mut never = std::pin::pin!(SystemClock.changed());
        assert!(never.as_mut().poll(&mut context).is_pending());
        let later = SystemTime::now() + Duration::from_secs(60);
        assert!(SystemClock
            .wall_time_until(later)
            .is_some_and(|wait| wait > Duration::from_secs(50)));
    }

    /// Issue 30, N5: a time past year 9999 is formatted, never a panic; times and durations
    /// from outside are range-checked.
    #[test]
    fn times_from_outside_are_range_checked_and_formatting_never_panics() {
        let far = UNIX_EPOCH + Duration::from_secs(1 << 40);
        assert_eq!(format_time(far), "after 9999-12-31T23:59:59Z");
        assert_eq!(
            format_time(from_unix_millis(i64::MAX)),
            "after 9999-12-31T23:59:59Z"
        );
        assert_eq!(format_time(from_unix_seconds(i64::MIN)), "invalid-time");
        assert_eq!(
            format_time(from_unix_seconds(LATEST_UNIX_SECONDS)),
            "9999-12-31T23:59:59Z"
        );
        assert!(time_from_unix_millis(i64::MAX).is_err());
        assert!(time_from_unix_millis(i64::MIN).is_err());
        assert!(time_from_unix_millis(-1).is_err());
        assert_eq!(
            time_from_unix_millis(1_500).unwrap(),
            UNIX_EPOCH + Duration::from_millis(1_500)
        );
        assert!(time_from_unix_seconds(LATEST_UNIX_SECONDS + 1).is_err());
        for bad in [0, -1, i64::MAX, 1 << 62, MAX_DURATION.as_secs() as i64 + 1] {
            assert!(duration_from_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(duration_from_seconds(60).unwrap(), Duration::from_secs(60));
        let now = from_unix_seconds(1_800_000_000);
        assert!(later(now, Duration::from_secs(3_000_000 * 86_400)).is_err());
        assert!(later(now, Duration::MAX).is_err());
        assert!(later(now, MAX_DURATION).is_ok());
    }

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
