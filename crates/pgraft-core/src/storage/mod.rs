//! Durable Raft state: the log, the hard state, the conf state and snapshots.
//!
//! raft-rs reads through its [`raft::Storage`] trait; [`LogStore`] adds the writes the
//! member makes from each `Ready`. Two implementations pass one conformance suite
//! ([`conformance`]): [`MemStore`] for unit tests and the simulation, and [`SegmentStore`],
//! the durable one, an append-only segmented log like etcd's WAL. [`RedbStore`], the
//! durable store of pgraft 1.0 (on redb), is still read: a member that finds one carries
//! it over to the log at start.
//!
//! Every write method is **durable before it returns** (but a [`LogStore::persist`] its
//! caller says needs no sync), except [`LogStore::persist_async`], whose writes are
//! durable once the store reports their number: the member sends messages that depend on
//! a write, and acknowledges clients, only afterwards.

mod entry_sizes;
mod identity;
mod log_index;
pub(crate) mod log_segment;
mod log_writer;
mod mem_store;
mod pending_hard_state;
mod read_stats;
pub(crate) mod redb_store;
mod segment_store;
mod snapshot_file;
mod term_runs;

pub mod conformance;

pub use identity::Identity;
pub use mem_store::MemStore;
pub use read_stats::ReadStats;
pub use redb_store::{RedbStore, FILE_NAME};
pub use segment_store::{SegmentStore, LOG_DIR, SEGMENT_BYTES};
pub use snapshot_file::{SnapshotImage, SnapshotWriter};

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

/// Errors of a store. All of them are fatal for the member: a store that cannot write
/// cannot promise durability, so the member stops rather than guess.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The underlying database failed.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// A record failed its checksum or could not be decoded.
    #[error("storage is corrupt: {0}")]
    Corrupt(String),
    /// The storage belongs to another cluster or member.
    #[error("{0}")]
    IdentityMismatch(String),
    /// A write that would break the log's invariants (a hole, a rewrite below commit).
    #[error("invalid storage write: {0}")]
    Invalid(String),
}

/// Results of stores.
pub type Result<T> = std::result::Result<T, StorageError>;

/// Called on the store's I/O thread when a write ended (see [`LogStore::set_waker`]):
/// `Some(n)`, every `Ready` up to `n` is durable; `None`, the write failed (the next
/// `poll_durable` says why).
pub type Waker = std::sync::Arc<dyn Fn(Option<u64>) + Send + Sync>;

/// The write side of a member's storage.
///
/// Its [`raft::Storage::snapshot`] answers `SnapshotTemporarilyUnavailable` when the
/// stored snapshot is older than `request_index` or does not name the member `to` (see
/// [`snapshot_usable_for`]); the member then takes a fresh snapshot.
///
/// Invariants every implementation keeps (checked by [`conformance`]):
/// - the log has no holes: entries are `first_index()..=last_index()`;
/// - `term(first_index() - 1)` answers the term of the last compacted entry (or snapshot);
/// - every method is durable before it returns (an unsynced `persist` with the next synced
///   write; a `persist_async` once its number is reported), and a restart from the same
///   place sees exactly what was made durable.
pub trait LogStore: raft::Storage {
    /// Appends `entries` and records the hard state `hs` (term, vote, commit) in one
    /// write: one sync for everything a `Ready` persists (group commit). An entry at an
    /// index that exists already replaces it and every later one (a new leader overwrote
    /// an uncommitted suffix); the first entry's index must be at most `last_index() + 1`.
    ///
    /// With `sync` the write is durable before return. Without it (raft-rs's
    /// `Ready::must_sync()` is false: only the commit index moved, which Raft may forget
    /// and learn again), it becomes durable with the next synced write, and a crash
    /// before that loses it; readers of this store see it at once either way.
    fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()>;

