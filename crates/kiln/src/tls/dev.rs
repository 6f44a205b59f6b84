//! Development certificates (`kiln dev-cert`, `kiln bench --tls`, the TLS tests): a local CA,
//! a server certificate for this machine and a client certificate for mutual TLS, made with
//! rcgen (ECDSA P-256 keys, signed with ring).
//!
//! Nothing here is for production: the CA's key sits beside the certificates it signs.

use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Names every development server certificate holds, before the ones asked for.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Leaf certificates stay under Apple's 398-day limit, so browsers there accept them too.
const LEAF_DAYS: i64 = 397;
const CA_DAYS: i64 = 10 * 365;

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

/// A local certificate authority that signs server and client certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate and key.
    pub pem: Pem,
}

impl DevCa {
    /// A fresh CA, valid for ten years.
    pub fn generate() -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("cannot generate the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        // A name of its own: a verifier matches issuers by name first, so two dev CAs
        // with one name would fail as a bad signature instead of an unknown CA.
        let name = format!("Kiln development CA {:08x}", rand::random::<u32>());
        params.distinguished_name.push(DnType::CommonName, name);
        // It signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key).context("cannot sign the CA")?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A server certificate for [`LOCAL_NAMES`] and `hosts` (DNS names or IP addresses).
    pub fn server(&self, hosts: &[String]) -> anyhow::Result<Pem> {
        let mut names: Vec<String> = LOCAL_NAMES.iter().map(|n| (*n).to_owned()).collect();
        for host in hosts {
            if !names.contains(host) {
                names.push(host.clone());
            }
        }
        let params = CertificateParams::new(names.clone())
            .with_context(|| format!("not a valid host name among {names:?}"))?;
        self.leaf(params, "localhost", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate named `name`, for servers that trust this CA
    /// (`--tls-client-ca`).
    pub fn client(&self, name: &str) -> anyhow::Result<Pem> {
        self.leaf(
            CertificateParams::default(),
            name,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn leaf(
        &self,
        mut params: CertificateParams,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<Pem> {
        let key = KeyPair::generate().context("cannot generate a key")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_DAYS);
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("cannot sign a certificate")?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Valid from yesterday (a clock a little behind still accepts a certificate made just
/// now) until `days` from today, at midnight UTC.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let midnight = |offset: i64| {
        let date = (chrono::Utc::now() + chrono::Duration::days(offset)).date_naive();
        // A month is 1..=12 and a day 1..=31: both fit a u8.
        rcgen::date_time_ymd(date.year(), date.month() as u8, date.day() as u8)
    };
    params.not_before = midnight(-1);
    params.not_after = midnight(days);
}

/// The CA, a server certificate and a client certificate, as `kiln dev-cert` writes them.
pub struct DevCerts {
    /// The development CA that signs both leaves (`ca.pem`, `ca-key.pem`).
    pub ca: Pem,
    /// The server's certificate.
    pub server: Pem,
    /// The client's certificate.
    pub client: Pem,
}

/// Where [`DevCerts::write`] put each file.
#[derive(Debug, Clone)]
pub struct DevPaths {
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `ca-key.pem`.
    pub ca_key: PathBuf,
    /// `server.pem`.
    pub server: PathBuf,
    /// `server-key.pem`.
    pub server_key: PathBuf,
    /// `client.pem`.
    pub client: PathBuf,
    /// `client-key.pem`.
    pub client_key: PathBuf,
}

impl DevPaths {
    /// The paths of the files in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            server: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }

    /// Every path, each with whether it holds a private key.
    fn all(&self) -> [(&Path, bool); 6] {
        [
            (&self.ca, false),
            (&self.ca_key, true),
            (&self.server, false),
            (&self.server_key, true),
            (&self.client, false),
            (&self.client_key, true),
        ]
    }
}

impl DevCerts {
    /// A fresh CA with a server certificate for [`LOCAL_NAMES`] and `hosts`, and a client
    /// certificate `kiln-dev-client`.
    pub fn generate(hosts: &[String]) -> anyhow::Result<Self> {
        let ca = DevCa::generate()?;
        Ok(Self {
            server: ca.server(hosts)?,
            client: ca.client("kiln-dev-client")?,
            ca: ca.pem,
        })
    }

    /// Writes the six files into `dir` (created if missing); keys get mode 0600. An
    /// existing file is an error naming it, and nothing is written, unless `force`.
    pub fn write(&self, dir: &Path, force: bool) -> anyhow::Result<DevPaths> {
        let paths = DevPaths::new(dir);
        let existing: Vec<String> = paths
            .all()
            .iter()
            .filter(|(p, _)| p.exists())
            .map(|(p, _)| p.display().to_string())
            .collect();
        if !existing.is_empty() && !force {
            bail!(
                "{} already exist(s); pass --force to replace",
                existing.join(", ")
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let contents = [
            &self.ca.cert,
            &self.ca.key,
            &self.server.cert,
            &self.server.key,
            &self.client.cert,
            &self.client.key,
        ];
        for ((path, secret), text) in paths.all().into_iter().zip(contents) {
            write_file(path, text.as_bytes(), if secret { 0o600 } else { 0o644 })?;
        }
        Ok(paths)
    }
}

/// Writes `bytes` to `path` with `mode`, also when the file existed with another mode.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // `mode` applies to new files only; an old key file must not stay readable by others.
    file.set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.write_all(bytes))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_written_once_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let certs = DevCerts::generate(&["kiln.test".to_owned()]).unwrap();
        let paths = certs.write(dir.path(), false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.server_key), 0o600);
        assert_eq!(mode(&paths.ca_key), 0o600);
        assert_eq!(mode(&paths.server), 0o644);
        let err = certs.write(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("ca.pem") && err.contains("--force"), "{err}");
        std::fs::set_permissions(&paths.client_key, Permissions::from_mode(0o644)).unwrap();
        certs.write(dir.path(), true).unwrap();
        assert_eq!(mode(&paths.client_key), 0o600);
        assert_eq!(crate::tls::read_certs(&paths.server).unwrap().len(), 1);
    }

    #[test]
    fn bad_host_names_are_refused() {
        let ca = DevCa::generate().unwrap();
        assert!(ca.server(&["bad name\u{e9}".to_owned()]).is_err());
    }
}
