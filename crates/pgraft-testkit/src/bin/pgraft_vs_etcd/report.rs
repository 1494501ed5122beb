//! The run's figures as text (stdout) and as a Markdown report with PNG plots.

use std::fmt::Write as _;

/// The leader's profile before issue #16's write path, shown next to the run's own.
const BEFORE_PROFILE: &str = "docs/benchmarks/profile-before.md";
/// What earlier runs and changes measured apart showed (written by hand, kept beside the
/// report, included after "The run").
const HISTORY: &str = "docs/benchmarks/history.md";
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cost::{median, Disk, IdleCpu, Memory, Pgbench};
use crate::failover::{median_worst, Trial};
use crate::load::{self, Figures, Op};
use crate::machine::Machine;
use crate::plot::{self, Panel, Series, ETCD, PGRAFT};
use crate::{Args, Plan, ELECTION_MS, HEARTBEAT_MS};

/// One KV case: both systems at one client count.
pub struct KvRow {
    pub op: Op,
    pub clients: usize,
    pub pgraft: Figures,
    pub etcd: Figures,
    /// The member (index into the clients' spread) that led during each system's case.
    pub leaders: (Option<usize>, Option<usize>),
}

/// Everything measured in one run.
pub struct Report {
    pub args: Args,
    pub plan: Plan,
    pub date: String,
    pub machine: Machine,
    pub versions: Vec<(String, String)>,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub wall: Duration,
    pub idle: Option<IdleCpu>,
    pub memory_idle: Option<Memory>,
    pub memory_load: Option<Memory>,
    pub memory_grown: Option<Memory>,
    pub pgbench: Vec<Pgbench>,
    pub kv: Vec<KvRow>,
    pub replicate: Vec<(usize, Figures)>,
    pub failover_pgraft: Vec<Trial>,
    pub failover_etcd: Vec<Trial>,
    pub disk_pgraft: Option<Disk>,
    pub disk_etcd: Option<Disk>,
    pub growth_pgraft: Vec<(u64, f64, u64)>,
    pub growth_etcd: Vec<(u64, f64, u64)>,
    pub growth_target: u64,
    pub growth_note: Option<String>,
    /// The longest Raft-thread pass of any pgraft member by the end of the growth case.
    pub growth_longest_pass_ms: Option<u64>,
    /// CPU profiles of pgraft's leader.
    pub profiles: Vec<crate::profile::Profile>,
    pub members: Vec<(usize, Figures, Figures)>,
    pub health: Vec<crate::health::HealthRow>,
    pub ha: Vec<crate::ha_cases::HaRun>,
    pub errors: Vec<String>,
}

