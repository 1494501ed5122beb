//! An in-memory store for unit tests and the deterministic simulation.

use prost::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};

use super::pending_hard_state::check_unsynced;
use super::snapshot_file::{read_image, ImageData};
use super::{
    check_entries_range, snapshot_usable_for, term_without_entry, Identity, LogStore, Result, SnapshotImage,
    SnapshotWriter, StorageError,
};

/// A store that keeps everything in memory: "durable" means "in this value", but for a
/// hard state written without a sync, which [`MemStore::crashed`] forgets. The
/// simulation models a crash with it, and drops the rest of a member's unsynced state,
/// which it holds outside the store.
///
/// A store made [`MemStore::deferred`] models a log whose writes are durable later, like
/// the durable store's I/O thread: [`LogStore::persist_async`] writes become durable
/// when [`MemStore::finish_writes`] says so (the simulation calls it at random), and a
/// crash before loses them all.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    hard_state: HardState,
    /// The hard state as of the last synced write.
    synced_hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry discarded by compaction or a snapshot.
    trunc: (u64, u64),
    entries: Vec<Entry>,
    snapshot: Snapshot,
    identity: Option<Identity>,
    deferred: bool,
    /// A deliberate bug, for the simulation's checks: deferred writes are reported
    /// durable as soon as they are started (see [`MemStore::acking_early`]).
    acks_early: bool,
    /// The store as it was before the first write not yet durable.
    durable: Option<Box<MemStore>>,
    /// The highest `Ready` number written since.
    pending: u64,
    /// The highest `Ready` number made durable and not yet reported.
    reported: Option<u64>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose [`LogStore::persist_async`] writes are durable only once
    /// [`MemStore::finish_writes`] is called.
    pub fn deferred() -> Self {
        MemStore { deferred: true, ..Self::default() }
    }

    /// A deferred store with a deliberate bug: it reports a write durable as soon as it is
    /// started, so its member promises what a crash then loses. The simulation must catch
    /// it.
    pub fn acking_early() -> Self {
        MemStore { deferred: true, acks_early: true, ..Self::default() }
    }

    /// Whether a write started is not durable yet (a crash now would lose it).
    pub fn writes_out(&self) -> bool {
        self.durable.is_some()
    }

    /// Makes every write started durable, as a log's I/O thread finishing its write.
    pub fn finish_writes(&mut self) {
        if self.durable.take().is_some() {
            self.reported = Some(self.reported.map_or(self.pending, |r| r.max(self.pending)));
        }
    }

    /// The store as a crash leaves it: what was written without a sync is gone, and so
    /// is every write not yet durable.
    pub fn crashed(&self) -> MemStore {
        match &self.durable {
            Some(before) => before.crashed(),
            // `Ready` numbers are the member's that wrote them: the next one counts from 1.
            None => MemStore {
                hard_state: self.synced_hard_state.clone(),
                reported: None,
                pending: 0,
                ..self.clone()
            },
        }
    }

    /// The write of `persist`, readable at once.
    fn write(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        check_unsynced(entries, hs, &self.hard_state, sync)?;
        if let Some(first) = entries.first() {
            check_append(first.index, self.trunc.0, self.last())?;
            self.entries.truncate(self.pos(first.index));
            self.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        if sync {
            self.synced_hard_state = self.hard_state.clone();
        }
        Ok(())
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.trunc.0, |e| e.index)
    }

    fn pos(&self, idx: u64) -> usize {
        (idx - self.trunc.0 - 1) as usize
    }
}

