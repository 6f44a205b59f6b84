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
//!
//! A passive checkpoint alone cannot bound the WAL under a steady stream of commits: SQLite
//! starts the log over only when a write begins with every frame already copied back, and
//! with commits every few hundred microseconds that moment never comes (the log grew by
//! 200 MB a second under `kiln bench`, every frame a fresh page of the file). So the writer
//! watches the log's length ([`LogLength`]) and, past `SqliteOptions::wal_restart_frames`
//! (default 32 MiB of pages: the restart's pause, a copy of what the passive checkpoints
//! have not copied yet and two fsyncs, then comes a few times a second at most under full
//! load), runs a `RESTART` checkpoint itself between two batches, and the next batch writes
//! from the start of the log again. Measured, this alone nearly doubled end-to-end jobs/s
//! at 4 slots: overwriting pages of the file already cached costs far less than appending.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::{backend, schema};
use crate::error::Result;

/// The shortest time between two checkpoints: under a steady stream of commits, one
/// checkpoint (one pair of fsyncs) covers everything committed in this window.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How long a restart waits for readers to leave the log before giving up until the log has
/// grown some more: a quarter of the restart length, then half, then a whole length for as
/// long as readers keep it from completing. A long read (a big export) must not stall the
/// writer often; a busy reader pool must not let the log grow far.
const RESTART_WAIT: Duration = Duration::from_millis(20);

/// What the writer and the checkpoint thread share.
#[derive(Default)]
struct State {
    /// Commits since the last checkpoint.
    dirty: bool,
    /// The store is closing.
    stop: bool,
}

/// The writer's handle: [`Checkpointer::committed`] after every batch.
pub(super) struct Checkpointer {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    log: LogLength,
}

impl Checkpointer {
    /// Starts the checkpoint thread on its own connection to `file`, and watches the WAL
    /// length of `writer`, the write connection, starting it over past `restart_frames`.
    pub fn spawn(file: &Path, writer: &mut Connection, restart_frames: u32) -> Result<Self> {
        let log = LogLength::watch(writer, restart_frames)?;
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
            log,
        })
    }

    /// After a batch of the writer on `writer`: tells the thread that the WAL has grown (a
    /// flag and a wake-up), and starts the log over if it is long.
    pub fn committed(&mut self, writer: &Connection) {
        self.log.after_commit(writer);
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

/// The writer's view of its WAL: how many frames the last commit left in it, and when to
/// start it over (module docs).
struct LogLength {
    /// Frames in the WAL after the writer's last commit, set by its WAL hook.
    frames: Arc<AtomicI32>,
    /// Length at which the next restart is tried.
    restart_at: i32,
    /// Length past which the log is started over.
    limit: i32,
    /// Restarts that readers kept from completing since the last one that did.
    misses: u32,
    /// Restarts tried (for tests).
    tries: u64,
}

impl LogLength {
    /// Watches the WAL of the writer connection `conn`.
    fn watch(conn: &mut Connection, limit: u32) -> Result<Self> {
        let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        let frames = Arc::new(AtomicI32::new(0));
        let hook = Arc::clone(&frames);
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
            hook.store(pages, Ordering::Relaxed);
            Ok(())
        }))?;
        Ok(Self {
            frames,
            restart_at: limit,
            limit,
            misses: 0,
            tries: 0,
        })
    }

    /// After a batch: starts the log over if it is long. Runs on the writer thread, between
    /// batches, so no write is in progress.
    fn after_commit(&mut self, conn: &Connection) {
        let frames = self.frames.load(Ordering::Relaxed);
        if frames < self.restart_at {
            return;
        }
        self.tries += 1;
        match restart(conn) {
            Ok(true) => {
                self.frames.store(0, Ordering::Relaxed);
                self.restart_at = self.limit;
                self.misses = 0;
                return;
            }
            Ok(false) => {
                tracing::debug!(frames, "WAL restart deferred: a reader is still in the log");
            }
            Err(e) => tracing::warn!(error = %e, frames, "WAL restart failed"),
        }
        let step = (self.limit / 4)
            .max(1)
            .saturating_mul(1 << self.misses.min(2));
        self.misses += 1;
        self.restart_at = frames.saturating_add(step);
    }
}

