//! "My jobs": rows that change in place, bulk retry and cancel.

use kiln_testkit::browser::Width;
use serde_json::json;

use super::*;
use crate::helpers::{ADMIN_PASSWORD, TestApp};

#[tokio::test]
pub(super) async fn jobs_change_state_in_place_and_new_ones_appear_without_a_reload() {
    let app = TestApp::spawn().await;
    let browser = signed_in(&app, Width::Desktop, "admin", ADMIN_PASSWORD).await;
    browser
        .execute("window.kilnNoReload = true; return true", json!([]))
        .await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 1500}}),
        )
        .await;
    let script = format!(
        "const r = document.querySelector('#jobs tbody tr[data-id=\"{id}\"]'); return r && r.dataset.state"
    );
    let seen = browser.wait_for("the new job's row", WAIT, &script).await;
    assert!(["queued", "running", "succeeded"].contains(&seen.as_str().unwrap()));
    let done = format!(
        "return document.querySelector('#jobs tbody tr[data-id=\"{id}\"]')?.dataset.state === 'succeeded'"
    );
    browser
        .wait_for("the row to show succeeded", WAIT, &done)
        .await;
    let same_page = browser
        .execute("return window.kilnNoReload === true", json!([]))
        .await;
    assert_eq!(same_page, true, "the page was never reloaded");
    browser
        .wait_for(
            "the counts to show it",
            WAIT,
            "return document.querySelector('#counts li[data-state=\"succeeded\"] b')?.textContent === '1'",
        )
        .await;
    assert_quiet_console(&browser, "live jobs").await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
pub(super) async fn dead_jobs_are_retried_and_a_running_one_cancelled_in_bulk() {
    let app = TestApp::spawn().await;
    let mut dead = Vec::new();
    for n in 0..3 {
        let id = app
            .submit_ok(
                &app.admin,
                json!({"type": "external", "payload": {"name": format!("export-{n}")}}),
            )
            .await;
        for report in [
            json!({"state": "running"}),
            json!({"state": "dead", "error": "the export failed"}),
        ] {
            app.report(&app.admin, &id, report).await;
        }
        dead.push(id);
    }
    let running = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 600_000}}),
        )
        .await;
    app.wait_state(&app.admin, &running, "running", WAIT).await;

    let browser = signed_in(&app, Width::Desktop, "admin", ADMIN_PASSWORD).await;
    browser
        .wait_for(
            "four rows",
            WAIT,
            "return document.querySelectorAll('#jobs tbody tr').length === 4",
        )
        .await;
    // Filter to the dead ones, select them all, retry, confirm.
    browser
        .execute(
            "document.getElementById('f-state').value = 'dead'; return true",
            json!([]),
        )
        .await;
    browser
        .click(&browser.find("#filters button[type=submit]").await)
        .await;
    browser
        .wait_for("three dead rows", WAIT, "return document.querySelectorAll('#jobs tbody tr[data-state=dead]').length === 3 && document.querySelectorAll('#jobs tbody tr').length === 3")
        .await;
    browser.click(&browser.find("#select-all").await).await;
    let retry = browser.find("#bulk-retry").await;
    browser.click(&retry).await;
    let question = browser.text(&browser.find("#confirm-text").await).await;
    assert_eq!(question, "Retry 3 jobs?");
    browser.screenshot("jobs-confirm-desktop").await;
    browser.click(&browser.find("#confirm-ok").await).await;
    for id in &dead {
        app.wait_state(&app.admin, id, "queued", WAIT).await;
    }
    browser
        .wait_for(
            "the rows to leave dead",
            WAIT,
            "return document.querySelectorAll('#jobs tbody tr[data-state=dead]').length === 0",
        )
        .await;

    // Back to every job; cancel the running one.
    browser
        .execute(
            "document.getElementById('f-state').value = ''; return true",
            json!([]),
        )
        .await;
    browser
        .click(&browser.find("#filters button[type=submit]").await)
        .await;
    let row = format!("#jobs tbody tr[data-id=\"{running}\"] input[type=checkbox]");
    browser.click(&browser.find(&row).await).await;
    browser.click(&browser.find("#bulk-cancel").await).await;
    browser.click(&browser.find("#confirm-ok").await).await;
    app.wait_state(&app.admin, &running, "cancelled", WAIT)
        .await;
    let cancelled = format!(
        "return document.querySelector('#jobs tbody tr[data-id=\"{running}\"]')?.dataset.state === 'cancelled'"
    );
    browser
        .wait_for("the row to show cancelled", WAIT, &cancelled)
        .await;
    assert_eq!(rows(&browser).await.len(), 4);
    assert_quiet_console(&browser, "bulk actions").await;
    browser.close().await;
    app.stop().await;
}
