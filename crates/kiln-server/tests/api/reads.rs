//! Job reads for pollers: `ETag`/`304`, the light status with large results linked, and
//! the long-poll `status?wait=…`.

use hyper::{Method, StatusCode};
use kiln_store::Outcome;
use serde_json::{Value, json};

use crate::helpers::{TestApp, problem};

async fn conditional_get(app: &TestApp, path: &str, tag: &str) -> kiln_testkit::TestResponse {
    app.client
        .request(Method::GET, path)
        .bearer(Some(&app.admin))
        .header("if-none-match", tag)
        .send()
        .await
}

#[tokio::test]
async fn job_and_status_reads_answer_304_until_the_job_changes() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": 1}))
        .await;
    for path in [
        format!("/api/v1/jobs/{id}"),
        format!("/api/v1/jobs/{id}/status"),
    ] {
        let first = app.get(&app.admin, &path).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.header("cache-control"), Some("private, no-cache"));
        let tag = first.header("etag").expect("an ETag").to_owned();
        let again = conditional_get(&app, &path, &tag).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.text().is_empty());
        assert_eq!(again.header("etag"), Some(tag.as_str()));
        let other = conditional_get(&app, &path, "\"0000000000000000\"").await;
        assert_eq!(other.status, StatusCode::OK);
    }
    let tags = [
        app.get(&app.admin, &format!("/api/v1/jobs/{id}")).await,
        app.get(&app.admin, &format!("/api/v1/jobs/{id}/status"))
            .await,
    ]
    .map(|r| r.header("etag").unwrap().to_owned());
    app.run(&id, Outcome::Succeeded(json!(1))).await;
    for (path, tag) in [
        (format!("/api/v1/jobs/{id}"), &tags[0]),
        (format!("/api/v1/jobs/{id}/status"), &tags[1]),
    ] {
        let changed = conditional_get(&app, &path, tag).await;
        assert_eq!(changed.status, StatusCode::OK, "{path}");
        assert_eq!(changed.json()["state"], "succeeded");
        assert_ne!(changed.header("etag"), Some(tag.as_str()));
    }
}

#[tokio::test]
async fn status_inlines_small_results_and_links_large_ones() {
    let app = TestApp::spawn().await;
    let small = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    let none = problem(
        &app.get(&app.admin, &format!("/api/v1/jobs/{small}/result"))
            .await,
        404,
        "no_result",
    );
    assert!(
        none["detail"].as_str().unwrap().contains("queued"),
        "{none}"
    );
    app.run(&small, Outcome::Succeeded(json!({"n": 1}))).await;
    let large = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    let big = json!({"text": "x".repeat(11_000)});
    app.run(&large, Outcome::Succeeded(big.clone())).await;

    let s = app
        .get(&app.admin, &format!("/api/v1/jobs/{small}/status"))
        .await
        .json();
    assert_eq!(s["result"], json!({"n": 1}));
    assert!(s.get("result_url").is_none(), "{s}");

    let resp = app
        .get(&app.admin, &format!("/api/v1/jobs/{large}/status"))
        .await;
    assert!(
        resp.text().len() < 1000,
        "a light status: {}",
        resp.text().len()
    );
    let s = resp.json();
    assert!(s.get("result").is_none(), "{s}");
    let url = s["result_url"].as_str().expect("a link to the result");
    assert_eq!(url, format!("/api/v1/jobs/{large}/result"));
    let result = app.get(&app.admin, url).await;
    assert_eq!(result.status, StatusCode::OK);
    assert_eq!(result.json(), big);
    assert!(result.header("etag").is_some());

    // Another user sees neither.
    let mallory = app.user("mallory", "client").await;
    problem(&app.get(&mallory, url).await, 404, "not_found");
}

#[tokio::test]
async fn a_long_poll_answers_when_the_commit_moves_the_job_on() {
    let app = TestApp::spawn().await;
    let id = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    // No worker runs here: without the commit's signal the poll would answer `queued`
    // after its 20 s.
    let poll = {
        let (client, token) = (app.client.clone(), app.admin.clone());
        let path = format!("/api/v1/jobs/{id}/status?wait=20s");
        tokio::spawn(async move { client.get(Some(&token), &path).await })
    };
    app.run(&id, Outcome::Succeeded(json!("done"))).await;
    let resp = poll.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["state"], "succeeded");

    // `state_not` names what to wait out: a claim ends a wait on `queued`.
    let id = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    let poll = {
        let (client, token) = (app.client.clone(), app.admin.clone());
        let path = format!("/api/v1/jobs/{id}/status?wait=20&state_not=queued");
        tokio::spawn(async move { client.get(Some(&token), &path).await })
    };
    app.claim_all().await;
    assert_eq!(poll.await.unwrap().json()["state"], "running");
}

