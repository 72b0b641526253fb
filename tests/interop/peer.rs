//! The Go peer (interop/cmd/peer, built against github.com/jhump/grpctunnel
//! v0.3.0): building it once, running its roles, reading its line protocol.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::Duration,
};

use crate::go_build::go_build;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// Where the Go peer lives and how to reach it.
pub struct Peer {
    bin: PathBuf,
}

/// How the Go peer is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoMode {
    /// Default options: negotiates revision one.
    Default,
    /// The Go reference's option that disables flow control: negotiated,
    /// but `Settings` lists only revision zero.
    NoFlowControl,
    /// Strips `grpctunnel-negotiate` from the opening RPC, as a v0.2.0 peer
    /// (revision zero, no Settings) behaves on the wire.
    NoNegotiate,
}

impl GoMode {
    pub fn args(self) -> &'static [&'static str] {
        match self {
            GoMode::Default => &[],
            GoMode::NoFlowControl => &["--no-flow-control"],
            GoMode::NoNegotiate => &["--no-negotiate"],
        }
    }
}

static PEER: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The built peer. A test that calls it is ignored where `go` is missing
/// (`cfg(missing_go)`), so here a missing toolchain or a failed build is a
/// failure.
pub fn peer() -> Peer {
    match PEER.get_or_init(build) {
        Ok(bin) => Peer { bin: bin.clone() },
        Err(reason) => panic!("Go interop peer unavailable: {reason}"),
    }
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

fn build() -> Result<PathBuf, String> {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpctunnel-interop-go");
    go_build(&interop_dir(), &out, &["./cmd/peer"])?;
    Ok(out.join("peer"))
}

/// A running peer role; killed when dropped.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    pub transcript: Vec<String>,
}

impl Peer {
    /// Starts `peer <role> <args>`.
    pub fn start(&self, role: &str, args: &[&str]) -> Running {
        let mut child = Command::new(&self.bin)
            .arg(role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start Go peer");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        Running {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            transcript: Vec::new(),
        }
    }
}

/// What a peer role printed for its case matrix.
#[derive(Debug, Default)]
pub struct Outcome {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub skipped: Vec<String>,
    pub result_line: Option<String>,
}

impl Running {
    /// Reads stdout until a line starting with `prefix`; returns its rest.
    pub async fn expect_line(&mut self, prefix: &str) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("Go peer said nothing for 60 s; waiting for {prefix}"))
                .expect("read Go peer stdout")
                .unwrap_or_else(|| panic!("Go peer exited before {prefix}: {:?}", self.transcript));
            self.transcript.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    /// The address from a `LISTENING` line.
    pub async fn listening(&mut self) -> std::net::SocketAddr {
        self.expect_line("LISTENING")
            .await
            .parse()
            .expect("LISTENING address")
    }

    /// Reads PASS/FAIL/SKIP lines until `RESULT`, then waits for the exit.
    pub async fn outcome(&mut self) -> (Outcome, std::process::ExitStatus) {
        let mut outcome = Outcome::default();
        loop {
            let rest = self.expect_line("").await;
            if let Some(name) = rest.strip_prefix("PASS ") {
                outcome.passed.push(name.to_owned());
            } else if let Some(what) = rest.strip_prefix("FAIL ") {
                outcome.failed.push(what.to_owned());
            } else if let Some(what) = rest.strip_prefix("SKIP ") {
                outcome.skipped.push(what.to_owned());
            } else if let Some(result) = rest.strip_prefix("RESULT ") {
                outcome.result_line = Some(result.to_owned());
                break;
            }
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("Go peer exits after RESULT")
            .expect("wait for Go peer");
        (outcome, status)
    }

    /// Closes the peer's stdin (its signal to stop) and waits for it.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => status.expect("wait for Go peer"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!("Go peer did not stop within 30 s of stdin closing");
            }
        }
    }
}

/// Asserts that every case of a Go-side matrix passed, and prints the count.
///
/// The Go side skips exactly one case, `slow_consumer`, and only on a
/// revision-zero tunnel; so the skipped cases say which revision the two
/// ends negotiated, and it must be `revision`.
pub fn assert_go_outcome(
    what: &str,
    outcome: &Outcome,
    status: std::process::ExitStatus,
    revision: grpctunnel::Revision,
) {
    println!(
        "{what}: {} passed, {} failed, {} skipped (Go peer: {})",
        outcome.passed.len(),
        outcome.failed.len(),
        outcome.skipped.len(),
        outcome.result_line.as_deref().unwrap_or("-")
    );
    assert!(
        outcome.failed.is_empty(),
        "{what}: failures {:#?}",
        outcome.failed
    );
    assert!(!outcome.passed.is_empty(), "{what}: no case ran");
    assert!(status.success(), "{what}: Go peer exit {status}");
    let skipped: Vec<&str> = outcome
        .skipped
        .iter()
        .map(|s| s.split(':').next().unwrap_or_default())
        .collect();
    // Each run of the matrix (one per key, one through the pool) names
    // its cases with a prefix: `key=a/slow_consumer`, `pool/slow_consumer`.
    let revision_zero = !skipped.is_empty()
        && skipped
            .iter()
            .all(|name| name.rsplit('/').next() == Some("slow_consumer"));
    assert!(
        skipped.is_empty() || revision_zero,
        "{what}: the Go side skipped cases it never skips: {skipped:?}"
    );
    assert_eq!(
        revision_zero,
        revision == grpctunnel::Revision::Zero,
        "{what}: the Go side's skipped cases ({skipped:?}) show another revision than {revision}"
    );
}
