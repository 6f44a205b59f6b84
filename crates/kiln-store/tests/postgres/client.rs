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
