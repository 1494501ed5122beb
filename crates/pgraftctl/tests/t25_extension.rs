//! The extension on real three-member clusters, beyond the basics of t20: large values,
//! many keys, a member that catches up from a snapshot after the log was compacted, every
//! member killed at once, a worker that is down, and members that refuse a foreign
//! identity or a snapshot they cannot read.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A running local cluster and what the tests need of it.
struct Cluster {
    dir: PathBuf,
    nodes: Vec<Value>,
    _down: Down,
}

impl Cluster {
    fn up(name: &str, pg_config: &Path) -> Cluster {
        Cluster::up_with(name, pg_config, &[])
    }

    fn up_with(name: &str, pg_config: &Path, extra: &[&str]) -> Cluster {
        let dir = cluster_dir(name);
        let down = Down(dir.clone());
        let (d, pgc) = (dir.to_string_lossy().into_owned(), pg_config.to_string_lossy().into_owned());
        let mut args = vec!["local", "up", "--nodes", "3", "--dir", &d, "--pg-config", &pgc];
        args.extend_from_slice(extra);
        let nodes = json_lines(&pgraftctl(&args));
        Cluster { dir, nodes, _down: down }
    }

    fn d(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    fn conninfo(&self, id: u64) -> String {
        self.nodes[(id - 1) as usize]["conninfo"].as_str().expect("conninfo").to_string()
    }

    fn field(&self, id: u64, name: &str) -> String {
        let v = &self.nodes[(id - 1) as usize][name];
        v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
    }

    fn client(&self, id: u64) -> postgres::Client {
        connect(&self.conninfo(id)).unwrap_or_else(|e| panic!("connect to node {id}: {e}"))
    }

    fn ctl(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = vec!["local"];
        all.extend_from_slice(args);
        let d = self.d();
        all.extend_from_slice(&["--dir", &d]);
        pgraftctl(&all)
    }

    /// One value of a query on node `id`, or None while it cannot answer.
    fn try_one<T: for<'a> postgres::types::FromSql<'a>>(&self, id: u64, q: &str) -> Option<T> {
        connect(&self.conninfo(id)).ok()?.query_one(q, &[]).ok().map(|r| r.get(0))
    }

    fn one<T: for<'a> postgres::types::FromSql<'a>>(&self, id: u64, q: &str) -> T {
        self.client(id).query_one(q, &[]).unwrap_or_else(|e| panic!("node {id}: {q}: {e}")).get(0)
    }

    fn leader(&self) -> u64 {
        wait("a leader every running member agrees on", Duration::from_secs(30), || {
            let seen: Vec<i32> =
                (1..=3).filter_map(|id| self.try_one::<i32>(id, "SELECT pgraft_get_leader()")).collect();
            (!seen.is_empty() && seen[0] > 0 && seen.iter().all(|l| *l == seen[0])).then(|| seen[0] as u64)
        })
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.field(id, "log_file")).unwrap_or_default()
    }
}

