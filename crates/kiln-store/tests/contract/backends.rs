//! Fresh, empty stores for the suite, one module per backend.
//!
//! Each module has `async fn open() -> Option<(Arc<dyn Store>, Guard)>`: the store, and a
//! guard that cleans up when dropped (a temp dir, a database to drop). `None` skips the
//! check (a PostgreSQL backend returns it, after a loud `SKIPPED: no PostgreSQL` line, when
//! no server is reachable and `KILN_REQUIRE_POSTGRES` is not set).
//!
//! A new backend gets a module here and a `contract!(name);` line at the bottom of
//! `main.rs`: every check then also runs as `name::<check>`.

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

/// PostgreSQL: a fresh database per check (`kiln_test_<uuid>`), migrated on connect and
/// dropped WITH (FORCE) when the guard drops, also when the check fails.
pub mod postgres {
    use super::*;
    use kiln_store::postgres::PgOptions;
    use kiln_testkit::pg::TempPostgres;

    pub async fn open() -> Option<(Arc<dyn Store>, Guard)> {
        let db = TempPostgres::create().await?;
        let store: Arc<dyn Store> = db
            .store_with(PgOptions {
                log_limit_bytes: crate::helpers::LOG_LIMIT,
                ..PgOptions::default()
            })
            .await;
        Some((store, Box::new(db)))
    }
}

/// Backend-specific facts the contract checks rely on (not part of the contract itself).
mod sqlite_setup {
    use std::path::PathBuf;
    use std::sync::Arc;

    use kiln_store::sqlite::{SqliteOptions, SqlitePath, SqliteStore};
    use kiln_store::{NewUser, Store, StoreError};

    use crate::helpers::{at, echo, user};

    /// A store on a new database file in `dir`, and the file's path.
    fn open_in(dir: &tempfile::TempDir) -> (Arc<SqliteStore>, PathBuf) {
        let path = dir.path().join("kiln.db");
        let store = SqliteStore::open(SqliteOptions {
            path: SqlitePath::File(path.clone()),
            ..SqliteOptions::default()
        })
        .unwrap();
        (store, path)
    }

    /// The suite's SQLite store is a real file in WAL mode, so readers and the writer run on
    /// separate connections as in production.
    #[tokio::test]
    async fn sqlite_suite_store_is_a_wal_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = open_in(&dir);
        store
            .user_insert(
                NewUser {
                    username: "wal".to_owned(),
                    password_hash: "x".to_owned(),
                    role: kiln_domain::Role::Client,
                },
                at(0),
            )
            .await
            .unwrap();
        assert!(path.exists());
        assert!(
            dir.path().join("kiln.db-wal").exists(),
            "a -wal file beside the database"
        );
        assert_eq!(store.user_count().await.unwrap(), 1);
    }

    /// A job row naming a type or queue Kiln does not know (a database written by something
    /// else) reads as a backend error, never a panic. PostgreSQL's twin is in
    /// `tests/postgres/ops.rs`.
    #[tokio::test]
    async fn an_unknown_type_or_queue_in_the_database_is_a_backend_error() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = open_in(&dir);
        let store: Arc<dyn Store> = store;
        let alice = user(&store, "alice").await;
        let id = echo(&store, alice, at(0)).await.id;
        let raw = rusqlite::Connection::open(&path).unwrap();
        for (column, value) in [("type", "fork_bomb"), ("queue", "Not A Queue")] {
            raw.execute(&format!("UPDATE jobs SET {column} = ?1"), [value])
                .unwrap();
            let read = store.job_get(None, id).await;
            assert!(
                matches!(read, Err(StoreError::Backend(_))),
                "{column}: {read:?}"
            );
            raw.execute("UPDATE jobs SET type = 'echo', queue = 'default'", [])
                .unwrap();
        }
        assert!(store.job_get(None, id).await.is_ok());
    }
}
