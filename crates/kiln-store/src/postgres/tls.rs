//! TLS to PostgreSQL: a URL's `sslmode` and `sslrootcert`, read as libpq reads them, turned
//! into a rustls connector for tokio-postgres ([`Target`]).
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | absent, `disable` | no | — |
//! | `prefer` | if the server offers TLS | no |
//! | `require` | yes | no; with `sslrootcert`, its chain (as `verify-ca`, like libpq) |
//! | `verify-ca` | yes | chain to `sslrootcert` (or the system roots) |
//! | `verify-full` | yes | chain and host name |
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require` and refuses
//! `sslrootcert`, so both are taken out of the URL before it is parsed. Absent `sslmode`
//! means plain (libpq would try TLS first); a non-loopback host without it logs a warning,
//! since passwords and job data would cross the network in clear text. One connector type
//! serves every mode: with `disable` the driver never calls it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::{Host, SslMode as DriverMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::backend;
use crate::error::Result;

/// The connector every PostgreSQL connection of a store uses.
pub(crate) type Tls = MakeRustlsConnect;

/// How a URL asks to protect the connection (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (also when `sslmode` is absent).
    Disable,
    /// TLS if the server offers it, without checking its certificate.
    Prefer,
    /// TLS, without checking the certificate (or only its chain, given `sslrootcert`).
    Require,
    /// TLS; the certificate must chain to a trusted root.
    VerifyCa,
    /// TLS; the certificate must chain to a trusted root and name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(backend(format!(
                    "sslmode `{other}` is not supported (use disable, prefer, require, \
                     verify-ca or verify-full)"
                )));
            }
        })
    }
}

/// A PostgreSQL URL taken apart: the driver's configuration and the connector its
/// `sslmode` asks for.
#[derive(Clone)]
pub(crate) struct Target {
    /// The driver's configuration (its `ssl_mode` set from ours).
    pub config: tokio_postgres::Config,
    /// The TLS connector.
    pub tls: Tls,
}

/// The TLS settings of a URL and the URL without them.
struct Split {
    rest: String,
    mode: Option<SslMode>,
    root_cert: Option<String>,
}

/// Checks a PostgreSQL URL without connecting or reading files: it parses, and its
/// `sslmode` is one Kiln knows. The error says what is wrong.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    split(url)
        .and_then(|split| parse_config(&split.rest))
        .map(|_| ())
        .map_err(|e| match std::error::Error::source(&e) {
            Some(cause) => cause.to_string(),
            None => e.to_string(),
        })
}

/// Parses `url` and builds its connector (reading `sslrootcert`); warns when a remote
/// host is reached without `sslmode`.
pub(crate) fn target(url: &str) -> Result<Target> {
    let split = split(url)?;
    let mut config = parse_config(&split.rest)?;
    let mode = match split.mode {
        Some(mode) => mode,
        None => {
            warn_if_remote(&config);
            SslMode::Disable
        }
    };
    let root = split.root_cert.as_deref().map(RootCert::parse);
    config.ssl_mode(match mode {
        SslMode::Disable => DriverMode::Disable,
        SslMode::Prefer => DriverMode::Prefer,
        _ => DriverMode::Require,
    });
    let verifier = verifier(mode, root.as_ref())?;
    Ok(Target {
        config,
        tls: connector(verifier)?,
    })
}

/// Takes `sslmode` and `sslrootcert` out of the URL's query.
fn split(url: &str) -> Result<Split> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let (mut mode, mut root_cert) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || {
            percent_decode_str(value)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| backend(format!("invalid PostgreSQL URL: `{key}` is not UTF-8")))
        };
        match key {
            "sslmode" => mode = Some(SslMode::parse(&decoded()?)?),
            "sslrootcert" => root_cert = Some(decoded()?),
            _ => kept.push(pair),
        }
    }
    let rest = match kept.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", kept.join("&")),
    };
    Ok(Split {
        rest,
        mode,
        root_cert,
    })
}

fn parse_config(url: &str) -> Result<tokio_postgres::Config> {
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| backend(format!("invalid PostgreSQL URL: {e}")))
}

/// Whether every host of the configuration is this machine (a loopback address,
/// `localhost` or a Unix socket).
fn is_local(config: &tokio_postgres::Config) -> bool {
    config.get_hosts().iter().all(|host| match host {
        Host::Tcp(name) => {
            name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        Host::Unix(_) => true,
    })
}

fn warn_if_remote(config: &tokio_postgres::Config) {
    if !is_local(config) {
        tracing::warn!(
            "DATABASE_URL names a remote PostgreSQL host without `sslmode`: the connection \
             is not encrypted (add `?sslmode=verify-full`, or `sslmode=disable` to silence this)"
        );
    }
}

/// Where trusted roots come from: a PEM file, or the system's store (`system`).
enum RootCert {
    File(PathBuf),
    System,
}

impl RootCert {
    fn parse(value: &str) -> Self {
        match value {
            "system" => Self::System,
            path => Self::File(PathBuf::from(path)),
        }
    }

    fn store(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match self {
            Self::File(path) => {
                for cert in read_certs(path)? {
                    roots.add(cert).map_err(|e| {
                        backend(format!("sslrootcert {}: unusable CA: {e}", path.display()))
                    })?;
                }
            }
            Self::System => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if roots.is_empty() {
                    return Err(backend(
                        "no system root certificates found: set sslrootcert=PATH",
                    ));
                }
            }
        }
        Ok(roots)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| backend(format!("sslrootcert {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(backend(format!(
            "sslrootcert {} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate check a mode asks for.
fn verifier(mode: SslMode, root: Option<&RootCert>) -> Result<Arc<dyn ServerCertVerifier>> {
    let webpki = |root: Option<&RootCert>| -> Result<Arc<WebPkiServerVerifier>> {
        let roots = root.unwrap_or(&RootCert::System).store()?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| backend(format!("cannot verify PostgreSQL certificates: {e}")))
    };
    Ok(match (mode, root) {
        (SslMode::VerifyFull, _) => webpki(root)?,
        (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Arc::new(Relaxed {
            provider: provider(),
            chain: Some(webpki(root)?),
        }),
        _ => Arc::new(Relaxed {
            provider: provider(),
            chain: None,
        }),
    })
}

fn connector(verifier: Arc<dyn ServerCertVerifier>) -> Result<Tls> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| backend(format!("cannot configure TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The verifiers weaker than `verify-full`, as libpq's modes are. Without `chain`
/// (`require`, `prefer`) any certificate is accepted: the connection is encrypted, the
/// server not authenticated. With it (`verify-ca`) the chain must lead to a trusted root, but
/// the host name is not checked: webpki checks the name only after the chain, so a name
/// mismatch means the chain passed. The handshake's signatures are checked either way.
#[derive(Debug)]
struct Relaxed {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        let checked =
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match checked {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_the_driver_parses() {
        let s = split(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(s.rest, "postgres://u@h/db?application_name=x");
        assert_eq!(s.mode, Some(SslMode::VerifyFull));
        assert_eq!(s.root_cert.as_deref(), Some("/tmp/ca.pem"));
        let s = split("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(
            (s.rest.as_str(), s.mode),
            ("postgres://u@h/db", Some(SslMode::Disable))
        );
        assert!(split("postgres://u@h/db?sslmode=allow").is_err());
        assert!(check_url("postgres://u@h/db?sslmode=require&sslrootcert=/x").is_ok());
        assert!(check_url("postgres://u@h/db?sslmode=bogus").is_err());
    }

    #[test]
    fn loopback_hosts_are_local() {
        let local = |url: &str| is_local(&parse_config(url).unwrap());
        assert!(local("postgres://u@127.0.0.1/db"));
        assert!(local("postgres://u@localhost:5433/db"));
        assert!(local("postgres://u@[::1]/db"));
        assert!(!local("postgres://u@db.example.com/db"));
        assert!(!local("postgres://u@127.0.0.1,10.0.0.2/db"));
    }

    #[test]
    fn a_missing_root_certificate_is_an_error() {
        let url = "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem";
        let Err(e) = target(url) else {
            panic!("a missing sslrootcert must fail")
        };
        let text = format!("{:?}", e);
        assert!(text.contains("/nonexistent/ca.pem"), "{text}");
    }
}
