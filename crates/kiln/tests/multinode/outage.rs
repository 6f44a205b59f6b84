//! The database crashes under load (`pg_ctl stop -m immediate` on a server the test owns)
//! and comes back 5 s later: every node reconnects by itself, `readyz` reports the outage
//! meanwhile, and every acknowledged job ends exactly once (none lost, no outcome twice).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use hyper::{Method, StatusCode};
use kiln_testkit::cluster::OwnedPostgres;
use kiln_testkit::wait_until;
use serde_json::json;

use super::*;

/// Whether `GET /readyz` answers 200.
async fn ready(client: &Client) -> bool {
    client.get(None, "/readyz").await.status == StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_under_load_loses_and_doubles_nothing() {
    let Some(pg) = OwnedPostgres::start() else {
        return;
    };
    // Leases longer than the outage: an attempt running through it keeps its lease, and
    // its outcome is kept and written once the database is back.
    let env = [("KILN_LEASE", "20s")];
    let a = Node::launch(&pg.url, "serve", "node-a", 4, &env);
    let b = Node::launch(&pg.url, "worker", "node-b", 4, &env);
    let client = a.client();
    let token = client.login("admin", PASSWORD).await;

    // A steady stream of submissions through the crash; only the 202s count.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0u32));
    let submitter = {
        let (client, token) = (client.clone(), token.clone());
        let (acked, refused) = (Arc::clone(&acked), Arc::clone(&refused));
        tokio::spawn(async move {
            for _ in 0..400 {
                let resp = client
                    .send_json(
                        Method::POST,
                        Some(&token),
                        "/api/v1/jobs",
                        &json!({"type": "sleep", "payload": {"ms": 20}}),
                    )
                    .await;
                if resp.status == StatusCode::ACCEPTED {
                    let id = resp.json()["id"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().push(id);
                } else {
                    *refused.lock().unwrap() += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_until("100 acknowledged submissions", LONG, || async {
        let n = acked.lock().unwrap().len();
        if n >= 100 { Ok(()) } else { Err(n) }
    })
    .await;

    pg.crash();
    wait_until("readyz to report the outage", LONG, || async {
        if ready(&client).await {
            Err("ready")
        } else {
            Ok(())
        }
    })
    .await;
    // The outage lasts 5 s of wall time, whatever the machine's speed: the point is that
    // pools, the listener and the workers' retries all see it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!ready(&client).await, "ready while the database is down");
    pg.up().unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    wait_until("readyz to recover", LONG, || async {
        if ready(&client).await {
            Ok(())
        } else {
            Err("not ready")
        }
    })
    .await;
    // API timestamps are UTC in this form, so they compare as text.
    let recovered = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    submitter.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    let refused = *refused.lock().unwrap();
    assert!(refused > 0, "no submission met the outage");
    assert_eq!(acked.iter().collect::<HashSet<_>>().len(), acked.len());
    eprintln!(
        "{} submissions acknowledged, {refused} refused during the outage",
        acked.len()
    );
    for id in &acked {
        let job = wait_state(&client, &token, id, "succeeded").await;
        let evs = events(&client, &token, id).await;
        let outcomes = evs
            .iter()
            .filter(|e| e["state"] == "succeeded" || e["state"] == "dead")
            .count();
        assert_eq!(outcomes, 1, "{job}\n{evs:?}");
        let starts = evs.iter().filter(|e| e["state"] == "running").count();
        assert_eq!(starts as u64, job["attempts"].as_u64().unwrap(), "{evs:?}");
    }
    // After the outage a new job runs, and both nodes heartbeat again: each reconnected
    // by itself.
    let after = submit(&client, &token, json!({"type": "echo"})).await;
    wait_state(&client, &token, &after, "succeeded").await;
    wait_until("both nodes to heartbeat after the outage", LONG, || async {
        let nodes = client.get(Some(&token), "/api/v1/admin/nodes").await.json();
        let fresh: Vec<String> = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["live"] == true && n["heartbeat_at"].as_str() > Some(&recovered))
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect();
        if fresh == ["node-a", "node-b"] {
            Ok(())
        } else {
            Err(nodes)
        }
    })
    .await;
    drop((a, b));
}
