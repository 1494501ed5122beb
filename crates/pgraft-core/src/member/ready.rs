//! A `Ready` from raft-rs: what is written, sent and applied, and in which order.
//!
//! ```text
//!  ready() ──▶ a leader's messages: sent at once (Raft thesis 10.2.1)
//!          ──▶ entries + hard state: handed to the store (persist_async), readable at once
//!          ──▶ messages that promise them (votes, append answers): held by Ready number
//!          ──▶ committed entries: applied (raft-rs gives only entries durable here)
//!  the store's I/O thread synced N ──▶ held messages ≤ N leave from there (`held_messages.rs`)
//!  the store reports number N durable ──▶ on_persist_ready(N), what is still held ≤ N leaves
//! ```
//!
//! The Raft thread never waits for a sync: it steps messages, ticks and stages the next
//! `Ready`s while the store's I/O thread writes, which then writes all of them with one
//! sync. Only a snapshot from the leader is installed synchronously, after every write
//! before it is durable.

use std::time::Instant;

use raft::prelude::{Entry, EntryType, Message};
use raft::GetEntriesContext;
use raft::StateRole;

use super::Member;
use crate::command::Proposal;
use crate::error::{Error, Result};
use crate::request::Response;
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

/// Whether a message a follower or candidate sends says something about what its log or
/// hard state holds, so must wait until that is durable. raft-rs holds all of a
/// non-leader's messages until the write; these do not need to:
/// - a heartbeat answer claims nothing about the log (a leader that sees it sends the
///   entries the follower lacks by the append path), only that the sender is in the
///   leader's term now, which is true whether or not that term is durable yet;
/// - a forwarded proposal or read request asks the leader, it promises nothing;
/// - a pre-vote and its answer record no vote and no term.
///
/// Votes (a candidate's request rests on its own vote), vote answers and append answers
/// do, and so does anything not named here.
pub(crate) fn promises_durability(m: &Message) -> bool {
    use raft::prelude::MessageType as T;
    !matches!(
        m.get_msg_type(),
        T::MsgHeartbeatResponse
            | T::MsgPropose
            | T::MsgReadIndex
            | T::MsgRequestPreVote
            | T::MsgRequestPreVoteResponse
    )
}

impl<S: LogStore> Member<S> {
    /// Persists and applies what raft has ready, in the order that keeps every promise:
    /// returns the messages to send now (see [`Member::process_ready_sending`]).
    pub fn process_ready(&mut self) -> Result<Vec<Message>> {
        let mut early = Vec::new();
        let out = self.process_ready_sending(&mut |m| early.push(m))?;
        early.extend(out);
        Ok(early)
    }

