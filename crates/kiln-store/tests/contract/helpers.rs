//! One-line fixtures: fixed instants, users, jobs, claim requests, leases.

use std::sync::Arc;

use kiln_domain::clock::from_millis;
use kiln_domain::job::Submission;
use kiln_domain::job_type::Catalogue;
use kiln_domain::{Job, JobId, Lease, NewJob, RawJson, Role, Timestamp, UserId};
use kiln_store::{
    ClaimRequest, FeedEvent, InsertOptions, Inserted, NewUser, Signal, Store, StoreError,
};
use serde_json::{Value, json};

/// Bytes of log every backend under test keeps per job.
pub const LOG_LIMIT: usize = 1024;

/// 2026-01-01T00:00:00Z in ms: the suite's epoch.
const T0_MS: i64 = 1_767_225_600_000;

/// The suite's epoch plus `ms` milliseconds.
pub fn at(ms: i64) -> Timestamp {
    from_millis(T0_MS + ms)
}

/// A user named `name` (role admin), created at `at(0)`.
pub async fn user(store: &Arc<dyn Store>, name: &str) -> UserId {
    store
        .user_insert(
            NewUser {
                username: name.to_owned(),
                password_hash: format!("$argon2id$fake${name}"),
                role: Role::Admin,
            },
            at(0),
        )
        .await
        .expect("insert a user")
        .id
}

/// A submission of `job_type` with a payload valid for it.
pub fn sub(job_type: &str) -> Submission {
    let payload = match job_type {
        "sleep" => json!({"ms": 1}),
        "external" => json!({"name": "outside"}),
        _ => json!({"x": 1}),
    };
    Submission {
        job_type: job_type.to_owned(),
        payload,
        ..Submission::default()
    }
}

/// A validated job from `sub`, by `owner`, submitted at `now`.
pub fn new_job(sub: Submission, owner: UserId, now: Timestamp) -> NewJob {
    NewJob::parse(sub, owner, Role::Admin, &Catalogue::default(), now).expect("a valid test job")
}

/// Inserts `sub` by `owner` at `now` and returns the created job.
pub async fn insert(store: &Arc<dyn Store>, owner: UserId, sub: Submission, now: Timestamp) -> Job {
    match store
        .job_insert(new_job(sub, owner, now), InsertOptions::default())
        .await
        .expect("insert a job")
    {
        Inserted::Created(job) => job,
        Inserted::Existing(job) => panic!("a fresh job came back as existing: {job:?}"),
    }
}

/// Inserts an `echo` job by `owner` at `now`.
pub async fn echo(store: &Arc<dyn Store>, owner: UserId, now: Timestamp) -> Job {
    insert(store, owner, sub("echo"), now).await
}

/// A claim of up to `limit` jobs of the built-in types by `node` at `now`, lease 30 s.
pub fn claim_req(node: &str, limit: u32, now: Timestamp) -> ClaimRequest {
    ClaimRequest {
        node: node.to_owned(),
        types: vec!["echo".to_owned(), "sleep".to_owned()],
        exclude_queues: Vec::new(),
        exclude_owners: Vec::new(),
        limit,
        now,
        lease: std::time::Duration::from_secs(30),
        per_owner: None,
        per_owner_exempt: Vec::new(),
    }
}

/// Claims exactly one job (the next claimable) for `node` at `now`.
pub async fn claim_one(store: &Arc<dyn Store>, node: &str, now: Timestamp) -> Job {
    let mut claimed = store
        .job_claim(&claim_req(node, 1, now))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "expected one claimable job: {claimed:?}");
    claimed.remove(0)
}

/// The lease a claimed job is held under.
pub fn lease_of(job: &Job) -> Lease {
    Lease {
        job_id: job.id,
        attempt: job.attempts,
        node: job.node.clone().expect("a running job has a node"),
    }
}

/// The job as stored now (operator view).
pub async fn get(store: &Arc<dyn Store>, id: JobId) -> Job {
    store.job_get(None, id).await.expect("get the job")
}

/// Event `seq` of `job` as the feed shows it, `job` being as that event left it.
pub fn feed_event(job: &Job, seq: i64) -> FeedEvent {
    FeedEvent {
        job_id: job.id,
        owner: job.owner,
        job_type: job.job_type,
        queue: job.queue.clone(),
        seq,
        state: job.state,
        attempt: job.attempts,
        at: job.updated_at,
    }
}

/// The `Changed` signal of [`feed_event`]`(job, seq)`.
pub fn changed(job: &Job, seq: i64) -> Signal {
    Signal::Changed(Arc::new(feed_event(job, seq)))
}

/// Asserts `result` failed with `NotFound`.
#[track_caller]
pub fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    match result {
        Err(StoreError::NotFound) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// Asserts `result` failed with `Conflict`.
#[track_caller]
pub fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    match result {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("expected Conflict, got {other:?}"),
    }
}

/// Asserts `result` failed with `Illegal`.
#[track_caller]
pub fn assert_illegal<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    match result {
        Err(StoreError::Illegal(_)) => {}
        other => panic!("expected Illegal, got {other:?}"),
    }
}

/// Asserts `result` failed with `LeaseLost`.
#[track_caller]
pub fn assert_lease_lost<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    match result {
        Err(StoreError::LeaseLost) => {}
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

/// A JSON value for results.
pub fn result_value() -> Value {
    json!({"answer": 42})
}

/// A job read as stored text, with its payload and result parsed for comparison.
pub fn tree(job: Job<RawJson>) -> Job {
    job.map_json(|raw| serde_json::from_str(raw.get()).expect("stored JSON"))
}

/// Stored JSON text, parsed for comparison.
pub fn parsed(raw: Option<RawJson>) -> Option<Value> {
    raw.map(|raw| serde_json::from_str(raw.get()).expect("stored JSON"))
}
