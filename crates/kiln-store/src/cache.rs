//! A read-through cache of finished jobs, so polling a finished job (the commonest read of
//! a job service) costs no parsing of its JSON again, and on SQLite not even a query.
//!
//! Only terminal jobs are cached: they change only when retried, deleted or pruned. It is
//! exact, never merely "fresh enough", by one of two means:
//! - **SQLite**: one process owns the file and its writer is the only one that changes
//!   jobs. The writer evicts after each commit and before any caller hears of it (see
//!   `sqlite::writer`), so a read that follows an answer always sees that answer's write. A
//!   read that raced a commit could still hold the row from before it; the epoch guards
//!   against that: every eviction bumps it, and a read stores what it found only if the
//!   epoch has not moved since the read began.
//! - **PostgreSQL**: another node may retry or delete a job at any time, so no node could
//!   evict in time. Each entry carries the row's `event_seq`, which every state change bumps
//!   in the same `UPDATE`; a read asks the database for the job's current `event_seq` (a
//!   narrow row, no JSON) and serves the cached job only when it is the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kiln_domain::{Job, JobId, RawJson};

use crate::model::JobStatus;

/// The bytes of payload and result the cache holds at most; past it, it starts over.
const BUDGET: usize = 32 * 1024 * 1024;

/// A job too large to cache: reading it again is cheap next to what it would displace.
const MAX_JOB_BYTES: usize = 256 * 1024;

/// One cached job, the length of its result's JSON text (0 without a result) and the
/// version it was read at (PostgreSQL's `event_seq`; 0 on SQLite, which needs none).
#[derive(Clone)]
pub(crate) struct Cached {
    pub job: Arc<Job<RawJson>>,
    pub result_len: usize,
    pub version: i64,
}

impl Cached {
    /// The light status of the cached job: the result inlined only when at most
    /// `inline_max` bytes.
    pub fn status(&self, inline_max: u32) -> JobStatus {
        let job = &self.job;
        let small = self.result_len <= usize::try_from(inline_max).unwrap_or(usize::MAX);
        JobStatus {
            id: job.id,
            state: job.state,
            progress: job.progress,
            updated_at: job.updated_at,
            error: job.error.clone(),
            result: if small { job.result.clone() } else { None },
            has_result: job.result.is_some(),
        }
    }
}

#[derive(Default)]
pub(crate) struct JobCache(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    epoch: u64,
    bytes: usize,
    jobs: HashMap<JobId, Cached>,
}

impl JobCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current epoch: take it before a read whose result may be stored.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    pub fn get(&self, id: JobId) -> Option<Cached> {
        self.lock().jobs.get(&id).cloned()
    }

    /// Stores `job`, read at `version`, if it is terminal, not too large, and nothing was
    /// evicted since `epoch` (it may be older than a commit otherwise). Returns what it
    /// stored.
    pub fn offer(&self, epoch: u64, version: i64, job: &Job<RawJson>) -> Option<Cached> {
        if !job.state.is_terminal() {
            return None;
        }
        let result_len = job.result.as_ref().map_or(0, |r| r.get().len());
        let bytes = result_len + job.payload.get().len();
        if bytes > MAX_JOB_BYTES {
            return None;
        }
        let cached = Cached {
            job: Arc::new(job.clone()),
            result_len,
            version,
        };
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return None;
        }
        if inner.bytes + bytes > BUDGET {
            inner.jobs.clear();
            inner.bytes = 0;
        }
        inner.bytes += bytes;
        inner.jobs.insert(job.id, cached.clone());
        Some(cached)
    }

    /// Forgets `ids` (all jobs with `all`) after a commit that changed them.
    pub fn evict(&self, ids: impl IntoIterator<Item = JobId>, all: bool) {
        let mut inner = self.lock();
        inner.epoch += 1;
        if all {
            inner.jobs.clear();
            inner.bytes = 0;
            return;
        }
        for id in ids {
            if let Some(gone) = inner.jobs.remove(&id) {
                let bytes = gone.result_len + gone.job.payload.get().len();
                inner.bytes = inner.bytes.saturating_sub(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kiln_domain::{JobState, NewJob, Role, UserId};
    use serde_json::json;

    use super::*;

    fn job(state: JobState) -> Job<RawJson> {
        let sub = kiln_domain::job::Submission {
            job_type: "echo".into(),
            payload: json!({"a": 1}),
            ..Default::default()
        };
        let catalogue = kiln_domain::job_type::Catalogue::default();
        let now = kiln_domain::clock::from_millis(0);
        let new = NewJob::parse(sub, UserId(1), Role::Admin, &catalogue, now).unwrap();
        let raw = |v: &serde_json::Value| serde_json::value::to_raw_value(v).unwrap();
        Job {
            state,
            result: Some(raw(&json!("done"))),
            ..new.into_job().map_json(|v| raw(&v))
        }
    }

    #[test]
    fn only_terminal_jobs_are_kept() {
        let cache = JobCache::default();
        let running = job(JobState::Running);
        assert!(cache.offer(cache.epoch(), 0, &running).is_none());
        assert!(cache.get(running.id).is_none());
        let done = job(JobState::Succeeded);
        let kept = cache.offer(cache.epoch(), 0, &done).unwrap();
        assert_eq!(kept.result_len, "\"done\"".len());
        assert_eq!(cache.get(done.id).unwrap().job.id, done.id);
    }

    #[test]
    fn a_read_that_raced_an_eviction_is_not_stored() {
        let cache = JobCache::default();
        let done = job(JobState::Dead);
        let before = cache.epoch();
        // A retry commits (and evicts) while the read of the old row is in flight.
        cache.evict([done.id], false);
        assert!(cache.offer(before, 0, &done).is_none());
        assert!(cache.get(done.id).is_none());
        assert!(cache.offer(cache.epoch(), 0, &done).is_some());
        cache.evict([done.id], false);
        assert!(cache.get(done.id).is_none());
    }

    #[test]
    fn evicting_all_forgets_everything() {
        let cache = JobCache::default();
        let (a, b) = (job(JobState::Succeeded), job(JobState::Cancelled));
        cache.offer(cache.epoch(), 0, &a).unwrap();
        cache.offer(cache.epoch(), 0, &b).unwrap();
        cache.evict([], true);
        assert!(cache.get(a.id).is_none() && cache.get(b.id).is_none());
    }
}
