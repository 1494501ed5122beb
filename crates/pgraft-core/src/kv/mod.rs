//! The key-value state machine: etcd's data model, applied from the Raft log.
//!
//! Every change gets a cluster-wide revision; every key carries `create_revision`,
//! `mod_revision` and `version` exactly as etcd's do. Old revisions stay readable until a
//! compaction removes them, like etcd's MVCC store.

mod kv_store;
mod op;

pub use kv_store::{Change, Compacted, KeyValue, KvStats, KvStore};
pub use op::{Compare, KvOp, KvResult, TxnAction};
