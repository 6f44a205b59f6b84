//! cgroup v2 limits for `command` jobs, where the host lets Kiln create child cgroups.
//!
//! Kiln uses cgroup v2 only when the cgroup it runs in is on a v2 hierarchy, is writable,
//! and delegates the `memory`, `cpu` and `pids` controllers to its children (its
//! `cgroup.subtree_control` lists them, or Kiln can turn them on there — which the kernel
//! refuses while that cgroup itself holds processes, unless it is the root). That is the
//! case in a systemd unit with `Delegate=yes` or in a container that runs Kiln as its
//! root cgroup's only service. Otherwise [`Cgroups::detect`] says why, the server logs it
//! once, and jobs run under their rlimits alone. Each attempt gets a cgroup of its own,
//! `kiln-<job id>-<attempt>`, removed when the attempt ends.

use std::path::{Path, PathBuf};

use kiln_domain::job_type::command::Limits;

/// The controllers Kiln needs.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// `cpu.max` period in microseconds (the kernel's default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// Where job cgroups are created.
#[derive(Debug, Clone)]
pub struct Cgroups {
    parent: PathBuf,
}

impl Cgroups {
    /// Checks whether this process may create job cgroups; the error says why not.
    pub fn detect() -> Result<Self, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("this host has no cgroup v2 hierarchy")?;
        let mount = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|m| m.join("cgroup.controllers").is_file())
            .ok_or("no cgroup v2 file system is mounted")?;
        let parent = mount.join(path.trim_start_matches('/'));
        Self::at(parent)
    }

    /// Job cgroups under `parent`, if it delegates the controllers and is writable.
    pub fn at(parent: PathBuf) -> Result<Self, String> {
        let read = |name: &str| std::fs::read_to_string(parent.join(name)).unwrap_or_default();
        let available = read("cgroup.controllers");
        let missing: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !available.split_whitespace().any(|a| a == *c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the cgroup {} does not offer the {} controller(s)",
                parent.display(),
                missing.join(", ")
            ));
        }
        let enabled = read("cgroup.subtree_control");
        let off: Vec<String> = CONTROLLERS
            .into_iter()
            .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
            .map(|c| format!("+{c}"))
            .collect();
        if !off.is_empty() {
            std::fs::write(parent.join("cgroup.subtree_control"), off.join(" ")).map_err(|e| {
                format!(
                    "cannot delegate {} to child cgroups of {}: {e}",
                    off.join(" "),
                    parent.display()
                )
            })?;
        }
        let probe = parent.join(format!("kiln-probe-{}", std::process::id()));
        std::fs::create_dir(&probe)
            .and_then(|()| std::fs::remove_dir(&probe))
            .map_err(|e| format!("cannot create a cgroup under {}: {e}", parent.display()))?;
        Ok(Self { parent })
    }

    /// Creates the cgroup `name` with `limits`; the error says which write failed.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<JobCgroup, String> {
        let dir = self.parent.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cgroup = JobCgroup { dir };
        let writes = [
            ("memory.max", limits.memory_bytes.map(|b| b.to_string())),
            // Without swap the memory limit could be dodged by swapping out.
            (
                "memory.swap.max",
                limits.memory_bytes.map(|_| "0".to_owned()),
            ),
            ("pids.max", limits.processes.map(|n| n.to_string())),
            (
                "cpu.max",
                limits.cpu_cores.map(|cores| {
                    let quota = (cores * CPU_PERIOD_US as f64).max(1000.0) as u64;
                    format!("{quota} {CPU_PERIOD_US}")
                }),
            ),
        ];
        for (file, value) in writes {
            if let Some(value) = value
                && let Err(e) = std::fs::write(cgroup.dir.join(file), &value)
                && file != "memory.swap.max"
            {
                return Err(format!("cannot set {file} = {value}: {e}"));
            }
        }
        Ok(cgroup)
    }
}

/// One attempt's cgroup; removed on drop (once its processes are gone).
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
}

impl JobCgroup {
    /// Moves process `pid` (and so its future children) into the cgroup.
    pub fn add(&self, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    /// Kills every process in the cgroup, even ones that left the process group
    /// (`cgroup.kill`, Linux 5.14+; older kernels lack the file, and the group kill stands).
    pub fn kill(&self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
    }

    /// Whether the memory limit was hit (`memory.events` counts `oom_kill`).
    pub fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        self.kill();
        // Fails while exiting processes are still being torn down; a cgroup left behind
        // is empty and costs nothing.
        let _ = std::fs::remove_dir(&self.dir);
    }
}
