//! The tokens `kiln login` saves: `credentials.json` in the user's config directory
//! (`$XDG_CONFIG_HOME/kiln`, else `~/.config/kiln`), one entry per server URL plus the URL
//! last logged in to, readable by its owner only (mode 0600).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{CliError, CliResult};

/// The file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Credentials {
    /// The server `kiln login` last logged in to: the default `--url`.
    #[serde(default)]
    pub default_url: Option<String>,
    /// A token per server URL.
    #[serde(default)]
    pub servers: BTreeMap<String, Saved>,
}

/// One server's saved login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// The bearer token.
    pub token: String,
    /// Who it belongs to.
    pub username: String,
    /// When it expires (RFC 3339), if it does.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// Where the file lives; `None` when neither `XDG_CONFIG_HOME` nor `HOME` is set.
pub fn path() -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(dir.join("kiln").join("credentials.json"))
}

impl Credentials {
    /// Reads the file; a missing file is empty credentials, a damaged one an error.
    pub fn load() -> CliResult<Self> {
        let Some(path) = path() else {
            return Ok(Self::default());
        };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CliError::usage(format!(
                    "{} is damaged ({e}); remove it and log in again",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(CliError::usage(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Writes the file (mode 0600, replaced in one rename).
    pub fn save(&self) -> CliResult<PathBuf> {
        let path = path().ok_or_else(|| {
            CliError::usage("cannot save the token: neither XDG_CONFIG_HOME nor HOME is set")
        })?;
        let fail =
            |e: std::io::Error| CliError::usage(format!("cannot write {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        // A file left by an older version may have other bits: set them again.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
        file.write_all(&text).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(path)
    }
}
