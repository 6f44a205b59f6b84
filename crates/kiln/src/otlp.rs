//! The optional OpenTelemetry exporter (cargo feature `otlp`, ADR 0014): when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the spans
//! of requests and job attempts go to that collector over OTLP/HTTP with protobuf bodies,
//! in batches (the SDK's batch processor and its `OTEL_BSP_*` settings).
//!
//! A request span continues the client's W3C `traceparent` (or starts a trace), a job
//! stores its submitting request's span, and each attempt's span is that span's child, on
//! whichever node runs it: one trace shows the request and every attempt.
//!
//! The exporter's HTTP client is ours ([`Client`]): the SDK exports from a thread of its
//! own, outside the Tokio runtime, so the request is handed to the runtime and awaited; it
//! reuses the CLI's hyper + rustls connector instead of adding reqwest to the build.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// How long one export request may take (the OTLP default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest collector response read.
const MAX_RESPONSE: usize = 1 << 20;

/// Whether the environment names a collector.
pub fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// Keeps the exporter running; [`Exporter::shutdown`] sends what is still buffered.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Flushes the buffered spans and stops the export thread.
    pub async fn shutdown(self) {
        // The SDK blocks until the last batch is sent, which needs the runtime's threads.
        let done = tokio::task::spawn_blocking(move || self.provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            eprintln!("warning: the OTLP exporter did not flush: {e}");
        }
    }
}

/// The tracing layer that exports spans, and its [`Exporter`]; installs the hook that
/// joins Kiln's spans to traces ([`kiln_metrics::trace`]). Must run inside the runtime.
pub fn layer<S>(node: &str) -> anyhow::Result<(impl Layer<S> + use<S>, Exporter)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(Client::new()?)
        .build()
        .context("the OTLP exporter")?;
    let service =
        std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| env!("CARGO_PKG_NAME").to_owned());
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(KeyValue::new("service.instance.id", node.to_owned()))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("kiln");
    kiln_metrics::trace::install(Box::new(Joiner));
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((layer, Exporter { provider }))
}

/// Joins spans to W3C traces through tracing-opentelemetry.
struct Joiner;

impl kiln_metrics::trace::Tracer for Joiner {
    fn adopt(&self, span: &Span, trace_id: &str, parent_span_id: &str) {
        let (Ok(trace_id), Ok(span_id)) = (
            TraceId::from_hex(trace_id),
            SpanId::from_hex(parent_span_id),
        ) else {
            return;
        };
        let parent = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        );
        // Fails only for a span already started or filtered out: it keeps its own trace.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }

    fn ids(&self, span: &Span) -> Option<(String, String)> {
        let cx = span.context();
        let ids = cx.span().span_context().clone();
        ids.is_valid()
            .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
    }
}

/// The exporter's HTTP client: `http://` and `https://` (system roots) over hyper.
#[derive(Debug, Clone)]
struct Client {
    inner: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl Client {
    fn new() -> anyhow::Result<Self> {
        let connector = crate::tls::client::connector(None, None)?;
        Ok(Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
            runtime: tokio::runtime::Handle::try_current()
                .context("the OTLP exporter needs the async runtime")?,
        })
    }

    async fn send(self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(body));
        let response = tokio::time::timeout(EXPORT_TIMEOUT, self.inner.request(request))
            .await
            .map_err(|_| "the collector did not answer in time")??;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // Called from the SDK's export thread: the request runs on the runtime.
        self.runtime
            .spawn(self.clone().send(request))
            .await
            .map_err(|e| format!("the export task failed: {e}"))?
    }
}
