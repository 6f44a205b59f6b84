//! `kiln dev-cert`: a local CA, a server certificate for this machine and a client
//! certificate, written as PEM files for trying HTTPS and mutual TLS, and the commands that
//! use them. The certificates come from [`crate::tls::dev`].

use std::path::{Path, PathBuf};

use clap::Args;

use crate::tls::dev::{DevCerts, DevPaths, LOCAL_NAMES};

/// `kiln dev-cert` options.
#[derive(Debug, Clone, Args)]
pub struct DevCertArgs {
    /// Directory to write `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`,
    /// `client.pem` and `client-key.pem` into (created if missing).
    #[arg(long, default_value = "kiln-certs")]
    pub dir: PathBuf,
    /// More names for the server certificate (DNS names or IP addresses), besides
    /// localhost, 127.0.0.1 and ::1.
    #[arg(long = "host", value_name = "NAME", num_args = 1..)]
    pub hosts: Vec<String>,
    /// Replace files that exist already.
    #[arg(long)]
    pub force: bool,
}

/// Writes the files and prints how to use them; returns the exit code.
pub fn run(args: &DevCertArgs) -> anyhow::Result<i32> {
    let paths = DevCerts::generate(&args.hosts)?.write(&args.dir, args.force)?;
    print!("{}", usage(&paths, &args.hosts));
    Ok(0)
}

/// What was written and the commands that use it.
fn usage(p: &DevPaths, hosts: &[String]) -> String {
    let d = |path: &Path| shell_word(&path.display().to_string());
    let mut names: Vec<&str> = LOCAL_NAMES.to_vec();
    names.extend(hosts.iter().map(String::as_str));
    format!(
        "Wrote a development CA and certificates (not for production):
  {ca}, {ca_key}  the CA: trust {ca} in clients; keep {ca_key} private
  {server}, {server_key}  the server, for {names}
  {client}, {client_key}  a client certificate signed by the CA (mutual TLS)

Serve HTTPS (SIGHUP re-reads the files):
  kiln serve --tls-cert {server} --tls-key {server_key}
Also require a client certificate signed by the CA (mutual TLS):
  kiln serve --tls-cert {server} --tls-key {server_key} --tls-client-ca {ca}

Call it:
  curl --cacert {ca} https://localhost:8080/healthz
  curl --cacert {ca} --cert {client} --key {client_key} https://localhost:8080/healthz
  kiln login --url https://localhost:8080 --ca-cert {ca} admin
  kiln bench --url https://localhost:8080 --ca-cert {ca} --password …
",
        ca = d(&p.ca),
        ca_key = d(&p.ca_key),
        server = d(&p.server),
        server_key = d(&p.server_key),
        client = d(&p.client),
        client_key = d(&p.client_key),
        names = names.join(", "),
    )
}

/// `word` quoted for a POSIX shell when it needs it, so the printed lines paste as they are.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:,@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_paths_paste_into_a_shell() {
        assert_eq!(shell_word("kiln-certs/ca.pem"), "kiln-certs/ca.pem");
        assert_eq!(shell_word("my certs/ca.pem"), "'my certs/ca.pem'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        let text = usage(
            &DevPaths::new(Path::new("kiln-certs")),
            &["kiln.lan".into()],
        );
        assert!(text.contains(
            "kiln serve --tls-cert kiln-certs/server.pem --tls-key kiln-certs/server-key.pem\n"
        ));
        assert!(
            text.contains("localhost, 127.0.0.1, ::1, kiln.lan"),
            "{text}"
        );
    }
}
