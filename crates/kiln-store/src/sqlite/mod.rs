//! The embedded SQLite backend: [`SqliteStore`].
//!
//! # Shape
//! - **One writer thread** ([`writer`]) owns the only write connection. Every write is a
//!   closure sent to it over a channel; the thread runs whatever is waiting (up to 512
//!   commands) in one `BEGIN IMMEDIATE` transaction (each cold command inside a savepoint of
//!   its own, so it rolls back alone if it fails; the hot ones fail only before their first
//!   write), commits once (one fsync for the whole group), then
//!   publishes the batch's [`Signal`](crate::Signal)s and answers each caller. Nobody hears
//!   of a write before it is durable.
//! - **Checkpoints** ([`checkpoint`]) run on a thread of their own, so the writer does not
//!   stall on the fsyncs of copying the WAL into the database file. The one exception: when
//!   the WAL passes `wal_restart_frames` (32 MiB), the writer runs a `RESTART` checkpoint
//!   itself between two batches, so the log starts over instead of growing without bound.
//! - **Readers** ([`reader`]): a few reader threads, each owning a read connection, fed by
//!   one queue; WAL lets them read beside the writer. A private in-memory database is
//!   invisible to other connections, so in memory mode reads go through the writer too.
//! - **Finished jobs** (`crate::cache`) are kept in memory for `job_read` and `job_status`; the
//!   writer evicts what each batch changed after its commit and before anyone hears of it,
//!   so a read never shows less than an answer its client already had.
//! - SQL lives next to the function that runs it: [`jobs`] (submit, get, cancel, retry,
//!   report, delete), [`list`], [`claim`] (claim and promotion of due work), [`lease`]
//!   (fenced completion, progress, renewal, rescue lookup), [`event`] (per job, and the
//!   feed across jobs), [`log`], [`users`] (users and tokens), [`retention`] (prune and
//!   stats). [`row`] maps rows to domain types; [`schema`] opens connections and applies
//!   the embedded migrations.
//!
//! This module owns the options, the URL syntax and the one place driver errors are mapped
//! ([`map_err`]); it does not decide legality (that is [`kiln_domain::transition`]).

mod checkpoint;
mod claim;
mod counts;
mod event;
mod jobs;
mod lease;
mod list;
mod log;
mod nodes;
mod queues;
mod reader;
mod retention;
mod row;
mod schema;
mod seed;
mod store;
mod users;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use kiln_metrics::Metrics;
use rusqlite::ErrorCode;
use tokio::sync::broadcast;

use crate::cache::JobCache;
use crate::error::{Result, StoreError, backend};
use crate::model::Signal;
use checkpoint::Checkpointer;
use reader::ReaderPool;
use writer::{Tx, Writer};

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlitePath {
    /// A database file (WAL mode; `-wal` and `-shm` files appear beside it).
    File(PathBuf),
    /// A private in-memory database (`sqlite::memory:`): gone when the store is dropped.
    Memory,
}

/// How hard a commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous = NORMAL` in WAL mode: a commit survives a crash of the process, and the
    /// last commits may be lost if the operating system crashes or power fails.
    #[default]
    Normal,
    /// `synchronous = FULL`: a commit also survives an OS crash, at one more fsync per
    /// group commit.
    Full,
}

/// Options of [`SqliteStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database; default `./kiln-data/kiln.db`.
    pub path: SqlitePath,
    /// Durability of commits; default [`Synchronous::Normal`].
    pub synchronous: Synchronous,
    /// Bytes of log kept per job: past it, the log's head and its newest lines, cut at line
    /// boundaries (see `log_text.rs`). Default 64 KiB.
    pub log_limit_bytes: usize,
    /// Reader threads, each with its own connection; default 4. With 0 (and always in
    /// memory mode) reads queue behind the writer.
    pub readers: usize,
    /// WAL length, in pages, past which the writer starts the log over (see
    /// `sqlite/checkpoint.rs`); default 8,192 (32 MiB of 4 KiB pages).
    pub wal_restart_frames: u32,
    /// Where the writer records each commit's batch size and duration (none by default).
    pub metrics: Option<Arc<Metrics>>,
    /// The largest the database may grow, in bytes (`None`: as large as the disk allows).
    /// A write past it fails as [`StoreError::Full`], as on a full disk.
    pub max_size: Option<u64>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            path: SqlitePath::File(PathBuf::from("./kiln-data/kiln.db")),
            synchronous: Synchronous::Normal,
            log_limit_bytes: 64 * 1024,
            readers: 4,
            wal_restart_frames: 8192,
            metrics: None,
            max_size: None,
        }
    }
}

/// Parses a database URL: `sqlite::memory:`, `sqlite://path`, `sqlite:path`, or a bare path
/// ending in `.db` (also `.sqlite`, `.sqlite3`). A `?query` after a `sqlite:` path is
/// ignored. Anything else (a `postgres://` URL, an empty path) is `None`.
pub fn parse_database_url(url: &str) -> Option<SqlitePath> {
    let url = url.trim();
    if matches!(url, "sqlite::memory:" | "sqlite://:memory:" | ":memory:") {
        return Some(SqlitePath::Memory);
    }
    let path = if let Some(rest) = url.strip_prefix("sqlite:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        rest.split_once('?').map_or(rest, |(path, _)| path)
    } else if [".db", ".sqlite", ".sqlite3"]
        .iter()
        .any(|ext| url.ends_with(ext))
        && !url.contains("://")
    {
        url
    } else {
        return None;
    };
    if path.is_empty() {
        return None;
    }
    Some(SqlitePath::File(PathBuf::from(path)))
}

