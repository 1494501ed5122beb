//! More faults of the primary, each on a fresh 3-member HA cluster in synchronous mode,
//! with a client writing through the read-write conninfo the whole time: kill -9 of the
//! primary's pgraft worker alone, SIGSTOP of the whole primary for longer than the election
//! timeout, and the primary cut off from everything (Raft and replication). After each:
//! exactly one primary, the Raft leader's; no acknowledged write lost; no write
//! acknowledged by node 1 after another server acknowledged one; node 1 back as a standby
//! of the primary (or, after a worker kill, still the primary if its member won again).
//! And in asynchronous mode, a primary cut off from everything diverges and is rewound.

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
fn scenario(name: &str, fault: &dyn Fn(&str), fails_over: bool, recover: &dyn Fn(&str, &[Value])) {
    for_each_version(|pgc| {
        let c = HaCluster::up(pgc, name, 0);
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
        recover(d, lines);
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
            assert!(
                late.is_empty() || p == 0,
                "node 1 acknowledged writes after another server did: {late:?}"
            );
        }
        for i in 0..3 {
            let want: Vec<i64> = acked.iter().map(|(v, _, _)| *v).collect();
            wait(
                &format!("node {} to hold every acknowledged write", i + 1),
                Duration::from_secs(60),
                || {
                    let have = values_on(&conninfo(lines, i))?;
                    want.iter().all(|v| have.contains(v)).then_some(())
                },
            );
        }
        pgraftctl(&["local", "down", "--dir", d]);
    });
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
        &|_, _| {},
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
        &|d, _| {
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
        &|d, _| {
            pgraftctl(&["local", "heal", "--dir", d]);
        },
    );
}

/// Sends `signal` to member `node`'s postmaster alone (its children go on).
fn signal_postmaster(d: &str, node: u64, signal: &str) {
    let pidfile = std::path::Path::new(d).join(format!("node{node}/pgdata/postmaster.pid"));
    let text = std::fs::read_to_string(&pidfile).expect("postmaster.pid");
    let pid = text.lines().next().expect("a pid").trim().to_string();
    let ok = std::process::Command::new("kill").args([signal, &pid]).status().expect("kill");
    assert!(ok.success(), "kill {signal} {pid}");
}

/// The primary's postmaster stops starting backends (SIGSTOP of the postmaster alone: the
/// backends it started, the pgraft worker among them, go on). The worker's connection
/// probe waits past `pgraft.health_check_timeout` (5 s), the member says so in the HA
/// state and hands leadership to a healthy standby, which is promoted; the old primary,
/// fenced, rejoins once its postmaster runs again.
#[test]
fn a_primary_that_no_longer_starts_backends_hands_over() {
    scenario("fo-stuck", &|d| signal_postmaster(d, 1, "-STOP"), true, &|d, lines| {
        let mut c = connect(&conninfo(lines, 1)).expect("connect to node 2");
        let problem: Option<String> = c
            .query_one("SELECT server_problem FROM pgraft_ha_status() WHERE node_id = 1", &[])
            .expect("pgraft_ha_status")
            .get(0);
        let problem = problem.expect("node 1's problem is on record");
        assert!(problem.contains("new connection"), "{problem}");
        println!("fo-stuck: node 1's problem on record: {problem}");
        signal_postmaster(d, 1, "-CONT");
    });
}

