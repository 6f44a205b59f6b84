//! Login throttling: too many failed logins for one username, or from one client address,
//! answer 429 before any password is hashed, so guessing is slow and cannot cause a hashing
//! storm. In memory and per node: a restart forgets, which only helps a legitimate user.
//!
//! Each name and each address has a failure count. Past its allowance ([`NAME_FAILURES`],
//! [`ADDRESS_FAILURES`]) it is locked out for [`BACKOFF_BASE`], doubling with every further
//! failure up to [`BACKOFF_MAX`]; a count left alone for [`FORGET_AFTER`] is forgotten. An
//! attempt counts from the moment it starts, before its password is hashed: parallel
//! guesses get the allowance between them, not each. A success clears the name and the
//! address. The lockout only stops password logins: the user's sessions and API tokens keep
//! working, and an admin can lift it (`POST /api/v1/admin/users/{id}/unlock`).
//!
//! At most [`hashing`]-many passwords are hashed at once (argon2 takes 19 MiB and tens of
//! milliseconds each, on the blocking pool that SQLite reads share); a login that cannot
//! start hashing within [`HASH_WAIT`] is refused as busy. What is kept is bounded too: only
//! well-formed usernames (64 characters at most) are tracked, and at most [`MAX_TRACKED`]
//! names and as many addresses.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// Failed logins allowed per username before it is locked out.
pub const NAME_FAILURES: u32 = 10;
/// Failed logins allowed per client address (any names) before it is locked out: higher,
/// since many users may share an address behind a proxy or NAT.
pub const ADDRESS_FAILURES: u32 = 30;
/// The first lockout; each further failure doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_secs(30);
/// The longest lockout.
pub const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
/// A count with no attempt for this long (and no lockout running) starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Tracked entries beyond which forgotten ones are swept.
const SWEEP_AT: usize = 10_000;
/// Most names (and most addresses) tracked at once: past it (after a sweep) new ones go
/// untracked; hashing's own limit already bounds how fast they can be tried.
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
    /// Too many failures for this name: wait this many seconds.
    Throttled(u64),
    /// Too many failures from this address: wait this many seconds.
    AddressThrottled(u64),
    /// Every hashing slot stayed busy for [`HASH_WAIT`].
    Busy,
}

/// One name's or address's record.
#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failure counts by key, with exponential lockouts past `allowance`.
struct Counts<K> {
    map: HashMap<K, Count>,
    allowance: u32,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(allowance: u32) -> Self {
        Self {
            map: HashMap::new(),
            allowance,
        }
    }

    /// Seconds left of `key`'s lockout, if one is running.
    fn locked(&mut self, key: &K, now: Instant) -> Option<u64> {
        let count = self.map.get_mut(key)?;
        match count.locked_until {
            Some(until) if until > now => Some((until - now).as_secs().max(1)),
            _ => {
                if now.duration_since(count.last) >= FORGET_AFTER {
                    self.map.remove(key);
                }
                None
            }
        }
    }

    /// Counts an attempt at `key`; from the allowance on, the next attempts wait.
    fn count(&mut self, key: &K, now: Instant) {
        if !self.map.contains_key(key) {
            if self.map.len() >= SWEEP_AT {
                self.map.retain(|_, c| {
                    c.locked_until.is_some_and(|u| u > now)
                        || now.duration_since(c.last) < FORGET_AFTER
                });
            }
            if self.map.len() >= MAX_TRACKED {
                return;
            }
            let fresh = Count {
                failures: 0,
                last: now,
                locked_until: None,
            };
            self.map.insert(key.clone(), fresh);
        }
        if let Some(count) = self.map.get_mut(key) {
            count.failures = count.failures.saturating_add(1);
            count.last = now;
            if count.failures >= self.allowance {
                let doublings = (count.failures - self.allowance).min(16);
                let wait = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX);
                count.locked_until = Some(now + wait);
            }
        }
    }
}

