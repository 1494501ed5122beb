//! The checks run on a finished, healed and converged cluster. Each is a pure function of
//! what was recorded, so each is tested on hand-made inputs; each checks one property and
//! returns the anomalies it found.
//!
//! | check | property |
//! |---|---|
//! | [`linearizable`] | the KV history, with every member's final reads appended, is linearizable per key |
//! | [`lost_writes`] | no acknowledged write is missing from the final state |
//! | [`same_state`] | every member holds the same KV hash and the same final values |
//! | [`same_log`] | every member applied the same entries at the same indexes and terms |
//! | [`appends_present`] | every acknowledged `pgraft_replicate_entry` is in every member's log |
//! | [`one_leader_per_term`] | no two leaders were seen in one term (Raft section 5.2) |

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pgraft_core::linearizability::{self, Call, Operation, Ret, Verdict};
use serde::{Deserialize, Serialize};

use super::history::{HistoryOp, OpCall, OpResult};
use super::leader_monitor::LeaderSightings;

/// Something a check found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The check that found it.
    pub check: String,
    /// What exactly is wrong.
    pub detail: String,
}

impl Anomaly {
    fn new(check: &str, detail: impl Into<String>) -> Self {
        Self { check: check.to_string(), detail: detail.into() }
    }
}

/// The final value of every key on every member: member → key → value.
pub type FinalValues = BTreeMap<u64, BTreeMap<String, Option<String>>>;

/// One applied log entry of a member, as `pgraft.log_index_mapping` and
/// `pgraft.applied_entries` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Raft index.
    pub index: u64,
    /// Raft term.
    pub term: u64,
    /// What the entry did (`kv_put`, `replicate_entry`, ...).
    pub operation: String,
    /// Its key, if any.
    pub target: String,
    /// Its payload as JSON text.
    pub data: String,
    /// When it was applied, in milliseconds since the Unix epoch.
    pub applied_ms: u64,
}

/// How many (linearized set, state) pairs the checker may explore per key before it gives
/// up undecided (which fails the run: nothing is claimed that was not checked).
pub const MAX_CHECKER_STATES: usize = 2_000_000;

/// The KV history (with the final reads placed after everything) is linearizable per key.
pub fn linearizable(history: &[HistoryOp], finals: &FinalValues) -> Vec<Anomaly> {
    let mut ops: Vec<Operation> = history.iter().filter_map(HistoryOp::to_checker).collect();
    let end = history.iter().map(|o| o.complete_us).max().unwrap_or(0) + 1;
    for (member, values) in finals {
        for (key, value) in values {
            ops.push(Operation {
                client: 1_000_000 + member,
                key: key.clone(),
                call: Call::Get,
                ret: Ret::Value(value.clone()),
                invoke: end,
                complete: Some(end + 1),
            });
        }
    }
    match linearizability::check_bounded(&ops, MAX_CHECKER_STATES) {
        Err(key) => vec![Anomaly::new(
            "linearizable",
            format!(
                "undecided: the checker gave up on key {key:?} after {MAX_CHECKER_STATES} states; \
                 the run cannot be called linearizable"
            ),
        )],
        Ok(Verdict::Linearizable) => Vec::new(),
        Ok(Verdict::Violation { key, ops }) => {
            let nodes: HashMap<u64, u64> = history.iter().map(|o| (o.client, o.node)).collect();
            let (culprit, context) = witness(ops.clone());
            let show = |o: &Operation| {
                let done = o.complete.map_or("never".to_string(), |c| format!("{:.3}s", c as f64 / 1e6));
                let node = nodes.get(&o.client).map_or("final read".to_string(), |n| format!("node {n}"));
                format!(
                    "  client {:>3} ({node}) {:?} -> {:?} [{:.3}s .. {done}]",
                    o.client,
                    o.call,
                    o.ret,
                    o.invoke as f64 / 1e6
                )
            };
            let lines: Vec<String> = context.iter().map(show).collect();
            vec![Anomaly::new(
                "linearizable",
                format!(
                    "the history of key {key:?} ({} operations) is not linearizable; the shortest failing prefix \
                     (by completion) ends with\n{}\nafter these operations (the 25 before it and those concurrent \
                     with it):\n{}",
                    ops.len(),
                    show(&culprit),
                    lines.join("\n")
                ),
            )]
        }
    }
}