    /// [`Member::process_ready`], handing a leader's messages that do not depend on its own
    /// disk write to `send_now` before that write (Raft thesis 10.2.1): its followers
    /// write and answer while it syncs, so a commit costs one sync's time, not two in
    /// series. Returns the messages that may leave only now: those whose writes the store
    /// has made durable since the last call. Call it again while [`Member::has_ready`],
    /// and when the store's waker says a write became durable.
    pub fn process_ready_sending(&mut self, send_now: &mut dyn FnMut(Message)) -> Result<Vec<Message>> {
        // Released messages were counted when held.
        let mut out = Vec::new();
        if let Some(n) = self.raw.mut_store().poll_durable()? {
            self.persisted(n, &mut out);
        }
        if !self.raw.has_ready() {
            self.resolve_waiters();
            return Ok(out);
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            if ss.leader_id != 0 && ss.leader_id != self.last_leader {
                self.counters.leader_changes += 1;
            }
            if ss.leader_id != 0 {
                self.last_leader = ss.leader_id;
            }
            // An election this member started: it became a candidate, or went straight to
            // leader (a lone voter wins its election within one step, never seen as candidate).
            let now = ss.raft_state;
            let started = match now {
                StateRole::Candidate => self.last_role != StateRole::Candidate,
                StateRole::Leader => matches!(self.last_role, StateRole::Follower | StateRole::PreCandidate),
                _ => false,
            };
            if started {
                self.counters.elections += 1;
            }
            self.last_role = now;
        }
        // 1. A leader's own messages leave before its disk write: it counts itself in the
        //    quorum only once its write is durable (Raft thesis 10.2.1). raft-rs hands
        //    them out here only as a leader; a follower's all wait for the write.
        for m in rd.take_messages() {
            self.count_sent(&m);
            send_now(m);
        }
        let number = rd.number();
        let started = Instant::now();
        let durable = if rd.snapshot().is_empty() {
            // 2. New entries, then term/vote/commit, in one write on the store's I/O
            //    thread; no sync when only the commit index moved.
            let durable =
                self.raw.mut_store().persist_async(number, rd.entries(), rd.hs(), rd.must_sync())?;
            self.ready_times.persist += started.elapsed();
            durable
        } else {
            // 2'. A snapshot from the leader replaces the state before anything after it,
            //     once everything written before it is durable, synchronously.
            self.raw.mut_store().flush()?;
            let snap = rd.snapshot().clone();
            let index = snap.get_metadata().index;
            // Decoded when it arrived (`snapshot_readable`), before anything is written.
            let sm = match self.incoming_state.take() {
                Some((at, sm)) if at == index => sm,
                _ => StateMachine::decode(&snap.data).map_err(|e| Error::Storage(e.to_string()))?,
            };
            self.raw.mut_store().apply_snapshot(&snap)?;
            self.sm = sm;
            self.last_snapshot = self.sm.applied_index;
            self.counters.snapshots_installed += 1;
            self.ready_times.snapshot += started.elapsed();
            let started = Instant::now();
            self.raw.mut_store().persist(rd.entries(), rd.hs(), rd.must_sync())?;
            self.ready_times.persist += started.elapsed();
            Some(number)
        };
        self.ready_times.persisted += rd.entries().len();
        if let Some(hs) = rd.hs() {
            self.hard_states_out.push_back((number, hs.term, hs.vote));
        }
        // 3. Committed entries: raft-rs hands out only entries durable here.
        let committed = rd.take_committed_entries();
        // 4. Messages that promise what this Ready wrote leave once it is durable; the
        //    others leave now (a slow disk must not hold a follower's heartbeat answers, or
        //    its leader would lose its quorum to a disk).
        let (promised, free): (Vec<Message>, Vec<Message>) =
            rd.take_persisted_messages().into_iter().partition(promises_durability);
        self.count_all(&free);
        out.extend(free);
        if !promised.is_empty() {
            self.count_all(&promised);
            out.extend(self.held.hold(number, promised));
        }
        for rs in rd.take_read_states() {
            let Some(round) = self.round_of_read(&rs.request_ctx) else { continue };
            // A re-asked round can get two read states; only the first counts (`finish`
            // answers a round once), and a read whose client gave up is gone.
            for token in self.reads.finish(round) {
                if let Some(super::Waiting::ReadIndex(read)) = self.waiting.remove(&token) {
                    self.waiting.insert(token, super::Waiting::ReadAt(rs.index, read));
                }
            }
        }
        self.raw.advance_append_async(rd);
        if let Some(n) = durable {
            self.persisted(n, &mut out);
        }
        let started = Instant::now();
        self.ready_times.applied += committed.len();
        self.apply_entries(committed)?;
        match self.apply_blocked {
            None => self.raw.advance_apply(),
            // Only what was applied: raft-rs hands the rest out once, and a restart on a
            // build that reads them applies them from the log.
            Some(_) => {
                let log = &self.raw.raft.raft_log;
                let applied = self.sm.applied_index.min(log.committed).min(log.persisted);
                if applied > log.applied {
                    self.raw.advance_apply_to(applied);
                }
            }
        }
        self.apply_committed_ahead()?;
        self.ready_times.apply += started.elapsed();
        let started = Instant::now();
        self.maybe_snapshot();
        self.snapshot_for_readded_peers();
        self.resolve_waiters();
        self.release_held_reads();
        // The next round, for reads that arrived while one was out. Its messages leave with
        // the next Ready (raft-rs wants a follower's messages empty at `advance`); the
        // driver asks again while `has_ready`.
        self.start_read_round();
        self.ready_times.after += started.elapsed();
        Ok(out)
    }

