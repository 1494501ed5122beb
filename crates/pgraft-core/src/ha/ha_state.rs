//! The replicated HA state: which member's PostgreSQL is the primary, from which Raft term
//! and timeline, where every member's server listens, and what each standby reported when
//! it let go of a primary.
//!
//! It lives in the state machine, so every member and every view agree on it, a snapshot
//! carries it, and a restarted or healed member converges to it by itself. Only the
//! commands below change it, and each is checked when applied, with the entry's term: a
//! decision proposed by the leader of term T that reaches the log in a later term (a copy
//! sent again after a leader change) is refused, never applied late.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A PostgreSQL write-ahead log position.
pub type Lsn = u64;

/// "Node X is primary from Raft term T on timeline L": the decision a failover commits to
/// the log before `pg_promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryRecord {
    /// The member whose server is the primary.
    pub node: u64,
    /// The Raft term of the leader that decided it.
    pub term: u64,
    /// The timeline its server was on when decided (promotion starts the next one).
    pub timeline: u32,
    /// The WAL position its server had replayed when decided.
    pub lsn: Lsn,
    /// Why: `bootstrap`, `failover from node N`, ...
    pub reason: String,
    /// When it was decided, ms since the Unix epoch (the leader's clock).
    pub time_ms: i64,
}

/// Where a member's PostgreSQL server listens, as the member itself registered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Host other servers dial for replication.
    pub host: String,
    /// PostgreSQL's port.
    pub port: u16,
    /// `pg_control_system().system_identifier`: servers of one HA cluster share it.
    pub system_id: u64,
    /// Whether the server was a primary (not in recovery) when registered.
    pub primary: bool,
}

/// What a standby reported once it stopped receiving WAL from the primary of an earlier
/// term: the input of a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachReport {
    /// The Raft term in which it detached.
    pub term: u64,
    /// The primary it detached from.
    pub from: u64,
    /// Its timeline.
    pub timeline: u32,
    /// The last WAL position it received (flushed).
    pub received: Lsn,
    /// The last WAL position it replayed.
    pub replayed: Lsn,
}

impl DetachReport {
    /// The position a failover compares: what the server holds durably.
    pub fn position(&self) -> (u32, Lsn) {
        (self.timeline, self.received.max(self.replayed))
    }
}

/// A planned switchover: the primary's member, leading term `term`, hands the primary role
/// to `to`. Its server stops taking sessions and shuts down cleanly, and the standbys keep
/// receiving from it until it has (so the target holds everything, shutdown checkpoint
/// included, and the old primary follows it without a rewind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverRecord {
    /// The primary's member.
    pub from: u64,
    /// The member whose server becomes the primary.
    pub to: u64,
    /// The term of the leader that asked for it.
    pub term: u64,
    /// When, ms since the Unix epoch (the leader's clock).
    pub time_ms: i64,
}

/// A change to the HA state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HaCommand {
    /// A member registers (or updates) where its server listens.
    Server {
        /// The member.
        node: u64,
        /// Its server.
        server: ServerRecord,
    },
    /// A standby no longer receives from the recorded primary, in term `report.term`.
    Detached {
        /// The reporting member.
        node: u64,
        /// Its position.
        report: DetachReport,
    },
    /// The leader of `record.term` names the primary.
    Primary(PrimaryRecord),
    /// The primary's member asks for a planned switchover.
    Switchover(SwitchoverRecord),
    /// The slots a member's server holds, with their restart LSNs (replaces what was
    /// recorded for it).
    Slots {
        /// The holder.
        node: u64,
        /// Member -> restart LSN.
        slots: BTreeMap<u64, Lsn>,
        /// The holder's server's position then (a primary's flushed LSN, a standby's
        /// replayed one): a failover measures a candidate's lag against the primary's.
        position: Lsn,
    },
    /// The primary records how many standbys acknowledge each commit (as entries written
    /// before the standby set was recorded: read, never proposed now).
    Sync(SyncRecordV1),
    /// A member's server became unable to serve (`problem`), or able again (`None`).
    Health {
        /// The member.
        node: u64,
        /// Why its server cannot serve.
        problem: Option<String>,
    },
    /// The primary records how many of which standbys acknowledge each commit.
    SyncSet(SyncRecord),
}

impl HaCommand {
    /// The entry's operation name.
    pub fn name(&self) -> &'static str {
        match self {
            HaCommand::Server { .. } => "ha_server",
            HaCommand::Detached { .. } => "ha_detached",
            HaCommand::Primary(_) => "ha_primary",
            HaCommand::Switchover(_) => "ha_switchover",
            HaCommand::Slots { .. } => "ha_slots",
            HaCommand::Health { .. } => "ha_health",
            HaCommand::Sync(_) | HaCommand::SyncSet(_) => "ha_sync",
        }
    }
}

