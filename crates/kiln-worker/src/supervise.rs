//! Background tasks that come back: the dispatcher, the heartbeat and maintenance run under
//! [`supervise`], which starts a task again when it dies (a panic, or an end nobody asked
//! for) and marks it down in the node's metrics meanwhile, so `/readyz` fails until it runs
//! again. Without it, one panic in, say, the heartbeat would leave a node serving requests
//! while its running jobs' leases ran out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kiln_metrics::Metrics;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The first pause before a restart; it doubles with each death in a row, up to
/// [`PAUSE_MAX`].
const PAUSE_FIRST: Duration = Duration::from_millis(100);
/// The longest pause before a restart.
const PAUSE_MAX: Duration = Duration::from_secs(10);

/// Runs the task `start` makes until `done` is cancelled, starting a new one whenever it
/// dies before that.
pub(crate) fn supervise<F, Fut>(
    name: &'static str,
    metrics: Arc<Metrics>,
    done: CancellationToken,
    mut start: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut pause = PAUSE_FIRST;
        loop {
            let ended = tokio::spawn(start()).await;
            if done.is_cancelled() {
                return;
            }
            match ended {
                Err(e) if e.is_panic() => {
                    let why = panic_message(e.into_panic());
                    tracing::error!(task = name, panic = %why, "a background task panicked: starting it again");
                }
                Err(_) => return,
                Ok(()) => {
                    tracing::error!(task = name, "a background task ended: starting it again")
                }
            }
            metrics.task_down(name);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = done.cancelled() => return,
            }
            pause = (pause * 2).min(PAUSE_MAX);
            metrics.task_up(name);
        }
    })
}

/// The text of a panic's payload, when it has one.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_started_again_and_marked_down_meanwhile() {
        let metrics = Arc::new(Metrics::default());
        let done = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&starts);
        let stop = done.clone();
        let handle = supervise("heartbeat", Arc::clone(&metrics), done.clone(), move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let stop = stop.clone();
            async move {
                if n < 2 {
                    panic!("boom {n}");
                }
                stop.cancelled().await;
            }
        });
        // The first death: down until the pause is over.
        while metrics.tasks_down().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(metrics.tasks_down(), ["heartbeat"]);
        // Two deaths, two restarts; the third run lasts.
        while starts.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(metrics.tasks_down().is_empty());
        assert_eq!(metrics.task_restarts(), 2);
        done.cancel();
        handle.await.unwrap();
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "not started again once done"
        );
    }
}