/// `cp -a`, keeping the server account's ownership.
fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("run cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn big_values_many_keys_and_a_member_that_catches_up_from_a_snapshot() {
    for pg_config in pg_configs() {
        let c = Cluster::up("bulk", &pg_config);
        assert_eq!(c.leader(), 1);
        // Member 3 leaves and comes back later as a new, empty member.
        assert!(c.one::<bool>(1, "SELECT pgraft_remove_node(3)"));
        c.ctl(&["stop", "3"]);
        std::fs::remove_dir_all(c.field(3, "raft_data_dir")).expect("wipe member 3's Raft data");

        // Values of 1 MiB, written on a follower, identical on both members.
        let mut f = c.client(2);
        for i in 0..8 {
            let put = format!("SELECT pgraft_kv_put('big/{i}', repeat(md5('{i}'), 32768))");
            assert!(f.query_one(&put, &[]).expect("a 1 MiB put").get::<_, bool>(0));
        }
        for id in [1, 2] {
            let same: i64 = c.one(
                id,
                "SELECT count(*) FROM generate_series(0, 7) i \
                  WHERE pgraft_kv_get('big/' || i) = repeat(md5(i::text), 32768)",
            );
            assert_eq!(same, 8, "1 MiB values on node {id}");
        }

        // 100,000 keys from 32 sessions on both members (Raft batches concurrent writes
        // into one disk write, so sessions, not the disk, set the pace).
        let started = Instant::now();
        let writers: Vec<_> = (0..32u64)
            .map(|w| {
                let conninfo = c.conninfo(1 + w % 2);
                std::thread::spawn(move || {
                    let mut s = connect(&conninfo).expect("writer connects");
                    let (lo, hi) = (w as i32 * 3_125, w as i32 * 3_125 + 3_124);
                    s.query_one(
                        "SELECT count(*) FROM generate_series($1::int, $2::int) g \
                          WHERE pgraft_kv_put('many/' || g, 'value ' || g)",
                        &[&lo, &hi],
                    )
                    .expect("3,125 puts")
                    .get::<_, i64>(0)
                })
            })
            .collect();
        let written: i64 = writers.into_iter().map(|t| t.join().expect("writer")).sum();
        assert_eq!(written, 100_000);
        eprintln!("100,000 puts in {:?}", started.elapsed());
        for id in [1, 2] {
            let n: i64 = c.one(id, "SELECT count(*) FROM pgraft_kv_range('many/')");
            assert_eq!(n, 100_000, "keys on node {id}");
        }
        assert_eq!(c.one::<String>(2, "SELECT pgraft_kv_get('many/99999')"), "value 99999");

        // Compact: the log now starts after everything written so far.
        assert!(c.one::<bool>(1, "SELECT pgraft_kv_compact()"));
        let first: i64 = c.one(1, "SELECT first_index FROM pgraft_log_get_stats()");
        assert!(first > 100_000, "the leader's log starts at {first}");

        // Member 3 comes back empty and is added: it can only catch up from a snapshot.
        c.ctl(&["start", "3"]);
        let port: i32 = c.field(3, "raft_port").parse().expect("raft port");
        let mut l = c.client(1);
        assert!(l
            .query_one("SELECT pgraft_add_node(3, '127.0.0.1', $1)", &[&port])
            .expect("add")
            .get::<_, bool>(0));
        let hash_on = |id: u64| c.try_one::<i64>(id, "SELECT hash FROM pgraft_kv_hash()");
        wait("member 3 to hold every key", Duration::from_secs(120), || {
            let n = c.try_one::<i64>(3, "SELECT count(*) FROM pgraft_kv_range('many/', true)")?;
            (n == 100_000).then_some(())
        });
        wait("member 3 to hold the same state as the leader", Duration::from_secs(30), || {
            let h = hash_on(3)?;
            (Some(h) == hash_on(1)).then_some(())
        });
        let first3: i64 = c.one(3, "SELECT first_index FROM pgraft_log_get_stats()");
        assert!(first3 > 100_000, "member 3's log starts at {first3}: it was not sent a snapshot");
        let big3: i64 = c.one(
            3,
            "SELECT count(*) FROM generate_series(0, 7) i WHERE pgraft_kv_get('big/' || i) = repeat(md5(i::text), 32768)",
        );
        assert_eq!(big3, 8);
        assert_eq!(c.one::<i64>(3, "SELECT count(*) FROM pgraft_get_nodes()"), 3);
        c.ctl(&["down"]);
    }
}

/// `replication_lag_bytes` is the bytes of log a member is missing, as the leader knows it;
/// `log_size` the bytes of the log's entries.
#[test]
fn a_stopped_members_lag_and_the_log_are_measured_in_bytes() {
    let pg_config = pg_configs().remove(0);
    let c = Cluster::up("lagbytes", &pg_config);
    assert_eq!(c.leader(), 1);
    let lag = |of: u64| -> Option<i64> {
        c.one(1, &format!("SELECT replication_lag_bytes FROM pgraft_get_nodes() WHERE node_id = {of}"))
    };
    let log_before: i64 = c.one(1, "SELECT log_size FROM pgraft_log_get_stats()");
    c.ctl(&["stop", "3"]);
    // Four values of 256 KiB.
    for i in 0..4 {
        assert!(c.one::<bool>(1, &format!("SELECT pgraft_kv_put('lag/{i}', repeat(md5('{i}'), 8192))")));
    }
    let missing = lag(3).expect("the leader knows what member 3 is missing");
    assert!((1 << 20..2 << 20).contains(&missing), "member 3 misses {missing} bytes");
    wait("member 2 to miss nothing", Duration::from_secs(10), || (lag(2) == Some(0)).then_some(()));
    let log_after: i64 = c.one(1, "SELECT log_size FROM pgraft_log_get_stats()");
    assert!(log_after - log_before >= 1 << 20, "log_size {log_before} then {log_after}");
    assert!(c.one::<bool>(1, "SELECT disk_usage_mb >= 1 FROM pgraft_log_get_stats()"));
    // A follower does not know the others' lag.
    assert_eq!(c.one::<i64>(2, "SELECT count(replication_lag_bytes) FROM pgraft_get_nodes()"), 0);
    c.ctl(&["start", "3"]);
    wait("member 3 to catch up", Duration::from_secs(30), || (lag(3) == Some(0)).then_some(()));
    c.ctl(&["down"]);
}

