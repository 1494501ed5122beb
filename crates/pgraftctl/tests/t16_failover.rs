//! Failover driven by the Raft leader, on real servers with real kills: the primary's
//! postmaster killed with -9, and the primary cut off from every Raft link while its
//! replication links stay up. After each: exactly one server takes writes, it is the Raft
//! leader's, every write acknowledged before the fault is there (synchronous mode), the
//! other standby streams from the new primary, and the old primary never acknowledges a
//! write after the new one did.

mod common;

use std::time::{Duration, Instant};

use common::ha::*;
use common::*;

#[test]
fn a_killed_primary_is_replaced_and_a_restarted_one_never_takes_writes() {
    for pg_config in pg_configs() {
        let pgc = pg_config.to_string_lossy().into_owned();
        let dir = cluster_dir("fo-kill");
        let d = dir.to_string_lossy().into_owned();
        let _guard = Down(dir.clone());
        let lines = up_ha(&d, &pgc, 3);
        let rw = lines[3]["read_write_conninfo"].as_str().expect("rw").to_string();
        let mut app = connect(&rw).expect("connect");
        app.batch_execute(
            "CREATE TABLE t (x bigint PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
        )
        .expect("write on the primary");
        drop(app);

        let writer = Writer::start(rw.clone(), 1000);
        wait("the writer to get going", Duration::from_secs(10), || {
            (writer.acked.lock().ok()?.len() >= 20).then_some(())
        });
        let killed = Instant::now();
        pgraftctl(&["local", "kill", "1", "--dir", &d]);
        let (port, took) = wait_new_primary(&rw, pg_port(&lines, 0), killed);
        let acked = writer.finish();
        println!(
            "{}: kill -9 of the primary's postmaster to the first write on the new primary: {took:?}",
            pgc
        );
        assert_ne!(port, pg_port(&lines, 0));

        let p = check_one_primary(&lines, 3, &[0]);
        assert_eq!(pg_port(&lines, p), port);
        let have = values_on(&conninfo(&lines, p)).expect("read t on the primary");
        let lost: Vec<i64> = acked.iter().map(|(v, _, _)| *v).filter(|v| !have.contains(v)).collect();
        assert!(lost.is_empty(), "acknowledged writes lost in synchronous mode: {lost:?}");
        assert!((1..=100).all(|v| have.contains(&v)), "rows written before the fault are there");

        // Started again, the former primary never takes a write: its worker fences it, and
        // the rejoin helper brings it back as a standby of the new primary; here by a
        // re-clone (the path a failed pg_rewind takes), asked for with `rejoin.reclone`.
        let raft_dir = std::path::PathBuf::from(lines[0]["raft_data_dir"].as_str().expect("raft_data_dir"));
        std::fs::write(raft_dir.join("rejoin.reclone"), b"").expect("ask for a re-clone");
        // The helper starts the server with pgraft.server_start_command, as it would run a
        // service manager's (here pg_ctl behind a marker file), set while node 1 is down.
        let bindir = std::process::Command::new(&pgc).arg("--bindir").output().expect("pg_config --bindir");
        let bindir = String::from_utf8_lossy(&bindir.stdout).trim().to_string();
        let data = std::path::PathBuf::from(lines[0]["data_dir"].as_str().expect("data_dir"));
        let server_log = data.parent().expect("node dir").join("postgres.log");
        let mark = raft_dir.join("started-by-command");
        let cmd = format!(
            "touch {} && {bindir}/pg_ctl restart -D {} -l {} -w -s",
            mark.display(),
            data.display(),
            server_log.display()
        );
        let mut auto = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.auto.conf"))
            .expect("postgresql.auto.conf");
        std::io::Write::write_all(
            &mut auto,
            format!("pgraft.server_start_command = '{}'\n", cmd.replace('\'', "''")).as_bytes(),
        )
        .expect("set pgraft.server_start_command");
        let _ = pgraft_start(&d, 1);
        let rejoined = Instant::now();
        never_writable_until_rejoined(&lines, 0, p);
        println!(
            "{pgc}: the restarted former primary streams from the new primary after {:?}",
            rejoined.elapsed()
        );
        assert!(!values_on(&conninfo(&lines, p)).expect("read t on the primary").contains(&-2));
        let log = rejoin_log_when_done(&raft_dir);
        assert!(log.contains("re-cloned"), "{log}");
        assert!(mark.exists(), "the helper started the server with pgraft.server_start_command");
        // Its own row of pgraft_ha_status says how it came back (once its member reports).
        let shown: Option<String> = wait("node 1's pgraft_ha_status", Duration::from_secs(30), || {
            connect(&conninfo(&lines, 0))
                .ok()?
                .query_one("SELECT last_rejoin FROM pgraft_ha_status() WHERE node_id = 1", &[])
                .ok()
                .map(|r| r.get(0))
        });
        assert!(shown.as_deref().is_some_and(|s| s.contains("(re-cloned)")), "{shown:?}");
        let all: Vec<i64> = acked.iter().map(|(v, _, _)| *v).collect();
        wait_rows(&lines, 0, &all);
        check_one_primary(&lines, 3, &[]);
        pgraftctl(&["local", "down", "--dir", &d]);
    }
}

