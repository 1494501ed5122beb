//! The list-append check: Elle's inference of transaction dependencies from reads of
//! append-only lists, and a search for cycles among them.
//!
//! ```text
//!   final lists (identical on every server)  ──▶ version order of each key
//!   every acknowledged read must be a prefix of its key's final list
//!   dependencies between committed transactions:
//!     ww  T1 appended x, T2 appended the value right after x
//!     wr  T1 appended the last value T2 read
//!     rw  T1 read a list, T2 appended the value right after what T1 saw
//!     rt  T1 completed before T2 was invoked   (strict serializability only)
//!   a cycle in ww ∪ wr ∪ rw is a serializability anomaly (G0, G1c, G-single, G2);
//!   one that needs rt breaks strict serializability (e.g. a commit lost and re-done)
//! ```
//!
//! Because every value is appended once in the whole run and lists only grow, a key's
//! final list orders every append to it that committed, and a read names exactly which
//! appends it saw: the writes and reads of a history fix their order without guessing,
//! which is why Elle's list-append is the sharpest workload for SQL databases. Reads are
//! only trusted from acknowledged transactions; an unknown transaction counts as committed
//! once one of its appends is seen.
//!
//! Real-time edges are not added pairwise (quadratic): acknowledged transactions sorted by
//! completion form a chain of time points, each transaction points to its completion's
//! point and each point to every transaction invoked after it, so a path between two
//! transactions through the chain exists exactly when the first completed before the
//! second began.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::checks::Anomaly;
use super::db_history::{Micro, Txn, TxnCall, TxnOutcome};

/// The final list of every key, as read from the converged cluster.
pub type FinalLists = BTreeMap<i32, Vec<i64>>;

/// How a dependency was inferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dep {
    Ww,
    Wr,
    Rw,
    Rt,
}

impl Dep {
    fn name(self) -> &'static str {
        match self {
            Dep::Ww => "ww",
            Dep::Wr => "wr",
            Dep::Rw => "rw",
            Dep::Rt => "rt",
        }
    }
}

/// What the check found.
#[derive(Debug, Default)]
pub struct ListAppendFindings {
    /// Everything wrong except lost appends.
    pub anomalies: Vec<Anomaly>,
    /// Acknowledged appends missing from the final lists: `(key, value, txn index)`.
    pub lost: Vec<(i32, i64, usize)>,
    /// Transactions in the dependency graph.
    pub committed: usize,
    /// Dependency edges inferred (real-time ones not counted).
    pub edges: usize,
}

/// At most this many cycles are described; one is enough to fail a run.
const MAX_CYCLES: usize = 5;

