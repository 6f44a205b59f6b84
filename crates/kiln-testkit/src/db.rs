//! [`TempSqlite`]: a migrated SQLite store on a WAL file in its own temp dir.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_store::sqlite::{SqliteOptions, SqlitePath, SqliteStore};
use tempfile::TempDir;

/// A store on `<tempdir>/kiln.db`; the directory is removed on drop.
pub struct TempSqlite {
    /// The store, open on [`TempSqlite::path`].
    pub store: Arc<SqliteStore>,
    /// The database file, `<tempdir>/kiln.db`.
    pub path: PathBuf,
    /// Keeps the directory alive.
    pub dir: TempDir,
}

impl TempSqlite {
    /// Opens a fresh store.
    pub fn new() -> Self {
        Self::with(SqliteOptions::default())
    }

    /// Opens a fresh store with `opts` (its path replaced by the temp file).
    pub fn with(opts: SqliteOptions) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for the test database");
        let path = dir.path().join("kiln.db");
        let store = SqliteStore::open(SqliteOptions {
            path: SqlitePath::File(path.clone()),
            ..opts
        })
        .expect("open a fresh SQLite store");
        Self { store, path, dir }
    }
}

impl Default for TempSqlite {
    fn default() -> Self {
        Self::new()
    }
}
