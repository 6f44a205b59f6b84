//! `job_insert` (first event, idempotency, the queue cap), `job_get`, and owner scoping of
//! every owner-scoped call.

use std::sync::Arc;

use kiln_domain::{JobId, JobState, JobType};
use kiln_store::{
    Idempotency, InsertOptions, Inserted, JobStatus, Outcome, Report, Store, StoreError,
};
use serde_json::json;

use crate::helpers::*;

fn key(key: &str, hash: u8) -> InsertOptions {
    InsertOptions {
        idempotency: Some(Idempotency {
            key: key.to_owned(),
            request_hash: vec![hash; 32],
        }),
        max_queued: None,
        owner_max_active: None,
    }
}

pub async fn insert_stores_the_job_and_its_first_event(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mut s = sub("echo");
    s.priority = Some(7);
    s.queue = Some("mail".to_owned());
    s.name = Some("nightly".to_owned());
    let mut new = new_job(s, alice, at(100));
    new.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned());
    new.parent_span_id = Some("00f067aa0ba902b7".to_owned());
    let id = new.id;

    let inserted = store
        .job_insert(new, InsertOptions::default())
        .await
        .unwrap();
    let Inserted::Created(job) = inserted else {
        panic!("expected Created, got {inserted:?}");
    };
    assert_eq!(job.id, id);
    assert_eq!(job.owner, alice);
    assert_eq!(job.job_type, JobType::Echo);
    assert_eq!(job.queue.as_str(), "mail");
    assert_eq!(job.name.as_deref(), Some("nightly"));
    assert_eq!(job.priority, 7);
    assert_eq!(job.payload, json!({"x": 1}));
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts, 0);
    assert!(job.max_attempts >= 1);
    assert_eq!(job.created_at, at(100));
    assert_eq!(job.run_at, at(100));
    assert_eq!(job.updated_at, at(100));
    assert_eq!(job.started_at, None);
    assert_eq!(job.finished_at, None);
    assert_eq!(job.node, None);
    assert_eq!(job.lease_expires_at, None);
    assert_eq!(job.result, None);
    assert_eq!(job.error, None);
    assert!(!job.cancel_requested);
    assert_eq!(
        job.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(job.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));

    // What came back is what is stored, for the owner and for operators (and a claim reads
    // the same record).
    assert_eq!(store.job_get(Some(alice), id).await.unwrap(), job);
    assert_eq!(store.job_get(None, id).await.unwrap(), job);

    let events = store.event_list(Some(alice), id).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[0].state, JobState::Queued);
    assert_eq!(events[0].at, at(100));
    assert_eq!(events[0].attempt, 0);
    assert_eq!(store.log_get(Some(alice), id).await.unwrap(), "");
    let claimed = claim_one(&store, "n1", at(200)).await;
    assert_eq!(claimed.trace_id, job.trace_id);
    assert_eq!(claimed.parent_span_id, job.parent_span_id);
}

pub async fn scheduled_insert_keeps_run_at_and_state(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mut s = sub("echo");
    s.delay_ms = Some(60_000);
    let job = insert(&store, alice, s, at(0)).await;
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.run_at, at(60_000));
    let stored = get(&store, job.id).await;
    assert_eq!(stored.state, JobState::Scheduled);
    assert_eq!(stored.run_at, at(60_000));
    let events = store.event_list(None, job.id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].state, JobState::Scheduled);
}

pub async fn idempotent_insert_returns_the_existing_job(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let first = store
        .job_insert(new_job(sub("echo"), alice, at(0)), key("k1", 1))
        .await
        .unwrap();
    let Inserted::Created(first) = first else {
        panic!("first insert must create: {first:?}");
    };
    let again = store
        .job_insert(new_job(sub("echo"), alice, at(50)), key("k1", 1))
        .await
        .unwrap();
    let Inserted::Existing(again) = again else {
        panic!("same key and hash must return Existing: {again:?}");
    };
    assert_eq!(again.id, first.id);
    assert_eq!(again, first);
    let page = store
        .job_list(&kiln_store::ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1, "no second job was stored");
    assert_eq!(store.job_stats().await.unwrap().total_submitted, 1);
    assert_eq!(store.event_list(None, first.id).await.unwrap().len(), 1);
}