/// Checks the list-append transactions of `txns` against the final lists. `strict` adds
/// real-time order (a single primary at a time promises strict serializability).
/// Transactions in `excused` (indexes into `txns`, for example the appends an
/// asynchronous failover is allowed to lose, and whatever read them) are left out of
/// the graph; their loss is still listed in `lost`.
pub fn check(
    txns: &[Txn],
    finals: &FinalLists,
    strict: bool,
    excused: &std::collections::BTreeSet<usize>,
) -> ListAppendFindings {
    let mut f = ListAppendFindings::default();
    let anomaly = |f: &mut ListAppendFindings, check: &str, detail: String| {
        f.anomalies.push(Anomaly { check: check.into(), detail });
    };

    // Who appended each value.
    let mut writer: HashMap<i64, (usize, i32)> = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        for (key, value) in appends(t) {
            if let Some((j, _)) = writer.insert(value, (i, key)) {
                anomaly(&mut f, "list-append", format!("value {value} appended by transactions {j} and {i}"));
            }
        }
    }

    // The final lists: no duplicates, no value from nowhere or from a rolled-back txn.
    let mut committed: Vec<bool> = txns.iter().map(Txn::is_ok).collect();
    // Each value in the final lists, with the key whose list holds it.
    let mut in_final: HashMap<i64, i32> = HashMap::new();
    for (key, list) in finals {
        for v in list {
            if in_final.insert(*v, *key).is_some() {
                anomaly(&mut f, "list-append", format!("key {key}: value {v} twice in the final list"));
            }
            match writer.get(v) {
                None => anomaly(&mut f, "list-append", format!("key {key}: value {v} was never appended")),
                Some((_, k)) if k != key => {
                    anomaly(&mut f, "list-append", format!("key {key}: value {v} was appended to key {k}"))
                }
                Some((i, _)) => match &txns[*i].outcome {
                    TxnOutcome::Failed { error } => anomaly(
                        &mut f,
                        "aborted write visible (G1a)",
                        format!("key {key}: value {v} of rolled-back transaction {i} ({error})"),
                    ),
                    _ => committed[*i] = true,
                },
            }
        }
    }

    // Lost acknowledged appends.
    for (i, t) in txns.iter().enumerate() {
        if t.is_ok() {
            for (key, value) in appends(t) {
                if in_final.get(&value) != Some(&key) {
                    f.lost.push((key, value, i));
                }
            }
        }
    }

    // Acknowledged reads are prefixes of the final lists.
    for (i, t) in txns.iter().enumerate() {
        if !t.is_ok() || excused.contains(&i) {
            continue;
        }
        for (key, read) in reads(t) {
            let empty = Vec::new();
            let fin = finals.get(&key).unwrap_or(&empty);
            if !fin.starts_with(read) {
                anomaly(
                    &mut f,
                    "reads are prefixes of the final list",
                    format!(
                        "transaction {i} (client {}, {} µs) read key {key} as {}, final list {}",
                        t.client,
                        t.invoke_us,
                        brief(read),
                        brief(fin)
                    ),
                );
            }
        }
    }

    // The dependency graph over committed, not excused transactions.
    let in_graph: Vec<bool> =
        (0..txns.len()).map(|i| committed[i] && !excused.contains(&i) && is_list_append(&txns[i])).collect();
    f.committed = in_graph.iter().filter(|b| **b).count();
    let n = txns.len();
    let mut graph = Graph::new(n);
    let add = |g: &mut Graph, a: usize, b: usize, d: Dep| {
        if a != b && in_graph[a] && in_graph[b] {
            g.edge(a, b, d);
        }
    };
    for list in finals.values() {
        for pair in list.windows(2) {
            if let (Some((a, _)), Some((b, _))) = (writer.get(&pair[0]), writer.get(&pair[1])) {
                add(&mut graph, *a, *b, Dep::Ww);
            }
        }
    }
    for (i, t) in txns.iter().enumerate() {
        if !t.is_ok() {
            continue;
        }
        for (key, read) in reads(t) {
            if let Some((w, _)) = read.last().and_then(|v| writer.get(v)) {
                add(&mut graph, *w, i, Dep::Wr);
            }
            let next = finals.get(&key).and_then(|l| l.get(read.len()));
            if let Some((w, _)) = next.and_then(|v| writer.get(v)) {
                add(&mut graph, i, *w, Dep::Rw);
            }
        }
    }
    f.edges = graph.edges;
    if strict {
        graph.add_real_time(txns, &in_graph);
    }
    f.anomalies = capped(std::mem::take(&mut f.anomalies));
    for cycle in graph.cycles(n).into_iter().take(MAX_CYCLES) {
        let kinds: Vec<Dep> = cycle.iter().map(|(_, d)| *d).collect();
        let steps: Vec<String> = cycle
            .iter()
            .map(|(t, d)| {
                let x = &txns[*t];
                format!("T{t} (client {}, {}-{} µs) -{}->", x.client, x.invoke_us, x.complete_us, d.name())
            })
            .collect();
        anomaly(&mut f, cycle_name(&kinds), format!("{} T{}", steps.join(" "), cycle[0].0));
    }
    f
}

/// The transactions an asynchronous failover's loss excuses from the order checks: those
/// whose appends were lost (`lost`, from a first [`check`]), and those that read a lost
/// value (they read from a primary whose history was then discarded).
pub fn excused_by_loss(txns: &[Txn], lost: &[(i32, i64, usize)]) -> std::collections::BTreeSet<usize> {
    let values: std::collections::HashSet<i64> = lost.iter().map(|(_, v, _)| *v).collect();
    let mut out: std::collections::BTreeSet<usize> = lost.iter().map(|(_, _, i)| *i).collect();
    for (i, t) in txns.iter().enumerate() {
        if reads(t).any(|(_, list)| list.iter().any(|v| values.contains(v))) {
            out.insert(i);
        }
    }
    out
}

