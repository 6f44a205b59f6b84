//! `pdf_analyze`: local text extraction of an uploaded PDF and, when configured, an
//! analysis by a Gemini model.
//!
//! The extraction always runs, on the CPU pool, bounded in memory and time ([`extract`]):
//! pages, characters, words, the most frequent terms and the language ([`stats`]), with
//! the text of every page kept as the artifact `text.json`. With a [`Model`], the PDF and
//! the prompt then go to the model through its rate [`guard::Limiter`] and circuit
//! [`guard::Breaker`]; the model's answer, token counts and latency join the result.
//!
//! How model failures end an attempt: a 429 is retryable no sooner than the API asked; a
//! 5xx, a time-out or a malformed answer is retryable with the type's backoff; another 4xx
//! or a refusal to answer is permanent; an open circuit (or a budget that would hold the
//! slot too long) defers the job, its attempt not counted. An answer is kept by what was
//! asked (the file's SHA-256, the prompt, the model): a retried job that already has one
//! does not ask again.
//!
//! Here: the kernel; `extract`: the PDF reader; `stats`: the statistics; `gemini`: the
//! model's REST client; `guard`: the limiter and the breaker.

pub mod extract;
pub mod gemini;
pub mod guard;
#[cfg(any(test, feature = "testing"))]
pub mod sample;
pub mod stats;

use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_domain::JobType;
use kiln_domain::job_type::PdfPayload;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cpu::{self, Check};
use crate::{BoxError, Classify, JobContext, Kernel, KernelError};
use extract::{Limits, PdfError};
use gemini::{CallError, Gemini};
use guard::{Breaker, Limiter, OverBudget};

/// The most frequent terms a result lists.
const TOP_TERMS: usize = 20;
/// The artifact holding the text of every page.
pub const TEXT_ARTIFACT: &str = "text.json";
/// Tokens the API counts per PDF page (it reads each page as an image besides its text).
const TOKENS_PER_PAGE: f64 = 258.0;
/// Tokens set aside for the model's answer when budgeting a call.
const ANSWER_TOKENS: f64 = 1_024.0;

/// Where the model's answers are kept for retried jobs (the node's store).
#[async_trait]
pub trait Answers: Send + Sync + std::fmt::Debug {
    /// The answer kept under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Value>, BoxError>;
    /// Keeps `answer` under `key`.
    async fn put(&self, key: &str, answer: &Value) -> Result<(), BoxError>;
}

/// The model a node calls, and what guards it.
#[derive(Debug, Clone)]
pub struct Model {
    /// The client.
    pub client: Gemini,
    /// Requests and tokens per minute.
    pub limiter: Limiter,
    /// The model's circuit breaker.
    pub breaker: Arc<Breaker>,
    /// Answers kept for retries.
    pub answers: Arc<dyn Answers>,
}

/// The `pdf_analyze` kernel; without a model it extracts only.
#[derive(Debug, Clone, Default)]
pub struct PdfAnalyze {
    model: Option<Arc<Model>>,
}

impl PdfAnalyze {
    /// A kernel that asks `model` (or no model) after extracting.
    pub fn new(model: Option<Model>) -> Self {
        Self {
            model: model.map(Arc::new),
        }
    }
}

