//! The pool of read connections.
//!
//! In WAL mode a reader sees the last commit made before its read began and never blocks the
//! writer, so lists, gets, token lookups and stats run here beside the writer's batches.
//! SQLite calls block, so each read runs on tokio's blocking pool; a semaphore bounds the
//! reads in flight to the number of connections.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::{backend, schema};
use crate::error::Result;

/// A fixed set of read connections to one database file.
pub(super) struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    /// Opens `size` read connections to `file`.
    pub fn open(file: &Path, size: usize) -> Result<Self> {
        let idle = (0..size)
            .map(|_| schema::open_reader(file))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// Runs `work` on an idle connection, waiting for one if all are busy.
    pub async fn run<R, F>(self: &Arc<Self>, work: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| backend("the SQLite reader pool is closed"))?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let lent = Lent {
                conn: pool.take(),
                pool: &pool,
            };
            match &lent.conn {
                Some(conn) => work(conn),
                None => Err(backend("no idle SQLite reader")),
            }
        })
        .await
        .map_err(|e| backend(format!("a SQLite read failed: {e}")))?
    }

    fn take(&self) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }
}

/// A connection on loan; goes back to the pool when dropped, even if the read panicked.
struct Lent<'p> {
    conn: Option<Connection>,
    pool: &'p ReaderPool,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}
