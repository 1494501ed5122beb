//! Who a store belongs to.

use serde::{Deserialize, Serialize};

use super::{Result, StorageError};

/// The cluster and member a store was created for. A store refuses to open under another
/// identity: a data directory copied from another member, or a member pointed at another
/// cluster, must not join with state that is not its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `pgraft.cluster_id`.
    pub cluster_id: String,
    /// `pgraft.node_id`.
    pub node_id: u64,
}

impl Identity {
    /// Checks that `self` (recorded) and `wanted` (configured) are the same member.
    pub fn check(&self, wanted: &Identity) -> Result<()> {
        if self.cluster_id != wanted.cluster_id {
            return Err(StorageError::IdentityMismatch(format!(
                "this data directory belongs to cluster {:?}, but pgraft.cluster_id is {:?}; \
                 point pgraft.data_dir at this member's own directory or fix pgraft.cluster_id",
                self.cluster_id, wanted.cluster_id
            )));
        }
        if self.node_id != wanted.node_id {
            return Err(StorageError::IdentityMismatch(format!(
                "this data directory belongs to node {}, but pgraft.node_id is {}; \
                 each member needs its own pgraft.data_dir",
                self.node_id, wanted.node_id
            )));
        }
        Ok(())
    }
}
