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
    /// Limits of every program (over Kiln's defaults).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Per-program settings, keyed by the name or path given in `--command-allow`.
    #[serde(default)]
    pub programs: BTreeMap<String, ProgramConfig>,
}

/// Limits as `kiln.toml` writes them; an unset key keeps the limit below it.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `RLIMIT_AS` and cgroup `memory.max`, bytes.
    pub memory_bytes: Option<u64>,
    /// `RLIMIT_CPU`, seconds.
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_NPROC` and cgroup `pids.max`.
    pub processes: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// `RLIMIT_FSIZE`, bytes.
    pub file_size_bytes: Option<u64>,
    /// cgroup `cpu.max`, in cores.
    pub cpu_cores: Option<f64>,
}

impl LimitsConfig {
    fn as_limits(&self) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes,
            cpu_seconds: self.cpu_seconds,
            processes: self.processes,
            open_files: self.open_files,
            file_size_bytes: self.file_size_bytes,
            cpu_cores: self.cpu_cores,
        }
    }
}

/// One program's settings.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramConfig {
    /// Its limits (over `[command.limits]`).
    #[serde(flatten)]
    pub limits: LimitsConfig,
    /// Attempts of its jobs; 1 (the default) means a failed run is not retried.
    pub max_attempts: Option<u32>,
}

/// Resolves every entry of `--command-allow`, adding a line to `problems` for each that
/// is not an executable file or has a bad setting.
pub fn allow_list(
    entries: &[String],
    file: &CommandFileConfig,
    problems: &mut Vec<String>,
) -> AllowList {
    let base = Limits::default().merged(&file.limits.as_limits());
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
        let own = file.programs.get(entry).copied().unwrap_or_default();
        check_limits(
            &format!("[command.programs.{entry}]"),
            &own.limits,
            problems,
        );
        let max_attempts = own.max_attempts.unwrap_or(1);
        if max_attempts == 0 {
            problems.push(format!(
                "kiln.toml [command.programs.{entry}]: max_attempts must be at least 1"
            ));
        }
        programs.push(Program {
            path: path.to_string_lossy().into_owned(),
            name: (!entry.contains('/')).then(|| entry.to_owned()),
            limits: base.merged(&own.limits.as_limits()),
            max_attempts,
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

fn check_limits(section: &str, limits: &LimitsConfig, problems: &mut Vec<String>) {
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
    let path_var = std::env::var_os("PATH").unwrap_or_default();
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
        assert_eq!(list.programs().len(), 1);
    }
}