#[test]
fn a_primary_cut_off_from_raft_is_fenced_while_its_replication_links_stay_up() {
    for_each_version(|pgc| {
        let c = HaCluster::up(pgc, "fo-cut", 100);
        let (d, pgc, lines, rw) = (&c.d, &c.pgc, &c.lines, &c.rw);

        // A client that stays on node 1 the whole time, as a pooler pinned to it would.
        let pinned = Writer::start(conninfo(lines, 0), 1_000_000);
        let writer = Writer::start(rw.clone(), 1000);
        wait("the writers to get going", Duration::from_secs(10), || {
            (writer.acked.lock().ok()?.len() >= 20 && pinned.acked.lock().ok()?.len() >= 20).then_some(())
        });
        let cut = Instant::now();
        pgraftctl(&["local", "partition", "1", "--dir", d]);
        let (port, took) = wait_new_primary(rw, pg_port(lines, 0), cut);
        println!("{pgc}: primary cut off from Raft to the first write on the new primary: {took:?}");
        wait("the cut-off primary to shut itself down", Duration::from_secs(30), || {
            (!postmaster_alive(lines, 0)).then_some(())
        });
        let fenced_after = cut.elapsed();
        let acked = writer.finish();
        let pinned_acked = pinned.finish();
        println!("{pgc}: the cut-off primary was down {fenced_after:?} after the cut");

        let p = check_one_primary(lines, 3, &[0]);
        assert_eq!(pg_port(lines, p), port);
        // No write acknowledged by node 1 after the new primary acknowledged one.
        let first_new = acked
            .iter()
            .chain(pinned_acked.iter())
            .filter(|(_, port, _)| *port != pg_port(lines, 0))
            .map(|(_, _, at)| *at)
            .min()
            .expect("the new primary acknowledged writes");
        let late: Vec<i64> = acked
            .iter()
            .chain(pinned_acked.iter())
            .filter(|(_, port, at)| *port == pg_port(lines, 0) && *at >= first_new)
            .map(|(v, _, _)| *v)
            .collect();
        assert!(late.is_empty(), "node 1 acknowledged writes after the new primary did: {late:?}");
        // Every acknowledged write is on the new primary (synchronous mode).
        let have = values_on(&conninfo(lines, p)).expect("read t on the primary");
        let lost: Vec<i64> = acked
            .iter()
            .chain(pinned_acked.iter())
            .map(|(v, _, _)| *v)
            .filter(|v| !have.contains(v))
            .collect();
        assert!(lost.is_empty(), "acknowledged writes lost in synchronous mode: {lost:?}");
        // Healed, the fenced primary comes back as a standby of the new one by itself.
        pgraftctl(&["local", "heal", "--dir", d]);
        let healed = Instant::now();
        never_writable_until_rejoined(lines, 0, p);
        println!(
            "{pgc}: the fenced primary streams from the new primary {:?} after the heal",
            healed.elapsed()
        );
        let all: Vec<i64> = acked.iter().chain(pinned_acked.iter()).map(|(v, _, _)| *v).collect();
        wait_rows(lines, 0, &all);
        let raft_dir = std::path::PathBuf::from(lines[0]["raft_data_dir"].as_str().expect("raft_data_dir"));
        let log = rejoin_log_when_done(&raft_dir);
        assert!(log.contains("rewound"), "{log}");
        check_one_primary(lines, 3, &[]);
        pgraftctl(&["local", "down", "--dir", d]);
    });
}

