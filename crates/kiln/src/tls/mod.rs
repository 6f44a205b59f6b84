//! TLS with rustls and the ring provider (ADR 0011):
//! - [`client`]: the connector of the CLI and `kiln bench` (system roots plus `--ca-cert`);
//! - [`server`]: HTTPS for `kiln serve` (`--tls-cert`/`--tls-key`, mutual TLS with
//!   `--tls-client-ca`, HTTP/2 by ALPN, files re-read on SIGHUP);
//! - [`dev`]: a local CA and its certificates (`kiln dev-cert`, `kiln bench --tls`, tests).
//!
//! One crypto provider for the whole process (ring: no C build of aws-lc), installed by
//! [`install_provider`] before any TLS configuration is made. PostgreSQL's TLS lives in
//! `kiln_store::postgres::tls`.

pub mod client;
pub mod dev;
pub mod server;

/// Installs ring as the process's rustls provider; later calls do nothing.
pub fn install_provider() {
    // `Err` means a provider is already installed, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate of a PEM file.
pub fn read_certs(
    path: &std::path::Path,
) -> anyhow::Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(
    path: &std::path::Path,
) -> anyhow::Result<rustls_pki_types::PrivateKeyDer<'static>> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("{} is not a readable PEM private key", path.display()))
}