    /// The store made every `Ready` up to `number` durable: raft learns it (a leader counts
    /// itself towards the commit, a follower's log may be applied), and the messages that
    /// waited for those writes join `out`.
    fn persisted(&mut self, number: u64, out: &mut Vec<Message>) {
        // raft-rs unwraps a leader's own progress when told its entries are durable; a
        // leader that applied its own removal has none, and is leaving (the simulation
        // found this when it applied before `advance`): it is not told.
        let raft = &self.raw.raft;
        let removed_leader = raft.state == StateRole::Leader && raft.prs().get(self.cfg.id).is_none();
        if !removed_leader {
            self.raw.on_persist_ready(number);
        }
        while self.hard_states_out.front().is_some_and(|(n, _, _)| *n <= number) {
            if let Some((_, term, vote)) = self.hard_states_out.pop_front() {
                self.durable_term_vote = (term, vote);
            }
        }
        out.extend(self.held.release(number));
    }

    /// Applies the committed entries this member's own log has not made durable yet.
    /// raft-rs hands out only entries durable here, but committed means durable on a
    /// quorum: the entry can no longer be lost, and applying it (the state machine is in
    /// memory, rebuilt from the durable log at start) promises nothing about this member's
    /// log. etcd applies committed entries while its own write is out, too. So a write
    /// proposed through a follower is answered once the leader's commit reaches it, not
    /// after the follower's own sync as well, and a leader answers on its followers'
    /// acknowledgements without waiting for its own disk. Membership changes are left to
    /// raft-rs's order (raft-rs applies them itself): this stops at the first.
    fn apply_committed_ahead(&mut self) -> Result<()> {
        let log = &self.raw.raft.raft_log;
        let (from, to) = (self.sm.applied_index.max(log.applied) + 1, log.committed);
        if self.apply_blocked.is_some() || to <= log.persisted || from > to {
            return Ok(()); // nothing past what raft-rs hands out itself
        }
        let Ok(entries) = log.slice(from, to + 1, None, GetEntriesContext::empty(false)) else {
            return Ok(()); // compacted or replaced meanwhile: raft-rs's path applies it
        };
        let normal: Vec<Entry> =
            entries.into_iter().take_while(|e| e.get_entry_type() == EntryType::EntryNormal).collect();
        self.ready_times.applied += normal.len();
        self.apply_entries(normal)
    }

    fn count_all(&mut self, out: &[Message]) {
        for m in out {
            self.count_sent(m);
        }
    }

    pub(super) fn count_sent(&mut self, m: &Message) {
        self.counters.messages_sent += 1;
        if let Some(n) = self.counters.sent_by_type.get_mut(m.get_msg_type() as usize) {
            *n += 1;
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<()> {
        for e in entries {
            if self.apply_blocked.is_some() {
                break; // nothing after an entry that cannot be read
            }
            if e.index <= self.sm.applied_index {
                continue; // already in the state machine (restored from a snapshot)
            }
            self.counters.applied_entries += 1;
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {
                    self.sm.apply_empty(e.index, e.term, self.now_ms)
                }
                EntryType::EntryNormal => {
                    let p = match Proposal::decode(&e.data) {
                        Ok(p) => p,
                        Err(err) => {
                            self.counters.applied_entries -= 1;
                            self.block_apply(format!("entry {} cannot be read ({err})", e.index));
                            break;
                        }
                    };
                    // `None`: a copy of a proposal already applied, answered then.
                    if let Some(outcome) = self.sm.apply(e.index, e.term, &p, self.now_ms) {
                        self.complete(p.origin, Ok(Response::Applied { index: e.index, outcome }));
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => self.apply_conf_change(&e)?,
            }
        }
        Ok(())
    }
}