/// A watch on a follower waits for the first change, shows in `pgraft.watch_status` while
/// it waits, and returns a write made on the leader as soon as it is applied there.
#[test]
fn a_watch_on_a_follower_returns_a_write_made_on_the_leader() {
    let pg_config = pg_configs().remove(0);
    let c = Cluster::up("watch", &pg_config);
    let leader = c.leader();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let revision: i64 = c.one(follower, "SELECT revision FROM pgraft_kv_get_stats()");
    let conninfo = c.conninfo(follower);
    let watcher = std::thread::spawn(move || {
        let mut s = connect(&conninfo).expect("connect the watcher");
        let started = Instant::now();
        let rows = s
            .query(
                "SELECT kind, key, value, mod_revision FROM pgraft_kv_watch('live/', $1, '30 seconds')",
                &[&revision],
            )
            .expect("watch");
        let seen: Vec<(String, String, Option<String>)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        (seen, started.elapsed())
    });
    wait("the watch to wait on the follower", Duration::from_secs(10), || {
        let n = c.try_one::<i64>(
            follower,
            "SELECT count(*) FROM pgraft.watch_status WHERE is_active AND prefix = 'live/'",
        )?;
        (n == 1).then_some(())
    });
    let pending: i32 = c.one(follower, "SELECT watch_pending FROM pgraft.watch_status");
    assert_eq!(pending, 0, "nothing was written after the watched revision yet");
    let put_at = Instant::now();
    assert!(c.one::<bool>(leader, "SELECT pgraft_kv_put('elsewhere', 'x') AND pgraft_kv_put('live/a', 'v')"));
    let (seen, took) = watcher.join().expect("the watcher");
    assert_eq!(seen, vec![("put".to_string(), "live/a".to_string(), Some("v".to_string()))]);
    assert!(
        took < Duration::from_secs(25) && put_at.elapsed() < Duration::from_secs(5),
        "returned after {took:?}"
    );
    assert_eq!(c.one::<i64>(follower, "SELECT count(*) FROM pgraft.watch_status"), 0, "the watch ended");
    c.ctl(&["down"]);
}

#[test]
fn every_member_killed_at_once_keeps_every_acknowledged_key() {
    for pg_config in pg_configs() {
        let c = Cluster::up("killall", &pg_config);
        c.leader();
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (1..=3u64)
            .map(|id| {
                let (conninfo, acked, stop) = (c.conninfo(id), acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    let Ok(mut s) = connect(&conninfo) else { return };
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let key = format!("ack/{id}/{i}");
                        match s.query_one("SELECT pgraft_kv_put($1, $1)", &[&key]) {
                            Ok(_) => acked.lock().expect("lock").push(key),
                            Err(_) => return, // the server went away: unknown outcome
                        }
                    }
                })
            })
            .collect();
        wait("a few hundred acknowledged writes", Duration::from_secs(60), || {
            (acked.lock().expect("lock").len() >= 300).then_some(())
        });
        for id in 1..=3 {
            c.ctl(&["kill", &id.to_string()]);
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer");
        }
        c.ctl(&["start"]);
        c.leader();
        let acked = acked.lock().expect("lock").clone();
        assert!(acked.len() >= 300);
        for id in 1..=3 {
            let mut s =
                wait("the member to answer", Duration::from_secs(30), || connect(&c.conninfo(id)).ok());
            let present: i64 = s
                .query_one("SELECT count(*) FROM unnest($1::text[]) k WHERE pgraft_kv_get(k) = k", &[&acked])
                .expect("read back")
                .get(0);
            assert_eq!(present, acked.len() as i64, "acknowledged keys on node {id}");
        }
        c.ctl(&["down"]);
    }
}

