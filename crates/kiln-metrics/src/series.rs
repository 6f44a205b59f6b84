//! [`Series`]: what this node's worker did in each minute of the last hour (attempts started
//! and ended by outcome, start-latency percentiles), for the operator dashboard's charts
//! (`GET /api/v1/admin/series`).
//!
//! A ring of [`MINUTES`] one-minute slots, each keyed by its minute since the Unix epoch: a
//! record into a minute whose slot still holds an older minute clears the slot first, and a
//! [`Series::snapshot`] shows a slot only if it holds the very minute asked for, so a quiet
//! minute reads as zeros, never as what happened an hour before. Kept in memory only: a
//! restart starts from nothing.
//!
//! Start latencies go into [`LATENCY_BOUNDS`], fixed log-spaced buckets; percentiles are read
//! from them (see [`Percentiles`] for the precision). Recording takes one lock for a few
//! instructions (the bucket is found before the lock is taken); "now" is a parameter, so
//! tests control time ([`crate::Metrics`] passes the wall clock's minute).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::Outcome;

/// Minutes kept: the last hour.
pub const MINUTES: usize = 60;

/// Upper bounds of the start-latency buckets, microseconds: 0.5 ms to 60 s, 40 buckets
/// spaced by a factor of about 1.35 (rounded to two significant digits, so no bucket is
/// more than 42 % wider than the one below it). Waits over 60 s fall in one more bucket.
pub const LATENCY_BOUNDS: [u64; 40] = [
    500, 670, 910, 1_200, 1_700, 2_200, 3_000, 4_100, 5_500, 7_400, 10_000, 14_000, 18_000, 25_000,
    33_000, 45_000, 61_000, 82_000, 110_000, 150_000, 200_000, 270_000, 370_000, 490_000, 670_000,
    900_000, 1_200_000, 1_600_000, 2_200_000, 3_000_000, 4_000_000, 5_400_000, 7_400_000,
    9_900_000, 13_000_000, 18_000_000, 24_000_000, 33_000_000, 44_000_000, 60_000_000,
];

/// The buckets: one per bound and the one over the last bound.
const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// One minute of a node's attempts, as [`Series::snapshot`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Minute {
    /// The minute since the Unix epoch (`minute * 60` seconds is when it began).
    pub minute: i64,
    /// Attempts started.
    pub started: u64,
    /// Attempts ended [`Outcome::Succeeded`].
    pub succeeded: u64,
    /// Attempts ended with a retryable failure ([`Outcome::Retried`]).
    pub failed: u64,
    /// Attempts ended [`Outcome::Dead`].
    pub dead: u64,
    /// Attempts ended [`Outcome::Cancelled`].
    pub cancelled: u64,
    /// The start latency of the attempts started; `None` when none started.
    pub start_latency: Option<Percentiles>,
}

/// Start-latency percentiles of one minute.
///
/// Each is the upper bound of the [`LATENCY_BOUNDS`] bucket the percentile falls in, or the
/// minute's longest wait when that is lower: never below the true value, and less than
/// 42 % above it (under 0.5 ms it says 0.5 ms or the longest wait). Over 60 s it is the
/// minute's longest wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// The median.
    pub p50: Duration,
    /// The 95th percentile.
    pub p95: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

/// One minute's counts in the ring.
#[derive(Clone, Copy)]
struct Slot {
    minute: i64,
    started: u64,
    ended: [u64; 4],
    latency: [u32; BUCKETS],
    /// The longest wait, microseconds.
    longest: u64,
}

impl Slot {
    const EMPTY: Slot = Slot {
        minute: 0,
        started: 0,
        ended: [0; 4],
        latency: [0; BUCKETS],
        longest: 0,
    };

    /// The slot for `minute`, cleared if it held an older one; `None` if it holds a newer
    /// one (then `minute` is over an hour older than what is recorded: dropped).
    fn at(&mut self, minute: i64) -> Option<&mut Slot> {
        if self.minute < minute {
            *self = Slot {
                minute,
                ..Slot::EMPTY
            };
        }
        (self.minute == minute).then_some(self)
    }

    fn read(&self) -> Minute {
        let [succeeded, failed, dead, cancelled] = self.ended;
        Minute {
            minute: self.minute,
            started: self.started,
            succeeded,
            failed,
            dead,
            cancelled,
            start_latency: self.percentiles(),
        }
    }

    fn percentiles(&self) -> Option<Percentiles> {
        let total: u64 = self.latency.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return None;
        }
        let at = |percent: u64| {
            // Nearest rank: the smallest value with at least `percent` % of waits at or
            // below it.
            let rank = (total * percent).div_ceil(100).max(1);
            let mut seen = 0;
            let bucket = self
                .latency
                .iter()
                .position(|&n| {
                    seen += u64::from(n);
                    seen >= rank
                })
                .unwrap_or(BUCKETS - 1);
            let bound = LATENCY_BOUNDS.get(bucket).copied().unwrap_or(u64::MAX);
            Duration::from_micros(bound.min(self.longest))
        };
        Some(Percentiles {
            p50: at(50),
            p95: at(95),
            p99: at(99),
        })
    }
}

