//! The PostgreSQL backend: [`PgStore`], for many nodes sharing one database.
//!
//! # Shape
//! - A [`deadpool_postgres`] pool of connections; each write is one transaction on one
//!   pooled connection (a single statement where it can be: completion, progress, renewal,
//!   users and tokens), with prepared statements cached per connection.
//! - Claims pick rows with `FOR UPDATE SKIP LOCKED` in a CTE and move them with
//!   `UPDATE … RETURNING` in the same statement, so concurrent claimers on any number of
//!   nodes never wait for each other and never take the same job.
//! - The hot writes are coalesced (natural batching, no timer): [`complete`] writes the
//!   outcomes that end together, and the claims for the slots they free, in one
//!   transaction; [`submit`] writes plain submissions in one multi-row insert; [`batch`]
//!   reads events, logs and versions of many jobs in one statement.
//! - Reads whose best plan does not depend on their parameters (the batched reads, and
//!   pages of jobs, whose states are written into the statement) run on a second, smaller
//!   pool whose connections use generic plans (`plan_cache_mode = force_generic_plan`):
//!   left to choose, PostgreSQL planned them again at every call, 15–30 µs of planning for
//!   4–7 µs of execution.
//! - Every state change bumps the job row's `event_seq` and appends the event row with that
//!   number in the same transaction: the row lock orders a job's events without reading
//!   `max(seq)`.
//! - Signals: each write queues its [`Signal`]s in a `Signals` buffer; `PgStore::commit`
//!   commits, publishes them to local subscribers, and queues them for the [`notify`]
//!   notifier, which sends them to other nodes with `pg_notify` (batched, outside the write's
//!   transaction: see there why). The [`notify`] listener re-publishes other nodes'
//!   notifications locally.
//! - SQL lives next to the function that runs it: [`jobs`] (submit, get, cancel, retry,
//!   report, delete), [`list`], [`claim`] (claim and promotion of due work), [`lease`]
//!   (fenced progress, renewal, rescue lookup), [`complete`] (fenced completions), [`feed`] (events across jobs,
//!   for live streams), [`log`], [`users`] (users and tokens), [`retention`] (prune and
//!   stats); [`row`] maps rows to domain types, [`schema`] applies the embedded migrations,
//!   [`tls`] reads `sslmode`/`sslrootcert` into the rustls connector every connection uses.
//!
//! This module owns the options, the pool and the one place driver errors are mapped
//! ([`map_err`]); it does not decide legality (that is [`kiln_domain::transition`]).

mod batch;
mod claim;
mod complete;
mod counts;
mod feed;
mod jobs;
mod lease;
mod list;
mod log;
mod nodes;
mod notify;
mod objects;
mod peers;
mod queues;
mod retention;
mod row;
mod schema;
mod seed;
mod store;
mod submit;
pub mod tls;
mod users;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::broadcast;
use tokio_postgres::error::SqlState;

use crate::cache::JobCache;
use crate::error::{Result, StoreError, backend};
use crate::model::Signal;
use crate::signal::Outbox;
use kiln_domain::UserId;
pub use notify::LISTENER_NAME;
use notify::Signals;

/// Options of [`PgStore::connect`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Most pooled connections of this node; default 16.
    pub pool_size: usize,
    /// `LISTEN` for other nodes' signals on a dedicated connection; default `true`. Turn it
    /// off behind PgBouncer in transaction mode (which cannot hold a `LISTEN`): signals then
    /// only reach this node's own subscribers, and workers fall back to polling.
    pub listen: bool,
    /// Bytes of log kept per job: past it, the log's head and its newest lines, cut at line
    /// boundaries (see `log_text.rs`). Default 64 KiB.
    pub log_limit_bytes: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            listen: true,
            log_limit_bytes: 64 * 1024,
        }
    }
}

/// Connections of the pool for generic-plan reads: a quarter of the main pool's, at least
/// two (the batched reads keep at most a few statements in flight each).
fn lookups_size(pool_size: usize) -> usize {
    (pool_size / 4).max(2)
}

/// A pool of at most `size` connections to `target`; each new connection first runs
/// `setup`, if any.
fn new_pool(target: &tls::Target, size: usize, setup: Option<&'static str>) -> Result<Pool> {
    let manager = Manager::from_config(
        target.config.clone(),
        target.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        // The connection used last goes out first: a few backends do the work while the
        // rest stay idle, so their memory stays in the CPU's caches. Handed out in turn
        // (FIFO), each batch ran on a different backend of sixteen: 15 % fewer
        // submissions/s and 11 % fewer jobs/s end to end on one node (`BENCHMARKS.md`).
        .queue_mode(deadpool_postgres::QueueMode::Lifo);
    if let Some(sql) = setup {
        builder = builder.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            Box::pin(async move {
                client
                    .batch_execute(sql)
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }));
    }
    builder
        .build()
        .map_err(|e| backend(format!("cannot build the PostgreSQL pool: {e}")))
}

