//! `pdf_analyze` through the whole service: `POST /pdf-processing`, the local extraction and
//! its `text.json`, refusals that leave nothing behind, hostile files, and the model calls
//! against a fake Gemini on loopback (answers, 429 with a delay, 5xx and time-outs, a
//! malformed answer, the circuit breaker deferring jobs, the rate budget, kept answers).

use std::time::Duration;

use hyper::{Method, StatusCode};
use kiln_kernels::pdf::sample;
use kiln_testkit::gemini::{FakeGemini, Reply};
use kiln_testkit::{Part, wait_until};
use serde_json::{Value, json};

use crate::helpers::{Opts, TestApp};

const LONG: Duration = Duration::from_secs(60);
const KEY: &str = "test-api-key";
const ANSWER: &str =
    r#"{"summary":"A generated test document.","topics":["testing","pdf"],"language":"en"}"#;

/// `POST /pdf-processing` with `pdf` and the text fields `fields`.
async fn process(
    app: &TestApp,
    token: &str,
    pdf: &[u8],
    fields: &[(&str, &str)],
) -> kiln_testkit::TestResponse {
    let mut parts: Vec<Part<'_>> = fields.iter().map(|(k, v)| Part::text(k, v)).collect();
    parts.push(Part::file("file", "doc.pdf", "application/pdf", pdf));
    app.client
        .request(Method::POST, "/api/v1/pdf-processing")
        .bearer(Some(token))
        .multipart(&parts)
        .send()
        .await
}

/// Processes `pdf` and returns the job id (asserting 202).
async fn process_ok(app: &TestApp, token: &str, pdf: &[u8]) -> String {
    let resp = process(app, token, pdf, &[]).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());
    resp.json()["id"].as_str().expect("an id").to_owned()
}

async fn files(app: &TestApp, token: &str) -> Vec<Value> {
    let resp = app.client.get(Some(token), "/api/v1/files").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.json().as_array().cloned().unwrap_or_default()
}

