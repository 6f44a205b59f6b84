//! [`TempPostgres`]: a fresh PostgreSQL database for one test, dropped when the test ends
//! (also when it panics).
//!
//! The admin connection comes from `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Each test gets `kiln_test_<uuid>`, so
//! tests run in parallel without sharing rows. If the server cannot be reached, [`TempPostgres::create`]
//! prints a loud `SKIPPED` line and returns `None`, unless `KILN_REQUIRE_POSTGRES=1`, in
//! which case it panics (CI sets it, so a missing server fails the run instead of
//! silently passing).

use std::io::Write;
use std::sync::Arc;

use kiln_store::postgres::{PgOptions, PgStore};
use tokio_postgres::NoTls;

/// The admin URL used when `DATABASE_URL` is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test; dropped (`WITH (FORCE)`) on drop.
pub struct TempPostgres {
    /// The database's name, `kiln_test_<uuid>`.
    pub name: String,
    /// A `postgres://` URL for it: the admin connection's host, port, user and password.
    pub url: String,
    admin: tokio_postgres::Config,
}

impl TempPostgres {
    /// Creates a fresh, empty database; `None` (after a `SKIPPED` line on stderr) when the
    /// server is unreachable and `KILN_REQUIRE_POSTGRES` is not `1`.
    pub async fn create() -> Option<Self> {
        let admin_url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let admin: tokio_postgres::Config = admin_url
            .parse()
            .unwrap_or_else(|e| panic!("DATABASE_URL {admin_url} does not parse: {e}"));
        let client = match connect(&admin).await {
            Ok(client) => client,
            Err(e) => {
                if std::env::var("KILN_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!(
                        "PostgreSQL not reachable at {admin_url} (KILN_REQUIRE_POSTGRES=1): {e}"
                    );
                }
                // Straight to the process's stderr: the test harness captures `eprintln!`
                // of passing tests, and a skip must never pass silently.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED: PostgreSQL not reachable at {admin_url}: {e} \
                     (set KILN_REQUIRE_POSTGRES=1 to fail instead) ***\n"
                );
                return None;
            }
        };
        let name = format!("kiln_test_{}", uuid::Uuid::now_v7().simple());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let url = url_for(&admin, &name);
        Some(Self { name, url, admin })
    }

    /// A store connected to this database with `opts` (migrated on connect).
    pub async fn store_with(&self, opts: PgOptions) -> Arc<PgStore> {
        PgStore::connect(&self.url, opts)
            .await
            .unwrap_or_else(|e| panic!("cannot connect a PgStore to {}: {e:?}", self.name))
    }

    /// A store connected to this database with default options.
    pub async fn store(&self) -> Arc<PgStore> {
        self.store_with(PgOptions::default()).await
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Drop may run inside a test's runtime (where blocking on it would panic) or during
        // a panic: a thread of its own with a small runtime drops the database either way.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let client = connect(&admin).await.map_err(|e| e.to_string())?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

/// Connects and drives the connection on the current runtime.
async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A `postgres://` URL for database `name` on the admin connection's server and user.
fn url_for(admin: &tokio_postgres::Config, name: &str) -> String {
    let user = admin.get_user().unwrap_or("postgres");
    let host = admin
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(host) => host.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = admin.get_ports().first().copied().unwrap_or(5432);
    let password = admin
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    format!("postgres://{user}{password}@{host}:{port}/{name}")
}
