//! Pieces of the failover tests: an HA cluster, its members' addresses, and a client that
//! writes through the read-write conninfo and records every acknowledgement.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{cluster_dir, connect, json_lines, pg_configs, pgraftctl, Down};

/// An HA cluster of `n` members; its JSON lines (members, then the read-write conninfo).
pub fn up_ha(d: &str, pgc: &str, n: usize) -> Vec<Value> {
    json_lines(&pgraftctl(&[
        "local",
        "up",
        "--ha",
        "--nodes",
        &n.to_string(),
        "--dir",
        d,
        "--pg-config",
        pgc,
    ]))
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
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(rw: String, first: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&acked));
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
                        Err(_) => client = None,
                    }
                    next += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Writer { stop, acked, thread: Some(thread) }
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

/// A fresh 3-member HA cluster on the first PostgreSQL under test, with a table `t` of
/// `rows` rows written through the read-write conninfo; torn down when dropped.
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
    pub fn up(name: &str, rows: i64) -> HaCluster {
        let pgc = pg_configs()[0].to_string_lossy().into_owned();
        let dir = cluster_dir(name);
        let d = dir.to_string_lossy().into_owned();
        let down = Down(dir);
        let lines = up_ha(&d, &pgc, 3);
        let rw = lines[3]["read_write_conninfo"].as_str().expect("rw").to_string();
        connect(&rw)
            .expect("connect")
            .batch_execute(&format!(
                "CREATE TABLE t (x bigint PRIMARY KEY); INSERT INTO t SELECT generate_series(1, {rows})"
            ))
            .expect("write on the primary");
        HaCluster { d, pgc, lines, rw, _down: down }
    }
}
