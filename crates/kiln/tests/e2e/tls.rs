//! HTTPS: a node served with a development certificate (`kiln::tls::dev`), checked with real
//! handshakes from a small rustls client of the test's own: an API call, plain HTTP refused,
//! HTTP/2 by ALPN, mutual TLS, a certificate reload under load, and SIGHUP on the binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kiln::node::{self, Node, Role};
use kiln::tls::dev::{DevCa, Pem, write_file};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::helpers::{ADMIN_PASSWORD, Opts, config, db_url};

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A node serving HTTPS with a certificate of `ca`, the files in `certs`.
struct TlsApp {
    node: Node,
    ca: DevCa,
    certs: PathBuf,
    _dir: TempDir,
}

impl TlsApp {
    /// Starts a node with a fresh CA's server certificate; with `mtls`, clients must
    /// present a certificate of that CA.
    async fn start(mtls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        install(&certs, &ca.server(&[]).unwrap());
        write_file(&certs.join("ca.pem"), ca.pem.cert.as_bytes(), 0o644).unwrap();
        let mut flags = tls_flags(&certs);
        if mtls {
            flags.extend(["--tls-client-ca".into(), file(&certs, "ca.pem")]);
        }
        let validated = config(
            &dir,
            &Opts {
                flags,
                ..Opts::default()
            },
        );
        let node = node::start(&validated, Role::Serve).await.unwrap();
        Self {
            node,
            ca,
            certs,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.node.addr().unwrap()
    }

    /// A client trusting the CA, offering `alpn`, with an optional client certificate.
    fn client(&self, alpn: &[&str], identity: Option<&Pem>) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca, alpn, identity)
    }

    async fn stop(self) {
        let stopped = tokio::time::timeout(Duration::from_secs(10), self.node.shutdown()).await;
        stopped.expect("a TLS node stops in time").unwrap();
    }
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn tls_flags(certs: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        file(certs, "server.pem"),
        "--tls-key".into(),
        file(certs, "server-key.pem"),
    ]
}

/// Writes a server certificate and key where the node reads them.
fn install(certs: &Path, server: &Pem) {
    write_file(&certs.join("server.pem"), server.cert.as_bytes(), 0o644).unwrap();
    write_file(&certs.join("server-key.pem"), server.key.as_bytes(), 0o600).unwrap();
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn client_config(ca: &DevCa, alpn: &[&str], identity: Option<&Pem>) -> Arc<rustls::ClientConfig> {
    kiln::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&ca.pem.cert)).unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some(pem) => {
            let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap();
            builder
                .with_client_auth_cert(vec![der(&pem.cert)], key)
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A TCP connection and a TLS handshake for `localhost`.
async fn connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
}

/// An HTTP/1.1 connection over a TLS stream.
async fn http1(stream: TlsStream<TcpStream>) -> hyper::Result<Sender> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn request(method: Method, path: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
    let builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json");
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    builder.body(Full::new(body)).unwrap()
}

