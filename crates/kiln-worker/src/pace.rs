//! How many jobs to claim ahead of free slots ([`crate::WorkerConfig::claim_ahead`]): about
//! as many as the slots finish while one claim is at the store. Jobs shorter than a claim
//! then never wait for one (a slot that finishes takes the next job at once), and jobs
//! longer than a claim are not claimed ahead at all, so no job waits on this node behind a
//! long one while another node is idle.
//!
//! Both times are moving averages of what this node measured, so the figure follows the
//! work: a burst of no-op jobs raises it within a few jobs, and the first long ones lower
//! it again.

use std::time::Duration;

/// Weight of the newest measurement in each average.
const ALPHA: f64 = 0.2;

/// Moving averages of an attempt's run time and a claim's round trip, in seconds.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    run: Option<f64>,
    claim: Option<f64>,
}

fn mix(average: &mut Option<f64>, sample: Duration) {
    let sample = sample.as_secs_f64();
    *average = Some(match *average {
        Some(avg) => avg + ALPHA * (sample - avg),
        None => sample,
    });
}

impl Pace {
    /// An attempt ran for `took` (its kernel, not the storing of its outcome).
    pub(crate) fn ran(&mut self, took: Duration) {
        mix(&mut self.run, took);
    }

    /// Jobs claimed ahead waited `wait` for a slot and were given back: the slots are busy
    /// with jobs at least that long, so none is claimed ahead until shorter runs are seen.
    pub(crate) fn stalled(&mut self, wait: Duration) {
        let wait = wait.as_secs_f64();
        self.run = Some(self.run.map_or(wait, |run| run.max(wait)));
    }

    /// A claim took `took` at the store.
    pub(crate) fn claimed(&mut self, took: Duration) {
        mix(&mut self.claim, took);
    }

    /// Jobs to hold claimed beyond the free slots, at most `cap`: what `slots` finish
    /// during one claim. None before the first attempt and claim are measured.
    pub(crate) fn ahead(&self, slots: usize, cap: usize) -> usize {
        let (Some(run), Some(claim)) = (self.run, self.claim) else {
            return 0;
        };
        // A run measured as zero (a coarse clock) counts as a microsecond.
        let jobs = slots as f64 * claim / run.max(1e-6);
        if jobs >= cap as f64 {
            cap
        } else {
            jobs as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1000.0)
    }

    #[test]
    fn nothing_ahead_until_both_times_are_known() {
        let mut pace = Pace::default();
        assert_eq!(pace.ahead(4, 16), 0);
        pace.ran(ms(0.05));
        assert_eq!(pace.ahead(4, 16), 0);
        pace.claimed(ms(1.0));
        assert_eq!(pace.ahead(4, 16), 16, "no-op jobs: as many as allowed");
    }

    #[test]
    fn as_many_as_the_slots_finish_during_a_claim() {
        let mut pace = Pace::default();
        pace.claimed(ms(2.0));
        pace.ran(ms(1.0));
        assert_eq!(pace.ahead(4, 16), 8);
        pace.ran(ms(2.0));
        let between = pace.ahead(4, 16);
        assert!((4..8).contains(&between), "{between}");
    }

    #[test]
    fn long_jobs_are_never_claimed_ahead() {
        let mut pace = Pace::default();
        pace.claimed(ms(1.0));
        pace.ran(ms(0.05));
        assert_eq!(pace.ahead(4, 16), 16);
        // A few long jobs bring it down to none.
        for _ in 0..20 {
            pace.ran(ms(5_000.0));
        }
        assert_eq!(pace.ahead(4, 16), 0);
        // So do jobs that had to be given back after waiting behind long ones.
        let mut pace = Pace::default();
        pace.claimed(ms(1.0));
        pace.ran(ms(0.05));
        pace.stalled(ms(500.0));
        assert_eq!(pace.ahead(4, 16), 0);
        assert_eq!(pace.ahead(4, 0), 0, "a cap of 0 claims nothing ahead");
    }
}