#[test]
fn a_stopped_worker_answers_with_a_clear_error() {
    let pg_config = pg_configs().remove(0);
    let c = Cluster::up("worker", &pg_config);
    c.leader();
    // SIGHUP: the worker rereads its settings.
    let mut s2 = c.client(2);
    s2.batch_execute("ALTER SYSTEM SET pgraft.heartbeat_interval = '150ms'").expect("alter system");
    s2.batch_execute("SELECT pg_reload_conf()").expect("reload");
    wait("the worker to reload", Duration::from_secs(10), || {
        c.log(2).contains("pgraft: configuration reloaded").then_some(())
    });
    assert_eq!(
        c.one::<String>(
            2,
            "SELECT value || ' ' || source FROM pgraft_get_config() WHERE name = 'heartbeat_interval'"
        ),
        "150ms configuration file"
    );
    // Postmaster death: the worker exits with it rather than linger.
    let pid3: i32 = c.one(3, "SELECT worker_pid FROM pgraft_worker_status");
    c.ctl(&["kill", "3"]);
    wait("member 3's worker to exit with its postmaster", Duration::from_secs(10), || {
        // SAFETY: signal 0 only checks that the process exists.
        (unsafe { libc::kill(pid3, 0) } != 0).then_some(())
    });
    c.ctl(&["start", "3"]);
    c.leader();
    let pid: i32 = c.one(2, "SELECT worker_pid FROM pgraft_worker_status");
    assert!(pid > 0);
    // SIGTERM: the worker stops cleanly and stays stopped.
    // SAFETY: sending a signal to a pid we just read; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait("the worker to stop", Duration::from_secs(10), || {
        (c.try_one::<String>(2, "SELECT pgraft_get_worker_state()")? == "stopped").then_some(())
    });
    let mut s = c.client(2);
    let started = Instant::now();
    let err = s.query_one("SELECT pgraft_kv_get('k')", &[]).expect_err("no worker, no answer");
    assert!(started.elapsed() < Duration::from_secs(2), "the refusal took {:?}", started.elapsed());
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55000");
    assert_eq!(db.message(), "the pgraft worker is not running (state: stopped)");
    assert!(db.hint().unwrap_or_default().contains("pgraft_get_worker_state()"));
    // The rest of the cluster keeps serving.
    assert!(c.one::<bool>(1, "SELECT pgraft_kv_put('k', 'v')"));
    let health: String =
        c.one(2, "SELECT string_agg(metric || '=' || value, ',') FROM pgraft_health_check()");
    assert_eq!(health, "worker_state=stopped");
    c.ctl(&["down"]);
}

