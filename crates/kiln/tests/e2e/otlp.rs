//! The OTLP exporter (feature `otlp`): the real binary sends its spans to a collector on
//! loopback that decodes the OTLP/HTTP protobuf requests, and one trace holds the client's
//! parent, the submitting request and the job's attempt.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kiln_testkit::Client;
use kiln_testkit::wait::wait_until;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as Any, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;

use crate::helpers::ADMIN_PASSWORD;
use crate::process::Server;

/// What the collector received: each export request's resource attributes and spans.
#[derive(Default)]
struct Received {
    spans: Vec<(Vec<KeyValue>, Span)>,
    content_types: Vec<String>,
}

type Shared = Arc<Mutex<Received>>;

async fn traces(State(got): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut got = got.lock().unwrap();
    got.content_types.push(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    );
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default().attributes;
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                got.spans.push((resource.clone(), span));
            }
        }
    }
    StatusCode::OK
}

/// A collector on a free loopback port: `/v1/traces` only.
async fn collector() -> (String, Shared) {
    let got = Shared::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn string_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref().and_then(|v: &Any| v.value.as_ref()) {
            Some(AnyValue::StringValue(s)) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref().and_then(|v: &Any| v.value.as_ref()) {
            Some(AnyValue::IntValue(i)) => Some(*i),
            _ => None,
        }
    })
}

/// The exporter buffers for ten minutes here, so every span below arrives only because a
/// SIGTERM flushes what is buffered before the process exits.
#[tokio::test]
async fn spans_of_a_request_and_its_job_form_one_trace_flushed_at_exit() {
    let (url, got) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_env(
        &dir,
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    let client = Client::new(server.addr);
    let token = client.login("admin", ADMIN_PASSWORD).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let resp = client
        .request(hyper::Method::POST, "/api/v1/jobs")
        .bearer(Some(&token))
        .header("traceparent", &format!("00-{trace}-{parent}-01"))
        .json(&json!({"type": "echo", "payload": {"hello": "traces"}}))
        .send()
        .await;
    assert_eq!(resp.status.as_u16(), 202, "{}", resp.text());
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    wait_until("the job to succeed", Duration::from_secs(20), || {
        let client = &client;
        let (token, id) = (&token, &id);
        async move {
            let job = client
                .get(Some(token), &format!("/api/v1/jobs/{id}"))
                .await
                .json();
            if job["state"] == "succeeded" {
                Ok(())
            } else {
                Err(job["state"].clone())
            }
        }
    })
    .await;
    assert!(
        got.lock().unwrap().spans.is_empty(),
        "spans were sent before the batch delay or the exit"
    );

    server.signal("TERM");
    let status = tokio::task::spawn_blocking(move || server.wait_exit())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");

    let got = got.lock().unwrap();
    assert!(
        got.content_types
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "{:?}",
        got.content_types
    );
    let names: Vec<&str> = got.spans.iter().map(|(_, s)| s.name.as_str()).collect();
    let find = |name: &str| {
        got.spans
            .iter()
            .find(|(_, s)| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} among {names:?}"))
    };

    let (resource, submit) = find("POST /api/v1/jobs");
    assert_eq!(string_attr(resource, "service.name"), Some("kiln"));
    assert_eq!(
        string_attr(resource, "service.instance.id"),
        Some("process-test")
    );
    assert_eq!(hex::encode(&submit.trace_id), trace, "the client's trace");
    assert_eq!(
        hex::encode(&submit.parent_span_id),
        parent,
        "the client's span"
    );
    assert_eq!(submit.kind, SpanKind::Server as i32);
    assert_eq!(
        int_attr(&submit.attributes, "http.response.status_code"),
        Some(202),
        "{:?}",
        submit.attributes
    );

    let (_, attempt) = find("echo attempt");
    assert_eq!(hex::encode(&attempt.trace_id), trace, "the attempt's trace");
    assert_eq!(
        attempt.parent_span_id, submit.span_id,
        "the attempt is a child of the submitting request"
    );
    assert_eq!(
        string_attr(&attempt.attributes, "job_id"),
        Some(id.as_str())
    );

    // A request without a traceparent starts a trace of its own.
    let (_, login) = find("POST /api/v1/auth/login");
    assert_eq!(login.trace_id.len(), 16);
    assert_ne!(hex::encode(&login.trace_id), trace);
    assert!(login.parent_span_id.is_empty(), "{login:?}");
}