impl Report {
    /// The KV cases' latencies split by the member the clients talk to: a request through a
    /// follower crosses more hops (forwarded to the leader, the commit back), so where the
    /// tail comes from shows here.
    fn kv_by_member(&self) -> String {
        let mut s = String::from(
            "Latency by the member a client talks to, ms (p50 / p99): the leader's clients, and the \
             followers' (their requests are forwarded to the leader, and answered when the commit comes \
             back).\n\n| op | clients | pgraft leader | pgraft followers | etcd leader | etcd followers |\n\
             |---|--:|--:|--:|--:|--:|\n",
        );
        let split = |f: &Figures, leader: Option<usize>| -> (String, String) {
            let Some(l) = leader.filter(|l| *l < f.by_member.len()) else { return ("-".into(), "-".into()) };
            let mut followers: Vec<u32> = f
                .by_member
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != l)
                .flat_map(|(_, v)| v.iter().copied())
                .collect();
            followers.sort_unstable();
            let fig = |v: &[u32]| {
                if v.is_empty() {
                    return "-".to_string();
                }
                format!("{} / {}", ms(load::quantile(v, 0.5)), ms(load::quantile(v, 0.99)))
            };
            (fig(&f.by_member[l]), fig(&followers))
        };
        for r in self.kv.iter().filter(|r| r.clients >= load::MEMBERS) {
            let (pl, pf) = split(&r.pgraft, r.leaders.0);
            let (el, ef) = split(&r.etcd, r.leaders.1);
            let _ = writeln!(s, "| {} | {} | {pl} | {pf} | {el} | {ef} |", r.op.name(), r.clients);
        }
        s.push('\n');
        s
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

impl Report {
    pub fn new(args: &Args, plan: &Plan) -> Self {
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Report {
            args: args.clone(),
            plan: plan.clone(),
            date,
            machine: Machine::default(),
            versions: Vec::new(),
            loadavg_start: String::new(),
            loadavg_end: String::new(),
            wall: Duration::ZERO,
            idle: None,
            memory_idle: None,
            memory_load: None,
            memory_grown: None,
            pgbench: Vec::new(),
            kv: Vec::new(),
            replicate: Vec::new(),
            failover_pgraft: Vec::new(),
            failover_etcd: Vec::new(),
            disk_pgraft: None,
            disk_etcd: None,
            growth_pgraft: Vec::new(),
            growth_etcd: Vec::new(),
            growth_target: plan.grow_to,
            growth_note: None,
            growth_longest_pass_ms: None,
            profiles: Vec::new(),
            members: Vec::new(),
            health: Vec::new(),
            ha: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The figures' tables (Markdown, also fine as plain text).
    pub fn text(&self) -> String {
        let mut s = String::new();
        let p = &self.plan;
        let _ = writeln!(s, "## KV writes and linearizable reads\n");
        let _ = writeln!(
            s,
            "{} s per case, {}-byte values, 17-byte keys, {} keys per client; three members each; clients \
             spread over the members (client i on member i mod 3).\n",
            p.seconds, self.args.value_size, self.args.keys
        );
        if !self.kv.is_empty() {
            s.push_str(
                "| op | clients | pgraft ops/s | p50 ms | p99 ms | p99.9 ms | etcd ops/s | p50 ms | p99 ms | p99.9 ms \
                 | throughput pgraft/etcd | p99 pgraft/etcd |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
            );
            for r in &self.kv {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                    r.op.name(),
                    r.clients,
                    r.pgraft.per_second,
                    ms(r.pgraft.p50),
                    ms(r.pgraft.p99),
                    ms(r.pgraft.p999),
                    r.etcd.per_second,
                    ms(r.etcd.p50),
                    ms(r.etcd.p99),
                    ms(r.etcd.p999),
                    ratio(r.pgraft.per_second, r.etcd.per_second),
                    ratio(r.pgraft.p99.as_secs_f64(), r.etcd.p99.as_secs_f64()),
                );
            }
            s.push('\n');
            s.push_str(&self.kv_by_member());
        }
        if !self.replicate.is_empty() {
            let _ = writeln!(s, "## Replicated entries (`pgraft_replicate_entry`)\n");
            let _ = writeln!(
                s,
                "{}-byte payloads, {} s per case. The last column compares with etcd's put at the same client \
                 count (the nearest thing etcd has).\n",
                self.args.value_size, p.seconds
            );
            s.push_str(
                "| clients | entries/s | p50 ms | p99 ms | p99.9 ms | throughput / etcd put |\n|--:|--:|--:|--:|--:|--:|\n",
            );
            for (n, f) in &self.replicate {
                let etcd_put =
                    self.kv.iter().find(|r| r.op == Op::Put && r.clients == *n).map(|r| r.etcd.per_second);
                let _ = writeln!(
                    s,
                    "| {n} | {:.0} | {} | {} | {} | {} |",
                    f.per_second,
                    ms(f.p50),
                    ms(f.p99),
                    ms(f.p999),
                    etcd_put.map_or("-".into(), |e| ratio(f.per_second, e))
                );
            }
            s.push('\n');
        }
        if !self.health.is_empty() {
            let _ = writeln!(s, "## Health checks and scrapes under load\n");
            let _ = writeln!(
                s,
                "Each path asked every {} ms (one request per connection, as HAProxy checks) while {} clients \
                 write for {} s: pgraft's leader, etcd's first member. Latencies in ms.\n",
                crate::health::PROBE_EVERY.as_millis(),
                self.args.load_clients,
                p.seconds
            );
            s.push_str(
                "| system | path | answered | p50 | p99 | worst | over 50 ms | no answer | writes/s meanwhile |\n\
                 |---|---|--:|--:|--:|--:|--:|--:|--:|\n",
            );
            for r in &self.health {
                for f in &r.paths {
                    let worst = f.figures.latencies_us.last().map_or(0.0, |us| f64::from(*us) / 1000.0);
                    let _ = writeln!(
                        s,
                        "| {} | `{}` | {} | {} | {} | {:.2} | {} | {} | {:.0} |",
                        r.system,
                        f.path,
                        f.figures.latencies_us.len(),
                        ms(f.figures.p50),
                        ms(f.figures.p99),
                        worst,
                        f.over_50ms,
                        f.failed,
                        r.load.per_second
                    );
                }
            }
            s.push('\n');
        }
        if !self.failover_pgraft.is_empty() || !self.failover_etcd.is_empty() {
            let _ = writeln!(s, "## Leader loss\n");
            let _ = writeln!(
                s,
                "kill -9 of the leader (for pgraft every process of its PostgreSQL server), heartbeat {HEARTBEAT_MS} ms \
                 and election timeout {ELECTION_MS} ms for both; survivors polled every 10 ms; the writer retries on \
                 a survivor with a 250 ms timeout per attempt. Times from the kill, in ms.\n"
            );
            s.push_str(
                "| system | trials | new leader, median | worst | first write, median | worst |\n|---|--:|--:|--:|--:|--:|\n",
            );
            for (name, t) in [("pgraft", &self.failover_pgraft), ("etcd", &self.failover_etcd)] {
                let (em, ew) = median_worst(t.iter().map(|t| t.elected).collect());
                let (wm, ww) = median_worst(t.iter().map(|t| t.write).collect());
                let _ = writeln!(
                    s,
                    "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    t.len(),
                    ms_f(em),
                    ms_f(ew),
                    ms_f(wm),
                    ms_f(ww)
                );
            }
            s.push('\n');
        }
        if let Some(i) = &self.idle {
            let _ = writeln!(s, "## Cost at rest and under load\n");
            let _ = writeln!(
                s,
                "### CPU per idle member\n\nPercent of one core over {:.0} s with no client. \"pgraft server\" is every \
                 process of the member's PostgreSQL server (postmaster, checkpointer, ..., the pgraft worker). Other \
                 work on the machine used {:.0}% of one core over the same window.\n",
                i.seconds, i.others
            );
            s.push_str(
                "| member | pgraft worker | pgraft server (all processes) | etcd |\n|--:|--:|--:|--:|\n",
            );
            for m in 0..i.pgraft_server.len().max(i.etcd.len()) {
                let g = |v: &Vec<f64>| v.get(m).map_or("-".into(), |x| format!("{x:.2}%"));
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    m + 1,
                    g(&i.pgraft_worker),
                    g(&i.pgraft_server),
                    g(&i.etcd)
                );
            }
            s.push('\n');
        }
        let mems = [
            ("idle, after start", &self.memory_idle),
            ("after the KV cases", &self.memory_load),
            ("after the store grew", &self.memory_grown),
        ];
        if mems.iter().any(|(_, m)| m.is_some()) {
            s.push_str("### Resident memory\n\nMean over the members, MiB. The pgraft worker's RSS counts the shared \
                        memory pages it touched; \"private\" is its anonymous memory alone.\n\n");
            s.push_str(
                "| when | pgraft worker RSS | pgraft worker private | etcd RSS |\n|---|--:|--:|--:|\n",
            );
            for (when, m) in mems {
                if let Some(m) = m {
                    let n = m.pgraft_worker.len().max(1) as u64;
                    let rss = m.pgraft_worker.iter().map(|x| x.0).sum::<u64>() / n;
                    let anon = m.pgraft_worker.iter().map(|x| x.1).sum::<u64>() / n;
                    let e = m.etcd.iter().sum::<u64>() / m.etcd.len().max(1) as u64;
                    let _ = writeln!(s, "| {when} | {} | {} | {} |", mib(rss), mib(anon), mib(e));
                }
            }
            s.push('\n');
        }
        if let (Some(pd), Some(ed)) = (&self.disk_pgraft, &self.disk_etcd) {
            let _ = writeln!(
                s,
                "### Disk per write\n\n{} writes ({}-byte values, overwriting 1,000 keys, {} clients), mean per member, \
                 allocated bytes (`du`) of pgraft.data_dir and of etcd's data directory. Per million: extrapolated \
                 linearly from the {} writes. Compaction: `pgraft_kv_compact()` on every member; etcd's \
                 compaction to the current revision then a defragmentation of every member. etcd's WAL files are \
                 preallocated in 64 MiB segments, so its figures move in steps.\n",
                pd.writes, self.args.value_size, self.args.load_clients, pd.writes
            );
            s.push_str("| system | writes retried | before MiB | after writes MiB | after compaction MiB | per million writes MiB | per million after compaction MiB |\n|---|--:|--:|--:|--:|--:|--:|\n");
            for (name, d) in [("pgraft", pd), ("etcd", ed)] {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {:.0} | {:.0} |",
                    d.retried,
                    mib(d.before),
                    mib(d.after_writes),
                    mib(d.after_compaction),
                    d.per_million(d.after_writes) / 1048576.0,
                    d.per_million(d.after_compaction) / 1048576.0
                );
            }
            s.push('\n');
            for (name, d) in [("pgraft", pd), ("etcd", ed)] {
                let f = |v: &[(String, u64)]| {
                    v.iter().map(|(p, b)| format!("`{p}` {} MiB", mib(*b))).collect::<Vec<_>>().join(", ")
                };
                let _ = writeln!(
                    s,
                    "- {name}, member 1's largest files after the writes: {}; after compaction: {}.",
                    f(&d.files_after_writes),
                    f(&d.files_after_compaction)
                );
            }
            s.push('\n');
        }
        if !self.members.is_empty() {
            let _ = writeln!(
                s,
                "### Throughput by cluster size\n\nPuts with {} clients for {} s on fresh clusters.\n",
                self.args.load_clients, p.seconds
            );
            s.push_str("| members | pgraft puts/s | p99 ms | etcd puts/s | p99 ms | pgraft/etcd |\n|--:|--:|--:|--:|--:|--:|\n");
            for (m, pf, ef) in &self.members {
                let _ = writeln!(
                    s,
                    "| {m} | {:.0} | {} | {:.0} | {} | {} |",
                    pf.per_second,
                    ms(pf.p99),
                    ef.per_second,
                    ms(ef.p99),
                    ratio(pf.per_second, ef.per_second)
                );
            }
            s.push('\n');
        }
        if !self.growth_pgraft.is_empty() || !self.growth_etcd.is_empty() {
            let _ = writeln!(
                s,
                "### Throughput as the store grows\n\nFresh keys written by {} clients in steps of a tenth of {} keys \
                 (on top of the keys the earlier cases left), each step timed; at most {} s per system.\n",
                self.args.load_clients, self.growth_target, p.grow_budget
            );
            if let Some(n) = &self.growth_note {
                let _ = writeln!(s, "The target was {n}.\n");
            }
            s.push_str(
                "A write that fails (times out) is sent again and counted under \"retried\"; its latency runs from \
                 the first attempt.\n\n| keys written | pgraft puts/s | retried | etcd puts/s | retried |\n|--:|--:|--:|--:|--:|\n",
            );
            let n = self.growth_pgraft.len().max(self.growth_etcd.len());
            for i in 0..n {
                let k = self.growth_pgraft.get(i).or(self.growth_etcd.get(i)).map_or(0, |x| x.0);
                let g = |v: &Vec<(u64, f64, u64)>| {
                    v.get(i).map_or("- | -".into(), |x| format!("{:.0} | {}", x.1, x.2))
                };
                let _ = writeln!(s, "| {k} | {} | {} |", g(&self.growth_pgraft), g(&self.growth_etcd));
            }
            s.push('\n');
            if let Some(ms) = self.growth_longest_pass_ms {
                let _ = writeln!(
                    s,
                    "The longest pass of a pgraft member's Raft thread from the members' start to the end of the \
                     growth (`raft_thread_longest_pass_ms` of `pgraft_health_check()`, the most of any member): \
                     {ms} ms. With failover on, a pass longer than the election timeout (1000 ms here) is a \
                     failover.\n"
                );
            }
        }
        for p in &self.profiles {
            let _ = writeln!(
                s,
                "### Where the leader's worker spends its time\n\n`perf record -F 999 -g` on the leading member's pgraft \
                 worker during the pgraft {} case ({} samples); the functions the samples fell in (their own time, \
                 not their callees'), over 0.5%:\n\n| share | function |\n|--:|---|",
                p.case, p.samples
            );
            for (pct, sym) in &p.top {
                let _ = writeln!(s, "| {pct:.1}% | `{}` |", sym.replace('|', "\\|"));
            }
            s.push('\n');
        }
        // The same profile of the build before issue #16's write path, taken once (with this
        // tool, `--only kv --perf`, against that build) and kept beside the report.
        if !self.profiles.is_empty() {
            if let Ok(before) = std::fs::read_to_string(BEFORE_PROFILE) {
                s.push_str(before.trim_end());
                s.push_str("\n\n");
            }
        }
        if !self.pgbench.is_empty() {
            let _ = writeln!(
                s,
                "## Overhead on PostgreSQL\n\npgbench (scale 10, {} clients, 2 threads, prepared, {} s per run, {} \
                 run(s) per server alternating which goes first) on member 1 of the idle three-member pgraft cluster \
                 (the leader; the extension loaded, the worker running) and on a server of the same installation \
                 and settings without the extension. Median TPS, and the spread of the ratio: with/without of \
                 each round (its two runs back to back), lowest, median and highest. The machine's own noise is \
                 in that spread.\n",
                self.pgbench[0].clients, p.pgbench_seconds, p.pgbench_rounds
            );
            s.push_str(
                "| script | with pgraft | without | with/without | ratio per round: lowest, median, highest | runs with | runs without |\n\
                 |---|--:|--:|--:|--:|---|---|\n",
            );
            for b in &self.pgbench {
                let f = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
                let per_round: Vec<f64> = b
                    .with_pgraft
                    .iter()
                    .zip(&b.without)
                    .filter(|(_, w)| **w > 0.0)
                    .map(|(p, w)| p / w)
                    .collect();
                let lowest = per_round.iter().copied().fold(f64::INFINITY, f64::min);
                let highest = per_round.iter().copied().fold(0.0, f64::max);
                let spread = if per_round.is_empty() {
                    "-".to_string()
                } else {
                    format!("{lowest:.2}, {:.2}, {highest:.2}", median(&per_round))
                };
                let _ = writeln!(
                    s,
                    "| {} | {:.0} | {:.0} | {} | {spread} | {} | {} |",
                    b.mode,
                    median(&b.with_pgraft),
                    median(&b.without),
                    ratio(median(&b.with_pgraft), median(&b.without)),
                    f(&b.with_pgraft),
                    f(&b.without)
                );
            }
            s.push('\n');
        }
        s.push_str(&crate::ha_report::text(&self.ha));
        if !self.errors.is_empty() {
            s.push_str("## Sections that failed\n\n");
            for e in &self.errors {
                let _ = writeln!(s, "- {}", e.replace('\n', " "));
            }
            s.push('\n');
        }
        s
    }

