//! Submitting, reading, listing and acting on jobs.

use std::time::Duration;

use hyper::{Method, StatusCode};
use kiln_server::ServerConfig;
use kiln_store::Outcome;
use serde_json::{Value, json};

use crate::helpers::{TestApp, ids, problem};

#[tokio::test]
async fn submit_answers_202_with_location_and_the_job_reads_back() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let resp = app
        .submit(
            &alice,
            json!({"type": "echo", "payload": {"x": 1}, "priority": 5, "name": "n1"}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());
    let job = resp.json();
    let id = job["id"].as_str().unwrap();
    assert_eq!(
        resp.header("location"),
        Some(format!("/api/v1/jobs/{id}").as_str())
    );
    assert_eq!(
        (
            &job["state"],
            &job["type"],
            &job["priority"],
            &job["queue"],
            &job["name"]
        ),
        (
            &json!("queued"),
            &json!("echo"),
            &json!(5),
            &json!("default"),
            &json!("n1")
        )
    );
    assert_eq!(
        app.get(&alice, &format!("/api/v1/jobs/{id}")).await.json(),
        job
    );

    let status = app
        .get(&alice, &format!("/api/v1/jobs/{id}/status"))
        .await
        .json();
    assert_eq!(
        (&status["id"], &status["state"]),
        (&json!(id), &json!("queued"))
    );
    assert!(status.get("payload").is_none(), "status is lightweight");

    let events = app
        .get(&alice, &format!("/api/v1/jobs/{id}/events"))
        .await
        .json();
    assert_eq!(events.as_array().unwrap().len(), 1);
    assert_eq!(events[0]["state"], "queued");

    let logs = app.get(&alice, &format!("/api/v1/jobs/{id}/logs")).await;
    assert_eq!(logs.status, StatusCode::OK);
    assert!(
        logs.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
}

#[tokio::test]
async fn a_delayed_job_is_scheduled() {
    let app = TestApp::spawn().await;
    let resp = app
        .submit(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 1}, "delay_ms": 60000}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED);
    assert_eq!(resp.json()["state"], "scheduled");
}

