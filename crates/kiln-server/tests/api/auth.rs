//! Login, sessions, API tokens and the admin user API.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use hyper::{Method, StatusCode};
use kiln_domain::{Clock, ManualClock};
use kiln_server::ServerConfig;
use kiln_server::auth::throttle::{ADDRESS_FAILURES, NAME_FAILURES};
use serde_json::json;

use crate::helpers::{ADMIN_PASSWORD, PASSWORD, TestApp, problem};

#[tokio::test]
async fn login_returns_a_token_that_authenticates_me() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .send_json(
            Method::POST,
            None,
            "/api/v1/auth/login",
            &json!({"username": "admin", "password": "admin-password-1"}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let body = resp.json();
    assert!(body["token"].as_str().unwrap().starts_with("kiln_"));
    assert!(body["expires_at"].is_string());
    assert_eq!(body["user"]["username"], "admin");
    let me = app.get(body["token"].as_str().unwrap(), "/api/v1/me").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(
        (me.json()["username"].clone(), me.json()["role"].clone()),
        (json!("admin"), json!("admin"))
    );
}

#[tokio::test]
async fn a_bad_password_or_unknown_user_is_a_401_problem() {
    let app = TestApp::spawn().await;
    for (user, password) in [("admin", "wrong-password"), ("nobody", "whatever-1")] {
        let resp = app
            .client
            .send_json(
                Method::POST,
                None,
                "/api/v1/auth/login",
                &json!({"username": user, "password": password}),
            )
            .await;
        let body = problem(&resp, 401, "unauthorized");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("wrong username or password")
        );
    }
}

#[tokio::test]
async fn a_missing_or_unknown_token_is_401_with_www_authenticate() {
    let app = TestApp::spawn().await;
    let none = app.client.get(None, "/api/v1/me").await;
    problem(&none, 401, "unauthorized");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let bad = app
        .client
        .get(Some("kiln_not-a-token"), "/api/v1/jobs")
        .await;
    problem(&bad, 401, "unauthorized");
    let basic = app
        .client
        .request(Method::GET, "/api/v1/me")
        .header("authorization", "Basic YWRtaW46eA==")
        .send()
        .await;
    problem(&basic, 401, "unauthorized");
}

#[tokio::test]
async fn logout_revokes_the_session_token_at_once() {
    let app = TestApp::spawn().await;
    let token = app.user("alice", "client").await;
    assert_eq!(app.get(&token, "/api/v1/me").await.status, StatusCode::OK);
    let out = app.call(Method::POST, &token, "/api/v1/auth/logout").await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    problem(&app.get(&token, "/api/v1/me").await, 401, "unauthorized");
}

#[tokio::test]
async fn api_tokens_are_created_once_used_listed_and_deleted() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let created = app
        .send(
            Method::POST,
            &alice,
            "/api/v1/tokens",
            &json!({"name": "ci", "expires_in_days": 30}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let created = created.json();
    let secret = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_i64().unwrap();
    assert!(created["expires_at"].is_string());

    let me = app.get(&secret, "/api/v1/me").await;
    assert_eq!(me.json()["username"], "alice");

    let list = app.get(&alice, "/api/v1/tokens").await.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "only API tokens are listed, not sessions");
    assert_eq!(list[0]["name"], "ci");
    assert!(
        list[0].get("token").is_none(),
        "the secret is shown only once"
    );

    let bob = app.user("bob", "client").await;
    let not_his = app
        .call(Method::DELETE, &bob, &format!("/api/v1/tokens/{id}"))
        .await;
    problem(&not_his, 404, "not_found");

    let deleted = app
        .call(Method::DELETE, &alice, &format!("/api/v1/tokens/{id}"))
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    problem(&app.get(&secret, "/api/v1/me").await, 401, "unauthorized");
    let empty = app
        .send(
            Method::POST,
            &alice,
            "/api/v1/tokens",
            &json!({"name": " "}),
        )
        .await;
    assert_eq!(problem(&empty, 400, "invalid_request")["field"], "name");
}

#[tokio::test]
async fn the_user_api_is_for_admins_only() {
    let app = TestApp::spawn().await;
    let client = app.user("carol", "client").await;
    let operator = app.user("oscar", "operator").await;
    for token in [&client, &operator] {
        problem(
            &app.get(token, "/api/v1/admin/users").await,
            403,
            "forbidden",
        );
        let create = app
            .send(
                Method::POST,
                token,
                "/api/v1/admin/users",
                &json!({"username": "mallory", "password": PASSWORD, "role": "admin"}),
            )
            .await;
        problem(&create, 403, "forbidden");
        let patch = app
            .send(
                Method::PATCH,
                token,
                "/api/v1/admin/users/1",
                &json!({"role": "admin"}),
            )
            .await;
        problem(&patch, 403, "forbidden");
    }
    let users = app.get(&app.admin, "/api/v1/admin/users").await.json();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "carol", "oscar"]);
}

