//! Pieces of the failover tests: an HA cluster, its members' addresses, and a client that
//! writes through the read-write conninfo and records every acknowledgement.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{cluster_dir, connect, json_lines, pg_configs, pgraftctl, wait, Down};

/// An HA cluster of `n` members; its JSON lines (members, then the read-write conninfo).
pub fn up_ha(d: &str, pgc: &str, n: usize) -> Vec<Value> {
    up_ha_with(d, pgc, n, &[])
}

/// The same with more `pgraftctl local up` arguments (`--http`).
pub fn up_ha_with(d: &str, pgc: &str, n: usize, more: &[&str]) -> Vec<Value> {
    let n = n.to_string();
    let args = ["local", "up", "--ha", "--nodes", &n, "--dir", d, "--pg-config", pgc];
    json_lines(&pgraftctl(&[&args[..], more].concat()))
}

pub fn conninfo(lines: &[Value], i: usize) -> String {
    lines[i]["conninfo"].as_str().expect("conninfo").to_string()
}

pub fn pg_port(lines: &[Value], i: usize) -> i32 {
    lines[i]["pg_port"].as_i64().expect("pg_port") as i32
}

/// One write of a new value through the cluster's read-write conninfo: the port of the
/// server that acknowledged it.
pub fn write_once(rw: &str) -> Option<i32> {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-1_000_000);
    let value = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut c = connect(rw).ok()?;
    c.query_one("INSERT INTO t VALUES ($1) RETURNING inet_server_port()", &[&value]).ok().map(|r| r.get(0))
}

/// A client writing a new value every 10 ms until stopped; each acknowledged write is
/// recorded with the server that acknowledged it and when.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub acked: Arc<Mutex<Vec<(i64, i32, Instant)>>>,
    /// Writes a server refused as read-only: it was a standby.
    read_only: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(rw: String, first: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let read_only = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, a, r) = (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&read_only));
        let thread = std::thread::spawn(move || {
            let mut next = first;
            let mut client: Option<postgres::Client> = None;
            while !s.load(Ordering::Relaxed) {
                if client.is_none() {
                    client = connect(&rw).ok();
                }
                if let Some(c) = client.as_mut() {
                    match c.query_one("INSERT INTO t VALUES ($1) RETURNING inet_server_port()", &[&next]) {
                        Ok(row) => a.lock().expect("lock").push((next, row.get(0), Instant::now())),
                        Err(e) => {
                            if e.code() == Some(&postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION) {
                                r.fetch_add(1, Ordering::Relaxed);
                            }
                            client = None;
                        }
                    }
                    next += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Writer { stop, acked, read_only, thread: Some(thread) }
    }

    /// Writes refused so far because the server was a standby.
    pub fn read_only_errors(&self) -> usize {
        self.read_only.load(Ordering::Relaxed)
    }

    /// Writes acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().map(|a| a.len()).unwrap_or(0)
    }

    pub fn finish(mut self) -> Vec<(i64, i32, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the writer thread");
        }
        std::mem::take(&mut *self.acked.lock().expect("lock"))
    }
}

/// The values of `t` on a server, if it answers.
pub fn values_on(conninfo: &str) -> Option<std::collections::BTreeSet<i64>> {
    let mut c = connect(conninfo).ok()?;
    Some(c.query("SELECT x FROM t", &[]).ok()?.iter().map(|r| r.get(0)).collect())
}

/// Runs `f` with each PostgreSQL under test (its `pg_config`): the failover tests run on
/// every version `make test` (15 and 17) or `make test-matrix` (16 and 18 too) installs.
pub fn for_each_version(f: impl Fn(&str)) {
    for pgc in pg_configs() {
        f(&pgc.to_string_lossy());
    }
}

/// A fresh 3-member HA cluster on the PostgreSQL of `pgc`, with a table `t` of `rows` rows
/// written through the read-write conninfo; torn down when dropped.
pub struct HaCluster {
    /// The cluster directory, as pgraftctl takes it.
    pub d: String,
    /// The pg_config it runs.
    pub pgc: String,
    /// pgraftctl's JSON lines: the members, then the read-write conninfo.
    pub lines: Vec<Value>,
    /// The read-write conninfo.
    pub rw: String,
    _down: Down,
}

impl HaCluster {
    pub fn up(pgc: &str, name: &str, rows: i64) -> HaCluster {
        HaCluster::up_n(pgc, name, rows, 3)
    }

    /// The same with `n` members.
    pub fn up_n(pgc: &str, name: &str, rows: i64, n: usize) -> HaCluster {
        HaCluster::up_with(pgc, name, rows, n, &[])
    }

    /// The same with more `pgraftctl local up` arguments.
    pub fn up_with(pgc: &str, name: &str, rows: i64, n: usize, more: &[&str]) -> HaCluster {
        let pgc = pgc.to_string();
        let dir = cluster_dir(name);
        let d = dir.to_string_lossy().into_owned();
        let down = Down(dir);
        let lines = up_ha_with(&d, &pgc, n, more);
        let rw = lines[n]["read_write_conninfo"].as_str().expect("rw").to_string();
        connect(&rw)
            .expect("connect")
            .batch_execute(&format!(
                "CREATE TABLE t (x bigint PRIMARY KEY); INSERT INTO t SELECT generate_series(1, {rows})"
            ))
            .expect("write on the primary");
        HaCluster { d, pgc, lines, rw, _down: down }
    }
}

