//! An entry, or a leader's snapshot, that this build cannot read: written by a newer
//! pgraft (a rolling upgrade half done, or a member started on an older build).
//!
//! Failing on it would stop the member, the worker would restart it, replay the log and
//! fail on the same entry again: a crash loop, every two seconds, for ever. Instead the
//! member stops applying where it is and waits. It says why in its status
//! (`MemberStatus::apply_blocked`), the health check and the log; it answers requests that
//! need its state machine with that reason at once rather than a timeout; it goes on
//! voting and storing the log, so the cluster keeps its quorum; it holds its campaigns,
//! and a leader hands its leadership to the most up-to-date voter, because nothing can be
//! applied here. Started again on a build that reads the entry, it applies from where it
//! stopped (nothing after the entry was applied, and the log still holds it).

use raft::StateRole;

use super::{Member, Waiting};
use crate::error::Error;
use crate::state_machine::{is_newer_snapshot_format, StateMachine};
use crate::storage::LogStore;

/// A blocked leader hands its leadership on at most once per this many election
/// timeouts (so members that are all blocked do not pass it round and round).
const HAND_ON_EVERY: u64 = 10;

impl<S: LogStore> Member<S> {
    /// Why this member stopped applying, if it did.
    pub fn apply_blocked(&self) -> Option<&str> {
        self.apply_blocked.as_deref()
    }

    /// Stops applying: `why` names what could not be read.
    pub(super) fn block_apply(&mut self, why: String) {
        if self.apply_blocked.is_some() {
            return;
        }
        let why = format!(
            "{why}: written by a newer pgraft? This member applies nothing more and waits; start it on the \
             version the rest of the cluster runs"
        );
        log::error!("{why}");
        self.apply_blocked = Some(why);
        // Nothing waiting on this member's state machine will see it move.
        let stuck: Vec<_> = self
            .waiting
            .iter()
            .filter(|(_, w)| {
                matches!(
                    w,
                    Waiting::Proposal
                        | Waiting::ReadIndex(_)
                        | Waiting::ReadAt(..)
                        | Waiting::Applied(_)
                        | Waiting::Compacted(_)
                )
            })
            .map(|(t, _)| *t)
            .collect();
        for token in stuck {
            self.waiting.remove(&token);
            let e = self.blocked_error();
            self.answer(token, Err(e));
        }
        self.hand_leadership_on();
    }

    /// Whether a leader's snapshot may be stepped: its state is decoded once, here, and
    /// kept for `process_ready`. One of a newer format is not stepped (raft-rs would take
    /// its place in the log, and the store would record a snapshot no restart can read):
    /// the member stops applying and waits, as for an entry (`Ok(false)`). One that does
    /// not decode otherwise is damaged or forged: `Err`, dropped as a bad message.
    pub(super) fn snapshot_readable(&mut self, m: &raft::prelude::Message) -> Result<bool, String> {
        let snap = m.get_snapshot();
        let index = snap.get_metadata().index;
        if self.apply_blocked.is_some() {
            return Ok(false);
        }
        if index < self.raw.raft.raft_log.committed {
            // raft-rs ignores it (one at the commit index it may still install: decoded).
            return Ok(true);
        }
        match StateMachine::decode(&snap.data) {
            Ok(sm) => {
                self.incoming_state = Some((index, sm));
                Ok(true)
            }
            Err(e) if is_newer_snapshot_format(&snap.data) => {
                self.block_apply(format!("the leader's snapshot at index {index} cannot be read ({e})"));
                Ok(false)
            }
            Err(e) => Err(format!("its snapshot does not decode: {e}")),
        }
    }

    /// The error for a request that needs this member's state machine while it is blocked.
    pub(super) fn blocked_error(&self) -> Error {
        Error::ApplyBlocked(self.apply_blocked.clone().unwrap_or_default())
    }

    /// A blocked leader asks the most up-to-date other voter to campaign now (at most once
    /// per [`HAND_ON_EVERY`] election timeouts).
    pub(super) fn hand_leadership_on(&mut self) {
        if self.apply_blocked.is_none() || self.raw.raft.state != StateRole::Leader {
            return;
        }
        let every = HAND_ON_EVERY * self.cfg.election_tick as u64;
        if self.handed_on_tick.is_some_and(|t| self.ticks < t + every) {
            return;
        }
        let id = self.cfg.id;
        let prs = self.raw.raft.prs();
        let best = prs
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|v| *v != id)
            .max_by_key(|v| prs.get(*v).map_or(0, |p| p.matched));
        if let Some(to) = best {
            log::warn!("this leader cannot apply the log: it hands its leadership to node {to}");
            self.handed_on_tick = Some(self.ticks);
            self.raw.transfer_leader(to);
        }
    }
}
