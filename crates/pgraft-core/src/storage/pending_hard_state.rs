//! The hard state of a durable store, whose commit index may be ahead of the disk.
//!
//! raft-rs says when a `Ready` needs no sync: only the commit index moved, which Raft may
//! forget and learn again. A durable store then keeps that hard state in memory and
//! records it with its next synced write, so the write costs nothing.

use raft::prelude::{Entry, HardState};

use super::{Result, StorageError};

/// The hard state as readers see it, and as the disk holds it (older when a commit index
/// was kept without a sync, or a write is staged or out on the log's I/O thread).
#[derive(Debug, Default, Clone)]
pub(crate) struct PendingHardState {
    visible: HardState,
    on_disk: HardState,
}

impl PendingHardState {
    /// The hard state read at start.
    pub fn loaded(hs: HardState) -> Self {
        Self { visible: hs.clone(), on_disk: hs }
    }

    /// The hard state as readers see it.
    pub fn get(&self) -> &HardState {
        &self.visible
    }

    /// The hard state the last record written holds.
    pub fn on_disk(&self) -> &HardState {
        &self.on_disk
    }

    /// The first step of a `persist`: refuses an unsynced write of anything but the commit
    /// index, and takes an unsynced one in memory. True when nothing is left to write.
    pub fn keep_unsynced(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<bool> {
        check_unsynced(entries, hs, &self.visible, sync)?;
        if sync {
            return Ok(false);
        }
        if let Some(hs) = hs {
            self.visible = hs.clone();
        }
        Ok(true)
    }

    /// Readers see `hs` from now on; a later record writes it (see [`Self::to_record`]).
    pub fn show(&mut self, hs: &HardState) {
        self.visible = hs.clone();
    }

    /// The hard state a write records: `hs`, else the one readers see if the disk's is
    /// older, else none.
    pub fn to_record(&self, hs: Option<&HardState>) -> Option<HardState> {
        hs.cloned().or_else(|| (self.visible != self.on_disk).then(|| self.visible.clone()))
    }

    /// A write recorded `hs` (with everything kept before it), which readers see too.
    pub fn recorded(&mut self, hs: HardState) {
        self.visible = hs.clone();
        self.on_disk = hs;
    }

    /// A write recorded the hard state as readers see it.
    pub fn all_recorded(&mut self) {
        self.on_disk = self.visible.clone();
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
