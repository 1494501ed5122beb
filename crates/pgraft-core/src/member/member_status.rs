//! What a member reports about itself: role, progress of its peers, counters.

use std::collections::BTreeMap;

use raft::StateRole;

use super::Member;
use crate::storage::LogStore;

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for votes.
    Candidate,
    /// Asks whether it could win before asking for votes (pre-vote).
    PreCandidate,
    /// Leads.
    Leader,
}

impl Role {
    pub(crate) fn of(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }

    /// The name shown in SQL: `Leader`, `Follower`, `Candidate`, `PreCandidate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "Follower",
            Role::Candidate => "Candidate",
            Role::PreCandidate => "PreCandidate",
            Role::Leader => "Leader",
        }
    }
}

/// Replication progress of one peer, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerProgress {
    /// The peer.
    pub id: u64,
    /// Highest index known to be replicated there.
    pub matched: u64,
    /// Next index to send.
    pub next: u64,
    /// `probe`, `replicate` or `snapshot`.
    pub state: String,
    /// Whether it answered within the last election timeout.
    pub recent_active: bool,
    /// A learner.
    pub learner: bool,
    /// The bytes of log it is missing (the encoded entries after `matched`), `None` when
    /// some of them were compacted away (it needs a snapshot).
    #[serde(default)]
    pub lag_bytes: Option<u64>,
}

/// Counters of what the member has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Peer messages stepped.
    pub messages_received: u64,
    /// Peer messages produced for sending.
    pub messages_sent: u64,
    /// Elections this member started (it became a candidate).
    pub elections: u64,
    /// Proposals handed to raft.
    pub proposals: u64,
    /// Entries applied.
    pub applied_entries: u64,
    /// Snapshots taken here.
    pub snapshots_taken: u64,
    /// The longest a snapshot here took to encode and write, in ms (off the Raft thread).
    pub snapshot_max_ms: u64,
    /// Proposals sent again because they seemed lost (see `proposals`).
    pub proposals_resent: u64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: u64,
    /// Vote requests left unanswered because this member's log is empty (see
    /// `Member::step`).
    pub votes_withheld: u64,
    /// Peer messages dropped because raft-rs could not have taken them (see
    /// `member/peer_check.rs`).
    #[serde(default)]
    pub messages_dropped: u64,
    /// Times the leader known here changed to another member (not to "none").
    pub leader_changes: u64,
    /// The time all snapshots here took to encode and write, in ms.
    pub snapshot_total_ms: u64,
    /// The longest pass of the Raft thread since start, in ms: with failover on, one
    /// longer than the election timeout is a failover.
    #[serde(default)]
    pub longest_pass_ms: u64,
    /// Peer messages stepped, by raft message type (`MessageType as usize`).
    pub received_by_type: [u64; MESSAGE_TYPES],
    /// Peer messages produced for sending, by raft message type.
    pub sent_by_type: [u64; MESSAGE_TYPES],
}

/// How many raft message types there are (`MsgHup` = 0 to `MsgRequestPreVoteResponse` = 18).
pub const MESSAGE_TYPES: usize = 19;

/// The name of raft message type `t` as Prometheus labels show it (`MsgAppend` is
/// `append`).
pub fn message_type_name(t: usize) -> &'static str {
    const NAMES: [&str; MESSAGE_TYPES] = [
        "hup",
        "beat",
        "propose",
        "append",
        "append_response",
        "request_vote",
        "request_vote_response",
        "snapshot",
        "heartbeat",
        "heartbeat_response",
        "unreachable",
        "snap_status",
        "check_quorum",
        "transfer_leader",
        "timeout_now",
        "read_index",
        "read_index_response",
        "request_pre_vote",
        "request_pre_vote_response",
    ];
    NAMES.get(t).copied().unwrap_or("unknown")
}

