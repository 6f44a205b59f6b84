//! `GET /openapi.json` (the OpenAPI 3.1 description) and `GET /docs` (Swagger UI): the
//! document describes exactly the router's routes, their security and their problem
//! responses, and Swagger UI loads from the binary alone.

use std::collections::{BTreeMap, BTreeSet};

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::TestApp;

/// The methods the router uses (`get`, `post`, … in `app.rs`), as the document spells them.
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// The router's source: what [`routes_in_source`] reads the route table from.
const APP_RS: &str = include_str!("../../src/app.rs");
const DASHBOARD_RS: &str = include_str!("../../src/dashboard/mod.rs");

/// The document as served.
async fn document(app: &TestApp) -> Value {
    let resp = app.client.get(None, "/openapi.json").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    resp.json()
}

/// Every operation of the document: (METHOD, path template) → the operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: unexpected key `{method}` (the router uses only {METHODS:?})"
            );
            out.insert((method.to_uppercase(), path.clone()), operation.clone());
        }
    }
    out
}

/// A path template with every `{param}` filled with `x`.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push('x');
            }
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// The body of `fn name(` in `source`: from its `{` to the `}` that closes it.
fn fn_body<'a>(source: &'a str, signature: &str) -> &'a str {
    let start = source
        .find(signature)
        .unwrap_or_else(|| panic!("app.rs has no `{signature}`"));
    let open = start + source[start..].find('{').expect("a body");
    &source[open..open + closing(&source[open..], '{', '}')]
}

/// The length of `text` up to and including the bracket closing its first character.
fn closing(text: &str, open: char, close: char) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
    }
    panic!("unbalanced `{open}` in app.rs");
}

/// The (METHOD, path) pairs of the `.route("…", get(…).post(…))` calls in `body`, each path
/// prefixed with `prefix`.
fn routes_of(body: &str, prefix: &str, out: &mut BTreeSet<(String, String)>) {
    for (at, _) in body.match_indices(".route(") {
        let call = &body[at + ".route".len()..];
        let call = &call[..closing(call, '(', ')')];
        let path = call
            .strip_prefix('(')
            .map(str::trim_start)
            .and_then(|rest| rest.strip_prefix('"'))
            .and_then(|rest| rest.split_once('"'))
            .map(|(path, _)| path)
            .unwrap_or_else(|| panic!("a route whose path is not a string literal: {call}"));
        let mut methods = 0;
        for method in METHODS {
            let needle = format!("{method}(");
            for (i, _) in call.match_indices(&needle) {
                let before = call[..i].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                out.insert((method.to_uppercase(), format!("{prefix}{path}")));
                methods += 1;
            }
        }
        assert!(methods > 0, "no method found in the route {call}");
    }
}

/// The routes `router()` serves, read from `app.rs`: its own `.route(…)` calls and those of
/// `api()`, nested under the prefix `router()` gives it. The parse refuses anything it does
/// not understand (a path that is not a literal, another `nest`, `merge` or `route_service`),
/// so a route cannot hide from it.
fn routes_in_source() -> BTreeSet<(String, String)> {
    // The dashboard's pages (`dashboard::routes()`) are HTML for browsers, not API
    // operations: they are left out of the document, and none may live under `/api/`.
    let router = fn_body(APP_RS, "pub fn router(").replace(".merge(dashboard::routes())", "");
    let router = router.as_str();
    let dashboard = fn_body(DASHBOARD_RS, "pub fn routes(");
    let mut pages = BTreeSet::new();
    routes_of(dashboard, "", &mut pages);
    assert!(
        pages.contains(&("GET".to_owned(), "/".to_owned())),
        "{pages:?}"
    );
    assert!(
        pages.iter().all(|(_, path)| !path.starts_with("/api/")),
        "{pages:?}"
    );
    let api = fn_body(APP_RS, "fn api(");
    for body in [router, api] {
        for hidden in [".merge(", ".route_service(", ".nest_service("] {
            assert!(
                !body.contains(hidden),
                "app.rs uses `{hidden}`: teach this test"
            );
        }
    }
    assert!(
        !api.contains(".nest("),
        "api() nests a router: teach this test"
    );
    let nests: Vec<_> = router.match_indices(".nest(").collect();
    assert_eq!(nests.len(), 1, "router() should nest api() once");
    let prefix = router[nests[0].0..]
        .strip_prefix(".nest(\"")
        .and_then(|rest| rest.split_once("\", api("))
        .map(|(prefix, _)| prefix)
        .expect("router() nests api() under a literal prefix");
    let mut routes = BTreeSet::new();
    routes_of(router, "", &mut routes);
    routes_of(api, prefix, &mut routes);
    routes
}

