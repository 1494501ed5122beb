//! PostgreSQL failover driven by the Raft leader: the replicated HA state
//! ([`HaState`]) and the rules each member follows about its own server ([`plan`]).
//! The extension's worker observes the server and carries the plan out; nothing here
//! touches PostgreSQL.

mod candidate;
mod ha_state;
mod health;
mod planner;
mod slots;
mod sync_set;
mod timeline;

pub use ha_state::{
    DetachReport, HaCommand, HaRefusal, HaState, HaStateV1, HaStateV5, Lsn, PrimaryRecord, ServerRecord,
    SwitchoverRecord, SyncRecord, SyncRecordV1,
};
pub use health::{judge as judge_health, Probe};
pub use planner::{
    application_name, detach_quorum, fencing_bound_ms, member_of, plan, sync_count, sync_standby_names, Gate,
    InUse, Observation, Plan, RaftView, Receiving, ServerView, SyncMode, FAILOVER_VOTERS, FENCE_MARGIN_MS,
    SWITCHOVER_TIMEOUT_MS,
};
pub use slots::{plan_slots, slot_on, wal_gone, SlotPlan, PUBLISH_PAUSE_MS, PUBLISH_STEP};
pub use sync_set::{recorded, reports_needed, SyncConfig, RAISE_AFTER_MS};
pub use timeline::{divergence, history_file_name, lsn_text, parse_history, parse_lsn, Switch};
