//! Coalesced writes: outcomes that end together share a transaction, submissions that
//! arrive together share a multi-row insert, and each caller still gets its own answer (its
//! job, `LeaseLost`, or its own error) and its own claims.

use kiln_domain::{Failure, JobId};

use super::*;

/// Runs every call at once (each its own task); their answers in order.
async fn all<T: Send + 'static>(
    calls: impl Iterator<Item = impl Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let tasks: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// Forty completions at once, each asking for the next job: every one is stored with its
/// own result, the one whose lease was lost says so, the next jobs go to the callers
/// without a job claimed twice, and each job has exactly one completion event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completions_each_get_their_own_answer_and_claims() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    for i in 0..80 {
        insert(&*store, job(ada, at(i))).await;
    }
    let running = store
        .job_claim(&claim_req("n1", 40, at(100)))
        .await
        .unwrap();
    assert_eq!(running.len(), 40);
    let stale = Lease {
        attempt: running[7].attempts + 1,
        ..lease_of(&running[7])
    };
    let calls = running.iter().enumerate().map(|(i, job)| {
        let store = store.clone();
        let lease = if i == 7 { stale.clone() } else { lease_of(job) };
        async move {
            let next = claim_req("n1", 1, at(200));
            store
                .job_complete_and_claim(
                    &lease,
                    Outcome::Succeeded(json!({"i": i})),
                    at(150),
                    Some(&next),
                )
                .await
                .unwrap()
        }
    });
    let answers = all(calls).await;

    let mut claimed: Vec<JobId> = Vec::new();
    for (i, (completed, next)) in answers.into_iter().enumerate() {
        if i == 7 {
            assert!(
                matches!(completed, Err(StoreError::LeaseLost)),
                "{completed:?}"
            );
        } else {
            let done = completed.unwrap();
            assert_eq!(done.id, running[i].id);
            assert_eq!(done.state, JobState::Succeeded);
            assert_eq!(done.result, Some(json!({"i": i})));
            assert_eq!(done.node, None);
        }
        assert!(next.len() <= 1, "{next:?}");
        claimed.extend(next.iter().map(|j| j.id));
    }
    let unique: HashSet<_> = claimed.iter().collect();
    assert_eq!(unique.len(), claimed.len(), "a job claimed twice");
    assert_eq!(claimed.len(), 40, "every caller got a next job");
    assert_eq!(store_count(&*store, JobState::Succeeded).await, 39);
    assert_eq!(store_count(&*store, JobState::Running).await, 41);
    for job in &running {
        let events = store.event_list(None, job.id).await.unwrap();
        let ends = events
            .iter()
            .filter(|e| e.state == JobState::Succeeded)
            .count();
        let want = usize::from(job.id != running[7].id);
        assert_eq!(ends, want, "{events:?}");
    }
}

/// An outcome PostgreSQL refuses (an error message with a NUL character, which `jsonb`
/// cannot hold) fails alone: the outcomes written beside it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_the_database_refuses_does_not_fail_the_others() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    for i in 0..20 {
        insert(&*store, job(ada, at(i))).await;
    }
    let running = store
        .job_claim(&claim_req("n1", 20, at(100)))
        .await
        .unwrap();
    let calls = running.iter().enumerate().map(|(i, job)| {
        let store = store.clone();
        let lease = lease_of(job);
        async move {
            let outcome = if i == 3 {
                Outcome::Failed {
                    failure: Failure::permanent("bad", "a NUL \u{0} in the message"),
                    retry_at: None,
                }
            } else {
                Outcome::Succeeded(json!(i))
            };
            store.job_complete(&lease, outcome, at(150)).await
        }
    });
    let answers = all(calls).await;
    for (i, answer) in answers.iter().enumerate() {
        if i == 3 {
            assert!(
                matches!(answer, Err(e) if !matches!(e, StoreError::LeaseLost)),
                "{answer:?}"
            );
        } else {
            assert_eq!(answer.as_ref().unwrap().state, JobState::Succeeded);
        }
    }
    assert_eq!(store_count(&*store, JobState::Succeeded).await, 19);
    assert_eq!(store_count(&*store, JobState::Running).await, 1);
}

/// Thirty plain submissions at once share multi-row inserts: each is answered with its own
/// stored job (readable at once, with its `submitted` event), and one the database refuses
/// (a NUL in its name, which no text column takes) fails alone, leaving no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_are_each_stored_and_a_refused_one_fails_alone() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let calls = (0..30).map(|i| {
        let store = store.clone();
        let mut new = new_job(ada, "echo", json!({"i": i}), at(i));
        if i == 11 {
            new.name = Some("a NUL \u{0} in the name".into());
        }
        async move { store.job_insert(new, InsertOptions::default()).await }
    });
    let answers = all(calls).await;
    for (i, answer) in answers.into_iter().enumerate() {
        if i == 11 {
            assert!(answer.is_err(), "{answer:?}");
            continue;
        }
        let Ok(Inserted::Created(job)) = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(job.payload, json!({"i": i}));
        let stored = store.job_get(Some(ada), job.id).await.unwrap();
        assert_eq!(stored, job);
        let events = store.event_list(Some(ada), job.id).await.unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].state, JobState::Queued);
    }
    assert_eq!(store_count(&*store, JobState::Queued).await, 29);
    let page = store
        .job_list(&kiln_store::ListQuery {
            limit: 100,
            ..kiln_store::ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 29, "the refused job left no row");
}

/// Forty lists at once, of two owners, by state and not, share pipelined batches: each gets
/// exactly the page it gets when asked alone, and a job submitted before a list began is in
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_lists_each_get_their_own_page() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let bob = add_user(&*store, "bob").await;
    for i in 0..30 {
        insert(&*store, job(if i % 3 == 0 { bob } else { ada }, at(i))).await;
    }
    let first = claim_one(&*store, "n1", at(40)).await;
    store
        .job_complete(&lease_of(&first), Outcome::Succeeded(json!(1)), at(41))
        .await
        .unwrap();
    let query = |n: usize| kiln_store::ListQuery {
        owner: Some(if n.is_multiple_of(2) { ada } else { bob }),
        states: match n % 4 {
            0 | 1 => vec![],
            2 => vec![JobState::Queued],
            _ => vec![JobState::Succeeded, JobState::Queued],
        },
        limit: u32::try_from(5 + n % 7).unwrap(),
        ..kiln_store::ListQuery::default()
    };
    let ids = |page: &kiln_store::Page| page.items.iter().map(|j| j.id).collect::<Vec<JobId>>();
    let mut alone = Vec::new();
    for n in 0..40 {
        alone.push(ids(&store.job_list(&query(n)).await.unwrap()));
    }
    let calls = (0..40).map(|n| {
        let store = store.clone();
        let q = query(n);
        async move { store.job_list(&q).await }
    });
    let together = all(calls).await;
    for (n, page) in together.iter().enumerate() {
        let page = page.as_ref().unwrap();
        assert_eq!(ids(page), alone[n], "list {n}");
        assert!(!page.items.is_empty(), "list {n}");
    }

    // A submission answered before the lists start is in every list of its owner.
    let newest = insert(&*store, job(bob, at(100))).await;
    let calls = (0..8).map(|_| {
        let store = store.clone();
        let q = kiln_store::ListQuery {
            owner: Some(bob),
            limit: 1,
            sort: kiln_store::Sort::CreatedDesc,
            ..kiln_store::ListQuery::default()
        };
        async move { store.job_list(&q).await }
    });
    for page in all(calls).await {
        assert_eq!(ids(&page.unwrap()), vec![newest.id]);
    }
}
