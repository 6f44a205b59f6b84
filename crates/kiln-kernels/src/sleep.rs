//! `sleep`: waits `{ms}` milliseconds, then returns `"ok"`; a cancel interrupts it at once.

use std::time::Duration;

use async_trait::async_trait;
use kiln_domain::JobType;
use kiln_domain::job_type::{SleepPayload, payload};
use serde_json::Value;
use tokio::time::{Instant, sleep_until};

use crate::{Classify, JobContext, Kernel, KernelError};

/// How often progress is updated while sleeping.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// The `sleep` kernel.
#[derive(Debug, Clone, Copy)]
pub struct Sleep;

#[async_trait]
impl Kernel for Sleep {
    fn job_type(&self) -> JobType {
        JobType::Sleep
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError> {
        let SleepPayload { ms } = payload(&ctx.payload).permanent("invalid_input")?;
        ctx.log.line(format!("sleeping {ms} ms"));
        let total = Duration::from_millis(ms);
        let start = Instant::now();
        let end = start + total;
        loop {
            let next = (Instant::now() + PROGRESS_EVERY).min(end);
            tokio::select! {
                () = ctx.cancel.cancelled() => return Err(KernelError::Cancelled),
                () = sleep_until(next) => {}
            }
            if next >= end {
                ctx.progress.set(1.0);
                return Ok(Value::from("ok"));
            }
            ctx.progress
                .set(start.elapsed().as_secs_f32() / total.as_secs_f32());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleep_returns_ok_after_the_delay_with_full_progress() {
        let (ctx, _log) = crate::test_context(json!({"ms": 1_000}));
        let progress = ctx.progress.clone();
        let start = Instant::now();
        assert_eq!(Sleep.run(ctx).await.unwrap(), json!("ok"));
        assert_eq!(start.elapsed(), Duration::from_millis(1_000));
        assert_eq!(progress.get(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_interrupts_a_sleep() {
        let (ctx, _log) = crate::test_context(json!({"ms": 3_600_000}));
        let cancel = ctx.cancel.clone();
        let run = tokio::spawn(async move { Sleep.run(ctx).await });
        tokio::time::sleep(Duration::from_millis(250)).await;
        cancel.cancel();
        let start = Instant::now();
        assert!(matches!(run.await.unwrap(), Err(KernelError::Cancelled)));
        assert!(start.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_bad_payload_is_permanent() {
        let (ctx, _log) = crate::test_context(json!({"ms": "x"}));
        let err = Sleep.run(ctx).await.unwrap_err();
        assert!(!err.to_failure().unwrap().retryable);
    }
}