#[async_trait]
impl Kernel for PdfAnalyze {
    fn job_type(&self) -> JobType {
        JobType::PdfAnalyze
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError> {
        let p = PdfPayload::parse(&ctx.payload).permanent("invalid_input")?;
        let inputs = ctx.inputs.clone().ok_or_else(|| KernelError::Permanent {
            code: "no_object_storage",
            source: "this node has no object storage for uploaded files".into(),
        })?;
        let file = inputs.local(&p.file_id).await?;
        let bytes = tokio::fs::read(file.path()).await.retryable("file_read")?;
        let meta = file.meta().clone();
        drop(file);
        let share = if self.model.is_some() { 0.5 } else { 1.0 };
        let (pages, bytes, extract_ms) = extract_on_pool(&ctx, bytes, share).await?;
        let stats = stats::stats(&pages, TOP_TERMS);
        ctx.log.line(format!(
            "extracted {} pages ({} words) of {} in {extract_ms:.0} ms",
            stats.pages, stats.words, meta.name
        ));
        write_text(&ctx, &pages).retryable("artifact_write")?;
        let mut result = json!({
            "file_id": p.file_id,
            "file_name": meta.name,
            "bytes": meta.size,
            "sha256": meta.sha256,
            "pages": stats.pages,
            "characters": stats.characters,
            "words": stats.words,
            "top_terms": stats.top_terms,
            "language": stats.language,
            "extract_ms": extract_ms,
            "pages_per_second": stats.pages as f64 / (extract_ms / 1e3).max(1e-6),
        });
        result["model"] = match &self.model {
            None => json!({
                "called": false,
                "reason": "the server has no Gemini API key (KILN_GEMINI_API_KEY); the result is the local extraction only",
            }),
            Some(model) => {
                let prompt = p.prompt.as_deref().unwrap_or(gemini::DEFAULT_PROMPT);
                let key = answer_key(&meta.sha256, prompt, &model.client.config().model);
                let asked = ask(model, &ctx, &bytes, prompt, &key, stats.pages).await?;
                ctx.progress.set(1.0);
                asked
            }
        };
        Ok(result)
    }
}

/// Extracts `bytes` on the CPU pool, reporting progress up to `share`; the pages, the
/// bytes back (for the model) and the time taken.
async fn extract_on_pool(
    ctx: &JobContext,
    bytes: Vec<u8>,
    share: f32,
) -> Result<(Vec<String>, Vec<u8>, f64), KernelError> {
    let check = Check::new(ctx);
    cpu::run(move || {
        let started = Instant::now();
        let mut keep_going = |done: usize, total: usize| {
            check.progress(share * done as f32 / total.max(1) as f32);
            check.stopped().is_ok()
        };
        let pages = extract::extract(&bytes, &Limits::default(), &mut keep_going);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        pages.map(|pages| (pages, bytes, ms))
    })
    .await?
    .map_err(|e| {
        let code = match e {
            PdfError::Stopped => return KernelError::Cancelled,
            PdfError::NotPdf => "not_pdf",
            PdfError::Encrypted => "pdf_encrypted",
            PdfError::Corrupt(_) => "pdf_unreadable",
            PdfError::TooLarge(_) => "pdf_too_large",
        };
        KernelError::Permanent {
            code,
            source: e.into(),
        }
    })
}

/// Writes `text.json`: every page's text, in order.
fn write_text(ctx: &JobContext, pages: &[String]) -> std::io::Result<()> {
    let (_, file) = ctx.artifacts.create(TEXT_ARTIFACT)?;
    let mut out = BufWriter::new(file);
    let pages: Vec<Value> = pages
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"page": i + 1, "text": text}))
        .collect();
    serde_json::to_writer(&mut out, &json!({ "pages": pages }))?;
    out.flush()
}

/// The key an answer is kept under: what was asked, hashed.
fn answer_key(file_sha256: &str, prompt: &str, model: &str) -> String {
    let mut hash = Sha256::new();
    for part in [file_sha256, prompt, model] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// The model's part of the result: a kept answer, or a new one through the breaker and
/// the limiter.
async fn ask(
    model: &Model,
    ctx: &JobContext,
    pdf: &[u8],
    prompt: &str,
    key: &str,
    pages: usize,
) -> Result<Value, KernelError> {
    let name = &model.client.config().model;
    let kept = match model.answers.get(key).await {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(error = %e, "kept model answers unreadable; asking the model");
            None
        }
    };
    if let Some(mut answer) = kept {
        ctx.log.line(format!(
            "{name}: an earlier attempt's answer to the same question"
        ));
        answer["cached"] = json!(true);
        return Ok(answer);
    }
    let ticket = model
        .breaker
        .admit()
        .map_err(|wait| KernelError::Deferred {
            code: "model_unavailable",
            source: format!("the circuit breaker of {name} is open after repeated failures").into(),
            after: wait.max(Duration::from_secs(1)),
        })?;
    let tokens = pages as f64 * TOKENS_PER_PAGE + prompt.len() as f64 / 4.0 + ANSWER_TOKENS;
    match model.limiter.acquire(tokens, &ctx.cancel).await {
        Err(e) => {
            return Err(KernelError::Retryable {
                code: "rate_limiter",
                source: e,
            });
        }
        Ok(Err(OverBudget(wait))) => {
            return Err(KernelError::Deferred {
                code: "model_budget",
                source: format!("{name}'s requests or tokens per minute are spent").into(),
                after: wait,
            });
        }
        Ok(Ok(())) if ctx.cancel.is_cancelled() => return Err(KernelError::Cancelled),
        Ok(Ok(())) => {}
    }
    let answer = tokio::select! {
        answer = model.client.analyse(pdf, prompt) => answer,
        () = ctx.cancel.cancelled() => return Err(KernelError::Cancelled),
    };
    ticket.record(answer.as_ref().is_err_and(CallError::is_outage));
    let answer = answer.map_err(|e| classify(e, name))?;
    ctx.log.line(format!(
        "{name} answered in {:.0} ms ({} + {} tokens)",
        answer.latency_ms, answer.prompt_tokens, answer.output_tokens
    ));
    let kept = json!({
        "called": true,
        "name": name,
        "version": answer.model_version,
        "prompt": prompt,
        "analysis": answer.analysis,
        "prompt_tokens": answer.prompt_tokens,
        "output_tokens": answer.output_tokens,
        "latency_ms": answer.latency_ms,
        "uploaded": answer.uploaded,
        "cached": false,
    });
    if let Err(e) = model.answers.put(key, &kept).await {
        tracing::warn!(error = %e, "the model's answer was not kept for retries");
    }
    Ok(kept)
}