#[tokio::test]
async fn a_long_poll_with_nothing_to_report_answers_at_the_end_of_its_wait() {
    let app = TestApp::spawn().await;
    let id = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    let resp = app
        .get(&app.admin, &format!("/api/v1/jobs/{id}/status?wait=200ms"))
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["state"], "queued");
    // A job that is already past the states waited out answers at once.
    app.run(&id, Outcome::Succeeded(json!(1))).await;
    let resp = app
        .get(&app.admin, &format!("/api/v1/jobs/{id}/status?wait=25s"))
        .await;
    assert_eq!(resp.json()["state"], "succeeded");
}

#[tokio::test]
async fn bad_long_poll_parameters_are_400_problems() {
    let app = TestApp::spawn().await;
    let id = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    for (query, field) in [
        ("wait=1h", "wait"),
        ("wait=soon", "wait"),
        ("state_not=queued", "state_not"),
        ("wait=1s&state_not=sleeping", "state_not"),
    ] {
        let resp = app
            .get(&app.admin, &format!("/api/v1/jobs/{id}/status?{query}"))
            .await;
        let body = problem(&resp, 400, "invalid_request");
        assert!(body.to_string().contains(field), "{query}: {body}");
    }
    let resp = app
        .get(&app.admin, &format!("/api/v1/jobs/{id}/status?wiat=1s"))
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
}

#[tokio::test]
async fn lists_leave_out_large_payloads_and_results_with_a_link() {
    let app = TestApp::spawn().await;
    let big = "x".repeat(5000);
    let small = app
        .submit_ok(
            &app.admin,
            json!({"type": "echo", "payload": {"s": "small"}}),
        )
        .await;
    let large = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": {"s": big}}))
        .await;
    let page = app.get(&app.admin, "/api/v1/jobs?limit=10").await.json();
    let entry = |id: &str| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(entry(&small)["payload"], json!({"s": "small"}));
    assert!(entry(&small).get("elided").is_none());
    let listed = entry(&large);
    assert_eq!(listed["payload"], Value::Null);
    let bytes = serde_json::to_string(&json!({"s": big})).unwrap().len();
    assert_eq!(
        listed["elided"],
        json!({"payload_bytes": bytes, "url": format!("/api/v1/jobs/{large}")})
    );
    // The job's own route has it whole.
    let whole = app
        .get(&app.admin, &format!("/api/v1/jobs/{large}"))
        .await
        .json();
    assert_eq!(whole["payload"]["s"], big);

    // A large result, finished: absent from the list entry, named in `elided`.
    app.run(&small, Outcome::Succeeded(json!({"r": "y".repeat(6000)})))
        .await;
    let page = app
        .get(&app.admin, "/api/v1/jobs?limit=10&state=succeeded")
        .await
        .json();
    let listed = &page["items"][0];
    assert_eq!(listed["id"], small);
    assert!(listed.get("result").is_none_or(Value::is_null), "{listed}");
    assert_eq!(listed["elided"]["result_bytes"], 6000 + 8);
    assert!(listed["elided"].get("payload_bytes").is_none());
}

#[tokio::test]
async fn events_come_a_page_at_a_time_with_a_link_to_the_next() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "external", "payload": {"name": "loop"}}),
        )
        .await;
    let path = format!("/api/v1/jobs/{id}");
    for state in ["running", "failed", "queued", "running", "failed", "queued"] {
        let resp = app
            .send(Method::PATCH, &app.admin, &path, &json!({"state": state}))
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{state}: {}", resp.text());
    }
    let all = app.get(&app.admin, &format!("{path}/events")).await;
    assert!(all.header("link").is_none());
    let all = all.json();
    let seqs: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 7, "{all}");

    let mut next = Some(format!("{path}/events?limit=3"));
    let mut paged = Vec::new();
    let mut pages = 0;
    while let Some(url) = next.take() {
        let resp = app.get(&app.admin, &url).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        let items = resp.json();
        assert!(items.as_array().unwrap().len() <= 3);
        paged.extend(
            items
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_i64().unwrap()),
        );
        next = resp.header("link").map(|l| {
            l.strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .map(|(url, _)| url.to_owned())
                .unwrap_or_else(|| panic!("{l}"))
        });
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, seqs);
    for bad in ["limit=0", "limit=1001", "after=x", "limit=-1", "colour=red"] {
        let resp = app.get(&app.admin, &format!("{path}/events?{bad}")).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            resp.text()
        );
    }
}
