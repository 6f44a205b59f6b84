//! HTTPS for `kiln serve`: the certificate chain and key (and, for mutual TLS, the CA that
//! clients' certificates must chain to) read from PEM files into a rustls configuration,
//! served by axum-server's rustls acceptor, and re-read on SIGHUP.
//!
//! A reload swaps the configuration that *new* handshakes use; open connections keep the
//! session they negotiated, so nothing in flight is dropped. Files that do not load leave the
//! previous configuration in place. ALPN offers `h2` and `http/1.1`.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The PEM files of the server's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate signed by a CA of this file.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files into a rustls server configuration.
    pub fn load(&self) -> anyhow::Result<rustls::ServerConfig> {
        super::install_provider();
        let certs = super::read_certs(&self.cert)?;
        let key = super::read_key(&self.key)?;
        let builder = rustls::ServerConfig::builder();
        let builder = match &self.client_ca {
            Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).with_context(|| {
            format!(
                "the key {} does not fit the certificate {}",
                self.key.display(),
                self.cert.display()
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Accepts only clients whose certificate chains to a CA of `path`: the handshake fails
/// without one.
fn client_verifier(path: &Path) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in super::read_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{} is not a usable CA certificate", path.display()))?;
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .with_context(|| format!("cannot verify clients with {}", path.display()))
}

/// The live TLS configuration of a server and the files it came from; clones share it.
#[derive(Clone)]
pub struct ServerTls {
    files: TlsFiles,
    config: RustlsConfig,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files (the first time: an error stops start-up).
    pub fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let config = RustlsConfig::from_config(Arc::new(files.load()?));
        Ok(Self { files, config })
    }

    /// The certificate, key and client-CA files a reload reads again.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files; new handshakes use them from now on. On error nothing changes.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = self.files.load()?;
        self.config.reload_from_config(Arc::new(config));
        Ok(())
    }

    /// Listens for SIGHUP now (so a SIGHUP sent from here on reloads instead of ending the
    /// process), then reloads on each one in a task of its own until the process ends,
    /// logging the outcome.
    pub fn reload_on_sighup(self) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: TLS reload is off");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match self.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS files reloaded");
                    }
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "TLS reload failed: the previous certificate stays in use"
                    ),
                }
            }
        });
    }
}

/// Serves `app` on `listener` until `stop`, then as `axum::serve` does: no new
/// connections, open ones finish their requests. Over TLS with `tls` (HTTP/1.1 and
/// HTTP/2), else plain. A client must send its request headers within the limits'
/// `header_timeout`, the first ones counted from the connection's start (slow or silent
/// clients cannot hold a connection open; idle keep-alive connections close after the same
/// time), and at most `max_connections` connections are open at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<ServerTls>,
    limits: ConnectionLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::<std::net::SocketAddr>::new();
    let mut server = axum_server::Server::from_listener(listener)
        .handle(handle.clone())
        .first_request_timeout(limits.header_timeout);
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_timeout);
    // With the peer's address: login throttling counts failures per client address.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let cap = CapConnections::new(limits.max_connections);
    match tls {
        Some(tls) => {
            let acceptor = RustlsAcceptor::new(tls.config).acceptor(cap);
            until_stopped(server.acceptor(acceptor).serve(app), handle, stop).await
        }
        None => until_stopped(server.acceptor(cap).serve(app), handle, stop).await,
    }
}

/// What a server allows each client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to send a request's headers (from the connection's start for the first one);
    /// also how long a keep-alive connection may stay idle.
    pub header_timeout: std::time::Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

/// An acceptor that lets at most `max` connections be open at once: each holds a permit
/// for its whole life, and a connection accepted without one is closed at once, before
/// any TLS handshake or request parsing (a client that opens thousands of connections
/// costs a file descriptor each only for a moment). Written here because axum-server has no
/// such limit and tower's concurrency limit counts requests, not connections.
#[derive(Debug, Clone)]
struct CapConnections {
    permits: Arc<Semaphore>,
}

impl CapConnections {
    fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for CapConnections {
    type Stream = Capped;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Capped, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        std::future::ready(match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Ok((
                Capped {
                    stream,
                    _permit: permit,
                },
                service,
            )),
            Err(_) => {
                tracing::debug!("connection limit reached: a new connection is closed");
                Err(std::io::Error::other("connection limit reached"))
            }
        })
    }
}

/// A connection holding its permit until it is dropped.
#[derive(Debug)]
struct Capped {
    stream: tokio::net::TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Runs `serving` until `stop`, then shuts it down gracefully through `handle`.
async fn until_stopped(
    serving: impl Future<Output = std::io::Result<()>>,
    handle: axum_server::Handle<std::net::SocketAddr>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => result,
        () = stop.cancelled() => {
            handle.graceful_shutdown(None);
            serving.await
        }
    }
}