/// Why an HA command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaRefusal {
    /// A primary decision from an older term than the entry's (sent again after a leader
    /// change) or older than the recorded one.
    #[error("a primary decision of term {decided} reached the log in term {entry}; only the leader of a term decides in it")]
    StaleDecision {
        /// The decision's term.
        decided: u64,
        /// The entry's term.
        entry: u64,
    },
    /// A switchover asked for by a member whose server is not the recorded primary.
    #[error("node {node} asked for a switchover, but the recorded primary is {primary:?}")]
    NotPrimary {
        /// The asking member.
        node: u64,
        /// The recorded primary.
        primary: Option<u64>,
    },
    /// A report of an older term than the one on record for the member.
    #[error("a report of term {reported} is older than node {node}'s report of term {recorded}")]
    StaleReport {
        /// The member.
        node: u64,
        /// The report's term.
        reported: u64,
        /// The recorded one's.
        recorded: u64,
    },
}

/// How many of which standbys the primary `node` has every commit acknowledged by, from
/// Raft term `term` on (see `sync_set.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The primary's member.
    pub node: u64,
    /// The term it was recorded in (by that member, leading it).
    pub term: u64,
    /// `k` of `ANY k (...)`; 0: asynchronous.
    pub k: u32,
    /// When, ms since the Unix epoch.
    pub time_ms: i64,
    /// The members named in the list, ascending; `None` in a record written before the set
    /// was recorded, which meant "every other voter".
    pub standbys: Option<Vec<u64>>,
}

/// [`SyncRecord`] before it carried the standby set: the payload of [`HaCommand::Sync`] and
/// of format-5 snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecordV1 {
    /// The primary's member.
    pub node: u64,
    /// The term it was recorded in.
    pub term: u64,
    /// `k`.
    pub k: u32,
    /// When, ms since the Unix epoch.
    pub time_ms: i64,
}

impl From<SyncRecordV1> for SyncRecord {
    fn from(v: SyncRecordV1) -> Self {
        SyncRecord { node: v.node, term: v.term, k: v.k, time_ms: v.time_ms, standbys: None }
    }
}

/// The replicated HA state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaState {
    /// The primary on record (none until the first leader of an HA cluster names it).
    pub primary: Option<PrimaryRecord>,
    /// Every registered member's server.
    pub servers: BTreeMap<u64, ServerRecord>,
    /// The newest detach report of each member.
    pub reports: BTreeMap<u64, DetachReport>,
    /// How many primary decisions were applied (the bootstrap one included).
    pub promotions: u64,
    /// Each member's newest primary decision (its last promotion).
    pub last_promotion: BTreeMap<u64, PrimaryRecord>,
    /// The newest planned switchover.
    pub switchover: Option<SwitchoverRecord>,
    /// The physical replication slots each member's server holds for the other members:
    /// holder -> (member -> restart LSN). A standby streams through its slot only where
    /// the upstream holds it; a standby's server advances the slots it holds to the
    /// primary's positions, so whichever is promoted keeps the WAL every member needs.
    pub slots: BTreeMap<u64, BTreeMap<u64, Lsn>>,
    /// The members whose servers cannot serve, with why (see `health.rs`): a leader
    /// hands leadership to none of them.
    pub unhealthy: BTreeMap<u64, String>,
    /// Each member's server position when it last published its slots: for the primary,
    /// what `pgraft.maximum_lag_on_failover` measures a candidate against.
    pub positions: BTreeMap<u64, Lsn>,
    /// The primary's newest record of its synchronous standbys.
    pub sync: Option<SyncRecord>,
}

/// [`HaState`] as snapshot formats 3 and 4 wrote it, before the slots and the health (postcard writes
/// fields in order, without names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStateV1 {
    primary: Option<PrimaryRecord>,
    servers: BTreeMap<u64, ServerRecord>,
    reports: BTreeMap<u64, DetachReport>,
    promotions: u64,
    last_promotion: BTreeMap<u64, PrimaryRecord>,
    switchover: Option<SwitchoverRecord>,
}

impl From<HaStateV1> for HaState {
    fn from(v: HaStateV1) -> Self {
        HaState {
            primary: v.primary,
            servers: v.servers,
            reports: v.reports,
            promotions: v.promotions,
            last_promotion: v.last_promotion,
            switchover: v.switchover,
            slots: BTreeMap::new(),
            unhealthy: BTreeMap::new(),
            positions: BTreeMap::new(),
            sync: None,
        }
    }
}

/// [`HaState`] as snapshot format 5 wrote it, before the synchronous record carried its
/// standby set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStateV5 {
    v1: HaStateV1,
    slots: BTreeMap<u64, BTreeMap<u64, Lsn>>,
    unhealthy: BTreeMap<u64, String>,
    positions: BTreeMap<u64, Lsn>,
    sync: Option<SyncRecordV1>,
}

