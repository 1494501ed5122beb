//! One Raft member: raft-rs's `RawNode` over a [`LogStore`] and the [`StateMachine`].
//!
//! The member is synchronous and deterministic. A driver (the real runtime, or the
//! simulation) feeds it ticks, peer messages and client requests, calls
//! [`Member::process_ready`] after each, sends the messages it returns, and collects the
//! answers from [`Member::take_answers`]:
//!
//! ```text
//!   tick() ──┐
//!   step(m) ─┼─▶ RawNode ──ready──▶ process_ready(): persist, apply ──▶ messages to send
//!   submit() ┘                                                    └──▶ answers (token, result)
//! ```

use std::collections::{BTreeMap, HashMap};

use raft::prelude::{ConfChangeV2, ConfState, Entry, Message};
use raft::{RawNode, StateRole};

use crate::command::{Body, Origin, Proposal};
use crate::error::{Error, Result};
use crate::proposals::Proposals;
use crate::request::{Consistency, KvFigures, Read, Request, Response};
use crate::snapshot_job::SnapshotJob;
use crate::state_machine::StateMachine;
use crate::storage::{snapshot_of, Identity, LogStore};

mod apply_block;
pub mod cluster_format;
pub mod hand_net;
pub mod held_messages;
mod member_status;
mod membership;
mod peer_check;
mod read_rounds;
mod ready;
mod snapshots;
#[cfg(test)]
mod tests;

/// How many election timeouts in a row a member whose campaigns are held lets pass
/// without a leader before it campaigns anyway (see [`Member::hold_campaigns`]).
pub const CAMPAIGN_HOLD_ROUNDS: u32 = 2;

pub use member_status::{message_type_name, Counters, MemberStatus, PeerProgress, Role, MESSAGE_TYPES};

/// A driver's handle for one request; answers carry it back.
pub type Token = u64;

/// The token of a proposal no client waits for (the learner step of adding a voter, the
/// promotion that ends it). Drivers number their tokens from 1.
pub(crate) const NO_CLIENT: Token = 0;

/// How a member is set up.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// This member's node id.
    pub id: u64,
    /// The cluster it belongs to (checked against storage).
    pub cluster_id: String,
    /// raft-rs election timeout in ticks (the driver decides how long a tick is).
    pub election_tick: usize,
    /// raft-rs heartbeat interval in ticks.
    pub heartbeat_tick: usize,
    /// Randomised election timeout range `[min, max)` in ticks; `None`: raft-rs's default
    /// `[election_tick, 2 * election_tick)`. The simulation pins it to keep runs replayable.
    pub election_range: Option<(usize, usize)>,
    /// Take a snapshot and compact the log after this many applied entries (etcd's
    /// snapshot-count).
    pub snapshot_count: u64,
    /// Entries kept before a snapshot's index, so slow followers catch up from the log.
    pub snapshot_catchup: u64,
    /// Distinguishes this start of the member from earlier ones (see `Origin`).
    pub incarnation: u64,
}

impl MemberConfig {
    /// A configuration with the usual defaults.
    pub fn new(id: u64, cluster_id: impl Into<String>, incarnation: u64) -> Self {
        Self {
            id,
            cluster_id: cluster_id.into(),
            election_tick: 10,
            heartbeat_tick: 1,
            election_range: None,
            snapshot_count: 10_000,
            snapshot_catchup: 5_000,
            incarnation,
        }
    }
}

enum Waiting {
    /// A proposal: answered when its entry is applied here.
    Proposal,
    /// A linearizable read waiting for its read index (see `read_rounds.rs`).
    ReadIndex(Read),
    /// A read with a read index, waiting until applied reaches it.
    ReadAt(u64, Read),
    /// Waiting for the commit index.
    Committed(u64),
    /// Waiting for the applied index.
    Applied(u64),
    /// Waiting for a leadership transfer to land.
    Transfer(u64),
    /// Waiting for a snapshot with the whole log compacted behind it, at this index.
    Compacted(u64),
    /// A membership change raft dropped (no leader yet): retried on every tick until its
    /// deadline.
    Retry(ConfProposal),
    /// An added voter, waiting until it is one: it joins as a learner and is promoted
    /// once it holds the log (see `membership.rs`); `since` is the tick it was asked at,
    /// `added` whether it has been seen as a learner.
    Promotion { id: u64, since: u64, added: bool },
}

/// A membership change with its context and sequence number.
struct ConfProposal(ConfChangeV2, Vec<u8>, u64);

