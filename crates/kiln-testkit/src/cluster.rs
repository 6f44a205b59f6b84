//! [`OwnedPostgres`]: a PostgreSQL server of the test's own (`initdb` into a temporary
//! directory with the installed server's binaries, started on a free loopback port), for
//! tests that stop and start the database under a running service. The shared server of
//! [`crate::TempPostgres`] must never be stopped by a test.
//!
//! The binaries are the newest under `/usr/lib/postgresql/*/bin` (Debian's layout), or those
//! in `KILN_PG_BINDIR`. Without them [`OwnedPostgres::start`] prints a loud `SKIPPED` line
//! and returns `None`, unless `KILN_REQUIRE_POSTGRES=1`, which makes it panic. PostgreSQL
//! refuses to run as root, so under root the server runs as the `postgres` user
//! (`runuser`), which then owns the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A PostgreSQL server owned by one test; stopped (immediately) and deleted on drop.
pub struct OwnedPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// A `postgres://` URL of its `postgres` database (trust authentication).
    pub url: String,
}

fn skip(why: &str) -> Option<OwnedPostgres> {
    if std::env::var("KILN_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("cannot run a PostgreSQL server of the test's own (KILN_REQUIRE_POSTGRES=1): {why}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: cannot run a PostgreSQL server of the test's own: {why} \
         (set KILN_REQUIRE_POSTGRES=1 to fail instead) ***\n"
    );
    None
}

/// The directory of the installed server's binaries.
fn bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KILN_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// `program` of `bin`, run as `postgres` when this process is root.
fn command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

/// Whether this process runs as root: `/proc/self` belongs to the process's user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl OwnedPostgres {
    /// Creates and starts a server; `None` (after a `SKIPPED` line) without the binaries,
    /// unless `KILN_REQUIRE_POSTGRES=1`.
    pub fn start() -> Option<Self> {
        let Some(bin) = bindir() else {
            return skip("no PostgreSQL server binaries (set KILN_PG_BINDIR)");
        };
        let dir = tempfile::tempdir().expect("a temp dir");
        if is_root() {
            let owned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status();
            if !owned.is_ok_and(|s| s.success()) {
                return skip("running as root, and the `postgres` user cannot own a directory");
            }
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("its address").port()
        };
        let mut init = command(&bin, "initdb");
        init.arg("-D").arg(dir.path().join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        if let Err(e) = run(init, "initdb") {
            return skip(&e);
        }
        let server = Self {
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir,
        };
        server.up().expect("the test's PostgreSQL server starts");
        Some(server)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn up(&self) -> Result<(), String> {
        let mut c = command(&self.bin, "pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "-t", "60", "start"]);
        run(c, "pg_ctl start")
    }

    /// Stops the server at once, as a crash would (`-m immediate`: no checkpoint, every
    /// connection cut; committed transactions are recovered from the WAL at the next
    /// start).
    pub fn crash(&self) {
        self.stop_now().expect("the server stops");
    }

    fn stop_now(&self) -> Result<(), String> {
        let mut c = command(&self.bin, "pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        run(c, "pg_ctl stop -m immediate")
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for OwnedPostgres {
    fn drop(&mut self) {
        // Already stopped by the test is fine.
        let _ = self.stop_now();
    }
}
