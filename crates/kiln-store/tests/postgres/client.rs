//! The client side: users and tokens, inserts and keyset lists, idempotency, the queue cap, retry/report/delete.

use super::*;

#[tokio::test]
async fn users_and_tokens_round_trip() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let dup = store
        .user_insert(
            NewUser {
                username: "ada".into(),
                password_hash: "x".into(),
                role: Role::Admin,
            },
            t0(),
        )
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
    assert_eq!(store.user_count().await.unwrap(), 1);
    let record = store.user_by_name("ada").await.unwrap().unwrap();
    assert_eq!(record.user.id, ada);
    assert_eq!(record.password_hash, "hash");
    assert!(store.user_by_name("bob").await.unwrap().is_none());
    let updated = store
        .user_update(
            ada,
            UserPatch {
                role: Some(Role::Operator),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.role, Role::Operator);
    assert!(matches!(
        store.user_update(UserId(999), UserPatch::default()).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.user_list().await.unwrap().len(), 1);

    let token = store
        .token_insert(
            NewToken {
                user: ada,
                hash: vec![1; 32],
                kind: TokenKind::Api,
                name: "ci".into(),
                expires_at: Some(at(60_000)),
            },
            t0(),
        )
        .await
        .unwrap();
    let (user, found) = store.token_lookup(&[1; 32], at(1)).await.unwrap().unwrap();
    assert_eq!((user.id, found.id), (ada, token.id));
    assert!(
        store
            .token_lookup(&[1; 32], at(60_000))
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    assert_eq!(
        store.token_list(ada, TokenKind::Api).await.unwrap(),
        vec![token.clone()]
    );
    assert!(
        store
            .token_list(ada, TokenKind::Session)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .user_update(
            ada,
            UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(
        store.token_lookup(&[1; 32], at(1)).await.unwrap().is_none(),
        "disabled user"
    );
    assert!(matches!(
        store.token_delete(UserId(999), token.id).await,
        Err(StoreError::NotFound)
    ));
    store.token_delete(ada, token.id).await.unwrap();
    store.token_delete_hash(&[9; 32]).await.unwrap();
    assert!(
        store
            .token_list(ada, TokenKind::Api)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn jobs_insert_get_and_list_in_keyset_pages() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let bob = add_user(&*store, "bob").await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let mut new = job(ada, at(i));
        new.priority = Priority::parse(i % 5).unwrap();
        ids.push(insert(&*store, new).await.id);
    }
    insert(&*store, job(bob, at(100))).await;
    let got = store.job_get(Some(ada), ids[0]).await.unwrap();
    assert_eq!(
        (got.state, got.created_at, got.payload.clone()),
        (JobState::Queued, at(0), json!({"n": 1}))
    );
    assert!(matches!(
        store.job_get(Some(bob), ids[0]).await,
        Err(StoreError::NotFound)
    ));
    for sort in [
        Sort::CreatedDesc,
        Sort::CreatedAsc,
        Sort::PriorityDesc,
        Sort::PriorityAsc,
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<Cursor> = None;
        loop {
            let page = store
                .job_list(&ListQuery {
                    owner: Some(ada),
                    sort,
                    limit: 10,
                    cursor,
                    ..ListQuery::default()
                })
                .await
                .unwrap();
            seen.extend(page.items.iter().map(|j| (j.id, j.created_at, j.priority)));
            match page.next_cursor {
                // The cursor survives its string form, as the API passes it.
                Some(next) => cursor = Some(Cursor::decode(&next.encode()).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25, "{sort:?}");
        assert_eq!(seen.iter().map(|s| s.0).collect::<HashSet<_>>().len(), 25);
        let mut expected = seen.clone();
        match sort {
            Sort::CreatedDesc => expected.sort_by_key(|a| Reverse((a.1, a.0))),
            Sort::CreatedAsc => expected.sort_by_key(|a| (a.1, a.0)),
            Sort::PriorityDesc => expected.sort_by_key(|a| Reverse((a.2, a.0))),
            Sort::PriorityAsc => expected.sort_by_key(|a| (a.2, a.0)),
        }
        assert_eq!(seen, expected, "{sort:?}");
    }
    let filtered = store
        .job_list(&ListQuery {
            states: vec![JobState::Running, JobState::Queued],
            job_type: Some("echo".into()),
            queue: Some("default".into()),
            created_after: Some(at(10)),
            created_before: Some(at(20)),
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(filtered.items.len(), 10);
    assert!(filtered.next_cursor.is_none());
}

#[tokio::test]
async fn idempotency_keys_are_scoped_per_owner_and_checked_by_hash() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let bob = add_user(&*store, "bob").await;
    let first = store
        .job_insert(job(ada, t0()), keyed("k", 1))
        .await
        .unwrap();
    assert!(matches!(first, Inserted::Created(_)));
    let again = store
        .job_insert(job(ada, t0()), keyed("k", 1))
        .await
        .unwrap();
    assert!(matches!(&again, Inserted::Existing(j) if j.id == first.job().id));
    let other = store.job_insert(job(ada, t0()), keyed("k", 2)).await;
    assert!(
        matches!(other, Err(StoreError::Conflict { .. })),
        "{other:?}"
    );
    let bobs = store
        .job_insert(job(bob, t0()), keyed("k", 1))
        .await
        .unwrap();
    assert!(matches!(bobs, Inserted::Created(_)));
    // Racing requests with one key make one job.
    let racers = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.job_insert(job(ada, t0()), keyed("race", 7)).await })
    });
    let mut ids = HashSet::new();
    for racer in racers {
        ids.insert(racer.await.unwrap().unwrap().job().id);
    }
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn max_queued_refuses_when_full() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let capped = InsertOptions {
        idempotency: None,
        max_queued: Some(2),
    };
    for _ in 0..2 {
        store
            .job_insert(job(ada, t0()), capped.clone())
            .await
            .unwrap();
    }
    let full = store.job_insert(job(ada, t0()), capped).await;
    assert!(
        matches!(full, Err(StoreError::QueueFull { limit: 2 })),
        "{full:?}"
    );
}

#[tokio::test]
async fn retry_report_and_delete_follow_the_state_machine() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    insert(&*store, job(ada, t0())).await;
    let running = claim_one(&*store, "n", at(1)).await;
    let not_terminal = store.job_delete(Some(ada), running.id).await;
    assert!(
        matches!(not_terminal, Err(StoreError::Conflict { .. })),
        "{not_terminal:?}"
    );
    let illegal = store.job_retry(Some(ada), running.id, 3, at(2)).await;
    assert!(
        matches!(illegal, Err(StoreError::Illegal(_))),
        "{illegal:?}"
    );
    let dead = store
        .job_complete(
            &lease_of(&running),
            Outcome::Failed {
                failure: Failure::permanent("bad", "input"),
                retry_at: None,
            },
            at(3),
        )
        .await
        .unwrap();
    assert_eq!(
        (dead.state, dead.finished_at),
        (JobState::Dead, Some(at(3)))
    );
    let retried = store.job_retry(Some(ada), dead.id, 3, at(4)).await.unwrap();
    assert_eq!(
        (retried.state, retried.max_attempts, retried.run_at),
        (JobState::Queued, 4, at(4))
    );
    assert!(retried.finished_at.is_none());

    let echo_report = store
        .job_report(
            Some(ada),
            dead.id,
            kiln_store::Report {
                state: JobState::Running,
                result: None,
                error: None,
            },
            at(5),
        )
        .await;
    assert!(
        matches!(echo_report, Err(StoreError::Conflict { .. })),
        "{echo_report:?}"
    );
    let ext = insert(
        &*store,
        new_job(ada, "external", json!({"name": "x"}), t0()),
    )
    .await;
    let report = |state, result| kiln_store::Report {
        state,
        result,
        error: None,
    };
    let r = store
        .job_report(Some(ada), ext.id, report(JobState::Running, None), at(6))
        .await
        .unwrap();
    assert_eq!((r.state, r.attempts), (JobState::Running, 1));
    let illegal = store
        .job_report(Some(ada), ext.id, report(JobState::Scheduled, None), at(7))
        .await;
    assert!(
        matches!(illegal, Err(StoreError::Illegal(_))),
        "{illegal:?}"
    );
    let r = store
        .job_report(
            Some(ada),
            ext.id,
            report(JobState::Succeeded, Some(json!(42))),
            at(8),
        )
        .await
        .unwrap();
    assert_eq!((r.state, r.result), (JobState::Succeeded, Some(json!(42))));
    store.log_append(ext.id, "bye\n", at(9)).await.unwrap();
    store.job_delete(Some(ada), ext.id).await.unwrap();
    assert!(matches!(
        store.event_list(None, ext.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.job_delete(Some(ada), ext.id).await,
        Err(StoreError::NotFound)
    ));
}

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