/// A picture of the member.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    /// This member.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Whom it voted for in this term (0: nobody).
    pub vote: u64,
    /// Term and vote as the log holds them durably: what the member may have promised
    /// others. `term` and `vote` run ahead while their write is out.
    #[serde(default)]
    pub durable_term: u64,
    #[serde(default)]
    pub durable_vote: u64,
    /// The leader it knows of (0: none).
    pub leader_id: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// The encoded bytes of the entries in the log (`first_index..=last_index`).
    #[serde(default)]
    pub log_bytes: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Per-peer progress (leader only).
    pub progress: Vec<PeerProgress>,
    /// Counters.
    pub counters: Counters,
    /// Requests waiting in this member.
    pub pending: usize,
    /// Whether a majority is reachable (see [`Member::quorum_active`]).
    pub quorum_active: bool,
    /// When this member last heard from each peer, ms since the Unix epoch.
    pub last_heard_ms: BTreeMap<u64, i64>,
    /// When the connection each peer had opened to this member last ended, ms since the
    /// Unix epoch (see `Member::peer_closed`).
    pub links_closed_ms: BTreeMap<u64, i64>,
    /// Members a leader has not heard from within an election timeout (empty elsewhere).
    pub unreachable: Vec<u64>,
    /// Why this member stopped applying: an entry or snapshot it cannot read (see
    /// `apply_block.rs`).
    #[serde(default)]
    pub apply_blocked: Option<String>,
    /// The newest entry format each member announced it reads, by node id, and whether it
    /// announced (see `cluster_format.rs`): a kind of entry is proposed once all read it.
    #[serde(default)]
    pub entry_formats: Vec<(u64, u8, bool)>,
}

impl<S: LogStore> Member<S> {
    /// A picture of the member.
    pub fn status(&self) -> MemberStatus {
        let r = &self.raw.raft;
        let conf = r.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        // Sizes are known for what the store holds (raft-rs may hold newer entries that are
        // not written yet).
        let stored_last = self.raw.store().last_index().unwrap_or(0);
        let first_index = self.raw.store().first_index().unwrap_or(0);
        let progress = if r.state == StateRole::Leader {
            let mut p: Vec<PeerProgress> = r
                .prs()
                .iter()
                .map(|(id, pr)| PeerProgress {
                    id: *id,
                    matched: pr.matched,
                    next: pr.next_idx,
                    state: format!("{:?}", pr.state).to_lowercase(),
                    recent_active: pr.recent_active || *id == self.cfg.id,
                    learner: conf.learners().contains(id),
                    lag_bytes: self.raw.store().entry_bytes(pr.matched.min(stored_last), stored_last),
                })
                .collect();
            p.sort_by_key(|x| x.id);
            p
        } else {
            Vec::new()
        };
        MemberStatus {
            id: self.cfg.id,
            role: Role::of(r.state),
            term: r.term,
            vote: r.vote,
            durable_term: self.durable_term_vote.0,
            durable_vote: self.durable_term_vote.1,
            leader_id: r.leader_id,
            commit: r.raft_log.committed,
            applied: self.sm.applied_index,
            first_index,
            last_index: r.raft_log.last_index(),
            log_bytes: self.raw.store().entry_bytes(first_index.saturating_sub(1), stored_last).unwrap_or(0),
            voters,
            learners,
            progress,
            counters: Counters { proposals_resent: self.proposals.resent, ..self.counters },
            pending: self.waiting.len(),
            quorum_active: self.quorum_active(),
            last_heard_ms: self.last_heard.clone(),
            links_closed_ms: self.links_closed.clone(),
            apply_blocked: self.apply_blocked.clone(),
            entry_formats: super::cluster_format::member_formats(&self.sm),
            unreachable: if r.state == StateRole::Leader {
                let mut ids: Vec<u64> =
                    r.prs().iter().map(|(id, _)| *id).filter(|id| !self.heard_recently(*id)).collect();
                ids.sort_unstable();
                ids
            } else {
                Vec::new()
            },
        }
    }
}
