//! Access logs (`grpctunnel hub --access-log DEST`): one structured line
//! per call, written when the call ends.
//!
//! - `stderr`: a `grpctunnel::access` event in the hub's log, as
//!   `--log-format` says (JSON fields with `json`);
//! - a file path: one JSON object per line, appended, written by a thread
//!   of its own. Lines wait in a queue of [`QUEUE`]; when the disk falls
//!   that far behind, lines are dropped and counted
//!   (`grpctunnel_access_log_dropped_total`), never the calls delayed.
//!
//! Off by default: a busy hub's every call is a line. Each line has the
//! time (RFC 3339, UTC), this hub, the caller's credential name, the key,
//! the method, the status code's name, the duration in milliseconds, the
//! message bytes each way, the peer's address, and where the call went or
//! came from: the agent tunnel that served it (`tunnel_id`), or the hub it
//! was relayed to (`relayed_to`); a call another hub relayed here names
//! that hub (`relayed_from`).

use std::{
    io::Write,
    sync::{mpsc, Arc},
    time::SystemTime,
};

use serde::Serialize;

use crate::Failure;

/// Lines that may wait for the file's writer.
const QUEUE: usize = 8192;

/// One call's line.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Line {
    pub(crate) time: String,
    pub(crate) hub: String,
    pub(crate) caller: String,
    pub(crate) key: String,
    pub(crate) method: String,
    pub(crate) status: String,
    pub(crate) duration_ms: f64,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) peer: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) relayed_from: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) relayed_to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tunnel_id: Option<u64>,
}

impl Line {
    /// A line for `req` as it arrived: its method (the path) and the peer
    /// it came from; the rest is filled in by the caller and at the end.
    pub(crate) fn arriving<B>(req: &http::Request<B>) -> Self {
        Self {
            method: req.uri().path().to_owned(),
            peer: crate::refusals::peer(req.extensions())
                .map(|a| a.to_string())
                .unwrap_or_default(),
            ..Self::default()
        }
    }
}

/// Header `name` of `headers` as text; empty when absent or not text.
pub(crate) fn header_text(headers: &http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Where lines go.
#[derive(Debug, Clone)]
pub(crate) struct AccessLog {
    hub: Arc<str>,
    sink: Sink,
}

#[derive(Debug, Clone)]
enum Sink {
    Stderr,
    File(mpsc::SyncSender<String>),
}

impl AccessLog {
    /// Lines of the hub named `hub` to `dest`: `stderr`, or a file
    /// (created if need be, appended to).
    pub(crate) fn open(dest: &str, hub: &str) -> Result<Self, Failure> {
        let sink = if dest == "stderr" {
            Sink::Stderr
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dest)
                .map_err(|e| Failure::Usage(format!("--access-log {dest}: {e}")))?;
            let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_lines(file, rx))
                .map_err(|e| Failure::Run(format!("access log writer: {e}")))?;
            Sink::File(tx)
        };
        Ok(Self {
            hub: hub.into(),
            sink,
        })
    }

    /// Writes `line` (its time and hub filled in here).
    pub(crate) fn write(&self, mut line: Line) {
        line.time = rfc3339(SystemTime::now());
        line.hub = self.hub.to_string();
        match &self.sink {
            Sink::Stderr => tracing::info!(
                target: "grpctunnel::access",
                caller = %line.caller,
                key = %line.key,
                method = %line.method,
                status = %line.status,
                duration_ms = line.duration_ms,
                bytes_received = line.bytes_received,
                bytes_sent = line.bytes_sent,
                peer = %line.peer,
                hub = %line.hub,
                relayed_from = %line.relayed_from,
                relayed_to = %line.relayed_to,
                tunnel_id = line.tunnel_id,
                "call"
            ),
            Sink::File(queue) => {
                let Ok(text) = serde_json::to_string(&line) else {
                    return;
                };
                if queue.try_send(text).is_err() {
                    metrics::counter!("grpctunnel_access_log_dropped_total").increment(1);
                }
            }
        }
    }
}

/// The file's writer: lines as they come, flushed whenever none waits.
fn write_lines(file: std::fs::File, lines: mpsc::Receiver<String>) {
    let mut out = std::io::BufWriter::new(file);
    let mut failed = false;
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(line) = next {
            let written = out
                .write_all(line.as_bytes())
                .and_then(|()| out.write_all(b"\n"));
            if let Err(e) = written {
                metrics::counter!("grpctunnel_access_log_dropped_total").increment(1);
                if !std::mem::replace(&mut failed, true) {
                    tracing::error!(error = %e, "cannot write the access log");
                }
            }
            next = lines.try_recv().ok();
        }
        if out.flush().is_err() {
            metrics::counter!("grpctunnel_access_log_dropped_total").increment(1);
        }
    }
}

/// `at` as RFC 3339 in UTC, to the millisecond.
fn rfc3339(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::rfc3339;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2026-12-07T10:42:11.250Z
        let at = UNIX_EPOCH + Duration::from_millis(1_796_640_131_250);
        assert_eq!(rfc3339(at), "2026-12-07T10:42:11.250Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
