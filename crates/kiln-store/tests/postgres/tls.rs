//! PostgreSQL over TLS: a cluster of the test's own (initdb from the PostgreSQL binaries,
//! `ssl = on` with a CA and server certificate made by rcgen, on a free loopback port, and a
//! `pg_hba.conf` that rejects unencrypted connections), reached through `PgStore::connect`
//! with each `sslmode`. Root runs the server as `postgres` (`runuser`), as initdb refuses
//! root. Without the binaries the test prints `SKIPPED`, unless `KILN_REQUIRE_POSTGRES=1`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tempfile::TempDir;

use super::*;

/// A CA (its PEM) that signs server certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` and its key, PEM.
    fn server(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Fails under `KILN_REQUIRE_POSTGRES=1`, else says loudly that the test did not run.
fn skip(why: &str) {
    if std::env::var("KILN_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("cannot start a PostgreSQL cluster (KILN_REQUIRE_POSTGRES=1): {why}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: PostgreSQL over TLS: {why} (set KILN_REQUIRE_POSTGRES=1 to fail instead) ***\n"
    );
}

/// The directory of `initdb` and `pg_ctl`: `KILN_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`.
fn bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KILN_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("initdb").exists().then_some(dir)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
        .unwrap_or(false)
}

/// `id -u postgres` and `id -g postgres`.
fn postgres_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// A running PostgreSQL cluster in a temp dir; stopped on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    owner: Option<(u32, u32)>,
    port: u16,
    running: bool,
    _dir: TempDir,
}

impl Cluster {
    /// initdb, TLS with `cert`/`key`, TLS-only `pg_hba.conf`, start. `Err` says why not.
    fn start(cert: &str, key: &str) -> Result<Self, String> {
        let bin = bindir().ok_or("no PostgreSQL binaries (initdb) found")?;
        let owner = match is_root() {
            true => Some(postgres_ids().ok_or("running as root without a `postgres` user")?),
            false => None,
        };
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut cluster = Self {
            bin,
            data,
            owner,
            port,
            running: false,
            _dir: dir,
        };
        cluster.chown(cluster._dir.path())?;
        cluster.run(
            "initdb",
            &["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
        )?;
        cluster.configure(cert, key)?;
        let log = cluster._dir.path().join("server.log");
        let log = log.to_str().ok_or("temp path is not UTF-8")?;
        cluster.run("pg_ctl", &["-w", "-t", "60", "-l", log, "start"])?;
        cluster.running = true;
        Ok(cluster)
    }

    /// The server's TLS files and settings, and client authentication that refuses
    /// plain connections.
    fn configure(&self, cert: &str, key: &str) -> Result<(), String> {
        let write = |name: &str, text: &str, mode: u32| -> Result<(), String> {
            let path = self.data.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{name}: {e}"))?;
            let perms = std::os::unix::fs::PermissionsExt::from_mode(mode);
            std::fs::set_permissions(&path, perms).map_err(|e| format!("{name}: {e}"))?;
            self.chown(&path)
        };
        write("server.crt", cert, 0o644)?;
        write("server.key", key, 0o600)?;
        write(
            "pg_hba.conf",
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            0o600,
        )?;
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             fsync = off\nmax_connections = 40\n",
            self.port
        );
        let path = self.data.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| format!("postgresql.conf: {e}"))?;
        file.write_all(conf.as_bytes())
            .map_err(|e| format!("postgresql.conf: {e}"))
    }

    fn chown(&self, path: &Path) -> Result<(), String> {
        match self.owner {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display())),
            None => Ok(()),
        }
    }

    /// Runs a PostgreSQL program on the data directory (as `postgres` under root).
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(program);
        let mut command = match self.owner {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = command
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// A URL of the `postgres` database reached at `host` (TCP to 127.0.0.1 in any case),
    /// with `params` appended.
    fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?hostaddr=127.0.0.1&{params}",
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        if let Err(e) = self.run("pg_ctl", &["-m", "immediate", "-w", "stop"]) {
            eprintln!("warning: the test's PostgreSQL cluster did not stop: {e}");
        }
    }
}

/// Connects a store (migrating the database) and writes through it.
async fn connects(url: &str) -> Result<(), String> {
    let store = PgStore::connect(url, PgOptions::default())
        .await
        .map_err(|e| format!("{e:?}"))?;
    add_user(&*store, &format!("u{}", uuid::Uuid::now_v7().simple())).await;
    Ok(())
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn tls_modes_connect_migrate_and_refuse_what_they_must() {
    let (ca, other) = (Ca::new("kiln test CA"), Ca::new("another CA"));
    let (cert, key) = ca.server(&["localhost", "127.0.0.1", "db.kiln.test"]);
    let cluster = match Cluster::start(&cert, &key) {
        Ok(cluster) => cluster,
        Err(why) => return skip(&why),
    };
    let files = tempfile::tempdir().unwrap();
    let root = write_pem(files.path(), "ca.pem", &ca.pem);
    let wrong = write_pem(files.path(), "other.pem", &other.pem);
    let url = |host: &str, params: &str| cluster.url(host, params);

    // pg_hba.conf refuses plain connections, so each success below went over TLS.
    let plain = connects(&url("127.0.0.1", "sslmode=disable")).await;
    assert!(plain.is_err(), "a plain connection got through");
    assert!(connects(&url("127.0.0.1", "")).await.is_err());

    connects(&url("127.0.0.1", "sslmode=require"))
        .await
        .unwrap();
    connects(&url("127.0.0.1", "sslmode=prefer")).await.unwrap();
    let full = format!("sslmode=verify-full&sslrootcert={root}");
    connects(&url("127.0.0.1", &full)).await.unwrap();
    connects(&url("db.kiln.test", &full)).await.unwrap();
    let ca_only = format!("sslmode=verify-ca&sslrootcert={root}");
    connects(&url("elsewhere.kiln.test", &ca_only))
        .await
        .unwrap();

    let name = connects(&url("elsewhere.kiln.test", &full))
        .await
        .unwrap_err();
    assert!(name.contains("NotValidForName"), "{name}");
    let full_wrong = format!("sslmode=verify-full&sslrootcert={wrong}");
    let unknown = connects(&url("127.0.0.1", &full_wrong)).await.unwrap_err();
    assert!(unknown.contains("UnknownIssuer"), "{unknown}");
    // `require` with a root certificate checks the chain, as libpq does.
    let require_wrong = format!("sslmode=require&sslrootcert={wrong}");
    let unknown = connects(&url("127.0.0.1", &require_wrong))
        .await
        .unwrap_err();
    assert!(unknown.contains("UnknownIssuer"), "{unknown}");
}