impl raft::Storage for MemStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        check_entries_range(low, high, self.trunc.0, self.last())?;
        let mut ents = self.entries[self.pos(low)..self.pos(high)].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if let Some(answer) = term_without_entry(idx, self.trunc, self.last()) {
            return answer;
        }
        Ok(self.entries[self.pos(idx)].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.trunc.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        if meta.index < request_index || !snapshot_usable_for(meta, to) {
            return Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

impl LogStore for MemStore {
    fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        if sync {
            self.finish_writes();
        }
        self.write(entries, hs, sync)
    }

    fn persist_async(
        &mut self,
        number: u64,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<Option<u64>> {
        if !self.deferred {
            self.write(entries, hs, sync)?;
            return Ok(Some(number));
        }
        if self.durable.is_none() {
            if entries.is_empty() && !sync {
                // Only the commit index, with nothing out: kept unsynced, as `persist`.
                self.write(entries, hs, sync)?;
                return Ok(Some(number));
            }
            self.durable = Some(Box::new(self.clone()));
        }
        self.write(entries, hs, sync)?;
        self.pending = self.pending.max(number);
        Ok(self.acks_early.then_some(number))
    }

    fn poll_durable(&mut self) -> Result<Option<u64>> {
        Ok(self.reported.take())
    }

    fn flush(&mut self) -> Result<Option<u64>> {
        self.finish_writes();
        Ok(self.reported.take())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<()> {
        self.finish_writes();
        self.conf_state = cs.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        self.finish_writes();
        let meta = snap.get_metadata();
        if meta.index <= self.trunc.0 {
            return Ok(()); // already have it or newer: idempotent
        }
        self.entries.clear();
        self.trunc = (meta.index, meta.term);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.synced_hard_state = self.hard_state.clone();
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot = snap.clone();
        Ok(())
    }

    fn snapshot_writer(&self) -> SnapshotWriter {
        SnapshotWriter::memory()
    }

    fn create_snapshot(&mut self, image: SnapshotImage, keep: u64) -> Result<()> {
        self.finish_writes();
        let index = image.metadata.index;
        if index < self.snapshot.get_metadata().index || index <= self.trunc.0 {
            return Ok(());
        }
        let data = match image.data {
            ImageData::Memory(d) => d,
            ImageData::File(p) => read_image(&p)?,
        };
        self.snapshot = Snapshot { data, metadata: Some(image.metadata) };
        // Its index is committed, perhaps by an unsynced commit: on record with it.
        self.synced_hard_state = self.hard_state.clone();
        let compact_to = index.saturating_sub(keep);
        if compact_to > self.trunc.0 {
            let t =
                raft::Storage::term(self, compact_to).map_err(|e| StorageError::Invalid(e.to_string()))?;
            let n = self.pos(compact_to) + 1;
            self.entries.drain(..n);
            self.trunc = (compact_to, t);
        }
        Ok(())
    }

    fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.snapshot.get_metadata().clone()
    }

    fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    fn identity(&self) -> Option<Identity> {
        self.identity.clone()
    }

    fn ensure_identity(&mut self, id: &Identity) -> Result<()> {
        self.finish_writes();
        match &self.identity {
            Some(have) => have.check(id),
            None => {
                self.identity = Some(id.clone());
                Ok(())
            }
        }
    }

    fn disk_usage(&self) -> u64 {
        0
    }

    fn entry_bytes(&self, after: u64, upto: u64) -> Option<u64> {
        if upto <= after {
            return Some(0);
        }
        if after < self.trunc.0 || upto > self.last() {
            return None;
        }
        let range = self.entries.get(self.pos(after + 1)..=self.pos(upto))?;
        Some(range.iter().map(|e| e.encoded_len() as u64).sum())
    }
}

/// The append rules shared by every store: no write below the compacted prefix, no hole.
pub(crate) fn check_append(first: u64, trunc: u64, last: u64) -> Result<()> {
    if first <= trunc {
        return Err(StorageError::Invalid(format!(
            "append at index {first} overwrites the compacted log (compacted up to {trunc})"
        )));
    }
    if first > last + 1 {
        return Err(StorageError::Invalid(format!(
            "append at index {first} would leave a hole after the last index {last}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        super::super::conformance::run_all(|prev: Option<MemStore>| {
            prev.map(|s| s.crashed()).unwrap_or_default()
        });
        super::super::conformance::run_all(|prev: Option<MemStore>| {
            prev.map(|s| s.crashed()).unwrap_or_else(MemStore::deferred)
        });
    }

    #[test]
    fn a_crash_loses_deferred_writes_not_yet_finished() {
        use raft::Storage as _;
        let e = |index| Entry { index, term: 1, ..Default::default() };
        let mut s = MemStore::deferred();
        assert_eq!(s.persist_async(1, &[e(1), e(2)], None, true).expect("write"), None);
        assert!(s.writes_out());
        assert_eq!(s.last_index().expect("last"), 2, "read back at once");
        assert_eq!(s.crashed().last_index().expect("last"), 0, "not durable yet");
        s.finish_writes();
        assert_eq!(s.poll_durable().expect("poll"), Some(1));
        assert_eq!(s.persist_async(2, &[e(3)], None, true).expect("write"), None);
        let after = s.crashed();
        assert_eq!(after.last_index().expect("last"), 2, "the finished write survives, the next is lost");
        assert!(!after.writes_out());
    }
}
