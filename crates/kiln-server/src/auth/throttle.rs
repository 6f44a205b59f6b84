//! Login throttling: too many failed logins for one username within a window answer 429
//! before any password is hashed, so guessing is slow and cannot cause a hashing storm. In
//! memory and per node: a restart forgets, which only helps a legitimate user.
//!
//! An attempt counts from the moment it starts, before its password is hashed: parallel
//! guesses at one name get [`MAX_FAILURES`] tries between them, not one each. A success
//! clears the name. At most [`HASHING`]-many passwords are hashed at once (argon2 takes
//! 19 MiB and tens of milliseconds each, on the blocking pool that SQLite reads share); a
//! login that cannot start hashing within [`HASH_WAIT`] is refused as busy. What is kept
//! per name is bounded too: only well-formed usernames (64 characters at most) are
//! tracked, and at most [`MAX_TRACKED`] of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// Failed logins allowed per username per window.
pub const MAX_FAILURES: u32 = 10;
/// The window: five minutes, so at most ~2 guesses a minute per name on average.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Tracked names beyond which expired windows are swept.
const SWEEP_AT: usize = 10_000;
/// Most names tracked at once: past it (after a sweep) new names go untracked; hashing's
/// own limit already bounds how fast names can be tried.
pub const MAX_TRACKED: usize = 100_000;
/// How long a login waits for a hashing slot before it is refused as busy.
pub const HASH_WAIT: Duration = Duration::from_secs(5);

/// Passwords hashed at once: one per core.
fn hashing() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// What stops a login before its password is checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Too many attempts at this name: wait this many seconds.
    Throttled(u64),
    /// Every hashing slot stayed busy for [`HASH_WAIT`].
    Busy,
}

/// Attempt counters by username (a fixed window per name) and the hashing slots.
/// Hand-written rather than `governor`: one counter per name and a reset on success is all
/// it needs.
pub struct LoginThrottle {
    attempts: Mutex<HashMap<String, (u32, Instant)>>,
    hashing: Semaphore,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::with_hashing(hashing())
    }
}

impl LoginThrottle {
    /// A throttle that hashes at most `slots` passwords at once.
    pub fn with_hashing(slots: usize) -> Self {
        Self {
            attempts: Mutex::default(),
            hashing: Semaphore::new(slots.max(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        // Poisoned only if a thread panicked mid-update of a counter; still usable.
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an attempt at `username`, or refuses it while the name is locked out.
    pub fn begin(&self, username: &str) -> Result<(), Refused> {
        let mut map = self.lock();
        if let Some((count, since)) = map.get_mut(username) {
            if since.elapsed() >= WINDOW {
                (*count, *since) = (0, Instant::now());
            }
            if *count >= MAX_FAILURES {
                let left = WINDOW.saturating_sub(since.elapsed());
                return Err(Refused::Throttled(left.as_secs().max(1)));
            }
            *count += 1;
            return Ok(());
        }
        if map.len() >= SWEEP_AT {
            map.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        if map.len() < MAX_TRACKED {
            map.insert(username.to_owned(), (1, Instant::now()));
        }
        Ok(())
    }

    /// A slot to hash a password in, waiting up to [`HASH_WAIT`].
    pub async fn hashing_slot(&self) -> Result<SemaphorePermit<'_>, Refused> {
        match tokio::time::timeout(HASH_WAIT, self.hashing.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refused::Busy),
        }
    }

    /// A successful login clears the name's attempts.
    pub fn succeeded(&self, username: &str) {
        self.lock().remove(username);
    }

    /// Names tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_locked_after_too_many_attempts_until_a_success() {
        let t = LoginThrottle::default();
        for _ in 0..MAX_FAILURES {
            assert_eq!(t.begin("a"), Ok(()));
        }
        let Err(Refused::Throttled(wait)) = t.begin("a") else {
            panic!("the 11th attempt is refused");
        };
        assert!(wait > 0 && wait <= WINDOW.as_secs());
        assert_eq!(t.begin("b"), Ok(()), "other names are not affected");
        t.succeeded("a");
        assert_eq!(t.begin("a"), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_waits_for_a_hashing_slot_then_is_refused_as_busy() {
        let t = LoginThrottle::with_hashing(1);
        let held = t.hashing_slot().await.unwrap();
        assert!(matches!(t.hashing_slot().await, Err(Refused::Busy)));
        drop(held);
        assert!(t.hashing_slot().await.is_ok());
    }
}