/// How long a caller waits for a pooled connection before the call fails as transient.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// Signals buffered per subscriber before it sees `Lagged`.
const SIGNAL_CAPACITY: usize = 4096;

/// The PostgreSQL implementation of [`Store`](crate::Store).
///
/// Dropping the last handle stops the listener; the pooled connections close once the
/// notifier has sent what was queued.
pub struct PgStore {
    pool: Pool,
    /// Connections with generic plans, for reads whose best plan is the same whatever
    /// their parameters (see the module's documentation); the batched reads and the lister
    /// hold handles to it.
    lookups: Pool,
    signals: broadcast::Sender<Signal>,
    log_limit: usize,
    /// Encoded signals for the notifier; it ends once this is dropped and its queue
    /// drained.
    outbox: tokio::sync::mpsc::UnboundedSender<String>,
    listener: Option<tokio::task::JoinHandle<()>>,
    /// Whether other stores listen (this store's signals are sent only then).
    peers: Arc<peers::Peers>,
    /// Finished jobs as last read, each checked against the row's `event_seq` before use
    /// (see `crate::cache`).
    cache: Arc<JobCache>,
    /// Those checks, coalesced into one statement per batch; likewise reads of events and
    /// logs.
    versions: batch::Batcher<batch::Version>,
    events: batch::Batcher<batch::Events>,
    logs: batch::Batcher<batch::Log>,
    /// Lists, pipelined in batches on the lookup connections.
    lister: list::Lister,
    /// Completions (and the claims after them), coalesced into one transaction per batch.
    completer: complete::Completer,
    /// Plain submissions, coalesced into one statement per batch.
    inserter: submit::Inserter,
    /// The stats' run and start times, computed at most once a second.
    times: retention::Times,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db`; `?sslmode=…` for TLS, see [`tls`]),
    /// applies the embedded migrations under an advisory lock (so nodes starting together
    /// migrate once) and, with [`PgOptions::listen`], starts the listener and waits until it
    /// listens (an error if its first connection fails). Must run inside a tokio runtime.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<Arc<PgStore>> {
        let target = parse_url(url)?;
        schema::migrate(&target).await?;
        let pool = new_pool(&target, opts.pool_size, None)?;
        let lookups = new_pool(
            &target,
            lookups_size(opts.pool_size),
            Some("SET plan_cache_mode = force_generic_plan"),
        )?;
        counts::recount(
            &mut pool.get().await.map_err(map_pool_err)?,
            counts::Recount::Waiting,
        )
        .await?;
        let (signals, _) = broadcast::channel(SIGNAL_CAPACITY);
        // Tags this instance's notifications so its listener skips its own echo.
        let origin = uuid::Uuid::now_v7().simple().to_string();
        // A store that does not listen cannot hear newcomers, so it always notifies.
        let peers = Arc::new(peers::Peers::new());
        let listener = if opts.listen {
            let (ready, listening) = tokio::sync::oneshot::channel();
            let task = notify::spawn_listener(
                target,
                notify::Listening {
                    signals: signals.clone(),
                    origin: origin.clone(),
                    peers: Arc::clone(&peers),
                },
                ready,
            );
            // Hand the store out only once other nodes' signals can reach it.
            match listening.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    task.abort();
                    return Err(map_err(e));
                }
                Err(_) => {
                    task.abort();
                    return Err(backend("the PostgreSQL listener stopped before listening"));
                }
            }
            Some(task)
        } else {
            None
        };
        let (outbox, queued) = tokio::sync::mpsc::unbounded_channel();
        notify::spawn_notifier(pool.clone(), origin.clone(), queued, Arc::clone(&peers));
        let cache = Arc::new(JobCache::default());
        let lister = list::Lister::start(lookups.clone(), Arc::clone(&cache));
        let versions = batch::Batcher::start(lookups.clone());
        let events = batch::Batcher::start(lookups.clone());
        let logs = batch::Batcher::start(lookups.clone());
        let publisher = Publisher {
            signals: signals.clone(),
            outbox: outbox.clone(),
            peers: Arc::clone(&peers),
        };
        let completer = complete::Completer::start(pool.clone(), publisher.clone());
        let inserter = submit::Inserter::start(pool.clone(), publisher);
        Ok(Arc::new(PgStore {
            pool,
            lookups,
            signals,
            log_limit: opts.log_limit_bytes,
            outbox,
            listener,
            peers,
            cache,
            lister,
            versions,
            events,
            logs,
            completer,
            inserter,
            times: retention::Times::default(),
        }))
    }

    /// Applies the embedded migrations that the database at `url` lacks (what `kiln migrate`
    /// does) and returns their versions; empty when the schema is current.
    pub async fn migrate(url: &str) -> Result<Vec<u32>> {
        schema::migrate(&parse_url(url)?).await
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(map_pool_err)
    }

    /// Commits `tx`, then publishes `signals` here and queues them for other nodes.
    async fn commit(&self, tx: deadpool_postgres::Transaction<'_>, signals: Signals) -> Result<()> {
        tx.commit().await?;
        self.published(signals);
        Ok(())
    }

    /// Tells this node and the others that `user` changed (a committed user write).
    fn user_changed(&self, user: UserId) {
        let mut signals = Signals::default();
        signals.push(Signal::UserChanged(user));
        self.published(signals);
    }

    /// Publishes the signals of a committed write here and queues them for other nodes.
    fn published(&self, signals: Signals) {
        self.publisher().publish(signals);
    }

    fn publisher(&self) -> Publisher {
        Publisher {
            signals: self.signals.clone(),
            outbox: self.outbox.clone(),
            peers: Arc::clone(&self.peers),
        }
    }

    /// Notifications this store has sent to other nodes (payloads; each carries many
    /// signals): none while no other store listens (see `peers.rs`).
    pub fn notifications_sent(&self) -> u64 {
        self.peers.sent_total()
    }

    /// Whether this store sends its signals to other nodes: while another store listens on
    /// the database, or always when this one does not listen.
    pub fn notifies_others(&self) -> bool {
        self.peers.any()
    }
}

/// Where the signals of committed writes go: this node's subscribers, and the notifier for
/// other nodes. A copy for tasks that write on the store's behalf.
#[derive(Clone)]
struct Publisher {
    signals: broadcast::Sender<Signal>,
    outbox: tokio::sync::mpsc::UnboundedSender<String>,
    /// Checked after the write committed: see `peers.rs`.
    peers: Arc<peers::Peers>,
}

impl Publisher {
    fn publish(&self, signals: Signals) {
        signals.publish(&self.signals);
        if !self.peers.any() {
            return;
        }
        for signal in signals.encoded() {
            // The notifier only stops after the store is dropped.
            let _ = self.outbox.send(signal);
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        // The pool closes once the notifier, which holds a handle to it, has drained.
    }
}

fn parse_url(url: &str) -> Result<tls::Target> {
    tls::target(url)
}

/// SQLSTATEs worth retrying: serialisation failures, deadlocks, lock timeouts, and a server
/// that is shutting down, starting up or out of connections.
fn is_transient_code(code: &SqlState) -> bool {
    *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::TOO_MANY_CONNECTIONS
        || code.code().starts_with("08")
}

/// The one place PostgreSQL errors become [`StoreError`]s: a unique violation is
/// `Conflict`; serialisation failures, deadlocks and lost or refused connections are
/// `Transient`; anything else `Backend`. Callers that know what was duplicated replace the
/// generic conflict text.
pub(crate) fn map_err(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => {
            StoreError::conflict("a record with the same key already exists")
        }
        Some(code) if *code == SqlState::DISK_FULL => StoreError::Full(Box::new(e)),
        Some(code) if is_transient_code(code) => StoreError::Transient(Box::new(e)),
        Some(_) => StoreError::Backend(Box::new(e)),
        // No SQLSTATE: the connection failed or closed (an I/O error, a timeout).
        None if e.is_closed() || io_source(&e) => StoreError::Transient(Box::new(e)),
        None => StoreError::Backend(Box::new(e)),
    }
}

/// A pool failure: the driver's error when connecting failed, else (a timeout waiting for
/// a connection, a closed pool) `Transient`.
pub(crate) fn map_pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => map_err(e),
        other => StoreError::Transient(Box::new(other)),
    }
}

/// Whether an error without a SQLSTATE came from the socket.
fn io_source(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<std::io::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Lets `?` map driver errors inside the backend; it defers to [`map_err`].
impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        map_err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_their_class() {
        assert!(is_transient_code(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(is_transient_code(&SqlState::T_R_DEADLOCK_DETECTED));
        assert!(is_transient_code(&SqlState::CONNECTION_FAILURE));
        assert!(!is_transient_code(&SqlState::UNIQUE_VIOLATION));
        assert!(!is_transient_code(&SqlState::SYNTAX_ERROR));
    }

    #[test]
    fn bad_urls_are_backend_errors() {
        assert!(matches!(
            parse_url("postgres://u@h:notaport/db"),
            Err(StoreError::Backend(_))
        ));
        assert!(parse_url("postgres://postgres@127.0.0.1:5432/kiln").is_ok());
    }
}
