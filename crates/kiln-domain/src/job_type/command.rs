//! The `command` job type's rules: its payload, the allow-list of programs an operator
//! started the server with, and the resource limits each program runs under.
//!
//! Pure data and checks only: resolving a bare program name on `PATH`, spawning the process
//! and applying the limits belong to the binary and the kernel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::payload::{Bounded, parse_payload};
use crate::Invalid;

/// Payload of `command`: `{argv, env?, cwd?, timeout_ms?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandPayload {
    /// The program (an allowed absolute path or bare name) and its arguments.
    pub argv: Vec<String>,
    /// Variables added to the clean environment Kiln builds (`PATH` and `HOME` are Kiln's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the job's scratch directory (no `..`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// The attempt's time limit; the type's policy timeout applies too.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl CommandPayload {
    /// The most arguments, program included.
    pub const MAX_ARGS: usize = 1024;
    /// The longest single argument or variable value, in bytes.
    pub const MAX_ARG_BYTES: usize = 64 * 1024;
    /// The most environment variables a payload may add.
    pub const MAX_ENV: usize = 256;
    /// The longest `cwd`, in bytes.
    pub const MAX_CWD: usize = 1024;
    /// The longest time limit a payload may set, in ms (one day); also the type's default
    /// policy timeout.
    pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
    /// Variables Kiln sets itself; a payload may not replace them.
    pub const RESERVED_ENV: [&'static str; 2] = ["PATH", "HOME"];

    /// Parses and checks a payload; the error names the offending field.
    pub fn parse(payload: &Value) -> Result<Self, Invalid> {
        parse_payload(payload)
    }

    /// The JSON Schema served at `GET /api/v1/job-types`.
    pub fn schema() -> Value {
        serde_json::json!({
            "type": "object",
            "required": ["argv"],
            "additionalProperties": false,
            "properties": {
                "argv": {
                    "type": "array", "minItems": 1, "maxItems": Self::MAX_ARGS,
                    "items": {"type": "string", "maxLength": Self::MAX_ARG_BYTES},
                    "description": "the program (on the server's allow-list) and its arguments",
                },
                "env": {
                    "type": "object", "maxProperties": Self::MAX_ENV,
                    "additionalProperties": {"type": "string"},
                    "description": "variables added to the clean environment (not PATH or HOME)",
                },
                "cwd": {
                    "type": "string", "maxLength": Self::MAX_CWD,
                    "description": "working directory relative to the job's scratch directory",
                },
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": Self::MAX_TIMEOUT_MS},
            },
        })
    }
}

impl Bounded for CommandPayload {
    fn check(&self) -> Result<(), Invalid> {
        let Some(program) = self.argv.first() else {
            return Err(Invalid::new("payload.argv", "must name a program"));
        };
        if program.is_empty() {
            return Err(Invalid::new("payload.argv", "the program name is empty"));
        }
        if self.argv.len() > Self::MAX_ARGS {
            return Err(Invalid::new("payload.argv", "has more than 1024 items"));
        }
        for (i, arg) in self.argv.iter().enumerate() {
            if arg.len() > Self::MAX_ARG_BYTES || arg.contains('\0') {
                return Err(Invalid::new(
                    format!("payload.argv[{i}]"),
                    "must be at most 64 KiB with no NUL byte",
                ));
            }
        }
        if self.env.len() > Self::MAX_ENV {
            return Err(Invalid::new("payload.env", "has more than 256 variables"));
        }
        for (name, value) in &self.env {
            let field = || format!("payload.env.{name}");
            if !env_name_ok(name) {
                return Err(Invalid::new(
                    field(),
                    "a variable name is letters, digits and '_', not starting with a digit",
                ));
            }
            if Self::RESERVED_ENV.contains(&name.as_str()) {
                return Err(Invalid::new(field(), "is set by Kiln"));
            }
            if value.len() > Self::MAX_ARG_BYTES || value.contains('\0') {
                return Err(Invalid::new(
                    field(),
                    "must be at most 64 KiB with no NUL byte",
                ));
            }
        }
        if let Some(cwd) = &self.cwd {
            check_cwd(cwd)?;
        }
        if let Some(ms) = self.timeout_ms
            && !(1..=Self::MAX_TIMEOUT_MS).contains(&ms)
        {
            return Err(Invalid::new(
                "payload.timeout_ms",
                "must be 1-86400000 (one day)",
            ));
        }
        Ok(())
    }
}