#[tokio::test]
async fn list_filters_sorts_and_pages_with_a_cursor() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let mut all = Vec::new();
    for (i, priority) in [3, -2, 7, 0, 5].into_iter().enumerate() {
        let queue = if i % 2 == 0 { "even" } else { "odd" };
        let body = json!({"type": "echo", "payload": i, "priority": priority, "queue": queue, "name": format!("job{i}")});
        all.push(app.submit_ok(&alice, body).await);
    }
    let ext = app
        .submit_ok(
            &alice,
            json!({"type": "external", "payload": {"name": "x"}}),
        )
        .await;
    app.submit_ok(&app.admin, json!({"type": "echo"})).await;

    let newest = app.get(&alice, "/api/v1/jobs").await.json();
    let mut expected: Vec<String> = all.iter().cloned().chain([ext.clone()]).collect();
    expected.reverse();
    assert_eq!(ids(&newest), expected, "newest first, only alice's");
    assert!(newest["next_cursor"].is_null());

    let oldest = app
        .get(&alice, "/api/v1/jobs?sort=created_at&type=echo")
        .await
        .json();
    assert_eq!(ids(&oldest), all);

    let by_priority = app
        .get(&alice, "/api/v1/jobs?sort=-priority&type=echo")
        .await
        .json();
    let priorities: Vec<i64> = by_priority["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["priority"].as_i64().unwrap())
        .collect();
    assert_eq!(priorities, [7, 5, 3, 0, -2]);

    let odd = app
        .get(&alice, "/api/v1/jobs?queue=odd&sort=created_at")
        .await
        .json();
    assert_eq!(ids(&odd), [all[1].clone(), all[3].clone()]);
    let named = app.get(&alice, "/api/v1/jobs?name=job2").await.json();
    assert_eq!(ids(&named), [all[2].clone()]);
    app.call(
        Method::POST,
        &alice,
        &format!("/api/v1/jobs/{}/cancel", all[0]),
    )
    .await;
    let cancelled = app
        .get(&alice, "/api/v1/jobs?state=cancelled,dead")
        .await
        .json();
    assert_eq!(ids(&cancelled), [all[0].clone()]);
    let future = app
        .get(&alice, "/api/v1/jobs?created_after=2999-01-01T00:00:00Z")
        .await
        .json();
    assert!(ids(&future).is_empty());
    let past = app
        .get(&alice, "/api/v1/jobs?created_before=2000-01-01T00:00:00Z")
        .await
        .json();
    assert!(ids(&past).is_empty());

    // Pages of two, oldest first, following next_cursor to the end.
    let mut seen = Vec::new();
    let mut path = "/api/v1/jobs?sort=created_at&limit=2".to_owned();
    loop {
        let page = app.get(&alice, &path).await.json();
        assert!(ids(&page).len() <= 2);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/jobs?sort=created_at&limit=2&cursor={c}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = all.clone();
    expected.push(ext);
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn bad_list_parameters_are_400_naming_the_parameter() {
    let app = TestApp::spawn().await;
    for (query, field) in [
        ("limit=101", "limit"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("state=queued,bogus", "state"),
        ("sort=name", "sort"),
        ("cursor=garbage", "cursor"),
        ("created_after=yesterday", "created_after"),
    ] {
        let resp = app.get(&app.admin, &format!("/api/v1/jobs?{query}")).await;
        assert_eq!(
            problem(&resp, 400, "invalid_request")["field"],
            field,
            "{query}"
        );
    }
    let typo = app.get(&app.admin, "/api/v1/jobs?stat=queued").await;
    let body = problem(&typo, 400, "invalid_query");
    assert!(body["detail"].as_str().unwrap().contains("stat"), "{body}");
    let offset = app
        .get(
            &app.admin,
            "/api/v1/jobs?created_after=2000-01-01T00:00:00+00:00",
        )
        .await;
    assert_eq!(offset.status, StatusCode::OK, "{}", offset.text());
    let resp = app.get(&app.admin, "/api/v1/jobs?limit=100").await;
    assert_eq!(resp.status, StatusCode::OK);
}

#[tokio::test]
async fn another_users_job_is_404_on_every_route() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let bob = app.user("bob", "client").await;
    let id = app
        .submit_ok(
            &alice,
            json!({"type": "external", "payload": {"name": "x"}}),
        )
        .await;
    let base = format!("/api/v1/jobs/{id}");
    let checks = [
        (Method::GET, base.clone(), None),
        (Method::GET, format!("{base}/status"), None),
        (Method::GET, format!("{base}/events"), None),
        (Method::GET, format!("{base}/logs"), None),
        (Method::POST, format!("{base}/cancel"), None),
        (Method::POST, format!("{base}/retry"), None),
        (Method::PUT, format!("{base}/retry"), None),
        (
            Method::PATCH,
            base.clone(),
            Some(json!({"state": "running"})),
        ),
        (Method::DELETE, base.clone(), None),
    ];
    for (method, path, body) in checks {
        let resp = match &body {
            Some(b) => app.send(method.clone(), &bob, &path, b).await,
            None => app.call(method.clone(), &bob, &path).await,
        };
        problem(&resp, 404, "not_found");
        // Exactly like an unknown id.
        let unknown = path.replace(&id, "0190b6a2-0000-7000-8000-000000000000");
        let resp = match &body {
            Some(b) => app.send(method.clone(), &bob, &unknown, b).await,
            None => app.call(method.clone(), &bob, &unknown).await,
        };
        problem(&resp, 404, "not_found");
    }
    let bobs = app.get(&bob, "/api/v1/jobs").await.json();
    assert!(ids(&bobs).is_empty());
    let job = app.get(&alice, &base).await.json();
    assert_eq!(job["state"], "queued", "nothing bob did touched it");
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_job() {
    let app = TestApp::spawn().await;
    let send = |body: Value, key: &'static str| {
        let app = &app;
        async move {
            app.client
                .request(Method::POST, "/api/v1/jobs")
                .bearer(Some(&app.admin))
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
        }
    };
    let first = send(json!({"type": "echo", "payload": {"a": 1, "b": 2}}), "k1").await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    // Same request, keys in another order: the same job.
    let again = send(json!({"payload": {"b": 2, "a": 1}, "type": "echo"}), "k1").await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], first.json()["id"]);
    let other = send(json!({"type": "echo", "payload": {"a": 2}}), "k1").await;
    problem(&other, 409, "conflict");
    let fresh = send(json!({"type": "echo", "payload": {"a": 1, "b": 2}}), "k2").await;
    assert_ne!(fresh.json()["id"], first.json()["id"]);
    let page = app.get(&app.admin, "/api/v1/jobs").await.json();
    assert_eq!(ids(&page).len(), 2);
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    let app = TestApp::spawn_with(ServerConfig {
        max_queued: Some(2),
        ..ServerConfig::default()
    })
    .await;
    app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    let resp = app.submit(&app.admin, json!({"type": "echo"})).await;
    problem(&resp, 429, "queue_full");
    assert_eq!(resp.header("retry-after"), Some("5"));
}

