//! `pgraftctl local up --ha`: one primary, streaming standbys cloned from it with a slot
//! each, and the Raft cluster bootstrapped over them.

mod common;

use std::time::Duration;

use common::ha::up_ha;
use common::*;

#[test]
fn ha_clusters_have_one_primary_and_streaming_standbys() {
    for (v, pg_config) in pg_configs().into_iter().enumerate() {
        // 3 members on every version, 5 on the first.
        let sizes: &[usize] = if v == 0 { &[3, 5] } else { &[3] };
        for &n in sizes {
            let pgc = pg_config.to_string_lossy().into_owned();
            let dir = cluster_dir(&format!("ha{n}"));
            let d = dir.to_string_lossy().into_owned();
            let _guard = Down(dir.clone());
            let lines = up_ha(&d, &pgc, n);
            assert_eq!(lines.len(), n + 1, "a line per member and the cluster's conninfo");
            let nodes = &lines[..n];
            for (i, node) in nodes.iter().enumerate() {
                let want = if i == 0 { "primary" } else { "standby" };
                assert_eq!(node["role"].as_str(), Some(want), "{node}");
            }
            let conninfo = |i: usize| nodes[i]["conninfo"].as_str().expect("conninfo").to_string();
            let port = |i: usize| nodes[i]["pg_port"].as_i64().expect("pg_port");

            // The multi-host conninfo finds the primary, whichever host comes first.
            let rw = lines[n]["read_write_conninfo"].as_str().expect("read_write_conninfo");
            assert!(rw.contains("target_session_attrs=read-write"), "{rw}");
            let mut app = connect(rw).expect("the read-write conninfo connects");
            let at: i32 = app.query_one("SELECT inet_server_port()", &[]).expect("port").get(0);
            assert_eq!(i64::from(at), port(0), "the read-write conninfo reached a standby");
            app.batch_execute("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 100)")
                .expect("write on the primary");

            // Every standby replays it, streaming through its own slot on the primary.
            for i in 1..n {
                let mut c = connect(&conninfo(i)).expect("connect to a standby");
                assert!(
                    c.batch_execute("CREATE TABLE nope (x int)").is_err(),
                    "standby {} took a write",
                    i + 1
                );
                wait(&format!("node {} to replay the rows", i + 1), Duration::from_secs(30), || {
                    let rows: i64 = c.query_one("SELECT count(*) FROM t", &[]).ok()?.get(0);
                    (rows == 100).then_some(())
                });
            }
            let mut primary = connect(&conninfo(0)).expect("connect to the primary");
            let slots: Vec<String> = primary
                .query("SELECT slot_name FROM pg_replication_slots WHERE active ORDER BY slot_name", &[])
                .expect("slots")
                .iter()
                .map(|r| r.get(0))
                .collect();
            let want: Vec<String> = (2..=n).map(|id| pgraft_testkit::slot_name(id as u64)).collect();
            assert_eq!(slots, want, "one active physical slot per standby");

            // The Raft members run on every server, standbys included, led by node 1.
            for i in 0..n {
                let mut c = connect(&conninfo(i)).expect("connect");
                // A follower knows its leader from the first heartbeat, and the membership
                // once it has applied the log.
                let what = format!("node {} to follow node 1 with every member", i + 1);
                wait(&what, Duration::from_secs(30), || {
                    let q = "SELECT pgraft_get_leader(), (SELECT count(*) FROM pgraft_get_nodes())";
                    let r = c.query_one(q, &[]).ok()?;
                    (r.get::<_, i32>(0) == 1 && r.get::<_, i64>(1) == n as i64).then_some(())
                });
            }
            if v == 0 && n == 3 {
                // The primary's member cannot be removed: a switchover comes first.
                let e = primary.query_one("SELECT pgraft_remove_node(1)", &[]).expect_err("removal refused");
                let db = e.as_db_error().expect("a server error");
                assert_eq!(db.code().code(), "55006", "{db:?}");
                assert!(db.message().contains("primary on record"), "{}", db.message());
                replication_links_are_cut_apart_from_raft(&d, &conninfo, &mut app);
            }
            // `status` says the role too.
            let st = json_lines(&pgraftctl(&["local", "status", "--dir", &d]));
            let roles: Vec<&str> = st.iter().map(|s| s["role"].as_str().unwrap_or("?")).collect();
            let mut want = vec!["standby"; n];
            want[0] = "primary";
            assert_eq!(roles, want);
            pgraftctl(&["local", "down", "--dir", &d]);
        }
    }
}

/// `repl-cut 1 2` stops node 2 streaming from the primary while node 3 goes on and every
/// Raft link stays up; `heal` lets node 2 catch up.
fn replication_links_are_cut_apart_from_raft(
    d: &str,
    conninfo: &dyn Fn(usize) -> String,
    app: &mut postgres::Client,
) {
    let streaming = |c: &mut postgres::Client| -> Vec<String> {
        c.query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1", &[])
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default()
    };
    let mut primary = connect(&conninfo(0)).expect("connect to the primary");
    assert_eq!(
        streaming(&mut primary),
        ["pgraft_node_2", "pgraft_node_3"],
        "standbys stream through the proxy"
    );
    pgraftctl(&["local", "repl-cut", "1", "2", "--dir", d]);
    wait("node 2's stream to stop", Duration::from_secs(30), || {
        (streaming(&mut primary) == ["pgraft_node_3"]).then_some(())
    });
    app.batch_execute("INSERT INTO t SELECT generate_series(101, 200)").expect("write on the primary");
    let count = |i: usize| -> Option<i64> {
        connect(&conninfo(i)).ok()?.query_one("SELECT count(*) FROM t", &[]).ok().map(|r| r.get(0))
    };
    wait("node 3 to replay the new rows", Duration::from_secs(30), || (count(2) == Some(200)).then_some(()));
    assert_eq!(count(1), Some(100), "node 2 received WAL through a cut link");
    // Raft through node 2 is untouched.
    let mut c2 = connect(&conninfo(1)).expect("connect to node 2");
    let put: bool = c2.query_one("SELECT pgraft_kv_put('cut', 'replication only')", &[]).expect("put").get(0);
    assert!(put);
    pgraftctl(&["local", "heal", "--dir", d]);
    wait("node 2 to catch up after heal", Duration::from_secs(60), || (count(1) == Some(200)).then_some(()));
}