fn env_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A `cwd` is a relative path that stays inside the scratch directory.
fn check_cwd(cwd: &str) -> Result<(), Invalid> {
    let bad = |reason: &str| Err(Invalid::new("payload.cwd", reason));
    if cwd.len() > CommandPayload::MAX_CWD || cwd.contains('\0') {
        return bad("must be at most 1024 bytes with no NUL byte");
    }
    if cwd.starts_with('/') {
        return bad("must be relative to the job's scratch directory");
    }
    if cwd.split('/').any(|part| part == "..") {
        return bad("must not contain `..`");
    }
    Ok(())
}

/// The resource limits a program runs under. `None` leaves a limit unset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Address space (`RLIMIT_AS`) and, with cgroup v2, `memory.max`, in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU time (`RLIMIT_CPU`), in seconds.
    pub cpu_seconds: Option<u64>,
    /// Processes (`RLIMIT_NPROC`, counted per user by the kernel) and, with cgroup v2,
    /// `pids.max` (counted for the job's processes alone).
    pub processes: Option<u64>,
    /// Open files (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Largest file the program may write (`RLIMIT_FSIZE`), in bytes.
    pub file_size_bytes: Option<u64>,
    /// CPU bandwidth with cgroup v2 (`cpu.max`), in cores (1.5 = one and a half).
    pub cpu_cores: Option<f64>,
}

impl Default for Limits {
    /// 2 GiB of address space, an hour of CPU, 4096 processes, 1024 open files, 1 GiB files,
    /// and no CPU bandwidth cap.
    fn default() -> Self {
        Self {
            memory_bytes: Some(2 << 30),
            cpu_seconds: Some(3600),
            processes: Some(4096),
            open_files: Some(1024),
            file_size_bytes: Some(1 << 30),
            cpu_cores: None,
        }
    }
}

impl Limits {
    /// These limits with every limit `overrides` sets replacing the one here.
    pub fn merged(self, overrides: &Limits) -> Limits {
        Limits {
            memory_bytes: overrides.memory_bytes.or(self.memory_bytes),
            cpu_seconds: overrides.cpu_seconds.or(self.cpu_seconds),
            processes: overrides.processes.or(self.processes),
            open_files: overrides.open_files.or(self.open_files),
            file_size_bytes: overrides.file_size_bytes.or(self.file_size_bytes),
            cpu_cores: overrides.cpu_cores.or(self.cpu_cores),
        }
    }
}

/// One allowed program.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// The absolute path that is executed.
    pub path: String,
    /// The bare name it was allowed under (`sh` for `/usr/bin/sh`), if it was given so.
    pub name: Option<String>,
    /// Its limits (the defaults merged with its overrides).
    pub limits: Limits,
    /// Attempts of its jobs (1: no retry, the default).
    pub max_attempts: u32,
}

/// The programs `command` jobs may run; empty means the type is disabled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllowList {
    programs: Vec<Program>,
}

impl AllowList {
    /// An allow-list of `programs`; an empty one disables `command` jobs.
    pub fn new(programs: Vec<Program>) -> Self {
        Self { programs }
    }

    /// Whether `command` jobs are enabled at all.
    pub fn is_enabled(&self) -> bool {
        !self.programs.is_empty()
    }

    /// The allowed programs.
    pub fn programs(&self) -> &[Program] {
        &self.programs
    }

