//! A `pgraft-node` process driven over its standard input, for the tests that kill,
//! restart and upgrade members.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A running member process and the lines it answers.
pub struct Proc {
    pub child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Proc {
    /// Starts `binary` (a `pgraft-node`) as member `id` of `cluster`, with a 300 ms
    /// election timeout.
    pub fn spawn(binary: &Path, cluster: &str, id: u64, dir: &Path, members: &str, port: u16) -> Proc {
        let mut child = Command::new(binary)
            .args(["--id", &id.to_string(), "--cluster", cluster, "--members", members])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--election-ms", "300", "--heartbeat-ms", "30"])
            .arg("--dir")
            .arg(dir)
            // Segments' synced lengths, for the crash test's power cuts.
            .env("PGRAFT_TEST_SYNC_TRAIL", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pgraft-node");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, stdin, lines }
    }

    /// One request, one answer; `None` when the process died or did not answer in time.
    pub fn ask(&mut self, line: &str) -> Option<String> {
        writeln!(self.stdin, "{line}").ok()?;
        self.stdin.flush().ok()?;
        self.lines.recv_timeout(Duration::from_secs(8)).ok()
    }

    /// (term, vote) as the member's log holds them durably, from a status answer (term
    /// and vote as they stand from a release that does not tell them apart).
    pub fn term_vote(&mut self) -> Option<(u64, u64)> {
        let s = self.ask("status")?;
        let json: serde_json::Value = serde_json::from_str(s.strip_prefix("status ")?).ok()?;
        match (json["durable_term"].as_u64(), json["durable_vote"].as_u64()) {
            (Some(t), Some(v)) => Some((t, v)),
            _ => Some((json["term"].as_u64()?, json["vote"].as_u64()?)),
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Calls `f` every 20 ms until it gives a value; fails the test naming `what` after
/// `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
