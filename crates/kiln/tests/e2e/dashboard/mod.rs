//! The web dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver: sign-in, the session cookie and its CSRF
//! rules, the pages and their live updates and actions, accessibility (axe-core) and
//! screenshots at desktop and phone width in `target/screenshots/`.
//!
//! - `session`: sign-in, the cookie, CSRF, assets.
//! - `jobs`: "My jobs": live rows, bulk actions.
//! - `job`: a job's page: live log, result, artifacts, another user's job.
//! - `submit`: the form built from each type's schema.
//! - `ops`: operations (queues, nodes, charts), users, every user's jobs.
//! - `bench`: the figures of BENCHMARKS.md (ignored; run by hand).

mod bench;
mod job;
mod jobs;
mod microsoft;
mod ops;
mod session;
mod submit;

use std::time::Duration;

use kiln_testkit::browser::{Browser, Width};
use serde_json::{Value, json};

use crate::helpers::TestApp;

const WAIT: Duration = Duration::from_secs(30);

/// axe-core's script, installed by `.ci/run` with `npm ci` beside these tests.
pub(super) fn axe_source() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/axe/node_modules/axe-core/axe.min.js"
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("{path}: {e}; install it with `npm ci --prefix crates/kiln/tests/axe`")
    })
}

/// Fails on any accessibility violation of the page as it is now.
pub(super) async fn assert_accessible(browser: &Browser, page: &str) {
    let violations = browser.axe(&axe_source()).await;
    assert!(
        violations.is_empty(),
        "{page}: axe found {}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
}

/// Fails on any console error or CSP violation logged since the last look.
pub(super) async fn assert_quiet_console(browser: &Browser, page: &str) {
    let bad = console_errors(browser).await;
    assert!(bad.is_empty(), "{page}: the console says {bad:?}");
}

/// The console's errors and CSP violations since the last look.
pub(super) async fn console_errors(browser: &Browser) -> Vec<Value> {
    browser
        .log()
        .await
        .into_iter()
        .filter(|e| e["level"] == "SEVERE" || e["source"] == "security")
        .collect()
}

/// A browser at `width` signed in as `username` through the login form.
pub(super) async fn signed_in(
    app: &TestApp,
    width: Width,
    username: &str,
    password: &str,
) -> Browser {
    let browser = Browser::start(width).await;
    sign_in(&browser, app, username, password).await;
    browser
}

pub(super) async fn sign_in(browser: &Browser, app: &TestApp, username: &str, password: &str) {
    browser.goto(&format!("http://{}/", app.addr())).await;
    on_login(browser).await;
    let name = browser.find("#username").await;
    browser.type_into(&name, username).await;
    let pass = browser.find("#password").await;
    browser.type_into(&pass, password).await;
    browser
        .click(&browser.find("form button[type=submit]").await)
        .await;
    on_my_jobs(browser).await;
}

/// The ids of the rows the jobs page shows, with their states.
pub(super) async fn rows(browser: &Browser) -> Vec<(String, String)> {
    let v = browser
        .execute(
            "return [...document.querySelectorAll('#jobs tbody tr')].map(r => [r.dataset.id, r.dataset.state])",
            json!([]),
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// Sets a `<select>` to `value` as a person choosing it would (its `change` fires).
pub(super) async fn choose(browser: &Browser, css: &str, value: &str) {
    let done = browser
        .execute(
            "const s = document.querySelector(arguments[0]); s.value = arguments[1]; s.dispatchEvent(new Event('change', {bubbles: true})); return s.value === arguments[1]",
            json!([css, value]),
        )
        .await;
    assert_eq!(done, true, "{css} has no option {value}");
}

/// Empties the field `css` and types `text` into it.
pub(super) async fn fill(browser: &Browser, css: &str, text: &str) {
    let field = browser.find(css).await;
    browser.clear(&field).await;
    browser.type_into(&field, text).await;
}

/// Waits until the browser shows the sign-in page.
pub(super) async fn on_login(browser: &Browser) {
    browser
        .wait_for(
            "the login page",
            WAIT,
            "return location.pathname === '/login'",
        )
        .await;
}

/// Waits until the browser shows the signed-in user's own jobs.
pub(super) async fn on_my_jobs(browser: &Browser) {
    browser
        .wait_for(
            "the jobs page",
            WAIT,
            "return location.pathname === '/' && document.querySelector('h1')?.textContent === 'My jobs'",
        )
        .await;
}
