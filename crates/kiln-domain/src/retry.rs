//! Retry timing: exponential backoff with full jitter.
//!
//! Full jitter (a uniform draw in `[0, min(cap, base·2^(n-1))]`) spreads retries of jobs that
//! failed together, so a recovering dependency is not hit by a synchronised wave.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Exponential backoff bounds, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// Upper bound of the first retry's delay.
    pub base_ms: u64,
    /// No delay is ever longer than this.
    pub cap_ms: u64,
}

impl Backoff {
    /// The largest delay allowed before retry number `failed_attempts` (1 for the first retry).
    pub fn ceiling(&self, failed_attempts: u32) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(63);
        let grown = self.base_ms.saturating_mul(1u64 << exponent);
        Duration::from_millis(grown.min(self.cap_ms))
    }

    /// A delay drawn uniformly from `[0, ceiling]` with the injected random source.
    pub fn delay(&self, failed_attempts: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(failed_attempts).as_millis() as u64;
        Duration::from_millis(rng.random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const BACKOFF: Backoff = Backoff {
        base_ms: 100,
        cap_ms: 1_000,
    };

    #[test]
    fn ceiling_doubles_until_the_cap() {
        let ceilings: Vec<u64> = (1..=6)
            .map(|n| BACKOFF.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        assert_eq!(BACKOFF.ceiling(u32::MAX), Duration::from_millis(1_000));
    }

    #[test]
    fn delays_stay_within_zero_and_the_ceiling_and_vary() {
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| BACKOFF.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 50, "full jitter spreads the delays");
    }
}
