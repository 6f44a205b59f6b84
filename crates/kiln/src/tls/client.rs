//! The HTTP client connector of the CLI and `kiln bench`: plain `http://` and `https://`
//! over rustls, trusting the system's roots plus an optional `--ca-cert` (the CA of
//! `kiln dev-cert`, say). HTTP/1.1 only: a CLI makes few requests, and keep-alive covers
//! the benchmark.

use std::path::Path;

use anyhow::Context;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

/// A connector for `http://` and `https://` URLs; `ca_cert` is trusted besides the
/// system's roots, and `identity` (a certificate chain and its key, PEM) is presented to
/// servers that ask for a client certificate (mutual TLS).
pub fn connector(
    ca_cert: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<HttpsConnector<HttpConnector>> {
    super::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    // A machine without a system store still works with `--ca-cert`.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_cert {
        for cert in super::read_certs(path)? {
            roots
                .add(cert)
                .with_context(|| format!("{} is not a usable CA certificate", path.display()))?;
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(super::read_certs(cert)?, super::read_key(key)?)
            .with_context(|| {
                format!(
                    "the key {} does not fit the certificate {}",
                    key.display(),
                    cert.display()
                )
            })?,
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}
