//! The client side: users and tokens, inserts and keyset lists, idempotency, the queue cap, retry/report/delete.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capped_inserts_from_two_nodes_stop_exactly_at_the_cap() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let node_b = db.store().await;
    let inserts = (0..40).map(|i| {
        let store = if i % 2 == 0 {
            node_a.clone()
        } else {
            node_b.clone()
        };
        tokio::spawn(async move {
            let capped = InsertOptions {
                idempotency: None,
                max_queued: Some(10),
                owner_max_active: None,
            };
            store.job_insert(job(ada, at(i)), capped).await
        })
    });
    let mut created = 0;
    for insert in inserts {
        match insert.await.unwrap() {
            Ok(Inserted::Created(_)) => created += 1,
            Err(StoreError::QueueFull { limit: 10 }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 10);
    assert_eq!(node_a.job_stats().await.unwrap().total_submitted, 10);
    drop((node_a, node_b));
}

/// A node caches finished jobs, but checks each against the row's version before use: what
/// another node changed shows at once on every read (no notification needed, node A does not
/// even listen), and a job another node deleted is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_serves_a_finished_job_another_node_changed() {
    let Some((db, node_b, ada)) = setup().await else {
        return;
    };
    let node_a = db
        .store_with(PgOptions {
            listen: false,
            ..PgOptions::default()
        })
        .await;
    let mine = kiln_store::ListQuery {
        owner: Some(ada),
        limit: 10,
        ..kiln_store::ListQuery::default()
    };
    let finish = async |outcome: Outcome, now: i64| {
        let running = claim_one(&*node_b, "b", at(now)).await;
        node_b
            .job_complete(&lease_of(&running), outcome, at(now + 1))
            .await
            .unwrap();
    };
    // What node A's three reads show, each read twice (the second from its cache).
    let seen = async || {
        let mut views = Vec::new();
        for _ in 0..2 {
            let page = node_a.job_list(&mine).await.unwrap().items;
            let listed: Vec<_> = page
                .iter()
                .map(|j| (j.state, j.result.as_ref().map(|r| r.get().to_owned())))
                .collect();
            let read = node_a.job_read(Some(ada), page[0].id).await.unwrap();
            let status = node_a
                .job_status(Some(ada), page[0].id, 4096)
                .await
                .unwrap();
            views.push((
                listed,
                read.state,
                read.result.map(|r| r.get().to_owned()),
                status.state,
            ));
        }
        assert_eq!(
            views[0], views[1],
            "a cached read shows what the database holds"
        );
        views.remove(0)
    };

    let job = insert(&*node_b, job(ada, at(0))).await;
    let failed = Outcome::Failed {
        failure: kiln_domain::Failure::permanent("boom", "round 1 broke"),
        retry_at: None,
    };
    finish(failed, 1).await;
    let first = seen().await;
    assert_eq!((first.1, first.3), (JobState::Dead, JobState::Dead));

    node_b
        .job_retry(Some(ada), job.id, 1, at(10))
        .await
        .unwrap();
    let retried = seen().await;
    assert_eq!(retried.0.len(), 1);
    assert_eq!(
        (retried.0[0].0, retried.1),
        (JobState::Queued, JobState::Queued)
    );
    assert_eq!(retried.3, JobState::Queued);

    finish(Outcome::Succeeded(json!({"round": 2})), 11).await;
    let again = seen().await;
    assert_eq!(
        again.0,
        vec![(JobState::Succeeded, Some(r#"{"round":2}"#.to_owned()))]
    );
    assert_eq!(again.2.as_deref(), Some(r#"{"round":2}"#));

    node_b.job_delete(Some(ada), job.id).await.unwrap();
    assert!(matches!(
        node_a.job_read(Some(ada), job.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        node_a.job_status(Some(ada), job.id, 4096).await,
        Err(StoreError::NotFound)
    ));
    assert!(node_a.job_list(&mine).await.unwrap().items.is_empty());
    drop((node_a, node_b));
}

/// Many reads at once (cached finished jobs, events, logs) are answered in batches (one
/// statement for many jobs): each still gets its own job's, and a job of another owner is
/// still not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cached_reads_each_get_their_own_job() {
    let Some((db, store, ada)) = setup().await else {
        return;
    };
    let bob = add_user(&*store, "bob").await;
    let mut jobs = Vec::new();
    for i in 0..40 {
        let owner = if i % 2 == 0 { ada } else { bob };
        let job = insert(&*store, job(owner, at(i))).await;
        let running = claim_one(&*store, "n1", at(100 + i)).await;
        store
            .log_append(job.id, &format!("line of job {i}\n"), at(150 + i))
            .await
            .unwrap();
        store
            .job_complete(
                &lease_of(&running),
                Outcome::Succeeded(json!({"n": i})),
                at(200 + i),
            )
            .await
            .unwrap();
        // Read once: now cached.
        store.job_read(Some(owner), job.id).await.unwrap();
        jobs.push((owner, job.id, i));
    }
    let reads = (0..400).map(|k| {
        let store = Arc::clone(&store);
        let (owner, id, i) = jobs[k % jobs.len()];
        let other = if owner == ada { bob } else { ada };
        tokio::spawn(async move {
            if k % 5 == 0 {
                // Another owner's job: not found, batched or not.
                let read = store.job_read(Some(other), id).await;
                assert!(matches!(read, Err(StoreError::NotFound)), "{read:?}");
                let events = store.event_list(Some(other), id).await;
                assert!(matches!(events, Err(StoreError::NotFound)), "{events:?}");
                let log = store.log_get(Some(other), id).await;
                assert!(matches!(log, Err(StoreError::NotFound)), "{log:?}");
                return;
            }
            let events = store.event_list(Some(owner), id).await.unwrap();
            let states: Vec<JobState> = events.iter().map(|e| e.state).collect();
            assert_eq!(
                states,
                [JobState::Queued, JobState::Running, JobState::Succeeded]
            );
            assert_eq!(events[2].at, at(200 + i));
            let log = store.log_get(Some(owner), id).await.unwrap();
            assert_eq!(log, format!("line of job {i}\n"));
            let job = store.job_read(Some(owner), id).await.unwrap();
            assert_eq!(job.id, id);
            assert_eq!(job.result.unwrap().get(), format!(r#"{{"n":{i}}}"#));
            let status = store.job_status(Some(owner), id, 4096).await.unwrap();
            assert_eq!((status.id, status.state), (id, JobState::Succeeded));
        })
    });
    for read in reads.collect::<Vec<_>>() {
        read.await.unwrap();
    }
    drop((db, store));
}
