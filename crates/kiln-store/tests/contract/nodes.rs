//! The node registry: one live process per node id, one object store per cluster, takeover
//! of a dead node's id, heartbeats, a clean leave, and the listing with running counts.
//!
//! Liveness is judged by the store's clock (the database server's on PostgreSQL, see
//! [`kiln_store::ClaimRequest::lease`]), so the checks use ttls of zero (dead at once by
//! any clock) or a day.

use std::sync::Arc;
use std::time::Duration;

use kiln_store::{NodeStart, Store, StoreError};

use crate::helpers::*;

const DAY: Duration = Duration::from_secs(86_400);

fn node(id: &str, ttl: Duration) -> NodeStart {
    NodeStart {
        id: id.to_owned(),
        instance: uuid::Uuid::now_v7(),
        host: "host-1".to_owned(),
        pid: 4242,
        version: "0.0.0".to_owned(),
        role: "serve".to_owned(),
        slots: 4,
        objects: "database".to_owned(),
        ttl,
        take_over: false,
    }
}

/// Registers `node`, which must succeed.
async fn register(store: &Arc<dyn Store>, node: &NodeStart) {
    let held = store.node_register(node, at(10)).await.unwrap();
    assert_eq!(held, None, "{node:?}");
}

fn conflict(result: kiln_store::Result<Option<String>>) -> String {
    match result {
        Err(StoreError::Conflict { what }) => what,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

pub async fn a_live_node_id_is_refused_and_a_dead_one_taken_over(store: Arc<dyn Store>) {
    let first = node("n1", DAY);
    register(&store, &first).await;
    // A second process with the same id, while the first is live: refused, and told who
    // holds it.
    let second = node("n1", DAY);
    let holder = store.node_register(&second, at(20)).await.unwrap();
    let holder = holder.expect("the id is held");
    assert!(
        holder.contains("4242") && holder.contains("host-1"),
        "{holder}"
    );
    let beats = |id: &'static str, instance| {
        let store = Arc::clone(&store);
        async move { store.node_heartbeat(id, instance, at(30)).await.unwrap() }
    };
    // The first keeps its registration.
    assert!(beats("n1", first.instance).await);
    assert!(!beats("n1", second.instance).await);
    // The same process registering again (a retried start) is no conflict.
    register(&store, &first).await;
    // A caller that knows the holder is dead (it holds the SQLite file's lock) takes over.
    let heir = NodeStart {
        take_over: true,
        ..node("n1", DAY)
    };
    register(&store, &heir).await;
    assert!(!beats("n1", first.instance).await);
    assert!(beats("n1", heir.instance).await);

    // A node whose registration lapsed (a ttl of zero: dead by the next instant of any
    // clock) is taken over; its heartbeats then say so.
    let lapsing = node("n2", Duration::ZERO);
    register(&store, &lapsing).await;
    let taker = node("n2", DAY);
    register(&store, &taker).await;
    assert!(!beats("n2", lapsing.instance).await);
    assert!(beats("n2", taker.instance).await);
}

pub async fn every_live_node_shares_one_object_store(store: Arc<dyn Store>) {
    register(&store, &node("n1", DAY)).await;
    let local = NodeStart {
        objects: "local:host-2:/tmp/kiln-objects-n2".to_owned(),
        ..node("n2", DAY)
    };
    let what = conflict(store.node_register(&local, at(20)).await);
    assert!(what.contains("`n1`") && what.contains("database"), "{what}");
    // The same store is fine; another is refused while any live node uses the first.
    register(&store, &node("n3", DAY)).await;
    let dead = NodeStart {
        objects: "s3://bucket/".to_owned(),
        ..node("n4", Duration::ZERO)
    };
    conflict(store.node_register(&dead, at(30)).await);
}

pub async fn nodes_are_listed_with_their_running_jobs_and_leave_cleanly(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let a = node("node-a", DAY);
    let b = NodeStart {
        role: "worker".to_owned(),
        slots: 8,
        ..node("node-b", Duration::ZERO)
    };
    register(&store, &a).await;
    register(&store, &b).await;
    for _ in 0..3 {
        echo(&store, alice, at(0)).await;
    }
    claim_one(&store, "node-a", at(20)).await;
    claim_one(&store, "node-a", at(20)).await;
    claim_one(&store, "node-b", at(20)).await;
    let listed = store.node_list(at(30)).await.unwrap();
    let seen: Vec<(&str, &str, u32, u32, bool)> = listed
        .iter()
        .map(|n| (n.id.as_str(), n.role.as_str(), n.slots, n.running, n.live))
        .collect();
    assert_eq!(
        seen,
        [
            ("node-a", "serve", 4, 2, true),
            ("node-b", "worker", 8, 1, false),
        ]
    );
    assert_eq!((listed[0].host.as_str(), listed[0].pid), ("host-1", 4242));
    assert!(listed[0].heartbeat_at >= listed[0].started_at);
    // A clean stop leaves the registry; another instance's leave changes nothing.
    store
        .node_deregister("node-a", uuid::Uuid::now_v7())
        .await
        .unwrap();
    assert_eq!(store.node_list(at(40)).await.unwrap().len(), 2);
    store.node_deregister("node-a", a.instance).await.unwrap();
    let left: Vec<String> = store
        .node_list(at(40))
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(left, ["node-b"]);
    // Its id is free at once.
    register(&store, &node("node-a", DAY)).await;
}

/// Shared token buckets: takes within the capacity pass, the next one is refused with the
/// time until it would pass, buckets are independent, and a cost above the capacity takes
/// a full bucket. Refill rates are far from the test's pace (one token a day, or a million
/// a second), so the checks hold by any clock.
pub async fn rate_buckets_take_within_their_capacity(store: Arc<dyn Store>) {
    let slow = kiln_store::RateBucket {
        name: "model:requests".to_owned(),
        capacity: 3.0,
        per_second: 1.0 / 86_400.0,
    };
    for n in 0..3 {
        let took = store.rate_take(&slow, 1.0, at(10 + n)).await.unwrap();
        assert_eq!(took, None, "take {n} is within the capacity");
    }
    let wait = store.rate_take(&slow, 1.0, at(20)).await.unwrap();
    let wait = wait.expect("the fourth take is refused");
    assert!(
        wait > Duration::from_secs(3_600),
        "a day per token: {wait:?}"
    );

    let other = kiln_store::RateBucket {
        name: "model:tokens".to_owned(),
        ..slow.clone()
    };
    assert_eq!(store.rate_take(&other, 100.0, at(30)).await.unwrap(), None);
    assert!(
        store
            .rate_take(&other, 1.0, at(31))
            .await
            .unwrap()
            .is_some()
    );

    let fast = kiln_store::RateBucket {
        name: "fast".to_owned(),
        capacity: 2.0,
        per_second: 1e9,
    };
    for n in 0..5 {
        let took = store.rate_take(&fast, 2.0, at(40 + n * 10)).await.unwrap();
        assert_eq!(took, None, "take {n}: refilled at once");
    }
}

/// The model's answers: kept by key, replaced by a later put, independent per key.
pub async fn model_answers_are_kept_by_key(store: Arc<dyn Store>) {
    let now = chrono::Utc::now();
    assert_eq!(store.answer_get("k1", now).await.unwrap(), None);
    let first = serde_json::json!({"summary": "one", "topics": ["a"]});
    store.answer_put("k1", &first, now).await.unwrap();
    assert_eq!(store.answer_get("k1", now).await.unwrap(), Some(first));
    assert_eq!(store.answer_get("k2", now).await.unwrap(), None);
    let second = serde_json::json!({"summary": "two"});
    store.answer_put("k1", &second, now).await.unwrap();
    assert_eq!(store.answer_get("k1", now).await.unwrap(), Some(second));
}
