//! The database checks beside the list-append one: the bank, "never two primaries", and
//! every server ending with the same tables on the same timeline.

use std::collections::{BTreeMap, BTreeSet};

use super::checks::Anomaly;
use super::db_history::{ServerId, Txn, TxnCall, TxnOutcome};

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

/// How long before its successor's first acknowledged write a replaced primary's
/// acknowledged transaction may be lost in asynchronous mode: a generous time bound on
/// what `pgraft.maximum_lag_on_failover` (1 MB of WAL by default) lets a failover lose.
pub const ASYNC_LOSS_WINDOW_US: u64 = 10_000_000;

/// Checks that asynchronous mode lost only what it may: every lost transaction was
/// acknowledged by a primary that was later replaced, at most [`ASYNC_LOSS_WINDOW_US`]
/// before the first write its successor acknowledged.
pub fn loss_window(txns: &[Txn], lost: &BTreeSet<usize>) -> Vec<Anomaly> {
    let mut first_ack: BTreeMap<ServerId, u64> = BTreeMap::new();
    for t in txns.iter().filter(|t| t.is_ok() && t.call.writes()) {
        let e = first_ack.entry(t.server).or_insert(u64::MAX);
        *e = (*e).min(t.complete_us);
    }
    let mut found = Vec::new();
    for i in lost {
        let t = &txns[*i];
        let mine = first_ack.get(&t.server).copied().unwrap_or(0);
        let successor =
            first_ack.iter().filter(|(s, at)| **s != t.server && **at > mine).map(|(_, at)| *at).min();
        let within = successor.is_some_and(|s| s.saturating_sub(t.complete_us) <= ASYNC_LOSS_WINDOW_US);
        if !within {
            found.push(Anomaly {
                check: "lost only in the failover window".into(),
                detail: format!(
                    "transaction {i} ({}, {}-{} µs, node {} timeline {}) is lost; the next primary's first write: {}",
                    t.call.name(),
                    t.invoke_us,
                    t.complete_us,
                    t.server.node,
                    t.server.timeline,
                    successor.map_or("none".to_string(), |s| format!("{s} µs"))
                ),
            });
        }
    }
    found
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
    fn an_asynchronous_loss_must_come_just_before_a_failover() {
        let txns = vec![write(1, 1, 0, 10), write(1, 1, 20, 30), write(2, 2, 5_000_000, 5_000_010)];
        assert!(loss_window(&txns, &BTreeSet::from([1])).is_empty());
        // Lost on the last primary, which nobody replaced: not a failover's loss.
        assert_eq!(loss_window(&txns, &BTreeSet::from([2])).len(), 1);
        let late = vec![write(1, 1, 0, 10), write(2, 2, 60_000_000, 60_000_010)];
        assert_eq!(loss_window(&late, &BTreeSet::from([0])).len(), 1);
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