/// At most this many anomalies of one check are described; the rest are counted.
const MAX_PER_CHECK: usize = 20;

/// Keeps the first [`MAX_PER_CHECK`] anomalies of each check and one that counts the rest
/// (a broken cluster yields thousands, each naming whole lists).
fn capped(all: Vec<Anomaly>) -> Vec<Anomaly> {
    let mut kept: Vec<Anomaly> = Vec::new();
    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    for a in all {
        if kept.iter().filter(|k| k.check == a.check).count() < MAX_PER_CHECK {
            kept.push(a);
        } else {
            *dropped.entry(a.check).or_default() += 1;
        }
    }
    for (check, n) in dropped {
        kept.push(Anomaly { detail: format!("... and {n} more of this kind"), check });
    }
    kept
}

/// Elle's name for a cycle made of these dependency kinds.
fn cycle_name(kinds: &[Dep]) -> &'static str {
    let rw = kinds.iter().filter(|d| **d == Dep::Rw).count();
    if kinds.contains(&Dep::Rt) {
        "real-time order (strict serializability)"
    } else if rw == 1 {
        "G-single (read skew)"
    } else if rw > 1 {
        "G2 (anti-dependency cycle)"
    } else if kinds.contains(&Dep::Wr) {
        "G1c (circular information flow)"
    } else {
        "G0 (write cycle)"
    }
}

fn is_list_append(t: &Txn) -> bool {
    matches!(t.call, TxnCall::ListAppend { .. })
}

fn appends(t: &Txn) -> impl Iterator<Item = (i32, i64)> + '_ {
    let ops: &[Micro] = match &t.call {
        TxnCall::ListAppend { ops } => ops,
        _ => &[],
    };
    ops.iter().filter_map(|m| match m {
        Micro::Append { key, value } => Some((*key, *value)),
        Micro::Read { .. } => None,
    })
}

fn reads(t: &Txn) -> impl Iterator<Item = (i32, &Vec<i64>)> + '_ {
    let ops: &[Micro] = match &t.call {
        TxnCall::ListAppend { ops } => ops,
        _ => &[],
    };
    ops.iter().filter_map(|m| match m {
        Micro::Read { key, value: Some(v) } => Some((*key, v)),
        _ => None,
    })
}

fn brief(list: &[i64]) -> String {
    if list.len() <= 12 {
        format!("{list:?}")
    } else {
        format!("[{} values, first {:?}, last {:?}]", list.len(), &list[..4], &list[list.len() - 4..])
    }
}

/// Transactions `0..n`, then time points; edges labelled with their kind.
struct Graph {
    out: Vec<Vec<(usize, Dep)>>,
    edges: usize,
}

impl Graph {
    fn new(n: usize) -> Self {
        Self { out: vec![Vec::new(); n], edges: 0 }
    }

    fn edge(&mut self, a: usize, b: usize, d: Dep) {
        self.out[a].push((b, d));
        self.edges += 1;
    }

    /// The chain of completion time points (see the module's documentation).
    fn add_real_time(&mut self, txns: &[Txn], in_graph: &[bool]) {
        let mut done: Vec<usize> = (0..txns.len()).filter(|i| in_graph[*i] && txns[*i].is_ok()).collect();
        done.sort_by_key(|i| txns[*i].complete_us);
        let base = self.out.len();
        self.out.extend(std::iter::repeat_with(Vec::new).take(done.len()));
        for (rank, t) in done.iter().enumerate() {
            self.out[*t].push((base + rank, Dep::Rt));
            if rank + 1 < done.len() {
                self.out[base + rank].push((base + rank + 1, Dep::Rt));
            }
        }
        let completions: Vec<u64> = done.iter().map(|i| txns[*i].complete_us).collect();
        for (i, t) in txns.iter().enumerate() {
            if !in_graph[i] {
                continue;
            }
            // The last time point strictly before this transaction's invocation.
            let before = completions.partition_point(|c| *c < t.invoke_us);
            if before > 0 {
                self.out[base + before - 1].push((i, Dep::Rt));
            }
        }
    }