pub async fn idempotency_key_with_another_hash_is_a_conflict(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    store
        .job_insert(new_job(sub("echo"), alice, at(0)), key("k1", 1))
        .await
        .unwrap();
    assert_conflict(
        store
            .job_insert(new_job(sub("echo"), alice, at(1)), key("k1", 2))
            .await,
    );
    let page = store
        .job_list(&kiln_store::ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

pub async fn idempotency_keys_are_scoped_per_owner(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let a = store
        .job_insert(new_job(sub("echo"), alice, at(0)), key("shared", 1))
        .await
        .unwrap();
    // Another owner, same key, another hash: a new job, no conflict.
    let b = store
        .job_insert(new_job(sub("echo"), bob, at(1)), key("shared", 2))
        .await
        .unwrap();
    let (Inserted::Created(a), Inserted::Created(b)) = (a, b) else {
        panic!("both owners must get a new job");
    };
    assert_ne!(a.id, b.id);
    assert_eq!(b.owner, bob);
    // Each owner's replay finds their own job.
    let again = store
        .job_insert(new_job(sub("echo"), bob, at(2)), key("shared", 2))
        .await
        .unwrap();
    assert!(
        matches!(&again, Inserted::Existing(j) if j.id == b.id),
        "{again:?}"
    );
    let again = store
        .job_insert(new_job(sub("echo"), alice, at(2)), key("shared", 1))
        .await
        .unwrap();
    assert!(
        matches!(&again, Inserted::Existing(j) if j.id == a.id),
        "{again:?}"
    );
}

pub async fn max_queued_refuses_with_queue_full(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let cap = |n| InsertOptions {
        idempotency: None,
        max_queued: Some(n),
        owner_max_active: None,
    };
    let first = store
        .job_insert(new_job(sub("echo"), alice, at(0)), cap(2))
        .await
        .unwrap();
    let mut s = sub("echo");
    s.delay_ms = Some(10_000);
    store
        .job_insert(new_job(s, alice, at(1)), cap(2))
        .await
        .unwrap();
    let full = store
        .job_insert(new_job(sub("echo"), alice, at(2)), cap(2))
        .await;
    assert!(
        matches!(full, Err(StoreError::QueueFull { limit: 2 })),
        "got {full:?}"
    );
    // Running jobs still count; terminal ones do not.
    let running = claim_one(&store, "n1", at(3)).await;
    assert_eq!(running.id, first.job().id);
    assert!(matches!(
        store
            .job_insert(new_job(sub("echo"), alice, at(4)), cap(2))
            .await,
        Err(StoreError::QueueFull { limit: 2 })
    ));
    store
        .job_complete(
            &lease_of(&running),
            kiln_store::Outcome::Succeeded(result_value()),
            at(5),
        )
        .await
        .unwrap();
    let keyed = InsertOptions {
        max_queued: Some(2),
        ..key("k", 1)
    };
    let replayed = store
        .job_insert(new_job(sub("echo"), alice, at(6)), keyed.clone())
        .await
        .expect("room again once a job finished");
    assert!(matches!(replayed, Inserted::Created(_)));
    // Full again; a replay of a request already accepted still finds its job.
    let again = store
        .job_insert(new_job(sub("echo"), alice, at(7)), keyed)
        .await
        .expect("a replay is not refused by a full queue");
    assert!(
        matches!(&again, Inserted::Existing(j) if j.id == replayed.job().id),
        "{again:?}"
    );
}

pub async fn other_owner_sees_not_found_everywhere(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mallory = user(&store, "mallory").await;
    let ext = insert(&store, alice, sub("external"), at(0)).await;
    let id = ext.id;
    let me = Some(mallory);

    assert_not_found(store.job_get(me, id).await);
    assert_not_found(store.job_cancel(me, id, at(1)).await);
    assert_not_found(store.job_retry(me, id, 1, at(1)).await);
    assert_not_found(
        store
            .job_report(
                me,
                id,
                Report {
                    state: JobState::Running,
                    result: None,
                    error: None,
                },
                at(1),
            )
            .await,
    );
    assert_not_found(store.event_list(me, id).await);
    assert_not_found(store.log_get(me, id).await);

    // Nothing changed: still queued with one event.
    let job = get(&store, id).await;
    assert_eq!(job, ext);
    assert_eq!(store.event_list(None, id).await.unwrap().len(), 1);

    // Delete: even a terminal job is invisible to another owner.
    store.job_cancel(Some(alice), id, at(2)).await.unwrap();
    assert_not_found(store.job_delete(me, id).await);
    assert_eq!(get(&store, id).await.state, JobState::Cancelled);
    // The owner and operators see it.
    assert_eq!(store.job_get(Some(alice), id).await.unwrap().id, id);
    store.job_delete(Some(alice), id).await.unwrap();
    assert_not_found(store.job_get(None, id).await);
}

pub async fn missing_job_is_not_found(store: Arc<dyn Store>) {
    let id = JobId::new();
    assert_not_found(store.job_get(None, id).await);
    assert_not_found(store.job_cancel(None, id, at(0)).await);
    assert_not_found(store.job_retry(None, id, 1, at(0)).await);
    assert_not_found(store.job_delete(None, id).await);
    assert_not_found(store.event_list(None, id).await);
    assert_not_found(store.log_get(None, id).await);
    assert_not_found(store.log_append(id, "line\n", at(0)).await);
}

pub async fn status_is_the_light_view_and_inlines_only_small_results(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mallory = user(&store, "mallory").await;
    let queued = echo(&store, alice, at(0)).await;
    let JobStatus {
        id,
        state,
        progress,
        updated_at,
        error,
        result,
        has_result,
    } = store
        .job_status(Some(alice), queued.id, 4096)
        .await
        .unwrap();
    assert_eq!(
        (id, state, progress, updated_at, error, has_result),
        (
            queued.id,
            JobState::Queued,
            0.0,
            queued.updated_at,
            None,
            false
        )
    );
    assert!(result.is_none());
    assert_not_found(store.job_status(Some(mallory), queued.id, 4096).await);
    assert_not_found(store.job_status(None, JobId::new(), 4096).await);

    let running = claim_one(&store, "n1", at(1)).await;
    let result = json!({"text": "x".repeat(100)});
    let done = store
        .job_complete(
            &lease_of(&running),
            Outcome::Succeeded(result.clone()),
            at(2),
        )
        .await
        .unwrap();
    let small = store.job_status(None, done.id, 4096).await.unwrap();
    assert_eq!(
        (small.state, small.progress, small.updated_at),
        (JobState::Succeeded, done.progress, done.updated_at)
    );
    assert_eq!(parsed(small.result), Some(result));
    assert!(small.has_result);
    // Too large to inline: left out, but known to exist.
    let large = store.job_status(None, done.id, 50).await.unwrap();
    assert!(large.result.is_none() && large.has_result);
}

/// Reads of a finished job, repeated (a backend may serve them from memory), then a write:
/// the next read must show the write.
pub async fn reads_of_a_finished_job_see_every_later_write(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mallory = user(&store, "mallory").await;
    let job = echo(&store, alice, at(0)).await;
    let running = claim_one(&store, "n1", at(1)).await;
    let failure = kiln_domain::Failure::permanent("boom", "it broke");
    let outcome = Outcome::Failed {
        failure,
        retry_at: None,
    };
    store
        .job_complete(&lease_of(&running), outcome, at(2))
        .await
        .unwrap();
    let read_twice = async |state: JobState| {
        for _ in 0..2 {
            let read = tree(store.job_read(Some(alice), job.id).await.unwrap());
            assert_eq!(read, store.job_get(Some(alice), job.id).await.unwrap());
            assert_eq!(read.state, state);
            assert_not_found(store.job_read(Some(mallory), job.id).await);
            let listed = store.job_list(&mine(alice)).await.unwrap().items;
            let listed = listed.into_iter().find(|j| j.id == job.id).map(tree);
            assert_eq!(
                listed,
                Some(read.clone()),
                "the list shows what a read shows"
            );
            let status = store.job_status(Some(alice), job.id, 4096).await.unwrap();
            assert_eq!(status.state, state);
            assert_not_found(store.job_get(Some(mallory), job.id).await);
            assert_not_found(store.job_status(Some(mallory), job.id, 4096).await);
        }
    };
    read_twice(JobState::Dead).await;

    store
        .job_retry(Some(alice), job.id, 1, at(3))
        .await
        .unwrap();
    read_twice(JobState::Queued).await;

    let running = claim_one(&store, "n1", at(4)).await;
    let done = store
        .job_complete(
            &lease_of(&running),
            Outcome::Succeeded(result_value()),
            at(5),
        )
        .await
        .unwrap();
    read_twice(JobState::Succeeded).await;
    let status = store.job_status(None, job.id, 4096).await.unwrap();
    assert_eq!(parsed(status.result), Some(result_value()));
    assert_eq!(status.updated_at, done.updated_at);
    assert!(
        store
            .job_status(None, job.id, 3)
            .await
            .unwrap()
            .result
            .is_none()
    );

    store.job_delete(Some(alice), job.id).await.unwrap();
    assert_not_found(store.job_read(None, job.id).await);
    assert_not_found(store.job_status(None, job.id, 4096).await);

    // Pruning forgets finished jobs just as surely.
    let other = echo(&store, alice, at(10)).await;
    let running = claim_one(&store, "n1", at(11)).await;
    store
        .job_complete(
            &lease_of(&running),
            Outcome::Succeeded(result_value()),
            at(12),
        )
        .await
        .unwrap();
    read_twice_of(&store, alice, other.id).await;
    assert_eq!(store.job_prune(at(13), None).await.unwrap().count, 1);
    assert_not_found(store.job_read(None, other.id).await);
    assert_not_found(store.job_status(None, other.id, 4096).await);
}

async fn read_twice_of(store: &Arc<dyn Store>, owner: kiln_domain::UserId, id: JobId) {
    for _ in 0..2 {
        let job = store.job_read(Some(owner), id).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(
            store.job_status(None, id, 4096).await.unwrap().state,
            job.state
        );
    }
}

/// The first page of `owner`'s jobs.
fn mine(owner: kiln_domain::UserId) -> kiln_store::ListQuery {
    kiln_store::ListQuery {
        owner: Some(owner),
        limit: 100,
        ..kiln_store::ListQuery::default()
    }
}

pub async fn owner_max_active_refuses_only_that_owner(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let quota = |n| InsertOptions {
        owner_max_active: Some(n),
        ..InsertOptions::default()
    };
    let first = store
        .job_insert(new_job(sub("echo"), alice, at(0)), quota(2))
        .await
        .unwrap();
    let mut later = sub("echo");
    later.delay_ms = Some(60_000);
    store
        .job_insert(new_job(later, alice, at(1)), quota(2))
        .await
        .unwrap();
    let refused = store
        .job_insert(new_job(sub("echo"), alice, at(2)), quota(2))
        .await;
    assert!(
        matches!(refused, Err(StoreError::ActiveQuota { limit: 2 })),
        "got {refused:?}"
    );
    // Another owner has room of their own; nothing of the refused insert was stored.
    store
        .job_insert(new_job(sub("echo"), bob, at(3)), quota(2))
        .await
        .unwrap();
    assert_eq!(store.job_stats().await.unwrap().total_submitted, 3);
    // A running job still counts; a finished one does not.
    let running = claim_one(&store, "n1", at(4)).await;
    assert_eq!(running.id, first.job().id);
    assert!(
        store
            .job_insert(new_job(sub("echo"), alice, at(5)), quota(2))
            .await
            .is_err()
    );
    store
        .job_complete(
            &lease_of(&running),
            kiln_store::Outcome::Succeeded(result_value()),
            at(6),
        )
        .await
        .unwrap();
    store
        .job_insert(new_job(sub("echo"), alice, at(7)), quota(2))
        .await
        .expect("room again once a job finished");
}
