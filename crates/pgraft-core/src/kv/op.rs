//! Operations on the KV store, as they travel through the Raft log, and their results.

use serde::{Deserialize, Serialize};

use super::kv_store::KeyValue;

/// What a compare-and-swap checks before it acts, as etcd's `Compare` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// The key's value equals this one; `None` means the key must not exist.
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// The key's version equals this one (0: the key does not exist).
    Version(u64),
    /// The key's mod_revision equals this one (0: the key does not exist).
    ModRevision(u64),
    /// The key's create_revision equals this one (0: the key does not exist).
    CreateRevision(u64),
}

/// What a compare-and-swap does when its comparison holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnAction {
    /// Write this value.
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Delete the key.
    Delete,
}

/// One change to the KV store. `time_ms` (milliseconds since the Unix epoch) is taken by
/// the proposer, so every member records the same created and updated times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Create or overwrite a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// When it was proposed.
        time_ms: i64,
    },
    /// Delete a key; deleting a missing key changes nothing.
    Delete {
        /// The key.
        key: String,
        /// When it was proposed.
        time_ms: i64,
    },
    /// Delete every key that starts with `prefix`.
    DeletePrefix {
        /// The prefix ("" deletes everything).
        prefix: String,
        /// When it was proposed.
        time_ms: i64,
    },
    /// Compare, then act: the building block of locks and leader records.
    CompareAndSwap {
        /// The key compared and changed.
        key: String,
        /// The comparison.
        compare: Compare,
        /// What to do when the comparison holds.
        action: TxnAction,
        /// When it was proposed.
        time_ms: i64,
    },
    /// Drop old revisions up to `revision`; the latest state of every key is kept.
    Compact {
        /// The revision to compact up to (inclusive).
        revision: u64,
    },
    /// Remove every key and all history. The revision counter keeps counting up, so
    /// revisions stay unique over the store's life.
    Reset,
}

impl KvOp {
    /// The operation's name as shown in `pgraft.log_index_mapping`.
    pub fn name(&self) -> &'static str {
        match self {
            KvOp::Put { .. } => "kv_put",
            KvOp::Delete { .. } => "kv_delete",
            KvOp::DeletePrefix { .. } => "kv_delete_prefix",
            KvOp::CompareAndSwap { .. } => "kv_cas",
            KvOp::Compact { .. } => "kv_compact",
            KvOp::Reset => "kv_reset",
        }
    }

    /// The key or prefix the operation targets, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            KvOp::Put { key, .. } | KvOp::Delete { key, .. } | KvOp::CompareAndSwap { key, .. } => Some(key),
            KvOp::DeletePrefix { prefix, .. } => Some(prefix),
            KvOp::Compact { .. } | KvOp::Reset => None,
        }
    }
}

/// What applying a [`KvOp`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// A put: the new revision and the previous state of the key.
    Put {
        /// The store's revision after the put.
        revision: u64,
        /// The key as it was before, if it existed.
        prev: Option<KeyValue>,
    },
    /// A delete or prefix delete: how many keys went away.
    Deleted {
        /// The store's revision afterwards (unchanged when nothing was deleted).
        revision: u64,
        /// The number of keys deleted.
        deleted: u64,
    },
    /// A compare-and-swap.
    CompareAndSwap {
        /// Whether the comparison held (and the action ran).
        succeeded: bool,
        /// The store's revision afterwards.
        revision: u64,
        /// The key as it was before, if it existed: what the comparison saw.
        prev: Option<KeyValue>,
    },
    /// A compaction.
    Compacted {
        /// The revision compacted up to.
        revision: u64,
    },
    /// A compaction that was refused: it asked for a future revision, or one already
    /// compacted. etcd answers the same two errors.
    CompactRefused {
        /// Why.
        reason: String,
    },
    /// A reset.
    Reset {
        /// The number of keys removed.
        removed: u64,
    },
}
