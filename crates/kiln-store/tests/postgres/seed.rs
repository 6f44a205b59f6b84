//! The benchmark's bulk seed (`PgStore::job_seed`, `kiln bench --database`): the same rows
//! as the SQLite seed, readable through every ordinary read, and the check that keeps the
//! bench off a database holding jobs.

use kiln_store::ListQuery;

use super::*;

#[tokio::test]
async fn seeded_jobs_are_ordinary_succeeded_jobs_round_robin_over_their_owners() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    // No Kiln tables yet, then an empty Kiln schema: no jobs either way.
    assert!(!PgStore::holds_jobs(&db.url).await.unwrap());
    let store = db.store().await;
    assert!(!PgStore::holds_jobs(&db.url).await.unwrap());
    let mut owners = Vec::new();
    for name in ["ada", "bob", "cy"] {
        owners.push(add_user(&*store, name).await);
    }
    // One more than a chunk (50,000): the second statement goes on where the first ended.
    let count = 50_005;

    let written = store.job_seed(&owners, count, t0()).await.unwrap();

    assert_eq!(written, count);
    assert!(PgStore::holds_jobs(&db.url).await.unwrap());
    let stats = store.job_stats().await.unwrap();
    assert_eq!(stats.total_submitted, count);
    assert_eq!(store_count(&*store, JobState::Succeeded).await, count);
    let page = |owner| ListQuery {
        owner,
        limit: 20,
        ..ListQuery::default()
    };
    // Job i is created at t0 − count + i ms and belongs to owners[i % 3]: the newest
    // (i = 50,004) is ada's, then cy's, then bob's.
    for (owner, ms) in [(owners[0], -1), (owners[2], -2), (owners[1], -3)] {
        let jobs = store.job_list(&page(Some(owner))).await.unwrap().items;
        assert_eq!(jobs.len(), 20);
        assert!(jobs.iter().all(|j| j.owner == owner));
        assert_eq!(jobs[0].created_at, at(ms));
        assert_eq!(jobs[1].created_at, at(ms - 3));
    }
    let everyone = store.job_list(&page(None)).await.unwrap().items;
    assert_eq!(everyone[0].owner, owners[0]);
    assert_eq!(everyone[1].created_at, at(-2));

    let newest = store
        .job_get(Some(owners[0]), everyone[0].id)
        .await
        .unwrap();
    assert_eq!(newest.state, JobState::Succeeded);
    assert_eq!(newest.job_type, kiln_domain::JobType::Echo);
    assert_eq!(newest.payload, json!({}));
    assert_eq!(newest.result, Some(json!({})));
    assert_eq!((newest.attempts, newest.max_attempts), (1, 3));
    assert_eq!(newest.started_at, Some(at(-1)));
    assert_eq!(newest.finished_at, Some(at(0)));
    // A UUIDv7 of its creation millisecond, so ids sort like real ones.
    let id = newest.id.0;
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
    let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
    assert_eq!(
        i64::try_from(secs).unwrap() * 1000 + i64::from(nanos / 1_000_000),
        at(-1).timestamp_millis()
    );
    let events = store.event_list(Some(owners[0]), newest.id).await.unwrap();
    let seen: Vec<_> = events.iter().map(|e| (e.seq, e.state, e.at)).collect();
    assert_eq!(
        seen,
        [
            (1, JobState::Queued, at(-1)),
            (2, JobState::Succeeded, at(0))
        ]
    );
    // Another owner sees none of it.
    assert!(store.job_get(Some(owners[1]), newest.id).await.is_err());

    assert!(store.job_seed(&[], 1, t0()).await.is_err());
}
