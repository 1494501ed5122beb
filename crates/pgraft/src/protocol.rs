//! Requests a session sends to the worker, and the answers (carried by
//! `pgraft_core::ipc`).

use serde::{Deserialize, Serialize};

use pgraft_core::state_machine::AppliedRecord;
use pgraft_core::{MemberStatus, Request, Response};

/// What a session asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IpcRequest {
    /// A request to the Raft member, with its timeout.
    Call {
        /// The request.
        req: Request,
        /// How long the member may take.
        timeout_ms: u64,
    },
    /// `pgraft_init()`: found the one-member cluster (on the bootstrap member) or get
    /// ready to be added.
    Init,
    /// Everything for status functions and views.
    Status,
    /// The last `limit` applied entries.
    History {
        /// How many.
        limit: u32,
    },
    /// One log entry.
    Entry {
        /// Its index.
        index: u64,
    },
    /// Take a snapshot now and compact the log behind it.
    CompactLog,
    /// Change the worker's log level now.
    SetLogLevel(String),
    /// Save the cluster-wide settings in the data directory.
    SaveConfig,
    /// The saved settings.
    SavedConfig,
}

/// A log entry as shown in SQL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryView {
    /// Index.
    pub index: u64,
    /// Term.
    pub term: u64,
    /// What it is: the data of a replicated entry, or a JSON description.
    pub text: String,
}

/// What the status functions need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The member's status.
    pub member: MemberStatus,
    /// Every member's address.
    pub addresses: std::collections::BTreeMap<u64, String>,
    /// Peer connections refused.
    pub refused_connections: u64,
    /// Bytes of the member's data directory on disk: the log's database, snapshot
    /// images and the worker's own files.
    pub disk_bytes: u64,
    /// Bytes of the log's database file on disk.
    pub log_disk_bytes: u64,
    /// Cluster-wide settings changed through the log.
    pub cluster_config: std::collections::BTreeMap<String, String>,
    /// The replicated HA state (failover).
    pub ha: pgraft_core::ha::HaState,
    /// The worker's clock when this was taken, ms since the Unix epoch.
    pub now_ms: i64,
}

/// The worker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IpcResponse {
    /// The Raft member's answer.
    Raft(Result<Response, pgraft_core::Error>),
    /// `pgraft_init()`: what happened.
    Init(Result<String, String>),
    /// Status.
    Status(Box<StatusReport>),
    /// Applied entries, newest first.
    History(Vec<AppliedRecord>),
    /// A log entry, if the log still holds it.
    Entry(Option<EntryView>),
    /// Done: the index compacted up to.
    Compacted(u64),
    /// Done.
    Done,
    /// Settings, name -> value.
    Config(std::collections::BTreeMap<String, String>),
    /// The worker could not serve the request.
    Failed(String),
}
