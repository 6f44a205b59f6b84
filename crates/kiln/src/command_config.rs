//! The `command` job type's configuration: the allow-list from `--command-allow`, resolved
//! on `PATH` at start-up, and the limits of `kiln.toml`:
//!
//! ```toml
//! [command.limits]              # every allowed program (unset keys keep Kiln's defaults)
//! memory_bytes = 1073741824
//! cpu_seconds = 600
//!
//! [command.programs.python3]    # one program, named as in --command-allow
//! memory_bytes = 4294967296
//! cpu_cores = 1.5
//! max_attempts = 3              # retries of a failed run (default 1: none)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_domain::job_type::command::{AllowList, Limits, Program};
use serde::Deserialize;

/// `[command]` of `kiln.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandFileConfig {
    /// Limits of every program over Kiln's defaults (a key left out keeps its default).
    #[serde(default = "no_limits")]
    pub limits: Limits,
    /// Per-program settings, keyed by the name or path given in `--command-allow`: the
    /// keys of [`Limits`] and `max_attempts` (read by [`ProgramConfig::parse`]).
    #[serde(default)]
    pub programs: BTreeMap<String, toml::Table>,
}

fn no_limits() -> Limits {
    Limits {
        memory_bytes: None,
        cpu_seconds: None,
        processes: None,
        open_files: None,
        file_size_bytes: None,
        cpu_cores: None,
    }
}

/// One program's settings.
#[derive(Debug, Clone, Copy)]
pub struct ProgramConfig {
    /// Its limits (over `[command.limits]`).
    pub limits: Limits,
    /// Attempts of its jobs; 1 (the default) means a failed run is not retried.
    pub max_attempts: u32,
}

impl ProgramConfig {
    /// `max_attempts` and the limits of a `[command.programs.<name>]` table. (`Limits`
    /// refuses unknown keys, which serde cannot combine with a flattened field.)
    pub fn parse(table: &toml::Table) -> Result<Self, String> {
        let mut limits = table.clone();
        let max_attempts = match limits.remove("max_attempts") {
            None => 1,
            Some(v) => v
                .as_integer()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n >= 1)
                .ok_or("max_attempts must be a whole number of at least 1")?,
        };
        let limits = Limits::deserialize(toml::Value::Table(limits)).map_err(|e| e.to_string())?;
        Ok(Self {
            limits,
            max_attempts,
        })
    }
}

/// Resolves every entry of `--command-allow`, adding a line to `problems` for each that
/// is not an executable file or has a bad setting.
pub fn allow_list(
    entries: &[String],
    file: &CommandFileConfig,
    problems: &mut Vec<String>,
) -> AllowList {
    let base = Limits::default().merged(&file.limits);
    check_limits("[command.limits]", &file.limits, problems);
    let mut programs = Vec::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let path = match resolve(entry) {
            Ok(path) => path,
            Err(why) => {
                problems.push(format!("KILN_COMMAND_ALLOW `{entry}`: {why}"));
                continue;
            }
        };
        let section = format!("[command.programs.{entry}]");
        let own = match file.programs.get(entry).map(ProgramConfig::parse) {
            None => ProgramConfig {
                limits: no_limits(),
                max_attempts: 1,
            },
            Some(Ok(own)) => own,
            Some(Err(why)) => {
                problems.push(format!("kiln.toml {section}: {why}"));
                continue;
            }
        };
        check_limits(&section, &own.limits, problems);
        programs.push(Program {
            path: path.to_string_lossy().into_owned(),
            name: (!entry.contains('/')).then(|| entry.to_owned()),
            limits: base.merged(&own.limits),
            max_attempts: own.max_attempts,
        });
    }
    for name in file.programs.keys() {
        if !entries.iter().any(|e| e.trim() == name) {
            problems.push(format!(
                "kiln.toml [command.programs.{name}]: `{name}` is not in KILN_COMMAND_ALLOW"
            ));
        }
    }
    AllowList::new(programs)
}

fn check_limits(section: &str, limits: &Limits, problems: &mut Vec<String>) {
    if limits
        .cpu_cores
        .is_some_and(|c| !(c.is_finite() && c > 0.0))
    {
        problems.push(format!("kiln.toml {section}: cpu_cores must be above 0"));
    }
    let zero = [
        ("memory_bytes", limits.memory_bytes),
        ("cpu_seconds", limits.cpu_seconds),
        ("processes", limits.processes),
        ("open_files", limits.open_files),
    ];
    for (key, value) in zero {
        if value == Some(0) {
            problems.push(format!("kiln.toml {section}: {key} must be at least 1"));
        }
    }
}

/// An absolute path as it is, a bare name looked up on `PATH`; either must be an
/// executable file.
fn resolve(entry: &str) -> Result<PathBuf, String> {
    if entry.contains('/') {
        if !entry.starts_with('/') {
            return Err("give an absolute path or a bare name".to_owned());
        }
        let path = PathBuf::from(entry);
        return if executable(&path) {
            Ok(path)
        } else {
            Err("is not an executable file".to_owned())
        };
    }
    // A server started with no PATH at all looks where the usual programs live.
    let path_var = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path_var)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(entry))
        .find(|p| executable(p))
        .ok_or_else(|| "not found on PATH".to_owned())
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_on_path_and_paths_stay_as_given() {
        let mut problems = Vec::new();
        let file: CommandFileConfig = toml::from_str(
            "[limits]\nopen_files = 64\n[programs.sh]\nmemory_bytes = 1048576\nmax_attempts = 2\n",
        )
        .unwrap();
        let list = allow_list(&["sh".into(), "/usr/bin/env".into()], &file, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let sh = list.check("sh").unwrap();
        assert!(
            sh.path.starts_with('/') && sh.path.ends_with("/sh"),
            "{}",
            sh.path
        );
        assert_eq!(sh.limits.memory_bytes, Some(1 << 20));
        assert_eq!(sh.limits.open_files, Some(64));
        assert_eq!(sh.max_attempts, 2);
        let env = list.check("/usr/bin/env").unwrap();
        assert_eq!((env.name.as_deref(), env.max_attempts), (None, 1));
        assert_eq!(env.limits.memory_bytes, Limits::default().memory_bytes);
    }

    #[test]
    fn every_bad_entry_and_setting_is_a_problem() {
        let mut problems = Vec::new();
        let file: CommandFileConfig = toml::from_str(
            "[limits]\ncpu_cores = 0.0\n[programs.ghost]\n[programs.sh]\nmax_attempts = 0\n",
        )
        .unwrap();
        let entries = [
            "sh".into(),
            "no-such-program-anywhere".into(),
            "relative/path".into(),
            "/etc/passwd".into(),
        ];
        let list = allow_list(&entries, &file, &mut problems);
        assert_eq!(problems.len(), 6, "{problems:#?}");
        assert!(
            list.programs().is_empty(),
            "only sh resolved, and its settings are bad"
        );
    }
}
