//! What a state change publishes, decided once for both backends: each backend's per-write
//! buffer of signals (the SQLite writer command's `Tx`, PostgreSQL's `Signals`) is an
//! [`Outbox`], and only its `push` is the backend's own.

use std::sync::Arc;

use kiln_domain::change::Change;
use kiln_domain::{Job, JobState, Step};

use crate::model::{FeedEvent, Signal};

/// Where a write queues its signals; they are published only if the write commits.
pub(crate) trait Outbox {
    /// Queues `signal`.
    fn push(&mut self, signal: Signal);

    /// Queues the signals of a state change, `event` being the event row just written:
    /// `Changed`, and `JobAvailable` when the job became `queued`.
    fn changed(&mut self, event: FeedEvent) {
        let queued = event.state == JobState::Queued;
        self.push(Signal::Changed(Arc::new(event)));
        if queued {
            self.push(Signal::JobAvailable);
        }
    }

    /// Queues what `change` asks of the node running `job`: a cancel request is signalled
    /// again when it was already pending, in case that node missed the first signal.
    fn requested(&mut self, job: &Job, change: &Change) {
        if change.step == Step::CancelRequested {
            self.push(Signal::CancelRequested(job.id));
        }
    }
}
