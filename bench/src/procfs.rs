//! Process accounting read from `/proc`: resident memory and CPU time of a process, so every
//! figure about memory and CPU comes from the kernel, not from timers inside fleetrun.

use anyhow::Context as _;
use std::time::{Duration, Instant};

/// Resident set size (`VmRSS`) of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    status_kib(pid, "VmRSS:").map(|kib| kib as f64 / 1024.0)
}

/// Peak resident set size (`VmHWM`) of `pid`, in MiB.
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib as f64 / 1024.0)
}

/// Anonymous (heap, stacks) and file-backed (the executable's and libraries' pages) parts of
/// the resident set of `pid`, in MiB.
pub fn rss_split_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    Ok((
        status_kib(pid, "RssAnon:")? as f64 / 1024.0,
        status_kib(pid, "RssFile:")? as f64 / 1024.0,
    ))
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} for process {pid}"))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("malformed {field} line {line:?}"))
}

/// CPU time (user + system, all threads, including ones that exited) used by `pid` so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    }
}

/// On-CPU time of the threads `pid` has now, from `se.sum_exec_runtime` in
/// `/proc/<pid>/task/*/sched` (microsecond precision, but threads that exit take their time
/// with them).
fn thread_cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let millis: f64 = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("sched")).ok())
        .filter_map(|text| {
            let line = text.lines().find(|l| l.starts_with("se.sum_exec_runtime"))?;
            line.split(':').nth(1)?.trim().parse::<f64>().ok()
        })
        .sum();
    Duration::from_secs_f64(millis / 1000.0)
}

/// CPU time used by a process between two readings.
pub struct CpuMeter {
    pid: u32,
    cpu: Duration,
    threads: Duration,
    at: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid` now.
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        Ok(CpuMeter {
            pid,
            cpu: cpu_time(pid)?,
            threads: thread_cpu_time(pid),
            at: Instant::now(),
        })
    }

    /// CPU time used since `start`, and the wall time that passed. The larger of two
    /// readings: clock ticks (10 ms resolution, every thread) and per-thread nanosecond
    /// counters (threads that exited in between are missing).
    pub fn read(&self) -> anyhow::Result<(Duration, Duration)> {
        let ticks = cpu_time(self.pid)?.saturating_sub(self.cpu);
        let threads = thread_cpu_time(self.pid).saturating_sub(self.threads);
        Ok((ticks.max(threads), self.at.elapsed()))
    }
}

/// CPU time used by several processes between two readings, summed. A process that exits in
/// between counts with what it had used at the start (nothing), not as an error: the
/// database's backends come and go with their connections.
pub struct CpuMeters(Vec<CpuMeter>);

impl CpuMeters {
    /// Starts measuring every process of `pids` that exists now.
    pub fn start(pids: &[u32]) -> Self {
        CpuMeters(pids.iter().filter_map(|pid| CpuMeter::start(*pid).ok()).collect())
    }

    /// CPU time used by all of them since `start`.
    pub fn read(&self) -> Duration {
        self.0
            .iter()
            .filter_map(|meter| meter.read().ok())
            .map(|(cpu, _)| cpu)
            .sum()
    }
}

/// The processes whose command name (`/proc/<pid>/comm`) is `name`: the PostgreSQL server's
/// postmaster, background workers and one backend per connection are all `postgres`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == name))
        .collect()
}

/// Waits until `pid` uses less than `busy` of one core over 500 ms (at most `limit`), so a
/// scenario does not start while the server still digests the previous one. Returns the wait.
pub async fn settle(pid: u32, busy: f64, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        let Ok(meter) = CpuMeter::start(pid) else {
            break;
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        match meter.read() {
            Ok((cpu, wall)) if cpu.as_secs_f64() / wall.as_secs_f64() < busy => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    started.elapsed()
}
