//! The web dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver: sign-in, the session cookie and its CSRF
//! rules, the jobs page's live updates and bulk actions, accessibility (axe-core) and
//! screenshots at desktop and phone width in `target/screenshots/`.

use std::time::Duration;

use hyper::{Method, StatusCode};
use kiln_testkit::browser::{Browser, Width};
use kiln_testkit::{Client, TestResponse};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_PASSWORD, TestApp};

const WAIT: Duration = Duration::from_secs(30);

/// axe-core's script, installed by `.ci/run` with `npm ci` beside these tests.
fn axe_source() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/axe/node_modules/axe-core/axe.min.js"
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("{path}: {e}; install it with `npm ci --prefix crates/kiln/tests/axe`")
    })
}

/// Fails on any accessibility violation of the page as it is now.
async fn assert_accessible(browser: &Browser, page: &str) {
    let violations = browser.axe(&axe_source()).await;
    assert!(
        violations.is_empty(),
        "{page}: axe found {}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
}

/// Fails on any console error or CSP violation logged since the last look.
async fn assert_quiet_console(browser: &Browser, page: &str) {
    let bad = console_errors(browser).await;
    assert!(bad.is_empty(), "{page}: the console says {bad:?}");
}

/// The console's errors and CSP violations since the last look.
async fn console_errors(browser: &Browser) -> Vec<Value> {
    browser
        .log()
        .await
        .into_iter()
        .filter(|e| e["level"] == "SEVERE" || e["source"] == "security")
        .collect()
}

/// A browser at `width` signed in as `username` through the login form.
async fn signed_in(app: &TestApp, width: Width, username: &str, password: &str) -> Browser {
    let browser = Browser::start(width).await;
    sign_in(&browser, app, username, password).await;
    browser
}

async fn sign_in(browser: &Browser, app: &TestApp, username: &str, password: &str) {
    browser.goto(&format!("http://{}/", app.addr())).await;
    browser
        .wait_for(
            "the login page",
            WAIT,
            "return location.pathname === '/login'",
        )
        .await;
    let name = browser.find("#username").await;
    browser.type_into(&name, username).await;
    let pass = browser.find("#password").await;
    browser.type_into(&pass, password).await;
    browser
        .click(&browser.find("form button[type=submit]").await)
        .await;
    browser
        .wait_for(
            "the jobs page",
            WAIT,
            "return location.pathname === '/' && document.querySelector('h1')?.textContent === 'My jobs'",
        )
        .await;
}

/// The ids of the rows the jobs page shows, with their states.
async fn rows(browser: &Browser) -> Vec<(String, String)> {
    let v = browser
        .execute(
            "return [...document.querySelectorAll('#jobs tbody tr')].map(r => [r.dataset.id, r.dataset.state])",
            json!([]),
        )
        .await;
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn signing_in_leads_to_my_jobs_at_desktop_and_phone_width() {
    let app = TestApp::spawn().await;
    app.submit_ok(
        &app.admin,
        json!({"type": "echo", "payload": {"x": 1}, "name": "hello"}),
    )
    .await;
    for width in [Width::Desktop, Width::Phone] {
        let browser = Browser::start(width).await;
        browser.goto(&format!("http://{}/", app.addr())).await;
        browser
            .wait_for(
                "a redirect to the login page",
                WAIT,
                "return location.pathname === '/login'",
            )
            .await;
        assert_accessible(&browser, "login").await;
        browser.screenshot(&format!("login-{}", width.name())).await;

        // A wrong password: back on the form, told so, no cookie.
        browser
            .type_into(&browser.find("#username").await, "admin")
            .await;
        browser
            .type_into(&browser.find("#password").await, "wrong")
            .await;
        browser
            .click(&browser.find("form button[type=submit]").await)
            .await;
        let alert = browser.find("p.error[role=alert]:not([hidden])").await;
        assert_eq!(browser.text(&alert).await, "Wrong username or password.");
        assert!(browser.cookies().await.is_empty());

        sign_in(&browser, &app, "admin", ADMIN_PASSWORD).await;
        let cookies = browser.cookies().await;
        assert_eq!(cookies.len(), 1, "{cookies:?}");
        let c = &cookies[0];
        assert_eq!(c["name"], "__Host-kiln_session");
        assert_eq!(c["httpOnly"], true);
        assert_eq!(c["secure"], true);
        assert_eq!(c["sameSite"], "Strict");
        assert_eq!(c["path"], "/");
        // No script can read it, and nothing of it is in the URL or storage.
        let seen = browser
            .execute(
                "return [document.cookie, location.href, JSON.stringify(localStorage), JSON.stringify(sessionStorage)].join(' ')",
                json!([]),
            )
            .await;
        assert!(!seen.as_str().unwrap().contains("kiln_"), "{seen}");

        browser
            .wait_for(
                "the job's row and the counts",
                WAIT,
                "return document.querySelectorAll('#jobs tbody tr').length === 1 && document.querySelector('#counts li')",
            )
            .await;
        let row = browser.text(&browser.find("#jobs tbody tr").await).await;
        assert!(row.contains("hello") && row.contains("echo"), "{row}");
        assert_accessible(&browser, "my jobs").await;
        browser.screenshot(&format!("jobs-{}", width.name())).await;
        assert_quiet_console(&browser, "my jobs").await;

        // Signing out ends the session: the next visit is the login page again.
        browser.click(&browser.find("#logout").await).await;
        browser
            .wait_for(
                "the login page",
                WAIT,
                "return location.pathname === '/login'",
            )
            .await;
        browser.goto(&format!("http://{}/", app.addr())).await;
        browser
            .wait_for(
                "the login page",
                WAIT,
                "return location.pathname === '/login'",
            )
            .await;
        browser.close().await;
    }
    app.stop().await;
}

/// `POST /login` as a browser's form would send it, from `origin`.
async fn form_login(client: &Client, origin: &str, password: &str) -> TestResponse {
    client
        .request(Method::POST, "/login")
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .raw(format!("username=admin&password={password}"))
        .send()
        .await
}

#[tokio::test]
async fn a_cookie_session_writes_only_with_our_origin_and_its_csrf_token() {
    let app = TestApp::spawn().await;
    let ours = format!("http://{}", app.addr());

    // The login page is a page: its CSP allows nothing inline and nothing from elsewhere.
    let page = app.client.get(None, "/login").await;
    assert_eq!(page.status, StatusCode::OK);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));

    // From another site: refused, no session.
    let resp = form_login(&app.client, "http://evil.test", ADMIN_PASSWORD).await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER);
    assert_eq!(resp.header("location"), Some("/login?error=csrf_failed"));
    assert!(resp.header("set-cookie").is_none());
    let resp = form_login(&app.client, &ours, "wrong-password").await;
    assert_eq!(resp.header("location"), Some("/login?error=unauthorized"));
    assert!(resp.header("set-cookie").is_none());

    let resp = form_login(&app.client, &ours, ADMIN_PASSWORD).await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.text());
    assert_eq!(resp.header("location"), Some("/"));
    let set = resp.header("set-cookie").unwrap().to_owned();
    for flag in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=86400",
    ] {
        assert!(set.contains(flag), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let token = cookie.split_once('=').unwrap().1.to_owned();

    // Reads need only the cookie; the page carries the CSRF token for writes.
    let me = app
        .client
        .request(Method::GET, "/api/v1/me")
        .header("cookie", &cookie)
        .send()
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["username"], "admin");
    assert_eq!(me.header("cache-control"), Some("no-store"));
    let page = app
        .client
        .request(Method::GET, "/")
        .header("cookie", &cookie)
        .send()
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(csrf.len(), 64);
    assert!(
        !html.contains(&token),
        "the session token is never in a page"
    );

    let submit = |origin: Option<&str>, csrf: Option<&str>| {
        let mut req = app
            .client
            .request(Method::POST, "/api/v1/jobs")
            .header("cookie", &cookie)
            .json(&json!({"type": "echo", "payload": {}}));
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        if let Some(csrf) = csrf {
            req = req.header("x-kiln-csrf", csrf);
        }
        req.send()
    };
    for (origin, token) in [
        (None, Some(csrf.as_str())),
        (Some(ours.as_str()), None),
        (Some(ours.as_str()), Some("0".repeat(64).as_str())),
        (Some("http://evil.test"), Some(csrf.as_str())),
    ] {
        let resp = submit(origin, token).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{origin:?} {token:?}");
        assert_eq!(resp.json()["code"], "csrf_failed");
    }
    let listed = app.client.get(Some(&app.admin), "/api/v1/jobs").await;
    assert!(
        listed.json()["items"].as_array().unwrap().is_empty(),
        "nothing was written"
    );
    let resp = submit(Some(&ours), Some(&csrf)).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());

    // A bearer token is judged alone: a stray cookie does not make it need a CSRF token.
    let resp = app
        .client
        .request(Method::POST, "/api/v1/jobs")
        .bearer(Some(&app.admin))
        .header("cookie", "__Host-kiln_session=kiln_forged")
        .json(&json!({"type": "echo", "payload": {}}))
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());

    // The counts of the caller's own jobs.
    let counts = app
        .client
        .request(Method::GET, "/api/v1/jobs/counts")
        .header("cookie", &cookie)
        .send()
        .await;
    assert_eq!(counts.status, StatusCode::OK);
    let counts = counts.json();
    assert_eq!(counts["total"], 2, "{counts}");
    assert_eq!(counts["by_state"].as_object().unwrap().len(), 7);

    // Signing out with the cookie ends the session and removes the cookie.
    let out = app
        .client
        .request(Method::POST, "/api/v1/auth/logout")
        .header("cookie", &cookie)
        .header("origin", &ours)
        .header("x-kiln-csrf", &csrf)
        .send()
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let me = app
        .client
        .request(Method::GET, "/api/v1/me")
        .header("cookie", &cookie)
        .send()
        .await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    let page = app
        .client
        .request(Method::GET, "/")
        .header("cookie", &cookie)
        .send()
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.header("location"), Some("/login"));
    app.stop().await;
}

