//! The slot keeper: a background worker of its own that holds this server's physical
//! replication slots for the other members (`pgraft_core::ha::plan_slots` says which, and
//! how far a standby's go), through SQL.
//!
//! It is a separate process because it needs a database connection and transactions,
//! which the Raft worker has not and should not wait on: a failing statement ends this
//! process (the postmaster starts it again after [`RESTART`]), never the Raft member. It
//! connects to the `postgres` database only once the failover loop hands it a plan, so a
//! server that is not part of an HA cluster has no extra session.
//!
//! Each second, in one transaction, it
//! - creates the missing slots (`pg_create_physical_replication_slot(name, true)`: WAL is
//!   kept from the server's last checkpoint, or restartpoint on a standby, at once),
//! - drops the `pgraft_node_N` slots of members that are gone, if nothing streams through
//!   them (it never touches a slot of another name),
//! - on a standby, advances each slot to the primary's position for the same member,
//!   never past its own replay and never back,
//!
//! and leaves what it found in shared memory for the failover loop to publish. On a primary
//! it then commits a small transaction, the commit probe of the server's health.

use std::collections::BTreeMap;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::shmem::{self, SlotList, StandbyList, StandbyRow};

/// The keeper's name and type (its process title: `postgres: pgraft slot keeper`).
pub const TITLE: &str = "pgraft slot keeper";
/// The database the keeper's session opens.
pub const DATABASE: &str = "postgres";
/// How often it looks.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long the postmaster waits before starting it again after an error.
pub const RESTART: Duration = Duration::from_secs(5);

/// The keeper's entry point, registered in `_PG_init`.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgraft_slot_keeper_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SIGUSR1 (PostgreSQL's handler for background workers) sets the latch: the failover
    // loop uses it to ask for a pass now.
    let pid = i32::try_from(std::process::id()).unwrap_or(0);
    shmem::update(|s| s.keeper_pid = pid);
    let mut connected = false;
    while BackgroundWorker::wait_latch(Some(INTERVAL)) {
        let plan = shmem::read().slots_wanted;
        if !plan.valid {
            continue;
        }
        if !connected {
            BackgroundWorker::connect_worker_to_spi(Some(DATABASE), None);
            connected = true;
        }
        let wanted = plan.entries();
        let (held, in_recovery) = BackgroundWorker::transaction(|| keep(&wanted));
        let list = SlotList::new(&held, crate::worker::now_ms());
        shmem::update(|s| s.slots_held = list);
        if !in_recovery {
            read_standbys();
            probe_commit();
        }
    }
}

/// One slot as found.
struct Found {
    active: bool,
    restart: u64,
}

/// This server's `pgraft_node_N` slots, whether it is in recovery, and its replay position.
fn look() -> (BTreeMap<u64, Found>, bool, u64) {
    let found = Spi::connect(|c| {
        let mut found = BTreeMap::new();
        let rows = match c.select(
            "SELECT slot_name::text, active, coalesce((restart_lsn - '0/0'::pg_lsn)::bigint, 0) \
               FROM pg_replication_slots WHERE slot_type = 'physical' AND slot_name::text LIKE 'pgraft\\_node\\_%'",
            None,
            &[],
        ) {
            Ok(rows) => rows,
            Err(e) => {
                pgrx::warning!("pgraft: the slot keeper cannot read pg_replication_slots: {e}");
                return found;
            }
        };
        for row in rows {
            let name: Option<String> = row.get(1).ok().flatten();
            if let Some(n) = name.as_deref().and_then(pgraft_core::ha::member_of) {
                let active = row.get::<bool>(2).ok().flatten().unwrap_or(true);
                let restart = row.get::<i64>(3).ok().flatten().unwrap_or(0) as u64;
                found.insert(n, Found { active, restart });
            }
        }
        found
    });
    let (in_recovery, replayed) = Spi::connect(|c| {
        c.select(
            "SELECT pg_is_in_recovery(), coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0)",
            None,
            &[],
        )
        .and_then(|t| t.first().get_two::<bool, i64>())
    })
    .unwrap_or_else(|e| {
        pgrx::warning!("pgraft: the slot keeper cannot read the recovery state: {e}");
        (None, None)
    });
    (found, in_recovery.unwrap_or(false), replayed.unwrap_or(0) as u64)
}

/// Runs one slot function, saying what went wrong if it does. As a read-only SPI call (a
/// `SELECT` of the function): pgrx's read-write calls ask for a transaction id, which a
/// standby cannot assign, and none of these needs one.
fn run(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>], what: &str) -> bool {
    match Spi::connect(|c| c.select(sql, None, args).map(|_| ())) {
        Ok(()) => true,
        Err(e) => {
            pgrx::warning!("pgraft: the slot keeper could not {what}: {e}");
            false
        }
    }
}

