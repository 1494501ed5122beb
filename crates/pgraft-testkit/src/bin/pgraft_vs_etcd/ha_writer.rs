//! The application of the failover comparison: a small INSERT every 10 ms through libpq,
//! each acknowledged row recorded with the server that took it.
//!
//! The main writer connects as an application of an HA cluster does, with a multi-host
//! conninfo and `target_session_attrs=read-write`, and reconnects after any error. A
//! pinned writer talks to one server only (the primary before the fault): it shows whether
//! that server still acknowledged commits once another one did. Every statement has a
//! client-side deadline ([`DEADLINE`]): `statement_timeout` would cancel a commit that waits
//! for a synchronous standby, and PostgreSQL answers such a cancel with success for a commit
//! no standby has. A statement past its deadline has an unknown outcome and is not counted
//! as acknowledged; its connection is dropped.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pgraft_testkit::torture::Session;

/// Every statement's client-side deadline, connecting included.
pub const DEADLINE: Duration = Duration::from_secs(1);
/// One INSERT every this often.
pub const EVERY: Duration = Duration::from_millis(10);

/// One acknowledged row.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub id: i64,
    /// `inet_server_port()` of the server that committed it.
    pub port: u16,
    pub at: Instant,
}

/// A writer thread; stopped and joined by [`Writer::finish`].
pub struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    thread: Option<JoinHandle<()>>,
}

/// The table both systems' clients write.
pub const TABLE_SQL: &str =
    "CREATE TABLE IF NOT EXISTS ha_bench (id bigint PRIMARY KEY, at timestamptz DEFAULT now())";

impl Writer {
    /// Starts writing through `conninfo`; row ids come from `ids`, shared by all writers.
    pub fn start(conninfo: String, ids: Arc<AtomicI64>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("a runtime")?;
        let (s, a) = (Arc::clone(&stop), Arc::clone(&acks));
        let thread = std::thread::spawn(move || rt.block_on(write_loop(conninfo, ids, s, a)));
        Ok(Self { stop, acks, thread: Some(thread) })
    }

    /// How many rows were acknowledged so far.
    pub fn count(&self) -> usize {
        self.acks.lock().expect("acks lock").len()
    }

    /// The acknowledged rows so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("acks lock").clone()
    }

    /// Stops the writer and returns every acknowledged row.
    pub fn finish(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.acks.lock().expect("acks lock"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn write_loop(
    conninfo: String,
    ids: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut session: Option<Session> = None;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if session.is_none() {
            session = Session::connect(&conninfo, DEADLINE, None).await.ok();
        }
        let Some(s) = &session else { continue };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let sql = "INSERT INTO ha_bench (id) VALUES ($1) RETURNING inet_server_port()";
        match s.one(sql, &[&id], DEADLINE).await {
            Ok(row) => {
                let port: i32 = row.get(0);
                let ack = Ack { id, port: u16::try_from(port).unwrap_or(0), at: Instant::now() };
                acks.lock().expect("acks lock").push(ack);
            }
            Err(_) => session = None,
        }
    }
}
