//! A fair share of this node's slots between clients: no client's jobs hold more than
//! [`WorkerConfig::owner_slots`](crate::WorkerConfig::owner_slots) of them, so one client
//! with a flood of long jobs leaves slots for everyone else's. Operators' and admins' jobs
//! are not counted (they run the service). An admin may set another share for one user
//! (`slot_share` in their limits), which holds for operators and admins too. The share is
//! strict: a client at it waits even while other slots are idle, so a job that arrives
//! later always finds a slot within the share of the others.
//!
//! The node knows the owners of the attempts it runs; a claim skips the jobs of owners at
//! their share, and takes no more jobs at once than would lift the default share or any
//! running owner past theirs (an owner with a smaller share of their own who runs nothing
//! yet may get that many more slots from one claim, and no more after it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_domain::{JobId, Role, UserId};

use crate::Shared;

/// How long an owner's role and share are trusted before they are read again (a change is
/// signalled and forgotten at once; this bounds what a missed signal keeps).
const ROLE_TTL: Duration = Duration::from_secs(60);

/// What the share and the storage quota need to know of an owner.
#[derive(Debug, Clone, Copy)]
struct Owner {
    role: Role,
    /// A share an admin set for them.
    share: Option<f64>,
    /// A storage quota an admin set for them (`Some(0)`: none).
    storage: Option<u64>,
}

/// Owners' roles and shares, read from the store on first sight.
#[derive(Default)]
pub(crate) struct Roles(Mutex<HashMap<UserId, (Owner, Instant)>>);

impl Roles {
    fn get(&self, owner: UserId) -> Option<Owner> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&owner)
            .filter(|(_, at)| at.elapsed() < ROLE_TTL)
            .map(|(known, _)| *known)
    }

    /// Forgets `owner` (`None`: everyone): read again at the next claim.
    pub(crate) fn forget(&self, owner: Option<UserId>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match owner {
            Some(owner) => {
                map.remove(&owner);
            }
            None => map.clear(),
        }
    }

    fn put(&self, owner: UserId, role: Owner) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Owners of jobs that ran here long ago: a bounded map.
        if map.len() >= 10_000 {
            map.retain(|_, (_, at)| at.elapsed() < ROLE_TTL);
        }
        map.insert(owner, (role, Instant::now()));
    }
}

/// What the next claim may take under the share.
#[derive(Debug)]
pub(crate) struct Share {
    /// Clients holding their share: their jobs are skipped.
    pub exclude: Vec<UserId>,
    /// The most jobs one claim may take (any of them may be one client's).
    pub limit: usize,
    /// Owners of held jobs whom the share does not hold back (operators, admins): a claim
    /// bounded per owner ([`kiln_store::ClaimRequest::per_owner`]) may take any number of
    /// theirs.
    pub uncapped: Vec<UserId>,
}

impl Shared {
    /// The share for the next claim; `handing_over`: an attempt whose slot the claim fills
    /// (not counted).
    pub(crate) async fn share(&self, handing_over: Option<JobId>) -> Share {
        let mut counts: HashMap<UserId, usize> = HashMap::new();
        for (id, running) in self.running().iter() {
            if Some(*id) != handing_over {
                *counts.entry(running.owner).or_default() += 1;
            }
        }
        let mut exclude = Vec::new();
        let mut uncapped = Vec::new();
        let mut limit = self.config.owner_slots.unwrap_or(usize::MAX);
        for (owner, n) in counts {
            let Some(cap) = self.cap_of(owner).await else {
                uncapped.push(owner);
                continue;
            };
            if n >= cap {
                exclude.push(owner);
            } else {
                limit = limit.min(cap - n);
            }
        }
        // One order, so equal requests compare equal (PostgreSQL batches those).
        exclude.sort_unstable();
        uncapped.sort_unstable();
        Share {
            exclude,
            limit,
            uncapped,
        }
    }

    /// The owner's role and own limits, cached (`None`: they cannot be read now).
    async fn owner(&self, owner: UserId) -> Option<Owner> {
        if let Some(known) = self.roles.get(owner) {
            return Some(known);
        }
        match self.read_owner(owner).await {
            Ok(known) => {
                self.roles.put(owner, known);
                Some(known)
            }
            Err(e) => {
                tracing::debug!(owner = owner.0, error = %e, "cannot read a job owner's limits");
                None
            }
        }
    }

    /// The bytes `owner` may keep in files and artifacts (`None`: no limit).
    pub(crate) async fn storage_quota_of(&self, owner: UserId) -> Option<u64> {
        match self.owner(owner).await.and_then(|o| o.storage) {
            Some(0) => None,
            Some(quota) => Some(quota),
            None => self.config.storage_quota,
        }
    }

    /// The most slots `owner`'s jobs may hold here (`None`: any).
    async fn cap_of(&self, owner: UserId) -> Option<usize> {
        // Unknown: the default share applies (the safe side), and the next claim asks again.
        let Some(known) = self.owner(owner).await else {
            return self.config.owner_slots;
        };
        let max = self.config.max_concurrency;
        match known.share {
            Some(share) => {
                let slots = ((share * max as f64).floor() as usize).max(1);
                (slots < max).then_some(slots)
            }
            None if known.role == Role::Client => self.config.owner_slots,
            None => None,
        }
    }

    async fn read_owner(&self, owner: UserId) -> Result<Owner, kiln_store::StoreError> {
        let role = self.store.user_get(owner).await?.role;
        let limits = self.store.user_limits(owner).await?;
        Ok(Owner {
            role,
            share: limits.slot_share,
            storage: limits.storage,
        })
    }
}
