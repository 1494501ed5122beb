//! More faults of the primary, each on a fresh 3-member HA cluster in synchronous mode,
//! with a client writing through the read-write conninfo the whole time: kill -9 of the
//! primary's pgraft worker alone, SIGSTOP of the whole primary for longer than the election
//! timeout, and the primary cut off from everything (Raft and replication). After each:
//! exactly one primary, the Raft leader's; no acknowledged write lost; no write
//! acknowledged by node 1 after another server acknowledged one; node 1 back as a standby
//! of the primary (or, after a worker kill, still the primary if its member won again).

mod common;

use std::time::{Duration, Instant};

use common::ha::*;
use common::*;
use serde_json::Value;

/// The index of the one server that is not in recovery, once there is exactly one, its
/// member leads, and both other servers stream from it.
fn settled_primary(lines: &[Value]) -> usize {
    wait("one primary, the leader's, with both standbys streaming", Duration::from_secs(120), || {
        let mut primaries = Vec::new();
        for i in 0..3 {
            let mut c = connect(&conninfo(lines, i)).ok()?;
            let r = c.query_one("SELECT pg_is_in_recovery(), pgraft_is_leader()", &[]).ok()?;
            if !r.get::<_, bool>(0) {
                primaries.push((i, r.get::<_, bool>(1)));
            }
        }
        let [(p, true)] = primaries[..] else { return None };
        let mut c = connect(&conninfo(lines, p)).ok()?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", &[])
            .ok()?
            .get(0);
        (n == 2).then_some(p)
    })
}

/// Whether a server other than node 1's is a primary whose member leads.
fn another_primary(lines: &[Value]) -> Option<usize> {
    (1..3).find(|i| {
        connect(&conninfo(lines, *i))
            .ok()
            .and_then(|mut c| c.query_one("SELECT pg_is_in_recovery(), pgraft_is_leader()", &[]).ok())
            .is_some_and(|r| !r.get::<_, bool>(0) && r.get::<_, bool>(1))
    })
}

/// Runs `fault` against node 1 under load, waits for another primary when
/// `fails_over`, runs `recover`, and checks the invariants.
fn scenario(name: &str, fault: &dyn Fn(&str), fails_over: bool, recover: &dyn Fn(&str)) {
    let c = HaCluster::up(name, 0);
    let (d, lines, rw) = (&c.d, &c.lines, &c.rw);
    let writer = Writer::start(rw.clone(), 1);
    wait("the writer to get going", Duration::from_secs(10), || (writer.count() >= 20).then_some(()));
    let at = Instant::now();
    fault(d);
    if fails_over {
        let p = wait("another member's server to be promoted", Duration::from_secs(60), || {
            another_primary(lines)
        });
        println!("{name}: node {} promoted {:?} after the fault", p + 1, at.elapsed());
    }
    recover(d);
    // Writes go on (the client may have waited on node 1 until the recovery).
    let before = writer.count();
    wait("writes to go on after the fault", Duration::from_secs(60), || {
        (writer.count() > before + 20).then_some(())
    });
    println!("{name}: writes went on {:?} after the fault", at.elapsed());
    let p = settled_primary(lines);
    let acked = writer.finish();
    println!("{name}: node {} is the primary; settled {:?} after the fault", p + 1, at.elapsed());
    let old = pg_port(lines, 0);
    let first_other = acked.iter().filter(|(_, port, _)| *port != old).map(|(_, _, t)| *t).min();
    if let Some(first) = first_other {
        let late: Vec<i64> =
            acked.iter().filter(|(_, port, t)| *port == old && *t >= first).map(|(v, _, _)| *v).collect();
        assert!(late.is_empty() || p == 0, "node 1 acknowledged writes after another server did: {late:?}");
    }
    for i in 0..3 {
        let want: Vec<i64> = acked.iter().map(|(v, _, _)| *v).collect();
        wait(&format!("node {} to hold every acknowledged write", i + 1), Duration::from_secs(60), || {
            let have = values_on(&conninfo(lines, i))?;
            want.iter().all(|v| have.contains(v)).then_some(())
        });
    }
    pgraftctl(&["local", "down", "--dir", d]);
}

#[test]
fn the_primarys_worker_killed_alone() {
    scenario(
        "fo-worker",
        &|d| {
            pgraftctl(&["local", "kill-worker", "1", "--dir", d]);
        },
        // PostgreSQL restarts every backend and the worker; its member may win again.
        false,
        &|_| {},
    );
}

#[test]
fn the_primary_paused_past_the_election_timeout() {
    scenario(
        "fo-pause",
        &|d| {
            pgraftctl(&["local", "pause", "1", "--dir", d]);
        },
        true,
        // Resumed once the others failed over: its worker learns the newer term and fences.
        &|d| {
            pgraftctl(&["local", "resume", "1", "--dir", d]);
        },
    );
}

#[test]
fn the_primary_cut_off_from_everything() {
    scenario(
        "fo-isolated",
        &|d| {
            pgraftctl(&["local", "partition", "1", "--dir", d]);
            pgraftctl(&["local", "repl-partition", "1", "--dir", d]);
        },
        true,
        &|d| {
            pgraftctl(&["local", "heal", "--dir", d]);
        },
    );
}