/// The last hour of a node's attempts, minute by minute (module docs).
pub struct Series {
    ring: Mutex<Box<[Slot; MINUTES]>>,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            ring: Mutex::new(Box::new([Slot::EMPTY; MINUTES])),
        }
    }
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Series").finish_non_exhaustive()
    }
}

/// The ring index of `minute`.
fn index(minute: i64) -> usize {
    // `rem_euclid` of a positive divisor is in 0..MINUTES.
    minute.rem_euclid(MINUTES as i64) as usize
}

impl Series {
    /// An attempt started in `minute`, `waited` after its job was due.
    pub fn record_start(&self, minute: i64, waited: Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS.partition_point(|&bound| bound < micros);
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = ring[index(minute)].at(minute) {
            slot.started += 1;
            slot.latency[bucket] = slot.latency[bucket].saturating_add(1);
            slot.longest = slot.longest.max(micros);
        }
    }

    /// An attempt ended in `minute` with `outcome`.
    pub fn record_end(&self, minute: i64, outcome: Outcome) {
        let i = match outcome {
            Outcome::Succeeded => 0,
            Outcome::Retried => 1,
            Outcome::Dead => 2,
            Outcome::Cancelled => 3,
        };
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = ring[index(minute)].at(minute) {
            slot.ended[i] += 1;
        }
    }

    /// The [`MINUTES`] minutes ending with `now_minute`, oldest first; a minute with nothing
    /// recorded is all zeros.
    pub fn snapshot(&self, now_minute: i64) -> Vec<Minute> {
        // Copied under the lock (a few KiB), read after it.
        let ring = **self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        (now_minute - (MINUTES as i64 - 1)..=now_minute)
            .map(|minute| {
                let slot = &ring[index(minute)];
                if slot.minute == minute {
                    slot.read()
                } else {
                    Minute {
                        minute,
                        ..Minute::default()
                    }
                }
            })
            .collect()
    }
}

