//! Slots for every member on every server: each server of an HA cluster holds a physical
//! slot for every other member, standbys stream through theirs, and a standby's slots
//! follow the primary's. So a standby that fell behind before a failover streams from the
//! new primary afterwards without a WAL gap, even with `wal_keep_size = 0` and every
//! server checkpointed in between. And where a slot was created too late (its member was
//! already further behind), the standby that lost its WAL is re-cloned by itself.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::ha::*;
use common::*;
use serde_json::Value;

/// The `pgraft_node_N` slots on member `i`'s server.
fn slots_on(lines: &[Value], i: usize) -> Option<BTreeSet<String>> {
    let mut c = connect(&conninfo(lines, i)).ok()?;
    let rows = c
        .query("SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'pgraft_node_%'", &[])
        .ok()?;
    Some(rows.iter().map(|r| r.get(0)).collect())
}

fn lsn_of(c: &mut postgres::Client, sql: &str) -> i64 {
    c.query_one(&format!("SELECT ({sql} - '0/0'::pg_lsn)::bigint"), &[]).expect(sql).get(0)
}

/// Member `i`'s slot for node 3: its restart LSN, once it exists.
fn slot_for_3(lines: &[Value], i: usize) -> Option<i64> {
    let mut c = connect(&conninfo(lines, i)).ok()?;
    c.query_opt(
        "SELECT (restart_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'pgraft_node_3'",
        &[],
    )
    .ok()??
    .get(0)
}

/// Node 3 of a fresh 3-member cluster stops receiving (its Raft links stay up) while the
/// primary writes three WAL segments' worth, with `wal_keep_size = 0` and a checkpoint on
/// the primary and on node 2 after each. Returns the cluster and where node 3 stopped.
fn node_3_behind(pgc: &str, name: &str) -> (HaCluster, i64) {
    let c = HaCluster::up(pgc, name, 100);
    let (d, lines, rw) = (&c.d, &c.lines, &c.rw);
    for i in 0..3 {
        let want: BTreeSet<String> =
            (0..3).filter(|j| *j != i).map(|j| format!("pgraft_node_{}", j + 1)).collect();
        wait(
            &format!("node {} to hold a slot for each other member", i + 1),
            Duration::from_secs(30),
            || (slots_on(lines, i)? == want).then_some(()),
        );
        let mut s = connect(&conninfo(lines, i)).expect("connect");
        s.batch_execute("ALTER SYSTEM SET wal_keep_size = 0").expect("wal_keep_size");
        s.batch_execute("SELECT pg_reload_conf()").expect("reload");
    }
    let mut primary = connect(rw).expect("connect to the primary");
    wait("both standbys to stream through their slots", Duration::from_secs(30), || {
        let n: i64 = primary
            .query_one(
                "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid \
                  WHERE s.slot_name::text = r.application_name AND r.state = 'streaming'",
                &[],
            )
            .ok()?
            .get(0);
        (n == 2).then_some(())
    });
    pgraftctl(&["local", "repl-partition", "3", "--dir", d]);
    let mut node3 = connect(&conninfo(lines, 2)).expect("connect to node 3");
    let behind = lsn_of(&mut node3, "pg_last_wal_receive_lsn()");
    // WAL node 3 will need, then checkpoints everywhere, so that without a slot the
    // segments would be gone from node 2.
    let mut node2 = connect(&conninfo(lines, 1)).expect("connect to node 2");
    for round in 0..3 {
        primary
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS big (x bigint, pad text); \
                 INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 60000) g; \
                 SELECT pg_switch_wal(); CHECKPOINT; INSERT INTO t VALUES ({})",
                1000 + round
            ))
            .expect("write WAL on the primary");
        let end = lsn_of(&mut primary, "pg_current_wal_lsn()");
        wait("node 2 to replay it", Duration::from_secs(60), || {
            (lsn_of(&mut node2, "pg_last_wal_replay_lsn()") >= end).then_some(())
        });
        node2.batch_execute("CHECKPOINT").expect("a restartpoint on node 2");
    }
    (c, behind)
}

/// Kills node 1, the primary, and waits for node 2, the most advanced, to be promoted.
fn fail_over_to_node_2(c: &HaCluster) -> Instant {
    let killed = Instant::now();
    pgraftctl(&["local", "kill", "1", "--dir", &c.d]);
    wait("node 2 to be promoted", Duration::from_secs(60), || {
        let mut s = connect(&conninfo(&c.lines, 1)).ok()?;
        (!s.query_one("SELECT pg_is_in_recovery()", &[]).ok()?.get::<_, bool>(0)).then_some(())
    });
    println!("{}: node 2 promoted {:?} after the kill", c.pgc, killed.elapsed());
    killed
}

