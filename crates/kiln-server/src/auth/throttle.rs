//! Login throttling: too many failed logins for one username within a window
//! answer 429 before any password is hashed, so guessing is slow and cannot cause a hashing
//! storm. In memory and per node: a restart forgets, which only helps a legitimate user.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins allowed per username per window.
pub const MAX_FAILURES: u32 = 10;
/// The window: five minutes, so at most ~2 guesses a minute per name on average.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Tracked names beyond which expired windows are swept (bounds memory under a name spray).
const SWEEP_AT: usize = 10_000;

/// Failed-login counters by username (a fixed window per name). Hand-written rather than
/// `governor`: one counter per name and a reset on success is all it needs.
#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        // Poisoned only if a thread panicked mid-update of a counter; still usable.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(seconds to wait)` while `username` is locked out.
    pub fn check(&self, username: &str) -> Option<u64> {
        let map = self.lock();
        let (count, since) = map.get(username)?;
        let left = WINDOW.checked_sub(since.elapsed())?;
        (*count >= MAX_FAILURES).then(|| left.as_secs().max(1))
    }

    /// Records a failed login.
    pub fn failed(&self, username: &str) {
        let mut map = self.lock();
        if map.len() >= SWEEP_AT {
            map.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        let entry = map
            .entry(username.to_owned())
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    /// A successful login clears the name's failures.
    pub fn succeeded(&self, username: &str) {
        self.lock().remove(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_locked_after_too_many_failures_until_a_success() {
        let t = LoginThrottle::default();
        for _ in 0..MAX_FAILURES - 1 {
            t.failed("a");
        }
        assert_eq!(t.check("a"), None);
        t.failed("a");
        assert!(t.check("a").is_some_and(|s| s > 0 && s <= WINDOW.as_secs()));
        assert_eq!(t.check("b"), None, "other names are not affected");
        t.succeeded("a");
        assert_eq!(t.check("a"), None);
    }
}
