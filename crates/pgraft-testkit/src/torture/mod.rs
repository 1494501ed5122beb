//! The torture test: real clusters, real faults, every client history checked.
//!
//! ```text
//!  clients (2 per member, libpq) ──put/get/delete/cas/append──▶ members 1..N
//!        │ invoke/complete times, results, unknown outcomes          ▲
//!        ▼                                                           │ kill -9, kill worker,
//!     History ──┐                                   Nemesis ─────────┘ cuts, SIGSTOP, transfer,
//!  LeaderMonitor┤  (term → leader, every 150 ms)     FaultSchedule(seed)   remove + add back
//!               ▼
//!   heal all ─▶ converge (same hash, same applied index) ─▶ final reads, applied logs
//!               ▼
//!   checks: linearizable per key · no acknowledged write lost · same state · same log ·
//!           appends present · one leader per term · writes accepted after every heal
//!               ▼
//!   Report (report.json, history.jsonl; kept with the logs when the run fails, with the
//!           command that replays its schedule)
//! ```
//!
//! A seed fixes the fault schedule and every client's choices; the timing of real
//! processes does not replay, so a replay reproduces the faults, not the interleaving.

mod checks;
mod client;
mod db_checks;
mod db_history;
mod db_run;
mod db_workload;
mod fault_schedule;
mod history;
mod leader_monitor;
mod list_append;
mod nemesis;
mod report;
mod seeded_rng;
mod session;
mod timelines;
mod torture_run;

pub use checks::{
    appends_present, linearizable, lost_writes, one_leader_per_term, same_log, same_state, Anomaly,
    FinalValues, LogRecord, APPEND_SLACK_MS,
};
pub use client::Workload;
pub use db_history::{Micro, ServerId, Txn, TxnCall, TxnOutcome};
pub use db_run::set_synchronous_mode;
pub use fault_schedule::{FaultKind, FaultSchedule, PlannedFault};
pub use history::{History, HistoryOp, OpCall, OpResult};
pub use leader_monitor::{LeaderMonitor, LeaderSightings, Sighting};
pub use nemesis::{FaultRecord, Nemesis};
pub use report::{CheckResult, Gap, OpCounts, Report};
pub use seeded_rng::SeededRng;
pub use session::{QueryError, Session};
pub use timelines::Timelines;
pub use torture_run::{run, TortureOptions};
