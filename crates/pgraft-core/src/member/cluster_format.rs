//! The cluster's entry format (etcd's cluster version): a kind of entry is proposed only
//! once every member runs a build that reads it.
//!
//! During a rolling upgrade the members run two builds. An entry of a kind the old build
//! does not know would stop the old members from applying (`apply_block.rs`): safe, but
//! the cluster loses their state machines until they are upgraded. So each member
//! announces the newest proposal format it reads, through the log, in an entry every
//! release applies (a `SetConfig` of `reads_format.<id>`), and a member proposes an entry
//! only when every member of the configuration has announced a format at least the entry's
//! ([`Body::format`]). A member that has not announced (the release before announcements)
//! counts as reading [`FORMAT_UNANNOUNCED`].
//!
//! ```text
//!  member 3 starts on a new build ──▶ SetConfig reads_format.3 = 3 (old members apply it)
//!  cluster format = min over members = 2 while members 1 and 2 run the old build
//!  a proposal of a kind of format 3 ──▶ refused: "members 1, 2 read up to format 2"
//!  members 1, 2 upgraded, announce 3 ──▶ cluster format 3: the new kind is proposed
//! ```
//!
//! A member announces again whenever the replicated value is not its own (a member started
//! on another build, or added back), checked every few election timeouts while it knows
//! a leader and has applied all it knows is committed.

use super::{Member, NO_CLIENT};
use crate::command::{format_setting, Body, FORMAT_UNANNOUNCED, PROPOSAL_FORMAT};
use crate::error::{Error, Result};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

/// A member checks its announcement at most once per this many election timeouts.
const ANNOUNCE_EVERY: u64 = 3;

/// The newest proposal format each member of `sm`'s configuration announced (or
/// [`FORMAT_UNANNOUNCED`]), by node id.
pub fn member_formats(sm: &StateMachine) -> Vec<(u64, u8, bool)> {
    sm.members
        .keys()
        .map(|id| match sm.config.get(&format_setting(*id)).and_then(|v| v.parse::<u8>().ok()) {
            Some(f) => (*id, f, true),
            None => (*id, FORMAT_UNANNOUNCED, false),
        })
        .collect()
}

/// The newest proposal format every member reads: the cluster's format. A state machine
/// without members (a member still joining) says this build's.
pub fn cluster_format(sm: &StateMachine) -> u8 {
    member_formats(sm).into_iter().map(|(_, f, _)| f).min().unwrap_or(PROPOSAL_FORMAT)
}

impl<S: LogStore> Member<S> {
    /// Refuses `body` if some member does not read its format yet.
    pub(super) fn check_format(&self, body: &Body) -> Result<()> {
        let need = body.format();
        let behind: Vec<String> = member_formats(&self.sm)
            .into_iter()
            .filter(|(_, f, _)| *f < need)
            .map(|(id, f, announced)| match announced {
                true => format!("node {id} reads up to format {f}"),
                false => format!("node {id} has not said which formats it reads (format {f} assumed)"),
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        Err(Error::NotUpgraded(format!(
            "a {} entry is written in format {need}, and not every member reads it: {}; upgrade those \
             members first",
            body.name(),
            behind.join(", ")
        )))
    }

    /// Announces this build's proposal format if the replicated state does not show it
    /// (see the module's documentation). Called on every tick.
    pub(super) fn announce_format(&mut self) {
        let every = ANNOUNCE_EVERY * self.cfg.election_tick as u64;
        if self.ticks < self.format_checked_tick + every {
            return;
        }
        let raft = &self.raw.raft;
        let caught_up = raft.raft_log.applied >= raft.raft_log.committed;
        if raft.leader_id == 0 || !caught_up || self.apply_blocked.is_some() || self.removed() {
            return;
        }
        if !self.sm.members.contains_key(&self.cfg.id) {
            return; // not a member yet: announced once its addition applied
        }
        self.format_checked_tick = self.ticks;
        let name = format_setting(self.cfg.id);
        let own = PROPOSAL_FORMAT.to_string();
        if self.sm.config.get(&name) == Some(&own) {
            return;
        }
        log::info!("announcing that this member reads entries up to format {PROPOSAL_FORMAT}");
        // Not through `submit`: the announcement must not wait for the format check it
        // feeds (a member that announced an older format announces again here).
        self.propose_body(NO_CLIENT, Body::SetConfig { name, value: own });
    }
}