#[tokio::test]
async fn assets_are_hashed_cached_for_good_and_gzipped() {
    let app = TestApp::spawn().await;
    let page = app.client.get(None, "/login").await.text();
    let css = page
        .split("href=\"/assets/app.")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|rest| format!("/assets/app.{rest}"))
        .unwrap();
    let resp = app
        .client
        .request(Method::GET, &css)
        .header("accept-encoding", "gzip")
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert_eq!(resp.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(
        resp.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let plain = app.client.get(None, &css).await;
    assert!(plain.header("content-encoding").is_none());
    assert!(plain.text().contains(":root"));
    // Only the hashed name exists.
    let resp = app.client.get(None, "/assets/app.css").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let icon = app.client.get(None, "/favicon.ico").await;
    assert_eq!(icon.status, StatusCode::OK);
    assert_eq!(icon.header("content-type"), Some("image/svg+xml"));
    app.stop().await;
}

#[tokio::test]
async fn jobs_change_state_in_place_and_new_ones_appear_without_a_reload() {
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
async fn dead_jobs_are_retried_and_a_running_one_cancelled_in_bulk() {
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
            let resp = app
                .client
                .send_json(
                    Method::PATCH,
                    Some(&app.admin),
                    &format!("/api/v1/jobs/{id}"),
                    &report,
                )
                .await;
            assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
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

/// Waits until the job page shows `state`.
async fn page_state(browser: &Browser, state: &str) {
    let script =
        format!("return document.querySelector('#job-state .state')?.textContent === '{state}'");
    browser
        .wait_for(&format!("the page to show {state}"), WAIT, &script)
        .await;
}

#[tokio::test]
async fn a_job_page_follows_the_log_live_pauses_it_and_cancels_the_job() {
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
async fn a_finished_job_shows_its_result_and_artifacts_and_can_be_deleted() {
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
async fn a_client_cannot_see_another_users_job_by_its_url() {
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

/// Sets a `<select>` to `value` as a person choosing it would (its `change` fires).
async fn choose(browser: &Browser, css: &str, value: &str) {
    let done = browser
        .execute(
            "const s = document.querySelector(arguments[0]); s.value = arguments[1]; s.dispatchEvent(new Event('change', {bubbles: true})); return s.value === arguments[1]",
            json!([css, value]),
        )
        .await;
    assert_eq!(done, true, "{css} has no option {value}");
}

/// Empties the field `css` and types `text` into it.
async fn fill(browser: &Browser, css: &str, text: &str) {
    let field = browser.find(css).await;
    browser.clear(&field).await;
    browser.type_into(&field, text).await;
}

/// Submits the form and returns the new job's id from the page's answer.
async fn submit_form(browser: &Browser) -> String {
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
async fn every_job_type_can_be_submitted_through_its_schema_form() {
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
async fn assert_quiet_console_but(browser: &Browser, page: &str, allowed: &str) {
    let bad: Vec<Value> = console_errors(browser)
        .await
        .into_iter()
        .filter(|e| !e["message"].as_str().unwrap_or_default().contains(allowed))
        .collect();
    assert!(bad.is_empty(), "{page}: the console says {bad:?}");
}