async fn events(app: &TestApp, token: &str, id: &str) -> Vec<String> {
    let resp = app
        .client
        .get(Some(token), &format!("/api/v1/jobs/{id}/events"))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.json()
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{} {}",
                e["state"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// A node whose `pdf_analyze` asks `fake`, retrying after 100-200 ms.
async fn with_model(fake: &FakeGemini, extra: &[&str]) -> TestApp {
    let mut flags: Vec<String> = ["--gemini-api-key", KEY, "--gemini-base-url"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    flags.push(fake.base_url());
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    let toml = "[types.pdf_analyze]\nbackoff_base_ms = 100\nbackoff_cap_ms = 200\n".to_owned();
    TestApp::spawn_with(Opts {
        flags,
        toml: Some(toml),
        ..Opts::default()
    })
    .await
}

#[tokio::test]
async fn a_pdf_is_stored_extracted_and_its_text_kept_without_a_model() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let pdf = sample::text_pdf(5, 120, 7);
    let fields = [
        ("prompt", "What is it about?"),
        ("name", "report"),
        ("priority", "5"),
    ];
    let resp = process(&app, &alice, &pdf, &fields).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());
    let job = resp.json();
    assert_eq!(
        (job["type"].as_str(), job["name"].as_str()),
        (Some("pdf_analyze"), Some("report"))
    );
    assert_eq!(job["priority"], 5);
    assert_eq!(job["payload"]["prompt"], "What is it about?");
    let id = job["id"].as_str().expect("id").to_owned();
    let stored = files(&app, &alice).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["id"], job["payload"]["file_id"]);
    assert_eq!(stored[0]["size"], pdf.len());

    let done = app.wait_state(&alice, &id, "succeeded", LONG).await;
    let result = &done["result"];
    assert_eq!(result["pages"], 5);
    let words: Vec<Vec<&str>> = sample::text_pdf_words(5, 120, 7);
    let total: usize = words.iter().map(Vec::len).sum();
    assert_eq!(result["words"], total, "{result}");
    assert_eq!(result["language"]["code"], "eng", "{result}");
    assert!(!result["top_terms"].as_array().expect("terms").is_empty());
    assert_eq!(result["model"]["called"], false);

    // The text of every page, as the artifact the result links.
    let link = result["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["name"] == "text.json"))
        .expect("text.json is linked")
        .clone();
    let resp = app
        .client
        .get(Some(&alice), link["url"].as_str().expect("url"))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let text = resp.json();
    let pages = text["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 5);
    for (page, expected) in pages.iter().zip(&words) {
        let got: Vec<&str> = page["text"]
            .as_str()
            .expect("text")
            .split_whitespace()
            .collect();
        assert_eq!(&got, expected, "page {}", page["page"]);
    }
}

#[tokio::test]
async fn refused_submissions_leave_nothing_behind() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let bob = app.user("bob", "client").await;

    // Not a PDF by content, whatever its name and type say.
    let resp = process(&app, &alice, b"id,amount\n1,2\n", &[]).await;
    assert_eq!(
        resp.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        resp.text()
    );
    assert_eq!(resp.json()["code"], "not_pdf");
    // A bad field after the file: the stored file is deleted again.
    let pdf = sample::text_pdf(1, 20, 1);
    let resp = process(&app, &alice, &pdf, &[]).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());
    for (field, value) in [
        ("priority", "high"),
        ("priority", "500"),
        ("queue", "no spaces allowed"),
        ("colour", "red"),
    ] {
        let mut parts = vec![Part::file("file", "doc.pdf", "application/pdf", &pdf)];
        parts.push(Part::text(field, value));
        let resp = app
            .client
            .request(Method::POST, "/api/v1/pdf-processing")
            .bearer(Some(&bob))
            .multipart(&parts)
            .send()
            .await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{field}={value}: {}",
            resp.text()
        );
    }
    assert!(
        files(&app, &bob).await.is_empty(),
        "bob's refused uploads were all deleted"
    );
    let resp = app
        .client
        .request(Method::POST, "/api/v1/pdf-processing")
        .bearer(Some(&bob))
        .multipart(&[Part::text("prompt", "no file")])
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());

    // `POST /jobs` with a file that is not a PDF, or someone else's.
    let resp = app
        .client
        .request(Method::POST, "/api/v1/files")
        .bearer(Some(&bob))
        .multipart(&[Part::file(
            "file",
            "fake.pdf",
            "application/pdf",
            b"not a pdf at all",
        )])
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let text_file = resp.json()["id"].as_str().expect("id").to_owned();
    let resp = app
        .submit(
            &bob,
            json!({"type": "pdf_analyze", "payload": {"file_id": text_file}}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    assert!(resp.text().contains("not a PDF"), "{}", resp.text());
    let alices = files(&app, &alice).await;
    let resp = app
        .submit(
            &bob,
            json!({"type": "pdf_analyze", "payload": {"file_id": alices[0]["id"]}}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    let resp = app
        .submit(
            &bob,
            json!({"type": "pdf_analyze", "payload": {"file_id": text_file, "prompt": " "}}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
}

#[tokio::test]
async fn hostile_pdfs_fail_for_good_with_a_clear_reason() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    for (name, pdf, codes) in [
        ("flate bomb", sample::flate_bomb(), &["pdf_too_large"][..]),
        ("encrypted", sample::encrypted(), &["pdf_encrypted"][..]),
        ("truncated", sample::truncated(), &["pdf_unreadable"][..]),
        (
            "deep nesting",
            sample::deep_nesting(),
            &["pdf_unreadable", "pdf_too_large"][..],
        ),
    ] {
        let id = process_ok(&app, &alice, &pdf).await;
        let dead = app.wait_state(&alice, &id, "dead", LONG).await;
        let code = dead["error"]["code"].as_str().unwrap_or_default();
        assert!(codes.contains(&code), "{name}: {}", dead["error"]);
        assert_eq!(dead["error"]["retryable"], false, "{name}");
        assert_eq!(
            dead["attempts"], 1,
            "{name}: a permanent failure is not retried"
        );
    }
}

#[tokio::test]
async fn the_model_is_asked_once_and_its_answer_kept_for_a_retry() {
    let fake = FakeGemini::start(KEY).await;
    fake.set_default(Reply::Answer(ANSWER.to_owned()));
    let app = with_model(&fake, &[]).await;
    let alice = app.user("alice", "client").await;
    let pdf = sample::text_pdf(3, 50, 2);
    let resp = process(&app, &alice, &pdf, &[("prompt", "Who wrote it?")]).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());
    let id = resp.json()["id"].as_str().expect("id").to_owned();
    let done = app.wait_state(&alice, &id, "succeeded", LONG).await;
    let model = &done["result"]["model"];
    assert_eq!(model["called"], true, "{model}");
    assert_eq!(model["cached"], false);
    assert_eq!(
        model["analysis"],
        serde_json::from_str::<Value>(ANSWER).expect("json")
    );
    assert!(model["prompt_tokens"].as_u64() > Some(0), "{model}");
    assert!(model["output_tokens"].as_u64() > Some(0), "{model}");
    assert!(model["latency_ms"].as_f64().is_some());
    assert_eq!(done["result"]["pages"], 3);

    // What the fake received: the key, the PDF inline, the prompt, JSON asked for.
    let calls: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(":generateContent"))
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header("x-goog-api-key"), Some(KEY));
    let body = calls[0].json.clone().expect("a JSON body");
    let parts = &body["contents"][0]["parts"];
    assert_eq!(parts[0]["inlineData"]["mimeType"], "application/pdf");
    assert_eq!(parts[1]["text"], "Who wrote it?");
    assert_eq!(
        body["generationConfig"]["responseMimeType"],
        "application/json"
    );

    // A manual retry finds the answer kept: the model is not asked again.
    let resp = app
        .client
        .request(Method::POST, &format!("/api/v1/jobs/{id}/retry"))
        .bearer(Some(&alice))
        .send()
        .await;
    assert_eq!(
        resp.status,
        StatusCode::CONFLICT,
        "a succeeded job is not retried: {}",
        resp.text()
    );
    let again = process_ok(&app, &alice, &pdf).await;
    let again = app.wait_state(&alice, &again, "succeeded", LONG).await;
    assert_eq!(
        again["result"]["model"]["cached"], false,
        "another prompt is another question"
    );
    assert_eq!(fake.generate_calls(), 2);
    let resp = process(&app, &alice, &pdf, &[("prompt", "Who wrote it?")]).await;
    let third = resp.json()["id"].as_str().expect("id").to_owned();
    let third = app.wait_state(&alice, &third, "succeeded", LONG).await;
    assert_eq!(
        third["result"]["model"]["cached"], true,
        "{}",
        third["result"]
    );
    assert_eq!(
        fake.generate_calls(),
        2,
        "the same file, prompt and model: asked once"
    );
}

#[tokio::test]
async fn rate_limits_outages_and_bad_answers_are_retried_other_refusals_are_not() {
    let fake = FakeGemini::start(KEY).await;
    fake.set_default(Reply::Answer(ANSWER.to_owned()));
    let app = with_model(&fake, &["--gemini-timeout", "1s"]).await;
    let alice = app.user("alice", "client").await;
    let pdf = sample::text_pdf(1, 30, 3);

    // 429 with a delay, a 500, a malformed body and a time-out, then an answer.
    fake.push(Reply::Status {
        code: 429,
        retry_after: Some(1),
    });
    fake.push(Reply::Status {
        code: 500,
        retry_after: None,
    });
    fake.push(Reply::Malformed);
    fake.push(Reply::Slow {
        delay: Duration::from_secs(5),
        answer: ANSWER.to_owned(),
    });
    let id = process_ok(&app, &alice, &pdf).await;
    let done = app.wait_state(&alice, &id, "succeeded", LONG).await;
    assert_eq!(done["attempts"], 5, "{done}");
    let history = events(&app, &alice, &id).await.join("\n");
    for code in ["model_rate_limited", "model_unavailable"] {
        assert!(history.contains(code), "{code} in\n{history}");
    }

    // A request the API refuses is not retried.
    fake.push(Reply::Status {
        code: 400,
        retry_after: None,
    });
    let id = process_ok(&app, &alice, &sample::text_pdf(1, 30, 4)).await;
    let dead = app.wait_state(&alice, &id, "dead", LONG).await;
    assert_eq!(dead["error"]["code"], "model_rejected", "{dead}");
    assert_eq!(dead["attempts"], 1);
}

#[tokio::test]
async fn an_open_circuit_defers_jobs_until_a_probe_succeeds() {
    let fake = FakeGemini::start(KEY).await;
    fake.set_default(Reply::Status {
        code: 503,
        retry_after: None,
    });
    let flags = [
        "--gemini-breaker-failures",
        "2",
        "--gemini-breaker-cool-down",
        "4s",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    let app = with_model(&fake, &flags).await;
    let alice = app.user("alice", "client").await;
    let id = process_ok(&app, &alice, &sample::text_pdf(1, 30, 5)).await;
    // Two failed calls open the circuit; the third attempt is deferred, not failed.
    wait_until("the job to be deferred", LONG, || async {
        let history = events(&app, &alice, &id).await;
        if history
            .iter()
            .any(|e| e.contains("deferred: model_unavailable"))
        {
            Ok(())
        } else {
            Err(history)
        }
    })
    .await;
    assert_eq!(
        fake.generate_calls(),
        2,
        "no call while the circuit is open"
    );
    let metrics = scrape(&app).await;
    assert!(
        metrics.contains("kiln_model_circuit_state{model=\"gemini-2.5-flash\"} 2"),
        "{metrics}"
    );
    let job = app.job(&alice, &id).await;
    assert_eq!(job["state"], "scheduled", "{job}");
    // The third attempt was handed back: counted (the fencing token never goes back), but
    // not spent (the budget grew by one).
    assert_eq!(
        (job["attempts"].as_u64(), job["max_attempts"].as_u64()),
        (Some(3), Some(6))
    );

    // The model recovers: after the cool-down one probe goes, succeeds, and closes it.
    fake.set_default(Reply::Answer(ANSWER.to_owned()));
    let done = app.wait_state(&alice, &id, "succeeded", LONG).await;
    // Three calls, or more if the cool-down ended before the model recovered.
    assert!(fake.generate_calls() >= 3);
    assert!(
        done["max_attempts"].as_u64() > Some(5),
        "the deferred attempt was not spent: {done}"
    );
    let metrics = scrape(&app).await;
    assert!(
        metrics.contains("kiln_model_circuit_state{model=\"gemini-2.5-flash\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_spent_budget_defers_the_next_job_instead_of_holding_its_slot() {
    let fake = FakeGemini::start(KEY).await;
    fake.set_default(Reply::Answer(ANSWER.to_owned()));
    let app = with_model(&fake, &["--gemini-rpm", "1", "--gemini-max-wait", "0s"]).await;
    let alice = app.user("alice", "client").await;
    let first = process_ok(&app, &alice, &sample::text_pdf(1, 30, 6)).await;
    app.wait_state(&alice, &first, "succeeded", LONG).await;
    let second = process_ok(&app, &alice, &sample::text_pdf(1, 30, 7)).await;
    wait_until("the second job to be deferred", LONG, || async {
        let history = events(&app, &alice, &second).await;
        if history.iter().any(|e| e.contains("deferred: model_budget")) {
            Ok(())
        } else {
            Err(history)
        }
    })
    .await;
    let job = app.job(&alice, &second).await;
    assert_eq!(job["state"], "scheduled", "{job}");
    assert_eq!(fake.generate_calls(), 1, "one request a minute");
}

async fn scrape(app: &TestApp) -> String {
    let client = kiln_testkit::Client::new(app.metrics_addr());
    let resp = client.get(None, "/metrics").await;
    assert_eq!(resp.status, StatusCode::OK);
    resp.text()
}

#[tokio::test]
async fn a_pdf_over_the_inline_limit_goes_through_the_file_api() {
    let fake = FakeGemini::start(KEY).await;
    fake.set_default(Reply::Answer(ANSWER.to_owned()));
    let app = with_model(&fake, &["--gemini-inline-limit", "1KiB"]).await;
    let alice = app.user("alice", "client").await;
    let pdf = sample::text_pdf(4, 200, 8);
    assert!(pdf.len() > 1024);
    let id = process_ok(&app, &alice, &pdf).await;
    let done = app.wait_state(&alice, &id, "succeeded", LONG).await;
    assert_eq!(
        done["result"]["model"]["uploaded"], true,
        "{}",
        done["result"]
    );
    let requests = fake.requests();
    let upload = requests
        .iter()
        .find(|r| r.query.as_deref().is_some_and(|q| q.contains("upload_id")))
        .expect("the bytes were uploaded");
    assert_eq!(upload.body, pdf, "the PDF itself, unchanged");
    let call = requests
        .iter()
        .find(|r| r.path.ends_with(":generateContent"))
        .and_then(|r| r.json.clone())
        .expect("a generateContent call");
    let part = &call["contents"][0]["parts"][0];
    assert!(part.get("inlineData").is_none(), "{part}");
    assert!(part["fileData"]["fileUri"].as_str().is_some(), "{part}");
}

#[tokio::test]
async fn a_pdf_over_the_upload_limit_is_refused_and_not_kept() {
    let app = TestApp::spawn_with(Opts {
        flags: vec!["--upload-limit".into(), "4KiB".into()],
        ..Opts::default()
    })
    .await;
    let alice = app.user("alice", "client").await;
    let pdf = sample::text_pdf(20, 200, 9);
    assert!(pdf.len() > 4 * 1024);
    let resp = process(&app, &alice, &pdf, &[("name", "too big")]).await;
    assert_eq!(
        resp.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        resp.text()
    );
    assert!(files(&app, &alice).await.is_empty(), "nothing kept");
    let small = sample::text_pdf(1, 20, 9);
    assert!(small.len() < 4 * 1024);
    process_ok(&app, &alice, &small).await;
}
