//! Publishing and sweeping artifacts against a real SQLite store and an in-memory object
//! store (the non-local path), calling the executor's steps directly.

use std::sync::Arc;

use kiln_domain::job_type::Catalogue;
use kiln_domain::{Clock, Role, SystemClock};
use kiln_kernels::Registry;
use kiln_objects::ArtifactMeta;
use kiln_store::{ClaimRequest, InsertOptions, NewUser, Store};
use kiln_testkit::db::TempSqlite;
use serde_json::json;

use super::*;
use crate::{Worker, WorkerConfig};

struct Fixture {
    _db: TempSqlite,
    scratch: tempfile::TempDir,
    store: Arc<dyn Store>,
    objects: Objects,
    worker: Worker,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_quota(None).await
    }

    /// Each user may keep `quota` bytes of files and artifacts.
    async fn with_quota(quota: Option<u64>) -> Self {
        let db = TempSqlite::new();
        let store: Arc<dyn Store> = db.store.clone();
        let scratch = tempfile::tempdir().unwrap();
        let objects = Objects::from_url("memory:///", Vec::<(String, String)>::new()).unwrap();
        let config = WorkerConfig {
            artifact_scratch: scratch.path().to_path_buf(),
            objects: Some(objects.clone()),
            storage_quota: quota,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(
            config,
            Arc::clone(&store),
            Registry::default(),
            Arc::new(Catalogue::default()),
            Arc::new(SystemClock),
        );
        Self {
            _db: db,
            scratch,
            store,
            objects,
            worker,
        }
    }

    fn shared(&self) -> &Shared {
        &self.worker.shared
    }

    /// A new job of a new user, claimed: `running`, attempt 1.
    async fn running_job(&self) -> Job {
        let user = NewUser {
            username: format!("u{}", uuid::Uuid::now_v7().simple()),
            password_hash: "x".into(),
            role: Role::Admin,
        };
        let owner = self.store.user_insert(user, SystemClock.now()).await;
        self.running_job_of(owner.unwrap().id).await
    }

    /// A new job of `owner`, claimed.
    async fn running_job_of(&self, owner: kiln_domain::UserId) -> Job {
        let now = SystemClock.now();
        let new = kiln_testkit::factory::new_job(owner, "echo", json!(1), now);
        let id = new.id;
        self.store
            .job_insert(new, InsertOptions::default())
            .await
            .unwrap();
        let claimed = self
            .store
            .job_claim(&ClaimRequest {
                node: "node-a".into(),
                types: vec!["echo".into()],
                exclude_queues: vec![],
                exclude_owners: Vec::new(),
                limit: 10,
                now,
                lease: std::time::Duration::from_secs(300),
                per_owner: None,
                per_owner_exempt: Vec::new(),
            })
            .await
            .unwrap();
        claimed.into_iter().find(|j| j.id == id).unwrap()
    }

    fn scratch_entries(&self) -> usize {
        std::fs::read_dir(self.scratch.path()).unwrap().count()
    }
}

fn write(artifacts: &Artifacts, name: &str, data: &[u8]) {
    let (_, file) = artifacts.create(name).unwrap();
    std::io::Write::write_all(&mut &file, data).unwrap();
}

fn meta(name: &str, size: u64) -> ArtifactMeta {
    ArtifactMeta {
        name: name.into(),
        size,
    }
}

#[tokio::test]
async fn a_succeeded_attempt_moves_its_files_into_the_store_and_leaves_no_scratch() {
    let f = Fixture::new().await;
    let job = f.running_job().await;
    let artifacts = prepare(f.shared(), &job).await.unwrap();
    write(&artifacts, "out.npy", &[7; 1000]);
    write(&artifacts, "result.json", b"{}");

    let outcome = publish(
        f.shared(),
        &job,
        &artifacts,
        Some(Outcome::Succeeded(json!({"n": 1}))),
        None,
    )
    .await;

    let Some(Outcome::Succeeded(result)) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        f.objects.artifact_list(job.id, 1).await.unwrap(),
        [meta("out.npy", 1000), meta("result.json", 2)]
    );
    // The result links them, in the shape of `GET /jobs/{id}/artifacts`.
    let url = |name: &str| format!("/api/v1/jobs/{}/artifacts/{name}", job.id);
    assert_eq!(
        result,
        json!({"n": 1, "artifacts": [
            {"name": "out.npy", "bytes": 1000, "content_type": "application/octet-stream", "url": url("out.npy")},
            {"name": "result.json", "bytes": 2, "content_type": "application/json", "url": url("result.json")},
        ]})
    );
    assert_eq!(f.scratch_entries(), 0);
}

#[tokio::test]
async fn an_upload_still_running_at_the_job_s_timeout_fails_it_and_leaves_nothing() {
    let f = Fixture::new().await;
    let job = f.running_job().await;
    let artifacts = prepare(f.shared(), &job).await.unwrap();
    write(&artifacts, "out.npy", &[7; 1000]);

    // The deadline passed a second ago, so the timer has fired by the first poll, while the
    // upload's first file-system step (on the blocking pool) is still pending. (A deadline
    // of "now" may only fire at the timer's next tick, after a fast upload.)
    let deadline = tokio::time::Instant::now() - std::time::Duration::from_secs(1);
    let outcome = publish(
        f.shared(),
        &job,
        &artifacts,
        Some(Outcome::Succeeded(json!({"n": 1}))),
        Some(deadline),
    )
    .await;

    let Some(Outcome::Failed { failure, .. }) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(failure.code, "timeout");
    assert!(f.objects.artifact_jobs().await.unwrap().is_empty());
    assert_eq!(f.scratch_entries(), 0);
}

