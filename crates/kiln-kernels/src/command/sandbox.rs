//! Starting a `command` job's process in a session and process group of its own, with a
//! clean environment and rlimits, and stopping the whole group.
//!
//! The child is not forked by hand: Kiln forbids `unsafe` code, and setting a session or
//! rlimits between `fork` and `exec` needs it (`pre_exec`). Instead the child execs two
//! small programs of util-linux, which every Linux distribution ships, in turn, each
//! replacing itself with the next: `setsid` makes it a session and process-group leader,
//! `prlimit` sets its limits, then the job's program runs — as the same process, so the
//! pid Kiln spawned is the group's id and the program's own pid.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kiln_domain::job_type::command::Limits;
use rustix::process::{Pid, Signal, kill_process, kill_process_group, test_kill_process_group};
use tokio::process::{Child, Command};

/// The helper programs, resolved once.
#[derive(Debug, Clone)]
pub struct Launcher {
    setsid: PathBuf,
    prlimit: PathBuf,
}

/// The `PATH` a job's process gets.
pub const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The `LANG` a job's process gets (the payload's `env` may change it).
pub const CHILD_LANG: &str = "C.UTF-8";

impl Launcher {
    /// Finds `setsid` and `prlimit` in the usual directories; the error says what is missing.
    pub fn find() -> Result<Self, String> {
        let find = |name: &str| {
            ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| format!("`{name}` (util-linux) is not installed"))
        };
        Ok(Self {
            setsid: find("setsid")?,
            prlimit: find("prlimit")?,
        })
    }

    /// Spawns `program` with `args` in `cwd`, under `limits`, with `HOME`, `PATH`, `LANG`
    /// and `env` as its whole environment; stdin is closed, stdout and stderr are piped.
    pub fn spawn(
        &self,
        program: &str,
        args: &[String],
        env: &std::collections::BTreeMap<String, String>,
        home: &Path,
        cwd: &Path,
        limits: &Limits,
    ) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.setsid);
        cmd.arg(&self.prlimit)
            .args(rlimit_args(limits))
            .arg("--")
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", CHILD_PATH)
            .env("HOME", home)
            .env("LANG", CHILD_LANG)
            .envs(env)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn()
    }
}

/// `prlimit` options for `limits` (soft = hard, so the program cannot raise them).
fn rlimit_args(limits: &Limits) -> Vec<String> {
    let pairs = [
        ("--as", limits.memory_bytes),
        ("--cpu", limits.cpu_seconds),
        ("--nproc", limits.processes),
        ("--nofile", limits.open_files),
        ("--fsize", limits.file_size_bytes),
    ];
    pairs
        .into_iter()
        .filter_map(|(flag, value)| value.map(|v| format!("{flag}={v}:{v}")))
        .collect()
}

/// A line for the job's log saying which limits apply.
pub fn describe(limits: &Limits) -> String {
    let mut parts = Vec::new();
    let mut add = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            parts.push(format!("{name} {v}"));
        }
    };
    add("RLIMIT_AS", limits.memory_bytes.map(bytes));
    add("RLIMIT_CPU", limits.cpu_seconds.map(|s| format!("{s} s")));
    add("RLIMIT_NPROC", limits.processes.map(|n| n.to_string()));
    add("RLIMIT_NOFILE", limits.open_files.map(|n| n.to_string()));
    add("RLIMIT_FSIZE", limits.file_size_bytes.map(bytes));
    if parts.is_empty() {
        "rlimits: none".to_owned()
    } else {
        format!("rlimits: {}", parts.join(", "))
    }
}

/// A byte count in the largest binary unit that divides it.
pub fn bytes(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} B")
}

/// The process group of a running job. Dropping it kills whatever is left of the group
/// (the kernel's future may be dropped by the worker's abort).
#[derive(Debug)]
pub struct Group {
    pid: Option<Pid>,
}

impl Group {
    /// The group led by the spawned `child` (its pid is the group's id after `setsid`).
    pub fn of(child: &Child) -> Self {
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw);
        Self { pid }
    }

    /// The leader's pid.
    pub fn pid(&self) -> Option<u32> {
        self.pid.map(|p| p.as_raw_nonzero().get().unsigned_abs())
    }

    /// Sends `signal` to every process of the group, and to the leader itself in case it
    /// had not yet become the group's leader.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid {
            let _ = kill_process_group(pid, signal);
            let _ = kill_process(pid, signal);
        }
    }

    /// Whether any process of the group still exists (zombies included).
    pub fn alive(&self) -> bool {
        self.pid
            .is_some_and(|pid| test_kill_process_group(pid).is_ok())
    }

    /// SIGTERM to the group, then SIGKILL to what is left after `grace`, reaping the
    /// leader meanwhile. Returns once the group is gone (or, if orphaned zombies linger
    /// because nothing reaps them, a second after the SIGKILL).
    pub async fn terminate(&self, child: &mut Child, grace: Duration) {
        self.signal(Signal::TERM);
        if !self.wait_gone(child, grace).await {
            self.signal(Signal::KILL);
            if !self.wait_gone(child, Duration::from_secs(1)).await {
                tracing::warn!(
                    pid = self.pid(),
                    "processes of a command job linger after SIGKILL"
                );
            }
        }
    }

    /// Kills what is left of the group at once (after its leader exited by itself).
    pub async fn kill_rest(&self, child: &mut Child) {
        if self.alive() {
            self.signal(Signal::KILL);
            self.wait_gone(child, Duration::from_secs(1)).await;
        }
    }

    /// Polls until no process of the group is left, reaping the leader; `false` on timeout.
    async fn wait_gone(&self, child: &mut Child, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let _ = child.try_wait();
            if !self.alive() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.alive() {
            self.signal(Signal::KILL);
        }
    }
}

/// The name of signal `n` (`SIGKILL`), or `signal n`.
pub fn signal_name(n: i32) -> String {
    let name = match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {n}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimit_options_hold_soft_and_hard_equal_and_skip_unset_limits() {
        let limits = Limits {
            memory_bytes: Some(1 << 20),
            cpu_seconds: None,
            processes: Some(10),
            open_files: None,
            file_size_bytes: None,
            cpu_cores: Some(1.0),
        };
        assert_eq!(
            rlimit_args(&limits),
            ["--as=1048576:1048576", "--nproc=10:10"]
        );
        assert_eq!(
            describe(&limits),
            "rlimits: RLIMIT_AS 1 MiB, RLIMIT_NPROC 10"
        );
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes(2 << 30), "2 GiB");
        assert_eq!(bytes(1536), "1536 B");
        assert_eq!(bytes(64 << 10), "64 KiB");
    }
}
