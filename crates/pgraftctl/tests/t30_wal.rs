//! `pgraftctl wal receive` and `wal decode` against real servers (every version in
//! PGRAFT_TEST_PG_CONFIGS), under write load: segments byte-identical to pg_wal, SIGKILL
//! and restart without loss or duplication, a slot holding back WAL the receiver has not
//! flushed, a timeline switch followed, and a logical slot's changes printed exactly.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::pg_configs;
use pgraft_testkit::{wait_until, ReplicationServer, ReplicationServerOptions};
use pgraft_walstream::{Lsn, SegmentSize};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(50);

fn seg() -> SegmentSize {
    SegmentSize::new(1 << 20).expect("1 MiB")
}

/// A running `pgraftctl wal receive`, its stdout going to a file we can read meanwhile.
struct Receiver {
    child: Child,
    out: PathBuf,
}

impl Receiver {
    fn spawn(server: &ReplicationServer, dir: &Path, extra: &[&str], run: u32) -> Receiver {
        let out = dir.with_extension(format!("run{run}.jsonl"));
        let file = fs::File::create(&out).expect("create the receiver's output file");
        let err = fs::File::create(out.with_extension("stderr")).expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_pgraftctl"))
            .args([
                "wal",
                "receive",
                "--conninfo",
                &server.replicator_conninfo(),
                "--status-interval",
                "1",
                "--dir",
            ])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn pgraftctl wal receive");
        Receiver { child, out }
    }

    fn events(&self) -> Vec<Value> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn sigkill(mut self) -> Vec<Value> {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        self.events()
    }

    /// SIGTERM; the receiver must exit 0 after a clean stop.
    fn sigterm(mut self) -> Vec<Value> {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "send SIGTERM");
        let status =
            wait_until("the receiver to exit after SIGTERM", DEADLINE, POLL, || Ok(self.child.try_wait()?))
                .expect("exit");
        let events = self.events();
        assert!(status.success(), "exit status {status}; events {events:?}");
        let last = events.last().expect("events");
        assert_eq!(last["event"], "stopped", "{events:?}");
        assert_eq!(last["reason"], "stop requested");
        events
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes WAL from a thread until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl Load {
    fn start(server: &ReplicationServer) -> Load {
        let mut c = server.sql().expect("load connection");
        c.batch_execute("CREATE TABLE IF NOT EXISTS load (id int, v text)").expect("load table");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                c.batch_execute("INSERT INTO load SELECT g, md5(g::text) || repeat('w', 300) FROM generate_series(1, 100) g")
                    .expect("insert");
                n += 1;
            }
            n
        });
        Load { stop, handle: Some(handle) }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("running").join().expect("the load thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Segments by (timeline, segment number).
type Segments = BTreeSet<(u32, u64)>;

/// (timeline, segno) of complete segments, and partials, in a receiver directory.
fn listing(dir: &Path) -> (Segments, Segments) {
    let (mut complete, mut partial) = (BTreeSet::new(), BTreeSet::new());
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let (base, is_partial) = match name.strip_suffix(".partial") {
            Some(b) => (b.to_string(), true),
            None => (name.clone(), false),
        };
        if let Ok(id) = seg().parse_file_name(&base) {
            if is_partial {
                partial.insert(id);
            } else {
                complete.insert(id);
            }
        }
    }
    (complete, partial)
}

/// The end of the WAL held in `dir` on its newest timeline.
fn held_end(dir: &Path) -> Lsn {
    let (complete, partial) = listing(dir);
    let c = complete.iter().map(|&(_, s)| (s + 1) << 20).max().unwrap_or(0);
    let p = partial
        .iter()
        .map(|&(t, s)| {
            let len = fs::metadata(dir.join(format!("{}.partial", seg().segment_file_name(t, s))))
                .map(|m| m.len())
                .unwrap_or(0);
            (s << 20) + len
        })
        .max()
        .unwrap_or(0);
    Lsn(c.max(p))
}

fn sql_lsn(c: &mut postgres::Client, q: &str) -> Lsn {
    let s: String = c.query_one(q, &[]).unwrap_or_else(|e| panic!("{q}: {e}")).get(0);
    s.parse().unwrap_or_else(|e| panic!("{q} gave {s:?}: {e}"))
}

