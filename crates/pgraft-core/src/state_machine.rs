//! The replicated state: the KV store, the membership's addresses, cluster-wide settings,
//! the proposer sessions, and a record of recently applied entries. Snapshots carry all of
//! it. Cloning it is cheap (the KV store and the history are persistent structures), which
//! is how a snapshot is taken without stopping the Raft thread.

use std::collections::{BTreeMap, BTreeSet};

use imbl::Vector;
use serde::{Deserialize, Serialize};

use crate::command::{Body, Proposal};
use crate::ha::{HaState, HaStateV1, HaStateV5};
use crate::kv::{Compare, KvOp, KvResult, KvStore, TxnAction};
use crate::sessions::Sessions;

/// How many applied entries the history keeps (`pgraft.applied_entries`).
pub const HISTORY_LIMIT: usize = 10_000;

/// A member's address as recorded when it was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// `host:port` other members dial.
    pub address: String,
    /// A learner receives the log but does not vote.
    pub learner: bool,
}

/// What one applied entry was and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRecord {
    /// Log index.
    pub index: u64,
    /// Term.
    pub term: u64,
    /// raft's entry type: 0 normal, 1 conf change, 2 conf change v2.
    pub entry_type: i32,
    /// When this member applied it, ms since the Unix epoch.
    pub applied_ms: i64,
    /// The operation (`kv_put`, `replicate_entry`, `add_member`, ...; `noop` for a new
    /// leader's empty entry).
    pub operation: String,
    /// The key, prefix, member or setting it targeted.
    pub target: Option<String>,
    /// The operation's arguments as a JSON document.
    pub data: String,
}

/// What applying a normal entry produced, for the client that waits for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A KV operation's result.
    Kv(KvResult),
    /// Raw data recorded.
    Raw,
    /// A setting changed.
    Config,
    /// A probe went through.
    Probe,
    /// A membership change was applied.
    Membership,
    /// An HA command was applied (`None`) or refused (why).
    Ha(Option<String>),
}

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    /// The KV store.
    pub kv: KvStore,
    /// Every voter and learner with its address.
    pub members: BTreeMap<u64, MemberInfo>,
    /// Cluster-wide settings changed through the log, name -> value.
    pub config: BTreeMap<String, String>,
    /// The last [`HISTORY_LIMIT`] applied entries, oldest first.
    #[serde(with = "crate::persistent_serde::vector")]
    pub history: Vector<AppliedRecord>,
    /// The index of the last applied entry.
    pub applied_index: u64,
    /// Its term.
    pub applied_term: u64,
    /// How many raw entries were applied.
    pub raw_entries: u64,
    /// Which proposals were applied, so a copy is not applied again.
    pub sessions: Sessions,
    /// Which member's server is the primary, and what failover knows.
    pub ha: HaState,
    /// Learners added as voters: the leader promotes each once it holds the log (see
    /// `member/membership.rs`). Replicated, so a new leader carries on.
    pub voters_to_be: BTreeSet<u64>,
}

/// The image of format 5, before the HA state's synchronous record carried its standby set.
#[derive(Deserialize)]
struct StateMachineV5 {
    v2: StateMachineV2,
    ha: HaStateV5,
    voters_to_be: BTreeSet<u64>,
}

/// The image of format 4, before the HA state recorded replication slots and health.
#[derive(Deserialize)]
struct StateMachineV4 {
    v3: StateMachineV3,
    voters_to_be: BTreeSet<u64>,
}

/// The image of format 3, before learners could be voters-to-be. postcard writes a nested
/// struct's fields in place, so each older format is the one before it plus its new fields.
#[derive(Deserialize)]
struct StateMachineV3 {
    v2: StateMachineV2,
    ha: HaStateV1,
}

/// The image of format 2, before the HA state existed.
#[derive(Deserialize)]
struct StateMachineV2 {
    v1: StateMachineV1,
    sessions: Sessions,
}

/// The image of format 1, before sessions existed.
#[derive(Deserialize)]
struct StateMachineV1 {
    kv: KvStore,
    members: BTreeMap<u64, MemberInfo>,
    config: BTreeMap<String, String>,
    #[serde(with = "crate::persistent_serde::vector")]
    history: Vector<AppliedRecord>,
    applied_index: u64,
    applied_term: u64,
    raw_entries: u64,
}

/// A snapshot image that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable state machine snapshot: {0}")]
pub struct SnapshotDecodeError(pub String);