#[tokio::test]
async fn the_document_is_openapi_3_1_with_a_bearer_scheme_on_every_secured_operation() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let version = doc["openapi"].as_str().expect("an `openapi` version");
    assert!(version.starts_with("3.1"), "{version}");
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");

    let mut ids = BTreeSet::new();
    for ((method, path), operation) in operations(&doc) {
        let id = operation["operationId"].as_str().expect("an operationId");
        assert!(ids.insert(id.to_owned()), "operationId `{id}` twice");
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        // Without a token, an operation that needs one answers 401 before anything else.
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let resp = app
            .client
            .request(method.clone(), &concrete(&path))
            .send()
            .await;
        let needs_token = resp.status == StatusCode::UNAUTHORIZED;
        assert_eq!(
            secured,
            needs_token,
            "{method} {path}: documented {}, but without a token it answers {} {}",
            if secured {
                "with a token"
            } else {
                "without one"
            },
            resp.status,
            resp.text()
        );
        if secured {
            assert!(
                operation["responses"]["401"].is_object(),
                "{method} {path}: 401 undocumented"
            );
        }
    }
}

/// The documented operations are exactly the router's routes, checked two ways:
/// - against the route table in `app.rs` (read by [`routes_in_source`]): no route
///   undocumented, none invented;
/// - against the live router: each documented operation reaches a handler (not the
///   fallback's 404 `no such route`, not 405), and every other method on a documented path
///   is a 405, so the source reading cannot drift from what the router does either.
#[tokio::test]
async fn the_documented_operations_are_the_router_s_routes() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let documented: BTreeSet<(String, String)> = operations(&doc).into_keys().collect();
    let routed = routes_in_source();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let invented: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && invented.is_empty(),
        "routes without documentation: {undocumented:?}; documented but not routed: {invented:?}"
    );
    assert!(routed.contains(&("PUT".to_owned(), "/api/v1/jobs/{id}/retry".to_owned())));

    let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
    for path in paths {
        for method in METHODS {
            let method = method.to_uppercase();
            let is_documented = documented.contains(&(method.clone(), path.clone()));
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            let resp = app
                .client
                .request(method.clone(), &concrete(path))
                .send()
                .await;
            let no_route =
                resp.status == StatusCode::NOT_FOUND && resp.json()["detail"] == "no such route";
            if is_documented {
                assert!(
                    !no_route && resp.status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but not routed: {} {}",
                    resp.status,
                    resp.text()
                );
            } else {
                assert_eq!(
                    resp.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is routed but not documented: {}",
                    resp.text()
                );
            }
        }
    }
}

