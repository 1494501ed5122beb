//! The database checks beside the list-append one: the bank, "never two primaries", and
//! every server ending with the same tables on the same timeline.

use std::collections::{BTreeMap, BTreeSet};

use super::checks::Anomaly;
use super::db_history::{ServerId, Txn, TxnCall, TxnOutcome};
use super::timelines::Timelines;

/// The bank as it ended: every balance and every ledger row `(id, from, to, amount)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalBank {
    /// `account → balance`.
    pub balances: BTreeMap<i32, i64>,
    /// `id → (from, to, amount)`.
    pub ledger: BTreeMap<i64, (i32, i32, i64)>,
}

/// Checks the bank: every acknowledged read of the balances sums to the opening total;
/// the final balances are the opening ones moved by exactly the transfers in the ledger;
/// every acknowledged transfer is in the ledger (its absence is a lost transfer, listed
/// apart) and no rolled-back one is. Returns the anomalies and the lost transfers'
/// indexes in `txns`.
pub fn bank(txns: &[Txn], fin: &FinalBank, accounts: i32, opening: i64) -> (Vec<Anomaly>, Vec<usize>) {
    let mut found = Vec::new();
    let mut anomaly = |check: &str, detail: String| found.push(Anomaly { check: check.into(), detail });
    let total = i64::from(accounts) * opening;
    for (i, t) in txns.iter().enumerate() {
        if let (TxnCall::Balances { read: Some(read) }, true) = (&t.call, t.is_ok()) {
            let sum: i64 = read.iter().map(|(_, b)| b).sum();
            if sum != total || read.len() != accounts as usize {
                anomaly(
                    "bank total constant in every read",
                    format!(
                        "transaction {i} (client {}, {} µs, node {}) read {} accounts summing to {sum}, not {total}",
                        t.client,
                        t.invoke_us,
                        t.server.node,
                        read.len()
                    ),
                );
            }
        }
    }
    let mut expected: BTreeMap<i32, i64> = (1..=accounts).map(|a| (a, opening)).collect();
    for (from, to, amount) in fin.ledger.values() {
        *expected.entry(*from).or_default() -= amount;
        *expected.entry(*to).or_default() += amount;
    }
    if expected != fin.balances {
        anomaly(
            "final balances match the ledger",
            format!("balances {:?}, the ledger implies {expected:?}", fin.balances),
        );
    }
    let mut lost = Vec::new();
    for (i, t) in txns.iter().enumerate() {
        let TxnCall::Transfer { id, from, to, amount } = &t.call else { continue };
        let row = fin.ledger.get(id);
        match (&t.outcome, row) {
            (TxnOutcome::Ok, None) => lost.push(i),
            (TxnOutcome::Failed { error }, Some(_)) => anomaly(
                "aborted write visible (G1a)",
                format!("transfer {id} failed ({error}) but is in the ledger"),
            ),
            (_, Some(r)) if *r != (*from, *to, *amount) => {
                anomaly("final balances match the ledger", format!("transfer {id} is in the ledger as {r:?}"))
            }
            _ => {}
        }
    }
    (found, lost)
}

/// Checks that no two servers acknowledged commits in overlapping periods: for two
/// (server, timeline) pairs A and B, a commit acknowledged by B that was invoked after one
/// of A's completed, and completed before another of A's was invoked, means both took
/// writes at once (A's commits surround one of B's in real time).
pub fn one_writer_at_a_time(txns: &[Txn]) -> Vec<Anomaly> {
    let mut by_server: BTreeMap<ServerId, Vec<&Txn>> = BTreeMap::new();
    for t in txns.iter().filter(|t| t.is_ok() && t.call.writes()) {
        by_server.entry(t.server).or_default().push(t);
    }
    let mut found = Vec::new();
    for (a, a_txns) in &by_server {
        let first_done = a_txns.iter().map(|t| t.complete_us).min().unwrap_or(u64::MAX);
        let last_start = a_txns.iter().map(|t| t.invoke_us).max().unwrap_or(0);
        for (b, b_txns) in &by_server {
            if a == b {
                continue;
            }
            if let Some(t) = b_txns.iter().find(|t| t.invoke_us > first_done && t.complete_us < last_start) {
                found.push(Anomaly {
                    check: "one server acknowledges commits at a time".into(),
                    detail: format!(
                        "node {} (timeline {}) acknowledged commits from {first_done} to {last_start} µs; \
                         node {} (timeline {}) acknowledged one between, {}-{} µs",
                        a.node, a.timeline, b.node, b.timeline, t.invoke_us, t.complete_us
                    ),
                });
            }
        }
    }
    found
}

