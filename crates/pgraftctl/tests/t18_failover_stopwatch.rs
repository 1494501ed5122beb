//! The failover stopwatch, printed and not asserted: kill -9 of the primary's postmaster to
//! the first write a new primary accepts, over 10 trials at the default timers
//! (1000/100 ms) and 10 at the low-latency ones (500/50 ms), on one 3-member HA cluster in
//! synchronous mode. After each trial the killed server is started again and rejoins as a
//! standby, and the next trial kills whichever server is primary then. Each trial still
//! checks what the failover tests check: one primary, the leader's, and no acknowledged
//! write lost.

mod common;

use std::time::{Duration, Instant};

use common::ha::*;
use common::*;

/// Median and worst of `times`.
fn figures(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2
    };
    (median, *times.last().expect("at least one trial"))
}

#[test]
fn failover_stopwatch_at_default_and_low_latency_timers() {
    let trials: usize =
        std::env::var("PGRAFT_STOPWATCH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let first = pg_configs()[0].to_string_lossy().into_owned();
    let c = HaCluster::up(&first, "fo-watch", 100);
    let (d, pgc, lines, rw) = (&c.d, &c.pgc, &c.lines, &c.rw);
    let mut first_value = 1_000i64;
    let mut report = Vec::new();
    for (label, timers) in
        [("default timers (1000/100 ms)", None), ("low-latency timers (500/50 ms)", Some(("500ms", "50ms")))]
    {
        if let Some((election, heartbeat)) = timers {
            let mut app = connect(rw).expect("connect to the primary");
            app.query_one("SELECT pgraft_set_config('election_timeout', $1)", &[&election])
                .expect("set the election timeout");
            app.query_one("SELECT pgraft_set_config('heartbeat_interval', $1)", &[&heartbeat])
                .expect("set the heartbeat interval");
        }
        let mut times = Vec::new();
        for trial in 0..trials {
            let p = check_one_primary(lines, 3, &[]);
            let writer = Writer::start(rw.clone(), first_value);
            first_value += 100_000;
            wait("the writer to get going", Duration::from_secs(10), || (writer.count() >= 20).then_some(()));
            let killed = Instant::now();
            pgraftctl(&["local", "kill", &(p + 1).to_string(), "--dir", d]);
            let (port, took) = wait_new_primary(rw, pg_port(lines, p), killed);
            let acked = writer.finish();
            let q = check_one_primary(lines, 3, &[p]);
            assert_eq!(pg_port(lines, q), port, "the server that took the write is the primary");
            let have = values_on(&conninfo(lines, q)).expect("read t on the new primary");
            let lost: Vec<i64> = acked.iter().map(|(v, _, _)| *v).filter(|v| !have.contains(v)).collect();
            assert!(lost.is_empty(), "trial {trial}: acknowledged writes lost in synchronous mode: {lost:?}");
            println!(
                "{pgc}: {label}: trial {}: node {} killed, node {} took writes after {took:?}",
                trial + 1,
                p + 1,
                q + 1
            );
            times.push(took);
            let raft_dir =
                std::path::PathBuf::from(lines[p]["raft_data_dir"].as_str().expect("raft_data_dir"));
            // The rejoin helper's log of an earlier trial of this member would read as done.
            let _ = std::fs::remove_file(raft_dir.join("rejoin.log"));
            let _ = pgraft_start(d, p as u64 + 1);
            never_writable_until_rejoined(lines, p, q);
            rejoin_log_when_done(&raft_dir);
        }
        let (median, worst) = figures(&mut times);
        report.push(format!("{label}: median {median:?}, worst {worst:?} over {trials} trials"));
    }
    println!("{pgc}: failover stopwatch, kill -9 of the primary to the first write on the new primary:");
    for line in &report {
        println!("  {line}");
    }
    pgraftctl(&["local", "down", "--dir", d]);
}