#[tokio::test]
async fn admins_create_and_change_users() {
    let app = TestApp::spawn().await;
    let body = json!({"username": "dave", "password": PASSWORD});
    let created = app
        .send(Method::POST, &app.admin, "/api/v1/admin/users", &body)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let dave = created.json();
    assert_eq!(dave["role"], "client", "the default role");
    let again = app
        .send(Method::POST, &app.admin, "/api/v1/admin/users", &body)
        .await;
    problem(&again, 409, "conflict");
    let short = app
        .send(
            Method::POST,
            &app.admin,
            "/api/v1/admin/users",
            &json!({"username": "eve", "password": "short"}),
        )
        .await;
    assert_eq!(problem(&short, 400, "invalid_request")["field"], "password");

    let token = app.client.login("dave", PASSWORD).await;
    let path = format!("/api/v1/admin/users/{}", dave["id"]);
    let patched = app
        .send(
            Method::PATCH,
            &app.admin,
            &path,
            &json!({"role": "operator"}),
        )
        .await;
    assert_eq!(patched.json()["role"], "operator");
    // A new role revokes the tokens issued under the old one.
    problem(&app.get(&token, "/api/v1/me").await, 401, "unauthorized");
    let token = app.client.login("dave", PASSWORD).await;
    assert_eq!(
        app.get(&token, "/api/v1/me").await.json()["role"],
        "operator"
    );

    let changed = app
        .send(
            Method::PATCH,
            &app.admin,
            &path,
            &json!({"password": "new-password-9"}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text());
    problem(&app.get(&token, "/api/v1/me").await, 401, "unauthorized");
    let token = app.client.login("dave", "new-password-9").await;

    app.send(Method::PATCH, &app.admin, &path, &json!({"disabled": true}))
        .await;
    problem(&app.get(&token, "/api/v1/me").await, 401, "unauthorized");
    let login = app
        .client
        .send_json(
            Method::POST,
            None,
            "/api/v1/auth/login",
            &json!({"username": "dave", "password": "new-password-9"}),
        )
        .await;
    problem(&login, 401, "unauthorized");
    let missing = app
        .send(
            Method::PATCH,
            &app.admin,
            "/api/v1/admin/users/999",
            &json!({"disabled": true}),
        )
        .await;
    problem(&missing, 404, "not_found");
}

#[tokio::test]
async fn a_session_token_expires_after_the_session_ttl() {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let config = ServerConfig {
        session_ttl: Duration::from_secs(3600),
        ..ServerConfig::default()
    };
    let app = TestApp::spawn_with_clock(config, clock.clone()).await;
    let login = app
        .client
        .send_json(
            Method::POST,
            None,
            "/api/v1/auth/login",
            &json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await
        .json();
    let expires = chrono::DateTime::parse_from_rfc3339(login["expires_at"].as_str().unwrap())
        .unwrap()
        .to_utc();
    assert_eq!(expires, clock.now() + TimeDelta::hours(1));
    let token = login["token"].as_str().unwrap();
    assert_eq!(app.get(token, "/api/v1/me").await.status, StatusCode::OK);
    clock.advance(TimeDelta::hours(1) + TimeDelta::seconds(1));
    problem(&app.get(token, "/api/v1/me").await, 401, "unauthorized");
}

#[tokio::test]
async fn too_many_failed_logins_are_throttled_with_retry_after() {
    let app = TestApp::spawn().await;
    let body = json!({"username": "admin", "password": "not-the-password"});
    for _ in 0..NAME_FAILURES {
        let resp = app
            .client
            .send_json(Method::POST, None, "/api/v1/auth/login", &body)
            .await;
        problem(&resp, 401, "unauthorized");
    }
    let good = json!({"username": "admin", "password": ADMIN_PASSWORD});
    let resp = app
        .client
        .send_json(Method::POST, None, "/api/v1/auth/login", &good)
        .await;
    problem(&resp, 429, "too_many_logins");
    let wait: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 0 && wait <= 30, "{wait}");
    // Tokens issued before keep working; other users can still log in.
    assert_eq!(
        app.get(&app.admin, "/api/v1/me").await.status,
        StatusCode::OK
    );
    app.user("zed", "client").await;
    // The admin lifts the lockout: the right password works again at once.
    let me = app.get(&app.admin, "/api/v1/me").await.json();
    let unlock = format!("/api/v1/admin/users/{}/unlock", me["id"]);
    let zed = app.client.login("zed", crate::helpers::PASSWORD).await;
    assert_eq!(
        app.call(Method::POST, &zed, &unlock).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call(Method::POST, &app.admin, &unlock).await.status,
        StatusCode::NO_CONTENT
    );
    app.client.login("admin", ADMIN_PASSWORD).await;
    let missing = app
        .call(Method::POST, &app.admin, "/api/v1/admin/users/99999/unlock")
        .await;
    problem(&missing, 404, "not_found");
}

/// One address trying many names is stopped for all of them, whatever name comes next.
#[tokio::test]
async fn an_address_guessing_many_names_is_throttled() {
    let app = TestApp::spawn().await;
    for i in 0..ADDRESS_FAILURES {
        let body = json!({"username": format!("guess{i}"), "password": "not-the-password"});
        let resp = app
            .client
            .send_json(Method::POST, None, "/api/v1/auth/login", &body)
            .await;
        problem(&resp, 401, "unauthorized");
    }
    let good = json!({"username": "admin", "password": ADMIN_PASSWORD});
    let resp = app
        .client
        .send_json(Method::POST, None, "/api/v1/auth/login", &good)
        .await;
    let body = problem(&resp, 429, "too_many_logins");
    assert!(
        body["detail"].as_str().unwrap().contains("address"),
        "{body}"
    );
}

/// Parallel guesses at one name share its budget: each attempt counts from its start, so
/// twenty at once get ten tries between them, and the right password is then refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_get_the_budget_of_one_name_between_them() {
    let app = TestApp::spawn().await;
    let body = json!({"username": "admin", "password": "not-the-password"});
    let guesses: Vec<_> = (0..2 * NAME_FAILURES)
        .map(|_| {
            let client = app.client.clone();
            let body = body.clone();
            tokio::spawn(async move {
                client
                    .send_json(Method::POST, None, "/api/v1/auth/login", &body)
                    .await
                    .status
            })
        })
        .collect();
    let mut unauthorized = 0;
    for guess in guesses {
        match guess.await.unwrap() {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(unauthorized, NAME_FAILURES);
    let good = json!({"username": "admin", "password": ADMIN_PASSWORD});
    let resp = app
        .client
        .send_json(Method::POST, None, "/api/v1/auth/login", &good)
        .await;
    problem(&resp, 429, "too_many_logins");
}

/// A login with a name no user can have is a 401 at once: nothing is hashed and nothing is
/// remembered, so such requests cannot grow the server's memory. A body past 16 KiB (a
/// 900 KB name) is a 413 before it is read whole.
#[tokio::test]
async fn a_malformed_username_is_refused_without_being_remembered() {
    let app = TestApp::spawn().await;
    let huge = json!({"username": "x".repeat(900 * 1024), "password": "whatever-1"});
    let resp = app
        .client
        .send_json(Method::POST, None, "/api/v1/auth/login", &huge)
        .await;
    problem(&resp, 413, "payload_too_large");
    assert_eq!(
        resp.header("connection"),
        Some("close"),
        "the rest is never read"
    );
    for name in ["x".repeat(10 * 1024), "a b".to_owned(), String::new()] {
        let body = json!({"username": name, "password": "whatever-1"});
        let resp = app
            .client
            .send_json(Method::POST, None, "/api/v1/auth/login", &body)
            .await;
        problem(&resp, 401, "unauthorized");
    }
    assert_eq!(app.state.logins().tracked(), 0);
    let body = json!({"username": "nobody", "password": "whatever-1"});
    let resp = app
        .client
        .send_json(Method::POST, None, "/api/v1/auth/login", &body)
        .await;
    problem(&resp, 401, "unauthorized");
    assert_eq!(app.state.logins().tracked(), 1, "a well-formed name is");
}

#[tokio::test]
async fn ensure_admin_generates_a_password_once_on_an_empty_store() {
    let db = kiln_testkit::TempSqlite::new();
    let now = chrono::Utc::now();
    let generated = kiln_server::ensure_admin(db.store.as_ref(), None, now)
        .await
        .unwrap()
        .expect("a generated password");
    assert!(generated.len() >= 16);
    let again = kiln_server::ensure_admin(db.store.as_ref(), None, now).await;
    assert_eq!(again.unwrap(), None, "users exist: nothing to do");
    let record = kiln_store::Store::user_by_name(db.store.as_ref(), "admin")
        .await
        .unwrap()
        .expect("admin exists");
    assert_eq!(record.user.role, kiln_domain::Role::Admin);
    assert!(kiln_server::auth::password::verify(
        &generated,
        &record.password_hash
    ));
    let short = kiln_server::ensure_admin(
        kiln_testkit::TempSqlite::new().store.as_ref(),
        Some("short"),
        now,
    )
    .await;
    assert!(short.is_err(), "a too-short configured password is refused");
}

/// Found by fuzzing: a lifetime of tens of thousands of years gave an `expires_at` outside
/// RFC 3339 (`+43458-03-09…`), and a larger one overflowed the date arithmetic (a 500).
/// Lifetimes are 1 to 3,650 days; anything else is a 400 and stores no token.
#[tokio::test]
async fn token_lifetimes_past_ten_years_are_refused() {
    let app = TestApp::spawn_with(ServerConfig {
        token_max_days: 3650,
        ..ServerConfig::default()
    })
    .await;
    let alice = app.user("alice", "client").await;
    for days in [0_u64, 3651, 15_000_000, u64::from(u32::MAX)] {
        let resp = app
            .send(
                Method::POST,
                &alice,
                "/api/v1/tokens",
                &json!({"name": "long", "expires_in_days": days}),
            )
            .await;
        let p = problem(&resp, 400, "invalid_request");
        assert_eq!(p["field"], "expires_in_days", "{p}");
    }
    let list = app.get(&alice, "/api/v1/tokens").await.json();
    assert_eq!(list, json!([]), "nothing half-stored");
    let longest = app
        .send(
            Method::POST,
            &alice,
            "/api/v1/tokens",
            &json!({"name": "ten years", "expires_in_days": 3650}),
        )
        .await;
    assert_eq!(longest.status, StatusCode::CREATED, "{}", longest.text());
    let expires = longest.json()["expires_at"].as_str().unwrap().to_owned();
    assert!(expires.len() == 24 && expires.ends_with('Z'), "{expires}");
}

/// The only active admin cannot be demoted or disabled (nobody could administer Kiln
/// afterwards); once there is another admin, they can.
#[tokio::test]
async fn the_last_active_admin_cannot_be_demoted_or_disabled() {
    let app = TestApp::spawn().await;
    let me = app.get(&app.admin, "/api/v1/me").await.json();
    let path = format!("/api/v1/admin/users/{}", me["id"]);
    for body in [json!({"role": "operator"}), json!({"disabled": true})] {
        let resp = app.send(Method::PATCH, &app.admin, &path, &body).await;
        problem(&resp, 409, "last_admin");
    }
    assert_eq!(
        app.get(&app.admin, "/api/v1/me").await.json()["role"],
        "admin"
    );

    let other = app.user("ada", "admin").await;
    let resp = app
        .send(Method::PATCH, &other, &path, &json!({"role": "operator"}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.json()["role"], "operator");
}

/// Every API token expires: 90 days when the request names no lifetime, and never later
/// than the server's maximum (`KILN_TOKEN_MAX_DAYS`, 365 by default).
#[tokio::test]
async fn api_tokens_expire_by_default_and_within_the_servers_maximum() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let before = chrono::Utc::now();
    let created = app
        .send(
            Method::POST,
            &alice,
            "/api/v1/tokens",
            &json!({"name": "ci"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let expires: chrono::DateTime<chrono::Utc> = created.json()["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let days = (expires - before).num_hours() as f64 / 24.0;
    assert!((89.9..=90.1).contains(&days), "{days} days");

    let resp = app
        .send(
            Method::POST,
            &alice,
            "/api/v1/tokens",
            &json!({"name": "long", "expires_in_days": 366}),
        )
        .await;
    let p = problem(&resp, 400, "invalid_request");
    assert_eq!(p["field"], "expires_in_days", "{p}");
    let resp = app
        .send(
            Method::POST,
            &alice,
            "/api/v1/tokens",
            &json!({"name": "year", "expires_in_days": 365}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
}

/// A change made elsewhere (another node, or the store directly) reaches this server's
/// token cache through the store's signal, well before the cache's own 5 s would.
#[tokio::test]
async fn a_user_disabled_elsewhere_is_refused_without_waiting_for_the_cache() {
    let app = TestApp::spawn().await;
    let token = app.user("ada", "client").await;
    let me = app.get(&token, "/api/v1/me").await;
    assert_eq!(me.status, StatusCode::OK);
    let id = kiln_domain::UserId(me.json()["id"].as_i64().unwrap());
    let patch = kiln_store::UserPatch {
        disabled: Some(true),
        ..kiln_store::UserPatch::default()
    };
    app.store().user_update(id, patch).await.unwrap();
    kiln_testkit::wait::wait_until(
        "the disabled user's token to be refused",
        std::time::Duration::from_secs(3),
        || async {
            match app.get(&token, "/api/v1/me").await.status {
                StatusCode::UNAUTHORIZED => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
}