/// A `RESTART` checkpoint waiting at most [`RESTART_WAIT`]; `false` when readers kept it
/// from completing.
fn restart(conn: &Connection) -> rusqlite::Result<bool> {
    conn.busy_timeout(RESTART_WAIT)?;
    let busy = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
        row.get::<_, i32>(0)
    });
    conn.busy_timeout(schema::BUSY_TIMEOUT)?;
    match busy {
        Ok(busy) => Ok(busy == 0),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
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
    #[tokio::test]
    async fn a_steady_stream_of_commits_beside_readers_keeps_the_wal_short() {
        const LIMIT: u32 = 64;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln.db");
        let store: Arc<dyn Store> = SqliteStore::open(SqliteOptions {
            path: SqlitePath::File(file.clone()),
            wal_restart_frames: LIMIT,
            ..SqliteOptions::default()
        })
        .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut reads = 0_u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.user_list().await.unwrap();
                    reads += 1;
                }
                reads
            })
        };
        // One commit after another, each a batch of its own: the passive checkpoints never
        // find the log fully copied when a write begins.
        for n in 0..2000 {
            let user = NewUser {
                username: format!("user-{n}-{}", "x".repeat(200)),
                password_hash: "h".repeat(100),
                role: Role::Client,
            };
            store.user_insert(user, chrono::Utc::now()).await.unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.await.unwrap() > 0, "the reader never read");
        // A frame is a 4 KiB page and a 24-byte header. The log may run a few lengths past
        // the limit while the busy reader makes restarts miss (up to a length per miss);
        // without restarts it grows by thousands of frames here.
        let wal = std::fs::metadata(dir.path().join("kiln.db-wal"))
            .unwrap()
            .len();
        let frames = wal / (4096 + 24);
        assert!(
            frames <= u64::from(LIMIT) * 16,
            "the WAL grew to {frames} frames ({wal} bytes) against a limit of {LIMIT}"
        );
    }
    #[test]
    fn a_long_reader_spaces_out_the_restarts_and_the_log_starts_over_once_it_ends() {
        use super::{LogLength, Ordering};
        use crate::sqlite::Synchronous;
        use crate::sqlite::schema::{open_reader, open_writer};

        const LIMIT: u32 = 64;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln.db");
        let mut writer = open_writer(&SqlitePath::File(file.clone()), Synchronous::Normal).unwrap();
        writer.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let mut log = LogLength::watch(&mut writer, LIMIT).unwrap();
        let commit = |n: usize, log: &mut LogLength| {
            for _ in 0..n {
                writer
                    .execute("INSERT INTO t VALUES (randomblob(3000))", [])
                    .unwrap();
                log.after_commit(&writer);
            }
        };
        commit(10, &mut log);
        // A read transaction on a snapshot inside the log, held through 2,000 commits.
        let reader = open_reader(&file).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap();
        commit(2000, &mut log);
        let held = log.frames.load(Ordering::Relaxed);
        assert!(
            held > 1000,
            "the log restarted under a reader ({held} frames)"
        );
        // After two misses a try comes once per limit's worth of frames, not once per
        // quarter: a quarter of the waits on the reader.
        let most = u64::try_from(held).unwrap() / u64::from(LIMIT) + 3;
        assert!(
            log.tries <= most,
            "{} restarts tried under the reader in {held} frames (at most {most})",
            log.tries
        );

        reader.execute_batch("COMMIT").unwrap();
        commit(2000, &mut log);
        let frames = log.frames.load(Ordering::Relaxed);
        assert!(
            frames <= 2 * i32::try_from(LIMIT).unwrap(),
            "the log did not start over once the reader ended ({frames} frames)"
        );
    }
}
