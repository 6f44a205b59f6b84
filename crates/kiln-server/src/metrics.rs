//! `GET /metrics`: the node's Prometheus metrics ([`kiln_metrics::Metrics`]) in the text
//! exposition format, with the figures the database holds read at each scrape; or, for a
//! client that asks for `application/json`, the JSON summary ([`kiln_api::MetricsSummary`]).
//!
//! Negotiation: text unless `Accept` names `application/json` (and not a Prometheus format
//! first: a scraper's `Accept` lists `application/openmetrics-text` and `text/plain`).

use axum::http::HeaderMap;
use axum::http::header::ACCEPT;

use crate::problem::ApiError;
use crate::state::AppState;

/// Whether the client asked for the JSON summary rather than Prometheus text.
pub fn wants_json(headers: &HeaderMap) -> bool {
    let accept: Vec<&str> = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let names = |what: &str| accept.iter().any(|v| v.contains(what));
    names("application/json") && !names("text/plain") && !names("application/openmetrics-text")
}

/// The metrics text, after reading queue depths and the pool from the store.
pub async fn render(state: &AppState) -> Result<String, ApiError> {
    let depths = state.store().queue_depths().await?;
    let pool = state.store().pool_status();
    Ok(state.metrics().encode(|scrape| {
        for d in &depths {
            scrape.queue_depth(&d.queue, d.state.as_str(), d.n);
        }
        if let Some(p) = pool {
            scrape.metrics().set_pool(p.idle, p.busy, p.waiting);
        }
    }))
}

/// Counts one live-stream follower for as long as it is kept (inside the stream).
pub struct Counted(AppState);

impl Counted {
    /// A follower of `state`'s streams, counted until dropped.
    pub fn follower(state: &AppState) -> Self {
        state.metrics().follower(1);
        Self(state.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.metrics().follower(-1);
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn json_only_for_clients_that_ask_for_it() {
        let mut headers = HeaderMap::new();
        assert!(!wants_json(&headers));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(wants_json(&headers));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
        );
        assert!(!wants_json(&headers));
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_json(&headers));
    }
}
