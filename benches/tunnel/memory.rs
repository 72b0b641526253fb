//! Resident memory of a process, for the per-stream cost of `many_streams`.
//!
//! Method: each side of a setup is its own process. The client opens its
//! tunnel (or connection), warms it up, and prints `READY many_streams`; the
//! orchestrator reads `VmRSS` of both processes from `/proc/<pid>/status`.
//! The client then opens N bidi streams, does one round trip on each and
//! prints `HOLD many_streams` with all N streams open and idle; the
//! orchestrator reads `VmRSS` again. (RSS at hold - RSS at ready) / N is the
//! resident cost of one idle stream on that side. It includes everything the
//! stream costs in that process: on the caller side the bench's own task,
//! request channel and tonic's decoder for each stream, on the serving side
//! the echo handler and tonic's server machinery; the same on direct tonic,
//! so the difference to the direct row is what the tunnel adds.

use std::time::Duration;

/// `VmRSS` of `pid` in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// RSS after the process settled: sampled until two readings 20 ms apart
/// agree within 64 KiB (at most 0.5 s), since a side may still be winding
/// down (Go's runtime, freed buffers).
pub fn settled_rss(pid: u32) -> Option<u64> {
    let mut last = rss(pid)?;
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(20));
        let now = rss(pid)?;
        if now.abs_diff(last) <= 64 * 1024 {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}
