//! Per-user submission rate: a token bucket per client (governor's GCRA), so one client
//! cannot take every slot of the queue (`MAX_QUEUED`) or the writer for itself. Operators
//! and admins are not limited unless an admin sets a rate for them. In memory and per
//! node: with several nodes, a client's allowance is per node it reaches. One small bucket
//! per client that ever submitted: the memory is bounded by the users table.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use kiln_domain::UserId;

/// A submission rate: `per` jobs every `period`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitRate {
    /// Jobs per period.
    pub per: NonZeroU32,
    /// The period.
    pub period: Duration,
    /// Jobs a client may submit at once after being idle.
    pub burst: NonZeroU32,
}

impl SubmitRate {
    /// Parses `N/s`, `N/m` or `N/h` (N ≥ 1) with a burst of `burst`.
    pub fn parse(text: &str, burst: u32) -> Result<Self, String> {
        let (n, unit) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not N/s, N/m or N/h"))?;
        let per = n
            .trim()
            .parse::<NonZeroU32>()
            .map_err(|_| format!("`{n}` is not a whole number of jobs from 1"))?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("unit `{other}` is not s, m or h")),
        };
        let burst = NonZeroU32::new(burst).ok_or("the burst must be at least 1")?;
        Ok(Self { per, period, burst })
    }

    /// The unit of [`SubmitRate::period`] as written (`s`, `m`, `h`).
    fn unit(self) -> &'static str {
        match self.period.as_secs() {
            3600 => "h",
            60 => "m",
            _ => "s",
        }
    }

    fn quota(self) -> Quota {
        // One job every period / per; never zero (per ≤ u32::MAX, period ≥ 1 s).
        let every = self.period / self.per.get();
        Quota::with_period(every.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(self.per))
            .allow_burst(self.burst)
    }
}

impl std::fmt::Display for SubmitRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.per, self.unit())
    }
}

/// The buckets, one per client that submitted.
pub struct SubmitLimiter {
    /// The default rate, and the buckets of the users who have it.
    default: Option<(SubmitRate, DefaultKeyedRateLimiter<UserId>)>,
    /// Buckets of users with a rate of their own (set by an admin).
    own: Mutex<HashMap<UserId, (SubmitRate, Arc<DefaultDirectRateLimiter>)>>,
    clock: DefaultClock,
}

impl SubmitLimiter {
    /// A limiter with `default` for the users who have no rate of their own.
    pub fn new(default: Option<SubmitRate>) -> Self {
        Self {
            default: default.map(|rate| (rate, DefaultKeyedRateLimiter::keyed(rate.quota()))),
            own: Mutex::default(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one submission from `user`'s bucket at `rate`, or says how long until one is
    /// free. A user whose rate changed starts with a full bucket at the new rate.
    pub fn take(&self, user: UserId, rate: SubmitRate) -> Result<(), Duration> {
        let checked = match &self.default {
            Some((default, keyed)) if *default == rate => keyed.check_key(&user),
            _ => {
                let limiter = {
                    let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = own.entry(user).or_insert_with(|| {
                        (
                            rate,
                            Arc::new(DefaultDirectRateLimiter::direct(rate.quota())),
                        )
                    });
                    if entry.0 != rate {
                        *entry = (
                            rate,
                            Arc::new(DefaultDirectRateLimiter::direct(rate.quota())),
                        );
                    }
                    Arc::clone(&entry.1)
                };
                limiter.check()
            }
        };
        checked.map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        let r = SubmitRate::parse("60/m", 5).unwrap();
        assert_eq!(
            (r.per.get(), r.period, r.burst.get()),
            (60, Duration::from_secs(60), 5)
        );
        for bad in ["", "60", "0/s", "x/s", "5/d", "-1/s"] {
            assert!(SubmitRate::parse(bad, 5).is_err(), "{bad}");
        }
        assert!(SubmitRate::parse("5/s", 0).is_err());
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_not_affected() {
        let rate = SubmitRate::parse("1/h", 3).unwrap();
        let limiter = SubmitLimiter::new(Some(rate));
        for _ in 0..3 {
            assert_eq!(limiter.take(UserId(1), rate), Ok(()));
        }
        let wait = limiter.take(UserId(1), rate).unwrap_err();
        assert!(
            wait > Duration::from_secs(3000) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
        assert_eq!(limiter.take(UserId(2), rate), Ok(()));
        // A rate of one's own is a bucket of one's own.
        let own = SubmitRate::parse("1/h", 1).unwrap();
        assert_eq!(limiter.take(UserId(1), own), Ok(()));
        assert!(limiter.take(UserId(1), own).is_err());
        assert_eq!(rate.to_string(), "1/h");
        assert_eq!(SubmitRate::parse("20/m", 1).unwrap().to_string(), "20/m");
    }
}
