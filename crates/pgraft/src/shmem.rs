//! What the worker publishes in shared memory for cheap reads from any session:
//! `pgraft_is_leader()`, `pgraft_get_term()`, `pgraft_get_leader()`,
//! `pgraft_get_worker_state()` read here without talking to the worker.

use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

/// The worker's life cycle, as `pgraft_get_worker_state()` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum WorkerState {
    /// Not started yet, or exited.
    #[default]
    Stopped = 0,
    /// Reading its settings and opening its storage.
    Initializing = 1,
    /// The Raft member runs.
    Running = 2,
    /// The member failed (storage, configuration); the reason is in the server log.
    Error = 3,
}

impl WorkerState {
    /// The name shown in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Stopped => "stopped",
            WorkerState::Initializing => "initializing",
            WorkerState::Running => "running",
            WorkerState::Error => "error",
        }
    }
}

/// Small, fixed-size facts the worker keeps current.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerShared {
    /// Life cycle.
    pub state: WorkerState,
    /// The worker's pid (0: none).
    pub pid: i32,
    /// Whether this member leads.
    pub is_leader: bool,
    /// Current term.
    pub term: u64,
    /// The leader known here (0: none).
    pub leader_id: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Voters in the configuration.
    pub voters: u32,
    /// Whether a majority is reachable.
    pub quorum: bool,
    /// When the worker last published, ms since the Unix epoch.
    pub updated_ms: i64,
    /// Why the worker is in [`WorkerState::Error`] (empty otherwise).
    pub error: ErrorText,
    /// Whether clients may open sessions on this server (failover's local fence; see
    /// `crate::ha::gate`).
    pub gate: GateState,
    /// The gate has been open since the server started: client sessions may exist (kept
    /// across restarts of the worker, reset when the postmaster re-creates shared memory).
    pub was_open: bool,
    /// What the failover control loop waits for, if anything (`pgraft_ha_status().note`).
    pub ha_note: ErrorText,
    /// The slots the slot keeper should hold (written by the failover loop).
    pub slots_wanted: SlotList,
    /// The slots the keeper found, with their restart LSNs (written by the keeper).
    pub slots_held: SlotList,
    /// The keeper's commit probe on a primary: the last commit that was written, and the
    /// start of the one waiting, ms since the Unix epoch (0: none).
    pub commit_ok_ms: i64,
    pub commit_pending_since_ms: i64,
    /// On a primary: each member's standby as `pg_stat_replication` showed it to the
    /// keeper (for the failover loop: who streams, for `synchronous_mode = on` and
    /// switchovers; for `/cluster` and `/metrics`).
    pub standbys: StandbyList,
    /// The slot keeper's process id, once it runs (0: not yet): the failover loop wakes it
    /// with SIGUSR1 when a switchover needs a reading of the standbys taken after it was
    /// asked for.
    pub keeper_pid: i32,
}

/// One standby as the primary's `pg_stat_replication` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StandbyRow {
    /// Its member.
    pub member: u64,
    /// Flushed there.
    pub flushed: u64,
    /// Replayed there.
    pub replayed: u64,
    state: u8,
    sync: u8,
}

const SENDER_STATES: [&str; 6] = ["unknown", "startup", "catchup", "streaming", "backup", "stopping"];
const SYNC_STATES: [&str; 5] = ["unknown", "async", "potential", "sync", "quorum"];

fn code(names: &[&str], name: &str) -> u8 {
    names.iter().position(|n| *n == name).unwrap_or(0) as u8
}

impl StandbyRow {
    /// A row from `pg_stat_replication`'s `state` and `sync_state` text.
    pub fn new(member: u64, flushed: u64, replayed: u64, state: &str, sync: &str) -> Self {
        StandbyRow {
            member,
            flushed,
            replayed,
            state: code(&SENDER_STATES, state),
            sync: code(&SYNC_STATES, sync),
        }
    }

    /// The WAL sender's state.
    pub fn state(&self) -> &'static str {
        SENDER_STATES[usize::from(self.state).min(SENDER_STATES.len() - 1)]
    }

    /// The synchronous state.
    pub fn sync_state(&self) -> &'static str {
        SYNC_STATES[usize::from(self.sync).min(SYNC_STATES.len() - 1)]
    }
}

/// [`StandbyRow`]s in fixed-size shared memory, with when they were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StandbyList {
    /// When the keeper read them, ms since the Unix epoch (0: never).
    pub written_ms: i64,
    len: u8,
    rows: [StandbyRow; MAX_SLOTS],
}

impl StandbyList {
    /// The list of `rows`, cut at [`MAX_SLOTS`].
    pub fn new(rows: &[StandbyRow], written_ms: i64) -> Self {
        let mut out = StandbyList { written_ms, ..Default::default() };
        for (i, r) in rows.iter().take(MAX_SLOTS).enumerate() {
            out.rows[i] = *r;
            out.len = (i + 1) as u8;
        }
        out
    }

    /// The rows.
    pub fn rows(&self) -> &[StandbyRow] {
        &self.rows[..usize::from(self.len).min(MAX_SLOTS)]
    }
}

/// The most members a slot list covers.
pub const MAX_SLOTS: usize = 32;

/// Replication slots by member, in fixed-size shared memory: for the keeper's plan, the
/// primary's restart LSN each standby slot is advanced to (0: none); for what it found,
/// each slot's restart LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotList {
    /// Whether the list says anything: the plan is in force, or the keeper looked.
    pub valid: bool,
    /// When it was written, ms since the Unix epoch.
    pub written_ms: i64,
    len: u8,
    entries: [(u64, u64); MAX_SLOTS],
}

