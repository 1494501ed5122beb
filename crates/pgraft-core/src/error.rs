//! Errors of the request API. Each says what happened and, where there is one, what to do.

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// The request must run on the leader, and this member is not it.
    #[error("{}", not_leader_message(*leader_id, leader_address.as_deref()))]
    NotLeader {
        /// The leader this member knows of, if any.
        leader_id: Option<u64>,
        /// Its address, if known.
        leader_address: Option<String>,
    },
    /// No leader is known (an election is under way or there is no quorum), and the
    /// request's deadline passed while waiting for one.
    #[error("no leader: an election is in progress or a majority of members is unreachable")]
    NoLeader,
    /// The leader cannot reach a majority, so nothing can commit.
    #[error("no quorum: a majority of the members is unreachable, so nothing can be committed")]
    NoQuorum,
    /// The deadline passed; the request may or may not have taken effect.
    #[error("timed out waiting for the cluster; the request may or may not have been applied")]
    Timeout,
    /// The member named is not in the cluster.
    #[error("node {0} is not a member of the cluster")]
    UnknownMember(u64),
    /// This member applied a configuration that no longer holds it: it was removed, and
    /// serves no reads or writes until it is added back.
    #[error("node {0} was removed from the cluster and serves no requests until it is added back")]
    Removed(u64),
    /// An argument breaks a rule.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request conflicts with one in progress.
    #[error("busy: {0}")]
    Busy(String),
    /// A read of a compacted revision.
    #[error("revision {requested} has been compacted; the oldest readable revision is {compacted}")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest readable one.
        compacted: u64,
    },
    /// The member met an entry it cannot read and applies nothing more (see
    /// `member/apply_block.rs`).
    #[error("{0}")]
    ApplyBlocked(String),
    /// An entry of a kind some member's build does not read yet (see
    /// `member/cluster_format.rs`).
    #[error("{0}")]
    NotUpgraded(String),
    /// The member is stopping or stopped.
    #[error("the Raft member is not running")]
    Stopped,
    /// Storage failed: the member stops.
    #[error("storage failure: {0}")]
    Storage(String),
}

fn not_leader_message(id: Option<u64>, addr: Option<&str>) -> String {
    match (id, addr) {
        (Some(id), Some(a)) if !a.is_empty() => format!("not the leader; the leader is node {id} at {a}"),
        (Some(id), _) => format!("not the leader; the leader is node {id}"),
        (None, _) => "not the leader, and no leader is known".to_string(),
    }
}

/// Results of the request API.
pub type Result<T> = std::result::Result<T, Error>;

impl From<crate::storage::StorageError> for Error {
    fn from(e: crate::storage::StorageError) -> Self {
        Error::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_names_the_leader() {
        let e = Error::NotLeader { leader_id: Some(2), leader_address: Some("127.0.0.1:7002".into()) };
        assert_eq!(e.to_string(), "not the leader; the leader is node 2 at 127.0.0.1:7002");
        let e = Error::NotLeader { leader_id: None, leader_address: None };
        assert_eq!(e.to_string(), "not the leader, and no leader is known");
    }
}
