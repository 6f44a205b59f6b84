//! `echo`: returns its payload.

use async_trait::async_trait;
use kiln_domain::JobType;
use serde_json::Value;

use crate::{JobContext, Kernel, KernelError};

/// The `echo` kernel.
#[derive(Debug, Clone, Copy)]
pub struct Echo;

#[async_trait]
impl Kernel for Echo {
    fn job_type(&self) -> JobType {
        JobType::Echo
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError> {
        ctx.progress.set(1.0);
        Ok(ctx.payload)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn echo_returns_its_payload() {
        let payload = json!({"message": "hello world", "n": [1, 2]});
        let (ctx, _log) = crate::test_context(payload.clone());
        assert_eq!(Echo.run(ctx).await.unwrap(), payload);
    }
}