    /// Writes the report to `path` and its plots into `path` without `.md`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let stem = path.file_stem().context("a report file name")?.to_string_lossy().into_owned();
        let dir = path.with_file_name(&stem);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let plots = self.plots(&dir)?;
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# pgraft next to etcd\n");
        let _ = writeln!(
            s,
            "Written by `pgraft-vs-etcd` (the test kit's benchmark, `make bench`); every figure below comes from \
             the run described here. Rerun it to get this machine's figures for yours.\n"
        );
        let _ = writeln!(s, "## The run\n");
        let _ = writeln!(s, "- When: {}, {:.0} minutes.", self.date, self.wall.as_secs_f64() / 60.0);
        let _ = writeln!(s, "- Command: `{}`.", self.args.command.as_deref().unwrap_or("pgraft-vs-etcd"));
        if self.args.quick {
            let _ = writeln!(
                s,
                "- **A `--quick` smoke run**: short cases and few trials; the figures are rough."
            );
        }
        if !self.args.build.is_empty() {
            let _ = writeln!(s, "- Build: {}.", self.args.build);
        }
        for (what, v) in &self.versions {
            let _ = writeln!(s, "- {what}: {v}.");
        }
        let _ = writeln!(
            s,
            "- Machine: {} × {}, {:.1} GiB memory, Linux {}; disk {}; a 4 KiB write + fdatasync there takes {} µs \
             (median), {} µs (p99).",
            m.cpus, m.cpu_model, m.memory_gib, m.kernel, m.disk, m.fsync_p50_us, m.fsync_p99_us
        );
        let _ = writeln!(
            s,
            "- Load average (1, 5, 15 min) at the start: {}; at the end: {}.{}",
            self.loadavg_start,
            self.loadavg_end,
            self.idle
                .as_ref()
                .map(|i| format!(
                    " While both clusters sat idle, other processes used {:.0}% of one core: the machine was {}.",
                    i.others,
                    if i.others > 20.0 { "shared with other work (builds, tests), which lowers and scatters the figures" } else { "quiet" }
                ))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "- Both systems: members on 127.0.0.1 (pgraft's Raft traffic between 127.0.1.x addresses, direct, \
             no proxy), fsync on, heartbeat {HEARTBEAT_MS} ms, election timeout {ELECTION_MS} ms. pgraft through \
             SQL over libpq (`pgraft_kv_put`, linearizable `pgraft_kv_get`), one connection per client; etcd \
             through gRPC (etcd-client), one connection per client. Closed loop: each client sends its next \
             request when the previous one is answered.\n"
        );
        // A quick run's report goes elsewhere and is not compared with anything.
        if !self.args.quick {
            if let Ok(history) = std::fs::read_to_string(HISTORY) {
                s.push_str(history.trim_end());
                s.push_str("\n\n");
            }
        }
        s.push_str(&self.text());
        s.push_str(
            "## How to reproduce\n\n\
             ```sh\n\
             make bench        # the full run: this file and docs/benchmarks/*.png\n\
             make bench-quick  # a smoke run of a few minutes; its report goes under /tmp/pgraft-bench-quick\n\
             ```\n\n\
             `scripts/bench.sh` installs what is missing (the usual set-up, Debian's etcd-server, patroni, \
             python3-etcd, linux-perf and fonts-dejavu-core), installs a release build of the extension into a private copy of PostgreSQL 15 \
             (`scripts/bench-pg.sh`, so the debug build the tests use stays in place), builds `pgraftctl` and \
             `pgraft-vs-etcd` in release mode and runs the benchmark; extra arguments go to the benchmark \
             (`--only kv,failover`, `--only ha --ha-trials 20`, `--clients 1,64`, `--seconds 30`, ...; see \
             `pgraft-vs-etcd --help`).\n\n",
        );
        s.push_str(
            "## Reading the figures\n\n\
             - One machine runs both clusters and the clients: the client threads compete with the members for \
             the same cores, as they do for etcd. With two cores, the high client counts measure CPU contention \
             as much as consensus.\n\
             - Throughput ratios below 1 mean pgraft is slower; latency ratios above 1 mean pgraft is slower.\n\
             - A pgraft request crosses more layers than an etcd one: SQL parsing and execution in a backend, \
             the backend-to-worker socket, then Raft; etcd's gRPC handler talks to Raft in-process.\n\
             - The disk figures are `du` of the members' directories: pgraft.data_dir (log, hard state, KV \
             store, snapshots) and etcd's data directory (WAL and bbolt database). PostgreSQL's own WAL and \
             data files are not counted for pgraft: the KV store does not write to them.\n\n",
        );
        if !plots.is_empty() {
            s.push_str("## Plots\n\n");
            for (title, file) in plots {
                let _ = writeln!(s, "### {title}\n\n![{title}]({stem}/{file})\n");
            }
        }
        std::fs::write(path, s).with_context(|| format!("write {}", path.display()))
    }

    fn plots(&self, dir: &Path) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        if !self.kv.is_empty() {
            let panel = |op: Op| Panel {
                title: format!("{}s: throughput by clients", op.name()),
                x_desc: "clients".into(),
                y_desc: "requests/s".into(),
                log_x: true,
                y_range: None,
                series: [("pgraft", PGRAFT, true), ("etcd", ETCD, false)]
                    .into_iter()
                    .map(|(label, color, pg)| Series {
                        label: label.into(),
                        color,
                        points: self
                            .kv
                            .iter()
                            .filter(|r| r.op == op)
                            .map(|r| {
                                (r.clients as f64, if pg { r.pgraft.per_second } else { r.etcd.per_second })
                            })
                            .collect(),
                    })
                    .collect(),
            };
            plot::draw(&dir.join("throughput.png"), &[panel(Op::Put), panel(Op::Get)])?;
            out.push(("Throughput against clients".into(), "throughput.png".into()));
            for op in [Op::Put, Op::Get] {
                let panel = |pg: bool| Panel {
                    title: format!("{} {} latency (CDF)", if pg { "pgraft" } else { "etcd" }, op.name()),
                    x_desc: "latency, ms (log)".into(),
                    y_desc: "fraction of requests".into(),
                    log_x: true,
                    y_range: Some((0.0, 1.0)),
                    series: self
                        .kv
                        .iter()
                        .filter(|r| r.op == op)
                        .enumerate()
                        .map(|(i, r)| Series {
                            label: format!("{} clients", r.clients),
                            color: plot::shade(i),
                            points: plot::cdf(if pg { &r.pgraft.latencies_us } else { &r.etcd.latencies_us }),
                        })
                        .collect(),
                };
                let file = format!("latency-{}.png", op.name());
                plot::draw(&dir.join(&file), &[panel(true), panel(false)])?;
                out.push((format!("Latency distribution of {}s", op.name()), file));
            }
        }
        if !self.replicate.is_empty() {
            let panel = Panel {
                title: "pgraft_replicate_entry latency (CDF)".into(),
                x_desc: "latency, ms (log)".into(),
                y_desc: "fraction of requests".into(),
                log_x: true,
                y_range: Some((0.0, 1.0)),
                series: self
                    .replicate
                    .iter()
                    .enumerate()
                    .map(|(i, (n, f))| Series {
                        label: format!("{n} clients"),
                        color: plot::shade(i),
                        points: plot::cdf(&f.latencies_us),
                    })
                    .collect(),
            };
            plot::draw(&dir.join("replicate.png"), &[panel])?;
            out.push(("Latency distribution of pgraft_replicate_entry".into(), "replicate.png".into()));
        }
        if !self.failover_pgraft.is_empty() {
            let series = |t: &[Trial], write: bool, label: &str, color| Series {
                label: label.into(),
                color,
                points: t
                    .iter()
                    .enumerate()
                    .map(|(i, t)| ((i + 1) as f64, ms_f(if write { t.write } else { t.elected })))
                    .collect(),
            };
            let panel = |write: bool| Panel {
                title: if write { "time to the first write".into() } else { "time to a new leader".into() },
                x_desc: "trial".into(),
                y_desc: "ms after kill -9".into(),
                log_x: false,
                y_range: None,
                series: vec![
                    series(&self.failover_pgraft, write, "pgraft", PGRAFT),
                    series(&self.failover_etcd, write, "etcd", ETCD),
                ],
            };
            plot::draw(&dir.join("leader-loss.png"), &[panel(false), panel(true)])?;
            out.push(("Leader loss, every trial".into(), "leader-loss.png".into()));
        }
        if let Some(p) = crate::ha_report::plot(&self.ha, dir)? {
            out.push(p);
        }
        let mut extra = Vec::new();
        if !self.members.is_empty() {
            extra.push(Panel {
                title: "puts by cluster size".into(),
                x_desc: "members".into(),
                y_desc: "puts/s".into(),
                log_x: false,
                y_range: None,
                series: vec![
                    Series {
                        label: "pgraft".into(),
                        color: PGRAFT,
                        points: self.members.iter().map(|(m, p, _)| (*m as f64, p.per_second)).collect(),
                    },
                    Series {
                        label: "etcd".into(),
                        color: ETCD,
                        points: self.members.iter().map(|(m, _, e)| (*m as f64, e.per_second)).collect(),
                    },
                ],
            });
        }
        if !self.growth_pgraft.is_empty() {
            let pts = |v: &[(u64, f64, u64)]| v.iter().map(|(k, t, _)| (*k as f64, *t)).collect();
            extra.push(Panel {
                title: "puts as the store grows".into(),
                x_desc: "keys written".into(),
                y_desc: "puts/s".into(),
                log_x: false,
                y_range: None,
                series: vec![
                    Series { label: "pgraft".into(), color: PGRAFT, points: pts(&self.growth_pgraft) },
                    Series { label: "etcd".into(), color: ETCD, points: pts(&self.growth_etcd) },
                ],
            });
        }
        if !extra.is_empty() {
            plot::draw(&dir.join("scaling.png"), &extra)?;
            out.push(("Cluster size and store size".into(), "scaling.png".into()));
        }
        Ok(out)
    }
}

fn ms_f(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
