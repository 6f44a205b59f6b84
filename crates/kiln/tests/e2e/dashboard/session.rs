//! Signing in, the session cookie and its CSRF rules, the assets.

use hyper::{Method, StatusCode};
use kiln_testkit::browser::{Browser, Width};
use kiln_testkit::{Client, TestResponse};
use serde_json::json;

use super::*;
use crate::helpers::{ADMIN_PASSWORD, TestApp};

#[tokio::test]
pub(super) async fn signing_in_leads_to_my_jobs_at_desktop_and_phone_width() {
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
        on_login(&browser).await;
        browser.goto(&format!("http://{}/", app.addr())).await;
        on_login(&browser).await;
        browser.close().await;
    }
    app.stop().await;
}

/// `POST /login` as a browser's form would send it, from `origin`.
pub(super) async fn form_login(client: &Client, origin: &str, password: &str) -> TestResponse {
    client
        .request(Method::POST, "/login")
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .raw(format!("username=admin&password={password}"))
        .send()
        .await
}

#[tokio::test]
pub(super) async fn a_cookie_session_writes_only_with_our_origin_and_its_csrf_token() {
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
    let me = cookie_get(&app, "/api/v1/me", &cookie).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["username"], "admin");
    assert_eq!(me.header("cache-control"), Some("no-store"));
    let page = cookie_get(&app, "/", &cookie).await;
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
    let counts = cookie_get(&app, "/api/v1/jobs/counts", &cookie).await;
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
    let me = cookie_get(&app, "/api/v1/me", &cookie).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    let page = cookie_get(&app, "/", &cookie).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.header("location"), Some("/login"));
    app.stop().await;
}

#[tokio::test]
pub(super) async fn assets_are_hashed_cached_for_good_and_gzipped() {
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

/// `GET path` with only the session cookie.
async fn cookie_get(app: &TestApp, path: &str, cookie: &str) -> TestResponse {
    app.client
        .request(Method::GET, path)
        .header("cookie", cookie)
        .send()
        .await
}