/// Asynchronous mode (`pgraft.synchronous_mode = off`): a primary cut off from everything
/// goes on acknowledging writes of a client pinned to it until its lease runs out; the
/// others promote only after the fencing bound, so the two never acknowledge writes at the
/// same time. The writes it took alone are lost (the loss asynchronous mode accepts, within
/// the bound), its WAL diverged, and healed it comes back through pg_rewind.
#[test]
fn an_asynchronous_primary_cut_off_diverges_and_is_rewound() {
    for_each_version(|pgc| {
        let c = HaCluster::up(pgc, "fo-async", 0);
        let (d, pgc, lines, rw) = (&c.d, &c.pgc, &c.lines, &c.rw);
        asynchronous(lines, 3);
        let pinned = Writer::start(conninfo(lines, 0), 1_000_000);
        let writer = Writer::start(rw.clone(), 1);
        wait("the writers to get going", Duration::from_secs(10), || {
            (writer.count() >= 20 && pinned.count() >= 20).then_some(())
        });
        let cut = Instant::now();
        pgraftctl(&["local", "partition", "1", "--dir", d]);
        pgraftctl(&["local", "repl-partition", "1", "--dir", d]);
        let p = wait("another member's server to be promoted", Duration::from_secs(60), || {
            another_primary(lines)
        });
        println!(
            "{pgc}: asynchronous primary cut off: node {} promoted {:?} after the cut",
            p + 1,
            cut.elapsed()
        );
        let before = writer.count();
        wait("writes to go on on the new primary", Duration::from_secs(60), || {
            (writer.count() > before + 20).then_some(())
        });
        let acked: Vec<(i64, i32, Instant)> = writer.finish().into_iter().chain(pinned.finish()).collect();
        let old = pg_port(lines, 0);
        let first_new =
            acked.iter().filter(|(_, port, _)| *port != old).map(|(_, _, t)| *t).min().expect("new writes");
        let late: Vec<i64> =
            acked.iter().filter(|(_, port, t)| *port == old && *t >= first_new).map(|(v, _, _)| *v).collect();
        assert!(late.is_empty(), "node 1 acknowledged writes after the new primary did: {late:?}");
        let have = values_on(&conninfo(lines, p)).expect("read t on the new primary");
        let alone: Vec<&(i64, i32, Instant)> = acked.iter().filter(|(v, _, _)| !have.contains(v)).collect();
        assert!(
            !alone.is_empty(),
            "node 1 took no write alone after the cut: nothing diverged, the test proves nothing"
        );
        assert!(alone.iter().all(|(_, port, _)| *port == old), "only node 1's lone writes are missing");
        let last_alone = alone.iter().map(|(_, _, t)| t.duration_since(cut)).max().unwrap_or_default();
        println!(
            "{pgc}: node 1 acknowledged {} writes alone, the last {last_alone:?} after the cut (lost: asynchronous mode)",
            alone.len()
        );
        pgraftctl(&["local", "heal", "--dir", d]);
        let healed = Instant::now();
        never_writable_until_rejoined(lines, 0, p);
        println!(
            "{pgc}: the diverged primary streams from the new primary {:?} after the heal",
            healed.elapsed()
        );
        let raft_dir = std::path::PathBuf::from(lines[0]["raft_data_dir"].as_str().expect("raft_data_dir"));
        let log = rejoin_log_when_done(&raft_dir);
        assert!(log.contains("rewound"), "{log}");
        let on_old = values_on(&conninfo(lines, 0)).expect("read t on node 1");
        assert!(alone.iter().all(|(v, _, _)| !on_old.contains(v)), "the rewind removed node 1's lone writes");
        pgraftctl(&["local", "down", "--dir", d]);
    });
}

/// Turns synchronous mode off on the `n` members and waits until node 1, the primary, no
/// longer waits for standbys.
fn asynchronous(lines: &[Value], n: usize) {
    for i in 0..n {
        let mut c = connect(&conninfo(lines, i)).expect("connect");
        c.batch_execute("ALTER SYSTEM SET pgraft.synchronous_mode = off").expect("asynchronous mode");
        c.batch_execute("SELECT pg_reload_conf()").expect("reload");
    }
    wait("the primary to stop waiting for standbys", Duration::from_secs(30), || {
        let mut c = connect(&conninfo(lines, 0)).ok()?;
        let names: String = c.query_one("SHOW synchronous_standby_names", &[]).ok()?.get(0);
        names.is_empty().then_some(())
    });
}

/// In asynchronous mode a standby can hold WAL the next primary never had. Of five
/// members, node 2 alone keeps receiving the primary's writes (the replication links from
/// node 1 to nodes 3-5 are cut), then node 2 is cut off from everything and node 1 is
/// killed: node 3, 4 or 5 is promoted on a timeline that left the old one before node 2's
/// position. Healed, node 2 cannot follow it. Its worker sees that in the history file its
/// WAL receiver fetched, and the rejoin helper stops it (once the leader says the Raft
/// majority can spare its member), rewinds it and starts it as a standby of the new
/// primary, without the writes the new primary never had. Node 1 then rejoins too.
#[test]
fn a_standby_that_diverged_is_rewound() {
    for_each_version(|pgc| {
        let c = HaCluster::up_n(pgc, "fo-diverged", 0, 5);
        let (d, pgc, lines, rw) = (&c.d, &c.pgc, &c.lines, &c.rw);
        asynchronous(lines, 5);
        for n in ["3", "4", "5"] {
            pgraftctl(&["local", "repl-cut", "1", n, "--dir", d]);
        }
        let writer = Writer::start(conninfo(lines, 0), 1);
        wait("node 1 to acknowledge writes", Duration::from_secs(10), || {
            (writer.count() >= 50).then_some(())
        });
        let acked = writer.finish();
        let want: Vec<i64> = acked.iter().map(|(v, _, _)| *v).collect();
        wait_rows(lines, 1, &want);
        pgraftctl(&["local", "partition", "2", "--dir", d]);
        pgraftctl(&["local", "repl-partition", "2", "--dir", d]);
        pgraftctl(&["local", "kill", "1", "--dir", d]);
        let killed = Instant::now();
        let p = wait("node 3, 4 or 5 to be promoted", Duration::from_secs(60), || {
            (2..5).find(|i| {
                connect(&conninfo(lines, *i))
                    .ok()
                    .and_then(|mut c| c.query_one("SELECT pg_is_in_recovery(), pgraft_is_leader()", &[]).ok())
                    .is_some_and(|r| !r.get::<_, bool>(0) && r.get::<_, bool>(1))
            })
        });
        println!("{pgc}: node {} promoted {:?} after node 1 was killed", p + 1, killed.elapsed());
        let have = values_on(&conninfo(lines, p)).expect("read t on the new primary");
        let alone: Vec<i64> = want.iter().copied().filter(|v| !have.contains(v)).collect();
        assert!(
            !alone.is_empty(),
            "the new primary has every write node 2 has: nothing diverged, the test proves nothing"
        );
        let timeline: i32 = connect(&conninfo(lines, p))
            .expect("connect to the new primary")
            .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
            .expect("timeline")
            .get(0);
        let later = wait("a write on the new primary", Duration::from_secs(30), || write_once(rw));
        assert_eq!(later, pg_port(lines, p));
        pgraftctl(&["local", "heal", "--dir", d]);
        let healed = Instant::now();
        let raft_dir = std::path::PathBuf::from(lines[1]["raft_data_dir"].as_str().expect("raft_data_dir"));
        let log = rejoin_log_when_done(&raft_dir);
        assert!(log.contains("diverged") && log.contains("rewound"), "{log}");
        never_writable_until_rejoined(lines, 1, p);
        println!(
            "{pgc}: the diverged standby streams from the new primary {:?} after the heal",
            healed.elapsed()
        );
        let on_2 = values_on(&conninfo(lines, 1)).expect("read t on node 2");
        assert!(alone.iter().all(|v| !on_2.contains(v)), "the rewind removed what the new primary never had");
        let mut c = connect(&conninfo(lines, 1)).expect("connect to node 2");
        let tli: i32 = c
            .query_one("SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'", &[])
            .expect("node 2's WAL receiver")
            .get(0);
        assert!(tli >= timeline, "node 2 follows timeline {timeline} (it receives {tli})");
        // Node 1, killed as the primary, comes back as a standby too.
        let out = pgraft_start(d, 1);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        never_writable_until_rejoined(lines, 0, p);
        assert_eq!(check_one_primary(lines, 5, &[]), p);
        pgraftctl(&["local", "down", "--dir", d]);
    });
}