#[test]
fn a_standby_behind_a_failover_streams_from_the_new_primary_without_a_wal_gap() {
    for_each_version(|pgc| {
        let (c, behind) = node_3_behind(pgc, "fo-slots");
        let (d, lines, rw) = (&c.d, &c.lines, &c.rw);
        let held = slot_for_3(lines, 1).expect("node 2's slot for node 3");
        let replayed = lsn_of(&mut connect(&conninfo(lines, 1)).expect("node 2"), "pg_last_wal_replay_lsn()");
        println!(
            "{pgc}: node 3 stopped at {behind}; node 2 replayed {replayed} and keeps WAL from {held} for it ({} MB behind)",
            (replayed - held) >> 20
        );
        assert!(held <= behind, "node 2's slot for node 3 keeps what node 3 has not received");
        assert!(replayed - behind > 32 << 20, "node 3 fell more than two segments behind");
        let killed = fail_over_to_node_2(&c);
        // Healed, node 3 streams from node 2 from where it stopped (and acknowledges node 2's
        // synchronous commits).
        pgraftctl(&["local", "heal", "--dir", d]);
        let (port, took) = wait_new_primary(rw, pg_port(lines, 0), killed);
        assert_eq!(port, pg_port(lines, 1), "node 2 held the most WAL");
        println!("{pgc}: first write on node 2 {took:?} after the kill");
        let mut node2 = connect(&conninfo(lines, 1)).expect("connect to node 2");
        wait("node 3 to stream from node 2 through its slot", Duration::from_secs(60), || {
            let n: i64 = node2
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid \
                      WHERE r.application_name = 'pgraft_node_3' AND s.slot_name = 'pgraft_node_3' AND r.state = 'streaming'",
                    &[],
                )
                .ok()?
                .get(0);
            (n == 1).then_some(())
        });
        wait_rows(lines, 2, &[1000, 1001, 1002]);
        println!("{pgc}: node 3 caught up from node 2 {:?} after the kill", killed.elapsed());
        pgraftctl(&["local", "down", "--dir", d]);
    });
}

/// A slot created after its member fell behind: node 2's slot for node 3 is dropped and
/// its slot keeper creates it again, where node 2's WAL now starts, past everything node 3
/// holds; a restartpoint then removes the segments between. Node 2, promoted, cannot
/// serve node 3 ("requested WAL segment has already been removed"). Node 3's worker sees
/// that from node 2's slot positions on record, and once node 1 is back (before that, the
/// leader has no majority without node 3's member) the rejoin helper re-clones node 3,
/// which then streams from node 2 with every row.
#[test]
fn a_standby_whose_wal_is_gone_from_the_new_primary_is_recloned() {
    for_each_version(|pgc| {
        let (c, behind) = node_3_behind(pgc, "fo-gone");
        let (d, lines, rw) = (&c.d, &c.lines, &c.rw);
        let mut node2 = connect(&conninfo(lines, 1)).expect("connect to node 2");
        node2.batch_execute("SELECT pg_drop_replication_slot('pgraft_node_3')").expect("drop the slot");
        let recreated =
            wait("node 2's slot keeper to create the slot again", Duration::from_secs(30), || {
                slot_for_3(lines, 1)
            });
        node2.batch_execute("CHECKPOINT").expect("a restartpoint on node 2");
        println!("{pgc}: node 3 stopped at {behind}; node 2's new slot for it starts at {recreated}");
        assert!(recreated >> 24 > behind >> 24, "the new slot starts segments past node 3");
        let killed = fail_over_to_node_2(&c);
        pgraftctl(&["local", "heal", "--dir", d]);
        let (port, _) = wait_new_primary(rw, pg_port(lines, 0), killed);
        assert_eq!(port, pg_port(lines, 1), "node 2 held the most WAL");
        let out = pgraft_start(d, 1);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let raft_dir = std::path::PathBuf::from(lines[2]["raft_data_dir"].as_str().expect("raft_data_dir"));
        let log = wait("node 3's rejoin helper to re-clone it", Duration::from_secs(180), || {
            let log = std::fs::read_to_string(raft_dir.join("rejoin.log")).ok()?;
            log.contains("): done: ").then_some(log)
        });
        assert!(log.contains("cannot get the WAL it needs") && log.contains("re-cloned"), "{log}");
        println!("{pgc}: node 3 re-cloned {:?} after the kill", killed.elapsed());
        never_writable_until_rejoined(lines, 2, 1);
        wait_rows(lines, 2, &[1000, 1001, 1002]);
        assert_eq!(check_one_primary(lines, 3, &[]), 1);
        pgraftctl(&["local", "down", "--dir", d]);
    });
}
