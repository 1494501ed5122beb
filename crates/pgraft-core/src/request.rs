//! Requests a client makes of a member, and their answers.

use serde::{Deserialize, Serialize};

use crate::command::Body;
use crate::kv::{KeyValue, KvStats};
use crate::state_machine::Outcome;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began, on any member (ReadIndex).
    Linearizable,
    /// This member's applied state, possibly behind the leader; no round trip.
    Serializable,
}

/// A read of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Read {
    /// One key, now or at a past revision.
    Get {
        /// The key.
        key: String,
        /// A past revision to read at; `None` for now.
        revision: Option<u64>,
    },
    /// Keys with a prefix, in key order.
    Range {
        /// The prefix ("" for all keys).
        prefix: String,
        /// A past revision to read at; `None` for now.
        revision: Option<u64>,
        /// At most this many keys.
        limit: Option<usize>,
    },
    /// The KV store's hash at a revision (etcd's hashkv).
    Hash {
        /// The revision; `None` for now.
        revision: Option<u64>,
    },
    /// The KV store's counters and sizes.
    Stats,
    /// Nothing: wait until this member has applied everything committed when the read
    /// began (`pgraft_log_sync_with_leader`).
    Barrier,
    /// Changes to keys with a prefix after a revision (a watch's poll).
    Changes {
        /// The prefix ("" for all keys).
        prefix: String,
        /// Changes with a later revision.
        after: u64,
        /// About this many at most (whole revisions).
        limit: usize,
    },
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Propose an entry; answered once it is applied on this member.
    Propose(Body),
    /// Propose an entry only if this member's current term is `term` (`pgraft_log_append`).
    ProposeInTerm {
        /// The term the caller believes current.
        term: u64,
        /// The entry.
        body: Body,
    },
    /// Read the state machine.
    Read(Read, Consistency),
    /// Add a member (a learner when `learner`); leader only. Adding a member again with
    /// the same address succeeds without a change.
    AddMember {
        /// Its node id.
        id: u64,
        /// `host:port` of its Raft port.
        address: String,
        /// Add as a learner (no vote) instead of a voter.
        learner: bool,
    },
    /// Make a learner a voter; leader only.
    PromoteLearner {
        /// The learner's node id.
        id: u64,
    },
    /// Remove a member; leader only.
    RemoveMember {
        /// Its node id.
        id: u64,
    },
    /// Hand leadership to another voter; answered once it leads.
    TransferLeader {
        /// The voter to take over.
        to: u64,
    },
    /// Answered once this member's commit index reaches the index.
    WaitCommitted(u64),
    /// Answered once this member has applied the index.
    WaitApplied(u64),
    /// Take a snapshot at the applied index and compact the whole log behind it
    /// (`pgraft_kv_compact`); answered with that index once the snapshot is durable.
    CompactLog,
}

impl Request {
    /// A short name of the operation, for per-operation figures (`kv_put`,
    /// `kv_get_linearizable`, `add_member`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Propose(body) | Request::ProposeInTerm { body, .. } => body.name(),
            Request::Read(read, c) => {
                let lin = *c == Consistency::Linearizable;
                match read {
                    Read::Get { .. } if lin => "kv_get_linearizable",
                    Read::Get { .. } => "kv_get_serializable",
                    Read::Range { .. } if lin => "kv_range_linearizable",
                    Read::Range { .. } => "kv_range_serializable",
                    Read::Hash { .. } => "kv_hash",
                    Read::Stats => "kv_stats",
                    Read::Barrier => "read_barrier",
                    Read::Changes { .. } => "kv_watch",
                }
            }
            Request::AddMember { .. } => "add_member",
            Request::PromoteLearner { .. } => "promote_learner",
            Request::RemoveMember { .. } => "remove_member",
            Request::TransferLeader { .. } => "transfer_leader",
            Request::WaitCommitted(_) => "wait_committed",
            Request::WaitApplied(_) => "wait_applied",
            Request::CompactLog => "compact_log",
        }
    }
}

/// KV store figures for `pgraft_kv_get_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvFigures {
    /// Live keys.
    pub keys: u64,
    /// Revisions held, tombstones included.
    pub history: u64,
    /// Tombstones held.
    pub tombstones: u64,
    /// Bytes held.
    pub size_bytes: u64,
    /// The current revision.
    pub revision: u64,
    /// The revision compacted up to.
    pub compact_revision: u64,
    /// Applied operation counters.
    pub stats: KvStats,
    /// The log index these figures reflect (the last applied entry).
    pub applied_index: u64,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A proposal was applied at `index`.
    Applied {
        /// Its log index.
        index: u64,
        /// What it did.
        outcome: Outcome,
    },
    /// Keys read.
    Kvs(Vec<KeyValue>),
    /// Changes read, and the store's revision when read.
    Changes {
        /// The changes, in revision order.
        changes: Vec<crate::kv::Change>,
        /// The store's revision.
        revision: u64,
    },
    /// A KV hash, with the revision it was taken at.
    Hash {
        /// The hash.
        hash: u64,
        /// The revision.
        revision: u64,
    },
    /// KV figures.
    KvFigures(KvFigures),
    /// Done; the index reached (commit or applied), or the barrier's read index.
    Reached(u64),
    /// Nothing to do: the request was already satisfied (a member re-added with the same
    /// address).
    Unchanged,
}