    /// [`LogStore::persist`] without waiting: the write of raft-rs's `Ready` number
    /// `number` (increasing; 0 for a write outside a `Ready`) is started, readers of this
    /// store see it at once, and it is durable once [`LogStore::poll_durable`] or
    /// [`LogStore::flush`] has reported `number` or a higher one. Writes become durable in
    /// the order they were started, so a number reported means every write before it is
    /// durable too. Returns a number that is durable already (the default, which writes
    /// synchronously: `number` itself).
    ///
    /// A durable store writes what arrives while a write is out as one write, one sync,
    /// when that one is done (group commit), and its Raft thread goes on meanwhile.
    fn persist_async(
        &mut self,
        number: u64,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<Option<u64>> {
        self.persist(entries, hs, sync)?;
        Ok(Some(number))
    }

    /// The highest number of a [`LogStore::persist_async`] write that became durable since
    /// the last report, if any; an error if writing failed (fatal).
    fn poll_durable(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Waits until every write started is durable; reports like
    /// [`LogStore::poll_durable`]. Every other write method does this first, so that its
    /// own write follows them.
    fn flush(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Tells the store whom to wake (from its I/O thread) when a write became durable: the
    /// Raft thread, which then calls [`LogStore::poll_durable`].
    fn set_waker(&mut self, _waker: Waker) {}

    /// Appends `entries`, durable before return (see [`LogStore::persist`]).
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        self.persist(entries, None, true)
    }

    /// Records term, vote and commit, durable before return.
    fn set_hard_state(&mut self, hs: &HardState) -> Result<()> {
        self.persist(&[], Some(hs), true)
    }

    /// Records the membership after a configuration change was applied. Durable before
    /// return.
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<()>;

    /// Installs a snapshot received from the leader: the log is replaced by the snapshot's
    /// position, the conf state by its own. Durable before return. Idempotent.
    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()>;

    /// A writer that makes snapshot images durable where this store keeps them; it is
    /// `Send`, so images are written away from the Raft thread.
    fn snapshot_writer(&self) -> SnapshotWriter;

    /// Records a snapshot of the local state machine, whose image the store's writer made
    /// (its index was applied here, so committed), then discards the log before its
    /// index... up to `keep` entries before it stay, so slightly lagging followers still
    /// catch up from the log. An image below the current snapshot's index (a newer one
    /// arrived from the leader while it was being written) or at or below the compacted
    /// index is discarded; one at the current snapshot's index replaces it (a compaction
    /// that keeps fewer entries). A commit index written without a sync is made durable
    /// with it (the snapshot's index is committed).
    fn create_snapshot(&mut self, image: SnapshotImage, keep: u64) -> Result<()>;

    /// Index, term and membership of the current snapshot (index 0: none).
    fn snapshot_metadata(&self) -> SnapshotMetadata;

    /// The hard state as last recorded.
    fn hard_state(&self) -> HardState;

    /// The member identity recorded at creation, if any.
    fn identity(&self) -> Option<Identity>;

    /// Records the identity on first start; on later starts checks it matches.
    fn ensure_identity(&mut self, id: &Identity) -> Result<()>;

    /// Bytes used on disk (0 for memory).
    fn disk_usage(&self) -> u64;

    /// The encoded bytes of the log entries in `(after, upto]` (0 for an empty range),
    /// without reading them; `None` if part of the range is not in the log.
    fn entry_bytes(&self, after: u64, upto: u64) -> Option<u64>;
}

/// Writes `data` as the image of the snapshot at `index`/`term` with membership `cs` and
/// records it: [`LogStore::create_snapshot`] in one call, on the calling thread.
pub fn create_snapshot_now<S: LogStore>(
    store: &mut S,
    index: u64,
    cs: &ConfState,
    data: Vec<u8>,
    keep: u64,
) -> Result<()> {
    let term = store.term(index).map_err(|e| StorageError::Invalid(format!("snapshot at {index}: {e}")))?;
    let metadata = SnapshotMetadata { index, term, conf_state: Some(cs.clone()) };
    let image = store.snapshot_writer().write(metadata, &data)?;
    store.create_snapshot(image, keep)
}

/// A snapshot of the state machine image `data` at `index`/`term` with membership `cs`.
pub fn snapshot_of(index: u64, term: u64, cs: &ConfState, data: Vec<u8>) -> Snapshot {
    let metadata = SnapshotMetadata { index, term, conf_state: Some(cs.clone()) };
    Snapshot { data, metadata: Some(metadata) }
}

/// Whether a snapshot can be sent to `to`: raft refuses to restore a snapshot whose
/// membership does not name it, which happens to a member removed and added back after the
/// snapshot was taken. `to == 0` asks for any snapshot.
pub fn snapshot_usable_for(meta: &SnapshotMetadata, to: u64) -> bool {
    if to == 0 || meta.index == 0 {
        return meta.index != 0;
    }
    let cs = meta.get_conf_state();
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next)
        .any(|id| *id == to)
}

/// The bounds of [`raft::Storage::entries`] that every store checks the same way: `low`
/// must lie after the compacted prefix, `high` at most one past the last entry.
pub(crate) fn check_entries_range(low: u64, high: u64, trunc: u64, last: u64) -> raft::Result<()> {
    if low <= trunc {
        return Err(raft::Error::Store(raft::StorageError::Compacted));
    }
    if high > last + 1 || low > high {
        return Err(raft::Error::Store(raft::StorageError::Unavailable));
    }
    Ok(())
}

/// [`raft::Storage::term`] for the indexes a store answers without reading an entry: the
/// compacted boundary (its term is kept), compacted indexes and indexes past the end.
/// `None`: the entry must be read.
pub(crate) fn term_without_entry(idx: u64, trunc: (u64, u64), last: u64) -> Option<raft::Result<u64>> {
    if idx == trunc.0 {
        Some(Ok(trunc.1))
    } else if idx < trunc.0 {
        Some(Err(raft::Error::Store(raft::StorageError::Compacted)))
    } else if idx > last {
        Some(Err(raft::Error::Store(raft::StorageError::Unavailable)))
    } else {
        None
    }
}

/// Turns a storage error into raft's error type for [`raft::Storage`] methods.
pub(crate) fn to_raft(e: StorageError) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(e)))
}
