//! The hard state of a durable store, whose commit index may be ahead of the disk.
//!
//! raft-rs says when a `Ready` needs no sync: only the commit index moved, which Raft may
//! forget and learn again. A durable store then keeps that hard state in memory and
//! records it with its next synced write, so the write costs nothing.

use raft::prelude::{Entry, HardState};

use super::{Result, StorageError};

/// The hard state as last written, and whether what the disk holds is older.
#[derive(Debug, Default, Clone)]
pub(crate) struct PendingHardState {
    hs: HardState,
    unsynced: bool,
}

impl PendingHardState {
    /// The hard state read at start.
    pub fn loaded(hs: HardState) -> Self {
        Self { hs, unsynced: false }
    }

    /// The hard state as readers see it.
    pub fn get(&self) -> &HardState {
        &self.hs
    }

    /// The first step of a `persist`: refuses an unsynced write of anything but the commit
    /// index, and takes an unsynced one in memory. True when nothing is left to write.
    pub fn keep_unsynced(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<bool> {
        check_unsynced(entries, hs, &self.hs, sync)?;
        if sync {
            return Ok(false);
        }
        if let Some(hs) = hs {
            self.hs = hs.clone();
            self.unsynced = true;
        }
        Ok(true)
    }

    /// The hard state a synced write records: `hs`, else one kept unsynced, else none.
    pub fn to_record(&self, hs: Option<&HardState>) -> Option<HardState> {
        hs.cloned().or_else(|| self.unsynced.then(|| self.hs.clone()))
    }

    /// The hard state a synced write recorded (with everything kept before it).
    pub fn recorded(&mut self, hs: HardState) {
        self.hs = hs;
        self.unsynced = false;
    }

    /// A synced write recorded the hard state as it stands.
    pub fn all_recorded(&mut self) {
        self.unsynced = false;
    }
}

/// A write without a sync may only move the commit index: entries, a term and a vote must
/// be durable before anything that depends on them leaves the member.
pub(crate) fn check_unsynced(
    entries: &[Entry],
    hs: Option<&HardState>,
    was: &HardState,
    sync: bool,
) -> Result<()> {
    if sync {
        return Ok(());
    }
    let moves_more = hs.is_some_and(|hs| hs.term != was.term || hs.vote != was.vote);
    if !entries.is_empty() || moves_more {
        return Err(StorageError::Invalid(
            "entries, a term or a vote written without a sync: they must be durable before they are used"
                .into(),
        ));
    }
    Ok(())
}
