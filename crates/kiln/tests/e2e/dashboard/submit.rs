//! The submit form, built from each type's JSON Schema.

use kiln_testkit::browser::{Browser, Width};
use serde_json::{Value, json};

use super::*;
use crate::helpers::{ADMIN_PASSWORD, TestApp};

/// Submits the form and returns the new job's id from the page's answer.
pub(super) async fn submit_form(browser: &Browser) -> String {
    browser
        .execute(
            "document.getElementById('submitted')?.remove(); return true",
            json!([]),
        )
        .await;
    browser
        .click(&browser.find("#submit button[type=submit]").await)
        .await;
    let href = browser
        .wait_for(
            "the submitted job's link",
            WAIT,
            "return document.getElementById('submitted')?.getAttribute('href')",
        )
        .await;
    href.as_str()
        .unwrap()
        .trim_start_matches("/jobs/")
        .to_owned()
}

#[tokio::test]
pub(super) async fn every_job_type_can_be_submitted_through_its_schema_form() {
    let app = TestApp::spawn_with(crate::helpers::Opts {
        flags: vec!["--command-allow".into(), "echo".into()],
        ..Default::default()
    })
    .await;
    let browser = signed_in(&app, Width::Desktop, "admin", ADMIN_PASSWORD).await;
    browser.goto(&format!("http://{}/submit", app.addr())).await;
    let pdf_path = app.dir.path().join("report.pdf");
    std::fs::write(&pdf_path, kiln_kernels::pdf::sample::text_pdf(2, 40, 3)).unwrap();

    let types = app
        .client
        .get(Some(&app.admin), "/api/v1/job-types")
        .await
        .json();
    let mut submitted = Vec::new();
    for spec in types.as_array().unwrap() {
        let name = spec["name"].as_str().unwrap();
        choose(&browser, "#type", name).await;
        let expected = match name {
            "echo" => {
                fill(&browser, "#p-json", r#"{"hello": "world"}"#).await;
                json!({"hello": "world"})
            }
            "sleep" => {
                fill(&browser, "#p-ms", "5").await;
                json!({"ms": 5})
            }
            "external" => {
                fill(&browser, "#p-name", "nightly").await;
                json!({"name": "nightly"})
            }
            "primes" => {
                fill(&browser, "#p-n", "10").await;
                json!({"n": 10})
            }
            "matrix_multiply" => {
                fill(&browser, "#p-n", "4").await;
                fill(&browser, "#p-seed", "7").await;
                json!({"n": 4, "seed": 7})
            }
            "csv_aggregate" => {
                fill(&browser, "#p-rows", "10").await;
                fill(&browser, "#p-groups", "2").await;
                choose(&browser, "#p-operation", "sum").await;
                json!({"rows": 10, "groups": 2, "operation": "sum"})
            }
            "command" => {
                fill(&browser, "#p-argv", "echo\nhi").await;
                json!({"argv": ["echo", "hi"]})
            }
            "pdf_analyze" => {
                let file = browser.find("#u-file_id").await;
                browser.type_into(&file, pdf_path.to_str().unwrap()).await;
                let id = browser
                    .wait_for(
                        "the upload's id",
                        WAIT,
                        "return document.getElementById('p-file_id').value",
                    )
                    .await;
                fill(&browser, "#p-prompt", "What is it about?").await;
                json!({"file_id": id, "prompt": "What is it about?"})
            }
            other => panic!("a job type this test does not know: {other}; teach it"),
        };
        if name == "primes" {
            browser.screenshot("submit-desktop").await;
            assert_accessible(&browser, "submit").await;
        }
        let id = submit_form(&browser).await;
        let job = app.job(&app.admin, &id).await;
        assert_eq!(job["type"], name);
        assert_eq!(job["payload"], expected, "{name}");
        submitted.push(id);
    }
    assert_eq!(submitted.len(), 8);

    // The schema's bounds stop a bad value in the browser: nothing is sent.
    choose(&browser, "#type", "primes").await;
    fill(&browser, "#p-n", "0").await;
    browser
        .click(&browser.find("#submit button[type=submit]").await)
        .await;
    let message = browser
        .execute(
            "return document.getElementById('p-n').validationMessage",
            json!([]),
        )
        .await;
    assert!(
        !message.as_str().unwrap().is_empty(),
        "the browser names the bound"
    );
    let listed = app
        .client
        .get(Some(&app.admin), "/api/v1/jobs?limit=100")
        .await
        .json();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        8,
        "nothing was submitted"
    );

    // What only the server knows comes back as its problem, next to the field it names.
    choose(&browser, "#type", "csv_aggregate").await;
    choose(&browser, "#p-variant", "1").await;
    fill(
        &browser,
        "#p-file_id",
        "01234567-89ab-7def-8123-456789abcdef",
    )
    .await;
    fill(&browser, "#p-column", "value").await;
    browser
        .click(&browser.find("#submit button[type=submit]").await)
        .await;
    let note = browser.find("#p-file_id-error").await;
    assert!(
        browser.text(&note).await.contains("file"),
        "{}",
        browser.text(&note).await
    );
    let invalid = browser
        .execute(
            "return document.getElementById('p-file_id').getAttribute('aria-invalid')",
            json!([]),
        )
        .await;
    assert_eq!(invalid, "true");
    assert!(
        !browser
            .text(&browser.find("#submit-error").await)
            .await
            .is_empty()
    );
    browser.screenshot("submit-problem-desktop").await;
    assert_accessible(&browser, "submit with a problem").await;
    assert_quiet_console_but(&browser, "submit", "/api/v1/jobs - ").await;
    browser.close().await;

    // A client is offered only the types a client may submit.
    app.user("carol", "client").await;
    let browser = signed_in(&app, Width::Phone, "carol", "password-123").await;
    browser.goto(&format!("http://{}/submit", app.addr())).await;
    let offered = browser
        .execute(
            "return [...document.querySelectorAll('#type option')].map(o => o.value)",
            json!([]),
        )
        .await;
    assert!(
        !offered.as_array().unwrap().contains(&json!("command")),
        "{offered}"
    );
    browser.find("#p-json").await;
    browser.screenshot("submit-phone").await;
    browser.close().await;
    app.stop().await;
}

/// Like [`assert_quiet_console`], but a failed load of a URL containing `allowed` (an
/// answer the test asked for) is no complaint.
pub(super) async fn assert_quiet_console_but(browser: &Browser, page: &str, allowed: &str) {
    let bad: Vec<Value> = console_errors(browser)
        .await
        .into_iter()
        .filter(|e| !e["message"].as_str().unwrap_or_default().contains(allowed))
        .collect();
    assert!(bad.is_empty(), "{page}: the console says {bad:?}");
}