#[test]
fn a_switchover_under_load_loses_nothing_and_needs_no_rewind() {
    for_each_version(|pgc| {
        let c = HaCluster::up(pgc, "fo-switch", 100);
        let (d, pgc, lines, rw) = (&c.d, &c.pgc, &c.lines, &c.rw);
        let writer = Writer::start(rw.clone(), 1000);
        wait("the writer to get going", Duration::from_secs(10), || {
            (writer.acked.lock().ok()?.len() >= 20).then_some(())
        });
        // Not to a member whose standby does not stream from the primary: that would be a
        // failover (in asynchronous mode one that may lose commits). The primary refuses,
        // keeps taking writes, and the function fails once the switchover times out.
        pgraftctl(&["local", "repl-cut", "1", "2", "--dir", d]);
        let streams_2 = || {
            let mut p = connect(&conninfo(lines, 0)).ok()?;
            let n: i64 = p
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgraft_node_2' AND state = 'streaming'",
                    &[],
                )
                .ok()?
                .get(0);
            Some(n == 1)
        };
        wait("node 2 to stop streaming from node 1", Duration::from_secs(30), || {
            (streams_2() == Some(false)).then_some(())
        });
        let before = writer.acked.lock().expect("lock").len();
        let refused = connect(&conninfo(lines, 2))
            .expect("connect to node 3")
            .query_one("SELECT pgraft_transfer_leadership(2)", &[])
            .expect_err("a switchover to a member that does not stream");
        let why =
            refused.as_db_error().map(|e| e.message().to_string()).unwrap_or_else(|| refused.to_string());
        assert!(why.contains("did not complete"), "{why}");
        let in_recovery = |i: usize| -> bool {
            let mut c = connect(&conninfo(lines, i)).expect("connect");
            c.query_one("SELECT pg_is_in_recovery()", &[]).expect("pg_is_in_recovery").get(0)
        };
        assert_eq!(
            [in_recovery(0), in_recovery(1), in_recovery(2)],
            [false, true, true],
            "node 1 is still the primary"
        );
        assert!(writer.acked.lock().expect("lock").len() > before + 100, "node 1 took writes meanwhile");
        println!("{pgc}: a switchover to node 2, cut off from node 1's WAL, was refused");
        pgraftctl(&["local", "heal", "--dir", d]);
        wait("node 2 to stream from node 1 again", Duration::from_secs(60), || {
            (streams_2() == Some(true)).then_some(())
        });
        let asked = Instant::now();
        // pgraftctl asks a member that does not lead (the old primary's sessions end with its
        // shutdown); pgraft_transfer_leadership(2) returns once node 2 is the recorded primary.
        // An operator command against every member, answering in JSON.
        let eps = endpoints(lines, 3);
        let ctl = |cmd: &[&str]| json_lines(&pgraftctl(&ctl_args(&eps, cmd)));
        let out = ctl(&["switchover", "--to", "2"]);
        assert_eq!(out[0]["to"], 2, "{out:?}");
        println!("{pgc}: pgraftctl switchover --to 2 returned after {:?}", asked.elapsed());
        let (port, took) = wait_new_primary(rw, pg_port(lines, 0), asked);
        assert_eq!(port, pg_port(lines, 1), "node 2 is the new primary");
        println!("{pgc}: switchover: the first write on node 2 {took:?} after it was asked for");
        never_writable_until_rejoined(lines, 0, 1);
        println!(
            "{pgc}: node 1 streams from node 2 {:?} after the switchover was asked for",
            asked.elapsed()
        );
        let acked = writer.finish();
        check_one_primary(lines, 3, &[]);
        let have = values_on(&conninfo(lines, 1)).expect("read t on node 2");
        let lost: Vec<i64> = acked.iter().map(|(v, _, _)| *v).filter(|v| !have.contains(v)).collect();
        assert!(lost.is_empty(), "acknowledged writes lost in a switchover: {lost:?}");
        // Node 1 shut down cleanly after its standbys received everything: nothing to rewind.
        let raft_dir = std::path::PathBuf::from(lines[0]["raft_data_dir"].as_str().expect("raft_data_dir"));
        let log = rejoin_log_when_done(&raft_dir);
        assert!(log.contains("no rewind required"), "{log}");
        // `member list` shows each member's PostgreSQL role beside its Raft state (once the
        // rejoined member's worker follows node 2 again).
        wait("node 1's member to follow node 2", Duration::from_secs(30), || {
            let mut c = connect(&conninfo(lines, 0)).ok()?;
            (c.query_one("SELECT pgraft_get_leader()", &[]).ok()?.get::<_, i32>(0) == 2).then_some(())
        });
        // The role of a standby comes from the primary's pg_stat_replication: a standby
        // whose stream restarts (here once, to go through its slot once node 2's slots are
        // on record) is missing from it for a moment.
        let want = [(1, "standby".to_string()), (2, "primary".to_string()), (3, "standby".to_string())];
        wait("member list to show node 2 primary, nodes 1 and 3 standbys", Duration::from_secs(15), || {
            let ml = ctl(&["member", "list"]);
            let roles: Vec<(i64, String)> = ml[0]["members"]
                .as_array()?
                .iter()
                .map(|m| (m["id"].as_i64().unwrap_or(0), m["pg_role"].as_str().unwrap_or("?").to_string()))
                .collect();
            (roles == want).then_some(())
        });
        pgraftctl(&["local", "down", "--dir", d]);
    });
}

