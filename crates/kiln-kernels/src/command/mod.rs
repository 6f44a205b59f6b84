//! `command`: runs a program from the server's allow-list as a real Linux process.
//!
//! # Layout
//! - this file: [`Command`], the kernel: checks the program against the allow-list again
//!   (it may have changed since the submit), starts it, streams its output into the log,
//!   and turns its exit into a result or a failure.
//! - [`sandbox`]: the process's session and group, clean environment and rlimits, and
//!   stopping the whole group (SIGTERM, then SIGKILL after the grace period).
//! - [`cgroup`]: cgroup v2 limits where the host delegates them.
//! - [`capture`]: stdout and stderr, line by line, into the job's log.
//!
//! The process runs in a scratch directory of its own (`<scratch>/<job id>.<attempt>/`,
//! also its `HOME`), removed when the attempt ends.

pub mod capture;
pub mod cgroup;
pub mod sandbox;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_domain::JobType;
use kiln_domain::job_type::CommandPayload;
use kiln_domain::job_type::command::{AllowList, Program};
use serde_json::{Value, json};

use crate::{Classify, JobContext, Kernel, KernelError};
use capture::{Stream, Tail};
use cgroup::{Cgroups, JobCgroup};
use sandbox::{Group, Launcher};

/// How the `command` kernel runs programs.
#[derive(Debug, Clone)]
pub struct CommandConfig {
    /// The programs jobs may run (checked again at run time).
    pub allow: Arc<AllowList>,
    /// Between SIGTERM and SIGKILL on cancel, timeout and shutdown. Default 10 s.
    pub grace: Duration,
    /// Where each attempt's working directory is made.
    pub scratch: PathBuf,
    /// cgroup v2 limits, or why they are not used (rlimits apply either way).
    pub cgroups: Result<Cgroups, String>,
}

impl CommandConfig {
    /// A configuration for `allow` with the default grace, scratch under the system temp
    /// directory and cgroups as detected on this host.
    pub fn new(allow: Arc<AllowList>) -> Self {
        Self {
            allow,
            grace: Duration::from_secs(10),
            scratch: std::env::temp_dir().join("kiln-command-scratch"),
            cgroups: Cgroups::detect(),
        }
    }
}

/// The `command` kernel.
#[derive(Debug)]
pub struct Command {
    config: CommandConfig,
    launcher: Result<Launcher, String>,
}

impl Command {
    /// A kernel running programs as `config` says.
    pub fn new(config: CommandConfig) -> Self {
        Self {
            config,
            launcher: Launcher::find(),
        }
    }
}

#[async_trait]
impl Kernel for Command {
    fn job_type(&self) -> JobType {
        JobType::Command
    }

    fn stop_grace(&self) -> Duration {
        self.config.grace
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError> {
        let payload = CommandPayload::parse(&ctx.payload).permanent("invalid_input")?;
        let program = self.config.allow.check(&payload.argv[0]).map_err(|_| {
            permanent(
                "not_allowed",
                format!(
                    "`{}` is no longer on this server's list of allowed programs",
                    payload.argv[0]
                ),
            )
        })?;
        let launcher = self
            .launcher
            .as_ref()
            .map_err(|why| permanent("cannot_exec", why.clone()))?;
        check_executable(&program.path)?;
        let dir = self
            .config
            .scratch
            .join(format!("{}.{}", ctx.job_id.0.simple(), ctx.attempt));
        let scratch = Scratch::create(dir).retryable("scratch_dir")?;
        let cwd = match &payload.cwd {
            Some(rel) => scratch.0.join(rel),
            None => scratch.0.clone(),
        };
        std::fs::create_dir_all(&cwd).permanent("bad_cwd")?;
        let run = Run {
            ctx: &ctx,
            program,
            payload: &payload,
            grace: self.config.grace,
        };
        let cgroup = self.cgroup_for(&ctx, program);
        let mut child = launcher
            .spawn(
                &program.path,
                &payload.argv[1..],
                &payload.env,
                &scratch.0,
                &cwd,
                &program.limits,
            )
            .map_err(|e| permanent("cannot_exec", format!("cannot start the program: {e}")))?;
        run.supervise(&mut child, cgroup).await
    }
}

impl Command {
    /// The attempt's cgroup, logging what was applied; `None` without cgroup v2.
    fn cgroup_for(&self, ctx: &JobContext, program: &Program) -> Option<JobCgroup> {
        ctx.log.line(sandbox::describe(&program.limits));
        match &self.config.cgroups {
            Ok(cgroups) => {
                let name = format!("kiln-{}-{}", ctx.job_id.0.simple(), ctx.attempt);
                match cgroups.create(&name, &program.limits) {
                    Ok(cgroup) => {
                        ctx.log
                            .line(format!("cgroup v2: {}", cgroup.dir().display()));
                        Some(cgroup)
                    }
                    Err(why) => {
                        ctx.log.line(format!("cgroup v2: not applied ({why})"));
                        None
                    }
                }
            }
            Err(why) => {
                ctx.log.line(format!("cgroup v2: not available ({why})"));
                None
            }
        }
    }
}

/// One running attempt.
struct Run<'a> {
    ctx: &'a JobContext,
    program: &'a Program,
    payload: &'a CommandPayload,
    grace: Duration,
}

