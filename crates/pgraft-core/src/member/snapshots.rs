//! When a member takes snapshots, and how it records them (see `crate::snapshot_job`).

use raft::prelude::SnapshotMetadata;
use raft::StateRole;

use super::Member;
use crate::error::{Error, Result};
use crate::snapshot_job::{SnapshotDone, SnapshotJob};
use crate::storage::LogStore;

impl<S: LogStore> Member<S> {
    /// Entries between two snapshots of this member: `snapshot_count`, plus a share of
    /// up to a quarter of it drawn from the node id, so members do not all snapshot at the
    /// same index.
    pub(super) fn snapshot_interval(&self) -> u64 {
        let count = self.cfg.snapshot_count.max(1);
        count + self.cfg.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (count / 4).max(1)
    }

    /// Whether the log written since the last snapshot is at least half the size of that
    /// snapshot's image, so a snapshot never costs more than twice the log it lets go. A
    /// large state is not encoded and written again after every `snapshot_count` entries:
    /// it was, and a store growing to a million keys slowed its writes with its size
    /// (6,078 puts/s at 100,000 keys, 3,305 at 800,000: the snapshot thread encoded and
    /// wrote the whole state again every 10,000 entries, competing for the two cores).
    fn log_outweighs_image(&self) -> bool {
        if self.last_image_bytes == 0 {
            return true;
        }
        match self.raw.store().entry_bytes(self.last_snapshot, self.sm.applied_index) {
            Some(log) => log.saturating_mul(2) >= self.last_image_bytes,
            None => true,
        }
    }

    /// Prepares a snapshot job when one is due and none is being written: a clone of the
    /// state (cheap: persistent structures) that the driver encodes and writes elsewhere.
    pub(super) fn maybe_snapshot(&mut self) {
        // Not while entries applied ahead of this member's own log are out
        // (`apply_committed_ahead`): a snapshot's image and the compaction behind it
        // follow what the log holds.
        if self.snapshot_in_flight.is_some() || self.sm.applied_index > self.raw.raft.raft_log.persisted {
            return;
        }
        let applied = self.sm.applied_index;
        let due = applied >= self.last_snapshot + self.snapshot_interval() && self.log_outweighs_image();
        if !due && !self.compact_requested {
            return;
        }
        let keep = if self.compact_requested { 0 } else { self.cfg.snapshot_catchup };
        self.compact_requested = false;
        self.start_snapshot(keep);
    }

    pub(super) fn start_snapshot(&mut self, keep: u64) {
        let metadata = SnapshotMetadata {
            index: self.sm.applied_index,
            term: self.sm.applied_term,
            conf_state: Some(self.raw.raft.prs().conf().to_conf_state()),
        };
        self.snapshot_in_flight = Some(metadata.index);
        self.snapshot_job = Some(SnapshotJob {
            state: self.sm.clone(),
            metadata,
            keep,
            writer: self.raw.store().snapshot_writer(),
        });
    }

    /// A snapshot to take: the driver runs it ([`SnapshotJob::run`], on another thread or
    /// later) and hands the result to [`Member::snapshot_done`].
    pub fn take_snapshot_job(&mut self) -> Option<SnapshotJob> {
        self.snapshot_job.take()
    }

    /// Records a snapshot whose image a job wrote, and compacts the log behind it. A
    /// failed write stops the member: its storage can no longer be trusted.
    pub fn snapshot_done(&mut self, done: SnapshotDone) -> Result<()> {
        if self.snapshot_in_flight == Some(done.index) {
            self.snapshot_in_flight = None;
        }
        let image =
            done.image.map_err(|e| Error::Storage(format!("snapshot at index {}: {e}", done.index)))?;
        let bytes = image.len;
        self.raw.mut_store().create_snapshot(image, done.keep)?;
        self.last_snapshot = self.last_snapshot.max(done.index);
        self.last_image_bytes = bytes;
        if done.keep == 0 {
            self.full_compaction = self.full_compaction.max(done.index);
        }
        self.counters.snapshots_taken += 1;
        let ms = done.elapsed.as_millis() as u64;
        self.counters.snapshot_max_ms = self.counters.snapshot_max_ms.max(ms);
        self.counters.snapshot_total_ms += ms;
        // A compaction asked for while this one was written starts now.
        self.maybe_snapshot();
        self.resolve_waiters();
        Ok(())
    }

    /// A leader whose peer needs a snapshot that the stored one cannot serve (it predates
    /// the peer's re-admission, so it does not name the peer) takes a fresh one.
    pub(super) fn snapshot_for_readded_peers(&mut self) {
        if self.raw.raft.state != StateRole::Leader || self.snapshot_in_flight.is_some() {
            return;
        }
        let first = self.raw.store().first_index().unwrap_or(0);
        let meta = self.raw.store().snapshot_metadata();
        let stuck = self.raw.raft.prs().iter().any(|(id, pr)| {
            *id != self.cfg.id && pr.next_idx < first && !crate::storage::snapshot_usable_for(&meta, *id)
        });
        if stuck && self.sm.applied_index > self.last_snapshot {
            self.start_snapshot(self.cfg.snapshot_catchup);
        }
    }
}
