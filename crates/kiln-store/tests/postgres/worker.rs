//! The worker side: claims and their races across nodes, fencing, cross-node cancel, leases, promotion.

use super::*;

#[tokio::test]
async fn claims_follow_priority_then_run_at_then_id_and_promote_due_work() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let low = insert(&*store, job(ada, at(0))).await;
    let mut high = job(ada, at(1));
    high.priority = Priority::parse(10).unwrap();
    let high = insert(&*store, high).await;
    let mut later = job(ada, at(2));
    later.run_at = at(500);
    later.state = JobState::Scheduled;
    let later = insert(&*store, later).await;
    let mut other_queue = job(ada, at(3));
    other_queue.queue = kiln_domain::QueueName::parse("slow").unwrap();
    let other_queue = insert(&*store, other_queue).await;
    let mut sleepy = new_job(ada, "external", json!({"name": "x"}), at(4));
    sleepy.priority = Priority::parse(50).unwrap();
    insert(&*store, sleepy).await;

    let mut req = claim_req("n1", 10, at(100));
    req.exclude_queues = vec!["slow".into()];
    let claimed: Vec<JobId> = store
        .job_claim(&req)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        claimed,
        vec![high.id, low.id],
        "external jobs and excluded queues are skipped"
    );
    // At 600 the scheduled job is due and is promoted by the claim itself.
    let mut req = claim_req("n1", 1, at(600));
    req.exclude_queues = vec!["slow".into()];
    let claimed = store.job_claim(&req).await.unwrap();
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![later.id]
    );
    let running = &claimed[0];
    assert_eq!(
        (running.state, running.attempts, running.node.as_deref()),
        (JobState::Running, 1, Some("n1"))
    );
    assert_eq!(
        running.lease_expires_at,
        Some(at(600) + TimeDelta::seconds(30))
    );
    let events = store.event_list(None, later.id).await.unwrap();
    let states: Vec<_> = events.iter().map(|e| (e.seq, e.state)).collect();
    assert_eq!(
        states,
        vec![
            (1, JobState::Scheduled),
            (2, JobState::Queued),
            (3, JobState::Running)
        ]
    );
    assert!(
        store
            .job_claim(&claim_req("n1", 0, at(600)))
            .await
            .unwrap()
            .is_empty()
    );
    let rest = store
        .job_claim(&claim_req("n1", 10, at(600)))
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![other_queue.id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_racing_for_500_jobs_never_claim_one_twice() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let node_b = db.store().await;
    for i in 0..500 {
        insert(&*node_a, job(ada, at(i))).await;
    }
    let mut claimers = Vec::new();
    for (n, store) in [
        node_a.clone(),
        node_b.clone(),
        node_a.clone(),
        node_b.clone(),
    ]
    .into_iter()
    .enumerate()
    {
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .job_claim(&claim_req(&format!("node-{n}"), 7, at(1000)))
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut all = Vec::new();
    let mut per_claimer = Vec::new();
    for claimer in claimers {
        let mine = claimer.await.unwrap();
        per_claimer.push(mine.len());
        all.extend(mine);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 500, "claims per claimer: {per_claimer:?}");
    assert_eq!(unique.len(), 500);
    let running = store_count(&*node_b, JobState::Running).await;
    assert_eq!(running, 500);
    drop((node_a, node_b));
}

#[tokio::test]
async fn a_stale_attempt_cannot_complete_or_report_progress() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    insert(&*store, job(ada, t0())).await;
    let first = claim_one(&*store, "n1", at(1)).await;
    let stale = lease_of(&first);
    // The attempt fails with a retry due at 10; the job is claimed again by another node.
    let failed = store
        .job_complete(
            &stale,
            Outcome::Failed {
                failure: Failure::retryable("io", "broken pipe"),
                retry_at: Some(at(10)),
            },
            at(2),
        )
        .await
        .unwrap();
    assert_eq!((failed.state, failed.run_at), (JobState::Failed, at(10)));
    assert_eq!(failed.error.as_ref().unwrap().code, "io");
    assert!(failed.finished_at.is_none() && failed.node.is_none());
    let second = claim_one(&*store, "n2", at(10)).await;
    assert_eq!(second.attempts, 2);
    let done = Outcome::Succeeded(json!("late"));
    assert!(matches!(
        store.job_complete(&stale, done, at(11)).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.job_progress(&stale, 0.5, at(11)).await,
        Err(StoreError::LeaseLost)
    ));
    let fresh = lease_of(&second);
    store.job_progress(&fresh, 7.0, at(12)).await.unwrap();
    assert_eq!(
        store.job_get(None, first.id).await.unwrap().progress,
        1.0,
        "clamped"
    );
    let ok = store
        .job_complete(&fresh, Outcome::Succeeded(json!({"r": 1})), at(13))
        .await
        .unwrap();
    assert_eq!(
        (ok.state, ok.result.clone(), ok.finished_at),
        (JobState::Succeeded, Some(json!({"r": 1})), Some(at(13)))
    );
    // Completing twice is also stale.
    let again = store.job_complete(&fresh, Outcome::Cancelled, at(14)).await;
    assert!(matches!(again, Err(StoreError::LeaseLost)), "{again:?}");
    let events = store.event_list(None, first.id).await.unwrap();
    let trail: Vec<_> = events.iter().map(|e| (e.state, e.attempt)).collect();
    assert_eq!(
        trail,
        vec![
            (JobState::Queued, 0),
            (JobState::Running, 1),
            (JobState::Failed, 1),
            (JobState::Queued, 1),
            (JobState::Running, 2),
            (JobState::Succeeded, 2),
        ]
    );
    assert_eq!(events[2].message.as_deref(), Some("io: broken pipe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_node_reaches_the_worker_on_another() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let node_b = db.store().await;
    let mut on_b = node_b.subscribe();
    let mut on_a = node_a.subscribe();
    insert(&*node_a, job(ada, t0())).await;
    let running = claim_one(&*node_b, "b", at(1)).await;
    let (after, step) = node_a
        .job_cancel(Some(ada), running.id, at(2))
        .await
        .unwrap();
    assert_eq!(step, Step::CancelRequested);
    assert!(after.cancel_requested);
    assert_eq!(after.state, JobState::Running);
    wait_for(&mut on_b, Signal::CancelRequested(running.id)).await;
    // The writing node hears it locally, and only once (its own NOTIFY echo is skipped).
    wait_for(&mut on_a, Signal::CancelRequested(running.id)).await;
    let renewal = node_b
        .lease_renew(&[lease_of(&running)], at(3))
        .await
        .unwrap();
    assert_eq!(renewal.cancel_requested, vec![running.id]);
    let cancelled = node_b
        .job_complete(&lease_of(&running), Outcome::Cancelled, at(4))
        .await
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    // Node A hears of node B's write with every field of the event, as B's own
    // subscribers do: submitted 1, claimed 2, cancel requested 3, cancelled 4.
    let event = FeedEvent {
        job_id: running.id,
        owner: ada,
        job_type: kiln_domain::JobType::Echo,
        queue: running.queue.clone(),
        seq: 4,
        state: JobState::Cancelled,
        attempt: 1,
        at: at(4),
    };
    wait_for(&mut on_a, Signal::Changed(Arc::new(event))).await;
    // Cancelling a terminal job changes nothing.
    let (same, step) = node_a.job_cancel(None, running.id, at(5)).await.unwrap();
    assert_eq!((step, same.state), (Step::Unchanged, JobState::Cancelled));
    // A queued job is cancelled at once.
    let queued = insert(&*node_a, job(ada, at(6))).await;
    let (after, step) = node_a
        .job_cancel(Some(ada), queued.id, at(7))
        .await
        .unwrap();
    assert_eq!(
        (step, after.state, after.finished_at),
        (
            Step::To(JobState::Cancelled),
            JobState::Cancelled,
            Some(at(7))
        )
    );
    drop((node_a, node_b));
}

/// Waits up to 5 s for `want` on `rx`, skipping other signals.

#[tokio::test]
async fn a_poll_only_store_still_signals_its_own_subscribers() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let quiet = db
        .store_with(PgOptions {
            listen: false,
            ..PgOptions::default()
        })
        .await;
    let mut on_quiet = quiet.subscribe();
    let mut on_a = node_a.subscribe();
    insert(&*quiet, job(ada, t0())).await;
    wait_for(&mut on_quiet, Signal::JobAvailable).await;
    wait_for(&mut on_a, Signal::JobAvailable).await;
    // Another node's writes are not heard without LISTEN.
    insert(&*node_a, job(ada, t0())).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(signal) = on_quiet.try_recv() {
        assert!(
            !matches!(signal, Signal::Changed { .. } | Signal::JobAvailable),
            "{signal:?}"
        );
    }
}

#[tokio::test]
async fn leases_are_found_by_expiry_and_node_and_renewed_while_held() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    for i in 0..3 {
        insert(&*store, job(ada, at(i))).await;
    }
    let mut req = claim_req("n1", 2, at(10));
    req.lease_until = at(100);
    let on_n1 = store.job_claim(&req).await.unwrap();
    let mut req = claim_req("n2", 1, at(10));
    req.lease_until = at(200);
    let on_n2 = store.job_claim(&req).await.unwrap();
    let expired = store
        .lease_find(LeaseFilter::ExpiredAt(at(150)))
        .await
        .unwrap();
    let mut expected: Vec<_> = on_n1.iter().map(lease_of).collect();
    expected.sort_by_key(|l| l.job_id);
    let mut expired_sorted = expired.clone();
    expired_sorted.sort_by_key(|l| l.job_id);
    assert_eq!(expired_sorted, expected);
    let of_n2 = store
        .lease_find(LeaseFilter::Node("n2".into()))
        .await
        .unwrap();
    assert_eq!(of_n2, vec![lease_of(&on_n2[0])]);
    // Renew n1's leases plus a stale one.
    let mut leases: Vec<_> = on_n1.iter().map(lease_of).collect();
    let mut stale = lease_of(&on_n2[0]);
    stale.attempt += 1;
    leases.push(stale.clone());
    let renewal = store.lease_renew(&leases, at(500)).await.unwrap();
    assert_eq!(renewal.lost, vec![stale.job_id]);
    assert!(renewal.cancel_requested.is_empty());
    assert!(
        store
            .lease_find(LeaseFilter::ExpiredAt(at(400)))
            .await
            .unwrap()
            .len()
            == 1
    );
    assert_eq!(
        store
            .job_get(None, on_n1[0].id)
            .await
            .unwrap()
            .lease_expires_at,
        Some(at(500))
    );
}