#[tokio::test]
async fn every_error_response_is_a_problem() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let problem = &doc["components"]["schemas"]["Problem"];
    let properties: BTreeSet<&str> = problem["properties"]
        .as_object()
        .expect("Problem's properties")
        .keys()
        .map(String::as_str)
        .collect();
    let required: BTreeSet<&str> = problem["required"]
        .as_array()
        .expect("Problem's required fields")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: BTreeSet<&str> = ["type", "title", "status", "detail", "code", "request_id"]
        .into_iter()
        .collect();
    assert_eq!(required, expected);
    assert!(properties.contains("field"), "{properties:?}");

    // A real problem has the documented shape.
    let resp = app.client.get(None, "/api/v1/no-such-route").await;
    let body = crate::helpers::problem(&resp, 404, "not_found");
    let keys: BTreeSet<&str> = body
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(keys.is_subset(&properties), "{keys:?} ⊄ {properties:?}");
    assert!(required.is_subset(&keys), "{required:?} ⊄ {keys:?}");

    let mut errors = 0;
    for ((method, path), operation) in operations(&doc) {
        let responses = operation["responses"].as_object().expect("responses");
        assert!(responses.contains_key("500"), "{method} {path}: no 500");
        // Found by fuzzing: a body without `Content-Type: application/json` is a 415, an
        // oversized one a 413, before the handler runs; both must be documented.
        if operation.get("requestBody").is_some() {
            for status in ["413", "415"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: a body but no {status}"
                );
            }
        }
        for (status, response) in responses {
            if !status.starts_with(['4', '5']) {
                continue;
            }
            errors += 1;
            let content = response["content"].as_object().expect("content");
            let types: Vec<&String> = content.keys().collect();
            assert_eq!(
                types,
                ["application/problem+json"],
                "{method} {path} {status}"
            );
            assert_eq!(
                content["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{method} {path} {status}"
            );
        }
    }
    assert!(errors > 100, "only {errors} error responses documented");
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let resp = app.client.get(None, "/docs").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert!(
        resp.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        resp.header("content-type")
    );
    let html = resp.text();
    // Every file the page names (`src="…"`, `href="…"`) loads from this server.
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            let url = &rest[..rest.find('"').expect("a closing quote")];
            assets.push(url.to_owned());
        }
    }
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{assets:?}");
    assert!(assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
    for asset in assets.iter().filter(|a| a.as_str() != "/docs/") {
        assert!(!asset.contains("//"), "an asset from elsewhere: {asset}");
        // Relative to the page's `<base href="/docs/">`.
        let url = match asset.strip_prefix('/') {
            Some(_) => asset.clone(),
            None => format!("/docs/{}", asset.trim_start_matches("./")),
        };
        let resp = app.client.get(None, &url).await;
        assert_eq!(resp.status, StatusCode::OK, "{url}: {}", resp.text());
    }
    // The initializer points Swagger UI at the document.
    let init = app.client.get(None, "/docs/swagger-initializer.js").await;
    assert_eq!(init.status, StatusCode::OK);
    assert!(init.text().contains("/openapi.json"), "{}", init.text());
    let missing = app.client.get(None, "/docs/no-such-file.js").await;
    crate::helpers::problem(&missing, 404, "not_found");
}

/// The Python interpreter that has `openapi-spec-validator`: `$KILN_PY_VENV/bin/python`
/// (`.ci/run` makes it), else `python3`; `None` when neither can import it.
fn validator_python() -> Option<String> {
    let venv = std::env::var("KILN_PY_VENV")
        .ok()
        .map(|venv| format!("{venv}/bin/python"));
    venv.into_iter()
        .chain(["python3".to_owned()])
        .find(|python| {
            std::process::Command::new(python)
                .args(["-c", "import openapi_spec_validator"])
                .output()
                .is_ok_and(|out| out.status.success())
        })
}

/// The served document passes `openapi-spec-validator` as OpenAPI 3.1. Skipped (with a
/// note on stderr) where the validator is not installed, except under CI (`CI` set).
#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let Some(python) = validator_python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but openapi-spec-validator is not installed (see .ci/run)"
        );
        eprintln!("SKIPPED: openapi-spec-validator not installed");
        return;
    };
    let app = TestApp::spawn().await;
    let resp = app.client.get(None, "/openapi.json").await;
    assert_eq!(resp.status, StatusCode::OK);
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, resp.text()).expect("write the document");
    let script = "import json, sys\n\
        from openapi_spec_validator import validate, OpenAPIV31SpecValidator\n\
        with open(sys.argv[1]) as f:\n    spec = json.load(f)\n\
        validate(spec, cls=OpenAPIV31SpecValidator)\n";
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("run the validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator ({python}) rejects the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
