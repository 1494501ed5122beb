//! Membership changes: proposing them (leader only) and applying them.

use prost::Message as _;
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::StateRole;
use raft_proto::ConfChangeI as _;

use super::{ConfProposal, Member, Token, Waiting, NO_CLIENT};
use crate::command::ConfContext;
use crate::error::{Error, Result};
use crate::request::Response;
use crate::state_machine::{MembershipChange, Outcome};
use crate::storage::LogStore;

/// The context of a `ConfChangeV2` that adds a learner to become a voter.
const VOTER_TO_BE: &[u8] = b"voter-to-be";

/// How many election timeouts an add waits for its member's promotion before it answers
/// (the member is then a learner still catching up, promoted later).
const PROMOTION_WAIT_TIMEOUTS: u64 = 2;

impl<S: LogStore> Member<S> {
    /// Membership changes: `address` set = add (voter or learner by `flag`), `None` with
    /// `flag` = remove, `None` without = promote.
    ///
    /// A voter joins as a learner marked to become a voter, and the leader promotes it
    /// once it holds the log. A member with an empty log votes for nobody
    /// (`Member::withholds_vote`), so a voter added empty would, until its first snapshot,
    /// count in every quorum without being able to help form one: a leader lost in that
    /// window would leave a two-member cluster grown to three, or a three-member one whose
    /// other follower is down, without a leader for good. As a learner it counts in no
    /// quorum until it can vote. The mark is replicated (`StateMachine::voters_to_be`), so
    /// a new leader carries on. The request is answered once the member is a voter, or
    /// after [`PROMOTION_WAIT_TIMEOUTS`] election timeouts as a learner still catching up
    /// (a member added before it is started, as etcd's `member add` allows).
    pub(super) fn change_membership(&mut self, token: Token, id: u64, address: Option<String>, flag: bool) {
        if self.raw.raft.state != StateRole::Leader {
            let e = self.not_leader();
            return self.answer(token, Err(e));
        }
        if id == 0 {
            return self
                .answer(token, Err(Error::InvalidArgument("node id 0 is reserved; ids start at 1".into())));
        }
        let conf = self.raw.raft.prs().conf();
        let is_voter = conf.voters().contains(id);
        let is_learner = conf.learners().contains(&id);
        match (&address, flag) {
            (Some(addr), learner) => {
                if let Some(m) = self.sm.members.get(&id) {
                    if (is_voter || is_learner) && m.address == *addr && m.learner == learner {
                        return self.answer(token, Ok(Response::Unchanged));
                    }
                    if (is_voter || is_learner) && m.address != *addr {
                        return self.answer(
                            token,
                            Err(Error::InvalidArgument(format!(
                                "node {id} is already a member at {}; remove it first to change its address",
                                m.address
                            ))),
                        );
                    }
                }
                if learner {
                    return self.propose_membership(
                        token,
                        ConfChangeType::AddLearnerNode,
                        id,
                        addr.clone(),
                        false,
                    );
                }
                if is_learner {
                    return self.promote_now(token, id);
                }
                // The learner step: nobody waits for it; the client waits for the promotion.
                match self.propose_for(NO_CLIENT, ConfChangeType::AddLearnerNode, id, addr.clone(), true) {
                    Ok(()) => {
                        self.waiting
                            .insert(token, Waiting::Promotion { id, since: self.ticks, added: false });
                    }
                    Err(e) => self.answer(token, Err(e)),
                }
            }
            (None, true) => {
                if !is_voter && !is_learner {
                    return self.answer(token, Err(Error::UnknownMember(id)));
                }
                if self.sm.ha.primary.as_ref().is_some_and(|p| p.node == id) {
                    // Removed, its member would fence the primary and, in synchronous mode
                    // with no standby streaming, take with it the one server allowed to be
                    // the primary again (failover.md): a switchover comes first.
                    return self.answer(
                        token,
                        Err(Error::Busy(format!(
                            "node {id}'s server is the primary on record; switch over to another member first \
                             (pgraft_transfer_leadership on another member, or pgraftctl switchover)"
                        ))),
                    );
                }
                if is_voter {
                    // etcd's strict reconfiguration check: the voters left must include a
                    // majority this leader hears from, or the removal itself leaves the
                    // cluster without a quorum (one member down of three, the third
                    // removed: no leader, and with failover no primary either).
                    let remaining: Vec<u64> = conf.voters().ids().iter().filter(|v| *v != id).collect();
                    let active = remaining.iter().filter(|v| self.heard_recently(**v)).count();
                    if active <= remaining.len() / 2 {
                        return self.answer(
                            token,
                            Err(Error::Busy(format!(
                                "removing node {id} would leave {active} of the {} remaining voters reachable, \
                                 not a majority; bring the others back first",
                                remaining.len()
                            ))),
                        );
                    }
                }
                self.propose_membership(token, ConfChangeType::RemoveNode, id, String::new(), false);
            }
            (None, false) => {
                if is_voter {
                    return self.answer(token, Ok(Response::Unchanged));
                }
                if !is_learner {
                    return self.answer(token, Err(Error::UnknownMember(id)));
                }
                self.promote_now(token, id);
            }
        }
    }