#[tokio::test]
async fn due_work_is_promoted_and_the_next_due_time_is_known() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    assert_eq!(store.job_next_due().await.unwrap(), None);
    let mut ids = Vec::new();
    for delay in [300, 100, 200] {
        let mut new = job(ada, t0());
        new.run_at = at(delay);
        new.state = JobState::Scheduled;
        ids.push(insert(&*store, new).await.id);
    }
    assert_eq!(store.job_next_due().await.unwrap(), Some(at(100)));
    let mut signals = store.subscribe();
    assert_eq!(store.job_promote_due(at(250)).await.unwrap(), 2);
    wait_for(&mut signals, Signal::JobAvailable).await;
    assert_eq!(store.job_next_due().await.unwrap(), Some(at(300)));
    assert_eq!(
        store.job_get(None, ids[1]).await.unwrap().state,
        JobState::Queued
    );
    assert_eq!(
        store.job_get(None, ids[0]).await.unwrap().state,
        JobState::Scheduled
    );
    assert_eq!(store.job_promote_due(at(250)).await.unwrap(), 0);
}

#[tokio::test]
async fn a_retryable_failure_after_a_cancel_request_ends_cancelled() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    insert(&*store, job(ada, t0())).await;
    let running = claim_one(&*store, "n", at(1)).await;
    store
        .job_cancel(Some(ada), running.id, at(2))
        .await
        .unwrap();
    let ended = store
        .job_complete(
            &lease_of(&running),
            Outcome::Failed {
                failure: Failure::retryable("io", "interrupted"),
                retry_at: Some(at(10)),
            },
            at(3),
        )
        .await
        .unwrap();
    assert_eq!(
        (ended.state, ended.finished_at, ended.run_at),
        (JobState::Cancelled, Some(at(3)), running.run_at)
    );
    let last = store
        .event_list(None, running.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        last.message.as_deref(),
        Some("cancelled after io: interrupted")
    );
    assert_eq!(store.job_next_due().await.unwrap(), None);
}
