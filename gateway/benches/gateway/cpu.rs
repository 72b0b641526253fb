//! CPU time of the processes between the caller and the upstream (hub and
//! agent; frps and frpc; the plain proxies; both hubs and the agent when
//! relayed), read from `/proc/<pid>/stat` before and after a workload:
//! user + system time of every thread, divided by the calls the workload
//! completed, is the CPU one call costs in the middle. It is steadier than
//! throughput on a shared machine: a noisy neighbour slows calls down but
//! hardly changes what each costs.
//!
//! [`Machine`] reads the whole machine's CPU time from `/proc/stat` around
//! the same workload: everything busy per call (caller, upstream, the
//! middle, the kernel) and the share of time the CPUs sat idle, which
//! shows whether a setup is short of CPU or waits between its processes.

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`: 100 on every
/// Linux architecture the bench runs on).
const TICKS_PER_S: f64 = 100.0;

/// user + system CPU seconds of `pid` so far; `None` when unreadable (the
/// process is gone, or this is not Linux).
fn seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields count from its
    // closing parenthesis, where field 3 (state) starts.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    // utime and stime are fields 14 and 15, i.e. 11th and 12th after state.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

/// The CPU seconds of a set of processes at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot(Vec<(u32, f64)>);

impl Snapshot {
    /// Reads every pid now; unreadable ones are left out (and so count
    /// nothing).
    pub fn take(pids: &[u32]) -> Self {
        Self(
            pids.iter()
                .filter_map(|&p| seconds(p).map(|s| (p, s)))
                .collect(),
        )
    }

    /// Microseconds of CPU per call since `self`, over `calls` calls;
    /// `None` without processes or calls.
    pub fn us_per_call(&self, calls: u64) -> Option<f64> {
        if self.0.is_empty() || calls == 0 {
            return None;
        }
        let spent: f64 = self
            .0
            .iter()
            .filter_map(|&(pid, before)| seconds(pid).map(|now| now - before))
            .sum();
        Some(spent * 1e6 / calls as f64)
    }
}

/// The machine's CPU time so far, from `/proc/stat`, in seconds summed
/// over CPUs: busy (user, nice, system, irq, softirq) and idle (idle,
/// iowait). Time stolen by a hypervisor counts as neither.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    busy: f64,
    idle: f64,
}

impl Machine {
    /// Reads `/proc/stat` now; `None` when unreadable (not Linux).
    pub fn take() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let t: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let at = |i: usize| t.get(i).copied().unwrap_or(0.0);
        Some(Self {
            busy: (at(0) + at(1) + at(2) + at(5) + at(6)) / TICKS_PER_S,
            idle: (at(3) + at(4)) / TICKS_PER_S,
        })
    }

    /// Since `self`, over `calls` calls: busy microseconds per call and the
    /// percentage of CPU time idle; `None` without calls or time.
    pub fn since(&self, calls: u64) -> Option<(f64, f64)> {
        let now = Self::take()?;
        let (busy, idle) = (now.busy - self.busy, now.idle - self.idle);
        if calls == 0 || busy + idle <= 0.0 {
            return None;
        }
        Some((busy * 1e6 / calls as f64, 100.0 * idle / (busy + idle)))
    }
}