#[test]
fn failover_to_a_chosen_member_is_refused_while_the_primary_is_healthy_and_done_once_it_is_lost() {
    for_each_version(|pgc| {
        let c = HaCluster::up(pgc, "fo-choose", 10);
        let (d, pgc, lines, rw) = (&c.d, &c.pgc, &c.lines, &c.rw);
        let eps = endpoints(lines, 3);
        let err = pgraftctl_fails(&ctl_args(&eps, &["failover", "--to", "2"]));
        assert!(err.contains("use `pgraftctl switchover --to 2`"), "{err}");
        let writer = Writer::start(rw.clone(), 1000);
        wait("the writer to get going", Duration::from_secs(10), || (writer.count() >= 20).then_some(()));
        let killed = Instant::now();
        pgraftctl(&["local", "kill", "1", "--dir", d]);
        // Ask for node 3 at once: the command waits for the automatic failover. If that picked
        // node 3, done; if it picked node 2, a switchover to node 3 would need node 1's server
        // up too (the old primary shuts down in a switchover): the command says so, and once
        // node 1 is back as a standby the switchover does it.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgraftctl"))
            .args(ctl_args(&eps, &["failover", "--to", "3"]))
            .output()
            .expect("run pgraftctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let out = json_lines(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(out[0]["to"], 3, "{out:?}");
            println!(
                "{pgc}: failover --to 3 after a kill -9 of the primary: {:?} ({})",
                killed.elapsed(),
                out[0]["how"]
            );
            let _ = pgraft_start(d, 1);
        } else {
            assert!(stderr.contains("needs every member's server running"), "{stderr}");
            assert_eq!(check_one_primary(lines, 3, &[0]), 1, "the failover promoted node 2");
            println!("{pgc}: failover --to 3 after a kill -9 of the primary: node 2 was promoted; node 1 is down: refused");
            let _ = pgraft_start(d, 1);
            never_writable_until_rejoined(lines, 0, 1);
            wait("node 1's member to report again", Duration::from_secs(30), || {
                connect(&conninfo(lines, 0))
                    .ok()?
                    .query("SELECT * FROM pgraft_ha_status()", &[])
                    .ok()
                    .map(|_| ())
            });
            let out = json_lines(&pgraftctl(&ctl_args(&eps, &["switchover", "--to", "3"])));
            assert_eq!(out[0]["to"], 3, "{out:?}");
        }
        let (port, _) = wait_new_primary(rw, pg_port(lines, 0), killed);
        assert_eq!(port, pg_port(lines, 2), "node 3 took the write");
        // Both others stream from node 3 (after a switchover, node 2 rejoins first).
        never_writable_until_rejoined(lines, 0, 2);
        never_writable_until_rejoined(lines, 1, 2);
        let p = check_one_primary(lines, 3, &[]);
        assert_eq!(p, 2, "node 3 is the primary");
        let acked = writer.finish();
        wait_rows(lines, 2, &acked.iter().map(|(v, _, _)| *v).collect::<Vec<_>>());
        pgraftctl(&["local", "down", "--dir", d]);
    });
}