impl From<HaStateV5> for HaState {
    fn from(v: HaStateV5) -> Self {
        HaState {
            slots: v.slots,
            unhealthy: v.unhealthy,
            positions: v.positions,
            sync: v.sync.map(SyncRecord::from),
            ..v.v1.into()
        }
    }
}

impl HaState {
    /// The system identifier of the recorded primary's server, once both are known.
    pub fn primary_system_id(&self) -> Option<u64> {
        self.primary.as_ref().and_then(|p| self.servers.get(&p.node)).map(|s| s.system_id)
    }

    /// Whether member `node` registered a server of the cluster with system identifier
    /// `system_id`.
    pub fn runs_cluster(&self, node: u64, system_id: u64) -> bool {
        self.servers.get(&node).is_some_and(|s| s.system_id == system_id)
    }

    /// Applies `cmd`, carried by an entry of Raft term `entry_term`.
    pub fn apply(&mut self, cmd: &HaCommand, entry_term: u64) -> Result<(), HaRefusal> {
        match cmd {
            HaCommand::Server { node, server } => {
                self.servers.insert(*node, server.clone());
            }
            HaCommand::Detached { node, report } => {
                if let Some(old) = self.reports.get(node) {
                    if old.term > report.term {
                        return Err(HaRefusal::StaleReport {
                            node: *node,
                            reported: report.term,
                            recorded: old.term,
                        });
                    }
                }
                self.reports.insert(*node, *report);
            }
            HaCommand::Slots { node, slots, position } => {
                self.slots.insert(*node, slots.clone());
                self.positions.insert(*node, *position);
            }
            HaCommand::Sync(old) => self.record_sync(old.clone().into(), entry_term)?,
            HaCommand::SyncSet(rec) => self.record_sync(rec.clone(), entry_term)?,
            HaCommand::Health { node, problem } => match problem {
                Some(why) => {
                    self.unhealthy.insert(*node, why.clone());
                }
                None => {
                    self.unhealthy.remove(node);
                }
            },
            HaCommand::Switchover(sw) => {
                let primary = self.primary.as_ref().map(|p| p.node);
                if sw.term != entry_term {
                    return Err(HaRefusal::StaleDecision { decided: sw.term, entry: entry_term });
                }
                if primary != Some(sw.from) {
                    return Err(HaRefusal::NotPrimary { node: sw.from, primary });
                }
                self.switchover = Some(sw.clone());
            }
            HaCommand::Primary(rec) => {
                let recorded = self.primary.as_ref().map_or(0, |p| p.term);
                if rec.term != entry_term || rec.term < recorded {
                    return Err(HaRefusal::StaleDecision { decided: rec.term, entry: entry_term });
                }
                self.primary = Some(rec.clone());
                self.last_promotion.insert(rec.node, rec.clone());
                self.promotions += 1;
            }
        }
        Ok(())
    }

    /// A synchronous record, applied only in the term it was decided in.
    fn record_sync(&mut self, rec: SyncRecord, entry_term: u64) -> Result<(), HaRefusal> {
        if rec.term != entry_term {
            return Err(HaRefusal::StaleDecision { decided: rec.term, entry: entry_term });
        }
        self.sync = Some(rec);
        Ok(())
    }

    /// The reports of term `term` about primary `from`, by member.
    pub fn reports_for(&self, term: u64, from: u64) -> impl Iterator<Item = (u64, &DetachReport)> {
        self.reports.iter().filter(move |(_, r)| r.term == term && r.from == from).map(|(n, r)| (*n, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(node: u64, term: u64) -> HaCommand {
        HaCommand::Primary(PrimaryRecord {
            node,
            term,
            timeline: 1,
            lsn: 0,
            reason: "test".into(),
            time_ms: 0,
        })
    }

    #[test]
    fn a_decision_applies_only_in_its_own_term() {
        let mut s = HaState::default();
        assert!(s.apply(&primary(1, 2), 2).is_ok());
        assert_eq!(s.primary.as_ref().map(|p| p.node), Some(1));
        // Sent again after a leader change: refused.
        assert!(matches!(s.apply(&primary(2, 2), 3), Err(HaRefusal::StaleDecision { .. })));
        assert!(s.apply(&primary(3, 5), 5).is_ok());
        assert_eq!(s.primary.as_ref().map(|p| (p.node, p.term)), Some((3, 5)));
        assert_eq!(s.promotions, 2);
    }

    #[test]
    fn reports_move_forward_only() {
        let mut s = HaState::default();
        let r = |term, received| HaCommand::Detached {
            node: 2,
            report: DetachReport { term, from: 1, timeline: 1, received, replayed: received },
        };
        assert!(s.apply(&r(4, 100), 4).is_ok());
        assert!(s.apply(&r(3, 200), 4).is_err());
        assert_eq!(s.reports[&2].received, 100);
        assert_eq!(s.reports_for(4, 1).count(), 1);
        assert_eq!(s.reports_for(4, 3).count(), 0);
    }
}
