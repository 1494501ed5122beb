//! Helpers for tests that drive `pgraftctl` against real servers.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub mod ha;
pub mod http;

/// The PostgreSQL installs to test against: `PGRAFT_TEST_PG_CONFIGS` (space separated, set
/// by `make test`), else the Debian PostgreSQL 15.
pub fn pg_configs() -> Vec<PathBuf> {
    let list = std::env::var("PGRAFT_TEST_PG_CONFIGS")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".to_string());
    list.split_whitespace().map(PathBuf::from).collect()
}

/// A fresh cluster directory under /tmp that an unprivileged server account can enter.
pub fn cluster_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgraft-t-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the cluster directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    dir
}

/// Runs `pgraftctl ARGS`, failing the test with its stderr when it fails.
pub fn pgraftctl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pgraftctl")).args(args).output().expect("run pgraftctl");
    assert!(
        out.status.success(),
        "pgraftctl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("pgraftctl prints UTF-8")
}

/// Runs `pgraftctl ARGS` expecting failure; returns its stderr.
pub fn pgraftctl_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pgraftctl")).args(args).output().expect("run pgraftctl");
    assert!(!out.status.success(), "pgraftctl {} succeeded unexpectedly", args.join(" "));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON lines of a pgraftctl answer.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A superuser connection by conninfo.
pub fn connect(conninfo: &str) -> Result<postgres::Client, postgres::Error> {
    postgres::Client::connect(&format!("{conninfo} connect_timeout=5"), postgres::NoTls)
}

/// Dials `to` from the source address `from`, the way a member dials its peers.
pub fn dial_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let ip: std::net::IpAddr = from.parse().expect("an IP address");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(ip, 0).into())?;
    sock.connect_timeout(&to.into(), std::time::Duration::from_secs(2))?;
    Ok(sock.into())
}

/// Tears a cluster down when a test ends, even by panic.
pub struct Down(pub PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let dir = self.0.to_string_lossy().into_owned();
        let _ = Command::new(env!("CARGO_BIN_EXE_pgraftctl")).args(["local", "down", "--dir", &dir]).output();
        // A passing test's cluster is gone (hundreds of MB each); a failing one's logs
        // are kept for diagnosis (scripts/test.sh removes them after a day).
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Whether any process still works in `dir`.
pub fn processes_left(dir: &Path) -> Vec<i32> {
    pgraft_testkit::processes_in(dir)
}

/// Polls `f` until it gives a value, failing the test after `timeout`.
pub fn wait<T>(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < end, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
