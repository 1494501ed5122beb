//! Membership changes: proposing them (leader only) and applying them.

use prost::Message as _;
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::StateRole;
use raft_proto::ConfChangeI as _;

use super::{raft_err, ConfProposal, Member, Token, Waiting};
use crate::command::ConfContext;
use crate::error::{Error, Result};
use crate::request::Response;
use crate::state_machine::MembershipChange;
use crate::storage::LogStore;

impl<S: LogStore> Member<S> {
    /// Membership changes: `address` set = add (voter or learner by `flag`), `None` with
    /// `flag` = remove, `None` without = promote.
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
        let (change, addr) = match (&address, flag) {
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
                let t = if learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
                (t, addr.clone())
            }
            (None, true) => {
                if !is_voter && !is_learner {
                    return self.answer(token, Err(Error::UnknownMember(id)));
                }
                (ConfChangeType::RemoveNode, String::new())
            }
            (None, false) => {
                if is_voter {
                    return self.answer(token, Ok(Response::Unchanged));
                }
                if !is_learner {
                    return self.answer(token, Err(Error::UnknownMember(id)));
                }
                (ConfChangeType::AddNode, String::new())
            }
        };
        if self.raw.raft.has_pending_conf() {
            return self.answer(
                token,
                Err(Error::Busy("another membership change is still being applied; try again".into())),
            );
        }
        let (origin, _) = self.next_origin();
        let ctx = ConfContext { origin, address: addr }.encode();
        let cc = ConfChangeV2 {
            changes: vec![ConfChangeSingle { change_type: change as i32, node_id: id }],
            ..Default::default()
        };
        self.proposals.open(origin.seq, token, None, self.raw.raft.term, self.ticks, true);
        self.waiting.insert(token, Waiting::Proposal);
        self.propose_conf(token, ConfProposal(cc, ctx, origin.seq));
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
        Ok(())
    }
}
