//! What only PostgreSQL has, against a real server: migrations run once by nodes starting
//! together, `LISTEN/NOTIFY` between nodes and its reconnect, caps and claims raced by two
//! nodes, the poll-only mode, upgrades of old rows, TLS. Everything a backend must do is in
//! the contract suite (`tests/contract`), which runs on PostgreSQL too. Each test gets its
//! own database ([`TempPostgres`]), dropped afterwards. Without a server the tests print
//! `SKIPPED` and pass, unless `KILN_REQUIRE_POSTGRES=1`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use kiln_domain::clock::from_millis;
use kiln_domain::{JobState, Lease, NewJob, Role, Step, Timestamp, UserId};
use kiln_store::postgres::{PgOptions, PgStore};
use kiln_store::{
    ClaimRequest, FeedEvent, InsertOptions, Inserted, NewUser, Outcome, Signal, Store, StoreError,
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
        exclude_owners: Vec::new(),
        limit,
        now,
        lease: std::time::Duration::from_secs(30),
        per_owner: None,
        per_owner_exempt: Vec::new(),
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
mod coalesced;
mod counts;
mod ops;
mod peers;
mod seed;
mod tls;
mod worker;

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
