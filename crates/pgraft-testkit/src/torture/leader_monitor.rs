//! Watches who leads in which term, on every member, for the "at most one leader per
//! term" check (Raft's Election Safety, section 5.2 of the paper).
//!
//! Each member is asked every 150 ms, in one read of its shared memory
//! (`pgraft_shared_state()`: role, term and known leader together, so a term change cannot
//! fall between two function calls), which leader it knows of in its current term.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::client::Workload;
use super::session::Session;

/// The first sighting of a leader in a term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// The member that reported it.
    pub observer: u64,
    /// When, in microseconds since the run started.
    pub at_us: u64,
}

/// term → leader id → its first sighting.
pub type LeaderSightings = BTreeMap<u64, BTreeMap<u64, Sighting>>;

/// The shared record of sightings.
#[derive(Debug, Clone, Default)]
pub struct LeaderMonitor {
    seen: Arc<Mutex<LeaderSightings>>,
}

impl LeaderMonitor {
    /// Records that `observer` reported `leader` in `term` (leader 0 means none: ignored).
    pub fn record(&self, term: u64, leader: u64, observer: u64, at_us: u64) {
        if leader == 0 {
            return;
        }
        self.lock().entry(term).or_default().entry(leader).or_insert(Sighting { observer, at_us });
    }

    /// Everything seen so far.
    pub fn sightings(&self) -> LeaderSightings {
        self.lock().clone()
    }

    /// Starts one watcher per member on `rt`, until `stop` is set.
    pub fn spawn(
        &self,
        rt: &tokio::runtime::Runtime,
        workload: &Arc<Workload>,
        stop: &Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        workload
            .members
            .iter()
            .cloned()
            .map(|(node, conninfo)| {
                let (me, w, stop) = (self.clone(), Arc::clone(workload), Arc::clone(stop));
                rt.spawn(async move {
                    let mut session: Option<Session> = None;
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        let Some(s) = session.as_ref() else {
                            session = Session::connect(
                                &conninfo,
                                Duration::from_secs(2),
                                Some(Duration::from_secs(2)),
                            )
                            .await
                            .ok();
                            continue;
                        };
                        let q = "SELECT is_leader, term, leader_id FROM pgraft_shared_state()";
                        match s.one(q, &[], Duration::from_secs(2)).await {
                            Ok(row) => {
                                let (is_leader, term, leader): (bool, i64, i64) =
                                    (row.get(0), row.get(1), row.get(2));
                                let leader = if is_leader { node } else { leader.max(0) as u64 };
                                me.record(term.max(0) as u64, leader, node, w.now_us());
                            }
                            Err(e) if e.session_lost() => session = None,
                            Err(_) => {}
                        }
                    }
                })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaderSightings> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}