    /// One cycle through each strongly connected component that has one, as
    /// `(transaction, kind of the edge leaving it)`; time points are folded into `rt`.
    fn cycles(&self, txns: usize) -> Vec<Vec<(usize, Dep)>> {
        let comp = self.components();
        // Only a component of two or more vertices, or one with an edge to itself, holds a
        // cycle: searching from every vertex of a long history would be quadratic.
        let mut size = vec![0usize; self.out.len()];
        for c in &comp {
            size[*c] += 1;
        }
        let mut seen_comp = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for start in 0..txns {
            let c = comp[start];
            if size[c] < 2 && !self.out[start].iter().any(|(w, _)| *w == start) {
                continue;
            }
            if !seen_comp.insert(c) {
                continue;
            }
            if let Some(cycle) = self.cycle_from(start, &comp) {
                out.push(self.fold(cycle, txns));
            }
        }
        out
    }

    /// A shortest path from `start` back to itself inside its component.
    fn cycle_from(&self, start: usize, comp: &[usize]) -> Option<Vec<(usize, Dep)>> {
        let mut prev: Vec<Option<(usize, Dep)>> = vec![None; self.out.len()];
        let mut queue = VecDeque::from([start]);
        let mut reached = vec![false; self.out.len()];
        while let Some(v) = queue.pop_front() {
            for (w, d) in &self.out[v] {
                if comp[*w] != comp[start] {
                    continue;
                }
                if *w == start {
                    let mut path = vec![(v, *d)];
                    let mut at = v;
                    while at != start {
                        let (p, pd) = prev[at]?;
                        path.push((p, pd));
                        at = p;
                    }
                    path.reverse();
                    return Some(path);
                }
                if !reached[*w] {
                    reached[*w] = true;
                    prev[*w] = Some((v, *d));
                    queue.push_back(*w);
                }
            }
        }
        None
    }

    /// Drops time points from a cycle: a transaction's edge into the chain is `rt`.
    fn fold(&self, cycle: Vec<(usize, Dep)>, txns: usize) -> Vec<(usize, Dep)> {
        cycle.into_iter().filter(|(v, _)| *v < txns).collect()
    }