/// What asynchronous mode may lose in a failover (docs/failover.md, "Asynchronous
/// mode"): the promoted standby was at most `pgraft.maximum_lag_on_failover` behind the old
/// primary's last published position, which the primary publishes again once it moved half
/// the limit, at most once a second, and never after it lost the Raft majority; it stops
/// acknowledging at most the fencing bound after that.
#[derive(Debug, Clone, Copy)]
pub struct LossBound {
    /// One and a half times the limit: lost commits this close to the point where the
    /// survivor's WAL diverged are within it whenever they were written.
    pub bytes: u64,
    /// How long the commits further out may span: they were all written after the
    /// primary's position passed the last published one by half the limit, which it would
    /// have published within a second had it kept the majority, and before it fenced itself.
    /// A second, the fencing bound and a margin for the answers' way back.
    pub span_us: u64,
}

impl LossBound {
    /// The bound for `maximum_lag_on_failover` bytes (0: no limit, so no byte bound) and
    /// the fencing bound in ms.
    pub fn new(maximum_lag_bytes: u64, fencing_bound_ms: u64) -> Self {
        let bytes = if maximum_lag_bytes == 0 { u64::MAX } else { maximum_lag_bytes.saturating_mul(3) / 2 };
        Self { bytes, span_us: (1_000 + fencing_bound_ms + 1_000) * 1_000 }
    }
}

/// Checks that asynchronous mode lost only what it may: every lost commit was written on a
/// timeline the final one diverged from, and those past [`LossBound::bytes`] from the
/// divergence were acknowledged by their server within [`LossBound::span_us`] of each other.
/// Returns the anomalies and the furthest a lost commit lay past its divergence, in bytes.
pub fn loss_bound(
    txns: &[Txn],
    lost: &BTreeSet<usize>,
    timelines: &Timelines,
    final_timeline: u32,
    bound: LossBound,
) -> (Vec<Anomaly>, u64) {
    let check = "lost only within the asynchronous bound";
    let mut found = Vec::new();
    let mut furthest = 0;
    let mut beyond: BTreeMap<ServerId, Vec<(usize, u64)>> = BTreeMap::new();
    for i in lost {
        let t = &txns[*i];
        let what = format!(
            "transaction {i} ({}, {}-{} µs, node {} timeline {})",
            t.call.name(),
            t.invoke_us,
            t.complete_us,
            t.server.node,
            t.server.timeline
        );
        let diverged = timelines.divergence(t.server.timeline, final_timeline);
        let (lsn, at) = match (t.lsn, diverged) {
            (Some(lsn), Ok(Some(at))) => (lsn, at),
            (None, _) => {
                found.push(Anomaly {
                    check: check.into(),
                    detail: format!("{what} is lost; its WAL position is unknown"),
                });
                continue;
            }
            (_, Ok(None)) => {
                found.push(Anomaly {
                    check: check.into(),
                    detail: format!("{what} is lost although its timeline is the final one"),
                });
                continue;
            }
            (_, Err(e)) => {
                found.push(Anomaly { check: check.into(), detail: format!("{what} is lost: {e:#}") });
                continue;
            }
        };
        let past = lsn.saturating_sub(at);
        furthest = furthest.max(past);
        if past > bound.bytes {
            beyond.entry(t.server).or_default().push((*i, t.complete_us));
        }
    }
    for (server, acks) in beyond {
        let (first, last) = (acks.iter().map(|a| a.1).min(), acks.iter().map(|a| a.1).max());
        if let (Some(first), Some(last)) = (first, last) {
            if last - first > bound.span_us {
                found.push(Anomaly {
                    check: check.into(),
                    detail: format!(
                        "node {} (timeline {}) acknowledged {} lost commits more than {} bytes past the \
                         divergence, from {first} to {last} µs: longer than {} µs",
                        server.node,
                        server.timeline,
                        acks.len(),
                        bound.bytes,
                        bound.span_us
                    ),
                });
            }
        }
    }
    (found, furthest)
}

/// What one server holds at the end: its timeline and a checksum per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEnd {
    /// The timeline it is on.
    pub timeline: u32,
    /// `table → md5 of its rows in key order`.
    pub tables: BTreeMap<String, String>,
}

