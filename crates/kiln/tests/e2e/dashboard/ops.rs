//! Operations (queues, nodes, charts), users, and every user's jobs.

use hyper::StatusCode;
use kiln_testkit::browser::Width;
use serde_json::{Value, json};

use super::*;
use crate::helpers::{ADMIN_PASSWORD, TestApp};

#[tokio::test]
pub(super) async fn an_operator_pauses_and_resumes_a_queue_and_sees_nodes_and_charts() {
    let app = TestApp::spawn().await;
    for n in 0..3 {
        let id = app
            .submit_ok(&app.admin, json!({"type": "echo", "payload": {"n": n}}))
            .await;
        app.wait_state(&app.admin, &id, "succeeded", WAIT).await;
    }
    for width in [Width::Desktop, Width::Phone] {
        let browser = signed_in(&app, width, "admin", ADMIN_PASSWORD).await;
        browser.goto(&format!("http://{}/ops", app.addr())).await;
        browser.find("#queues tr[data-queue=default]").await;
        browser.find("#nodes tr[data-node=test-node]").await;
        browser.find("#chart-latency svg path").await;
        let desc = browser
            .execute(
                "return document.querySelector('#chart-throughput desc').textContent",
                json!([]),
            )
            .await;
        assert!(desc.as_str().unwrap().contains("succeeded 3"), "{desc}");
        assert_accessible(&browser, "operations").await;
        browser.screenshot(&format!("ops-{}", width.name())).await;
        assert_quiet_console(&browser, "operations").await;
        browser.close().await;
    }

    let browser = signed_in(&app, Width::Desktop, "admin", ADMIN_PASSWORD).await;
    browser.goto(&format!("http://{}/ops", app.addr())).await;
    for (button, paused) in [("Pause", true), ("Resume", false)] {
        let css = format!(
            "#queues tr[data-queue=default][data-paused=\"{}\"] button",
            !paused
        );
        let b = browser.find(&css).await;
        assert_eq!(browser.text(&b).await, button);
        browser.click(&b).await;
        browser.click(&browser.find("#confirm-ok").await).await;
        browser
            .find(&format!(
                "#queues tr[data-queue=default][data-paused=\"{paused}\"]"
            ))
            .await;
        assert_eq!(queue_paused(&app).await, paused, "{button}");
    }
    assert_quiet_console(&browser, "queue actions").await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
pub(super) async fn an_admin_creates_a_user_changes_their_role_and_disables_them() {
    let app = TestApp::spawn().await;
    let browser = signed_in(&app, Width::Desktop, "admin", ADMIN_PASSWORD).await;
    browser
        .goto(&format!("http://{}/admin/users", app.addr()))
        .await;
    browser.find("#users tr[data-user=admin]").await;
    fill(&browser, "#u-name", "dora").await;
    fill(&browser, "#u-password", "dora-password").await;
    browser
        .click(&browser.find("#new-user button[type=submit]").await)
        .await;
    browser.find("#users tr[data-user=dora]").await;
    let dora = app.client.login("dora", "dora-password").await;
    assert!(!dora.is_empty());
    assert_accessible(&browser, "users").await;
    browser.screenshot("users-desktop").await;

    choose(&browser, "#users tr[data-user=dora] select", "operator").await;
    browser.click(&browser.find("#confirm-ok").await).await;
    kiln_testkit::wait_until("dora to be an operator", WAIT, || async {
        if user(&app, "dora").await["role"] == "operator" {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;
    browser
        .find("#users tr[data-user=dora][data-role=operator]")
        .await;
    browser
        .click(
            &browser
                .find("#users tr[data-user=dora] input[type=checkbox]")
                .await,
        )
        .await;
    browser.click(&browser.find("#confirm-ok").await).await;
    kiln_testkit::wait_until("dora to be disabled", WAIT, || async {
        if user(&app, "dora").await["disabled"] == true {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;
    let me = app.client.get(Some(&dora), "/api/v1/me").await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "her token ended");
    // A name no user can have is the server's refusal, shown on the page.
    fill(&browser, "#u-name", "not a name!").await;
    fill(&browser, "#u-password", "eve-password").await;
    browser
        .click(&browser.find("#new-user button[type=submit]").await)
        .await;
    let said = browser
        .wait_for(
            "the refusal",
            WAIT,
            "return document.getElementById('user-error').textContent",
        )
        .await;
    assert!(said.as_str().unwrap().contains("username"), "{said}");
    browser.close().await;
    // At a phone's width too.
    let phone = signed_in(&app, Width::Phone, "admin", ADMIN_PASSWORD).await;
    phone
        .goto(&format!("http://{}/admin/users", app.addr()))
        .await;
    phone.find("#users tr[data-user=dora]").await;
    assert_accessible(&phone, "users at phone width").await;
    phone.screenshot("users-phone").await;
    phone.close().await;
    app.stop().await;
}

#[tokio::test]
pub(super) async fn operators_see_everyones_jobs_and_clients_no_operator_pages() {
    let app = TestApp::spawn().await;
    let bob = app.user("bob", "client").await;
    let bobs = app
        .submit_ok(
            &bob,
            json!({"type": "external", "payload": {"name": "bob-export"}, "name": "bobs"}),
        )
        .await;
    app.submit_ok(
        &app.admin,
        json!({"type": "external", "payload": {"name": "mine"}}),
    )
    .await;

    let browser = signed_in(&app, Width::Desktop, "admin", ADMIN_PASSWORD).await;
    browser
        .click(&browser.find("nav a[href=\"/ops/jobs\"]").await)
        .await;
    browser
        .wait_for(
            "both jobs",
            WAIT,
            "return document.querySelectorAll('#jobs tbody tr').length === 2",
        )
        .await;
    fill(&browser, "#f-owner", "bob").await;
    browser
        .click(&browser.find("#filters button[type=submit]").await)
        .await;
    browser
        .wait_for(
            "bob's job alone",
            WAIT,
            "return document.querySelectorAll('#jobs tbody tr').length === 1",
        )
        .await;
    assert_eq!(rows(&browser).await[0].0, bobs);
    // Cancelled from here through the admin route: the job is bob's.
    browser.click(&browser.find("#select-all").await).await;
    browser.click(&browser.find("#bulk-cancel").await).await;
    browser.click(&browser.find("#confirm-ok").await).await;
    app.wait_state(&bob, &bobs, "cancelled", WAIT).await;
    let events = app
        .client
        .get(Some(&bob), &format!("/api/v1/jobs/{bobs}/events"))
        .await
        .json();
    let last = events.as_array().unwrap().last().cloned().unwrap();
    assert!(
        last["message"]
            .as_str()
            .unwrap_or_default()
            .contains("admin"),
        "{last}"
    );
    assert_accessible(&browser, "all jobs").await;
    browser.screenshot("all-jobs-desktop").await;
    let phone = signed_in(&app, Width::Phone, "admin", ADMIN_PASSWORD).await;
    phone.goto(&format!("http://{}/ops/jobs", app.addr())).await;
    phone
        .wait_for(
            "the rows",
            WAIT,
            "return document.querySelectorAll('#jobs tbody tr').length === 2",
        )
        .await;
    phone.screenshot("all-jobs-phone").await;
    phone.close().await;
    assert_quiet_console(&browser, "all jobs").await;
    browser.close().await;

    let browser = signed_in(&app, Width::Desktop, "bob", "password-123").await;
    let links = browser
        .execute("return [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href')).join(' ')", json!([]))
        .await;
    assert_eq!(links, "/ /submit", "{links}");
    for page in ["/ops", "/ops/jobs", "/admin/users"] {
        browser.goto(&format!("http://{}{page}", app.addr())).await;
        on_my_jobs(&browser).await;
    }
    browser.close().await;
    app.stop().await;
}

/// Whether the queue `default` is paused, as the API says.
pub(super) async fn queue_paused(app: &TestApp) -> bool {
    let queues = app
        .client
        .get(Some(&app.admin), "/api/v1/admin/queues")
        .await
        .json();
    let default = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .cloned();
    default.unwrap()["paused"] == true
}

/// The user `name` as the admin API shows them.
pub(super) async fn user(app: &TestApp, name: &str) -> Value {
    let users = app
        .client
        .get(Some(&app.admin), "/api/v1/admin/users")
        .await
        .json();
    users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == name)
        .cloned()
        .unwrap()
}