    /// Tarjan's strongly connected components, iteratively (histories have many
    /// thousands of transactions; recursion would overflow the stack).
    fn components(&self) -> Vec<usize> {
        let n = self.out.len();
        let (mut index, mut low, mut on_stack) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
        let mut comp = vec![usize::MAX; n];
        let (mut next, mut ncomp) = (0usize, 0usize);
        let mut stack = Vec::new();
        for root in 0..n {
            if index[root] != usize::MAX {
                continue;
            }
            let mut call: Vec<(usize, usize)> = vec![(root, 0)];
            index[root] = next;
            low[root] = next;
            next += 1;
            stack.push(root);
            on_stack[root] = true;
            while let Some(&mut (v, ref mut i)) = call.last_mut() {
                if let Some((w, _)) = self.out[v].get(*i) {
                    *i += 1;
                    let w = *w;
                    if index[w] == usize::MAX {
                        index[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        call.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp[w] = ncomp;
                        if w == v {
                            break;
                        }
                    }
                    ncomp += 1;
                }
            }
        }
        comp
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::torture::db_history::ServerId;

    fn txn(client: u64, ops: Vec<Micro>, invoke_us: u64, complete_us: u64) -> Txn {
        Txn {
            client,
            call: TxnCall::ListAppend { ops },
            outcome: TxnOutcome::Ok,
            server: ServerId { node: 1, system_id: 1, timeline: 1 },
            invoke_us,
            complete_us,
            lsn: None,
        }
    }
    fn r(key: i32, v: &[i64]) -> Micro {
        Micro::Read { key, value: Some(v.to_vec()) }
    }
    fn a(key: i32, value: i64) -> Micro {
        Micro::Append { key, value }
    }
    fn finals(x: &[(i32, &[i64])]) -> FinalLists {
        x.iter().map(|(k, l)| (*k, l.to_vec())).collect()
    }
    fn names(f: &ListAppendFindings) -> Vec<String> {
        f.anomalies.iter().map(|a| a.check.clone()).collect()
    }

    #[test]
    fn a_serial_history_passes() {
        let h = vec![
            txn(1, vec![r(1, &[]), a(1, 10)], 0, 10),
            txn(2, vec![r(1, &[10]), a(1, 20), a(2, 21)], 20, 30),
            txn(1, vec![r(1, &[10, 20]), r(2, &[21])], 40, 50),
        ];
        let f = check(&h, &finals(&[(1, &[10, 20]), (2, &[21])]), true, &BTreeSet::new());
        assert!(f.anomalies.is_empty(), "{:?}", f.anomalies);
        assert!(f.lost.is_empty());
        assert_eq!(f.committed, 3);
    }

    #[test]
    fn write_skew_is_g2() {
        // T0 reads x and y empty, appends to x; T1 reads x and y empty, appends to y.
        let h = vec![
            txn(1, vec![r(1, &[]), r(2, &[]), a(1, 10)], 0, 10),
            txn(2, vec![r(1, &[]), r(2, &[]), a(2, 20)], 0, 10),
        ];
        let f = check(&h, &finals(&[(1, &[10]), (2, &[20])]), false, &BTreeSet::new());
        assert_eq!(names(&f), vec!["G2 (anti-dependency cycle)"]);
    }

    #[test]
    fn a_stale_read_breaks_only_real_time_order() {
        // T1 appended 10 and was acknowledged; T2, invoked after, still read the empty list.
        let h = vec![txn(1, vec![a(1, 10)], 0, 10), txn(2, vec![r(1, &[])], 20, 30)];
        let fl = finals(&[(1, &[10])]);
        assert!(check(&h, &fl, false, &BTreeSet::new()).anomalies.is_empty());
        let f = check(&h, &fl, true, &BTreeSet::new());
        assert_eq!(names(&f), vec!["real-time order (strict serializability)"]);
    }

    #[test]
    fn lost_and_aborted_and_non_prefix_reads_are_found() {
        let mut failed = txn(3, vec![a(2, 30)], 0, 5);
        failed.outcome = TxnOutcome::Failed { error: "40001".into() };
        let h = vec![txn(1, vec![a(1, 10)], 0, 10), txn(2, vec![r(1, &[11])], 20, 30), failed];
        let f = check(&h, &finals(&[(1, &[]), (2, &[30])]), true, &BTreeSet::new());
        assert_eq!(f.lost, vec![(1, 10, 0)]);
        let n = names(&f);
        assert!(n.contains(&"aborted write visible (G1a)".to_string()), "{n:?}");
        assert!(n.contains(&"reads are prefixes of the final list".to_string()), "{n:?}");
    }

    #[test]
    fn a_long_serial_history_is_checked_in_linear_time() {
        // 60,000 transactions, each reading key k's list and appending to it: one search
        // per vertex (as before) would take minutes here.
        let (n, keys) = (60_000usize, 600i32);
        let mut lists: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        let mut h = Vec::with_capacity(n);
        for i in 0..n {
            let key = (i % keys as usize) as i32;
            let list = lists.entry(key).or_default();
            let t = i as u64 * 10;
            h.push(txn(i as u64 % 10, vec![r(key, &list.clone()), a(key, i as i64)], t, t + 5));
            list.push(i as i64);
        }
        let f = check(&h, &lists, true, &BTreeSet::new());
        assert!(f.anomalies.is_empty(), "{:?}", f.anomalies.first());
        assert_eq!(f.committed, n);
    }

    #[test]
    fn an_unknown_transaction_seen_in_a_list_committed() {
        let mut unknown = txn(1, vec![a(1, 10)], 0, 10);
        unknown.outcome = TxnOutcome::Unknown { error: "timeout".into() };
        let h = vec![unknown, txn(2, vec![r(1, &[10]), a(1, 20)], 20, 30)];
        let f = check(&h, &finals(&[(1, &[10, 20])]), true, &BTreeSet::new());
        assert!(f.anomalies.is_empty(), "{:?}", f.anomalies);
        assert_eq!(f.committed, 2);
    }
}