#[test]
fn members_refuse_a_foreign_identity_or_an_unreadable_snapshot_and_say_why() {
    let pg_config = pg_configs().remove(0);
    let c = Cluster::up("identity", &pg_config);
    c.leader();
    assert!(c.one::<bool>(1, "SELECT pgraft_kv_put('id', 'one')"));
    let raft3 = PathBuf::from(c.field(3, "raft_data_dir"));
    let own3 = raft3.with_extension("own");
    let conf3 = PathBuf::from(c.field(3, "data_dir")).join("postgresql.conf");
    let original_conf = std::fs::read_to_string(&conf3).expect("member 3's postgresql.conf");
    let refusal = |expect: &str| {
        let err = wait("member 3 to refuse", Duration::from_secs(30), || {
            (c.try_one::<String>(3, "SELECT pgraft_get_worker_state()")? == "error").then_some(())?;
            c.try_one::<String>(3, "SELECT value FROM pgraft_health_check() WHERE metric = 'worker_error'")
        });
        assert!(err.contains(expect), "member 3 said: {err}");
        let e = connect(&c.conninfo(3))
            .expect("connect")
            .query_one("SELECT pgraft_kv_get('id')", &[])
            .expect_err("a member in error does not answer");
        let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
        assert!(msg.starts_with("the pgraft worker failed: ") && msg.contains(expect), "{msg}");
        wait("the server log to say why", Duration::from_secs(10), || {
            c.log(3).contains(expect).then_some(())
        });
    };

    // Another member's data directory.
    c.ctl(&["stop", "3"]);
    std::fs::rename(&raft3, &own3).expect("set member 3's data aside");
    copy_dir(Path::new(&c.field(2, "raft_data_dir")), &raft3);
    c.ctl(&["start", "3"]);
    refusal("this data directory belongs to node 2, but pgraft.node_id is 3");
    assert!(c.one::<bool>(1, "SELECT pgraft_kv_put('id', 'two')"), "the others keep serving");

    // Its own data directory, but another cluster_id.
    c.ctl(&["stop", "3"]);
    std::fs::remove_dir_all(&raft3).expect("remove the copy");
    std::fs::rename(&own3, &raft3).expect("restore member 3's data");
    std::fs::write(&conf3, format!("{original_conf}\npgraft.cluster_id = 'another-cluster'\n"))
        .expect("conf");
    c.ctl(&["start", "3"]);
    refusal("but pgraft.cluster_id is \"another-cluster\"");

    // A fresh directory with another cluster_id: peers and member refuse each other at the
    // handshake, and both say why.
    c.ctl(&["stop", "3"]);
    std::fs::rename(&raft3, &own3).expect("set member 3's data aside");
    c.ctl(&["start", "3"]);
    wait("the stranger's refusals", Duration::from_secs(30), || {
        let refused = c.try_one::<String>(
            3,
            "SELECT value FROM pgraft_health_check() WHERE metric = 'refused_peer_connections'",
        )?;
        (refused != "0").then_some(())
    });
    wait("member 3's log to say why", Duration::from_secs(10), || {
        c.log(3)
            .lines()
            .any(|l| {
                l.contains("refused peer connection from")
                    && l.contains("the peer belongs to another cluster")
            })
            .then_some(())
    });
    assert_eq!(c.one::<String>(1, "SELECT pgraft_kv_get('id')"), "two", "the cluster is unharmed");

    // Put right, member 3 rejoins and catches up.
    c.ctl(&["stop", "3"]);
    std::fs::remove_dir_all(&raft3).expect("remove the stranger's data");
    std::fs::rename(&own3, &raft3).expect("restore member 3's data");
    std::fs::write(&conf3, &original_conf).expect("conf");
    c.ctl(&["start", "3"]);
    wait("member 3 to catch up", Duration::from_secs(30), || {
        (c.try_one::<String>(3, "SELECT pgraft_kv_get('id')")? == "two").then_some(())
    });

    // Its own data, but the snapshot image damaged: it refuses to start rather than run on
    // an empty state machine with the later entries applied on top of nothing.
    c.ctl(&["stop", "3"]);
    let images: Vec<PathBuf> = std::fs::read_dir(raft3.join("snap"))
        .expect("member 3's snapshot images")
        .map(|e| e.expect("an image").path())
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    let intact = std::fs::read(&images[0]).expect("read the image");
    let mut damaged = intact.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x5a;
    std::fs::write(&images[0], &damaged).expect("damage the image");
    c.ctl(&["start", "3"]);
    refusal("refusing to start on an empty state");
    assert!(c.one::<bool>(1, "SELECT pgraft_kv_put('id', 'three')"), "the others keep serving");
    c.ctl(&["stop", "3"]);
    std::fs::write(&images[0], &intact).expect("repair the image");
    c.ctl(&["start", "3"]);
    wait("member 3 to catch up after the repair", Duration::from_secs(30), || {
        (c.try_one::<String>(3, "SELECT pgraft_kv_get('id')")? == "three").then_some(())
    });
    c.ctl(&["down"]);
}

#[test]
fn members_talk_mutual_tls_set_by_the_ssl_settings() {
    use std::io::{Read, Write};
    let pg_config = pg_configs().remove(0);
    let c = Cluster::up_with("tls", &pg_config, &["--tls"]);
    let leader = c.leader();
    for id in 1..=3 {
        assert_eq!(c.one::<String>(id, "SHOW pgraft.ssl_enabled"), "on", "node {id}");
    }
    // Everything works as without TLS: a write on a follower is read on every member.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    assert!(c.one::<bool>(follower, "SELECT pgraft_kv_put('tls', 'works')"));
    for id in 1..=3 {
        assert_eq!(c.one::<String>(id, "SELECT pgraft_kv_get('tls')"), "works", "node {id}");
    }
    // Plain bytes on a member's Raft port are refused, logged, and change nothing.
    let refused = |id: u64| -> i64 {
        c.one::<String>(
            id,
            "SELECT value FROM pgraft_health_check() WHERE metric = 'refused_peer_connections'",
        )
        .parse()
        .expect("a count")
    };
    let before = refused(follower);
    let listen: std::net::SocketAddr =
        format!("{}:{}", c.field(follower, "listen_address"), c.field(follower, "raft_port"))
            .parse()
            .expect("addr");
    let mut s = dial_from("127.0.0.1", listen).expect("dial the Raft port");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest); // closed by the member
    wait("the refusal to be counted and logged", Duration::from_secs(10), || {
        (refused(follower) > before && c.log(follower).contains("TLS handshake failed")).then_some(())
    });
    assert!(c.one::<bool>(leader, "SELECT pgraft_kv_put('tls', 'still works')"));
    // Key material never reaches the logs.
    for id in 1..=3 {
        assert!(!c.log(id).contains("PRIVATE KEY"), "node {id}'s log holds key material");
    }
    assert!(
        c.one::<String>(1, "SELECT value FROM pgraft_get_config() WHERE name = 'ssl_key_file'")
            .ends_with("node1.key"),
        "the setting shows the path, not the key"
    );
    c.ctl(&["down"]);
}

