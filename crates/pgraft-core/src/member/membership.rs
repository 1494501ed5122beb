//! Membership changes: proposing them (leader only) and applying them.

use prost::Message as _;
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::StateRole;
use raft_proto::ConfChangeI as _;

use super::{raft_err, ConfProposal, Member, Token, Waiting, NO_CLIENT};
use crate::command::ConfContext;
use crate::error::{Error, Result};
use crate::request::Response;
use crate::state_machine::MembershipChange;
use crate::storage::LogStore;

impl<S: LogStore> Member<S> {
    /// Membership changes: `address` set = add (voter or learner by `flag`), `None` with
    /// `flag` = remove, `None` without = promote.
    ///
    /// A voter joins as a learner first and is promoted once it holds the log. A member
    /// with an empty log votes for nobody (`Member::withholds_vote`), so a voter added
    /// empty would, until its first snapshot, count in every quorum without being able to
    /// help form one: a leader lost in that window would leave a two-member cluster grown
    /// to three, or a three-member one whose other follower is down, without a leader
    /// for good. As a learner it counts in no quorum until it can vote. The request is
    /// answered once the member is a voter.
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
                    self.promote.remove(&id);
                    return self.propose_membership(token, ConfChangeType::AddLearnerNode, id, addr.clone());
                }
                if !is_learner {
                    // The learner step: nobody waits for it; the client waits for the promotion.
                    if let Err(e) = self.busy_with_membership() {
                        return self.answer(token, Err(e));
                    }
                    self.propose_membership(NO_CLIENT, ConfChangeType::AddLearnerNode, id, addr.clone());
                }
                self.await_promotion(token, id);
            }
            (None, true) => {
                if !is_voter && !is_learner {
                    return self.answer(token, Err(Error::UnknownMember(id)));
                }
                self.promote.remove(&id);
                self.propose_membership(token, ConfChangeType::RemoveNode, id, String::new());
            }
            (None, false) => {
                if is_voter {
                    return self.answer(token, Ok(Response::Unchanged));
                }
                if !is_learner {
                    return self.answer(token, Err(Error::UnknownMember(id)));
                }
                self.await_promotion(token, id);
            }
        }
    }

    fn busy_with_membership(&self) -> Result<()> {
        if self.raw.raft.has_pending_conf() {
            return Err(Error::Busy("another membership change is still being applied; try again".into()));
        }
        Ok(())
    }

    /// Proposes one membership change; `token` is answered when it is applied.
    fn propose_membership(&mut self, token: Token, change: ConfChangeType, id: u64, address: String) {
        if let Err(e) = self.busy_with_membership() {
            return self.answer(token, Err(e));
        }
        let (origin, _) = self.next_origin();
        let ctx = ConfContext { origin, address }.encode();
        let cc = ConfChangeV2 {
            changes: vec![ConfChangeSingle { change_type: change as i32, node_id: id }],
            ..Default::default()
        };
        self.proposals.open(origin.seq, token, None, self.raw.raft.term, self.ticks, true);
        if token != NO_CLIENT {
            self.waiting.insert(token, Waiting::Proposal);
        }
        self.propose_conf(token, ConfProposal(cc, ctx, origin.seq));
    }

    /// Makes `token` wait until learner `id` is a voter, and promotes it as soon as it
    /// holds the log.
    fn await_promotion(&mut self, token: Token, id: u64) {
        self.promote.insert(id);
        self.waiting.insert(token, Waiting::Promotion(id));
        self.promote_caught_up_learners();
    }

    /// Proposes the promotion of a learner waiting for one, once it has received the log
    /// (a snapshot at least) and is within a tenth of the commit index, like etcd's
    /// learner readiness check. Leader only; a new leader does not know what its
    /// predecessor was to promote, and the waiting client asks again.
    pub(super) fn promote_caught_up_learners(&mut self) {
        if self.raw.raft.state != StateRole::Leader || self.promote.is_empty() {
            return;
        }
        let prs = self.raw.raft.prs();
        let voters = prs.conf().voters().ids();
        self.promote.retain(|id| !voters.contains(*id));
        if self.raw.raft.has_pending_conf() {
            return;
        }
        let commit = self.raw.raft.raft_log.committed;
        let ready = self.promote.iter().copied().find(|id| {
            prs.conf().learners().contains(id)
                && prs
                    .get(*id)
                    .is_some_and(|pr| pr.matched > 0 && pr.matched.saturating_mul(10) >= commit * 9)
        });
        if let Some(id) = ready {
            self.propose_membership(NO_CLIENT, ConfChangeType::AddNode, id, String::new());
        }
    }

    /// Answers the clients waiting for `id` to become a voter, once it is one (or gone).
    fn resolve_promotions(&mut self, index: u64, voters: &[u64], learners: &[u64]) {
        let waiting: Vec<(Token, u64)> = self
            .waiting
            .iter()
            .filter_map(|(t, w)| match w {
                Waiting::Promotion(id) => Some((*t, *id)),
                _ => None,
            })
            .collect();
        for (token, id) in waiting {
            if voters.contains(&id) {
                self.answer(
                    token,
                    Ok(Response::Applied { index, outcome: crate::state_machine::Outcome::Membership }),
                );
            } else if !learners.contains(&id)
                && !self.sm.members.contains_key(&id)
                && !self.promote.contains(&id)
            {
                self.answer(token, Err(Error::UnknownMember(id)));
            }
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
        let cs = self.raw.apply_conf_change(&cc).map_err(raft_err)?;
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
        self.sm.apply_membership(e.index, e.term, e.entry_type, &changes, &address, self.now_ms);
        if let Some(ctx) = ctx {
            self.complete(
                ctx.origin,
                Ok(Response::Applied { index: e.index, outcome: crate::state_machine::Outcome::Membership }),
            );
        }
        self.resolve_promotions(e.index, &cs.voters, &cs.learners);
        Ok(())
    }
}