/// Checks that every server ends on one timeline with identical tables.
pub fn same_tables(ends: &BTreeMap<u64, ServerEnd>) -> Vec<Anomaly> {
    let distinct: BTreeSet<&ServerEnd> = ends.values().collect();
    if distinct.len() <= 1 {
        return Vec::new();
    }
    vec![Anomaly { check: "same timeline and tables on every server".into(), detail: format!("{ends:?}") }]
}

impl PartialOrd for ServerEnd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ServerEnd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.timeline, &self.tables).cmp(&(other.timeline, &other.tables))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(node: u64, timeline: u32, invoke_us: u64, complete_us: u64) -> Txn {
        Txn {
            client: 0,
            call: TxnCall::Transfer { id: invoke_us as i64, from: 1, to: 2, amount: 1 },
            outcome: TxnOutcome::Ok,
            server: ServerId { node, system_id: 7, timeline },
            invoke_us,
            complete_us,
            lsn: None,
        }
    }

    #[test]
    fn a_failover_is_one_writer_after_another_and_a_split_brain_is_not() {
        let clean = vec![write(1, 1, 0, 10), write(1, 1, 20, 30), write(2, 2, 40, 50), write(2, 2, 60, 70)];
        assert!(one_writer_at_a_time(&clean).is_empty());
        // Commits in flight across the switch overlap only in their uncertainty: fine.
        let close = vec![write(1, 1, 0, 30), write(2, 2, 20, 40)];
        assert!(one_writer_at_a_time(&close).is_empty());
        let split = vec![write(1, 1, 0, 10), write(2, 2, 20, 30), write(1, 1, 40, 50)];
        assert_eq!(one_writer_at_a_time(&split).len(), 1);
    }

    #[test]
    fn an_asynchronous_loss_is_judged_in_bytes_past_the_divergence() {
        let mut timelines = Timelines::default();
        timelines.add(1, None).unwrap();
        timelines.add(2, Some("1\t0/1000000\tx\n")).unwrap();
        let bound = LossBound::new(1 << 20, 2_500);
        let at =
            |lsn: u64, complete_us: u64| Txn { lsn: Some(0x100_0000 + lsn), ..write(1, 1, 0, complete_us) };
        // Within one and a half limits of the fork, however long it took.
        let txns = vec![at(100, 0), at(1 << 20, 60_000_000), at(3 << 19, 90_000_000)];
        let (found, furthest) = loss_bound(&txns, &BTreeSet::from([0, 1, 2]), &timelines, 2, bound);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(furthest, 3 << 19);
        // Further out, within the span of a second and the fencing bound.
        let txns = vec![at(2 << 20, 1_000_000), at(8 << 20, 4_000_000)];
        assert!(loss_bound(&txns, &BTreeSet::from([0, 1]), &timelines, 2, bound).0.is_empty());
        // Further out, over a longer span: more than the promise.
        let txns = vec![at(2 << 20, 1_000_000), at(8 << 20, 9_000_000)];
        assert_eq!(loss_bound(&txns, &BTreeSet::from([0, 1]), &timelines, 2, bound).0.len(), 1);
        // Lost on the timeline that survived, or with no position: never allowed.
        let on_final = Txn { server: ServerId { timeline: 2, ..at(0, 0).server }, ..at(0, 0) };
        let unknown = Txn { lsn: None, ..at(0, 0) };
        let (found, _) = loss_bound(&[on_final, unknown], &BTreeSet::from([0, 1]), &timelines, 2, bound);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn the_bank_finds_lost_transfers_and_wrong_totals() {
        let txns = vec![
            write(1, 1, 0, 10),
            Txn { call: TxnCall::Balances { read: Some(vec![(1, 99), (2, 100)]) }, ..write(1, 1, 20, 30) },
        ];
        let fin = FinalBank { balances: BTreeMap::from([(1, 100), (2, 100)]), ledger: BTreeMap::new() };
        let (found, lost) = bank(&txns, &fin, 2, 100);
        assert_eq!(lost, vec![0]);
        assert_eq!(found.len(), 1, "{found:?}");
        let fin = FinalBank {
            balances: BTreeMap::from([(1, 99), (2, 101)]),
            ledger: BTreeMap::from([(0, (1, 2, 1))]),
        };
        let (found, lost) = bank(&txns[..1], &fin, 2, 100);
        assert!(found.is_empty() && lost.is_empty(), "{found:?} {lost:?}");
    }
}
