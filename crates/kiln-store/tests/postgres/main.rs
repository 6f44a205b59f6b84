//! The PostgreSQL backend against a real server: each test gets its own database
//! ([`TempPostgres`]), dropped afterwards. Without a server the tests print `SKIPPED` and
//! pass, unless `KILN_REQUIRE_POSTGRES=1`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::cmp::Reverse;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use kiln_domain::clock::from_millis;
use kiln_domain::{
    Failure, JobId, JobState, Lease, NewJob, Priority, Role, Step, Timestamp, UserId,
};
use kiln_store::postgres::{PgOptions, PgStore};
use kiln_store::{
    ClaimRequest, Cursor, FeedEvent, Idempotency, InsertOptions, Inserted, LeaseFilter, ListQuery,
    NewToken, NewUser, Outcome, Signal, Sort, Store, StoreError, TokenKind, UserPatch,
};
use kiln_testkit::TempPostgres;
use kiln_testkit::factory::new_job;
use serde_json::json;

/// A fixed start so tests never depend on the wall clock.
fn t0() -> Timestamp {
    from_millis(1_700_000_000_000)
}

fn at(ms: i64) -> Timestamp {
    t0() + TimeDelta::milliseconds(ms)
}

/// A fresh database, a store on it and one user; `None` when PostgreSQL is absent.
async fn setup() -> Option<(TempPostgres, Arc<PgStore>, UserId)> {
    let db = TempPostgres::create().await?;
    let store = db.store().await;
    let owner = add_user(&*store, "ada").await;
    Some((db, store, owner))
}

async fn add_user(store: &dyn Store, name: &str) -> UserId {
    store
        .user_insert(
            NewUser {
                username: name.into(),
                password_hash: "hash".into(),
                role: Role::Client,
            },
            t0(),
        )
        .await
        .unwrap()
        .id
}

fn job(owner: UserId, now: Timestamp) -> NewJob {
    new_job(owner, "echo", json!({"n": 1}), now)
}

async fn insert(store: &dyn Store, job: NewJob) -> kiln_domain::Job {
    match store
        .job_insert(job, InsertOptions::default())
        .await
        .unwrap()
    {
        Inserted::Created(job) => job,
        Inserted::Existing(job) => panic!("unexpected existing job {}", job.id),
    }
}

fn claim_req(node: &str, limit: u32, now: Timestamp) -> ClaimRequest {
    ClaimRequest {
        node: node.into(),
        types: vec!["echo".into(), "sleep".into()],
        exclude_queues: vec![],
        limit,
        now,
        lease_until: now + TimeDelta::seconds(30),
    }
}

fn lease_of(job: &kiln_domain::Job) -> Lease {
    Lease {
        job_id: job.id,
        attempt: job.attempts,
        node: job.node.clone().unwrap(),
    }
}

mod client;
mod ops;
mod tls;
mod worker;

fn keyed(key: &str, hash: u8) -> InsertOptions {
    InsertOptions {
        idempotency: Some(Idempotency {
            key: key.into(),
            request_hash: vec![hash; 32],
        }),
        max_queued: None,
    }
}

async fn store_count(store: &dyn Store, state: JobState) -> u64 {
    let stats = store.job_stats().await.unwrap();
    stats.by_state.iter().find(|(s, _)| *s == state).unwrap().1
}

async fn wait_for(rx: &mut tokio::sync::broadcast::Receiver<Signal>, want: Signal) {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Ok(got) if got == want => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("signal channel closed: {e}"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {want:?} within 5 s");
}

/// Claims the one best job for `node` (there must be one).
async fn claim_one(store: &dyn Store, node: &str, now: Timestamp) -> kiln_domain::Job {
    store
        .job_claim(&claim_req(node, 1, now))
        .await
        .unwrap()
        .remove(0)
}

async fn finish(store: &dyn Store, node: &str, now: Timestamp) -> kiln_domain::Job {
    let job = claim_one(store, node, now).await;
    store
        .job_complete(&lease_of(&job), Outcome::Succeeded(json!(null)), now)
        .await
        .unwrap()
}