/// One Raft member.
pub struct Member<S: LogStore> {
    raw: RawNode<S>,
    sm: StateMachine,
    cfg: MemberConfig,
    now_ms: i64,
    waiting: HashMap<Token, Waiting>,
    /// This incarnation's proposals not yet applied.
    proposals: Proposals,
    answers: Vec<(Token, Result<Response>)>,
    counters: Counters,
    last_snapshot: u64,
    /// Bytes of the image of the last snapshot taken here (0: none yet).
    last_image_bytes: u64,
    /// A snapshot to take, for the driver ([`Member::take_snapshot_job`]).
    snapshot_job: Option<SnapshotJob>,
    /// The index of the snapshot being written, until [`Member::snapshot_done`].
    snapshot_in_flight: Option<u64>,
    /// `pgraft_kv_compact` asked for a snapshot with the whole log compacted.
    compact_requested: bool,
    /// The index of the last snapshot with the whole log compacted behind it.
    full_compaction: u64,
    ticks: u64,
    /// Campaigns wait (the host's server cannot serve), and how many ticks they have
    /// waited since a leader was last heard; see [`Member::hold_campaigns`].
    campaign_hold: bool,
    held_ticks: usize,
    /// `election_elapsed` after the last tick: a smaller one means a leader was heard.
    last_elapsed: usize,
    /// The role at the last soft-state change, to count elections this member started.
    last_role: StateRole,
    /// The last leader known here (0: none yet), for `leader_changes`.
    last_leader: u64,
    last_heard: BTreeMap<u64, i64>,
    /// When the connection each peer opened to this member last ended.
    links_closed: BTreeMap<u64, i64>,
    election_timeout_ms: i64,
    /// Linearizable reads waiting for a read index.
    reads: read_rounds::ReadRounds,
    /// Where the last `process_ready` calls spent their time.
    ready_times: ReadyTimes,
    /// When a dropped peer message was last logged (at most one line a second).
    last_drop_logged_ms: i64,
    /// What the last dropped peer message was and why.
    last_drop: String,
    /// Messages that promise a `Ready` is durable, by its number, until the store says so.
    held: std::sync::Arc<held_messages::HeldMessages>,
    /// Term and vote of the `Ready`s whose writes are out, by number.
    hard_states_out: std::collections::VecDeque<(u64, u64, u64)>,
    /// Term and vote durable in the store (see [`MemberStatus::durable_term`]).
    durable_term_vote: (u64, u64),
    /// The tick this member last checked its format announcement (`cluster_format.rs`).
    format_checked_tick: u64,
    /// Why applying stopped (see `apply_block.rs`).
    apply_blocked: Option<String>,
    /// The tick a blocked leader last handed its leadership on.
    handed_on_tick: Option<u64>,
    /// A leader's snapshot decoded when it arrived, by index, for `process_ready`.
    incoming_state: Option<(u64, StateMachine)>,
}

/// Where `process_ready` spent its time since the last [`Member::ready_times`] call, for
/// the driver's slow-pass warning.
#[derive(Debug, Default, Clone)]
pub struct ReadyTimes {
    /// Installing a leader's snapshot.
    pub snapshot: std::time::Duration,
    /// Handing entries and hard state to the store (its I/O thread writes and syncs them;
    /// a store that writes synchronously, or a snapshot from the leader, waits here).
    pub persist: std::time::Duration,
    /// Entries handed over.
    pub persisted: usize,
    /// Applying committed entries.
    pub apply: std::time::Duration,
    /// Entries applied.
    pub applied: usize,
    /// Snapshot bookkeeping and waiters after applying.
    pub after: std::time::Duration,
}

impl std::fmt::Display for ReadyTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ready: snapshot {} ms, {} entries to the log in {} ms, {} applied in {} ms, then {} ms",
            self.snapshot.as_millis(),
            self.persisted,
            self.persist.as_millis(),
            self.applied,
            self.apply.as_millis(),
            self.after.as_millis()
        )
    }
}

fn raft_err(e: raft::Error) -> Error {
    Error::Storage(e.to_string())
}

impl<S: LogStore> Member<S> {
    /// Writes the initial state of a new cluster into an empty store: a snapshot at index
    /// 1 whose membership is `members` (`(id, address)`). Does nothing if the store
    /// already holds state, so running it again is harmless.
    pub fn bootstrap(store: &mut S, members: &[(u64, String)]) -> Result<bool> {
        let initial = store.initial_state().map_err(raft_err)?;
        if initial.initialized() || store.last_index().map_err(raft_err)? > 0 {
            return Ok(false);
        }
        let mut sm = StateMachine::default();
        for (id, address) in members {
            sm.members
                .insert(*id, crate::state_machine::MemberInfo { address: address.clone(), learner: false });
        }
        sm.applied_index = 1;
        sm.applied_term = 1;
        let cs = ConfState::from((members.iter().map(|(id, _)| *id).collect::<Vec<_>>(), Vec::<u64>::new()));
        store.apply_snapshot(&snapshot_of(1, 1, &cs, sm.encode()))?;
        Ok(true)
    }

