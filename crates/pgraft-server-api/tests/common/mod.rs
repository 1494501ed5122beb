//! Helpers for the server API tests against real servers.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgraft_testkit::{PlainOptions, PlainServer};

/// The PostgreSQL installs to test against: `PGRAFT_TEST_PG_CONFIGS` (space separated),
/// else the Debian PostgreSQL 15.
pub fn pg_configs() -> Vec<PathBuf> {
    let list = std::env::var("PGRAFT_TEST_PG_CONFIGS")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".to_string());
    list.split_whitespace().map(PathBuf::from).collect()
}

/// A fresh directory under /tmp that the server account can enter.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgraft-sapi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    dir
}

/// A started server for one test: stopped when dropped, and its directory removed
/// unless the test failed (the log stays for reading).
pub struct Fixture {
    srv: Option<PlainServer>,
    dir: PathBuf,
}

impl std::ops::Deref for Fixture {
    type Target = PlainServer;
    fn deref(&self) -> &PlainServer {
        self.srv.as_ref().expect("present until drop")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.srv.take());
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A started server for one test: `name` is unique per test and version.
pub fn server(pg_config: &Path, name: &str, opts: &PlainOptions) -> Fixture {
    let major = pgraft_testkit::PgInstall::from_pg_config(pg_config).expect("read pg_config").major;
    let dir = test_dir(&format!("{name}-pg{major}"));
    let srv = PlainServer::init(pg_config, &dir.join("srv"), opts).expect("initdb and start a server");
    Fixture { srv: Some(srv), dir }
}

/// One value of `pg_controldata`'s output, for example "Database block size".
pub fn controldata(srv: &PlainServer, key: &str) -> String {
    let out = Command::new(srv.install.bin("pg_controldata"))
        .arg("-D")
        .arg(&srv.data_dir)
        .env("LC_ALL", "C")
        .output()
        .expect("run pg_controldata");
    assert!(out.status.success(), "pg_controldata: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("{key} missing from pg_controldata output:\n{text}"))
}