    /// Proposes one membership change; `token` is answered when it is applied, or at
    /// once when raft is still applying another.
    fn propose_membership(
        &mut self,
        token: Token,
        change: ConfChangeType,
        id: u64,
        address: String,
        voter_to_be: bool,
    ) {
        if let Err(e) = self.propose_for(token, change, id, address, voter_to_be) {
            self.answer(token, Err(e));
        }
    }

    /// Proposes one membership change for `token`, answered when it is applied; refused
    /// while another is still being applied. `voter_to_be` marks a learner the leader is
    /// to promote once it holds the log.
    fn propose_for(
        &mut self,
        token: Token,
        change: ConfChangeType,
        id: u64,
        address: String,
        voter_to_be: bool,
    ) -> Result<()> {
        if self.raw.raft.has_pending_conf() {
            return Err(Error::Busy("another membership change is still being applied; try again".into()));
        }
        let (origin, _) = self.next_origin();
        let ctx = ConfContext { origin, address }.encode();
        let cc = ConfChangeV2 {
            changes: vec![ConfChangeSingle { change_type: change as i32, node_id: id }],
            context: if voter_to_be { VOTER_TO_BE.to_vec() } else { Vec::new() },
            ..Default::default()
        };
        self.proposals.open(origin.seq, token, None, self.raw.raft.term, self.ticks, true);
        if token != NO_CLIENT {
            self.waiting.insert(token, Waiting::Proposal);
        }
        self.propose_conf(token, ConfProposal(cc, ctx, origin.seq));
        Ok(())
    }

    /// An operator's promotion of learner `id`: proposed if it holds the log, refused
    /// otherwise (promoted empty, it would count in quorums it cannot help form).
    fn promote_now(&mut self, token: Token, id: u64) {
        if let Err(e) = self.learner_ready(id) {
            return self.answer(token, Err(e));
        }
        self.propose_membership(token, ConfChangeType::AddNode, id, String::new(), false);
    }

    /// Whether learner `id` can be promoted: it has received the log (a snapshot at
    /// least) and is within a tenth of the commit index, like etcd's learner readiness
    /// check.
    fn learner_ready(&self, id: u64) -> Result<()> {
        let commit = self.raw.raft.raft_log.committed;
        let matched = self.raw.raft.prs().get(id).map_or(0, |pr| pr.matched);
        if matched > 0 && matched.saturating_mul(10) >= commit.saturating_mul(9) {
            return Ok(());
        }
        Err(Error::Busy(format!(
            "node {id} has not caught up with the log yet (it holds {matched} of {commit} entries); \
             a member votes only once it holds the log: try again when it has caught up"
        )))
    }

    /// The leader proposes the promotion of a voter-to-be that holds the log.
    pub(super) fn promote_caught_up_learners(&mut self) {
        if self.raw.raft.state != StateRole::Leader
            || self.sm.voters_to_be.is_empty()
            || self.raw.raft.has_pending_conf()
        {
            return;
        }
        let learners = self.raw.raft.prs().conf().learners();
        let ready = self
            .sm
            .voters_to_be
            .iter()
            .copied()
            .find(|id| learners.contains(id) && self.learner_ready(*id).is_ok());
        if let Some(id) = ready {
            self.propose_membership(NO_CLIENT, ConfChangeType::AddNode, id, String::new(), false);
        }
    }