/// A fence with one of three members down: the fenced primary's member stops with its
/// server, and the one standby left is no detach quorum and no Raft majority alone. The
/// rejoin helper starts the fenced server as a standby once no primary appears, its member
/// votes again and reports where the server stood down, and the cluster gets a primary
/// back (node 2, or node 1 again) with every acknowledged write. A switchover asked for
/// in SQL (`pgraft_transfer_leadership`, which does not refuse when a member is down, as
/// `pgraftctl switchover` does) is the fence here.
#[test]
fn a_fence_with_a_standby_down_does_not_wedge_the_cluster() {
    for_each_version(|pgc| {
        let c = HaCluster::up(pgc, "fo-wedge", 0);
        let (d, pgc, lines, rw) = (&c.d, &c.pgc, &c.lines, &c.rw);
        let writer = Writer::start(rw.clone(), 1);
        wait("the writer to get going", Duration::from_secs(10), || (writer.count() >= 20).then_some(()));
        pgraftctl(&["local", "kill", "3", "--dir", d]);
        let before = writer.count();
        wait("writes to go on with node 3 down", Duration::from_secs(30), || {
            (writer.count() > before + 20).then_some(())
        });
        let asked = Instant::now();
        let node2 = conninfo(lines, 1);
        let switchover = std::thread::spawn(move || {
            let mut c = connect(&node2).expect("connect to node 2");
            c.query_one("SELECT pgraft_transfer_leadership(2)", &[])
                .map(|r| r.get::<_, bool>(0))
                .map_err(|e| e.to_string())
        });
        let raft_dir = std::path::PathBuf::from(lines[0]["raft_data_dir"].as_str().expect("raft_data_dir"));
        wait("node 1 to be fenced and started again as a standby", Duration::from_secs(60), || {
            let state = std::fs::read_to_string(raft_dir.join("rejoin.log")).ok()?;
            state.contains("starting as a standby (stood down").then_some(())
        });
        println!("{pgc}: the fenced primary started as a standby {:?} after the switchover", asked.elapsed());
        let before = writer.count();
        wait("writes to go on with a primary again", Duration::from_secs(90), || {
            (writer.count() > before + 20).then_some(())
        });
        println!(
            "{pgc}: writes went on {:?} after the switchover; it returned {:?}",
            asked.elapsed(),
            switchover.join()
        );
        let p = check_one_primary(lines, 3, &[2]);
        println!("{pgc}: node {} is the primary with node 3 down", p + 1);
        let acked = writer.finish();
        let want: Vec<i64> = acked.iter().map(|(v, _, _)| *v).collect();
        let have = values_on(&conninfo(lines, p)).expect("read t on the primary");
        let lost: Vec<i64> = want.iter().copied().filter(|v| !have.contains(v)).collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        // Node 3 comes back and follows.
        let out = pgraft_start(d, 3);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(settled_primary(lines), p);
        wait_rows(lines, 2, &want);
        // Node 1's helper is done (it followed node 2, usually without a rewind, or its
        // server was promoted again), and it never needed a re-clone.
        let log = rejoin_log_when_done(&raft_dir);
        assert!(!log.contains("re-clon"), "{log}");
        let last = log.lines().rfind(|l| l.contains("): ")).unwrap_or_default().to_string();
        println!("{pgc}: node 1's rejoin helper: {last}");
        pgraftctl(&["local", "down", "--dir", d]);
    });
}