/// The wall clock's minute since the Unix epoch (negative before it).
pub(crate) fn current_minute() -> i64 {
    const NANOS: u128 = 60_000_000_000;
    let minutes = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
    match std::time::SystemTime::now().duration_since(std::time::SystemTime::UNIX_EPOCH) {
        Ok(since) => minutes(since.as_nanos() / NANOS),
        Err(e) => -minutes(e.duration().as_nanos().div_ceil(NANOS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 29_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn minute_of(series: &[Minute], minute: i64) -> Minute {
        *series
            .iter()
            .find(|m| m.minute == minute)
            .expect("the minute is in the snapshot")
    }

    #[test]
    fn the_bounds_rise_by_at_most_42_percent() {
        for pair in LATENCY_BOUNDS.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
            assert!(pair[1] * 100 <= pair[0] * 142, "{pair:?}");
        }
        assert_eq!(LATENCY_BOUNDS[0], 500);
        assert_eq!(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1], 60_000_000);
    }

    #[test]
    fn counts_and_percentiles_of_a_minute() {
        let s = Series::default();
        // 100 starts: 90 of 2 ms, 8 of 100 ms, 2 of 3 s.
        for _ in 0..90 {
            s.record_start(NOW, ms(2));
        }
        for _ in 0..8 {
            s.record_start(NOW, ms(100));
        }
        for _ in 0..2 {
            s.record_start(NOW, ms(3_000));
        }
        for _ in 0..7 {
            s.record_end(NOW, Outcome::Succeeded);
        }
        s.record_end(NOW, Outcome::Retried);
        s.record_end(NOW, Outcome::Retried);
        s.record_end(NOW, Outcome::Dead);
        s.record_end(NOW, Outcome::Cancelled);
        let m = minute_of(&s.snapshot(NOW), NOW);
        assert_eq!(
            (m.started, m.succeeded, m.failed, m.dead, m.cancelled),
            (100, 7, 2, 1, 1)
        );
        let p = m.start_latency.expect("jobs started");
        // The upper bounds of the buckets holding 2 ms, 100 ms and 3 s.
        assert_eq!(p.p50, ms(2) + Duration::from_micros(200));
        assert_eq!(p.p95, ms(110));
        // The 3 s bucket's bound is 3 s itself.
        assert_eq!(p.p99, ms(3_000));
    }

    #[test]
    fn a_percentile_is_never_below_the_true_value_nor_above_the_longest_wait() {
        let s = Series::default();
        s.record_start(NOW, Duration::from_micros(2_345));
        let p = minute_of(&s.snapshot(NOW), NOW)
            .start_latency
            .expect("one start");
        // Its bucket's bound is 3 ms, but nothing waited longer than 2.345 ms.
        assert_eq!(p.p50, Duration::from_micros(2_345));
        assert_eq!((p.p95, p.p99), (p.p50, p.p50));

        // A wait at a bucket's bound counts in that bucket, not the next.
        let s = Series::default();
        s.record_start(NOW, ms(10));
        s.record_start(NOW, ms(1));
        let p = minute_of(&s.snapshot(NOW), NOW).start_latency.unwrap();
        assert_eq!((p.p50, p.p99), (Duration::from_micros(1_200), ms(10)));

        // Over 60 s: the longest wait.
        let s = Series::default();
        s.record_start(NOW, ms(90_000));
        s.record_start(NOW, ms(200_000));
        let p = minute_of(&s.snapshot(NOW), NOW).start_latency.unwrap();
        assert_eq!((p.p50, p.p99), (ms(200_000), ms(200_000)));

        // No wait at all.
        let s = Series::default();
        s.record_start(NOW, Duration::ZERO);
        let p = minute_of(&s.snapshot(NOW), NOW).start_latency.unwrap();
        assert_eq!(p.p99, Duration::ZERO);
    }

    #[test]
    fn an_empty_minute_is_zeros_without_percentiles() {
        let s = Series::default();
        s.record_start(NOW - 2, ms(5));
        s.record_end(NOW - 2, Outcome::Succeeded);
        // Only ends in this minute: counts, but no latency.
        s.record_end(NOW, Outcome::Dead);
        let snap = s.snapshot(NOW);
        assert_eq!(
            minute_of(&snap, NOW - 1),
            Minute {
                minute: NOW - 1,
                ..Minute::default()
            }
        );
        let now = minute_of(&snap, NOW);
        assert_eq!((now.started, now.dead, now.start_latency), (0, 1, None));
        let before = minute_of(&snap, NOW - 2);
        assert_eq!((before.started, before.succeeded), (1, 1));
        assert!(before.start_latency.is_some());
        // A fresh series: 60 empty minutes.
        let fresh = Series::default().snapshot(NOW);
        assert_eq!(fresh.len(), MINUTES);
        assert!(fresh.iter().all(|m| *m
            == Minute {
                minute: m.minute,
                ..Minute::default()
            }));
    }

    #[test]
    fn the_snapshot_is_the_last_60_minutes_oldest_first() {
        let s = Series::default();
        for minute in NOW - 59..=NOW {
            for _ in 0..(minute - (NOW - 60)) {
                s.record_end(minute, Outcome::Succeeded);
            }
        }
        let snap = s.snapshot(NOW);
        assert_eq!(snap.len(), MINUTES);
        let minutes: Vec<i64> = snap.iter().map(|m| m.minute).collect();
        let want: Vec<i64> = (NOW - 59..=NOW).collect();
        assert_eq!(minutes, want);
        // The oldest minute had one, the current one sixty.
        let counts: Vec<u64> = snap.iter().map(|m| m.succeeded).collect();
        assert_eq!(counts, (1..=60).collect::<Vec<u64>>());
        // Ten minutes later the ten oldest are gone and ten quiet ones follow.
        let later = s.snapshot(NOW + 10);
        assert_eq!(later[0].minute, NOW - 49);
        assert_eq!(later[0].succeeded, 11);
        assert_eq!(later[49].succeeded, 60);
        assert!(later[50..].iter().all(|m| m.succeeded == 0));
    }

    #[test]
    fn wrapping_onto_an_old_minute_clears_it() {
        let s = Series::default();
        s.record_start(NOW, ms(1));
        s.record_end(NOW, Outcome::Succeeded);
        s.record_end(NOW, Outcome::Dead);
        // An hour later, the same slot: the old counts are gone.
        let later = NOW + MINUTES as i64;
        s.record_end(later, Outcome::Cancelled);
        let m = minute_of(&s.snapshot(later), later);
        assert_eq!(
            (m.started, m.succeeded, m.dead, m.cancelled, m.start_latency),
            (0, 0, 0, 1, None)
        );
        // An hour and more later, without a record since: the old minute is not shown
        // either, though its slot still holds it.
        let s = Series::default();
        s.record_end(NOW, Outcome::Succeeded);
        let snap = s.snapshot(NOW + MINUTES as i64);
        assert!(snap.iter().all(|m| m.succeeded == 0), "{snap:?}");
        // A record over an hour older than the slot's minute is dropped, not mixed in.
        let s = Series::default();
        s.record_end(NOW, Outcome::Succeeded);
        s.record_end(NOW - MINUTES as i64, Outcome::Dead);
        let m = minute_of(&s.snapshot(NOW), NOW);
        assert_eq!((m.succeeded, m.dead), (1, 0));
    }
}