async fn call(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> hyper::Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// `GET /healthz` on a new connection; any failure (handshake or request) as text.
async fn healthz(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Result<StatusCode, String> {
    let stream = connect(addr, config).await.map_err(|e| e.to_string())?;
    let mut sender = http1(stream).await.map_err(|e| e.to_string())?;
    let (status, _) = call(&mut sender, request(Method::GET, "/healthz", None))
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(status)
}

/// The certificate a new connection is shown.
async fn peer_certificate(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let stream = connect(addr, config).await.unwrap();
    let (_, session) = stream.get_ref();
    session.peer_certificates().unwrap()[0].clone().into_owned()
}

async fn login(sender: &mut Sender) -> (StatusCode, Value) {
    let body = json!({"username": "admin", "password": ADMIN_PASSWORD});
    let (status, bytes) = call(
        sender,
        request(Method::POST, "/api/v1/auth/login", Some(&body)),
    )
    .await
    .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn an_api_call_over_tls_logs_in() {
    let app = TlsApp::start(false).await;
    let stream = connect(app.addr(), &app.client(&["http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = http1(stream).await.unwrap();
    let (status, body) = login(&mut sender).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap();
    let mut me = request(Method::GET, "/api/v1/me", None);
    me.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (status, body) = call(&mut sender, me).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["username"],
        "admin"
    );
    app.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let app = TlsApp::start(false).await;
    let mut tcp = TcpStream::connect(app.addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server closes the connection");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plain request got an HTTP answer: {}",
        String::from_utf8_lossy(&answer)
    );
    app.stop().await;
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn() {
    let app = TlsApp::start(false).await;
    let stream = connect(app.addr(), &app.client(&["h2", "http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let req = Request::get("https://localhost/healthz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(
        (resp.status(), resp.version()),
        (StatusCode::OK, Version::HTTP_2)
    );
    app.stop().await;
}

#[tokio::test]
async fn mutual_tls_admits_only_certificates_of_the_client_ca() {
    let app = TlsApp::start(true).await;
    let identity = app.ca.client("tester").unwrap();
    let stream = connect(app.addr(), &app.client(&["http/1.1"], Some(&identity)))
        .await
        .unwrap();
    let (status, body) = login(&mut http1(stream).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let anonymous = healthz(app.addr(), &app.client(&["http/1.1"], None)).await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let stranger = DevCa::generate().unwrap().client("stranger").unwrap();
    let foreign = healthz(app.addr(), &app.client(&["http/1.1"], Some(&stranger))).await;
    assert!(foreign.is_err(), "a certificate of another CA: {foreign:?}");
    app.stop().await;
}

/// Keeps `GET /healthz` going on one connection until `stop`; counts the answers before
/// and after `reloaded` was set. Any failure panics.
async fn keep_calling(
    mut sender: Sender,
    stop: Arc<AtomicBool>,
    reloaded: Arc<AtomicBool>,
) -> (u32, u32) {
    let (mut before, mut after) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        let (status, _) = call(&mut sender, request(Method::GET, "/healthz", None))
            .await
            .expect("no request fails during a reload");
        assert_eq!(status, StatusCode::OK);
        if reloaded.load(Ordering::SeqCst) {
            after += 1;
        } else {
            before += 1;
        }
    }
    (before, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_reload_under_load_drops_no_request() {
    let app = TlsApp::start(false).await;
    let config = app.client(&["http/1.1"], None);
    let (stop, reloaded) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut open = Vec::new();
    for _ in 0..4 {
        let sender = http1(connect(app.addr(), &config).await.unwrap())
            .await
            .unwrap();
        open.push(tokio::spawn(keep_calling(
            sender,
            stop.clone(),
            reloaded.clone(),
        )));
    }
    // New connections all along: each handshake must succeed with the old or new file.
    let (addr, again, stopping) = (app.addr(), config.clone(), stop.clone());
    let fresh = tokio::spawn(async move {
        let mut handshakes = 0;
        while !stopping.load(Ordering::SeqCst) {
            assert_eq!(healthz(addr, &again).await, Ok(StatusCode::OK));
            handshakes += 1;
        }
        handshakes
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let second = app.ca.server(&[]).unwrap();
    install(&app.certs, &second);
    app.node.tls().unwrap().reload().unwrap();
    reloaded.store(true, Ordering::SeqCst);
    assert_eq!(
        peer_certificate(app.addr(), &config).await,
        der(&second.cert)
    );

    // A broken file is refused and the certificate in use stays.
    write_file(&app.certs.join("server.pem"), b"not a certificate", 0o644).unwrap();
    let refused = app.node.tls().unwrap().reload().unwrap_err();
    assert!(format!("{refused:#}").contains("server.pem"), "{refused:#}");
    assert_eq!(
        peer_certificate(app.addr(), &config).await,
        der(&second.cert)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::SeqCst);
    for task in open {
        let (before, after) = task.await.unwrap();
        assert!(
            before > 0 && after > 0,
            "{before} requests before, {after} after the reload"
        );
    }
    assert!(fresh.await.unwrap() > 1);
    app.stop().await;
}

/// Reads the JSON log lines of a child until one has `message` starting with `prefix`.
async fn wait_log(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> Value {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Ok(entry) = serde_json::from_str::<Value>(&line)
                && entry["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(prefix))
            {
                return entry;
            }
        }
        panic!("kiln exited before logging `{prefix}`");
    })
    .await;
    found.unwrap_or_else(|_| panic!("no `{prefix}` log line within 20 s"))
}

fn hangup(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status();
    assert!(status.unwrap().success());
}

#[tokio::test]
async fn sighup_makes_the_binary_reload_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    install(&certs, &ca.server(&[]).unwrap());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .args(tls_flags(&certs))
        .env_clear()
        .env("PORT", "0")
        .env("KILN_BIND", "127.0.0.1")
        .env("DATABASE_URL", db_url(&dir))
        .env("KILN_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("KILN_LOG_FORMAT", "json")
        .env("KILN_SHUTDOWN_GRACE", "500ms")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = wait_log(&mut lines, "kiln is serving").await;
    assert_eq!(serving["tls"], true, "{serving}");
    let addr: SocketAddr = serving["addr"].as_str().unwrap().parse().unwrap();
    let config = client_config(&ca, &["http/1.1"], None);

    let second = ca.server(&[]).unwrap();
    install(&certs, &second);
    hangup(&child);
    wait_log(&mut lines, "TLS files reloaded").await;
    assert_eq!(peer_certificate(addr, &config).await, der(&second.cert));

    write_file(&certs.join("server-key.pem"), b"garbage", 0o600).unwrap();
    hangup(&child);
    let failed = wait_log(&mut lines, "TLS reload failed").await;
    assert_eq!(failed["level"], "ERROR", "{failed}");
    assert_eq!(healthz(addr, &config).await, Ok(StatusCode::OK));
    assert_eq!(peer_certificate(addr, &config).await, der(&second.cert));

    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_measures_an_https_url_trusting_ca_cert() {
    let app = TlsApp::start(false).await;
    let url = format!("https://localhost:{}", app.addr().port());
    let ca = file(&app.certs, "ca.pem");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["bench", "--url", &url, "--ca-cert", &ca])
            .args(["--password", ADMIN_PASSWORD, "--scenario", "submit"])
            .args(["--jobs", "50", "--connections", "4", "--json"])
            .env_clear()
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kiln bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let accepted = report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["figure"] == "accepted (202)")
        .map(|f| f["value"].clone());
    assert_eq!(accepted, Some(json!(50.0)), "{report:#}");
    app.stop().await;
}

#[tokio::test]
async fn the_cli_logs_in_over_mutual_tls_with_its_client_certificate() {
    let app = TlsApp::start(true).await;
    let client = app.ca.client("cli").unwrap();
    write_file(&app.certs.join("client.pem"), client.cert.as_bytes(), 0o644).unwrap();
    write_file(
        &app.certs.join("client-key.pem"),
        client.key.as_bytes(),
        0o600,
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let url = format!("https://localhost:{}", app.addr().port());
    let login = |with_cert: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(["login", "--password-stdin", "admin", "--url", &url])
            .args(["--ca-cert", &file(&app.certs, "ca.pem")])
            .env_clear()
            .env("HOME", home.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if with_cert {
            cmd.args(["--client-cert", &file(&app.certs, "client.pem")])
                .args(["--client-key", &file(&app.certs, "client-key.pem")]);
        }
        cmd.spawn().unwrap()
    };
    for (with_cert, code) in [(false, 6), (true, 0)] {
        let mut child = login(with_cert);
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{ADMIN_PASSWORD}\n").as_bytes())
            .await
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "client cert {with_cert}: {stderr}"
        );
    }
    app.stop().await;
}
