//! Child processes of the orchestrator: spawning, reading their stdout line
//! protocol with a bound, talking to their stdin, and stopping them.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// A running child; killed when dropped.
pub struct Child {
    pub name: String,
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Child {
    /// Starts `program args` with piped stdin and stdout (stderr is
    /// inherited, for diagnostics).
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> Result<Self, String> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{name}: cannot start {}: {e}", program.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line; `Ok(None)` once stdout has ended.
    pub fn next_line(&mut self, limit: Duration) -> Result<Option<String>, String> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "{}: no output for {} s",
                self.name,
                limit.as_secs()
            )),
        }
    }

    /// Reads lines until one starts with `prefix `; returns the rest.
    pub fn expect(&mut self, prefix: &str, limit: Duration) -> Result<String, String> {
        loop {
            match self.next_line(limit)? {
                Some(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                    eprintln!("{}: unexpected line {line:?}", self.name);
                }
                None => return Err(format!("{}: exited before {prefix}", self.name)),
            }
        }
    }

    pub fn send_line(&mut self, line: &str) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{}: stdin closed", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("{}: write stdin: {e}", self.name))
    }

    /// Closes stdin (servers and agents stop), waits up to `limit`, then
    /// kills.
    pub fn stop(mut self, limit: Duration) -> Option<ExitStatus> {
        self.stdin = None;
        self.wait(limit)
    }

    /// Waits up to `limit` for the exit, then kills.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return None;
                }
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