/// Forces a segment switch and returns the segment number that it completed.
fn switch_wal(c: &mut postgres::Client) -> u64 {
    c.batch_execute("INSERT INTO load VALUES (0, 'switch')").expect("a little WAL");
    let end = sql_lsn(c, "SELECT pg_switch_wal()::text");
    seg().segment_of(Lsn(end.0 - 1))
}

fn wait_complete(dir: &Path, tli: u32, segno: u64) {
    wait_until(&format!("segment {segno} of timeline {tli} to be complete"), DEADLINE, POLL, || {
        Ok(listing(dir).0.contains(&(tli, segno)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}; directory holds {:?}", listing(dir)));
}

/// Every complete segment equals the server's file; partials are prefixes of it. Returns
/// how many segments were compared.
fn compare_with_server(server: &ReplicationServer, dir: &Path, partial_server_suffix: &str) -> usize {
    let (complete, partial) = listing(dir);
    for &(tli, segno) in &complete {
        let name = seg().segment_file_name(tli, segno);
        let ours = fs::read(dir.join(&name)).expect("our segment");
        let theirs = fs::read(server.wal_file(&name)).unwrap_or_else(|e| panic!("the server's {name}: {e}"));
        assert!(ours == theirs, "segment {name} differs from the server's");
    }
    for &(tli, segno) in &partial {
        let name = seg().segment_file_name(tli, segno);
        let ours = fs::read(dir.join(format!("{name}.partial"))).expect("our partial");
        let theirs = fs::read(server.wal_file(&name))
            .or_else(|_| fs::read(server.wal_file(&format!("{name}{partial_server_suffix}"))))
            .unwrap_or_else(|e| panic!("the server's {name}: {e}"));
        assert!(theirs.starts_with(&ours), "partial {name} is not a prefix of the server's");
    }
    complete.len()
}

fn segment_events(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "segment")
        .map(|e| e["path"].as_str().expect("a path").rsplit('/').next().expect("a name").to_string())
        .collect()
}

/// Reference (issue 7): completed segments byte-identical to pg_wal; SIGKILL and restart
/// lose nothing and duplicate nothing; SIGTERM stops cleanly.
#[test]
fn receive_survives_sigkill_byte_identical() {
    for pg in pg_configs() {
        let server =
            ReplicationServer::start_new("recv", &pg, &ReplicationServerOptions::default()).expect("server");
        let major = server.install.major;
        let dir = server.root.join("wal");
        let mut sql = server.sql().expect("sql");
        let load = Load::start(&server);
        let r1 = Receiver::spawn(&server, &dir, &["--slot", "recv", "--create-slot"], 1);
        wait_until("three complete segments", DEADLINE, POLL, || {
            Ok((listing(&dir).0.len() >= 3).then_some(()))
        })
        .unwrap_or_else(|e| panic!("pg{major}: {e}; events {:?}", r1.events()));
        let events1 = r1.sigkill();
        let held = held_end(&dir);
        // Flushed was reported only for what the directory holds.
        let restart =
            sql_lsn(&mut sql, "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'recv'");
        assert!(restart <= held, "pg{major}: the slot is at {restart}, past the {held} the directory holds");
        let (complete1, partial1) = listing(&dir);
        let resume = match partial1.iter().max() {
            Some(&(_, s)) if s > complete1.iter().map(|c| c.1).max().unwrap_or(0) => Lsn(s << 20),
            _ => Lsn((complete1.iter().map(|c| c.1).max().expect("complete segments") + 1) << 20),
        };

        // WAL keeps coming while the receiver is down.
        let down_at = sql_lsn(&mut sql, "SELECT pg_current_wal_lsn()::text");
        wait_until("two more segments of WAL", DEADLINE, POLL, || {
            Ok((sql_lsn(&mut sql, "SELECT pg_current_wal_lsn()::text").0 > down_at.0 + (2 << 20))
                .then_some(()))
        })
        .expect("load");

        let r2 = Receiver::spawn(&server, &dir, &["--slot", "recv"], 2);
        wait_until("the restarted receiver to start", DEADLINE, POLL, || {
            Ok(r2.events().into_iter().find(|e| e["event"] == "started"))
        })
        .map(|started| {
            assert_eq!(started["start"], resume.to_string(), "pg{major}: resumed where it stopped")
        })
        .unwrap_or_else(|e| panic!("pg{major}: {e}"));
        load.stop();
        let last = switch_wal(&mut sql);
        wait_complete(&dir, 1, last);
        let events2 = r2.sigterm();

        // Contiguous, complete, identical, each completed exactly once.
        let (complete, _) = listing(&dir);
        let first = complete.iter().next().expect("segments").1;
        let want: Segments = (first..=last).map(|s| (1, s)).collect();
        assert_eq!(
            complete.iter().filter(|c| c.1 <= last).cloned().collect::<BTreeSet<_>>(),
            want,
            "pg{major}: gaps"
        );
        let compared = compare_with_server(&server, &dir, ".partial");
        assert!(compared >= 6, "pg{major}: only {compared} segments");
        let mut completed = segment_events(&events1);
        completed.extend(segment_events(&events2));
        let unique: BTreeSet<&String> = completed.iter().collect();
        assert_eq!(unique.len(), completed.len(), "pg{major}: a segment was completed twice: {completed:?}");
        // A SIGKILL between a segment's rename and its report leaves one complete file
        // unreported (the restarted receiver finds it done); none is reported and missing.
        assert!(
            completed.iter().all(|name| complete.iter().any(|c| seg().segment_file_name(c.0, c.1) == *name)),
            "pg{major}: a reported segment is not a complete file: {completed:?}"
        );
        assert!(
            complete.len() - unique.len() <= 1,
            "pg{major}: {} complete files, {} reported",
            complete.len(),
            unique.len()
        );
    }
}

/// Reference (issue 7): with a slot, the server keeps the WAL the receiver has not
/// flushed, even through checkpoints that remove everything else.
#[test]
fn slot_keeps_unflushed_wal() {
    for pg in pg_configs() {
        let opts = ReplicationServerOptions {
            conf: vec![
                "wal_keep_size = 0".into(),
                "max_wal_size = '4MB'".into(),
                "min_wal_size = '2MB'".into(),
            ],
            ..ReplicationServerOptions::default()
        };
        let server = ReplicationServer::start_new("slot", &pg, &opts).expect("server");
        let major = server.install.major;
        let dir = server.root.join("wal");
        let mut sql = server.sql().expect("sql");
        let load = Load::start(&server);
        let r1 = Receiver::spawn(&server, &dir, &["--slot", "keep", "--create-slot"], 1);
        wait_until("three complete segments and the slot past the first", DEADLINE, POLL, || {
            let (complete, _) = listing(&dir);
            let Some(&(_, first)) = complete.iter().next() else { return Ok(None) };
            let restart = sql_lsn(&mut sql, "SELECT coalesce(restart_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = 'keep'");
            Ok((complete.len() >= 3 && seg().segment_of(restart) > first + 1).then_some(()))
        })
        .unwrap_or_else(|e| panic!("pg{major}: {e}; events {:?}", r1.events()));
        r1.sigkill();
        load.stop();
        let first = listing(&dir).0.iter().next().expect("segments").1;
        let restart =
            sql_lsn(&mut sql, "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'keep'");
        assert!(restart <= held_end(&dir), "pg{major}: slot past what the directory holds");

        // Plenty of WAL and checkpoints while the receiver is away.
        for _ in 0..8 {
            sql.batch_execute("INSERT INTO load SELECT g, repeat('c', 300) FROM generate_series(1, 2000) g")
                .expect("load");
            switch_wal(&mut sql);
        }
        sql.batch_execute("CHECKPOINT").expect("checkpoint");
        sql.batch_execute("CHECKPOINT").expect("checkpoint");
        let kept = seg().segment_file_name(1, seg().segment_of(restart));
        assert!(
            server.wal_file(&kept).exists(),
            "pg{major}: {kept} (holding the slot's {restart}) was removed"
        );
        let gone = seg().segment_file_name(1, first);
        assert!(
            !server.wal_file(&gone).exists(),
            "pg{major}: {gone}, flushed by the receiver, is still kept"
        );

        let r2 = Receiver::spawn(&server, &dir, &["--slot", "keep"], 2);
        let last = switch_wal(&mut sql);
        wait_complete(&dir, 1, last);
        let events = r2.sigterm();
        assert!(!events.iter().any(|e| e["event"] == "error"), "pg{major}: {events:?}");
        let (complete, _) = listing(&dir);
        let want: Segments = (first..=last).map(|s| (1, s)).collect();
        assert_eq!(
            complete.iter().filter(|c| c.1 <= last).cloned().collect::<BTreeSet<_>>(),
            want,
            "pg{major}: gaps"
        );
        // The segments written after the restart are still on the server to compare.
        for &(tli, segno) in complete.iter().filter(|c| c.1 >= seg().segment_of(restart)) {
            let name = seg().segment_file_name(tli, segno);
            if let Ok(theirs) = fs::read(server.wal_file(&name)) {
                assert!(fs::read(dir.join(&name)).expect("ours") == theirs, "pg{major}: {name} differs");
            }
        }
    }
}

/// Reference (issue 7): a server switched to a new timeline (restarted as a standby and
/// promoted) while the receiver streams from it: the receiver follows onto timeline 2,
/// writes 00000002.history, and the new timeline's segments equal the server's.
#[test]
fn receive_follows_a_timeline_switch() {
    for pg in pg_configs() {
        let server =
            ReplicationServer::start_new("tli", &pg, &ReplicationServerOptions::default()).expect("server");
        let major = server.install.major;
        let dir = server.root.join("wal");
        let mut sql = server.sql().expect("sql");
        sql.batch_execute("CREATE TABLE load (id int, v text)").expect("table");
        let r = Receiver::spawn(&server, &dir, &[], 1);
        wait_until("the receiver to start", DEADLINE, POLL, || {
            Ok(r.events().iter().any(|e| e["event"] == "started").then_some(()))
        })
        .unwrap_or_else(|e| panic!("pg{major}: {e}"));
        let first = switch_wal(&mut sql);
        wait_complete(&dir, 1, first);
        drop(sql);

        // The same server, restarted as a standby of its own WAL; the receiver reconnects.
        server.stop("fast").expect("stop");
        server.make_standby().expect("standby.signal");
        server.start().expect("start as a standby");
        let mut sql = server.sql().expect("sql on the standby");
        let in_recovery: bool = sql.query_one("SELECT pg_is_in_recovery()", &[]).expect("recovery?").get(0);
        assert!(in_recovery);
        wait_until("the receiver to stream from the standby", DEADLINE, POLL, || {
            Ok((r.events().iter().filter(|e| e["event"] == "started").count() >= 2).then_some(()))
        })
        .unwrap_or_else(|e| panic!("pg{major}: {e}; events {:?}", r.events()));
        let switch_at = sql_lsn(&mut sql, "SELECT pg_last_wal_replay_lsn()::text");

        server.promote().expect("promote");
        wait_until("the promotion to end recovery", DEADLINE, POLL, || {
            let rec: bool = sql.query_one("SELECT pg_is_in_recovery()", &[])?.get(0);
            Ok((!rec).then_some(()))
        })
        .expect("promoted");
        let mut last = 0;
        for _ in 0..2 {
            sql.batch_execute("INSERT INTO load SELECT g, repeat('t', 300) FROM generate_series(1, 1000) g")
                .expect("load");
            last = switch_wal(&mut sql);
        }
        wait_complete(&dir, 2, last);
        let events = r.sigterm();

        let switched = events
            .iter()
            .find(|e| e["event"] == "timeline")
            .unwrap_or_else(|| panic!("pg{major}: {events:?}"));
        assert_eq!((switched["from"].as_u64(), switched["to"].as_u64()), (Some(1), Some(2)), "pg{major}");
        let at: Lsn = switched["at"].as_str().expect("at").parse().expect("an LSN");
        assert!(at >= switch_at, "pg{major}: switch at {at}, before the replayed {switch_at}");
        let history = fs::read(dir.join("00000002.history")).expect("the receiver wrote the history file");
        assert_eq!(
            history,
            fs::read(server.wal_file("00000002.history")).expect("the server's history"),
            "pg{major}"
        );
        assert!(String::from_utf8_lossy(&history).starts_with(&format!("1\t{at}")), "pg{major}: {history:?}");
        let (complete, _) = listing(&dir);
        let switch_seg = seg().segment_of(at);
        let want: Segments = (switch_seg..=last).map(|s| (2, s)).collect();
        assert_eq!(complete.iter().filter(|c| c.0 == 2).cloned().collect::<BTreeSet<_>>(), want, "pg{major}");
        // Timeline 1's last segment stays .partial on both sides.
        compare_with_server(&server, &dir, ".partial");
    }
}

/// Reference (issue 7): a logical slot through test_decoding shows exactly the inserts,
/// updates and deletes, and the slot's confirmed_flush_lsn moves past them.
#[test]
fn decode_prints_exactly_the_changes() {
    for pg in pg_configs() {
        let server = ReplicationServer::start_new("decode", &pg, &ReplicationServerOptions::default())
            .expect("server");
        let major = server.install.major;
        if !server.install.has_module("test_decoding") {
            // The PostgreSQL 16 of `make test-matrix` (a wheel) ships no contrib modules.
            println!(
                "pg{major}: no test_decoding in {}: decoding is checked on the other versions",
                server.install.pkglibdir.display()
            );
            continue;
        }
        let mut sql = server.sql().expect("sql");
        sql.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)").expect("table");
        sql.batch_execute("SELECT pg_create_logical_replication_slot('show', 'test_decoding')")
            .expect("slot");
        for change in [
            "INSERT INTO items VALUES (1, 'one'), (2, 'two')",
            "UPDATE items SET name = 'uno' WHERE id = 1",
            "DELETE FROM items WHERE id = 2",
        ] {
            sql.batch_execute(change).expect("a change");
        }
        let end = sql_lsn(&mut sql, "SELECT pg_current_wal_lsn()::text");
        let conninfo = format!("{} dbname=postgres", server.replicator_conninfo());
        let decode_slot = |slot: &str, extra: &[&str]| -> String {
            let out = Command::new(env!("CARGO_BIN_EXE_pgraftctl"))
                .args(["wal", "decode", "--conninfo", &conninfo, "--slot", slot])
                .args(["-o", "include-xids=0", "-o", "skip-empty-xacts=1", "--status-interval", "1"])
                .args(extra)
                .output()
                .expect("run pgraftctl wal decode");
            assert!(out.status.success(), "pg{major}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).expect("UTF-8")
        };
        let decode = |extra: &[&str]| decode_slot("show", extra);
        let printed = decode(&["--end-lsn", &end.to_string()]);
        assert_eq!(
            printed,
            "BEGIN\n\
             table public.items: INSERT: id[integer]:1 name[text]:'one'\n\
             table public.items: INSERT: id[integer]:2 name[text]:'two'\n\
             COMMIT\n\
             BEGIN\n\
             table public.items: UPDATE: id[integer]:1 name[text]:'uno'\n\
             COMMIT\n\
             BEGIN\n\
             table public.items: DELETE: id[integer]:2\n\
             COMMIT\n",
            "pg{major}"
        );
        let confirmed = sql_lsn(
            &mut sql,
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'show'",
        );
        assert!(confirmed >= end, "pg{major}: confirmed_flush_lsn {confirmed} < {end}");
        // Nothing confirmed is printed again; only the new change.
        sql.batch_execute("INSERT INTO items VALUES (3, 'three')").expect("one more");
        let end = sql_lsn(&mut sql, "SELECT pg_current_wal_lsn()::text");
        let printed = decode(&["--end-lsn", &end.to_string()]);
        assert_eq!(
            printed, "BEGIN\ntable public.items: INSERT: id[integer]:3 name[text]:'three'\nCOMMIT\n",
            "pg{major}"
        );

        // --create-slot makes a logical slot with the plugin; it sees nothing from before.
        let end = sql_lsn(&mut sql, "SELECT pg_current_wal_lsn()::text");
        let printed = decode_slot("fresh", &["--create-slot", "--end-lsn", &end.to_string()]);
        assert_eq!(printed, "", "pg{major}");
        let plugin: String = sql
            .query_one("SELECT plugin::text FROM pg_replication_slots WHERE slot_name = 'fresh'", &[])
            .expect("the slot exists")
            .get(0);
        assert_eq!(plugin, "test_decoding");
    }
}