/// The snapshot image's format: 6 added the standby set to the HA state's synchronous
/// record, 5 the HA state's replication slots and health, 4 the voters-to-be, 3 the HA
/// state, 2 the sessions; 1 to 5 are still read.
const SNAPSHOT_FORMAT: u8 = 6;

/// Whether an image says it was written in a format newer than this build's (by a newer
/// pgraft), rather than being damaged or forged.
pub fn is_newer_snapshot_format(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|v| *v > SNAPSHOT_FORMAT)
}

impl StateMachine {
    /// The state to put in a snapshot.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![SNAPSHOT_FORMAT];
        out.extend(postcard::to_stdvec(self).expect("postcard serialises plain data into a Vec"));
        out
    }

    /// The state of an older image, with what it lacks empty.
    fn from_v1(v1: StateMachineV1, sessions: Sessions, ha: HaState) -> Self {
        Self {
            kv: v1.kv,
            members: v1.members,
            config: v1.config,
            history: v1.history,
            applied_index: v1.applied_index,
            applied_term: v1.applied_term,
            raw_entries: v1.raw_entries,
            sessions,
            ha,
            voters_to_be: BTreeSet::new(),
        }
    }

    /// Restores a snapshot image.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotDecodeError> {
        match bytes.split_first() {
            Some((&SNAPSHOT_FORMAT, rest)) => {
                postcard::from_bytes(rest).map_err(|e| SnapshotDecodeError(e.to_string()))
            }
            Some((5, rest)) => {
                let v5: StateMachineV5 =
                    postcard::from_bytes(rest).map_err(|e| SnapshotDecodeError(e.to_string()))?;
                Ok(Self {
                    voters_to_be: v5.voters_to_be,
                    ..Self::from_v1(v5.v2.v1, v5.v2.sessions, v5.ha.into())
                })
            }
            Some((4, rest)) => {
                let v4: StateMachineV4 =
                    postcard::from_bytes(rest).map_err(|e| SnapshotDecodeError(e.to_string()))?;
                let v3 = v4.v3;
                Ok(Self {
                    voters_to_be: v4.voters_to_be,
                    ..Self::from_v1(v3.v2.v1, v3.v2.sessions, v3.ha.into())
                })
            }
            Some((3, rest)) => {
                let v3: StateMachineV3 =
                    postcard::from_bytes(rest).map_err(|e| SnapshotDecodeError(e.to_string()))?;
                Ok(Self::from_v1(v3.v2.v1, v3.v2.sessions, v3.ha.into()))
            }
            Some((2, rest)) => {
                let v2: StateMachineV2 =
                    postcard::from_bytes(rest).map_err(|e| SnapshotDecodeError(e.to_string()))?;
                Ok(Self::from_v1(v2.v1, v2.sessions, HaState::default()))
            }
            Some((1, rest)) => {
                let v1: StateMachineV1 =
                    postcard::from_bytes(rest).map_err(|e| SnapshotDecodeError(e.to_string()))?;
                Ok(Self::from_v1(v1, Sessions::default(), HaState::default()))
            }
            Some((v, _)) => Err(SnapshotDecodeError(format!("unknown snapshot format {v}"))),
            None => Err(SnapshotDecodeError("empty snapshot".into())),
        }
    }

    fn record(&mut self, rec: AppliedRecord) {
        self.applied_index = rec.index;
        self.applied_term = rec.term;
        if self.history.len() == HISTORY_LIMIT {
            self.history.pop_front();
        }
        self.history.push_back(rec);
    }

    /// Applies a normal entry's proposal; `None` when it is a copy of a proposal already
    /// applied (or settled), which changes nothing but the applied index.
    pub fn apply(&mut self, index: u64, term: u64, p: &Proposal, now_ms: i64) -> Option<Outcome> {
        if !self.sessions.admit(p.origin, p.low, index) {
            let o = p.origin;
            self.record(AppliedRecord {
                index,
                term,
                entry_type: 0,
                applied_ms: now_ms,
                operation: "duplicate".into(),
                target: Some(p.body.name().to_string()),
                data: serde_json::json!({ "node": o.node, "incarnation": o.incarnation, "seq": o.seq })
                    .to_string(),
            });
            return None;
        }
        let (outcome, target, data) = match &p.body {
            Body::Kv(op) => {
                let r = self.kv.apply(op);
                (Outcome::Kv(r), op.target().map(str::to_string), kv_data(op))
            }
            Body::Raw(bytes) => {
                self.raw_entries += 1;
                let data = if bytes.len() > HISTORY_DATA_LIMIT {
                    serde_json::json!({ "data_bytes": bytes.len() }).to_string()
                } else {
                    let text = String::from_utf8_lossy(bytes);
                    match serde_json::from_str::<serde_json::Value>(&text) {
                        Ok(v) => v.to_string(),
                        Err(_) => serde_json::json!({ "data": text }).to_string(),
                    }
                };
                (Outcome::Raw, None, data)
            }
            Body::SetConfig { name, value } => {
                self.config.insert(name.clone(), value.clone());
                (Outcome::Config, Some(name.clone()), serde_json::json!({ "value": value }).to_string())
            }
            Body::Probe => (Outcome::Probe, None, "{}".to_string()),
            Body::Ha(cmd) => {
                let refused = self.ha.apply(cmd, term).err().map(|e| e.to_string());
                let mut data = serde_json::to_value(cmd).unwrap_or_default();
                if let (Some(why), Some(obj)) = (&refused, data.as_object_mut()) {
                    obj.insert("refused".into(), why.clone().into());
                }
                (Outcome::Ha(refused), None, data.to_string())
            }
        };
        self.record(AppliedRecord {
            index,
            term,
            entry_type: 0,
            applied_ms: now_ms,
            operation: p.body.name().to_string(),
            target,
            data,
        });
        Some(outcome)
    }

    /// Records an entry that carries no proposal (a new leader's empty entry).
    pub fn apply_empty(&mut self, index: u64, term: u64, now_ms: i64) {
        self.record(AppliedRecord {
            index,
            term,
            entry_type: 0,
            applied_ms: now_ms,
            operation: "noop".into(),
            target: None,
            data: "{}".into(),
        });
    }

    /// Applies a membership change: `added` members (with their address), `removed` ones.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_membership(
        &mut self,
        index: u64,
        term: u64,
        entry_type: i32,
        changes: &[(u64, MembershipChange)],
        address: &str,
        voter_to_be: bool,
        now_ms: i64,
    ) {
        let mut ops = Vec::new();
        for (id, change) in changes {
            // A learner added as a voter waits for its promotion; any other change ends that.
            if voter_to_be && matches!(change, MembershipChange::AddLearner) {
                self.voters_to_be.insert(*id);
            } else {
                self.voters_to_be.remove(id);
            }
            match change {
                MembershipChange::AddVoter | MembershipChange::AddLearner => {
                    let learner = matches!(change, MembershipChange::AddLearner);
                    let addr = if address.is_empty() {
                        self.members.get(id).map(|m| m.address.clone()).unwrap_or_default()
                    } else {
                        address.to_string()
                    };
                    self.members.insert(*id, MemberInfo { address: addr, learner });
                    ops.push(if learner { "add_learner" } else { "add_member" });
                }
                MembershipChange::Remove => {
                    self.members.remove(id);
                    ops.push("remove_member");
                }
            }
        }
        let target = changes.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>().join(",");
        self.record(AppliedRecord {
            index,
            term,
            entry_type,
            applied_ms: now_ms,
            operation: ops.first().copied().unwrap_or("conf_change").to_string(),
            target: Some(target),
            data: serde_json::json!({ "address": address }).to_string(),
        });
    }
}

