//! The broker's CPU time and memory, read from `/proc/PID/stat` and `/proc/PID/status`.
//!
//! The load tool runs on the same small machine as the broker, so a throughput figure alone
//! says little: how much of the machine the broker needed for it is the comparable number. We
//! read the broker's own counters rather than the whole machine's, so the tool's CPU use does
//! not count against the broker.

use std::{fs, process::Command, sync::OnceLock};

/// A process being watched: the broker, or the tool itself.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    pub pid: u32,
}

/// One reading of the broker's counters.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// utime + stime, in seconds.
    pub cpu_s: f64,
    /// Resident set size now (VmRSS), KiB.
    pub rss_kib: u64,
    /// High-water mark of the resident set over the process's life (VmHWM), KiB.
    pub hwm_kib: u64,
}

/// Clock ticks per second of the `/proc/PID/stat` times (USER_HZ). It is 100 on every Linux
/// ABI in common use, but asking costs one `getconf` at start-up.
fn ticks_per_s() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

impl Process {
    pub fn new(pid: u32) -> anyhow::Result<Self> {
        let broker = Self { pid };
        broker
            .sample()
            .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}: {e}"))?;
        ticks_per_s();
        Ok(broker)
    }

    pub fn sample(&self) -> std::io::Result<Sample> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // The command name (field 2) is in parentheses and may contain spaces: split after the
        // last ')'. Fields from there on: 3 state, ..., 14 utime, 15 stime.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| std::io::Error::other("malformed stat"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field =
            |n: usize| -> u64 { fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0) };
        let cpu_s = (field(14) + field(15)) as f64 / ticks_per_s();

        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(Sample {
            cpu_s,
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
        })
    }
}

/// CPU seconds spent busy (everything but idle and iowait) by the whole machine since boot,
/// from the first line of `/proc/stat`. Minus the broker's and the tool's own CPU over the
/// same window, it tells how much other work disturbed a run.
pub fn machine_busy_s() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Some(busy as f64 / ticks_per_s())
}