/// Why the process stopped before exiting by itself.
enum Stopped {
    Cancelled,
    TimedOut(u64),
}

impl Run<'_> {
    async fn supervise(
        &self,
        child: &mut tokio::process::Child,
        cgroup: Option<JobCgroup>,
    ) -> Result<Value, KernelError> {
        let started = Instant::now();
        let group = Group::of(child);
        if let (Some(cgroup), Some(pid)) = (&cgroup, group.pid())
            && let Err(e) = cgroup.add(pid)
        {
            self.ctx
                .log
                .line(format!("cgroup v2: cannot add the process: {e}"));
        }
        let tail = Tail::default();
        let out = child
            .stdout
            .take()
            .map(|r| tokio::spawn(capture::pump(r, Stream::Stdout, self.ctx.log.clone(), None)));
        let err = child.stderr.take().map(|r| {
            let tail = Some(tail.clone());
            tokio::spawn(capture::pump(r, Stream::Stderr, self.ctx.log.clone(), tail))
        });
        let timeout = self.payload.timeout_ms;
        let deadline = timeout.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
        let stopped = tokio::select! {
            status = child.wait() => status.map(Ok),
            () = self.ctx.cancel.cancelled() => Ok(Err(Stopped::Cancelled)),
            () = sleep_until(deadline), if deadline.is_some() => {
                Ok(Err(Stopped::TimedOut(timeout.unwrap_or(0))))
            }
        };
        let status = match stopped {
            Ok(Ok(status)) => {
                // The leader is done; nothing of its group may outlive the job.
                group.kill_rest(child).await;
                if let Some(cgroup) = &cgroup {
                    cgroup.kill();
                }
                Ok(status)
            }
            Ok(Err(why)) => {
                group.terminate(child, self.grace).await;
                if let Some(cgroup) = &cgroup {
                    cgroup.kill();
                }
                let _ = child.wait().await;
                Err(why)
            }
            Err(e) => {
                return Err(KernelError::Retryable {
                    code: "wait_failed",
                    source: e.into(),
                });
            }
        };
        let (out_bytes, err_bytes) = (drain(out).await, drain(err).await);
        let duration_ms = started.elapsed().as_millis() as u64;
        let oom = cgroup.as_ref().is_some_and(JobCgroup::oom_killed);
        match status {
            Err(Stopped::Cancelled) => Err(KernelError::Cancelled),
            Err(Stopped::TimedOut(ms)) => Err(self.failed(
                "timeout",
                format!("ran past its timeout_ms of {ms} ms and was stopped"),
            )),
            Ok(status) => self.outcome(
                status,
                &tail,
                oom,
                json!({
                    "duration_ms": duration_ms,
                    "pid": group.pid(),
                    "stdout_bytes": out_bytes,
                    "stderr_bytes": err_bytes,
                }),
            ),
        }
    }

    /// The result of an exit: success, or a failure naming the code or the signal.
    fn outcome(
        &self,
        status: std::process::ExitStatus,
        tail: &Tail,
        oom: bool,
        mut result: Value,
    ) -> Result<Value, KernelError> {
        use std::os::unix::process::ExitStatusExt;
        let stderr = tail
            .joined()
            .map(|t| format!("; last stderr: {t}"))
            .unwrap_or_default();
        if let Some(code) = status.code() {
            if code == 0 {
                self.ctx.progress.set(1.0);
                result["exit_code"] = json!(0);
                return Ok(result);
            }
            return Err(self.failed("exit_code", format!("exited with code {code}{stderr}")));
        }
        let signal = sandbox::signal_name(status.signal().unwrap_or(0));
        let why = if oom {
            " (its cgroup's memory limit)"
        } else {
            ""
        };
        Err(self.failed("killed", format!("killed by {signal}{why}{stderr}")))
    }

    /// A failure of the program itself: retryable when its program allows retries, so
    /// the per-program attempt budget applies; permanent otherwise.
    fn failed(&self, code: &'static str, message: String) -> KernelError {
        if self.program.max_attempts > 1 {
            KernelError::Retryable {
                code,
                source: message.into(),
            }
        } else {
            permanent(code, message)
        }
    }
}

fn permanent(code: &'static str, message: impl Into<String>) -> KernelError {
    KernelError::Permanent {
        code,
        source: message.into().into(),
    }
}

/// Refuses a program that is missing or not executable, with the OS's own words.
fn check_executable(path: &str) -> Result<(), KernelError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| permanent("cannot_exec", format!("cannot run {path}: {e}")))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        return Err(permanent("cannot_exec", format!("cannot run {path}: {e}")));
    }
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for a stream reader to reach end of file (every writer gone); its byte count.
async fn drain(reader: Option<tokio::task::JoinHandle<u64>>) -> u64 {
    match reader {
        // Bounded: a process that escaped the group (its own `setsid`) may keep the pipe
        // open for ever; its remaining output is then not waited for.
        Some(task) => match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(n)) => n,
            _ => 0,
        },
        None => 0,
    }
}

/// An attempt's scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn create(dir: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