/// A failed call as the attempt's error.
fn classify(e: CallError, model: &str) -> KernelError {
    let source: BoxError = format!("{model}: {e}").into();
    match e {
        CallError::RateLimited { retry_after, .. } => KernelError::RetryAfter {
            code: "model_rate_limited",
            source,
            after: retry_after.unwrap_or_default(),
        },
        CallError::Unavailable(_) => KernelError::Retryable {
            code: "model_unavailable",
            source,
        },
        CallError::Rejected { .. } => KernelError::Permanent {
            code: "model_rejected",
            source,
        },
        CallError::Blocked(_) => KernelError::Permanent {
            code: "model_blocked",
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pdf` uploaded by an owner into objects under `dir`; a context for a `pdf_analyze`
    /// of it.
    async fn context(dir: &tempfile::TempDir, pdf: Vec<u8>) -> JobContext {
        let owner = kiln_domain::UserId(7);
        let objects = kiln_objects::Objects::local(&dir.path().join("objects")).expect("objects");
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(pdf))]);
        let file = kiln_objects::NewFile {
            name: "doc.pdf".into(),
            content_type: "application/pdf".into(),
            created_at: chrono::Utc::now(),
        };
        let meta = objects
            .file_put(owner, file, body, 1 << 30)
            .await
            .expect("stored");
        let (mut ctx, _log) = crate::test_context(json!({"file_id": meta.id.to_string()}));
        ctx.inputs = Some(crate::Inputs::new(
            objects,
            owner,
            dir.path().join("scratch"),
        ));
        ctx.artifacts = crate::Artifacts::new(&dir.path().join("artifacts"), ctx.job_id);
        ctx
    }

    #[tokio::test]
    async fn a_cancel_stops_the_extraction_within_a_page() {
        let dir = tempfile::tempdir().expect("dir");
        let ctx = context(&dir, sample::text_pdf(6_000, 300, 3)).await;
        let (cancel, progress) = (ctx.cancel.clone(), ctx.progress.clone());
        let run = tokio::spawn(async move { PdfAnalyze::default().run(ctx).await });
        crate::tests::wait_for_progress(&progress).await;
        cancel.cancel();
        let result = run.await.expect("joined");
        assert!(matches!(result, Err(KernelError::Cancelled)), "{result:?}");
        assert!(progress.get() < 1.0, "stopped before the end");
    }

    #[tokio::test]
    async fn without_a_model_the_result_is_the_local_analysis() {
        let dir = tempfile::tempdir().expect("dir");
        let ctx = context(&dir, sample::text_pdf(3, 80, 4)).await;
        let artifacts = ctx.artifacts.clone();
        let result = PdfAnalyze::default().run(ctx).await.expect("analysed");
        assert_eq!(result["pages"], 3);
        assert_eq!(result["model"]["called"], false);
        let text: Value = serde_json::from_slice(
            &std::fs::read(artifacts.dir().join(TEXT_ARTIFACT)).expect("text.json"),
        )
        .expect("json");
        assert_eq!(text["pages"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn answer_keys_differ_by_file_prompt_and_model() {
        let base = answer_key("abc", "Summarise", "m1");
        assert_eq!(base, answer_key("abc", "Summarise", "m1"));
        assert_eq!(base.len(), 64);
        for other in [
            answer_key("abd", "Summarise", "m1"),
            answer_key("abc", "Summarise!", "m1"),
            answer_key("abc", "Summarise", "m2"),
            // Lengths are hashed too: the parts cannot slide into each other.
            answer_key("abcS", "ummarise", "m1"),
        ] {
            assert_ne!(base, other);
        }
    }
}
