//! A snapshot being taken: the state machine as of an applied index, to be encoded and
//! made durable by whoever runs the job, while the member goes on applying.
//!
//! ```text
//!  Raft thread                            snapshot thread
//!  applied >= last + count ──▶ SnapshotJob (O(1) clone of the state) ──▶ run(): encode,
//!                                                                        write, fsync
//!  Member::snapshot_done ◀── SnapshotDone (the image, durable) ◀─────────┘
//!  record it, compact the log (one small transaction)
//! ```
//!
//! The simulation runs jobs itself, a few ticks later, so the same code is exercised
//! deterministically.

use std::time::{Duration, Instant};

use raft::prelude::SnapshotMetadata;

use crate::state_machine::StateMachine;
use crate::storage::{SnapshotImage, SnapshotWriter, StorageError};

/// A snapshot to encode and write.
pub struct SnapshotJob {
    pub(crate) state: StateMachine,
    pub(crate) metadata: SnapshotMetadata,
    pub(crate) keep: u64,
    pub(crate) writer: SnapshotWriter,
}

/// A job's result, for [`crate::member::Member::snapshot_done`].
pub struct SnapshotDone {
    pub(crate) index: u64,
    pub(crate) keep: u64,
    pub(crate) image: Result<SnapshotImage, StorageError>,
    /// How long encoding and writing took.
    pub elapsed: Duration,
}

impl SnapshotJob {
    /// Encodes the state and makes the image durable: the slow part, for any thread.
    pub fn run(self) -> SnapshotDone {
        let started = Instant::now();
        let index = self.metadata.index;
        let data = self.state.encode();
        drop(self.state);
        let image = self.writer.write(self.metadata, &data);
        SnapshotDone { index, keep: self.keep, image, elapsed: started.elapsed() }
    }
}

impl SnapshotDone {
    /// The applied index the snapshot was taken at.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Bytes of the image (0 if writing it failed).
    pub fn len(&self) -> u64 {
        self.image.as_ref().map_or(0, |i| i.len)
    }

    /// Whether the image is empty (never for a written one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