/// One member's part of a membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add (or promote) a voter.
    AddVoter,
    /// Add a learner (or demote a voter).
    AddLearner,
    /// Remove.
    Remove,
}

/// Payloads up to this size are kept whole in the applied-entry history; larger ones are
/// summarised (their size), so 10,000 records of megabyte values cannot fill memory or
/// bloat snapshots. The log itself keeps the data.
pub const HISTORY_DATA_LIMIT: usize = 1024;

fn kv_data(op: &KvOp) -> String {
    match op {
        KvOp::Put { key, value, .. } if value.len() > HISTORY_DATA_LIMIT => {
            serde_json::json!({ "key": key, "value_bytes": value.len() })
        }
        KvOp::Put { key, value, .. } => {
            serde_json::json!({ "key": key, "value": String::from_utf8_lossy(value) })
        }
        KvOp::Delete { key, .. } => serde_json::json!({ "key": key }),
        KvOp::DeletePrefix { prefix, .. } => serde_json::json!({ "prefix": prefix }),
        KvOp::CompareAndSwap { key, compare, action, .. } => {
            let compare = match compare {
                Compare::Value(Some(v)) if v.len() > HISTORY_DATA_LIMIT => {
                    format!("Value({} bytes)", v.len())
                }
                c => format!("{c:?}"),
            };
            let action = match action {
                TxnAction::Put(v) if v.len() > HISTORY_DATA_LIMIT => format!("Put({} bytes)", v.len()),
                a => format!("{a:?}"),
            };
            serde_json::json!({ "key": key, "compare": compare, "action": action })
        }
        KvOp::Compact { revision } => serde_json::json!({ "revision": revision }),
        KvOp::Reset => serde_json::json!({}),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Origin;

    fn prop(body: Body) -> Proposal {
        prop_seq(1, body)
    }

    fn prop_seq(seq: u64, body: Body) -> Proposal {
        Proposal { origin: Origin { node: 1, incarnation: 1, seq }, time_ms: 10, body, low: 1 }
    }

    #[test]
    fn the_history_keeps_large_payloads_as_their_size() {
        let mut sm = StateMachine::default();
        let big = vec![b'x'; HISTORY_DATA_LIMIT + 1];
        let put = KvOp::Put { key: "k".into(), value: big.clone(), time_ms: 1 };
        sm.apply(1, 1, &prop_seq(1, Body::Kv(put)), 5);
        sm.apply(2, 1, &prop_seq(2, Body::Raw(big.clone())), 5);
        let cas = KvOp::CompareAndSwap {
            key: "k".into(),
            compare: Compare::Value(Some(big.clone())),
            action: TxnAction::Put(big),
            time_ms: 1,
        };
        sm.apply(3, 1, &prop_seq(3, Body::Kv(cas)), 5);
        let data: Vec<&str> = sm.history.iter().map(|r| r.data.as_str()).collect();
        assert_eq!(data[0], format!("{{\"key\":\"k\",\"value_bytes\":{}}}", HISTORY_DATA_LIMIT + 1));
        assert_eq!(data[1], format!("{{\"data_bytes\":{}}}", HISTORY_DATA_LIMIT + 1));
        assert!(data[2].len() < 200, "{}", data[2]);
        // The store itself keeps the whole value.
        assert_eq!(
            sm.kv.get("k", None).ok().flatten().map(|kv| kv.value.len()),
            Some(HISTORY_DATA_LIMIT + 1)
        );
    }

    #[test]
    fn snapshot_round_trip_carries_everything() {
        let mut sm = StateMachine::default();
        sm.apply(
            1,
            1,
            &prop_seq(1, Body::Kv(KvOp::Put { key: "a".into(), value: b"1".to_vec(), time_ms: 1 })),
            100,
        );
        sm.apply(2, 1, &prop_seq(2, Body::Raw(br#"{"x": 1}"#.to_vec())), 101);
        sm.apply(
            3,
            1,
            &prop_seq(3, Body::SetConfig { name: "heartbeat_interval".into(), value: "75ms".into() }),
            102,
        );
        sm.apply_membership(4, 1, 2, &[(2, MembershipChange::AddVoter)], "127.0.0.1:7002", false, 103);
        let back = StateMachine::decode(&sm.encode()).expect("decodes");
        assert_eq!(back, sm);
        assert_eq!(back.applied_index, 4);
        assert_eq!(back.members[&2].address, "127.0.0.1:7002");
        assert_eq!(back.history.len(), 4);
        assert_eq!(back.history[1].data, r#"{"x":1}"#);
        assert!(StateMachine::decode(b"").is_err());
        assert!(StateMachine::decode(&[9, 1, 2]).is_err());
        // A format-3 image is this one without the HA slots, health and positions and the
        // voters-to-be, the last four fields (an empty map or set is one byte), and reads
        // back the same.
        let image = sm.encode();
        assert_eq!((image[0], &image[image.len() - 4..]), (6, &[0u8, 0, 0, 0][..]));
        let mut v3 = image[..image.len() - 4].to_vec();
        v3[0] = 3;
        assert_eq!(StateMachine::decode(&v3).expect("a format-3 image decodes"), sm);
        let mut with = sm.clone();
        with.voters_to_be.insert(5);
        with.ha
            .apply(&crate::ha::HaCommand::Slots { node: 1, slots: [(2, 77)].into(), position: 99 }, 1)
            .expect("slots");
        assert_eq!(StateMachine::decode(&with.encode()).expect("decodes"), with);
    }

    #[test]
    fn history_is_bounded() {
        let mut sm = StateMachine::default();
        for i in 1..=(HISTORY_LIMIT as u64 + 5) {
            sm.apply(i, 1, &prop_seq(i, Body::Probe), 0);
        }
        assert_eq!(sm.history.len(), HISTORY_LIMIT);
        assert_eq!(sm.history.front().map(|r| r.index), Some(6));
    }

    #[test]
    fn a_proposal_sent_twice_applies_once() {
        let mut sm = StateMachine::default();
        let put = |v: &str| Body::Kv(KvOp::Put { key: "k".into(), value: v.as_bytes().to_vec(), time_ms: 1 });
        assert!(sm.apply(1, 1, &prop_seq(1, put("a")), 0).is_some());
        assert!(sm.apply(2, 1, &prop_seq(2, put("b")), 0).is_some());
        assert!(sm.apply(3, 2, &prop_seq(1, put("a")), 0).is_none(), "the copy of seq 1");
        assert_eq!(sm.kv.get("k", None).ok().flatten().map(|kv| kv.value), Some(b"b".to_vec()));
        assert_eq!(sm.kv.revision(), 2);
        assert_eq!(sm.applied_index, 3);
        assert_eq!(sm.history.back().map(|r| r.operation.as_str()), Some("duplicate"));
        let back = StateMachine::decode(&sm.encode()).expect("decodes");
        assert_eq!(back.sessions, sm.sessions, "snapshots carry the sessions");
    }

    #[test]
    fn format_1_images_are_still_read() {
        let mut sm = StateMachine::default();
        sm.apply(1, 1, &prop(Body::Kv(KvOp::Put { key: "a".into(), value: b"1".to_vec(), time_ms: 1 })), 100);
        let mut v1 = vec![1u8];
        let fields =
            (&sm.kv, &sm.members, &sm.config, &sm.history, sm.applied_index, sm.applied_term, sm.raw_entries);
        v1.extend(postcard::to_stdvec(&fields).expect("encodes"));
        let back = StateMachine::decode(&v1).expect("format 1 decodes");
        assert_eq!(back.kv, sm.kv);
        assert_eq!(back.applied_index, 1);
        assert!(back.sessions.is_empty());
    }

    #[test]
    fn format_4_images_are_still_read() {
        let mut sm = StateMachine::default();
        sm.apply(1, 1, &prop(Body::Kv(KvOp::Put { key: "a".into(), value: b"1".to_vec(), time_ms: 1 })), 100);
        let rec = crate::ha::PrimaryRecord {
            node: 1,
            term: 1,
            timeline: 1,
            lsn: 9,
            reason: "t".into(),
            time_ms: 0,
        };
        sm.ha.apply(&crate::ha::HaCommand::Primary(rec), 1).expect("primary");
        sm.voters_to_be.insert(3);
        let h = &sm.ha;
        let ha_v1 = (&h.primary, &h.servers, &h.reports, h.promotions, &h.last_promotion, &h.switchover);
        let fields = (
            (&sm.kv, &sm.members, &sm.config, &sm.history, sm.applied_index, sm.applied_term, sm.raw_entries),
            &sm.sessions,
            ha_v1,
            &sm.voters_to_be,
        );
        let mut v4 = vec![4u8];
        v4.extend(postcard::to_stdvec(&fields).expect("encodes"));
        let back = StateMachine::decode(&v4).expect("format 4 decodes");
        assert_eq!(back, sm, "everything but the slots and health, which format 4 did not have");
        assert!(back.ha.slots.is_empty() && back.ha.unhealthy.is_empty() && back.ha.positions.is_empty());
    }

    #[test]
    fn format_5_images_are_still_read_with_a_synchronous_record_of_no_set() {
        use crate::ha::{HaCommand, SyncRecordV1};
        let mut sm = StateMachine::default();
        sm.apply(1, 1, &prop(Body::Kv(KvOp::Put { key: "a".into(), value: b"1".to_vec(), time_ms: 1 })), 100);
        let old = SyncRecordV1 { node: 1, term: 1, k: 1, time_ms: 5 };
        sm.ha.apply(&HaCommand::Sync(old.clone()), 1).expect("sync");
        sm.ha.slots.insert(2, [(1, 77)].into());
        sm.ha.positions.insert(2, 88);
        let h = &sm.ha;
        let ha_v1 = (&h.primary, &h.servers, &h.reports, h.promotions, &h.last_promotion, &h.switchover);
        let ha_v5 = (ha_v1, &h.slots, &h.unhealthy, &h.positions, Some(&old));
        let fields = (
            (&sm.kv, &sm.members, &sm.config, &sm.history, sm.applied_index, sm.applied_term, sm.raw_entries),
            &sm.sessions,
            ha_v5,
            &sm.voters_to_be,
        );
        let mut v5 = vec![5u8];
        v5.extend(postcard::to_stdvec(&fields).expect("encodes"));
        let back = StateMachine::decode(&v5).expect("format 5 decodes");
        assert_eq!(back, sm);
        assert_eq!(back.ha.sync.as_ref().map(|s| s.standbys.clone()), Some(None));
    }
}
