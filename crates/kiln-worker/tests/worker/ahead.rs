//! Claiming ahead of free slots (`WorkerConfig::claim_ahead`): outcomes stored by tasks of
//! their own while the slots go on, jobs that no slot started given back on shutdown and
//! when they waited too long, without spending their attempt.

use super::*;

/// The only slot's gate: the job of the payload `"hold"` waits for it, the others run.
fn hold_one() -> (tokio::sync::watch::Sender<bool>, Registry) {
    gate_for(Some(json!("hold")))
}

/// A fixture whose claims each take at least `delay`: the worker then measures claims
/// longer than its attempts whatever this machine's speed, and claims ahead.
async fn slow_claims(delay: Duration) -> Fixture {
    let mut f = Fixture::new().await;
    let mut store = super::flaky::Flaky::new(Arc::clone(&f.store), 0);
    store.claim_delay = delay;
    f.store = Arc::new(store);
    f
}

fn ahead_config(f: &Fixture, slots: usize, wait: Duration) -> WorkerConfig {
    WorkerConfig {
        max_concurrency: slots,
        claim_ahead: 8,
        claim_ahead_wait: wait,
        ..f.config()
    }
}

/// Submits `n` quick jobs and waits until they succeeded: the worker has then measured
/// short attempts and claims, so it claims ahead.
async fn warm_up(f: &Fixture, n: usize) {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(f.submit_type("echo", json!(i)).await);
    }
    for id in ids {
        f.wait_state(id, JobState::Succeeded).await;
    }
}

/// The events of job `id`, as (state, message).
async fn history(f: &Fixture, id: JobId) -> Vec<(JobState, String)> {
    let events = f.store.event_list(None, id).await.unwrap();
    events
        .into_iter()
        .map(|e| (e.state, e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn a_burst_of_short_jobs_runs_once_each_with_every_outcome_stored() {
    let f = slow_claims(Duration::from_millis(20)).await;
    let (_gate, registry) = hold_one();
    let worker = f
        .start(ahead_config(&f, 4, Duration::from_secs(60)), registry)
        .await;
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(f.submit_type("echo", json!(i)).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let job = f.wait_state(*id, JobState::Succeeded).await;
        assert_eq!(job.result, Some(json!(i)));
        assert_eq!(job.attempts, 1);
        let states: Vec<JobState> = history(&f, *id).await.into_iter().map(|e| e.0).collect();
        assert_eq!(
            states,
            [JobState::Queued, JobState::Running, JobState::Succeeded]
        );
    }
    worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(worker_held(&f).await, 0);
}

/// Jobs the store shows `running` (held by a node).
async fn worker_held(f: &Fixture) -> u64 {
    f.store
        .job_stats()
        .await
        .unwrap()
        .by_state
        .iter()
        .find(|(s, _)| *s == JobState::Running)
        .map_or(0, |(_, n)| *n)
}

/// Submits the held job, then `n` quick ones, and waits until all are claimed: the held
/// one on the only slot, the others ahead of it.
async fn block_the_slot(f: &Fixture, n: usize) -> (JobId, Vec<JobId>) {
    let held = f.submit_type("echo", json!("hold")).await;
    let mut behind = Vec::new();
    for i in 0..n {
        behind.push(f.submit_type("echo", json!(format!("behind {i}"))).await);
    }
    f.wait_state(held, JobState::Running).await;
    (held, behind)
}

#[tokio::test]
async fn jobs_claimed_ahead_go_back_to_the_queue_on_shutdown_with_their_attempt() {
    let f = slow_claims(Duration::from_millis(100)).await;
    let (_gate, registry) = hold_one();
    let worker = f
        .start(ahead_config(&f, 1, Duration::from_secs(600)), registry)
        .await;
    warm_up(&f, 5).await;
    let (held, behind) = block_the_slot(&f, 3).await;
    for id in &behind {
        f.wait_state(*id, JobState::Running).await;
    }
    worker.shutdown(Duration::from_millis(50)).await;
    for id in &behind {
        let job = f.get(*id).await;
        assert_eq!(job.state, JobState::Queued, "given back at once");
        assert_eq!(
            (job.attempts, job.max_attempts),
            (1, 4),
            "attempt not spent"
        );
        assert_eq!((job.node, job.started_at), (None, None));
        let last = history(&f, *id).await.pop().unwrap();
        assert_eq!(
            last,
            (JobState::Queued, "released before it started".into())
        );
    }
    let held = f.get(held).await;
    assert_eq!(held.state, JobState::Failed, "interrupted after the grace");
}

#[tokio::test]
async fn jobs_that_wait_too_long_for_a_slot_are_given_back_and_not_taken_ahead_again() {
    let f = slow_claims(Duration::from_millis(100)).await;
    let (gate, registry) = hold_one();
    let worker = f
        .start(ahead_config(&f, 1, Duration::from_millis(300)), registry)
        .await;
    warm_up(&f, 5).await;
    let (held, behind) = block_the_slot(&f, 3).await;
    for id in &behind {
        wait_until("a job behind to be given back", LONG, || async {
            let events = history(&f, *id).await;
            if events.iter().any(|e| e.1 == "released before it started") {
                Ok(())
            } else {
                Err(events)
            }
        })
        .await;
    }
    // Given back once, not claimed ahead again while the slot stays busy (a claim takes
    // 100 ms: several rounds had their chance).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in &behind {
        let job = f.get(*id).await;
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(
            history(&f, *id).await.len(),
            3,
            "submitted, claimed, released"
        );
    }
    gate.send_replace(true);
    f.wait_state(held, JobState::Succeeded).await;
    for id in &behind {
        let job = f.wait_state(*id, JobState::Succeeded).await;
        assert_eq!((job.attempts, job.max_attempts), (2, 4));
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_cancel_of_a_job_claimed_ahead_ends_it_without_running_it() {
    let f = slow_claims(Duration::from_millis(100)).await;
    let (gate, registry) = hold_one();
    let worker = f
        .start(ahead_config(&f, 1, Duration::from_secs(600)), registry)
        .await;
    warm_up(&f, 5).await;
    let (held, behind) = block_the_slot(&f, 2).await;
    f.wait_state(behind[0], JobState::Running).await;
    f.store
        .job_cancel(None, behind[0], f.clock.now())
        .await
        .unwrap();
    // Ended while the only slot is still busy: it never ran.
    let cancelled = f.wait_state(behind[0], JobState::Cancelled).await;
    assert_eq!(cancelled.result, None);
    let last = history(&f, behind[0]).await.pop().unwrap();
    assert_eq!(
        last,
        (JobState::Cancelled, "cancelled before it started".into())
    );
    gate.send_replace(true);
    f.wait_state(held, JobState::Succeeded).await;
    f.wait_state(behind[1], JobState::Succeeded).await;
    worker.shutdown(Duration::from_secs(5)).await;
}
