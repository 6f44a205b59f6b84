//! A job's page: the live log, the result and artifacts, another user's job.

use hyper::StatusCode;
use kiln_testkit::browser::{Browser, Width};
use serde_json::{Value, json};

use super::*;
use crate::helpers::{ADMIN_PASSWORD, TestApp};

/// Waits until the job page shows `state`.
pub(super) async fn page_state(browser: &Browser, state: &str) {
    let script =
        format!("return document.querySelector('#job-state .state')?.textContent === '{state}'");
    browser
        .wait_for(&format!("the page to show {state}"), WAIT, &script)
        .await;
}

#[tokio::test]
pub(super) async fn a_job_page_follows_the_log_live_pauses_it_and_cancels_the_job() {
    let app = TestApp::spawn_with(crate::helpers::Opts {
        flags: vec!["--command-allow".into(), "sh".into()],
        ..Default::default()
    })
    .await;
    let script = "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.1; done";
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "command", "payload": {"argv": ["sh", "-c", script]}, "name": "ticker"}),
        )
        .await;
    for width in [Width::Desktop, Width::Phone] {
        let browser = signed_in(&app, width, "admin", ADMIN_PASSWORD).await;
        browser
            .goto(&format!("http://{}/jobs/{id}", app.addr()))
            .await;
        page_state(&browser, "running").await;
        browser
            .wait_for(
                "a few lines of the log",
                WAIT,
                "return document.getElementById('job-log').textContent.includes('line 3\\n')",
            )
            .await;
        assert_accessible(&browser, "job").await;
        browser.screenshot(&format!("job-{}", width.name())).await;
        assert_quiet_console(&browser, "job").await;
        browser.close().await;
    }

    let browser = signed_in(&app, Width::Desktop, "admin", ADMIN_PASSWORD).await;
    browser
        .goto(&format!("http://{}/jobs/{id}", app.addr()))
        .await;
    let log_len = "return document.getElementById('job-log').textContent.length";
    browser
        .wait_for(
            "the log",
            WAIT,
            "return document.getElementById('job-log').textContent.includes('line 2\\n')",
        )
        .await;
    // Paused, the log holds still while lines keep coming; resumed, it catches up.
    browser.click(&browser.find("#log-pause").await).await;
    let held = browser.execute(log_len, json!([])).await;
    let api_log = || async {
        app.client
            .get(Some(&app.admin), &format!("/api/v1/jobs/{id}/logs"))
            .await
            .text()
    };
    let before = api_log().await.len();
    kiln_testkit::wait_until("more log lines", WAIT, || async {
        if api_log().await.len() > before + 20 {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;
    assert_eq!(browser.execute(log_len, json!([])).await, held, "paused");
    browser.click(&browser.find("#log-pause").await).await;
    let grew = format!("return document.getElementById('job-log').textContent.length > {held}");
    browser.wait_for("the held lines", WAIT, &grew).await;
    let download = browser
        .execute(
            "return document.getElementById('log-download').getAttribute('href')",
            json!([]),
        )
        .await;
    assert_eq!(download, format!("/api/v1/jobs/{id}/logs"));

    browser.click(&browser.find("#job-cancel").await).await;
    assert_eq!(
        browser.text(&browser.find("#confirm-text").await).await,
        "Cancel this job?"
    );
    browser.click(&browser.find("#confirm-ok").await).await;
    app.wait_state(&app.admin, &id, "cancelled", WAIT).await;
    page_state(&browser, "cancelled").await;
    browser
        .wait_for(
            "the log to end and the timeline to show the cancel",
            WAIT,
            "return document.getElementById('log-status').textContent === 'the job has ended' && /^queued,running,(running,)?cancelled$/.test([...document.querySelectorAll('#job-timeline .state')].map(s => s.textContent).join(','))",
        )
        .await;
    assert_quiet_console(&browser, "job after cancel").await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
pub(super) async fn a_finished_job_shows_its_result_and_artifacts_and_can_be_deleted() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(&app.admin, json!({"type": "primes", "payload": {"n": 100}}))
        .await;
    let job = app.wait_state(&app.admin, &id, "succeeded", WAIT).await;
    let browser = signed_in(&app, Width::Desktop, "admin", ADMIN_PASSWORD).await;
    browser
        .click(&browser.find(&format!("#jobs a[href=\"/jobs/{id}\"]")).await)
        .await;
    page_state(&browser, "succeeded").await;
    let result = browser.text(&browser.find("#job-result").await).await;
    let shown: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(shown, job["result"]);
    let link = browser
        .find("#job-artifacts a[download=\"primes.npy\"]")
        .await;
    assert_eq!(browser.text(&link).await, "primes.npy");
    assert_eq!(
        browser
            .text(&browser.find("#job-progress-text").await)
            .await,
        "100%"
    );
    assert_accessible(&browser, "finished job").await;
    browser.screenshot("job-finished-desktop").await;

    browser.click(&browser.find("#job-delete").await).await;
    browser.click(&browser.find("#confirm-ok").await).await;
    browser
        .wait_for("the jobs page", WAIT, "return location.pathname === '/'")
        .await;
    let gone = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{id}"))
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_quiet_console(&browser, "after delete").await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
pub(super) async fn a_client_cannot_see_another_users_job_by_its_url() {
    let app = TestApp::spawn().await;
    let secret = app
        .submit_ok(
            &app.admin,
            json!({"type": "echo", "payload": {"secret": "s3cr3t-payload"}}),
        )
        .await;
    app.user("bob", "client").await;
    let bob_job = {
        let bob = app.client.login("bob", "password-123").await;
        app.submit_ok(
            &bob,
            json!({"type": "echo", "payload": {"mine": true}, "name": "bobs"}),
        )
        .await
    };
    let browser = signed_in(&app, Width::Desktop, "bob", "password-123").await;
    browser
        .goto(&format!("http://{}/jobs/{secret}", app.addr()))
        .await;
    browser.find("#job-missing:not([hidden])").await;
    let html = browser
        .execute("return document.documentElement.outerHTML", json!([]))
        .await;
    assert!(
        !html.as_str().unwrap().contains("s3cr3t"),
        "nothing of the job shows"
    );
    // The API's 404 is the console's only complaint.
    for e in console_errors(&browser).await {
        let message = e["message"].as_str().unwrap();
        let expected = format!("/api/v1/jobs/{secret} - ");
        assert!(
            message.contains(&expected) && message.contains("404"),
            "{e}"
        );
    }
    // Bob's own list holds only his job.
    browser.goto(&format!("http://{}/", app.addr())).await;
    browser
        .wait_for(
            "bob's row",
            WAIT,
            "return document.querySelectorAll('#jobs tbody tr').length === 1",
        )
        .await;
    assert_eq!(rows(&browser).await[0].0, bob_job);
    assert_quiet_console(&browser, "bob").await;
    browser.close().await;

    // An operator reads anyone's job through the admin routes.
    let browser = signed_in(&app, Width::Desktop, "admin", ADMIN_PASSWORD).await;
    browser
        .goto(&format!("http://{}/jobs/{bob_job}", app.addr()))
        .await;
    page_state(&browser, "succeeded").await;
    let payload = browser.text(&browser.find("#job-payload").await).await;
    assert!(payload.contains("\"mine\": true"), "{payload}");
    browser.close().await;
    app.stop().await;
}
