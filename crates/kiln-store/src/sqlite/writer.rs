//! The writer thread: the only connection that writes, with group commit.
//!
//! Callers send boxed closures over a channel and await a oneshot reply. The thread blocks
//! for the first command, drains whatever else is already waiting (up to [`MAX_BATCH`]), and
//! runs the lot in one `BEGIN IMMEDIATE` transaction. A cold command (users, tokens, cancel,
//! retry, report, delete) runs inside its own `SAVEPOINT` ([`Writer::call`]), so when it
//! fails (a refused transition, a constraint) it rolls back only its own writes. One
//! `COMMIT` (one fsync) then covers every command of the batch: under load many requests
//! share each fsync, which is what makes tens of thousands of durable writes per second
//! possible on one disk.
//!
//! The hot commands (submit, claim, completion, progress, log lines, lease renewal) skip the
//! savepoint ([`Writer::call_unguarded`]): a savepoint copies every page the command touches
//! into an in-memory journal first, a fifth of the writer's time under load. Those commands
//! fail only before their first write, or on a SQLite error. The writer checks that promise:
//! if an unguarded command fails after changing a row, nothing of its batch is committed and
//! every command of the batch gets the error, as when the `COMMIT` itself fails.
//!
//! After each batch the writer reports the commit to its [`Checkpointer`]; once the WAL has
//! grown past `SqliteOptions::wal_restart_frames`, that runs a `RESTART` checkpoint on the
//! writer's connection, between two batches (see `checkpoint`).
//!
//! Order after the commit: first the batch's [`Signal`]s are published, then every caller
//! gets its reply. So no caller hears of a write that is not durable, and a caller that got
//! its reply finds the signals of its write already in every subscriber's queue. If the
//! `COMMIT` fails, every command of the batch gets that error and no signal is sent.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use kiln_domain::JobId;
use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot};

use super::checkpoint::Checkpointer;
use super::counts::Counts;
use super::{backend, is_transient};
use crate::cache::JobCache;
use crate::error::{BoxError, Result, StoreError};
use crate::model::Signal;
use crate::signal::Outbox;
use kiln_metrics::Metrics;

/// Most commands per transaction. Large enough that one fsync serves a burst of submissions,
/// small enough that one batch holds the write lock for milliseconds, not seconds.
const MAX_BATCH: usize = 512;

/// What a command sees: the batch transaction, and where to put the signals its writes
/// cause (dropped if the command fails, published only after the commit).
pub(super) struct Tx<'c> {
    /// The batch transaction (inside this command's savepoint when the command is guarded).
    pub db: &'c Connection,
    /// Bytes of log kept per job.
    pub log_limit: usize,
    /// Job count changes of this command, applied with the batch if it succeeds.
    pub counts: Counts,
    /// Those of the batch's earlier commands, not yet in `job_counts`.
    earlier: Counts,
    signals: Vec<Signal>,
    evicted: Evicted,
}

/// Jobs a batch changed without a state-change signal (deletes, prunes), which the cache
/// of finished jobs must forget once it commits.
#[derive(Default)]
struct Evicted {
    ids: Vec<JobId>,
    all: bool,
}

impl Tx<'_> {
    /// The count changes not yet written to `job_counts`: the batch's so far and this
    /// command's own. A check that reads `job_counts` adds these.
    pub fn unapplied(&self) -> Counts {
        let mut all = self.earlier;
        all.add(&self.counts);
        all
    }

    /// Publishes `signal` once the batch has committed.
    pub fn signal(&mut self, signal: Signal) {
        self.signals.push(signal);
    }

    /// Removes job `id`, which this command deleted, from the cache once the batch commits
    /// (state changes are evicted through their `Changed` signal).
    pub fn evict(&mut self, id: JobId) {
        self.evicted.ids.push(id);
    }

    /// Empties the cache once the batch commits (after a bulk delete).
    pub fn evict_all(&mut self) {
        self.evicted.all = true;
    }
}

impl Outbox for Tx<'_> {
    fn push(&mut self, signal: Signal) {
        self.signal(signal);
    }
}

