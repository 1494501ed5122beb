//! The report of a run: what was done, what was injected, how the cluster coped, and the
//! verdict. Written as `report.json` beside `history.jsonl`, and printed as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::checks::Anomaly;
use super::history::{HistoryOp, OpResult};
use super::nemesis::FaultRecord;

/// Outcomes of one kind of operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Definite answers.
    pub ok: u64,
    /// Reads that failed (no effect).
    pub failed: u64,
    /// Writes without a definite answer.
    pub unknown: u64,
}

/// A stretch of time in which no client operation succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Its length in milliseconds.
    pub ms: u64,
    /// Its start, in milliseconds since the run started.
    pub from_ms: u64,
}

/// The result of one check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    /// Its name.
    pub name: String,
    /// Whether it found nothing wrong.
    pub passed: bool,
    /// What it looked at.
    pub scope: String,
}

/// Everything about one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The seed (replays the fault schedule and the clients' choices).
    pub seed: u64,
    /// Members.
    pub nodes: u64,
    /// Clients.
    pub clients: u64,
    /// How long the workload ran, in seconds.
    pub duration_s: f64,
    /// The enabled fault kinds.
    pub fault_kinds: Vec<String>,
    /// Whether the run was deliberately broken: reads served locally, without ReadIndex
    /// (KV workload), or fencing off on a cut-off primary (database workload).
    pub broken_local_reads: bool,
    /// Operation counts by kind (`put`, `get`, ...).
    pub ops: BTreeMap<String, OpCounts>,
    /// Every fault, in order.
    pub faults: Vec<FaultRecord>,
    /// Successful operations per 5-second bucket.
    pub throughput_per_5s: Vec<u64>,
    /// The longest stretch without any successful operation.
    pub longest_unavailability: Gap,
    /// The longest time a heal took to be followed by an accepted write.
    pub longest_recovery_ms: Option<u64>,
    /// The accepted-write time after the final heal.
    pub final_recovery_ms: Option<u64>,
    /// Terms in which a leader was seen.
    pub terms_seen: u64,
    /// The checks and whether each passed.
    pub checks: Vec<CheckResult>,
    /// Everything found wrong.
    pub anomalies: Vec<Anomaly>,
    /// `pass` or `fail`.
    pub verdict: String,
    /// The command that replays this run's schedule.
    pub replay: String,
    /// Where the run's files are (kept on failure).
    pub dir: String,
    /// `kv` (the store's functions) or `db` (SQL transactions on an HA cluster).
    #[serde(default)]
    pub workload: String,
    /// The database workload's `pgraft.synchronous_mode`.
    #[serde(default)]
    pub synchronous_mode: String,
    /// Acknowledged transactions missing at the end (database workload).
    #[serde(default)]
    pub lost_acknowledged: u64,
    /// Servers (member, timeline) that acknowledged writes: 1 plus the failovers and
    /// switchovers the clients saw (database workload).
    #[serde(default)]
    pub primaries: u64,
}

impl Report {
    /// Whether the run found nothing wrong.
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }

    /// The report as text for a terminal.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let total: u64 = self.ops.values().map(|c| c.ok + c.failed + c.unknown).sum();
        let ok: u64 = self.ops.values().map(|c| c.ok).sum();
        let _ = writeln!(
            s,
            "pgraft torture: seed {} · {} members · {} clients · {:.0} s{}",
            self.seed,
            self.nodes,
            self.clients,
            self.duration_s,
            match (self.broken_local_reads, self.workload.as_str()) {
                (false, _) => "",
                (true, "db") => " · BROKEN fencing",
                (true, _) => " · BROKEN local reads",
            }
        );
        if self.workload == "db" {
            let _ = writeln!(
                s,
                "SQL transactions on an HA cluster · synchronous_mode {} · {} primaries seen · {} acknowledged transactions lost",
                self.synchronous_mode, self.primaries, self.lost_acknowledged
            );
        }
        let _ =
            writeln!(s, "operations: {total} ({ok} ok, {:.0} ok/s)", ok as f64 / self.duration_s.max(1.0));
        for (k, c) in &self.ops {
            let _ = writeln!(s, "  {k:<11} ok {:>7}  failed {:>5}  unknown {:>5}", c.ok, c.failed, c.unknown);
        }
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for f in &self.faults {
            *by_kind.entry(f.kind.name().to_string()).or_default() += 1;
        }
        let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "faults: {} ({})", self.faults.len(), kinds.join(", "));
        for f in &self.faults {
            let rec = f.recovery_ms.map_or("NOT within the bound".to_string(), |m| format!("{m} ms"));
            let err = f.error.as_deref().map(|e| format!(" [{e}]")).unwrap_or_default();
            let _ = writeln!(
                s,
                "  {:>4} {:>7.1}s {:<16} {} · writes again after {rec}{err}",
                f.seq,
                f.start_us as f64 / 1e6,
                f.kind.name(),
                f.detail
            );
        }
        let tp: Vec<String> = self.throughput_per_5s.iter().map(|n| format!("{}", n / 5)).collect();
        let _ = writeln!(s, "throughput (ok ops/s per 5 s): {}", tp.join(" "));
        let _ = writeln!(
            s,
            "longest unavailability: {} ms from {:.1} s; longest recovery after a heal: {}; after the final heal: {}",
            self.longest_unavailability.ms,
            self.longest_unavailability.from_ms as f64 / 1e3,
            self.longest_recovery_ms.map_or("-".into(), |m| format!("{m} ms")),
            self.final_recovery_ms.map_or("NOT within the bound".into(), |m| format!("{m} ms")),
        );
        let _ = writeln!(s, "terms with a leader seen: {}", self.terms_seen);
        for c in &self.checks {
            let _ = writeln!(s, "  [{}] {} ({})", if c.passed { "ok" } else { "FAIL" }, c.name, c.scope);
        }
        for a in &self.anomalies {
            let _ = writeln!(s, "ANOMALY ({}): {}", a.check, a.detail);
        }
        let _ = writeln!(s, "verdict: {}", self.verdict.to_uppercase());
        if !self.passed() {
            let _ = writeln!(s, "kept: {}", self.dir);
            let _ = writeln!(s, "replay: {}", self.replay);
        }
        s
    }
}

