//! WAL checkpoints on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that pushes the WAL past 1,000
//! pages, on the connection that committed: here, the writer thread. A checkpoint copies the
//! WAL into the database file and fsyncs both, which on an ordinary disk takes 10–20 ms; with
//! a few hundred jobs a second that happened several times a second, and every submission,
//! claim and completion waiting behind it paid for it (a p95 start latency of 8–9 ms at 200
//! jobs/s, against 0–1 ms without). So the writer's automatic checkpoint is off and this
//! thread, with a connection of its own, runs a `PASSIVE` checkpoint (it never waits for a
//! lock and never blocks the writer) shortly after the writer reports commits.
//!
//! Durability is unchanged: a commit is durable when its WAL frames are written (and, with
//! `synchronous=FULL`, synced) by the writer; checkpointing only moves committed pages into
//! the main file, and SQLite's own locking keeps it safe beside the writer and the readers.
//! When the last connection closes, SQLite checkpoints what is left.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::{backend, schema};
use crate::error::Result;

/// The shortest time between two checkpoints: under a steady stream of commits, one
/// checkpoint (one pair of fsyncs) covers everything committed in this window.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// What the writer and the checkpoint thread share.
#[derive(Default)]
struct State {
    /// Commits since the last checkpoint.
    dirty: bool,
    /// The store is closing.
    stop: bool,
}

/// The writer's handle: [`Checkpointer::committed`] after every commit.
pub(super) struct Checkpointer {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the checkpoint thread on its own connection to `file`.
    pub fn spawn(file: &Path) -> Result<Self> {
        let conn = schema::open_checkpointer(file)?;
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kiln-sqlite-ckpt".to_owned())
            .spawn(move || run(&conn, &theirs))
            .map_err(|e| backend(format!("cannot start the SQLite checkpoint thread: {e}")))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Tells the thread that the WAL has grown. Cheap: a flag and a wake-up.
    pub fn committed(&self) {
        let (state, wake) = &*self.shared;
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.dirty {
            state.dirty = true;
            wake.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        {
            let (state, wake) = &*self.shared;
            state.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            wake.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, shared: &(Mutex<State>, Condvar)) {
    let (state, wake) = shared;
    loop {
        {
            let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
            while !guard.dirty && !guard.stop {
                guard = wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            if guard.stop {
                return;
            }
            guard.dirty = false;
        }
        if let Err(e) = checkpoint(conn) {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next commit retries it");
        }
        // Rate limit, but wake at once for a stop.
        let guard = state.lock().unwrap_or_else(|e| e.into_inner());
        if guard.stop {
            return;
        }
        let (guard, _) = wake
            .wait_timeout_while(guard, MIN_INTERVAL, |s| !s.stop)
            .unwrap_or_else(|e| e.into_inner());
        if guard.stop {
            return;
        }
    }
}

/// One passive checkpoint: copies what no reader still needs, never waits for a lock.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use kiln_domain::Role;

    use crate::Store;
    use crate::model::NewUser;
    use crate::sqlite::{SqliteOptions, SqlitePath, SqliteStore};

    #[tokio::test]
    async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln.db");
        let store: Arc<dyn Store> = SqliteStore::open(SqliteOptions {
            path: SqlitePath::File(file.clone()),
            ..SqliteOptions::default()
        })
        .unwrap();
        let size = || std::fs::metadata(&file).unwrap().len();
        let before = size();
        let mut tasks = Vec::new();
        for n in 0..300 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let user = NewUser {
                    username: format!("user-{n}-{}", "x".repeat(200)),
                    password_hash: "h".repeat(100),
                    role: Role::Client,
                };
                store.user_insert(user, chrono::Utc::now()).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // The writer never checkpoints (its automatic checkpoint is off): only the
        // checkpoint thread moves the committed pages into the database file.
        let deadline = Instant::now() + Duration::from_secs(10);
        while size() <= before {
            assert!(
                Instant::now() < deadline,
                "no checkpoint: the database file stayed at {before} bytes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
