//! The worker side: claims and their races across nodes, fencing, cross-node cancel, leases, promotion.

use super::*;

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
        .lease_renew(
            &[lease_of(&running)],
            at(3),
            std::time::Duration::from_secs(30),
        )
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
    // A third node that listens: once it has heard node A's write, so would `quiet` have.
    let listener = db.store_with(PgOptions::default()).await;
    let mut on_quiet = quiet.subscribe();
    let mut on_a = node_a.subscribe();
    let mut on_listener = listener.subscribe();
    insert(&*quiet, job(ada, t0())).await;
    wait_for(&mut on_quiet, Signal::JobAvailable).await;
    wait_for(&mut on_a, Signal::JobAvailable).await;
    wait_for(&mut on_listener, Signal::JobAvailable).await;
    // Another node's writes are not heard without LISTEN.
    insert(&*node_a, job(ada, t0())).await;
    wait_for(&mut on_listener, Signal::JobAvailable).await;
    while let Ok(signal) = on_quiet.try_recv() {
        assert!(
            !matches!(signal, Signal::Changed { .. } | Signal::JobAvailable),
            "{signal:?}"
        );
    }
}
