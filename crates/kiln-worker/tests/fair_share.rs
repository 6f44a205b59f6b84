//! The fair share of a node's slots between clients, against a real SQLite store.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::sync::Arc;
use std::time::Duration;

use kiln_domain::job::Submission;
use kiln_domain::job_type::Catalogue;
use kiln_domain::{Clock, JobId, JobState, NewJob, Role, SystemClock, UserId};
use kiln_kernels::Registry;
use kiln_store::{InsertOptions, ListQuery, NewUser, Store};
use kiln_testkit::db::TempSqlite;
use kiln_testkit::wait::wait_until;
use kiln_worker::{Worker, WorkerConfig, WorkerHandle};
use serde_json::json;

const LONG: Duration = Duration::from_secs(10);
const HOUR_MS: u64 = 3_600_000;

struct Node {
    _db: TempSqlite,
    store: Arc<dyn Store>,
    catalogue: Arc<Catalogue>,
    worker: WorkerHandle,
}

/// A node with two slots, of which one client's jobs may hold one.
async fn node() -> Node {
    let db = TempSqlite::new();
    let store: Arc<dyn Store> = db.store.clone();
    let catalogue = Arc::new(Catalogue::default());
    let config = WorkerConfig {
        node_id: "node-a".into(),
        max_concurrency: 2,
        owner_slots: Some(1),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(
        config,
        Arc::clone(&store),
        Registry::default(),
        Arc::clone(&catalogue),
        Arc::new(SystemClock),
    )
    .start()
    .await
    .unwrap();
    Node {
        _db: db,
        store,
        catalogue,
        worker,
    }
}

impl Node {
    async fn user(&self, name: &str, role: Role) -> (UserId, Role) {
        let user = NewUser {
            username: name.into(),
            password_hash: "x".into(),
            role,
        };
        let id = self.store.user_insert(user, SystemClock.now()).await;
        (id.unwrap().id, role)
    }

    async fn submit(&self, (owner, role): (UserId, Role), job_type: &str, ms: u64) -> JobId {
        let sub = Submission {
            job_type: job_type.into(),
            payload: json!({"ms": ms}),
            ..Submission::default()
        };
        let job = NewJob::parse(sub, owner, role, &self.catalogue, SystemClock.now()).unwrap();
        let id = job.id;
        let opts = InsertOptions::default();
        self.store.job_insert(job, opts).await.unwrap();
        id
    }

    /// How many of `owner`'s jobs are running.
    async fn running_of(&self, (owner, _): (UserId, Role)) -> usize {
        let query = ListQuery {
            owner: Some(owner),
            states: vec![JobState::Running],
            limit: 100,
            ..ListQuery::default()
        };
        self.store.job_list(&query).await.unwrap().items.len()
    }

    async fn wait_state(&self, id: JobId, state: JobState) {
        wait_until(&format!("job {id} to be {state}"), LONG, || async {
            let job = self.store.job_get(None, id).await.unwrap();
            if job.state == state {
                Ok(())
            } else {
                Err(job.state)
            }
        })
        .await;
    }

    async fn stop(self, jobs: &[JobId]) {
        for id in jobs {
            self.store
                .job_cancel(None, *id, SystemClock.now())
                .await
                .unwrap();
        }
        self.worker.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_client_with_a_flood_of_long_jobs_leaves_a_slot_for_another() {
    let node = node().await;
    let flooder = node.user("flooder", Role::Client).await;
    let other = node.user("other", Role::Client).await;
    let mut flood = Vec::new();
    for _ in 0..3 {
        flood.push(node.submit(flooder, "sleep", HOUR_MS).await);
    }
    node.wait_state(flood[0], JobState::Running).await;
    // The other client's job starts although the flooder has jobs waiting before it; the
    // flooder keeps one slot of two.
    let quick = node.submit(other, "echo", 0).await;
    node.wait_state(quick, JobState::Succeeded).await;
    let late = node.submit(other, "sleep", HOUR_MS).await;
    node.wait_state(late, JobState::Running).await;
    assert_eq!(node.running_of(flooder).await, 1);
    flood.push(late);
    node.stop(&flood).await;
}

#[tokio::test]
async fn operators_and_admins_are_not_held_to_the_share() {
    let node = node().await;
    let admin = node.user("root", Role::Admin).await;
    let jobs = [
        node.submit(admin, "sleep", HOUR_MS).await,
        node.submit(admin, "sleep", HOUR_MS).await,
    ];
    for id in jobs {
        node.wait_state(id, JobState::Running).await;
    }
    assert_eq!(node.running_of(admin).await, 2);
    node.stop(&jobs).await;
}

#[tokio::test]
async fn a_share_set_for_one_user_holds_even_for_an_admin() {
    let node = node().await;
    let admin = node.user("root", Role::Admin).await;
    let limits = kiln_store::UserLimits {
        slot_share: Some(0.5),
        ..kiln_store::UserLimits::default()
    };
    node.store.user_limits_set(admin.0, limits).await.unwrap();
    let other = node.user("other", Role::Client).await;
    let mut jobs = vec![
        node.submit(admin, "sleep", HOUR_MS).await,
        node.submit(admin, "sleep", HOUR_MS).await,
    ];
    node.wait_state(jobs[0], JobState::Running).await;
    let theirs = node.submit(other, "sleep", HOUR_MS).await;
    node.wait_state(theirs, JobState::Running).await;
    assert_eq!(node.running_of(admin).await, 1);
    jobs.push(theirs);
    node.stop(&jobs).await;
}
