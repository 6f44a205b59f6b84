//! Nodes whose clocks disagree, on one real PostgreSQL database: a lease is judged by the
//! database server's clock, so a node whose clock runs an hour ahead never rescues a live
//! attempt early, and a node whose clock lags an hour still rescues a dead node's attempt.
//!
//! Skipped loudly without PostgreSQL (a failure with `KILN_REQUIRE_POSTGRES=1`).

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use kiln_domain::job::Submission;
use kiln_domain::job_type::Catalogue;
use kiln_domain::{Clock, Job, JobId, JobState, ManualClock, NewJob, Role, SystemClock, UserId};
use kiln_kernels::Registry;
use kiln_store::{ClaimRequest, InsertOptions, NewUser, Store};
use kiln_testkit::pg::TempPostgres;
use kiln_testkit::wait::wait_until;
use kiln_worker::{Worker, WorkerConfig, WorkerHandle};
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(2);

/// A worker named `node` on its own connection pool, whose clock reads the real time
/// moved by `skew` (and stands still there), looking for expired leases every `rescue`.
async fn node(
    db: &TempPostgres,
    node: &str,
    skew: TimeDelta,
    rescue: Duration,
) -> (Arc<dyn Store>, WorkerHandle) {
    let store: Arc<dyn Store> = db.store().await;
    let clock = Arc::new(ManualClock::new(SystemClock.now() + skew));
    let config = WorkerConfig {
        node_id: node.into(),
        lease_duration: LEASE,
        heartbeat_interval: Duration::from_millis(200),
        rescue_interval: rescue,
        max_concurrency: 1,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(
        config,
        Arc::clone(&store),
        Registry::default(),
        Arc::new(Catalogue::default()),
        clock,
    )
    .start()
    .await
    .unwrap();
    (store, worker)
}

async fn submit(store: &Arc<dyn Store>, owner: UserId, payload: serde_json::Value) -> JobId {
    let sub = Submission {
        job_type: "sleep".into(),
        payload,
        ..Submission::default()
    };
    let job = NewJob::parse(
        sub,
        owner,
        Role::Admin,
        &Catalogue::default(),
        SystemClock.now(),
    )
    .unwrap();
    let id = job.id;
    store
        .job_insert(job, InsertOptions::default())
        .await
        .unwrap();
    id
}

/// A job claimed by a node that then died: its lease (zero long) has already expired by
/// the database's clock.
async fn ghost(store: &Arc<dyn Store>, owner: UserId) -> Job {
    let id = submit(store, owner, json!({"ms": 1})).await;
    let mut claimed = store
        .job_claim(&ClaimRequest {
            node: "ghost".into(),
            types: vec!["sleep".into()],
            exclude_queues: Vec::new(),
            exclude_owners: Vec::new(),
            limit: 1,
            now: SystemClock.now(),
            lease: Duration::ZERO,
            per_owner: None,
            per_owner_exempt: Vec::new(),
        })
        .await
        .unwrap();
    let job = claimed.pop().expect("the ghost claims a job");
    assert_eq!(job.id, id);
    job
}

async fn wait_rescued(store: &Arc<dyn Store>, id: JobId) {
    wait_until("the ghost's attempt to be rescued", LONG, || async {
        let events = store.event_list(None, id).await.unwrap();
        let rescued = events
            .iter()
            .any(|e| e.state == JobState::Failed && e.attempt == 1);
        if rescued { Ok(()) } else { Err(events) }
    })
    .await;
}

/// The live job still runs its first attempt on `node-a`, never failed.
async fn untouched(store: &Arc<dyn Store>, id: JobId) {
    let job = store.job_get(None, id).await.unwrap();
    assert_eq!(
        (job.state, job.attempts, job.node.as_deref()),
        (JobState::Running, 1, Some("node-a")),
        "{job:?}"
    );
    let events = store.event_list(None, id).await.unwrap();
    assert!(
        events.iter().all(|e| e.state != JobState::Failed),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_judged_by_the_database_clock_whatever_the_nodes_clocks_say() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    let setup: Arc<dyn Store> = db.store().await;
    let owner = setup
        .user_insert(
            NewUser {
                username: "ada".into(),
                password_hash: "x".into(),
                role: Role::Admin,
            },
            SystemClock.now(),
        )
        .await
        .unwrap()
        .id;
    // Node A (a true clock, one slot) runs a long job under a 2 s lease, renewed every
    // 200 ms. It looks for expired leases only as it starts, so every rescue below is B's
    // or C's.
    let hour = Duration::from_secs(3600);
    let (store_a, a) = node(&db, "node-a", TimeDelta::zero(), hour).await;
    let often = Duration::from_millis(100);
    let live = submit(&store_a, owner, json!({"ms": 600_000})).await;
    wait_until("the live job to run on node A", LONG, || async {
        let job = store_a.job_get(None, live).await.unwrap();
        if job.state == JobState::Running {
            Ok(())
        } else {
            Err(job.state)
        }
    })
    .await;

    // Node B's clock is an hour ahead: by it, node A's lease expired long ago. Its rescue
    // pass finds the dead node's attempt (proof that the pass ran) and leaves A's alone.
    // (The dead node claims before B starts, or B would run the job first.)
    let first = ghost(&setup, owner).await;
    let (store_b, b) = node(&db, "node-b", TimeDelta::hours(1), often).await;
    wait_rescued(&store_b, first.id).await;
    untouched(&store_b, live).await;
    b.shutdown(Duration::from_secs(1)).await;

    // Node C's clock is an hour behind: by it, the dead node's lease has an hour to run.
    // It rescues it all the same, and still leaves A's alone.
    let second = ghost(&setup, owner).await;
    let (store_c, c) = node(&db, "node-c", TimeDelta::hours(-1), often).await;
    wait_rescued(&store_c, second.id).await;
    untouched(&store_c, live).await;

    // Renewals by A's heartbeat have kept its lease in the database's future throughout.
    let job = store_c.job_get(None, live).await.unwrap();
    let expires = job.lease_expires_at.unwrap();
    assert!(expires > SystemClock.now(), "{expires}");
    c.shutdown(Duration::from_secs(1)).await;
    a.shutdown(Duration::from_secs(1)).await;
}
