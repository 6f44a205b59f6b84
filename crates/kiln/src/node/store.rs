//! Opening a node's store: SQLite (with the lock that keeps a second process off the file)
//! or PostgreSQL, from the database URL.

use std::sync::Arc;

use anyhow::Context;
use kiln_metrics::Metrics;
use kiln_store::Store;
use kiln_store::postgres::{PgOptions, PgStore};
use kiln_store::sqlite::{SqliteOptions, SqliteStore};

use crate::config::SqliteSync;

/// How to open the database, beside its URL.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// SQLite durability mode.
    pub sqlite_sync: SqliteSync,
    /// PostgreSQL pool size.
    pub pg_pool: usize,
    /// PostgreSQL without `LISTEN/NOTIFY`.
    pub pg_poll_only: bool,
    /// The largest the SQLite database may grow, in bytes.
    pub sqlite_max_size: Option<u64>,
}

impl StoreOptions {
    /// The options a node's configuration asks for.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            sqlite_sync: config.sqlite_sync,
            pg_pool: config.pg_pool,
            pg_poll_only: config.pg_poll_only,
            sqlite_max_size: (config.sqlite_max_size > 0).then_some(config.sqlite_max_size),
        }
    }
}

/// Opens the database at `url` (`sqlite:…` or `postgres://…`) and applies its migrations.
pub async fn open_store(url: &str, opts: StoreOptions) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_store_with(url, opts, None).await?.store)
}

/// An open store, and on PostgreSQL the object store in the same database.
pub(super) struct Opened {
    pub store: Arc<dyn Store>,
    pub pg_objects: Option<Arc<dyn kiln_objects::ObjectStore>>,
}

/// [`open_store`], the SQLite writer recording its commits into `metrics`.
pub(super) async fn open_store_with(
    url: &str,
    opts: StoreOptions,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<Opened> {
    if is_postgres(url) {
        let store = PgStore::connect(
            url,
            PgOptions {
                pool_size: opts.pg_pool.max(1),
                listen: !opts.pg_poll_only,
                ..PgOptions::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("while connecting to PostgreSQL (DATABASE_URL)")?;
        return Ok(Opened {
            pg_objects: Some(store.objects()),
            store,
        });
    }
    let path = sqlite_path(url)?;
    let store = SqliteStore::open(SqliteOptions {
        path,
        synchronous: opts.sqlite_sync.into(),
        metrics,
        max_size: opts.sqlite_max_size,
        ..SqliteOptions::default()
    })
    .with_context(|| format!("while opening the database {url}"))?;
    Ok(Opened {
        store,
        pg_objects: None,
    })
}

/// Applies the migrations the database at `url` lacks, without opening a store (no writer
/// thread, pool or listener): what `kiln migrate` does. Returns the versions applied.
pub async fn migrate_store(url: &str) -> anyhow::Result<Vec<u32>> {
    if is_postgres(url) {
        return PgStore::migrate(url)
            .await
            .context("while migrating PostgreSQL (DATABASE_URL)");
    }
    let path = sqlite_path(url)?;
    // Opening and migrating a file blocks: off the async threads.
    tokio::task::spawn_blocking(move || SqliteStore::migrate(&path))
        .await
        .context("the migration task stopped")?
        .with_context(|| format!("while migrating the database {url}"))
}

/// Takes the lock that makes this the only `kiln serve` or `kiln worker` on a SQLite file
/// (`<file>.lock`, released when the process ends, however it ends). One writer thread
/// changes the file's jobs, which is what its signals and its cache of finished jobs rely
/// on; several processes need PostgreSQL. `kiln user` and `kiln migrate` touch no job and
/// take no lock.
pub(super) fn lock_sqlite(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    if is_postgres(url) {
        return Ok(None);
    }
    let kiln_store::sqlite::SqlitePath::File(path) = sqlite_path(url)? else {
        return Ok(None);
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("while creating {}", dir.display()))?;
    }
    let lock_path = path.with_extension(match path.extension() {
        Some(ext) => format!("{}.lock", ext.to_string_lossy()),
        None => "lock".to_owned(),
    });
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("while opening {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another kiln process is already serving {}: one `kiln serve` or `kiln worker` \
             per SQLite file (run several on PostgreSQL)",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("while locking {}", lock_path.display()))
        }
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn sqlite_path(url: &str) -> anyhow::Result<kiln_store::sqlite::SqlitePath> {
    kiln_store::sqlite::parse_database_url(url)
        .with_context(|| format!("DATABASE_URL `{url}` is neither a SQLite nor a PostgreSQL URL"))
}
