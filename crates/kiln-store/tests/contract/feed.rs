//! The feed of job events across jobs ([`Store::event_feed`]): per owner or for everyone,
//! in (time, job, seq) order, resumed from a cursor; and the events `Signal::Changed`
//! carries, which are the feed's own.

use std::sync::Arc;

use kiln_domain::{Job, JobState, JobType, QueueName, UserId};
use kiln_store::{FeedCursor, FeedEvent, Outcome, Signal, Store};
use serde_json::json;

use crate::helpers::*;

/// Before every event of the suite.
fn start() -> FeedCursor {
    FeedCursor::before(at(-1))
}

/// Every event of `jobs` as the feed should show it (from the per-job history), in feed
/// order.
async fn history(store: &Arc<dyn Store>, jobs: &[&Job]) -> Vec<FeedEvent> {
    let mut all = Vec::new();
    for job in jobs {
        for e in store.event_list(None, job.id).await.unwrap() {
            all.push(FeedEvent {
                job_id: job.id,
                owner: job.owner,
                job_type: job.job_type,
                queue: job.queue.clone(),
                seq: e.seq,
                state: e.state,
                attempt: e.attempt,
                at: e.at,
            });
        }
    }
    all.sort_by_key(FeedEvent::cursor);
    all
}

/// The feed of `owner` after `after`, at most `limit`.
async fn feed(
    store: &Arc<dyn Store>,
    owner: Option<UserId>,
    after: &FeedCursor,
    limit: u32,
) -> Vec<FeedEvent> {
    store.event_feed(owner, after, limit).await.unwrap()
}

/// Jobs of two owners, several submitted at the same instant (ties broken by job id),
/// with a few events each; returns (alice, bob, alice's jobs, bob's jobs).
async fn two_owners_jobs(store: &Arc<dyn Store>) -> (UserId, UserId, Vec<Job>, Vec<Job>) {
    let alice = user(store, "alice").await;
    let bob = user(store, "bob").await;
    let a1 = echo(store, alice, at(0)).await;
    let b1 = echo(store, bob, at(0)).await;
    let a2 = echo(store, alice, at(0)).await;
    let b2 = echo(store, bob, at(5)).await;
    let running = claim_one(store, "n1", at(10)).await;
    store
        .job_complete(&lease_of(&running), Outcome::Succeeded(json!(1)), at(20))
        .await
        .unwrap();
    // Two events of one job at one instant: ordered by seq.
    let a3 = echo(store, alice, at(30)).await;
    store.job_cancel(Some(alice), a3.id, at(30)).await.unwrap();
    store.job_cancel(Some(bob), b2.id, at(40)).await.unwrap();
    (alice, bob, vec![a1, a2, a3], vec![b1, b2])
}

pub async fn feed_lists_one_owners_events_in_order_and_resumes(store: Arc<dyn Store>) {
    let (alice, bob, alices, bobs) = two_owners_jobs(&store).await;
    let want = history(&store, &alices.iter().collect::<Vec<_>>()).await;
    assert!(want.len() >= 4, "{want:?}");
    assert_eq!(feed(&store, Some(alice), &start(), 100).await, want);
    let bobs_want = history(&store, &bobs.iter().collect::<Vec<_>>()).await;
    assert_eq!(feed(&store, Some(bob), &start(), 100).await, bobs_want);
    // Resuming after any event gives exactly the later ones, also through the cursor's
    // text form.
    for (i, event) in want.iter().enumerate() {
        let cursor: FeedCursor = event.cursor().to_string().parse().unwrap();
        assert_eq!(cursor, event.cursor());
        let rest = feed(&store, Some(alice), &cursor, 100).await;
        assert_eq!(rest, want[i + 1..], "after event {i}");
    }
    // A cursor at a time: the events from then on.
    let later: Vec<_> = want.iter().filter(|e| e.at >= at(20)).cloned().collect();
    assert_eq!(
        feed(&store, Some(alice), &FeedCursor::before(at(20)), 100).await,
        later
    );
    assert!(
        feed(&store, Some(UserId(9_999)), &start(), 100)
            .await
            .is_empty()
    );
}

pub async fn feed_pages_with_a_limit(store: Arc<dyn Store>) {
    let (alice, _, alices, _) = two_owners_jobs(&store).await;
    let want = history(&store, &alices.iter().collect::<Vec<_>>()).await;
    assert!(feed(&store, Some(alice), &start(), 0).await.is_empty());
    assert_eq!(feed(&store, Some(alice), &start(), 2).await, want[..2]);
    // Page by page, 2 at a time, from each page's last event.
    let (mut pages, mut after) = (Vec::new(), start());
    loop {
        let page = feed(&store, Some(alice), &after, 2).await;
        let Some(last) = page.last() else { break };
        after = last.cursor();
        pages.extend(page);
    }
    assert_eq!(pages, want);
}

pub async fn feed_without_owner_has_everyones_events(store: Arc<dyn Store>) {
    let (_, _, alices, bobs) = two_owners_jobs(&store).await;
    let jobs: Vec<&Job> = alices.iter().chain(&bobs).collect();
    let want = history(&store, &jobs).await;
    assert_eq!(feed(&store, None, &start(), 100).await, want);
    let middle = want[want.len() / 2].cursor();
    assert_eq!(
        feed(&store, None, &middle, 100).await,
        want[want.len() / 2 + 1..]
    );
    assert_eq!(feed(&store, None, &start(), 3).await, want[..3]);
}

/// The next `Changed` signal, skipping `JobAvailable`.
async fn next_change(rx: &mut tokio::sync::broadcast::Receiver<Signal>) -> Arc<FeedEvent> {
    loop {
        let signal = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("a signal within 10 s")
            .expect("an open signal channel");
        if let Signal::Changed(event) = signal {
            return event;
        }
    }
}

pub async fn changed_signals_carry_the_event_the_feed_shows(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mut rx = store.subscribe();
    let mut s = sub("echo");
    s.queue = Some("bulk".to_owned());
    let job = insert(&store, alice, s, at(0)).await;
    let running = claim_one(&store, "n1", at(10)).await;
    store
        .job_complete(&lease_of(&running), Outcome::Succeeded(json!(1)), at(20))
        .await
        .unwrap();
    let event = |seq, state, attempt, ms| FeedEvent {
        job_id: job.id,
        owner: alice,
        job_type: JobType::Echo,
        queue: QueueName::parse("bulk").unwrap(),
        seq,
        state,
        attempt,
        at: at(ms),
    };
    let want = vec![
        event(1, JobState::Queued, 0, 0),
        event(2, JobState::Running, 1, 10),
        event(3, JobState::Succeeded, 1, 20),
    ];
    let mut heard = Vec::new();
    for _ in 0..3 {
        heard.push((*next_change(&mut rx).await).clone());
    }
    assert_eq!(heard, want);
    assert_eq!(feed(&store, Some(alice), &start(), 10).await, want);
}