    /// Answers clients waiting for a member to become a voter: once it is one; once it
    /// has been a learner for [`PROMOTION_WAIT_TIMEOUTS`] election timeouts (added, still
    /// catching up); or,
    /// if it was removed meanwhile, with an error.
    pub(super) fn resolve_promotions(&mut self) {
        let conf = self.raw.raft.prs().conf();
        let (now, applied) = (self.ticks, self.sm.applied_index);
        let wait = PROMOTION_WAIT_TIMEOUTS * self.cfg.election_tick as u64;
        let mut done = Vec::new();
        for (token, w) in self.waiting.iter_mut() {
            let Waiting::Promotion { id, since, added } = w else { continue };
            if conf.voters().contains(*id) {
                done.push((*token, Ok(Response::Applied { index: applied, outcome: Outcome::Membership })));
            } else if conf.learners().contains(id) {
                *added = true;
                if now.saturating_sub(*since) >= wait {
                    done.push((
                        *token,
                        Ok(Response::Applied { index: applied, outcome: Outcome::Membership }),
                    ));
                }
            } else if *added {
                done.push((*token, Err(Error::UnknownMember(*id))));
            }
        }
        done.sort_unstable_by_key(|(t, _)| *t);
        for (token, r) in done {
            self.answer(token, r);
        }
    }

    pub(super) fn apply_conf_change(&mut self, e: &Entry) -> Result<()> {
        let cc: ConfChangeV2 = if e.get_entry_type() == EntryType::EntryConfChange {
            raft::prelude::ConfChange::decode(&e.data[..])
                .map_err(|err| Error::Storage(format!("conf change {}: {err}", e.index)))?
                .into_v2()
        } else {
            ConfChangeV2::decode(&e.data[..])
                .map_err(|err| Error::Storage(format!("conf change {}: {err}", e.index)))?
        };
        let ctx = if e.context.is_empty() { None } else { ConfContext::decode(&e.context).ok() };
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => {
                // raft-rs checked nothing and changed nothing: every member applies the
                // same entry to the same configuration and refuses it alike, so the
                // configuration stays as it was everywhere and the log goes on.
                log::error!(
                    "the configuration change at index {} cannot be applied ({err}); it changes nothing",
                    e.index
                );
                return Ok(());
            }
        };
        self.raw.mut_store().set_conf_state(&cs)?;
        if self.raw.raft.state == StateRole::Leader && !cs.voters.contains(&self.cfg.id) {
            // A leader that removed itself must stop leading at once. raft-rs does not step
            // down on its own (etcd's raft has StepDownOnRemoval), and a leader without its
            // own progress panics in raft-rs as soon as a follower's acknowledgement
            // advances the commit index (found by the simulation). Tell the most
            // up-to-date voter to campaign now, then step down.
            let prs = self.raw.raft.prs();
            let best = cs.voters.iter().copied().max_by_key(|id| prs.get(*id).map_or(0, |p| p.matched));
            if let Some(to) = best {
                self.raw.raft.send_timeout_now(to);
            }
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
        let changes: Vec<(u64, MembershipChange)> = cc
            .changes
            .iter()
            .map(|c| {
                let kind = match c.get_change_type() {
                    ConfChangeType::AddNode => MembershipChange::AddVoter,
                    ConfChangeType::AddLearnerNode => MembershipChange::AddLearner,
                    ConfChangeType::RemoveNode => MembershipChange::Remove,
                };
                (c.node_id, kind)
            })
            .collect();
        let address = ctx.as_ref().map(|c| c.address.clone()).unwrap_or_default();
        let voter_to_be = cc.context == VOTER_TO_BE;
        self.sm.apply_membership(e.index, e.term, e.entry_type, &changes, &address, voter_to_be, self.now_ms);
        if let Some(ctx) = ctx {
            self.complete(
                ctx.origin,
                Ok(Response::Applied { index: e.index, outcome: crate::state_machine::Outcome::Membership }),
            );
        }
        self.resolve_promotions();
        Ok(())
    }
}
