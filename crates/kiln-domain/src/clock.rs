//! Time: the [`Clock`] trait, the system clock and a manual clock for tests.
//!
//! Every timestamp Kiln stores has millisecond precision (the API shows RFC 3339 with ms),
//! so [`Clock::now`] truncates to whole milliseconds.

use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

/// A UTC instant with millisecond precision.
pub type Timestamp = DateTime<Utc>;

/// The latest instant Kiln computes: the end of year 9999, which every store and the
/// RFC 3339 form can hold. Sums that would go past it stop there instead of overflowing.
pub fn far_future() -> Timestamp {
    DateTime::from_timestamp(253_402_300_799, 999_000_000).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t + d`, saturating at [`far_future`] (a year-long lease, an hour-long backoff doubled
/// too often, or a setting of `u64::MAX` seconds must never panic).
pub fn later(t: Timestamp, d: std::time::Duration) -> Timestamp {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .map_or_else(far_future, |at| at.min(far_future()))
}

/// `t - d`, saturating at the Unix epoch (nothing Kiln stores is older).
pub fn earlier(t: Timestamp, d: std::time::Duration) -> Timestamp {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .map_or(DateTime::UNIX_EPOCH, |at| at.max(DateTime::UNIX_EPOCH))
}

/// Source of the current time, injected so tests can control it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant, truncated to milliseconds.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        truncate_ms(Utc::now())
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// A manual clock starting at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Mutex::new(truncate_ms(start)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: TimeDelta) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: Timestamp) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = truncate_ms(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drops sub-millisecond precision.
pub fn truncate_ms(t: Timestamp) -> Timestamp {
    from_millis(t.timestamp_millis())
}

/// Milliseconds since the Unix epoch → timestamp. A value outside chrono's range, too early
/// or too late, gives the earliest representable instant (`DateTime::<Utc>::MIN_UTC`).
pub fn from_millis(ms: i64) -> Timestamp {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let start = from_millis(1_000);
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(TimeDelta::milliseconds(250));
        assert_eq!(clock.now().timestamp_millis(), 1_250);
    }

    #[test]
    fn sums_saturate_instead_of_overflowing() {
        use std::time::Duration;
        let t = from_millis(1_000);
        assert_eq!(later(t, Duration::from_secs(2)).timestamp_millis(), 3_000);
        assert_eq!(later(t, Duration::MAX), far_future());
        assert_eq!(later(t, Duration::from_secs(u64::MAX / 2)), far_future());
        assert_eq!(later(far_future(), Duration::from_secs(1)), far_future());
        assert_eq!(far_future().to_rfc3339(), "9999-12-31T23:59:59.999+00:00");
        assert_eq!(
            earlier(t, Duration::from_millis(400)).timestamp_millis(),
            600
        );
        assert_eq!(earlier(t, Duration::MAX), DateTime::UNIX_EPOCH);
        assert_eq!(earlier(t, Duration::from_secs(5)), DateTime::UNIX_EPOCH);
    }

    #[test]
    fn system_clock_has_millisecond_precision() {
        let now = SystemClock.now();
        assert_eq!(now.timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