#[tokio::test]
async fn cancel_of_a_queued_job_cancels_it_and_of_a_terminal_one_changes_nothing() {
    let app = TestApp::spawn().await;
    let id = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    let path = format!("/api/v1/jobs/{id}/cancel");
    let resp = app.call(Method::POST, &app.admin, &path).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let job = resp.json();
    assert_eq!(job["state"], "cancelled");
    let again = app.call(Method::POST, &app.admin, &path).await;
    assert_eq!((again.status, again.json()), (StatusCode::OK, job));
}

#[tokio::test]
async fn cancel_of_a_running_job_answers_202_when_it_does_not_stop_in_time() {
    let app = TestApp::spawn_with(ServerConfig {
        cancel_wait: Duration::from_millis(100),
        ..ServerConfig::default()
    })
    .await;
    let id = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    let leases = app.claim_all().await;
    let resp = app
        .call(
            Method::POST,
            &app.admin,
            &format!("/api/v1/jobs/{id}/cancel"),
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());
    let job = resp.json();
    assert_eq!(
        (&job["state"], &job["cancel_requested"]),
        (&json!("running"), &json!(true))
    );

    // A worker that stops within the wait gets a 200 with the cancelled job.
    let app2 = TestApp::spawn_with(ServerConfig {
        cancel_wait: Duration::from_secs(5),
        ..ServerConfig::default()
    })
    .await;
    let id2 = app2.submit_ok(&app2.admin, json!({"type": "echo"})).await;
    let lease = app2.claim_all().await.remove(0);
    let store = app2.db.store.clone();
    let worker = tokio::spawn(async move {
        let mut signals = kiln_store::Store::subscribe(store.as_ref());
        while let Ok(s) = signals.recv().await {
            if matches!(s, kiln_store::Signal::CancelRequested(_)) {
                break;
            }
        }
        let now = kiln_domain::Clock::now(&kiln_domain::SystemClock);
        kiln_store::Store::job_complete(store.as_ref(), &lease, Outcome::Cancelled, now)
            .await
            .expect("abort");
    });
    let resp = app2
        .call(
            Method::POST,
            &app2.admin,
            &format!("/api/v1/jobs/{id2}/cancel"),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.json()["state"], "cancelled");
    worker.await.expect("the fake worker");
    drop(leases);
}

#[tokio::test]
async fn retry_is_409_unless_failed_or_dead_and_requeues_a_dead_job() {
    let app = TestApp::spawn().await;
    let id = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    let path = format!("/api/v1/jobs/{id}/retry");
    let resp = app.call(Method::POST, &app.admin, &path).await;
    let body = problem(&resp, 409, "illegal_transition");
    assert!(
        body["detail"].as_str().unwrap().contains("queued"),
        "{body}"
    );

    app.kill(&id).await;
    let resp = app.call(Method::PUT, &app.admin, &path).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let job = resp.json();
    assert_eq!(job["state"], "queued");
    assert_eq!(
        job["max_attempts"], 4,
        "one attempt used, three more allowed"
    );
}

#[tokio::test]
async fn patch_reports_legal_moves_of_external_jobs_only() {
    let app = TestApp::spawn().await;
    let ext = app
        .submit_ok(
            &app.admin,
            json!({"type": "external", "payload": {"name": "etl"}}),
        )
        .await;
    let path = format!("/api/v1/jobs/{ext}");
    let running = app
        .send(
            Method::PATCH,
            &app.admin,
            &path,
            &json!({"state": "running"}),
        )
        .await;
    assert_eq!(running.status, StatusCode::OK, "{}", running.text());
    assert_eq!(running.json()["state"], "running");
    let done = app
        .send(
            Method::PATCH,
            &app.admin,
            &path,
            &json!({"state": "succeeded", "result": {"rows": 3}}),
        )
        .await;
    assert_eq!(done.json()["state"], "succeeded");
    assert_eq!(done.json()["result"], json!({"rows": 3}));
    let illegal = app
        .send(
            Method::PATCH,
            &app.admin,
            &path,
            &json!({"state": "running"}),
        )
        .await;
    problem(&illegal, 409, "illegal_transition");

    let failing = app
        .submit_ok(
            &app.admin,
            json!({"type": "external", "payload": {"name": "f"}}),
        )
        .await;
    let fpath = format!("/api/v1/jobs/{failing}");
    app.send(
        Method::PATCH,
        &app.admin,
        &fpath,
        &json!({"state": "running"}),
    )
    .await;
    let dead = app
        .send(
            Method::PATCH,
            &app.admin,
            &fpath,
            &json!({"state": "dead", "error": "disk full"}),
        )
        .await;
    assert_eq!(dead.json()["error"]["message"], "disk full");

    let stopped = app
        .submit_ok(
            &app.admin,
            json!({"type": "external", "payload": {"name": "c"}}),
        )
        .await;
    let spath = format!("/api/v1/jobs/{stopped}");
    app.send(
        Method::PATCH,
        &app.admin,
        &spath,
        &json!({"state": "running"}),
    )
    .await;
    let cancelled = app
        .call(Method::POST, &app.admin, &format!("{spath}/cancel"))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text());
    assert_eq!(
        cancelled.json()["state"],
        "cancelled",
        "a running external job has nothing to interrupt: it stops at once"
    );

    let echo = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    let resp = app
        .send(
            Method::PATCH,
            &app.admin,
            &format!("/api/v1/jobs/{echo}"),
            &json!({"state": "running"}),
        )
        .await;
    problem(&resp, 409, "conflict");
    let bad = app
        .send(
            Method::PATCH,
            &app.admin,
            &path,
            &json!({"state": "melted"}),
        )
        .await;
    assert_eq!(problem(&bad, 400, "invalid_request")["field"], "state");
}