/// Waits for a server other than `old_port` to acknowledge a write through the
/// read-write conninfo; its port and how long it took from `since`.
pub fn wait_new_primary(rw: &str, old_port: i32, since: Instant) -> (i32, Duration) {
    let port = wait("a new primary to acknowledge a write", Duration::from_secs(60), || {
        write_once(rw).filter(|p| *p != old_port)
    });
    (port, since.elapsed())
}

/// Exactly one live server is a primary, its member leads, and every other live server
/// streams from it; returns the primary's index.
pub fn check_one_primary(lines: &[Value], n: usize, dead: &[usize]) -> usize {
    let live: Vec<usize> = (0..n).filter(|i| !dead.contains(i)).collect();
    let roles: Vec<(usize, bool, bool)> = live
        .iter()
        .map(|i| {
            let mut c = connect(&conninfo(lines, *i)).expect("connect to a live member");
            let r = c.query_one("SELECT pg_is_in_recovery(), pgraft_is_leader()", &[]).expect("role");
            (*i, r.get(0), r.get(1))
        })
        .collect();
    let primaries: Vec<&(usize, bool, bool)> = roles.iter().filter(|(_, rec, _)| !rec).collect();
    assert_eq!(primaries.len(), 1, "exactly one primary among the live servers: {roles:?}");
    let (p, _, leads) = *primaries[0];
    assert!(leads, "the primary is the Raft leader's server: {roles:?}");
    let mut c = connect(&conninfo(lines, p)).expect("connect to the primary");
    let want = live.len() - 1;
    wait("every live standby to stream from the new primary", Duration::from_secs(30), || {
        let rows = c
            .query_one("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", &[])
            .ok()?
            .get::<_, i64>(0);
        (rows as usize == want).then_some(())
    });
    p
}

/// Waits until member `i` has replayed every one of `values`.
pub fn wait_rows(lines: &[Value], i: usize, values: &[i64]) {
    wait(&format!("node {} to hold every acknowledged row", i + 1), Duration::from_secs(30), || {
        let have = values_on(&conninfo(lines, i))?;
        values.iter().all(|v| have.contains(v)).then_some(())
    });
}

pub fn postmaster_alive(lines: &[Value], i: usize) -> bool {
    let dir = std::path::Path::new(lines[i]["data_dir"].as_str().expect("data_dir"));
    std::fs::read_to_string(dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Until member `i` streams from the primary `p` as a standby, every write attempted on it
/// fails.
pub fn never_writable_until_rejoined(lines: &[Value], i: usize, p: usize) {
    let name = format!("pgraft_node_{}", i + 1);
    let mut primary = connect(&conninfo(lines, p)).expect("connect to the primary");
    wait(
        &format!("node {} to rejoin as a standby of node {}", i + 1, p + 1),
        Duration::from_secs(120),
        || {
            if let Ok(mut c) = connect(&conninfo(lines, i)) {
                assert!(
                    c.batch_execute("INSERT INTO t VALUES (-2)").is_err(),
                    "the former primary took a write before it rejoined"
                );
            }
            let streaming: i64 = primary
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                &[&name],
            )
            .ok()?
            .get(0);
            if streaming != 1 {
                return None;
            }
            // Consistent, so it takes (read-only) sessions.
            let in_recovery: bool =
                connect(&conninfo(lines, i)).ok()?.query_one("SELECT pg_is_in_recovery()", &[]).ok()?.get(0);
            assert!(in_recovery, "the rejoined server is a standby");
            Some(())
        },
    );
}

/// The rejoin helper's output once it says it is done (its `pg_ctl` returns a moment after
/// the server already streams): running as a standby after a rewind or re-clone, following
/// the new primary without one, or promoted again.
pub fn rejoin_log_when_done(raft_dir: &std::path::Path) -> String {
    wait("the rejoin helper to finish", Duration::from_secs(60), || {
        let log = std::fs::read_to_string(raft_dir.join("rejoin.log")).ok()?;
        log.contains("): done: ").then_some(log)
    })
}

pub fn pgraft_start(d: &str, node: u64) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgraftctl"))
        .args(["local", "start", &node.to_string(), "--dir", d])
        .output()
        .expect("run pgraftctl")
}

/// The PostgreSQL endpoints (`host:port,...`) of the first `n` members.
pub fn endpoints(lines: &[Value], n: usize) -> String {
    (0..n).map(|i| format!("127.0.0.1:{}", pg_port(lines, i))).collect::<Vec<_>>().join(",")
}

/// The arguments of an operator command `pgraftctl CMD` against the members at `eps`
/// (`host:port,...`), answering in JSON.
pub fn ctl_args<'a>(eps: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let common = ["--endpoints", eps, "--user", "postgres", "--dbname", "postgres", "-w", "json"];
    [cmd, &common[..]].concat()
}