impl SlotList {
    /// A valid list of (member, LSN), cut at [`MAX_SLOTS`].
    pub fn new(entries: &std::collections::BTreeMap<u64, u64>, written_ms: i64) -> Self {
        let mut out = SlotList { valid: true, written_ms, ..Default::default() };
        for (i, (n, lsn)) in entries.iter().take(MAX_SLOTS).enumerate() {
            out.entries[i] = (*n, *lsn);
            out.len = (i + 1) as u8;
        }
        out
    }

    /// The entries.
    pub fn entries(&self) -> std::collections::BTreeMap<u64, u64> {
        self.entries[..usize::from(self.len).min(MAX_SLOTS)].iter().copied().collect()
    }
}

/// [`pgraft_core::ha::Gate`] in shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum GateState {
    /// The worker has not decided yet (after a start or a crash).
    #[default]
    Unknown = 0,
    /// Clients may connect.
    Open = 1,
    /// This server must not take writes.
    Fenced = 2,
}

impl From<pgraft_core::ha::Gate> for GateState {
    fn from(g: pgraft_core::ha::Gate) -> Self {
        match g {
            pgraft_core::ha::Gate::Unknown => GateState::Unknown,
            pgraft_core::ha::Gate::Open => GateState::Open,
            pgraft_core::ha::Gate::Fenced => GateState::Fenced,
        }
    }
}

/// A short reason in fixed-size shared memory (cut at a character boundary).
#[derive(Clone, Copy)]
pub struct ErrorText {
    len: u16,
    bytes: [u8; 480],
}

impl Default for ErrorText {
    fn default() -> Self {
        Self { len: 0, bytes: [0; 480] }
    }
}

impl std::fmt::Debug for ErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl ErrorText {
    /// Holds as much of `text` as fits.
    pub fn new(text: &str) -> Self {
        let mut end = text.len().min(480);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; 480];
        bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        Self { len: end as u16, bytes }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len).min(480)]).unwrap_or("")
    }
}

// SAFETY: plain data, no pointers; the lock serialises access.
unsafe impl PGRXSharedMemory for WorkerShared {}

/// The shared facts, behind a lightweight lock.
// SAFETY: the name is unique to this extension.
pub static SHARED: PgLwLock<WorkerShared> = unsafe { PgLwLock::new(c"pgraft_worker_shared") };

/// KV reads served by this member's sessions (reads do not go through the log, so each
/// member counts its own).
// SAFETY: the name is unique to this extension.
pub static GETS: pgrx::atomics::PgAtomic<std::sync::atomic::AtomicU64> =
    unsafe { pgrx::atomics::PgAtomic::new(c"pgraft_kv_gets") };

/// Counts one KV read.
pub fn count_get() {
    GETS.get().fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// KV reads served here since the server started.
pub fn gets() -> u64 {
    GETS.get().load(std::sync::atomic::Ordering::Relaxed)
}

/// How many `pgraft_kv_watch()` calls may wait at once on one server.
pub const WATCH_SLOTS: usize = 64;
/// Bytes of a watch's prefix kept for `pgraft.watch_status`.
pub const WATCH_PREFIX_BYTES: usize = 64;

/// One backend waiting in `pgraft_kv_watch()`.
#[derive(Debug, Clone, Copy)]
pub struct WatchSlot {
    /// The backend's pid; 0 for a free slot.
    pub pid: i32,
    /// Waiting for a change (false while it reads and returns them).
    pub waiting: bool,
    /// The revision it watches after.
    pub since: u64,
    /// When it started, ms since the Unix epoch.
    pub started_ms: i64,
    /// How many times it has asked this member for changes.
    pub polls: u64,
    /// The prefix watched (the first bytes of it).
    pub prefix: [u8; WATCH_PREFIX_BYTES],
    /// Its length in `prefix`.
    pub prefix_len: u8,
}

impl Default for WatchSlot {
    fn default() -> Self {
        Self {
            pid: 0,
            waiting: false,
            since: 0,
            started_ms: 0,
            polls: 0,
            prefix: [0; WATCH_PREFIX_BYTES],
            prefix_len: 0,
        }
    }
}

impl WatchSlot {
    /// The prefix watched (cut at [`WATCH_PREFIX_BYTES`], on a character boundary).
    pub fn prefix(&self) -> String {
        String::from_utf8_lossy(&self.prefix[..usize::from(self.prefix_len)]).into_owned()
    }
}

/// The live watches of this server.
#[derive(Debug, Clone, Copy)]
pub struct WatchTable {
    /// The slots.
    pub slots: [WatchSlot; WATCH_SLOTS],
}

impl Default for WatchTable {
    fn default() -> Self {
        Self { slots: [WatchSlot::default(); WATCH_SLOTS] }
    }
}

// SAFETY: plain data, no pointers; the lock serialises access.
unsafe impl PGRXSharedMemory for WatchTable {}

/// The live watches, behind their own lock.
// SAFETY: the name is unique to this extension.
pub static WATCHES: PgLwLock<WatchTable> = unsafe { PgLwLock::new(c"pgraft_watches") };

/// Requests the shared memory; called from `_PG_init`.
// pgrx's macro tests features for PostgreSQL 13 and 14, which this crate does not have.
#[allow(unexpected_cfgs)]
pub fn init() {
    pgrx::pg_shmem_init!(SHARED);
    pgrx::pg_shmem_init!(GETS);
    pgrx::pg_shmem_init!(WATCHES);
}

/// A copy of the shared facts.
pub fn read() -> WorkerShared {
    *SHARED.share()
}

/// Updates the shared facts.
pub fn update(f: impl FnOnce(&mut WorkerShared)) {
    f(&mut SHARED.exclusive());
}