/// Attempt counters by username and by client address, and the hashing slots.
/// Hand-written rather than `governor`: a failure count, a lockout that doubles and a
/// reset on success is all it needs.
pub struct LoginThrottle {
    counts: Mutex<(Counts<String>, Counts<IpAddr>)>,
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
            counts: Mutex::new((Counts::new(NAME_FAILURES), Counts::new(ADDRESS_FAILURES))),
            hashing: Semaphore::new(slots.max(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Counts<String>, Counts<IpAddr>)> {
        // Poisoned only if a thread panicked mid-update of a counter; still usable.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an attempt at `username` from `address` (if known), or refuses it while
    /// either is locked out.
    pub fn begin(&self, username: &str, address: Option<IpAddr>) -> Result<(), Refused> {
        let now = Instant::now();
        let mut guard = self.lock();
        let (names, addresses) = &mut *guard;
        if let Some(address) = address
            && let Some(wait) = addresses.locked(&address, now)
        {
            return Err(Refused::AddressThrottled(wait));
        }
        let name = username.to_owned();
        if let Some(wait) = names.locked(&name, now) {
            return Err(Refused::Throttled(wait));
        }
        names.count(&name, now);
        if let Some(address) = address {
            addresses.count(&address, now);
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

    /// A successful login clears the name's and the address's failures.
    pub fn succeeded(&self, username: &str, address: Option<IpAddr>) {
        let mut guard = self.lock();
        guard.0.map.remove(username);
        if let Some(address) = address {
            guard.1.map.remove(&address);
        }
    }

    /// Lifts `username`'s lockout and forgets its failures (an admin's unlock).
    pub fn unlock(&self, username: &str) {
        self.lock().0.map.remove(username);
    }

    /// Names tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().0.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn a_name_is_locked_after_its_allowance_with_a_doubling_wait_until_a_success() {
        let t = LoginThrottle::default();
        for i in 0..NAME_FAILURES {
            // A different address each time: the name's own count locks it.
            let from = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i as u8)));
            assert_eq!(t.begin("a", from), Ok(()));
        }
        let Err(Refused::Throttled(wait)) = t.begin("a", HOME) else {
            panic!("the attempt past the allowance is refused");
        };
        assert!(wait > 0 && wait <= BACKOFF_BASE.as_secs(), "{wait}");
        assert_eq!(t.begin("b", HOME), Ok(()), "other names are not affected");
        t.succeeded("a", HOME);
        assert_eq!(t.begin("a", HOME), Ok(()));
    }

    #[test]
    fn each_failure_past_the_allowance_doubles_the_wait_up_to_the_cap() {
        let mut counts = Counts::new(3);
        let now = Instant::now();
        let key = "k".to_owned();
        let mut waits = Vec::new();
        for _ in 0..12 {
            counts.count(&key, now);
            waits.push(counts.locked(&key, now).unwrap_or(0));
        }
        assert_eq!(waits[..2], [0, 0]);
        assert_eq!(waits[2..7], [30, 60, 120, 240, 480]);
        assert!(
            waits[7..].iter().all(|&w| w == BACKOFF_MAX.as_secs()),
            "{waits:?}"
        );
        // Once the lockout is over and nothing happened for a while, the count is forgotten.
        let later = now + BACKOFF_MAX + FORGET_AFTER;
        assert_eq!(counts.locked(&key, later), None);
        assert!(counts.map.is_empty());
    }

    #[test]
    fn an_address_trying_many_names_is_locked_out_of_all_of_them() {
        let t = LoginThrottle::default();
        for i in 0..ADDRESS_FAILURES {
            assert_eq!(t.begin(&format!("user{i}"), HOME), Ok(()));
        }
        assert!(matches!(
            t.begin("someone", HOME),
            Err(Refused::AddressThrottled(_))
        ));
        let elsewhere = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            t.begin("someone", elsewhere),
            Ok(()),
            "other addresses go on"
        );
    }

    #[test]
    fn an_unlock_lifts_a_name_s_lockout() {
        let t = LoginThrottle::default();
        for _ in 0..NAME_FAILURES {
            let _ = t.begin("admin", None);
        }
        assert!(t.begin("admin", None).is_err());
        t.unlock("admin");
        assert_eq!(t.begin("admin", None), Ok(()));
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
