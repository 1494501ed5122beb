//! `pgraft.synchronous_mode`: `on` lowers how many standbys acknowledge each commit when
//! fewer stream (to asynchronous when none does), on record in the log first, and raises it
//! again when they are back; `strict` never does, and commits wait. A primary that
//! committed asynchronously under `on` is never replaced by a standby that lacks its
//! commits: the cluster waits for it.

mod common;

use std::time::{Duration, Instant};

use common::ha::*;
use common::*;
use serde_json::Value;

/// The newest `ha_sync` record's k, as node `i` applied it.
fn recorded_k(lines: &[Value], i: usize) -> Option<i32> {
    let mut c = connect(&conninfo(lines, i)).ok()?;
    c.query_opt(
        "SELECT (operation_data->'SyncSet'->>'k')::int FROM pgraft.log_index_mapping \
          WHERE operation_type = 'ha_sync' ORDER BY raft_index DESC LIMIT 1",
        &[],
    )
    .ok()?
    .map(|r| r.get(0))
}

fn sync_names(lines: &[Value], i: usize) -> Option<String> {
    connect(&conninfo(lines, i)).ok()?.query_one("SHOW synchronous_standby_names", &[]).ok().map(|r| r.get(0))
}

#[test]
fn on_falls_back_on_record_and_strict_waits() {
    for_each_version(|pgc| {
        let c = HaCluster::up(pgc, "sync-mode", 10);
        let (d, lines, rw) = (&c.d, &c.lines, &c.rw);
        assert_eq!(sync_names(lines, 0).as_deref(), Some("ANY 1 (pgraft_node_2, pgraft_node_3)"));
        // `on` (the default): no standby streams, and writes go on, asynchronously, once
        // k = 0 is on record.
        pgraftctl(&["local", "repl-partition", "1", "--dir", d]);
        let cut = Instant::now();
        let port = wait("a write with no standby streaming (on)", Duration::from_secs(30), || write_once(rw));
        assert_eq!(port, pg_port(lines, 0));
        println!("{pgc}: on: writes go on {:?} after both standbys stopped streaming", cut.elapsed());
        wait("k = 0 on record on node 2", Duration::from_secs(10), || {
            (recorded_k(lines, 1) == Some(0)).then_some(())
        });
        assert_eq!(sync_names(lines, 0).as_deref(), Some(""));
        // Back: ANY 1 again, on record.
        pgraftctl(&["local", "heal", "--dir", d]);
        wait("ANY 1 in use and on record again", Duration::from_secs(30), || {
            (sync_names(lines, 0).as_deref() == Some("ANY 1 (pgraft_node_2, pgraft_node_3)")
                && recorded_k(lines, 2) == Some(1))
            .then_some(())
        });
        // `strict`: commits wait while no standby streams, and go on after the heal.
        for i in 0..3 {
            let mut s = connect(&conninfo(lines, i)).expect("connect");
            s.batch_execute("ALTER SYSTEM SET pgraft.synchronous_mode = strict").expect("strict");
            s.batch_execute("SELECT pg_reload_conf()").expect("reload");
        }
        let mut primary = connect(rw).expect("connect to the primary");
        wait("strict to be in force", Duration::from_secs(10), || {
            (primary.query_one("SHOW pgraft.synchronous_mode", &[]).ok()?.get::<_, String>(0) == "strict")
                .then_some(())
        });
        pgraftctl(&["local", "repl-partition", "1", "--dir", d]);
        let (tx, rx) = std::sync::mpsc::channel();
        let rw2 = rw.clone();
        std::thread::spawn(move || {
            let _ = tx.send(write_once(&rw2));
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(8)).is_err(),
            "a commit went through with no standby (strict)"
        );
        assert_eq!(sync_names(lines, 0).as_deref(), Some("ANY 1 (pgraft_node_2, pgraft_node_3)"));
        pgraftctl(&["local", "heal", "--dir", d]);
        let done =
            rx.recv_timeout(Duration::from_secs(30)).expect("the waiting commit finishes after the heal");
        assert_eq!(done, Some(pg_port(lines, 0)));
        pgraftctl(&["local", "down", "--dir", d]);
    });
}

/// Under `on`, the primary's replication is cut (k = 0 on record) and it goes on
/// committing alone; then it is killed. No standby is promoted (none holds those commits),
/// however long the others lead; started again, node 1 stands down as a standby, reports
/// where it stopped, and is promoted again with every acknowledged write.
#[test]
fn on_never_replaces_a_primary_that_committed_alone() {
    for_each_version(|pgc| {
        let c = HaCluster::up(pgc, "sync-alone", 10);
        let (d, lines, rw) = (&c.d, &c.lines, &c.rw);
        pgraftctl(&["local", "repl-partition", "1", "--dir", d]);
        wait("k = 0 on record on node 2", Duration::from_secs(30), || {
            (recorded_k(lines, 1) == Some(0)).then_some(())
        });
        let writer = Writer::start(conninfo(lines, 0), 1_000);
        wait("node 1 to commit alone", Duration::from_secs(10), || (writer.count() >= 50).then_some(()));
        let acked = writer.finish();
        pgraftctl(&["local", "kill", "1", "--dir", d]);
        pgraftctl(&["local", "heal", "--dir", d]);
        let killed = Instant::now();
        // Three fencing bounds at the default timers: a failover would have happened.
        while killed.elapsed() < Duration::from_secs(8) {
            for i in 1..3 {
                if let Ok(mut s) = connect(&conninfo(lines, i)) {
                    if let Ok(r) = s.query_one("SELECT pg_is_in_recovery()", &[]) {
                        assert!(r.get::<_, bool>(0), "node {} was promoted without node 1's commits", i + 1);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = pgraft_start(d, 1);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let port = wait("node 1 to be the primary again", Duration::from_secs(90), || write_once(rw));
        assert_eq!(port, pg_port(lines, 0), "node 1 is the primary again");
        println!(
            "{pgc}: on: node 1, killed after committing alone, is the primary again {:?} later",
            killed.elapsed()
        );
        let have = values_on(&conninfo(lines, 0)).expect("read t on node 1");
        let lost: Vec<i64> = acked.iter().map(|(v, _, _)| *v).filter(|v| !have.contains(v)).collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        assert_eq!(check_one_primary(lines, 3, &[]), 0);
        pgraftctl(&["local", "down", "--dir", d]);
    });
}
