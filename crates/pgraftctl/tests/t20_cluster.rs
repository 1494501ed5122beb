//! Real three-member clusters through SQL: bootstrap, writes on any member, leader loss,
//! restarts, and a partitioned minority.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn leader_seen_by(conninfo: &str) -> Option<i32> {
    let mut c = connect(conninfo).ok()?;
    c.query_one("SELECT pgraft_get_leader()", &[]).ok().map(|r| r.get::<_, i32>(0)).filter(|l| *l > 0)
}

#[test]
fn bootstrap_write_anywhere_lose_the_leader_and_partition() {
    for pg_config in pg_configs() {
        let pgc = pg_config.to_string_lossy().into_owned();
        let dir = cluster_dir("cluster");
        let d = dir.to_string_lossy().into_owned();
        let _guard = Down(dir.clone());
        let nodes =
            json_lines(&pgraftctl(&["local", "up", "--nodes", "3", "--dir", &d, "--pg-config", &pgc]));
        let conn: Vec<String> =
            nodes.iter().map(|n| n["conninfo"].as_str().expect("conninfo").to_string()).collect();

        // `up` bootstrapped: node 1 leads, every member follows it.
        for c in &conn {
            assert_eq!(leader_seen_by(c), Some(1), "leader seen by {c}");
        }
        // A write on a follower is visible on every member right after it returns.
        let mut c2 = connect(&conn[1]).expect("node 2");
        assert!(c2
            .query_one("SELECT pgraft_kv_put('k', 'from node 2')", &[])
            .expect("put")
            .get::<_, bool>(0));
        for c in &conn {
            let v: Option<String> =
                connect(c).expect("connect").query_one("SELECT pgraft_kv_get('k')", &[]).expect("get").get(0);
            assert_eq!(v.as_deref(), Some("from node 2"), "on {c}");
        }

        // kill -9 the leader's postmaster: a new leader within 3 s.
        pgraftctl(&["local", "kill", "1", "--dir", &d]);
        let killed = Instant::now();
        let new_leader = wait("a new leader", Duration::from_secs(10), || {
            let a = leader_seen_by(&conn[1]);
            (a.is_some() && a != Some(1) && a == leader_seen_by(&conn[2])).then_some(a).flatten()
        });
        let took = killed.elapsed();
        assert!(took < Duration::from_secs(3), "a new leader took {took:?}");
        let mut cl = connect(&conn[(new_leader - 1) as usize]).expect("new leader");
        cl.query_one("SELECT pgraft_kv_put('k', 'after failover')", &[]).expect("put on the new leader");
        // The old leader restarts, rejoins as a follower and has everything.
        pgraftctl(&["local", "start", "1", "--dir", &d]);
        wait("node 1 to rejoin", Duration::from_secs(20), || {
            let mut c1 = connect(&conn[0]).ok()?;
            let v: Option<String> = c1.query_one("SELECT pgraft_kv_get('k')", &[]).ok()?.get(0);
            let leads: bool = c1.query_one("SELECT pgraft_is_leader()", &[]).ok()?.get(0);
            (v.as_deref() == Some("after failover") && !leads).then_some(())
        });

        // A partitioned member refuses writes with a clear error within statement_timeout,
        // while the majority keeps writing; after healing it catches up.
        let follower = (1..=3).find(|n| *n != new_leader).expect("a follower");
        pgraftctl(&["local", "partition", &follower.to_string(), "--dir", &d]);
        let mut cf = connect(&conn[(follower - 1) as usize]).expect("partitioned member's SQL port");
        cf.batch_execute("SET statement_timeout = '3s'").expect("SET");
        let started = Instant::now();
        let err = cf
            .query_one("SELECT pgraft_kv_put('m', 'minority')", &[])
            .expect_err("a minority write must fail");
        assert!(started.elapsed() < Duration::from_secs(4), "the refusal took {:?}", started.elapsed());
        let msg = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
        assert!(
            msg.contains("leader") || msg.contains("quorum") || msg.contains("timed out"),
            "unclear error: {msg}"
        );
        cl.query_one("SELECT pgraft_kv_put('m', 'majority')", &[]).expect("majority write");
        pgraftctl(&["local", "heal", "--dir", &d]);
        wait("the partitioned member to catch up", Duration::from_secs(20), || {
            let v: Option<String> = connect(&conn[(follower - 1) as usize])
                .ok()?
                .query_one("SELECT pgraft_kv_get('m')", &[])
                .ok()?
                .get(0);
            (v.as_deref() == Some("majority")).then_some(())
        });
        drop((c2, cl, cf));
        pgraftctl(&["local", "down", "--dir", &d]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
