//! The failover comparison's part of the report: a table per case, the ratios the issue
//! asks for, and a plot of every trial.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::ha_cases::{Case, HaRun, HaTrial};
use crate::ha_writer::{DEADLINE, EVERY};
use crate::patroni::PatroniTimers;
use crate::plot::{self, Panel, Series};

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn trials_of(run: &HaRun, case: Case) -> Vec<&HaTrial> {
    run.trials.iter().filter(|(c, _)| *c == case).map(|(_, t)| t).collect()
}

fn median_write(run: &HaRun, case: Case) -> Option<Duration> {
    let mut v: Vec<Duration> = trials_of(run, case).iter().map(|t| t.write).collect();
    v.sort_unstable();
    (!v.is_empty()).then(|| quantile(&v, 0.5))
}

/// The Markdown section.
pub fn text(runs: &[HaRun]) -> String {
    let mut s = String::new();
    if runs.is_empty() {
        return s;
    }
    let _ = writeln!(s, "## Failover next to Patroni\n");
    let _ = writeln!(
        s,
        "Three members of each on 127.0.0.1 over the same PostgreSQL: pgraft's HA cluster (`pgraftctl local up \
         --ha`), and Patroni with a 3-member etcd (heartbeat {} ms, election timeout {} ms), its nodes' links to \
         etcd, their replication ports and their REST APIs each behind a proxy that can cut them. One client as \
         an application: a libpq multi-host conninfo with `target_session_attrs=read-write`, one INSERT every {} \
         ms, a {} ms client-side deadline per statement (an answer after it counts as unknown, never as \
         acknowledged), reconnecting after any error; a second one pinned to the old primary says whether it \
         acknowledged commits after the new primary's first. Patroni in its default asynchronous mode, with \
         `use_pg_rewind`; Patroni's timers: its defaults ({}) and its fastest ({}; Debian's 3.0.2 checks no \
         lower bound, 3.2 and later refuse a ttl under 20). Times in seconds from the fault.\n",
        crate::HEARTBEAT_MS,
        crate::ELECTION_MS,
        EVERY.as_millis(),
        DEADLINE.as_millis(),
        PatroniTimers::DEFAULTS.label(),
        PatroniTimers::FASTEST.label(),
    );
    let _ = writeln!(
        s,
        "- **write gap**: the fault to the first row acknowledged by another server;\n\
         - **lost**: rows acknowledged during the trial and missing on the new primary afterwards;\n\
         - **double primary**: trials in which the old primary acknowledged a row after the new primary's first \
         one, and the longest such overlap;\n\
         - **rejoin**: the fault to the old primary streaming from the new one (after a crash the node is started \
         again, after a partition the links are healed, both as soon as the new primary took a write).\n"
    );
    for case in Case::ALL {
        let _ = writeln!(s, "### {}\n", upper_first(case.title()));
        s.push_str(
            "| system | configuration | trials | write gap, median | p90 | worst | lost rows (of acknowledged) \
             | double primary (trials, longest) | rejoin, median | worst |\n\
             |---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for run in runs {
            let t = trials_of(run, case);
            if t.is_empty() {
                continue;
            }
            let mut w: Vec<Duration> = t.iter().map(|t| t.write).collect();
            w.sort_unstable();
            let mut r: Vec<Duration> = t.iter().filter_map(|t| t.rejoin).collect();
            r.sort_unstable();
            let not_rejoined = t.len() - r.len();
            let lost: usize = t.iter().map(|t| t.lost).sum();
            let acked: usize = t.iter().map(|t| t.acked).sum();
            let doubles = t.iter().filter(|t| t.double_acks > 0).count();
            let longest = t.iter().map(|t| t.double_window).max().unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {lost} ({acked}) | {doubles}, {} | {} | {}{} |",
                run.system,
                run.config,
                t.len(),
                secs(quantile(&w, 0.5)),
                secs(quantile(&w, 0.9)),
                secs(*w.last().unwrap_or(&Duration::ZERO)),
                secs(longest),
                if r.is_empty() { "-".into() } else { secs(quantile(&r, 0.5)) },
                if r.is_empty() { "-".into() } else { secs(*r.last().unwrap_or(&Duration::ZERO)) },
                if not_rejoined > 0 { format!(" ({not_rejoined} not within 300 s)") } else { String::new() },
            );
        }
        s.push('\n');
    }
    let find =
        |system: &str, config: &str| runs.iter().find(|r| r.system == system && r.config.contains(config));
    let pairs = [
        ("synchronous_mode on, 1000/100 ms", "ttl 30", "Patroni at its defaults"),
        ("synchronous_mode on, 500/50 ms", "ttl 10", "Patroni at its fastest"),
        ("synchronous_mode off, 1000/100 ms", "ttl 30", "Patroni at its defaults"),
        ("synchronous_mode off, 500/50 ms", "ttl 10", "Patroni at its fastest"),
    ];
    let mut lines = Vec::new();
    for (pg, pa, pa_label) in pairs {
        let (Some(p), Some(q)) = (find("pgraft", pg), find("Patroni", pa)) else { continue };
        for case in [Case::Crash, Case::Partition] {
            if let (Some(a), Some(b)) = (median_write(p, case), median_write(q, case)) {
                if a > Duration::ZERO {
                    lines.push(format!(
                        "- {}: pgraft ({pg}) {} s, {pa_label} {} s: **{:.1}x** faster",
                        upper_first(case.title()),
                        secs(a),
                        secs(b),
                        b.as_secs_f64() / a.as_secs_f64()
                    ));
                }
            }
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(s, "Median write gap, Patroni's over pgraft's:\n");
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
        s.push('\n');
    }
    let failed: Vec<String> = runs
        .iter()
        .flat_map(|r| r.errors.iter().map(move |e| format!("- {} ({}): {e}", r.system, r.config)))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "Trials that failed (not in the tables):\n");
        for f in failed {
            let _ = writeln!(s, "{}", f.replace('\n', " "));
        }
        s.push('\n');
    }
    s
}

fn upper_first(t: &str) -> String {
    let mut c = t.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// A panel per case: every trial's write gap, one line per system and configuration.
pub fn plot(runs: &[HaRun], dir: &Path) -> Result<Option<(String, String)>> {
    if runs.iter().all(|r| r.trials.is_empty()) {
        return Ok(None);
    }
    let panels: Vec<Panel> = Case::ALL
        .iter()
        .map(|case| Panel {
            title: case.title().into(),
            x_desc: "trial".into(),
            y_desc: "s from the fault to a write".into(),
            log_x: false,
            y_range: None,
            series: runs
                .iter()
                .enumerate()
                .map(|(i, r)| Series {
                    label: format!("{} {}", r.system, r.config),
                    color: plot::shade(i),
                    points: trials_of(r, *case)
                        .iter()
                        .enumerate()
                        .map(|(n, t)| ((n + 1) as f64, t.write.as_secs_f64()))
                        .collect(),
                })
                .collect(),
        })
        .collect();
    plot::draw(&dir.join("failover-vs-patroni.png"), &panels)?;
    Ok(Some(("Failover next to Patroni, every trial".into(), "failover-vs-patroni.png".into())))
}
