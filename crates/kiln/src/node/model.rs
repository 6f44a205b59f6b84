//! The model `pdf_analyze` asks, wired to the node: its rate buckets and kept answers in the
//! store (so every node on one PostgreSQL shares one budget and one set of answers), its
//! circuit breaker's state in the metrics.

use std::sync::Arc;

use async_trait::async_trait;
use kiln_domain::Clock;
use kiln_kernels::BoxError;
use kiln_kernels::pdf::gemini::{Gemini, GeminiConfig};
use kiln_kernels::pdf::guard::{Breaker, BreakerConfig, Bucket, Buckets, Limiter, OnChange};
use kiln_kernels::pdf::{Answers, Model, PdfAnalyze};
use kiln_metrics::Metrics;
use kiln_store::{RateBucket, Store};
use serde_json::Value;

use crate::config::gemini::GeminiArgs;

/// The `pdf_analyze` kernel: with the model when an API key is set, extraction only
/// otherwise.
pub(super) fn pdf_kernel(
    args: &GeminiArgs,
    store: &Arc<dyn Store>,
    clock: &Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<PdfAnalyze> {
    let Some(key) = &args.api_key else {
        // Closed (nothing refuses a call), so the series exists on every node and the
        // dashboards and alerts that read it never see a gap.
        metrics.model_circuit(&args.model, 0);
        tracing::info!("pdf_analyze jobs extract only: no KILN_GEMINI_API_KEY");
        return Ok(PdfAnalyze::new(None));
    };
    let connector = crate::tls::client::connector(None, None)?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    let config = GeminiConfig {
        api_key: key.0.clone(),
        model: args.model.clone(),
        base_url: args.base_url.trim_end_matches('/').to_owned(),
        timeout: args.timeout,
        inline_limit: usize::try_from(args.inline_limit).unwrap_or(usize::MAX),
    };
    let shared = Arc::new(Shared {
        store: Arc::clone(store),
        clock: Arc::clone(clock),
    });
    let on_change: OnChange = {
        let metrics = Arc::clone(metrics);
        Arc::new(move |model: &str, state| metrics.model_circuit(model, state.gauge()))
    };
    let breaker = BreakerConfig {
        failures: args.breaker_failures,
        failure_rate: args.breaker_rate,
        cool_down: args.breaker_cool_down,
        ..BreakerConfig::default()
    };
    tracing::info!(model = %config.model, base_url = %config.base_url, "pdf_analyze jobs ask a Gemini model");
    Ok(PdfAnalyze::new(Some(Model {
        limiter: Limiter::new(
            &config.model,
            args.requests_per_minute,
            args.tokens_per_minute,
            Arc::clone(&shared) as Arc<dyn Buckets>,
            args.max_wait,
        ),
        breaker: Breaker::new(config.model.clone(), breaker, Some(on_change)),
        answers: shared,
        client: Gemini::new(config, http),
    })))
}

/// The store behind the model's buckets and answers.
struct Shared {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the node's store")
    }
}

#[async_trait]
impl Buckets for Shared {
    async fn take(
        &self,
        bucket: &Bucket,
        cost: f64,
    ) -> Result<Option<std::time::Duration>, BoxError> {
        let bucket = RateBucket {
            name: format!("gemini:{}", bucket.name),
            capacity: bucket.capacity,
            per_second: bucket.per_second,
        };
        Ok(self
            .store
            .rate_take(&bucket, cost, self.clock.now())
            .await?)
    }
}

#[async_trait]
impl Answers for Shared {
    async fn get(&self, key: &str) -> Result<Option<Value>, BoxError> {
        Ok(self.store.answer_get(key, self.clock.now()).await?)
    }

    async fn put(&self, key: &str, answer: &Value) -> Result<(), BoxError> {
        Ok(self.store.answer_put(key, answer, self.clock.now()).await?)
    }
}
