//! A store alone on its database sends no notifications; a store that joins is heard by
//! the others before it is handed out, and a store whose peers are gone stops sending.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// Waits (at most 10 s) until `store` sends to other nodes or stops, as `want` says.
async fn wait_notifies(store: &PgStore, want: bool) {
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        while store.notifies_others() != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "notifies_others never became {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_alone_sends_nothing_and_a_newcomer_hears_every_write_after_it_connects() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    assert!(
        !node_a.notifies_others(),
        "the only listener of its database"
    );
    for i in 0..5 {
        insert(&*node_a, job(ada, at(i))).await;
    }
    assert_eq!(node_a.notifications_sent(), 0);

    // Node A keeps writing while node B connects; every job whose insert began after B
    // was handed out and subscribed must reach B.
    let subscribed = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (node_a, subscribed) = (Arc::clone(&node_a), Arc::clone(&subscribed));
        async move {
            let mut expected = Vec::new();
            for i in 0.. {
                let after = subscribed.load(Ordering::SeqCst);
                let id = insert(&*node_a, job(ada, at(i))).await.id;
                if after {
                    expected.push(id);
                    if expected.len() == 40 {
                        return expected;
                    }
                }
            }
            unreachable!()
        }
    });
    let node_b = db.store().await;
    // Before B was handed out, A heard its hello: nothing A commits from now on is lost.
    assert!(
        node_a.notifies_others(),
        "node B was handed out before node A heard it"
    );
    let mut on_b = node_b.subscribe();
    subscribed.store(true, Ordering::SeqCst);
    let expected = writer.await.unwrap();
    let mut missing: HashSet<_> = expected.into_iter().collect();
    let heard_all = tokio::time::timeout(Duration::from_secs(5), async {
        while !missing.is_empty() {
            match on_b.recv().await {
                Ok(Signal::Changed(e)) => {
                    missing.remove(&e.job_id);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("signal channel closed: {e}"),
            }
        }
    })
    .await;
    assert!(
        heard_all.is_ok(),
        "{} jobs of node A never reached node B",
        missing.len()
    );
    assert!(node_a.notifies_others() && node_b.notifies_others());
    assert!(node_a.notifications_sent() > 0);
    drop((db, node_a, node_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_stops_sending_once_the_others_are_gone_and_starts_again_for_the_next() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let node_b = db.store().await;
    assert!(
        node_a.notifies_others(),
        "B said hello before it was handed out"
    );
    drop(node_b);
    // A counts the other listeners every second: B's connection is gone.
    wait_notifies(&node_a, false).await;
    // A poll-only store cannot hear anyone join, so it always sends.
    let quiet = db
        .store_with(PgOptions {
            listen: false,
            ..PgOptions::default()
        })
        .await;
    assert!(quiet.notifies_others());
    // And a new listener is heard by A again before it is handed out.
    let node_c = db.store().await;
    assert!(node_a.notifies_others());
    let mut on_c = node_c.subscribe();
    let id = insert(&*node_a, job(ada, t0())).await.id;
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Signal::Changed(e)) = on_c.recv().await
                && e.job_id == id
            {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "node C never heard node A's job");
    drop((db, node_a, node_c, quiet));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_is_handed_out_only_once_every_listener_has_answered_its_hello() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    // A listener that answers only when the test says so.
    let mut config: tokio_postgres::Config = db.url.parse().unwrap();
    config.application_name(kiln_store::postgres::LISTENER_NAME);
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let (heard, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = heard.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("LISTEN kiln_jobs").await.unwrap();

    let newcomer = tokio::spawn({
        let url = db.url.clone();
        async move { PgStore::connect(&url, PgOptions::default()).await.unwrap() }
    });
    let hello = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("no hello within 10 s")
        .unwrap();
    let origin = hello.strip_suffix("|hello").expect(&hello).to_owned();
    // Unanswered, the newcomer waits (up to its limit of 2 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !newcomer.is_finished(),
        "handed out before its hello was answered"
    );
    client
        .execute(
            "SELECT pg_notify('kiln_jobs', $1)",
            &[&format!("test|ack:{origin}")],
        )
        .await
        .unwrap();
    let store = tokio::time::timeout(Duration::from_secs(1), newcomer)
        .await
        .expect("the answer did not release the newcomer")
        .unwrap();
    assert!(store.notifies_others());
    drop((db, store));
}
