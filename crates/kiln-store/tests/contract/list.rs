//! `job_list`: filters, the four sorts, keyset paging with ties.

use std::collections::HashSet;
use std::sync::Arc;

use kiln_domain::{Job, JobId, JobState};
use kiln_store::{Cursor, ListQuery, Sort, Store};

use crate::helpers::*;

/// Every page of `query` (with `limit` per page), concatenated.
async fn all_pages(store: &Arc<dyn Store>, query: &ListQuery) -> Vec<Job> {
    let mut query = query.clone();
    let mut items = Vec::new();
    for _ in 0..1_000 {
        let page = store.job_list(&query).await.unwrap();
        assert!(page.items.len() <= query.limit as usize);
        items.extend(page.items.into_iter().map(tree));
        match page.next_cursor {
            Some(cursor) => {
                // Cursors survive their string form (the API hands them out as strings).
                assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
                query.cursor = Some(cursor);
            }
            None => return items,
        }
    }
    panic!("paging did not end");
}

fn ids<J>(jobs: &[Job<J>]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

/// `jobs` in `sort` order, ties broken by id in the same direction.
fn expected(jobs: &[Job], sort: Sort) -> Vec<JobId> {
    let mut jobs = jobs.to_vec();
    let key = |j: &Job| match sort {
        Sort::CreatedAsc | Sort::CreatedDesc => j.created_at.timestamp_millis(),
        Sort::PriorityAsc | Sort::PriorityDesc => i64::from(j.priority),
    };
    jobs.sort_by_key(|j| (key(j), *j.id.0.as_bytes()));
    if matches!(sort, Sort::CreatedDesc | Sort::PriorityDesc) {
        jobs.reverse();
    }
    ids(&jobs)
}

fn query(limit: u32) -> ListQuery {
    ListQuery {
        limit,
        ..ListQuery::default()
    }
}

pub async fn list_filters_by_state_type_queue_name_and_created_range(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let echo_a = echo(&store, alice, at(0)).await;
    let mut s = sub("sleep");
    s.queue = Some("batch".to_owned());
    s.name = Some("report".to_owned());
    let sleep_batch = insert(&store, alice, s, at(10)).await;
    let mut s = sub("echo");
    s.delay_ms = Some(1_000);
    s.name = Some("report".to_owned());
    let scheduled = insert(&store, alice, s, at(20)).await;
    let ext = insert(&store, alice, sub("external"), at(30)).await;
    store.job_cancel(None, ext.id, at(31)).await.unwrap();

    let run = |q: ListQuery| {
        let store = Arc::clone(&store);
        async move {
            let mut got = ids(&all_pages(&store, &q).await);
            got.sort_by_key(|id| *id.0.as_bytes());
            got
        }
    };
    let set = |jobs: &[&Job]| {
        let mut v: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        v.sort_by_key(|id| *id.0.as_bytes());
        v
    };

    assert_eq!(
        run(query(100)).await,
        set(&[&echo_a, &sleep_batch, &scheduled, &ext])
    );
    assert_eq!(
        run(ListQuery {
            states: vec![JobState::Queued],
            ..query(100)
        })
        .await,
        set(&[&echo_a, &sleep_batch])
    );
    assert_eq!(
        run(ListQuery {
            states: vec![JobState::Scheduled, JobState::Cancelled],
            ..query(100)
        })
        .await,
        set(&[&scheduled, &ext])
    );
    assert_eq!(
        run(ListQuery {
            job_type: Some("echo".to_owned()),
            ..query(100)
        })
        .await,
        set(&[&echo_a, &scheduled])
    );
    assert_eq!(
        run(ListQuery {
            queue: Some("batch".to_owned()),
            ..query(100)
        })
        .await,
        set(&[&sleep_batch])
    );
    assert_eq!(
        run(ListQuery {
            name: Some("report".to_owned()),
            ..query(100)
        })
        .await,
        set(&[&sleep_batch, &scheduled])
    );
    // created_after is inclusive, created_before exclusive.
    assert_eq!(
        run(ListQuery {
            created_after: Some(at(10)),
            created_before: Some(at(30)),
            ..query(100)
        })
        .await,
        set(&[&sleep_batch, &scheduled])
    );
    assert_eq!(
        run(ListQuery {
            name: Some("report".to_owned()),
            job_type: Some("echo".to_owned()),
            states: vec![JobState::Scheduled],
            ..query(100)
        })
        .await,
        set(&[&scheduled])
    );
    assert!(
        run(ListQuery {
            queue: Some("nowhere".to_owned()),
            ..query(100)
        })
        .await
        .is_empty()
    );
}

pub async fn list_owner_scoping(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let a = echo(&store, alice, at(0)).await;
    let b = echo(&store, bob, at(1)).await;
    let mine = all_pages(
        &store,
        &ListQuery {
            owner: Some(alice),
            ..query(10)
        },
    )
    .await;
    assert_eq!(ids(&mine), vec![a.id]);
    let theirs = all_pages(
        &store,
        &ListQuery {
            owner: Some(bob),
            ..query(10)
        },
    )
    .await;
    assert_eq!(ids(&theirs), vec![b.id]);
    // Default sort: newest first.
    assert_eq!(ids(&all_pages(&store, &query(10)).await), vec![b.id, a.id]);
}

pub async fn every_sort_orders_and_pages_without_gaps_or_duplicates(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    // 23 jobs over 4 distinct creation instants and 3 priorities: many ties on both keys.
    let mut jobs = Vec::new();
    for i in 0..23_i64 {
        let mut s = sub("echo");
        s.priority = Some([-5, 0, 5][(i % 3) as usize]);
        jobs.push(insert(&store, alice, s, at((i % 4) * 1_000)).await);
    }
    for sort in [
        Sort::CreatedAsc,
        Sort::CreatedDesc,
        Sort::PriorityAsc,
        Sort::PriorityDesc,
    ] {
        let want = expected(&jobs, sort);
        for limit in [1, 2, 3, 5, 7, 23, 100] {
            let got = ids(&all_pages(
                &store,
                &ListQuery {
                    sort,
                    ..query(limit)
                },
            )
            .await);
            let unique: HashSet<JobId> = got.iter().copied().collect();
            assert_eq!(unique.len(), got.len(), "duplicates with {sort:?}/{limit}");
            assert_eq!(got, want, "order or gaps with {sort:?}, limit {limit}");
        }
    }
    // A last full page has no cursor; a page with more behind it has one.
    let page = store
        .job_list(&ListQuery {
            sort: Sort::CreatedAsc,
            ..query(23)
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 23);
    assert_eq!(page.next_cursor, None);
    let page = store
        .job_list(&ListQuery {
            sort: Sort::CreatedAsc,
            ..query(22)
        })
        .await
        .unwrap();
    let last = page.items.last().unwrap();
    assert_eq!(
        page.next_cursor,
        Some(Cursor {
            key: last.created_at.timestamp_millis(),
            id: last.id
        })
    );
}

pub async fn cursor_paging_is_stable_when_jobs_are_inserted_meanwhile(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mut jobs = Vec::new();
    for i in 0..10_i64 {
        jobs.push(echo(&store, alice, at(i / 3 * 100)).await);
    }
    let want = expected(&jobs, Sort::CreatedDesc);
    let mut q = query(4);
    let first = store.job_list(&q).await.unwrap();
    let mut got = ids(&first.items);
    // New jobs before and after the cursor position must not disturb the rest.
    echo(&store, alice, at(10_000)).await;
    echo(&store, alice, at(100)).await;
    q.cursor = first.next_cursor;
    let rest = all_pages(&store, &q).await;
    got.extend(ids(&rest));
    let newcomers: Vec<JobId> = got
        .iter()
        .copied()
        .filter(|id| !want.contains(id))
        .collect();
    got.retain(|id| want.contains(id));
    assert_eq!(got, want);
    assert!(
        newcomers.len() <= 1,
        "only the older newcomer may appear: {newcomers:?}"
    );
}
