//! What `/proc` tells about a process: its peak resident set and the CPU time it used.
//! Linux only; elsewhere the figures are simply left out.

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`): 100 on every Linux
/// architecture Kiln targets; reading `sysconf(_SC_CLK_TCK)` would need `libc` and unsafe.
const USER_HZ: f64 = 100.0;

/// `self` or a pid.
fn path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// Peak resident set size (`VmHWM`) in bytes.
pub fn peak_rss(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(path(pid, "status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User + system CPU time used so far, in seconds (10 ms resolution).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(path(pid, "stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_peak_rss_and_cpu_time() {
        let spin: u64 = (0..2_000_000u64).map(|i| i ^ (i >> 3)).sum();
        assert!(spin > 0);
        assert!(peak_rss(None).unwrap() > 1024 * 1024);
        assert!(cpu_seconds(None).unwrap() >= 0.0);
        assert_eq!(cpu_seconds(Some(u32::MAX)), None);
    }
}