#[tokio::test]
async fn delete_removes_terminal_jobs_and_refuses_others() {
    let app = TestApp::spawn().await;
    let id = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    let path = format!("/api/v1/jobs/{id}");
    problem(
        &app.call(Method::DELETE, &app.admin, &path).await,
        409,
        "conflict",
    );
    app.run(&id, Outcome::Succeeded(json!("done"))).await;
    let resp = app.call(Method::DELETE, &app.admin, &path).await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    assert!(resp.body.is_empty());
    problem(&app.get(&app.admin, &path).await, 404, "not_found");
}

#[tokio::test]
async fn admin_jobs_shows_everyones_jobs_to_operators_only() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let oscar = app.user("oscar", "operator").await;
    let a = app.submit_ok(&alice, json!({"type": "echo"})).await;
    let o = app.submit_ok(&oscar, json!({"type": "echo"})).await;
    problem(
        &app.get(&alice, "/api/v1/admin/jobs").await,
        403,
        "forbidden",
    );
    let all = app
        .get(&oscar, "/api/v1/admin/jobs?sort=created_at")
        .await
        .json();
    assert_eq!(ids(&all), [a, o.clone()]);
    let own = app.get(&oscar, "/api/v1/jobs").await.json();
    assert_eq!(ids(&own), [o], "operators' own list is their own jobs");
}

#[tokio::test]
async fn job_types_lists_schemas_and_policies() {
    let app = TestApp::spawn().await;
    let types = app.get(&app.admin, "/api/v1/job-types").await.json();
    let sleep = types
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "sleep")
        .expect("sleep is listed");
    assert_eq!(sleep["schema"]["required"], json!(["ms"]));
    assert_eq!(sleep["policy"]["max_attempts"], 3);
    assert!(sleep["description"].is_string());
}

#[tokio::test]
async fn a_client_submitting_too_fast_gets_429_and_operators_are_not_limited() {
    let config = kiln_server::ServerConfig {
        submit_rate: Some(kiln_server::rate::SubmitRate::parse("1/h", 3).unwrap()),
        ..kiln_server::ServerConfig::default()
    };
    let app = TestApp::spawn_with(config).await;
    let alice = app.user("alice", "client").await;
    let olga = app.user("olga", "operator").await;
    let job = json!({"type": "echo", "payload": 1});
    for _ in 0..3 {
        assert_eq!(
            app.submit(&alice, job.clone()).await.status,
            StatusCode::ACCEPTED
        );
    }
    let refused = app.submit(&alice, job.clone()).await;
    let body = problem(&refused, 429, "rate_limited");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 60 && wait <= 3600, "{wait} {body}");
    // Nothing was stored for the refused one.
    let mine = app.get(&alice, "/api/v1/jobs").await.json();
    assert_eq!(mine["items"].as_array().unwrap().len(), 3);
    // Others have their own allowance; operators and admins none.
    let bob = app.user("bob", "client").await;
    assert_eq!(
        app.submit(&bob, job.clone()).await.status,
        StatusCode::ACCEPTED
    );
    for _ in 0..5 {
        assert_eq!(
            app.submit(&olga, job.clone()).await.status,
            StatusCode::ACCEPTED
        );
        assert_eq!(
            app.submit(&app.admin, job.clone()).await.status,
            StatusCode::ACCEPTED
        );
    }
}
