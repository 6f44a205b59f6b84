//! Fresh, empty stores for the suite, one module per backend.
//!
//! Each module has `async fn open() -> Option<(Arc<dyn Store>, Guard)>`: the store, and a
//! guard that cleans up when dropped (a temp dir, a database to drop). `None` skips the
//! check (a PostgreSQL backend returns it, after a loud `SKIPPED: no PostgreSQL` line, when
//! no server is reachable and `KILN_REQUIRE_POSTGRES` is not set).
//!
//! To add PostgreSQL: write `pub mod postgres { pub async fn open() -> Option<(Arc<dyn
//! Store>, Guard)> }` here (a `TestDb` per STYLE §5, migrated, dropped WITH (FORCE) in the
//! guard's `Drop`, with `helpers::LOG_LIMIT` as its log limit), then add `contract!(postgres);` at the bottom of `main.rs`.

use std::any::Any;
use std::sync::Arc;

use kiln_store::Store;

/// Whatever must live as long as the store (and cleans up on drop).
pub type Guard = Box<dyn Any + Send>;

/// SQLite on a real WAL file in a fresh temp dir (not `:memory:`, which hides locking).
pub mod sqlite {
    use super::*;
    use kiln_store::sqlite::{SqliteOptions, SqlitePath, SqliteStore};

    pub async fn open() -> Option<(Arc<dyn Store>, Guard)> {
        let dir = tempfile::tempdir().expect("a temp dir for the test database");
        let store = SqliteStore::open(SqliteOptions {
            path: SqlitePath::File(dir.path().join("kiln.db")),
            log_limit_bytes: crate::helpers::LOG_LIMIT,
            ..SqliteOptions::default()
        })
        .expect("open a fresh SQLite store");
        let store: Arc<dyn Store> = store;
        // Drop order: the store (the writer thread closes its connection) before the dir.
        Some((store, Box::new(dir)))
    }
}
