//! Slots for every member on every server: each server of an HA cluster holds a physical
//! slot for every other member, standbys stream through theirs, and a standby's slots
//! follow the primary's. So a standby that fell behind before a failover streams from the
//! new primary afterwards without a WAL gap, even with `wal_keep_size = 0` and every
//! server checkpointed in between.

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

#[test]
fn a_standby_behind_a_failover_streams_from_the_new_primary_without_a_wal_gap() {
    for_each_version(|pgc| {
        let c = HaCluster::up(pgc, "fo-slots", 100);
        let (d, pgc, lines, rw) = (&c.d, &c.pgc, &c.lines, &c.rw);
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
        // Node 3 stops receiving; its Raft links stay up.
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
        let held: i64 = node2
            .query_one(
                "SELECT (restart_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'pgraft_node_3'",
                &[],
            )
            .expect("node 2's slot for node 3")
            .get(0);
        let replayed = lsn_of(&mut node2, "pg_last_wal_replay_lsn()");
        println!(
            "{pgc}: node 3 stopped at {behind}; node 2 replayed {replayed} and keeps WAL from {held} for it ({} MB behind)",
            (replayed - held) >> 20
        );
        assert!(held <= behind, "node 2's slot for node 3 keeps what node 3 has not received");
        assert!(replayed - behind > 32 << 20, "node 3 fell more than two segments behind");
        // The primary is killed: node 2, the most advanced, takes over.
        let killed = Instant::now();
        pgraftctl(&["local", "kill", "1", "--dir", d]);
        wait("node 2 to be promoted", Duration::from_secs(60), || {
            let mut c = connect(&conninfo(lines, 1)).ok()?;
            (!c.query_one("SELECT pg_is_in_recovery()", &[]).ok()?.get::<_, bool>(0)).then_some(())
        });
        println!("{pgc}: node 2 promoted {:?} after the kill", killed.elapsed());
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
