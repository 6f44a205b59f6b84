//! Time: the [`Clock`] trait, the system clock and a manual clock for tests.
//!
//! Every timestamp Kiln stores has millisecond precision (the API shows RFC 3339 with ms),
//! so [`Clock::now`] truncates to whole milliseconds.

use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

/// A UTC instant with millisecond precision.
pub type Timestamp = DateTime<Utc>;

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
    fn system_clock_has_millisecond_precision() {
        let now = SystemClock.now();
        assert_eq!(now.timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