/// Counts operations by kind and outcome.
pub fn count_ops(history: &[HistoryOp]) -> BTreeMap<String, OpCounts> {
    let mut out: BTreeMap<String, OpCounts> = BTreeMap::new();
    for op in history {
        let c = out.entry(op.call.name().to_string()).or_default();
        match op.result {
            OpResult::Failed { .. } => c.failed += 1,
            OpResult::Unknown { .. } => c.unknown += 1,
            _ => c.ok += 1,
        }
    }
    out
}

/// Successful operations per whole 5-second bucket of completion time, over `run_us`.
pub fn throughput(history: &[HistoryOp], run_us: u64) -> Vec<u64> {
    throughput_of(history.iter().filter(|o| o.result.is_ok()).map(|o| o.complete_us), run_us)
}

/// Completions per whole 5-second bucket of `0..run_us`.
pub fn throughput_of(completions: impl Iterator<Item = u64>, run_us: u64) -> Vec<u64> {
    let bucket = 5_000_000;
    let whole = run_us / bucket;
    let mut out = vec![0u64; whole as usize];
    for t in completions.filter(|t| *t < whole * bucket) {
        out[(t / bucket) as usize] += 1;
    }
    out
}

/// The longest stretch of `0..run_us` in which no operation completed successfully.
pub fn longest_gap(history: &[HistoryOp], run_us: u64) -> Gap {
    longest_gap_of(history.iter().filter(|o| o.result.is_ok()).map(|o| o.complete_us), run_us)
}

/// The longest stretch of `0..run_us` without one of these completions.
pub fn longest_gap_of(completions: impl Iterator<Item = u64>, run_us: u64) -> Gap {
    let mut times: Vec<u64> = completions.map(|t| t.min(run_us)).collect();
    times.push(run_us);
    times.sort_unstable();
    let mut best = Gap::default();
    let mut last = 0;
    for t in times {
        let ms = (t - last) / 1000;
        if ms > best.ms {
            best = Gap { ms, from_ms: last / 1000 };
        }
        last = t;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torture::history::OpCall;

    fn done(complete_ms: u64, result: OpResult) -> HistoryOp {
        HistoryOp {
            client: 1,
            node: 1,
            call: OpCall::Get { key: "k".into() },
            result,
            invoke_us: 0,
            complete_us: complete_ms * 1000,
            invoke_unix_ms: 0,
        }
    }

    #[test]
    fn gaps_and_throughput() {
        let ok = || OpResult::Value { value: None };
        let h = vec![
            done(100, ok()),
            done(200, ok()),
            done(3_000, OpResult::Failed { error: "x".into() }),
            done(5_200, ok()),
            done(9_000, ok()),
        ];
        assert_eq!(longest_gap(&h, 10_000_000), Gap { ms: 5_000, from_ms: 200 });
        assert_eq!(throughput(&h, 10_000_000), vec![2, 2]);
        let counts = count_ops(&h);
        assert_eq!(counts["get"], OpCounts { ok: 4, failed: 1, unknown: 0 });
        assert_eq!(longest_gap(&[], 2_000_000), Gap { ms: 2_000, from_ms: 0 });
    }
}