#[tokio::test]
async fn a_failed_or_cancelled_attempt_s_files_are_discarded() {
    let f = Fixture::new().await;
    let job = f.running_job().await;
    for outcome in [Some(Outcome::Cancelled), None] {
        let artifacts = prepare(f.shared(), &job).await.unwrap();
        write(&artifacts, "half.csv", b"id,gro");
        let after = publish(f.shared(), &job, &artifacts, outcome.clone(), None).await;
        assert_eq!(after.is_some(), outcome.is_some());
        assert!(f.objects.artifact_jobs().await.unwrap().is_empty());
        assert_eq!(f.scratch_entries(), 0);
    }
}

#[tokio::test]
async fn a_retry_clears_the_artifacts_of_earlier_attempts() {
    let f = Fixture::new().await;
    let mut job = f.running_job().await;
    let first = prepare(f.shared(), &job).await.unwrap();
    write(&first, "a.csv", b"1");
    publish(
        f.shared(),
        &job,
        &first,
        Some(Outcome::Succeeded(json!(1))),
        None,
    )
    .await;
    assert_eq!(f.objects.artifact_list(job.id, 1).await.unwrap().len(), 1);

    job.attempts = 2;
    let second = prepare(f.shared(), &job).await.unwrap();

    assert!(f.objects.artifact_list(job.id, 1).await.unwrap().is_empty());
    assert_ne!(
        first.dir(),
        second.dir(),
        "each attempt has its own scratch"
    );
}

#[tokio::test]
async fn the_sweeps_remove_what_no_job_or_attempt_owns_any_more() {
    let f = Fixture::new().await;
    let live = f.running_job().await;
    let gone = kiln_domain::JobId::new();
    for (id, attempt) in [(live.id, 1), (live.id, 0), (gone, 1)] {
        let artifacts = Artifacts::for_attempt(f.scratch.path(), id, attempt);
        write(&artifacts, "x.csv", b"x");
        f.objects
            .artifact_put_file(id, attempt, "x.csv", &artifacts.dir().join("x.csv"))
            .await
            .unwrap();
        write(&artifacts, "x.csv", b"x");
    }

    sweep_scratch(f.shared()).await;
    sweep_stored(f.shared()).await;

    let left: Vec<_> = std::fs::read_dir(f.scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let expected = Artifacts::for_attempt(f.scratch.path(), live.id, 1);
    assert_eq!(left, [expected.dir().file_name().unwrap()]);
    assert_eq!(f.objects.artifact_jobs().await.unwrap(), [live.id]);
}

#[tokio::test]
async fn a_prune_deletes_the_artifacts_of_the_jobs_it_names_only() {
    let f = Fixture::new().await;
    let (pruned, kept) = (JobId::new(), JobId::new());
    for id in [pruned, kept] {
        let artifacts = Artifacts::for_attempt(f.scratch.path(), id, 1);
        write(&artifacts, "x.csv", b"x");
        f.objects
            .artifact_put_file(id, 1, "x.csv", &artifacts.dir().join("x.csv"))
            .await
            .unwrap();
    }

    delete_pruned(f.shared(), &[pruned]).await;

    // `kept` has no job row either: only the daily reconciliation would remove it.
    assert_eq!(f.objects.artifact_jobs().await.unwrap(), [kept]);
}

#[test]
fn scratch_names_parse_back_to_the_attempt() {
    let id = JobId::new();
    let artifacts = Artifacts::for_attempt(std::path::Path::new("/s"), id, 7);
    let name = artifacts.dir().file_name().unwrap().to_str().unwrap();
    assert_eq!(parse_scratch_name(name), Some((id, 7)));
    assert_eq!(parse_scratch_name("not-a-job.1"), None);
    assert_eq!(parse_scratch_name(&id.0.simple().to_string()), None);
}

#[tokio::test]
async fn artifacts_past_the_owner_s_storage_quota_fail_the_job_and_are_not_kept() {
    let f = Fixture::with_quota(Some(1_500)).await;
    let first = f.running_job().await;
    let owner = first.owner;
    let artifacts = prepare(f.shared(), &first).await.unwrap();
    write(&artifacts, "out.bin", &[1; 1000]);
    let done = publish(
        f.shared(),
        &first,
        &artifacts,
        Some(Outcome::Succeeded(json!({}))),
        None,
    )
    .await;
    assert!(matches!(done, Some(Outcome::Succeeded(_))), "{done:?}");
    assert_eq!(f.store.owner_artifact_bytes(owner).await.unwrap(), 1000);

    // Another 1,000 bytes would make 2,000 of 1,500.
    let second = f.running_job_of(owner).await;
    let artifacts = prepare(f.shared(), &second).await.unwrap();
    write(&artifacts, "out.bin", &[2; 1000]);
    let refused = publish(
        f.shared(),
        &second,
        &artifacts,
        Some(Outcome::Succeeded(json!({}))),
        None,
    )
    .await;
    let Some(Outcome::Failed { failure, .. }) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(
        (failure.code.as_str(), failure.retryable),
        ("storage_quota", false)
    );
    assert!(
        f.objects
            .artifact_list(second.id, 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(f.store.owner_artifact_bytes(owner).await.unwrap(), 1000);
    assert_eq!(f.scratch_entries(), 0);
}
