//! [`LogHub`]: live log lines of running jobs, fanned out to the followers of each job.
//!
//! The hub is one task reading the store's signals. A log append committed on this node
//! arrives as [`Signal::LogAppended`] with its text, which the hub passes to the job's
//! followers as it is (no database read per follower); an append on another node
//! (PostgreSQL) arrives without text, and each follower reads the new part from the store.
//! A job reaching a terminal state ends its followers' streams. Each followed job has a
//! broadcast channel of its own, made by its first follower and dropped with its last,
//! so a job nobody follows costs the hub one map lookup per signal.
//!
//! The hub starts with the first follower, so a server nobody follows runs no hub task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kiln_domain::JobId;
use kiln_store::{Signal, Store};
use tokio::sync::broadcast::{self, error::RecvError};

/// What a follower of one job is told.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Text appended at `start..end` of the job's log stream.
    Text {
        /// Offset of the text's first byte.
        start: u64,
        /// Offset after its last byte.
        end: u64,
        /// The text.
        text: Arc<str>,
    },
    /// The log grew, but the text is not at hand (another node wrote it, or the hub fell
    /// behind the store's signals): read it from the store.
    Moved,
    /// The job reached a terminal state: read what is left, then stop.
    Ended,
}

type Channels = HashMap<JobId, broadcast::Sender<Chunk>>;

/// The live log fan-out; cheap to clone.
#[derive(Clone)]
pub struct LogHub {
    channels: Arc<Mutex<Channels>>,
    /// Chunks buffered per followed job before a slow follower is dropped
    /// (`ServerConfig::log_follow_buffer`).
    capacity: usize,
}

impl LogHub {
    /// A hub fed by `store`'s signals, until the store closes them, buffering `capacity`
    /// chunks per followed job.
    pub fn start(store: &dyn Store, capacity: usize) -> Self {
        let hub = Self {
            channels: Arc::default(),
            capacity: capacity.max(1),
        };
        let signals = store.subscribe();
        tokio::spawn(hub.clone().run(signals));
        hub
    }

    /// Follows job `id` from now on. Subscribe before reading what the log already holds,
    /// so no append falls between the two.
    pub fn follow(&self, id: JobId) -> Follower {
        let rx = {
            let mut channels = self.lock();
            channels
                .entry(id)
                .or_insert_with(|| broadcast::channel(self.capacity).0)
                .subscribe()
        };
        Follower {
            id,
            rx: Some(rx),
            hub: self.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Channels> {
        // A panic while holding this lock leaves the map consistent (plain inserts and
        // removes), so a poisoned lock is still usable.
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run(self, mut signals: broadcast::Receiver<Signal>) {
        loop {
            match signals.recv().await {
                Ok(Signal::LogAppended { id, end, text }) => {
                    let chunk = match text {
                        Some(text) => Chunk::Text {
                            start: end.saturating_sub(text.len() as u64),
                            end,
                            text,
                        },
                        None => Chunk::Moved,
                    };
                    self.send(id, chunk);
                }
                Ok(Signal::Changed(event)) if event.state.is_terminal() => {
                    self.send(event.job_id, Chunk::Ended);
                }
                Ok(_) => {}
                // Appends or ends may be among the missed signals: every follower re-reads.
                Err(RecvError::Lagged(_)) => {
                    for tx in self.lock().values() {
                        let _ = tx.send(Chunk::Moved);
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn send(&self, id: JobId, chunk: Chunk) {
        let channels = self.lock();
        if let Some(tx) = channels.get(&id) {
            let _ = tx.send(chunk);
        }
    }
}

/// One follower of one job; leaving drops the job's channel if it was the last.
pub struct Follower {
    id: JobId,
    rx: Option<broadcast::Receiver<Chunk>>,
    hub: LogHub,
}

impl Follower {
    /// The next chunk; `Lagged` when this follower fell too far behind.
    pub async fn recv(&mut self) -> Result<Chunk, RecvError> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => Err(RecvError::Closed),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut channels = self.hub.lock();
        if channels
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            channels.remove(&self.id);
        }
    }
}
