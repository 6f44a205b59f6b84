//! What an owner's stored bytes count: their jobs' artifacts.

use std::sync::Arc;

use kiln_domain::{JobId, JobState};
use kiln_store::Store;

use crate::helpers::*;

pub async fn artifact_bytes_add_up_per_owner_and_go_with_the_job(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let a1 = echo(&store, alice, at(0)).await;
    let a2 = echo(&store, alice, at(1)).await;
    let b1 = echo(&store, bob, at(2)).await;
    assert_eq!(store.owner_artifact_bytes(alice).await.unwrap(), 0);
    store.job_artifacts_set(None, a1.id, 1_000).await.unwrap();
    store
        .job_artifacts_set(Some(alice), a2.id, 234)
        .await
        .unwrap();
    store.job_artifacts_set(None, b1.id, 5).await.unwrap();
    assert_eq!(store.owner_artifact_bytes(alice).await.unwrap(), 1_234);
    assert_eq!(store.owner_artifact_bytes(bob).await.unwrap(), 5);
    // Set again (a later attempt's artifacts): replaced, not added.
    store.job_artifacts_set(None, a1.id, 10).await.unwrap();
    assert_eq!(store.owner_artifact_bytes(alice).await.unwrap(), 244);
    // Not another owner's job; not a job that does not exist.
    assert_not_found(store.job_artifacts_set(Some(bob), a2.id, 1).await);
    assert_not_found(store.job_artifacts_set(None, JobId::new(), 1).await);
    // A deleted job's artifacts no longer count.
    store.job_cancel(None, a2.id, at(3)).await.unwrap();
    store.job_delete(Some(alice), a2.id).await.unwrap();
    assert_eq!(store.owner_artifact_bytes(alice).await.unwrap(), 10);
}

pub async fn owner_counts_are_per_state_and_per_owner(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    assert!(store.owner_counts(alice).await.unwrap().is_empty());
    let a1 = echo(&store, alice, at(0)).await;
    echo(&store, alice, at(1)).await;
    echo(&store, bob, at(2)).await;
    store.job_cancel(None, a1.id, at(3)).await.unwrap();
    assert_eq!(
        store.owner_counts(alice).await.unwrap(),
        vec![(JobState::Queued, 1), (JobState::Cancelled, 1)]
    );
    assert_eq!(
        store.owner_counts(bob).await.unwrap(),
        vec![(JobState::Queued, 1)]
    );
    store.job_delete(Some(alice), a1.id).await.unwrap();
    assert_eq!(
        store.owner_counts(alice).await.unwrap(),
        vec![(JobState::Queued, 1)]
    );
}