/// The SQLite implementation of [`Store`](crate::Store).
///
/// Dropping the last handle stops the writer thread after it has finished the commands
/// already sent, and closes every connection.
pub struct SqliteStore {
    writer: Writer,
    readers: Option<Arc<ReaderPool>>,
    signals: broadcast::Sender<Signal>,
    /// Finished jobs, evicted by the writer after each commit (see `cache`).
    cache: Arc<JobCache>,
}

/// Signals buffered per subscriber before it sees `Lagged`.
const SIGNAL_CAPACITY: usize = 4096;

impl SqliteStore {
    /// Opens (creating it and its parent directories if needed) the database, applies the
    /// embedded migrations, starts the writer thread and opens the readers. Blocking: call
    /// it at start-up.
    pub fn open(opts: SqliteOptions) -> Result<Arc<SqliteStore>> {
        let mut conn = schema::open_writer(&opts.path, opts.synchronous)?;
        schema::migrate(&conn)?;
        if let Some(bytes) = opts.max_size {
            let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = i64::try_from(bytes / page.max(1) as u64)
                .unwrap_or(i64::MAX)
                .max(1);
            // SQLite keeps the current size if the cap is below it.
            conn.pragma_update(None, "max_page_count", pages)?;
        }
        let readers = match &opts.path {
            SqlitePath::File(path) if opts.readers > 0 => {
                Some(Arc::new(ReaderPool::open(path, opts.readers)?))
            }
            _ => None,
        };
        let checkpointer = match &opts.path {
            SqlitePath::File(path) => Some(Checkpointer::spawn(
                path,
                &mut conn,
                opts.wal_restart_frames,
            )?),
            SqlitePath::Memory => None,
        };
        let (signals, _) = broadcast::channel(SIGNAL_CAPACITY);
        let cache = Arc::new(JobCache::default());
        let outlet = writer::Outlet {
            signals: signals.clone(),
            cache: Arc::clone(&cache),
            metrics: opts.metrics.clone(),
        };
        let writer = Writer::spawn(conn, outlet, opts.log_limit_bytes, checkpointer)?;
        Ok(Arc::new(SqliteStore {
            writer,
            readers,
            signals,
            cache,
        }))
    }

    /// Applies the embedded migrations that `path` lacks (what `kiln migrate` does) and
    /// returns their versions; empty when the schema is current.
    pub fn migrate(path: &SqlitePath) -> Result<Vec<u32>> {
        let conn = schema::open_writer(path, Synchronous::Full)?;
        schema::migrate(&conn)
    }

    /// Runs `work` in the writer's next group commit.
    async fn write<R, F>(&self, work: F) -> Result<R>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.writer.call(work).await
    }

    /// [`Self::write`] for hot commands that fail only before their first write or on a
    /// SQLite error: no savepoint around them (see [`writer`]).
    async fn write_unguarded<R, F>(&self, work: F) -> Result<R>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.writer.call_unguarded(work).await
    }

    /// Runs `work` on a read connection (or behind the writer when there are none).
    async fn read<R, F>(&self, work: F) -> Result<R>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        match &self.readers {
            Some(pool) => pool.run(work).await,
            None => self.writer.call(move |tx| work(tx.db)).await,
        }
    }
}

/// Whether an error class is worth retrying, kept apart so a failed commit can hand every
/// caller in its batch an error of the same class.
fn is_transient(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// The one place SQLite errors become [`StoreError`]s: a unique or primary-key violation is
/// `Conflict`, busy/locked is `Transient`, anything else `Backend`. Callers that know what
/// was duplicated replace the generic conflict text.
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, _) = &e
        && matches!(
            failure.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )
    {
        return StoreError::conflict("a record with the same key already exists");
    }
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return StoreError::Full(Box::new(e));
    }
    if is_transient(&e) {
        StoreError::Transient(Box::new(e))
    } else {
        StoreError::Backend(Box::new(e))
    }
}

/// Lets `?` map driver errors inside the backend; it defers to [`map_err`].
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        map_err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_name_memory_or_a_file() {
        assert_eq!(
            parse_database_url("sqlite::memory:"),
            Some(SqlitePath::Memory)
        );
        let file = |p: &str| Some(SqlitePath::File(PathBuf::from(p)));
        assert_eq!(
            parse_database_url("sqlite://data/kiln.db"),
            file("data/kiln.db")
        );
        assert_eq!(
            parse_database_url("sqlite:///var/kiln.db"),
            file("/var/kiln.db")
        );
        assert_eq!(parse_database_url("sqlite:kiln.db"), file("kiln.db"));
        assert_eq!(parse_database_url("sqlite://k.db?mode=rwc"), file("k.db"));
        assert_eq!(
            parse_database_url("./kiln-data/kiln.db"),
            file("./kiln-data/kiln.db")
        );
        assert_eq!(parse_database_url("postgres://u@h/db"), None);
        assert_eq!(parse_database_url("kiln.txt"), None);
        assert_eq!(parse_database_url("sqlite://"), None);
    }

    #[test]
    fn unique_violations_are_conflicts_and_busy_is_transient() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, u TEXT UNIQUE)")
            .unwrap();
        conn.execute("INSERT INTO t VALUES (1, 'a')", []).unwrap();
        let dup = conn
            .execute("INSERT INTO t VALUES (2, 'a')", [])
            .unwrap_err();
        assert!(matches!(map_err(dup), StoreError::Conflict { .. }));
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(map_err(busy).is_transient());
        let other = conn.execute("SELECT nope FROM t", []).unwrap_err();
        assert!(matches!(map_err(other), StoreError::Backend(_)));
    }
}