    /// The program `argv0` names (its absolute path, or the bare name it was allowed
    /// under), or an error naming `payload.argv`.
    pub fn check(&self, argv0: &str) -> Result<&Program, Invalid> {
        if !self.is_enabled() {
            return Err(disabled());
        }
        self.programs
            .iter()
            .find(|p| p.path == argv0 || p.name.as_deref() == Some(argv0))
            .ok_or_else(|| {
                Invalid::new(
                    "payload.argv",
                    format!("`{argv0}` is not on this server's list of allowed programs"),
                )
            })
    }
}

/// The error for a `command` submission to a server without an allow-list.
pub fn disabled() -> Invalid {
    Invalid::new(
        "type",
        "`command` jobs are disabled on this server (start it with --command-allow)",
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field_of(payload: Value) -> String {
        CommandPayload::parse(&payload).unwrap_err().field
    }

    #[test]
    fn a_full_payload_parses() {
        let p = CommandPayload::parse(&json!({
            "argv": ["sh", "-c", "echo hi"], "env": {"GREETING": "hi"},
            "cwd": "work/dir", "timeout_ms": 5000,
        }))
        .unwrap();
        assert_eq!(p.argv[0], "sh");
        assert_eq!(p.env["GREETING"], "hi");
        assert_eq!(p.cwd.as_deref(), Some("work/dir"));
    }

    #[test]
    fn bad_payloads_name_their_field() {
        assert_eq!(field_of(json!({"argv": []})), "payload.argv");
        assert_eq!(field_of(json!({"argv": [""]})), "payload.argv");
        assert_eq!(
            field_of(json!({"argv": ["a", "b\u{0}"]})),
            "payload.argv[1]"
        );
        assert_eq!(
            field_of(json!({"argv": ["a"], "cwd": "../up"})),
            "payload.cwd"
        );
        assert_eq!(
            field_of(json!({"argv": ["a"], "cwd": "a/../../b"})),
            "payload.cwd"
        );
        assert_eq!(
            field_of(json!({"argv": ["a"], "cwd": "/etc"})),
            "payload.cwd"
        );
        assert_eq!(
            field_of(json!({"argv": ["a"], "env": {"PATH": "/tmp"}})),
            "payload.env.PATH"
        );
        assert_eq!(
            field_of(json!({"argv": ["a"], "env": {"1X": "y"}})),
            "payload.env.1X"
        );
        assert_eq!(
            field_of(json!({"argv": ["a"], "timeout_ms": 0})),
            "payload.timeout_ms"
        );
        assert_eq!(
            field_of(json!({"argv": ["a"], "shell": true})),
            "payload.shell"
        );
    }

    #[test]
    fn the_allow_list_matches_paths_and_the_names_they_were_given_as() {
        let list = AllowList::new(vec![Program {
            path: "/usr/bin/sh".into(),
            name: Some("sh".into()),
            limits: Limits::default(),
            max_attempts: 1,
        }]);
        assert_eq!(list.check("sh").unwrap().path, "/usr/bin/sh");
        assert_eq!(list.check("/usr/bin/sh").unwrap().path, "/usr/bin/sh");
        assert_eq!(list.check("bash").unwrap_err().field, "payload.argv");
        assert_eq!(
            list.check("/bin/sh/../sh").unwrap_err().field,
            "payload.argv"
        );
        assert_eq!(AllowList::default().check("sh").unwrap_err().field, "type");
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let merged = Limits::default().merged(&Limits {
            memory_bytes: Some(1 << 20),
            cpu_seconds: None,
            processes: None,
            open_files: None,
            file_size_bytes: None,
            cpu_cores: Some(0.5),
        });
        assert_eq!(merged.memory_bytes, Some(1 << 20));
        assert_eq!(merged.cpu_seconds, Limits::default().cpu_seconds);
        assert_eq!(merged.cpu_cores, Some(0.5));
    }
}