#[test]
fn a_hot_standby_hosts_a_member_too() {
    let pg_config = pg_configs().remove(0);
    let c = Cluster::up("standby", &pg_config);
    let leader = c.leader();
    assert!(c.one::<bool>(leader, "SELECT pgraft_kv_put('from', 'the primary')"));
    // A physical standby of member 1's PostgreSQL, hosting a fourth Raft member of its own.
    let user = pgraft_testkit::ServerUser::for_invoker().expect("server account");
    let install = pgraft_testkit::PgInstall::from_pg_config(&pg_config).expect("install");
    let sdir = c.dir.join("standby");
    std::fs::create_dir_all(&sdir).expect("standby dir");
    user.chown(&sdir).expect("chown");
    let sdata = sdir.join("pgdata");
    let run = |program: &str, args: &[&str]| {
        let out = user.command(install.bin(program)).args(args).output().expect("run");
        assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &c.field(1, "pg_port"),
            "-U",
            "postgres",
            "-D",
            &sdata.to_string_lossy(),
            "-R",
            "--no-sync",
        ],
    );
    let free = || pgraft_testkit::free_port().expect("a free port");
    let (pg_port, raft_port) = (free(), free());
    let conf = format!(
        "\nport = {pg_port}\nunix_socket_directories = '{dir}'\nhot_standby = on\n\
         pgraft.node_id = 4\npgraft.port = {raft_port}\npgraft.listen_address = '127.0.0.1'\n\
         pgraft.data_dir = '{dir}/raft'\n",
        dir = sdir.display()
    );
    let mut text = std::fs::read_to_string(sdata.join("postgresql.conf")).expect("conf");
    text.push_str(&conf);
    std::fs::write(sdata.join("postgresql.conf"), text).expect("write conf");
    let log = sdir.join("postgres.log");
    run("pg_ctl", &["-D", &sdata.to_string_lossy(), "-l", &log.to_string_lossy(), "-w", "start"]);
    let standby = format!("host=127.0.0.1 port={pg_port} user=postgres dbname=postgres");
    let one =
        |q: &str| -> Option<String> { connect(&standby).ok()?.query_one(q, &[]).ok().map(|r| r.get(0)) };
    assert_eq!(one("SELECT pg_is_in_recovery()::text").as_deref(), Some("true"), "a hot standby");
    wait("the standby's worker", Duration::from_secs(30), || {
        (one("SELECT pgraft_get_worker_state()")? == "running").then_some(())
    });
    let mut l = c.client(leader);
    let port = i32::from(raft_port);
    assert!(l
        .query_one("SELECT pgraft_add_node(4, '127.0.0.1', $1)", &[&port])
        .expect("add")
        .get::<_, bool>(0));
    // The standby's member reads linearizably and writes, though PostgreSQL there is
    // read-only: Raft state is the worker's own, not PostgreSQL's.
    wait("the standby's member to catch up", Duration::from_secs(30), || {
        (one("SELECT pgraft_kv_get('from')")? == "the primary").then_some(())
    });
    assert_eq!(one("SELECT pgraft_kv_put('from', 'the standby')::text").as_deref(), Some("true"));
    assert_eq!(c.one::<String>(2, "SELECT pgraft_kv_get('from')"), "the standby");
    assert_eq!(c.one::<i64>(leader, "SELECT count(*) FROM pgraft_get_nodes()"), 4);
    run("pg_ctl", &["-D", &sdata.to_string_lossy(), "-m", "fast", "-w", "stop"]);
    assert!(c.one::<bool>(leader, "SELECT pgraft_remove_node(4)"));
    c.ctl(&["down"]);
}