/// The members' standbys streaming from this primary as `pg_stat_replication` shows
/// them: which stream, for `synchronous_mode = on` (see `pgraft_core::ha` sync_set) and
/// for switchovers, and each one's positions and states, for the HTTP endpoints.
fn read_standbys() {
    let rows = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            let rows = c.select(
                "SELECT application_name::text, coalesce(state, ''), \
                        coalesce((flush_lsn - '0/0'::pg_lsn)::bigint, 0), \
                        coalesce((replay_lsn - '0/0'::pg_lsn)::bigint, 0), coalesce(sync_state, '') \
                   FROM pg_stat_replication WHERE application_name LIKE 'pgraft\\_node\\_%'",
                None,
                &[],
            )?;
            let mut out = Vec::new();
            for row in rows {
                let name: Option<String> = row.get(1)?;
                let Some(member) = name.as_deref().and_then(pgraft_core::ha::member_of) else { continue };
                let state: String = row.get(2)?.unwrap_or_default();
                let lsn = |v: Option<i64>| v.unwrap_or(0) as u64;
                let sync: String = row.get(5)?.unwrap_or_default();
                out.push(StandbyRow::new(member, lsn(row.get(3)?), lsn(row.get(4)?), &state, &sync));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    });
    match rows {
        Ok(rows) => {
            let now = crate::worker::now_ms();
            shmem::update(|s| s.standbys = StandbyList::new(&rows, now));
        }
        Err(e) => pgrx::warning!("pgraft: the slot keeper cannot read pg_stat_replication: {e}"),
    }
}

/// The commit probe of a primary's health (see `pgraft_core::ha::judge_health`): a
/// transaction that gets a transaction id commits at `synchronous_commit = local`, so its
/// commit record is written and flushed to the local disk but no standby is waited for.
/// Its start is in shared memory first, so a commit that hangs (stuck I/O, a full disk)
/// shows as one waiting.
fn probe_commit() {
    let started = crate::worker::now_ms();
    shmem::update(|s| s.commit_pending_since_ms = started);
    let done = BackgroundWorker::transaction(|| {
        Spi::run("SET LOCAL synchronous_commit = local")
            .and_then(|()| Spi::run("SELECT pg_current_xact_id()"))
            .map_err(|e| pgrx::warning!("pgraft: the health probe's commit failed: {e}"))
            .is_ok()
    });
    shmem::update(|s| {
        s.commit_pending_since_ms = 0;
        if done {
            s.commit_ok_ms = crate::worker::now_ms();
        }
    });
}

/// Brings the slots in line with `wanted` (member -> the primary's position for it);
/// returns what is held afterwards (member -> restart LSN, or [`oldest_kept`] if later),
/// and whether the server is in recovery.
fn keep(wanted: &BTreeMap<u64, u64>) -> (BTreeMap<u64, u64>, bool) {
    let (found, in_recovery, replayed) = look();
    for n in wanted.keys().filter(|n| !found.contains_key(n)) {
        let name = pgraft_core::ha::application_name(*n);
        let sql = "SELECT pg_create_physical_replication_slot($1, true)";
        if run(sql, &[name.as_str().into()], &format!("create the slot {name}")) {
            pgrx::log!("pgraft: created the replication slot {name} for node {n}");
        }
    }
    for (n, f) in found.iter().filter(|(n, f)| !wanted.contains_key(n) && !f.active) {
        let name = pgraft_core::ha::application_name(*n);
        if run(
            "SELECT pg_drop_replication_slot($1)",
            &[name.as_str().into()],
            &format!("drop the slot {name}"),
        ) {
            pgrx::log!("pgraft: dropped the replication slot {name} (at {:X}/{:X}): node {n} is no longer a voting member", f.restart >> 32, f.restart & 0xffff_ffff);
        }
    }
    if in_recovery {
        for (n, target) in wanted {
            // Never past this standby's replay (PostgreSQL refuses), never back.
            let to = (*target).min(replayed);
            if found.get(n).is_some_and(|f| !f.active && f.restart != 0 && to > f.restart) {
                let name = pgraft_core::ha::application_name(*n);
                let sql = "SELECT pg_replication_slot_advance($1, '0/0'::pg_lsn + $2::numeric)";
                run(sql, &[name.as_str().into(), (to as i64).into()], &format!("advance the slot {name}"));
            }
        }
    }
    let kept = oldest_kept();
    (look().0.into_iter().map(|(n, f)| (n, f.restart.max(kept))).collect(), in_recovery)
}

/// The oldest WAL position this server can still send: the start of the segment after
/// the last one a checkpoint or restartpoint removed since the server started (0 while
/// none was). What a slot "holds" for its member is published as the later of its
/// restart LSN and this. A standby that starts streaming through a slot from before its
/// restart LSN moves the slot back to where it asked (PostgreSQL takes the standby's
/// flush position as the slot's new restart LSN before it finds the WAL gone), and with
/// the bare restart LSN on record `pgraft_core::ha::wal_gone` would no longer see that
/// the standby cannot be served; removed WAL never comes back, so this bound holds.
fn oldest_kept() -> u64 {
    // SAFETY: reads the last removed segment under XLogCtl's spinlock, as
    // pg_replication_slots does; wal_segment_size is set at start and read-only after.
    let (removed, size) = unsafe { (pg_sys::XLogGetLastRemovedSegno(), pg_sys::wal_segment_size) };
    match (removed, u64::try_from(size)) {
        (0, _) | (_, Err(_)) => 0,
        (removed, Ok(size)) => (removed + 1).saturating_mul(size),
    }
}