    /// Starts a member on `store`, checking the store belongs to this cluster and node and
    /// restoring the state machine from the store's snapshot. Committed entries after the
    /// snapshot are applied again by the first `process_ready` calls.
    pub fn new(cfg: MemberConfig, mut store: S, logger: &slog::Logger) -> Result<Self> {
        store.ensure_identity(&Identity { cluster_id: cfg.cluster_id.clone(), node_id: cfg.id })?;
        // Only "no snapshot yet" starts from an empty state machine: any other failure to
        // read or decode the snapshot refuses to start, since the entries after it would
        // apply on top of nothing and this member would serve a state nobody else has.
        let sm = match store.snapshot(0, 0) {
            Ok(snap) => StateMachine::decode(&snap.data).map_err(|e| {
                Error::Storage(format!(
                    "the snapshot at index {} cannot be decoded ({e}); refusing to start on an empty state",
                    snap.get_metadata().index
                ))
            })?,
            Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)) => {
                StateMachine::default()
            }
            Err(e) => {
                return Err(Error::Storage(format!(
                    "the snapshot cannot be read ({e}); refusing to start on an empty state"
                )))
            }
        };
        let mut rc = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied: sm.applied_index,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_committed_size_per_ready: 16 << 20,
            ..Default::default()
        };
        if let Some((min, max)) = cfg.election_range {
            rc.min_election_tick = min;
            rc.max_election_tick = max;
        }
        rc.validate().map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let last_snapshot = sm.applied_index;
        let hs = store.hard_state();
        let durable_term_vote = (hs.term, hs.vote);
        let raw = RawNode::new(&rc, store, logger).map_err(raft_err)?;
        Ok(Self {
            raw,
            sm,
            cfg,
            now_ms: 0,
            waiting: HashMap::new(),
            proposals: Proposals::default(),
            answers: Vec::new(),
            counters: Counters::default(),
            last_snapshot,
            last_image_bytes: 0,
            snapshot_job: None,
            snapshot_in_flight: None,
            compact_requested: false,
            full_compaction: 0,
            ticks: 0,
            campaign_hold: false,
            held_ticks: 0,
            last_elapsed: 0,
            last_role: StateRole::Follower,
            last_leader: 0,
            last_heard: BTreeMap::new(),
            links_closed: BTreeMap::new(),
            election_timeout_ms: 1000,
            reads: read_rounds::ReadRounds::default(),
            ready_times: ReadyTimes::default(),
            last_drop_logged_ms: i64::MIN / 2,
            last_drop: String::new(),
            held: Default::default(),
            hard_states_out: std::collections::VecDeque::new(),
            durable_term_vote,
            format_checked_tick: 0,
            apply_blocked: None,
            handed_on_tick: None,
            incoming_state: None,
        })
    }

    /// Peer messages dropped as malformed since this member started (see `peer_check.rs`),
    /// and why the last one was.
    pub fn messages_dropped(&self) -> (u64, &str) {
        (self.counters.messages_dropped, &self.last_drop)
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    /// Sets the wall clock (ms since the Unix epoch) used for proposal and apply times.
    pub fn set_time(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    /// The election timeout in ms, by which "recently heard from" is judged for quorum and
    /// reachability.
    pub fn set_election_timeout_ms(&mut self, ms: u64) {
        self.election_timeout_ms = ms as i64;
    }

    /// Whether `id` was heard from within the election timeout.
    fn heard_recently(&self, id: u64) -> bool {
        id == self.cfg.id
            || self.last_heard.get(&id).is_some_and(|t| self.now_ms - t <= self.election_timeout_ms)
    }

    /// The replicated state as applied here.
    pub fn state(&self) -> &StateMachine {
        &self.sm
    }

    /// The store.
    pub fn store(&self) -> &S {
        self.raw.store()
    }

    /// Whom the store wakes when a write became durable (see [`LogStore::set_waker`]).
    pub fn set_log_waker(&mut self, waker: crate::storage::Waker) {
        self.raw.mut_store().set_waker(waker);
    }

    /// The messages that wait for the log's writes, for the store's waker to send (see
    /// `held_messages.rs`).
    pub fn held_messages(&self) -> std::sync::Arc<held_messages::HeldMessages> {
        std::sync::Arc::clone(&self.held)
    }

    /// The current role.
    pub fn role(&self) -> Role {
        Role::of(self.raw.raft.state)
    }

    /// The leader this member knows of (0: none).
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The addresses of every member, from the replicated membership.
    pub fn addresses(&self) -> BTreeMap<u64, String> {
        self.sm.members.iter().map(|(id, m)| (*id, m.address.clone())).collect()
    }

    /// Whether a majority is reachable: for a leader, a quorum of voters was recently
    /// active; for a follower, a leader is known.
    pub fn quorum_active(&self) -> bool {
        match self.raw.raft.state {
            StateRole::Leader => {
                // Judged by when each voter was last heard from, not by raft's
                // recent_active flags, which check-quorum clears every election timeout.
                let voters: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
                let active = voters.iter().filter(|id| self.heard_recently(**id)).count();
                active > voters.len() / 2
            }
            _ => self.raw.raft.leader_id != 0,
        }
    }

    /// Advances the logical clock by one tick; sends again proposals that seem lost (see
    /// `proposals.rs`) and re-asks reads that got no read index.
    pub fn tick(&mut self) {
        self.hold_campaign_round();
        self.raw.tick();
        self.last_elapsed = self.raw.raft.election_elapsed;
        self.ticks += 1;
        self.hand_leadership_on();
        self.announce_format();
        self.retry_dropped();
        self.promote_caught_up_learners();
        self.resolve_promotions();
        // raft-rs drops a read index request silently when no leader is known (and a new
        // leader forgets what its predecessor had pending): ask again for a round that has
        // waited an election timeout without a read index.
        if self.read_index_ready() {
            if let Some(round) = self.reads.overdue(self.ticks, self.cfg.election_tick as u64) {
                let ctx = self.read_ctx(round);
                self.raw.read_index(ctx);
            }
        }
        self.start_read_round();
    }

    /// Whether raft can take a read index request now: not on a leader that has not yet
    /// committed an entry of its term (raft-rs would drop it; see `read_rounds.rs`).
    fn read_index_ready(&self) -> bool {
        self.raw.raft.state != StateRole::Leader || self.raw.raft.commit_to_current_term()
    }

    /// Steps the followers' ReadIndex requests held while this leader had not committed in
    /// its term, once it has (or drops them if it no longer leads: their members ask again).
    fn release_held_reads(&mut self) {
        if !self.read_index_ready() {
            return;
        }
        let held = self.reads.take_held();
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        for m in held {
            if let Err(e) = self.step_raft(m) {
                log::warn!("a held read index request: {e}");
            }
        }
    }

    /// While `hold`, this member lets others win elections: when its election timeout
    /// runs out it waits up to [`CAMPAIGN_HOLD_ROUNDS`] more election timeouts before it
    /// campaigns. The host sets it while its PostgreSQL server cannot serve, so a member
    /// whose server can becomes leader (and primary) first; a cluster whose members all
    /// hold still elects a leader, later, and its KV store stays available. It still votes
    /// and follows, and a leadership transfer to it is not held.
    pub fn hold_campaigns(&mut self, hold: bool) {
        if hold != self.campaign_hold {
            log::info!(
                "{}",
                if hold {
                    "campaigns held: this member's server cannot serve"
                } else {
                    "campaigns no longer held"
                }
            );
        }
        self.campaign_hold = hold;
    }

    /// Holds one tick's campaign back, if campaigns are held. The clock is set so that
    /// raft-rs's tick does not reach the (randomised) election timeout, but stays past the
    /// plain election timeout: the lease on the lost leader is over, so this member grants
    /// the others' pre-votes and votes while it waits.
    fn hold_campaign_round(&mut self) {
        let max = self.cfg.election_range.map_or(2 * self.raw.raft.election_timeout(), |(_, max)| max);
        let r = &mut self.raw.raft;
        if r.election_elapsed < self.last_elapsed || r.state == StateRole::Leader {
            // A leader was heard (or this member leads): a new wait starts.
            self.held_ticks = 0;
        }
        let et = r.election_timeout();
        let limit = CAMPAIGN_HOLD_ROUNDS as usize * et;
        let hold = self.campaign_hold || self.apply_blocked.is_some();
        if !hold || r.state == StateRole::Leader || self.held_ticks >= limit {
            return;
        }
        if r.election_elapsed + 1 < r.randomized_election_timeout() {
            return;
        }
        // Room between the lease and the campaign: at least two ticks past the election
        // timeout (raft-rs draws it from [et, max)).
        if r.randomized_election_timeout() < et + 2 && et + 2 < max {
            r.set_randomized_election_timeout(et + 2);
        }
        r.election_elapsed = r.randomized_election_timeout().saturating_sub(2).max(et);
        self.held_ticks += 1;
    }

    /// Asks raft for a read index for the queued reads, unless a round is out (or this
    /// member leads and cannot take one yet).
    fn start_read_round(&mut self) {
        if !self.read_index_ready() {
            return;
        }
        if let Some(round) = self.reads.start(self.ticks) {
            let ctx = self.read_ctx(round);
            self.raw.read_index(ctx);
        }
    }

    /// The store, to drive it where a test models its I/O (the simulation finishes a
    /// [`crate::storage::MemStore`]'s writes at random).
    pub(crate) fn store_mut(&mut self) -> &mut S {
        self.raw.mut_store()
    }

    /// Whether raft has more for [`Member::process_ready`] (a read round answered at once
    /// by a one-member cluster, say).
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Notes how long one pass of the driver's loop kept the Raft thread (see
    /// [`Counters::longest_pass_ms`]).
    pub fn record_pass(&mut self, took: std::time::Duration) {
        self.counters.longest_pass_ms = self.counters.longest_pass_ms.max(took.as_millis() as u64);
    }

    /// Where `process_ready` spent its time since the last call (then starts counting
    /// again).
    pub fn ready_times(&mut self) -> ReadyTimes {
        std::mem::take(&mut self.ready_times)
    }

    /// Hands a peer's message to raft.
    pub fn step(&mut self, mut m: Message) -> Result<()> {
        self.counters.messages_received += 1;
        if let Some(n) = self.counters.received_by_type.get_mut(m.get_msg_type() as usize) {
            *n += 1;
        }
        if let Err(why) = self.check_peer_message(&mut m) {
            self.drop_message(&m, &why);
            return Ok(());
        }
        self.last_heard.insert(m.from, self.now_ms);
        if self.withholds_vote(&m) {
            self.counters.votes_withheld += 1;
            log::debug!(
                "node {} asked for a vote at term {} (log at {}): not answered, this member's log is empty",
                m.from,
                m.term,
                m.index
            );
            return Ok(());
        }
        let last = self.raw.raft.raft_log.last_index();
        if m.get_msg_type() == raft::prelude::MessageType::MsgHeartbeat && m.commit > last {
            // The leader counts entries this member no longer has: its Raft data was lost
            // while it stayed a member. raft-rs would panic on this heartbeat (and again on
            // every restart); commit no further than the log goes, and say what happened.
            log::error!(
                "leader {} says this member holds the log up to {}, but it ends at {}: this member's Raft data was lost; remove it and add it back",
                m.from,
                m.commit,
                last
            );
            m.commit = last;
        }
        if m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
            match self.snapshot_readable(&m) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(why) => {
                    self.drop_message(&m, &why);
                    return Ok(());
                }
            }
        }
        if m.get_msg_type() == raft::prelude::MessageType::MsgReadIndex && !self.read_index_ready() {
            if !self.reads.hold(m) {
                log::warn!(
                    "too many read index requests wait for this new leader's first commit; one dropped"
                );
            }
            return Ok(());
        }
        self.step_raft(m)
    }

    /// Counts a peer's message dropped as malformed, and logs why (at most once a second).
    fn drop_message(&mut self, m: &Message, why: &str) {
        self.counters.messages_dropped += 1;
        let kind = message_type_name(m.get_msg_type() as usize);
        self.last_drop = format!("a {kind} from node {} (term {}): {why}", m.from, m.term);
        if self.now_ms - self.last_drop_logged_ms >= 1_000 {
            self.last_drop_logged_ms = self.now_ms;
            log::warn!("dropped {} ({} dropped so far)", self.last_drop, self.counters.messages_dropped);
        }
    }

    fn step_raft(&mut self, m: Message) -> Result<()> {
        match self.raw.step(m) {
            Ok(()) => Ok(()),
            // Messages from unknown peers or stale terms are part of normal operation.
            Err(raft::Error::StepPeerNotFound | raft::Error::StepLocalMsg | raft::Error::ProposalDropped) => {
                Ok(())
            }
            Err(e) => Err(Error::InvalidArgument(format!("peer message refused: {e}"))),
        }
    }

    /// Whether `m` asks for a vote this member must not give: its log is empty (a member
    /// started to be added to a running cluster, that no leader has given a snapshot
    /// yet).
    ///
    /// A vote promises that the voter's durable log is no more advanced than the
    /// candidate's, and never to vote otherwise in that term. A member whose Raft data was
    /// wiped and that comes back under the same id (removed, wiped, added again; or a
    /// broken disk replaced) remembers neither its old log nor its old votes: members that
    /// have not applied its removal still count it, and its vote could elect a candidate
    /// missing entries the member had helped commit, which the new leader then overwrites
    /// (found by the torture run and the simulation). Raft alone cannot tell a new member
    /// from one that forgot, so an empty member votes for nobody until a leader has given
    /// it a log. The cost: a voter added to a running cluster cannot help elect a leader
    /// until it received its first snapshot (which is why `pgraft_add_node` adds a learner
    /// first where it can).
    fn withholds_vote(&self, m: &Message) -> bool {
        use raft::prelude::MessageType::{MsgRequestPreVote, MsgRequestVote};
        matches!(m.get_msg_type(), MsgRequestVote | MsgRequestPreVote)
            && self.raw.raft.raft_log.last_index() == 0
    }

    /// Tells raft how sending a snapshot to `to` ended: on failure the leader probes the
    /// follower again instead of waiting for a snapshot that will never arrive.
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        let status = if delivered { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        self.raw.report_snapshot(to, status);
    }

    /// The connection peer `id` had opened to this member ended. When `id` is the leader
    /// this member follows, the leader's lease is over here: this member grants pre-votes
    /// at once and campaigns when its randomized election timeout, less one election
    /// timeout, has passed (0 to 1 election timeout from now, instead of 1 to 2 from the
    /// last heartbeat). A leader whose process dies closes every follower's connection at
    /// once, so the followers elect a new leader about an election timeout sooner: with
    /// failover on, that is a failover a second sooner at the default timers. Safety does
    /// not depend on it; a leader that is alive reconnects and its next heartbeat sets the
    /// clock back, and a follower that alone lost the connection gets no pre-vote from the
    /// others, whose leases still run.
    pub fn peer_closed(&mut self, id: u64) {
        // Published (`links_closed_ms`): the follower at the other end took the same
        // event as the end of this leader's lease and may already vote for another.
        self.links_closed.insert(id, self.now_ms);
        let r = &mut self.raw.raft;
        if r.state != StateRole::Follower || r.leader_id != id {
            return;
        }
        let et = r.election_timeout();
        if r.election_elapsed < et {
            r.election_elapsed = et;
            log::info!("the connection from leader {id} ended: its lease is over here, electing sooner");
        }
    }

    /// Tells raft that a message to `to` could not be sent; the leader slows down its
    /// replication to that peer to probing.
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// The context of a read index request for round `round`: unique across members and
    /// restarts, because the leader keys pending reads by it (two members using the same
    /// bytes would have one of their reads dropped).
    fn read_ctx(&self, round: u64) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(24);
        ctx.extend(self.cfg.id.to_le_bytes());
        ctx.extend(self.cfg.incarnation.to_le_bytes());
        ctx.extend(round.to_le_bytes());
        ctx
    }

    /// The round of one of our own read index requests.
    fn round_of_read(&self, ctx: &[u8]) -> Option<u64> {
        let word =
            |i: usize| ctx.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        (word(0)? == self.cfg.id && word(1)? == self.cfg.incarnation).then_some(word(2)?)
    }

    /// Forgets a request whose deadline passed; a late result is dropped.
    pub fn cancel(&mut self, token: Token) {
        self.waiting.remove(&token);
        self.proposals.forget_token(token);
    }

    /// Requests still waiting.
    pub fn pending(&self) -> usize {
        self.waiting.len()
    }

    /// Answers ready to hand back.
    pub fn take_answers(&mut self) -> Vec<(Token, Result<Response>)> {
        std::mem::take(&mut self.answers)
    }

    fn answer(&mut self, token: Token, r: Result<Response>) {
        self.waiting.remove(&token);
        if token != NO_CLIENT {
            self.answers.push((token, r));
        }
    }

    /// True once this member has applied a configuration without itself. A member that
    /// has no configuration yet (joining, waiting for its first snapshot) is not removed.
    fn removed(&self) -> bool {
        let conf = self.raw.raft.prs().conf();
        let id = self.cfg.id;
        let voters = conf.voters().ids();
        !voters.is_empty()
            && !voters.contains(id)
            && !conf.learners().contains(&id)
            && !conf.learners_next().contains(&id)
    }

    fn not_leader(&self) -> Error {
        let id = self.raw.raft.leader_id;
        Error::NotLeader {
            leader_id: (id != 0).then_some(id),
            leader_address: self.sm.members.get(&id).map(|m| m.address.clone()),
        }
    }

    /// The origin of a new proposal and its watermark (see [`crate::sessions`]).
    fn next_origin(&mut self) -> (Origin, u64) {
        let (seq, low) = self.proposals.next();
        (Origin { node: self.cfg.id, incarnation: self.cfg.incarnation, seq }, low)
    }

    /// Accepts a client request. The answer arrives through [`Member::take_answers`], at
    /// once for reads of local state and refusals, later for anything that waits on the
    /// log.
    pub fn submit(&mut self, token: Token, req: Request) {
        let needs_cluster = matches!(
            req,
            Request::Propose(_) | Request::ProposeInTerm { .. } | Request::Read(_, Consistency::Linearizable)
        );
        if needs_cluster && self.removed() {
            // Without this the request would wait for a leader that no longer talks to
            // this member, and end in a timeout that tells the client nothing.
            return self.answer(token, Err(Error::Removed(self.cfg.id)));
        }
        let needs_apply = matches!(
            req,
            Request::Propose(_)
                | Request::ProposeInTerm { .. }
                | Request::Read(..)
                | Request::WaitApplied(_)
                | Request::CompactLog
        );
        if needs_apply && self.apply_blocked.is_some() {
            let e = self.blocked_error();
            return self.answer(token, Err(e));
        }
        match req {
            Request::Propose(body) => {
                if let Err(e) = validate_body(&body).and_then(|()| self.check_format(&body)) {
                    return self.answer(token, Err(e));
                }
                self.waiting.insert(token, Waiting::Proposal);
                self.propose_body(token, body);
            }
            Request::ProposeInTerm { term, body } => {
                let current = self.raw.raft.term;
                if term != current {
                    let e = format!("term {term} is not the current term {current}");
                    return self.answer(token, Err(Error::InvalidArgument(e)));
                }
                self.submit(token, Request::Propose(body))
            }
            Request::Read(read, Consistency::Serializable) => {
                let r = self.read(&read, self.sm.applied_index);
                self.answer(token, r);
            }
            Request::Read(read, Consistency::Linearizable) => {
                self.waiting.insert(token, Waiting::ReadIndex(read));
                self.reads.queue(token);
                self.start_read_round();
            }
            Request::AddMember { id, address, learner } => {
                self.change_membership(token, id, Some(address), learner)
            }
            Request::PromoteLearner { id } => self.change_membership(token, id, None, false),
            Request::RemoveMember { id } => self.change_membership(token, id, None, true),
            Request::TransferLeader { to } => {
                if !self.raw.raft.prs().conf().voters().contains(to) {
                    return self.answer(token, Err(Error::UnknownMember(to)));
                }
                if self.raw.raft.leader_id == to {
                    return self.answer(token, Ok(Response::Reached(self.raw.raft.term)));
                }
                self.waiting.insert(token, Waiting::Transfer(to));
                self.raw.transfer_leader(to);
            }
            Request::WaitCommitted(i) => {
                self.waiting.insert(token, Waiting::Committed(i));
                self.resolve_waiters();
            }
            Request::WaitApplied(i) => {
                self.waiting.insert(token, Waiting::Applied(i));
                self.resolve_waiters();
            }
            Request::CompactLog => {
                let at = self.sm.applied_index;
                if self.full_compaction < at {
                    self.compact_requested = true;
                }
                self.waiting.insert(token, Waiting::Compacted(at));
                self.maybe_snapshot();
                self.resolve_waiters();
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Hands a normal entry to raft for the first time and keeps it until it is applied.
    /// Proposes `body` as an entry of this member's next origin; `token` (or
    /// [`NO_CLIENT`]) hears the outcome.
    fn propose_body(&mut self, token: Token, body: Body) {
        let (origin, low) = self.next_origin();
        let data = Proposal { origin, time_ms: self.now_ms, body, low }.encode();
        self.propose_entry(token, origin.seq, data);
    }

    fn propose_entry(&mut self, token: Token, seq: u64, data: Vec<u8>) {
        let (term, leader) = (self.raw.raft.term, self.is_leader());
        match self.raw.propose(vec![], data.clone()) {
            Ok(()) => {
                self.counters.proposals += 1;
                self.proposals.open(seq, token, Some(data), term, self.ticks, leader);
            }
            // No leader yet: sent as soon as one is known.
            Err(raft::Error::ProposalDropped) => {
                self.proposals.open(seq, token, Some(data), 0, self.ticks, leader)
            }
            Err(e) => self.answer(token, Err(Error::InvalidArgument(e.to_string()))),
        }
    }

    fn propose_conf(&mut self, token: Token, p: ConfProposal) {
        match self.raw.propose_conf_change(p.1.clone(), p.0.clone()) {
            Ok(()) => self.counters.proposals += 1,
            Err(raft::Error::ProposalDropped) => {
                self.waiting.insert(token, Waiting::Retry(p));
            }
            Err(e) => {
                self.proposals.close(p.2);
                self.answer(token, Err(Error::InvalidArgument(e.to_string())));
            }
        }
    }

    /// Sends again what raft refused while no leader was known, and normal proposals that
    /// seem lost.
    fn retry_dropped(&mut self) {
        if self.raw.raft.leader_id == 0 {
            return;
        }
        let mut tokens: Vec<Token> =
            self.waiting.iter().filter(|(_, w)| matches!(w, Waiting::Retry(_))).map(|(t, _)| *t).collect();
        tokens.sort_unstable();
        for t in tokens {
            if let Some(Waiting::Retry(p)) = self.waiting.remove(&t) {
                self.waiting.insert(t, Waiting::Proposal);
                self.propose_conf(t, p);
            }
        }
        let term = self.raw.raft.term;
        for (seq, data) in self.proposals.due(term, self.ticks, self.cfg.election_tick as u64) {
            let leader = self.is_leader();
            match self.raw.propose(vec![], data) {
                Ok(()) => {
                    self.counters.proposals += 1;
                    self.proposals.sent_again(seq, term, self.ticks, leader);
                }
                Err(raft::Error::ProposalDropped) => self.proposals.sent_again(seq, 0, self.ticks, leader),
                Err(e) => {
                    if let Some(token) = self.proposals.close(seq) {
                        self.answer(token, Err(Error::InvalidArgument(e.to_string())));
                    }
                }
            }
        }
    }

    fn read(&self, read: &Read, read_index: u64) -> Result<Response> {
        let kv = &self.sm.kv;
        let compacted =
            |e: crate::kv::Compacted| Error::Compacted { requested: e.requested, compacted: e.compacted };
        match read {
            Read::Get { key, revision } => {
                kv.get(key, *revision).map(|v| Response::Kvs(v.into_iter().collect())).map_err(compacted)
            }
            Read::Range { prefix, revision, limit } => {
                kv.range(prefix, *revision, *limit).map(Response::Kvs).map_err(compacted)
            }
            Read::Hash { revision } => kv
                .hash(*revision)
                .map(|hash| Response::Hash { hash, revision: revision.unwrap_or(kv.revision()) })
                .map_err(compacted),
            Read::Stats => Ok(Response::KvFigures(KvFigures {
                keys: kv.live_keys() as u64,
                history: kv.history_len() as u64,
                tombstones: kv.tombstones() as u64,
                size_bytes: kv.size_bytes() as u64,
                revision: kv.revision(),
                compact_revision: kv.compact_revision(),
                stats: kv.stats(),
                applied_index: self.sm.applied_index,
            })),
            Read::Barrier => Ok(Response::Reached(read_index)),
            Read::Changes { prefix, after, limit } => kv
                .changes(prefix, *after, *limit)
                .map(|changes| Response::Changes { changes, revision: kv.revision() })
                .map_err(compacted),
        }
    }

    fn complete(&mut self, origin: Origin, r: Result<Response>) {
        if origin.node != self.cfg.id || origin.incarnation != self.cfg.incarnation {
            return;
        }
        if let Some(token) = self.proposals.close(origin.seq) {
            if self.waiting.contains_key(&token) {
                self.answer(token, r);
            }
        }
    }

    fn resolve_waiters(&mut self) {
        let commit = self.raw.raft.raft_log.committed;
        let applied = self.sm.applied_index;
        let leader = self.raw.raft.leader_id;
        let term = self.raw.raft.term;
        let mut ready = Vec::new();
        for (token, w) in &self.waiting {
            match w {
                Waiting::ReadAt(i, _) | Waiting::Applied(i) if *i <= applied => ready.push(*token),
                Waiting::Committed(i) if *i <= commit => ready.push(*token),
                Waiting::Transfer(to) if *to == leader => ready.push(*token),
                Waiting::Compacted(i) if *i <= self.full_compaction => ready.push(*token),
                _ => {}
            }
        }
        ready.sort_unstable();
        for token in ready {
            let r = match self.waiting.remove(&token) {
                Some(Waiting::ReadAt(i, read)) => self.read(&read, i),
                Some(Waiting::Applied(_)) => Ok(Response::Reached(applied)),
                Some(Waiting::Committed(_)) => Ok(Response::Reached(commit)),
                Some(Waiting::Transfer(_)) => Ok(Response::Reached(term)),
                Some(Waiting::Compacted(i)) => Ok(Response::Reached(i)),
                _ => continue,
            };
            self.answers.push((token, r));
        }
    }

    /// The raw bytes of a `Raw` entry at `index`, or a description of any other entry, while
    /// the log still holds it.
    pub fn entry(&self, index: u64) -> Result<Option<Entry>> {
        let s = self.raw.store();
        let first = s.first_index().map_err(raft_err)?;
        let last = s.last_index().map_err(raft_err)?;
        if index < first || index > last {
            return Ok(None);
        }
        let mut e =
            s.entries(index, index + 1, None, raft::GetEntriesContext::empty(false)).map_err(raft_err)?;
        Ok(e.pop())
    }
}

fn validate_body(body: &Body) -> Result<()> {
    match body {
        Body::Kv(crate::kv::KvOp::Put { key, .. })
        | Body::Kv(crate::kv::KvOp::Delete { key, .. })
        | Body::Kv(crate::kv::KvOp::CompareAndSwap { key, .. })
            if key.is_empty() =>
        {
            Err(Error::InvalidArgument("the key must not be empty".into()))
        }
        _ => Ok(()),
    }
}
