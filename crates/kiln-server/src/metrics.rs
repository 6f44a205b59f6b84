//! `GET /metrics` rendering: the JSON summary ([`MetricsSummary`]) or, for a Prometheus
//! scraper, the same numbers in the text exposition format.
//!
//! Negotiation: a request whose `Accept` names `text/plain` or `application/openmetrics-text`
//! (what Prometheus sends) gets text; anything else, including no `Accept`, gets JSON. The
//! gauges come from the store's counts, so every node reports the same cluster-wide values.

use std::fmt::Write;

use axum::http::HeaderMap;
use axum::http::header::ACCEPT;
use kiln_api::MetricsSummary;

/// The Prometheus text content type.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the client asked for the Prometheus text format.
pub fn wants_text(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/plain") || v.contains("application/openmetrics-text"))
}

/// The summary in the Prometheus text exposition format.
pub fn render_text(m: &MetricsSummary) -> String {
    let mut out = String::new();
    metric(
        &mut out,
        "kiln_jobs_submitted_total",
        "counter",
        "Jobs ever submitted.",
    );
    let _ = writeln!(out, "kiln_jobs_submitted_total {}", m.total_submitted);
    metric(&mut out, "kiln_jobs", "gauge", "Jobs by current state.");
    for (state, n) in [
        ("scheduled", m.scheduled),
        ("queued", m.queued),
        ("running", m.running),
        ("failed", m.failed),
        ("succeeded", m.succeeded),
        ("dead", m.dead),
        ("cancelled", m.cancelled),
    ] {
        let _ = writeln!(out, "kiln_jobs{{state=\"{state}\"}} {n}");
    }
    metric(
        &mut out,
        "kiln_job_duration_avg_seconds",
        "gauge",
        "Mean run time of succeeded jobs.",
    );
    let _ = writeln!(
        out,
        "kiln_job_duration_avg_seconds {}",
        m.avg_duration_ms / 1000.0
    );
    metric(
        &mut out,
        "kiln_job_start_latency_p95_seconds",
        "gauge",
        "p95 of the time from submission to start over the 1,000 most recently finished jobs.",
    );
    let _ = writeln!(
        out,
        "kiln_job_start_latency_p95_seconds {}",
        m.p95_start_latency_ms / 1000.0
    );
    out
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn prometheus_scrapers_get_text_and_everyone_else_json() {
        let mut headers = HeaderMap::new();
        assert!(!wants_text(&headers));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_text(&headers));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
        );
        assert!(wants_text(&headers));
    }

    #[test]
    fn text_has_one_sample_per_state() {
        let m = MetricsSummary {
            total_submitted: 3,
            queued: 2,
            avg_duration_ms: 1500.0,
            ..MetricsSummary::default()
        };
        let text = render_text(&m);
        assert!(text.contains("kiln_jobs_submitted_total 3\n"), "{text}");
        assert!(text.contains("kiln_jobs{state=\"queued\"} 2\n"), "{text}");
        assert!(
            text.contains("kiln_job_duration_avg_seconds 1.5\n"),
            "{text}"
        );
        assert_eq!(text.matches("kiln_jobs{").count(), 7);
    }
}
