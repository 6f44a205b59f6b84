//! The read connections: a few threads, each owning one connection for its whole life.
//!
//! In WAL mode a reader sees the last commit made before its read began and never blocks the
//! writer, so gets, lists, token lookups and stats run here beside the writer's batches.
//! SQLite calls block, so they cannot run on the async threads. Each read is handed to the
//! next free reader thread over one shared queue, and the answer comes back on a oneshot.
//! Dedicated threads are written here rather than `spawn_blocking` per read: the blocking
//! pool's hand-off (its queue, a thread wake-up, a `JoinHandle`) and the check-out of a
//! pooled connection behind a semaphore and a mutex cost as much as a small read itself.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{backend, schema};
use crate::error::Result;

/// One read as a reader thread runs it.
type Read = Box<dyn FnOnce(&Connection) + Send>;

/// A fixed set of reader threads over one database file. Dropping the pool ends them once
/// the reads already queued have run.
pub(super) struct ReaderPool {
    queue: Sender<Read>,
}

impl ReaderPool {
    /// Opens `size` read connections to `file`, each on its own thread.
    pub fn open(file: &Path, size: usize) -> Result<Self> {
        let (queue, reads) = crossbeam_channel::unbounded::<Read>();
        for i in 0..size {
            let conn = schema::open_reader(file)?;
            let reads = reads.clone();
            std::thread::Builder::new()
                .name(format!("kiln-sqlite-reader-{i}"))
                .spawn(move || serve(&conn, &reads))
                .map_err(|e| backend(format!("cannot start a SQLite reader thread: {e}")))?;
        }
        Ok(Self { queue })
    }

    /// Runs `work` on the next free read connection.
    pub async fn run<R, F>(&self, work: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let read: Read = Box::new(move |conn| {
            let started = std::time::Instant::now();
            let result = work(conn);
            crate::warn_if_slow("a SQLite read", started.elapsed());
            // The caller may have gone away (a dropped request): nothing to tell then.
            let _ = answer.send(result);
        });
        self.queue
            .send(read)
            .map_err(|_| backend("the SQLite readers have stopped"))?;
        answered
            .await
            .map_err(|_| backend("a SQLite read failed (its thread panicked)"))?
    }
}

/// A reader thread: runs reads until the pool is dropped. A read that panics drops its
/// answer (the caller gets an error) and the thread goes on with the next one.
fn serve(conn: &Connection, reads: &Receiver<Read>) {
    while let Ok(read) = reads.recv() {
        if catch_unwind(AssertUnwindSafe(|| read(conn))).is_err() {
            tracing::error!("a SQLite read panicked");
        }
    }
}