/// Narrows a key's non-linearizable history down for a human: the shortest prefix (ops
/// ordered by completion) that is already not linearizable, found by bisection; returns
/// its last operation and the operations just before or concurrent with it.
fn witness(mut ops: Vec<Operation>) -> (Operation, Vec<Operation>) {
    ops.sort_by_key(|o| (o.complete.unwrap_or(u64::MAX), o.invoke));
    let fails = |n: usize| {
        matches!(linearizability::check_bounded(&ops[..n], MAX_CHECKER_STATES), Ok(Verdict::Violation { .. }))
    };
    let (mut lo, mut hi) = (1, ops.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let culprit = ops[hi - 1].clone();
    let before = hi.saturating_sub(26);
    let mut context: Vec<Operation> = ops[before..hi - 1].to_vec();
    context.extend(
        ops[hi..].iter().filter(|o| o.invoke <= culprit.complete.unwrap_or(u64::MAX)).take(10).cloned(),
    );
    context.sort_by_key(|o| o.invoke);
    (culprit, context)
}

/// What a write leaves behind: `Some(Some(v))` writes v, `Some(None)` deletes, `None`
/// changes nothing (a CAS that did not match, a read).
fn written(op: &HistoryOp) -> Option<Option<String>> {
    match (&op.call, &op.result) {
        (OpCall::Put { value, .. }, OpResult::Ok | OpResult::Unknown { .. }) => Some(Some(value.clone())),
        (OpCall::Delete { .. }, OpResult::Ok | OpResult::Unknown { .. }) => Some(None),
        (OpCall::Cas { new, .. }, OpResult::Cas { matched: true } | OpResult::Unknown { .. }) => {
            Some(new.clone())
        }
        _ => None,
    }
}

fn acknowledged(op: &HistoryOp) -> bool {
    matches!(op.result, OpResult::Ok | OpResult::Cas { matched: true })
}

/// No acknowledged write is missing: the value a key ends with was written by some write
/// W, and no acknowledged write to that key was invoked after W had completed (it would
/// have overwritten W). A key that ends absent was last deleted, or never written.
pub fn lost_writes(history: &[HistoryOp], finals: &FinalValues) -> Vec<Anomaly> {
    let mut by_key: HashMap<&str, Vec<&HistoryOp>> = HashMap::new();
    for op in history {
        if let Some(k) = op.call.key() {
            by_key.entry(k).or_default().push(op);
        }
    }
    let mut out = Vec::new();
    for (member, values) in finals {
        for (key, value) in values {
            let ops = by_key.get(key.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            // Writes that could have produced the final value; a write without an answer
            // may have landed at any time, so it bounds nothing.
            let producers: Vec<&&HistoryOp> =
                ops.iter().filter(|o| written(o).as_ref() == Some(value)).collect();
            if value.is_some() && producers.is_empty() {
                out.push(Anomaly::new(
                    "no lost writes",
                    format!("node {member} holds {key} = {value:?}, a value no client wrote"),
                ));
                continue;
            }
            // When the final value was produced; `None`: it is the initial state (absent,
            // never deleted), before every operation.
            let produced_by =
                producers.iter().map(|o| if acknowledged(o) { o.complete_us } else { u64::MAX }).max();
            for w in ops.iter().filter(|o| acknowledged(o) && written(o).is_some()) {
                let after = produced_by.is_none_or(|t| w.invoke_us > t);
                if after && written(w).as_ref() != Some(value) {
                    out.push(Anomaly::new(
                        "no lost writes",
                        format!(
                            "node {member} holds {key} = {value:?}, but client {} on node {} had {:?} acknowledged \
                             (invoked at {} us, after the write of the final value completed at {})",
                            w.client,
                            w.node,
                            w.call,
                            w.invoke_us,
                            produced_by.map_or("the start".to_string(), |t| format!("{t} us"))
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// Every member holds the same KV hash, and the same final value for every key.
pub fn same_state(hashes: &BTreeMap<u64, (i64, i64)>, finals: &FinalValues) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let distinct: BTreeSet<&(i64, i64)> = hashes.values().collect();
    if distinct.len() > 1 {
        out.push(Anomaly::new(
            "same state",
            format!("members hold different KV hashes (hash, revision): {hashes:?}"),
        ));
    }
    let mut reference: Option<(u64, &BTreeMap<String, Option<String>>)> = None;
    for (member, values) in finals {
        match reference {
            None => reference = Some((*member, values)),
            Some((first, expected)) => {
                for (key, v) in values {
                    let e = expected.get(key).cloned().flatten();
                    if *v != e {
                        out.push(Anomaly::new(
                            "same state",
                            format!("{key} is {v:?} on node {member} but {e:?} on node {first}"),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Every member applied the same entry (term, operation, key, payload) at every index
/// that both still keep in their applied-entry history.
pub fn same_log(logs: &BTreeMap<u64, Vec<LogRecord>>) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let mut by_index: BTreeMap<u64, (u64, &LogRecord)> = BTreeMap::new();
    for (member, records) in logs {
        for r in records {
            match by_index.get(&r.index) {
                None => {
                    by_index.insert(r.index, (*member, r));
                }
                Some((other, first)) => {
                    let same = (first.term, &first.operation, &first.target, &first.data)
                        == (r.term, &r.operation, &r.target, &r.data);
                    if !same && out.len() < 20 {
                        out.push(Anomaly::new(
                            "same log",
                            format!(
                                "index {}: node {other} applied term {} {} {:?} {}, node {member} applied term {} {} {:?} {}",
                                r.index, first.term, first.operation, first.target, first.data, r.term, r.operation,
                                r.target, r.data
                            ),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// How long after the oldest entry of a member's window an append must have been invoked
/// to be required in that window; covers the gap between a payload's timestamp and its
/// index being fixed.
pub const APPEND_SLACK_MS: u64 = 10_000;

/// Every acknowledged `pgraft_replicate_entry` is in every member's applied history.
///
/// A member keeps its last 10,000 applied entries. An entry appended after the oldest
/// entry of that window was applied got a later index, so it must be in the window;
/// appends older than that (by [`APPEND_SLACK_MS`]) are not judged on that member.
/// Returns the anomalies and how many (append, member) pairs were checked.
pub fn appends_present(history: &[HistoryOp], logs: &BTreeMap<u64, Vec<LogRecord>>) -> (Vec<Anomaly>, u64) {
    let mut out = Vec::new();
    let mut checked = 0;
    for (member, records) in logs {
        let present: BTreeSet<&str> = records
            .iter()
            .filter(|r| r.operation == "replicate_entry")
            .filter_map(|r| r.data.strip_prefix("{\"data\": \"").and_then(|d| d.strip_suffix("\"}")))
            .collect();
        let oldest = records.iter().map(|r| r.applied_ms).min().unwrap_or(u64::MAX);
        for op in history {
            let OpCall::Append { data } = &op.call else { continue };
            if op.result != OpResult::Ok || op.invoke_unix_ms < oldest.saturating_add(APPEND_SLACK_MS) {
                continue;
            }
            checked += 1;
            if !present.contains(data.as_str()) && out.len() < 20 {
                out.push(Anomaly::new(
                    "appends present",
                    format!(
                        "node {member} lacks the acknowledged entry {data:?} (client {} on node {}, invoked at {} us)",
                        op.client, op.node, op.invoke_us
                    ),
                ));
            }
        }
    }
    (out, checked)
}

/// At most one leader was seen in any term.
pub fn one_leader_per_term(seen: &LeaderSightings) -> Vec<Anomaly> {
    seen.iter()
        .filter(|(_, leaders)| leaders.len() > 1)
        .map(|(term, leaders)| {
            let who: Vec<String> = leaders
                .iter()
                .map(|(l, s)| format!("node {l} (reported by node {} at {} us)", s.observer, s.at_us))
                .collect();
            Anomaly::new("one leader per term", format!("term {term} had leaders {}", who.join(", ")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torture::leader_monitor::Sighting;

    fn op(client: u64, call: OpCall, result: OpResult, invoke_us: u64, complete_us: u64) -> HistoryOp {
        HistoryOp {
            client,
            node: client,
            call,
            result,
            invoke_us,
            complete_us,
            invoke_unix_ms: invoke_us / 1000,
        }
    }
    fn put(v: &str) -> OpCall {
        OpCall::Put { key: "k".into(), value: v.into() }
    }
    fn get() -> OpCall {
        OpCall::Get { key: "k".into() }
    }
    fn val(v: Option<&str>) -> OpResult {
        OpResult::Value { value: v.map(str::to_string) }
    }
    fn finals(v: Option<&str>) -> FinalValues {
        BTreeMap::from([(1, BTreeMap::from([("k".to_string(), v.map(str::to_string))]))])
    }
    fn unknown() -> OpResult {
        OpResult::Unknown { error: "timeout".into() }
    }

    #[test]
    fn a_clean_history_passes_every_history_check() {
        let h = vec![
            op(1, put("a"), OpResult::Ok, 0, 10),
            op(2, get(), val(Some("a")), 20, 30),
            op(1, put("b"), unknown(), 40, 50),
            op(2, get(), val(Some("a")), 60, 70),
        ];
        // The unknown put may land late: "b" at the end is fine, and so is "a".
        for end in [Some("a"), Some("b")] {
            assert!(linearizable(&h, &finals(end)).is_empty(), "{end:?}");
            assert!(lost_writes(&h, &finals(end)).is_empty(), "{end:?}");
        }
    }

    #[test]
    fn a_stale_read_is_caught() {
        let h = vec![
            op(1, put("a"), OpResult::Ok, 0, 10),
            op(1, put("b"), OpResult::Ok, 20, 30),
            op(2, get(), val(Some("a")), 40, 50),
        ];
        let a = linearizable(&h, &finals(Some("b")));
        assert_eq!(a.len(), 1);
        assert!(a[0].detail.contains("\"k\""), "{}", a[0].detail);
    }

    #[test]
    fn a_final_state_that_forgot_an_acknowledged_write_is_caught_twice() {
        let h = vec![op(1, put("a"), OpResult::Ok, 0, 10), op(1, put("b"), OpResult::Ok, 20, 30)];
        let lost = lost_writes(&h, &finals(Some("a")));
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].detail.contains("\"b\""), "{}", lost[0].detail);
        assert!(!linearizable(&h, &finals(Some("a"))).is_empty());
        // A key that ends absent although a put was acknowledged and nothing deleted it.
        assert_eq!(lost_writes(&h, &finals(None)).len(), 2);
        // A value nobody wrote.
        assert_eq!(lost_writes(&h, &finals(Some("zz"))).len(), 1);
    }

    #[test]
    fn deletes_and_cas_produce_final_states() {
        let del = OpCall::Delete { key: "k".into() };
        let cas = OpCall::Cas { key: "k".into(), expected: Some("a".into()), new: Some("c".into()) };
        let h = vec![
            op(1, put("a"), OpResult::Ok, 0, 10),
            op(2, cas.clone(), OpResult::Cas { matched: true }, 20, 30),
            op(1, del.clone(), OpResult::Ok, 40, 50),
        ];
        assert!(lost_writes(&h, &finals(None)).is_empty());
        assert!(linearizable(&h, &finals(None)).is_empty());
        // Ending with the CAS's value means the later delete was lost.
        assert_eq!(lost_writes(&h, &finals(Some("c"))).len(), 1);
        // A CAS that answered "no match" cannot have written.
        let h2 =
            vec![op(1, put("a"), OpResult::Ok, 0, 10), op(2, cas, OpResult::Cas { matched: false }, 20, 30)];
        assert!(!linearizable(&h2, &finals(Some("a"))).is_empty(), "the CAS should have matched");
    }

    #[test]
    fn members_that_differ_are_caught() {
        let mut f = finals(Some("a"));
        f.insert(2, BTreeMap::from([("k".to_string(), Some("b".to_string()))]));
        assert_eq!(same_state(&BTreeMap::from([(1, (5, 9)), (2, (5, 9))]), &f).len(), 1);
        assert_eq!(same_state(&BTreeMap::from([(1, (5, 9)), (2, (6, 9))]), &finals(Some("a"))).len(), 1);
        assert!(same_state(&BTreeMap::from([(1, (5, 9)), (2, (5, 9))]), &finals(Some("a"))).is_empty());
    }

    fn rec(index: u64, term: u64, data: &str, applied_ms: u64) -> LogRecord {
        LogRecord {
            index,
            term,
            operation: "replicate_entry".into(),
            target: String::new(),
            data: format!("{{\"data\": \"{data}\"}}"),
            applied_ms,
        }
    }

    #[test]
    fn logs_must_agree_where_they_overlap() {
        let a = vec![rec(1, 1, "x", 0), rec(2, 1, "y", 0)];
        let b = vec![rec(2, 1, "y", 0), rec(3, 2, "z", 0)];
        assert!(same_log(&BTreeMap::from([(1, a.clone()), (2, b)])).is_empty());
        let c = vec![rec(2, 2, "y", 0)];
        assert_eq!(same_log(&BTreeMap::from([(1, a), (3, c)])).len(), 1);
    }

    #[test]
    fn acknowledged_appends_must_be_in_each_window() {
        let t0 = 1_000_000;
        let append = |d: &str, invoke_ms: u64, r: OpResult| HistoryOp {
            client: 1,
            node: 1,
            call: OpCall::Append { data: d.into() },
            result: r,
            invoke_us: 0,
            complete_us: 1,
            invoke_unix_ms: invoke_ms,
        };
        let h = vec![
            append("old", t0 - 1, OpResult::Ok),
            append("new", t0 + APPEND_SLACK_MS + 5, OpResult::Ok),
            append("maybe", t0 + APPEND_SLACK_MS + 6, unknown()),
        ];
        let window = vec![rec(10, 1, "new", t0)];
        let (a, checked) = appends_present(&h, &BTreeMap::from([(1, window)]));
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(checked, 1, "only the acknowledged append inside the window is judged");
        let (a, _) = appends_present(&h, &BTreeMap::from([(2, vec![rec(10, 1, "other", t0)])]));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let s = |observer, at_us| Sighting { observer, at_us };
        let mut seen: LeaderSightings = BTreeMap::new();
        seen.insert(2, BTreeMap::from([(1, s(1, 5))]));
        seen.insert(3, BTreeMap::from([(2, s(2, 9))]));
        assert!(one_leader_per_term(&seen).is_empty());
        seen.get_mut(&3).expect("term 3").insert(3, s(3, 10));
        let a = one_leader_per_term(&seen);
        assert_eq!(a.len(), 1);
        assert!(a[0].detail.contains("term 3"));
    }
}