/// One queued request: runs inside the batch, then learns whether the batch committed.
trait Command: Send {
    /// Runs the work; `true` if it succeeded (a guarded command's savepoint is then released,
    /// not rolled back).
    fn run(&mut self, tx: &mut Tx<'_>) -> bool;
    /// Sends the reply: the work's own result, or `failure` if the batch did not commit.
    fn finish(self: Box<Self>, failure: Option<StoreError>);
    /// Whether [`Command::run`] needs a savepoint of its own.
    fn guarded(&self) -> bool;
    /// Whether the work failed because the database is full.
    fn failed_full(&self) -> bool;
}

struct Call<F, R> {
    /// Whether the command runs inside a savepoint of its own.
    guarded: bool,
    work: Option<F>,
    result: Option<Result<R>>,
    reply: oneshot::Sender<Result<R>>,
}

impl<F, R> Command for Call<F, R>
where
    F: FnOnce(&mut Tx<'_>) -> Result<R> + Send,
    R: Send,
{
    fn run(&mut self, tx: &mut Tx<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A panicking command must not take the writer (and so the whole store) down with
        // it: it fails alone, like any other failing command.
        let result = catch_unwind(AssertUnwindSafe(|| work(tx)))
            .unwrap_or_else(|_| Err(backend("a store command panicked")));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, failure: Option<StoreError>) {
        let result = match (failure, self.result) {
            (Some(e), _) => Err(e),
            (None, Some(result)) => result,
            (None, None) => Err(backend("a store command did not run")),
        };
        // The caller may have given up waiting (its future was dropped); nothing to do then.
        let _ = self.reply.send(result);
    }

    fn guarded(&self) -> bool {
        self.guarded
    }

    fn failed_full(&self) -> bool {
        matches!(self.result, Some(Err(StoreError::Full(_))))
    }
}

/// Handle to the writer thread. Dropping it lets the thread finish the commands already
/// sent, then waits for it to close the connection.
pub(super) struct Writer {
    commands: Option<mpsc::Sender<Box<dyn Command>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread that owns `conn`.
    pub fn spawn(
        conn: Connection,
        outlet: Outlet,
        log_limit: usize,
        checkpointer: Option<Checkpointer>,
    ) -> Result<Self> {
        let (commands, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kiln-sqlite-writer".to_owned())
            .spawn(move || run(conn, &inbox, &outlet, log_limit, checkpointer))
            .map_err(|e| backend(format!("cannot start the SQLite writer thread: {e}")))?;
        Ok(Self {
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    /// Runs `work` in a coming batch, inside a savepoint of its own, and returns its result
    /// once the batch committed.
    pub async fn call<R, F>(&self, work: F) -> Result<R>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.send(true, work).await
    }

    /// [`Writer::call`] without the savepoint, for `work` that fails only before its first
    /// write or on a SQLite error (module docs).
    pub async fn call_unguarded<R, F>(&self, work: F) -> Result<R>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.send(false, work).await
    }

    async fn send<R, F>(&self, guarded: bool, work: F) -> Result<R>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let command = Box::new(Call {
            guarded,
            work: Some(work),
            result: None,
            reply,
        });
        let sent = match &self.commands {
            Some(commands) => commands.send(command).is_ok(),
            None => false,
        };
        if !sent {
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the queue is empty.
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            // A panic there was already reported by the panic hook; nothing more to do.
            let _ = thread.join();
        }
    }
}

fn stopped() -> StoreError {
    backend("the SQLite writer has stopped")
}

/// Where a committed batch is announced, in this order: the cache of finished jobs forgets
/// what the batch changed, then its signals go out, then its callers get their replies.
pub(super) struct Outlet {
    pub signals: broadcast::Sender<Signal>,
    pub cache: Arc<JobCache>,
    pub metrics: Option<Arc<Metrics>>,
}

/// What a batch's successful commands leave to announce after the commit.
#[derive(Default)]
struct Published {
    signals: Vec<Signal>,
    evicted: Evicted,
}

/// The thread's loop: one batch per wake-up until every sender is gone.
fn run(
    mut conn: Connection,
    inbox: &mpsc::Receiver<Box<dyn Command>>,
    outlet: &Outlet,
    log_limit: usize,
    mut checkpointer: Option<Checkpointer>,
) {
    while let Ok(first) = inbox.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch, outlet, log_limit);
        if let Some(checkpointer) = &mut checkpointer {
            checkpointer.committed(&conn);
        }
    }
}

fn run_batch(
    conn: &mut Connection,
    mut batch: Vec<Box<dyn Command>>,
    outlet: &Outlet,
    log_limit: usize,
) {
    let mut published = Published::default();
    let started = std::time::Instant::now();
    let executed = execute(conn, &mut batch, &mut published, log_limit);
    let took = started.elapsed();
    if let Some(metrics) = &outlet.metrics {
        metrics.store_commit(batch.len(), took);
    }
    crate::warn_if_slow("a SQLite commit", took);
    match executed {
        Ok(()) => {
            evict(&outlet.cache, &published);
            publish(&outlet.signals, published.signals);
            for command in batch {
                command.finish(None);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, commands = batch.len(), "SQLite batch failed to commit");
            for command in batch {
                command.finish(Some(batch_error(&e)));
            }
        }
    }
}

/// Runs every command in one transaction (each guarded one in a savepoint of its own) and
/// commits.
fn execute(
    conn: &mut Connection,
    batch: &mut [Box<dyn Command>],
    published: &mut Published,
    log_limit: usize,
) -> rusqlite::Result<()> {
    // BEGIN and COMMIT through cached statements: rusqlite's `Transaction` runs them with
    // `execute_batch`, which parses the SQL again for every batch.
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let result = run_commands(conn, batch, published, log_limit)
        .and_then(|()| conn.prepare_cached("COMMIT")?.execute([]).map(drop));
    if result.is_err() && !conn.is_autocommit() {
        // Leave no transaction open for the next batch, whatever failed.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// Runs each command (in a savepoint if guarded), then applies the job count changes of
/// those that succeeded.
fn run_commands(
    txn: &Connection,
    batch: &mut [Box<dyn Command>],
    published: &mut Published,
    log_limit: usize,
) -> rusqlite::Result<()> {
    let mut counts = Counts::default();
    for command in batch.iter_mut() {
        let guarded = command.guarded();
        if guarded {
            txn.prepare_cached("SAVEPOINT command")?.execute([])?;
        }
        let changes = txn.total_changes();
        let mut tx = Tx {
            db: txn,
            log_limit,
            counts: Counts::default(),
            earlier: counts,
            signals: Vec::new(),
            evicted: Evicted::default(),
        };
        let ok = command.run(&mut tx);
        if !ok && txn.is_autocommit() {
            // SQLite rolled the whole transaction back itself (a full database or disk
            // does that): the batch is lost, and every caller hears why.
            return Err(half_written(command.failed_full()));
        }
        if ok {
            published.signals.append(&mut tx.signals);
            published.evicted.ids.append(&mut tx.evicted.ids);
            published.evicted.all |= tx.evicted.all;
            counts.add(&tx.counts);
        }
        if guarded {
            if !ok {
                txn.prepare_cached("ROLLBACK TO command")?.execute([])?;
            }
            txn.prepare_cached("RELEASE command")?.execute([])?;
        } else if !ok && txn.total_changes() != changes {
            return Err(half_written(command.failed_full()));
        }
    }
    counts.apply(txn)
}

/// The batch error when an unguarded command failed after writing (see the module docs), or
/// when SQLite rolled the batch back itself: `SQLITE_FULL` when that was the command's
/// failure, so every caller hears the database is full.
fn half_written(full: bool) -> rusqlite::Error {
    let code = if full {
        rusqlite::ffi::SQLITE_FULL
    } else {
        rusqlite::ffi::SQLITE_ABORT
    };
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(code),
        Some(
            "a command failed after writing part of its change, or SQLite rolled its \
             transaction back; the batch was rolled back"
                .to_owned(),
        ),
    )
}

/// Makes the cache forget every job the batch changed: those with a state-change signal and
/// those deleted. A batch that changed no job leaves the cache (and its epoch) alone.
fn evict(cache: &JobCache, published: &Published) {
    let changed = published.signals.iter().filter_map(|s| match s {
        Signal::Changed(e) => Some(e.job_id),
        _ => None,
    });
    let ids: Vec<JobId> = changed
        .chain(published.evicted.ids.iter().copied())
        .collect();
    if !ids.is_empty() || published.evicted.all {
        cache.evict(ids, published.evicted.all);
    }
}

/// Sends the batch's signals in order, with `JobAvailable` at most once: one wake-up is
/// enough for a claimer to find everything that became ready.
fn publish(signals: &broadcast::Sender<Signal>, published: Vec<Signal>) {
    let mut available = false;
    for signal in published {
        if signal == Signal::JobAvailable {
            if available {
                continue;
            }
            available = true;
        }
        // No subscriber is not an error: nobody is listening yet.
        let _ = signals.send(signal);
    }
}

/// The same error for each caller of a failed batch (a driver error cannot be cloned).
fn batch_error(e: &rusqlite::Error) -> StoreError {
    let source = BoxError::from(format!("the batch did not commit: {e}"));
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        StoreError::Full(source)
    } else if is_transient(e) {
        StoreError::Transient(source)
    } else {
        StoreError::Backend(source)
    }
}

#[cfg(test)]
mod tests;
