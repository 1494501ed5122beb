//! `pgraftctl server ...` and `pgraftctl backup` against real servers: the operator
//! commands answer with the server's real values, and a backup taken under pgbench write
//! load restores into a new data directory that holds exactly the rows committed before
//! backup stop; `--verify` catches a flipped byte.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pgraft_testkit::{wait_until, PgInstall, PlainOptions, PlainServer};
use pgraft_walstream::{Lsn, SegmentSize};
use serde_json::Value;

fn one_json(text: &str) -> Value {
    let lines = json_lines(text);
    assert_eq!(lines.len(), 1, "one JSON object expected in {text:?}");
    lines.into_iter().next().expect("one line")
}

fn start_server(pg_config: &Path, name: &str) -> (PathBuf, PlainServer) {
    let dir = cluster_dir(name);
    let srv = PlainServer::init(
        pg_config,
        &dir.join("src"),
        &PlainOptions { checksums: true, ..Default::default() },
    )
    .expect("initdb and start");
    (dir, srv)
}

#[test]
fn server_subcommands_answer_with_real_values() {
    for pg_config in pg_configs() {
        let major = PgInstall::from_pg_config(&pg_config).expect("pg_config").major;
        let (dir, srv) = start_server(&pg_config, &format!("srvcli{major}"));
        let ci = srv.conninfo();
        let mut su = srv.connect().expect("connect");

        let info = one_json(&pgraftctl(&["server", "info", "-o", "json", "--conninfo", &ci]));
        let num: String = su.query_one("SHOW server_version_num", &[]).expect("SHOW").get(0);
        assert_eq!(info["version_num"].as_u64().map(|v| v.to_string()), Some(num));
        assert_eq!(info["block_size"], 8192);
        assert_eq!(info["wal_segment_size"], 16 << 20);
        assert_eq!(info["segment_size"], 1u64 << 30);
        assert_eq!(info["checksums"], true);
        assert_eq!(info["primary"], true);
        // One way to connect, as psql: the PG* variables, the flags, a URI; each reaches
        // the server (a wrong user in the variables loses to the flag, the flag to the URI).
        let port = srv.port.to_string();
        let via = |env: &[(&str, &str)], args: &[&str]| -> serde_json::Value {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgraftctl"));
            for v in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSSLMODE"] {
                cmd.env_remove(v);
            }
            let out =
                cmd.envs(env.iter().copied()).args(["server", "check", "-o", "json"]).args(args).output();
            let out = out.expect("run pgraftctl");
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            one_json(&String::from_utf8_lossy(&out.stdout))
        };
        let env = [
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", port.as_str()),
            ("PGUSER", "postgres"),
            ("PGDATABASE", "postgres"),
        ];
        assert_eq!(via(&env, &[])["connection"], "ok", "from the PG* variables");
        let wrong = [("PGHOST", "127.0.0.1"), ("PGPORT", "1"), ("PGUSER", "nobody")];
        assert_eq!(
            via(&wrong, &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres"])["connection"],
            "ok"
        );
        let uri = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
        assert_eq!(via(&wrong, &["-U", "nobody", "-d", &uri])["connection"], "ok", "the URI wins");
        let table = pgraftctl(&["server", "info", "--conninfo", &ci]);
        assert!(
            table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["block_size", "8192"]),
            "{table}"
        );

        let check = one_json(&pgraftctl(&["server", "check", "-o", "json", "--conninfo", &ci]));
        assert_eq!(check["connection"], "ok");
        assert_eq!(check["valid"], true);
        let apis = check["apis"].as_array().expect("apis");
        assert_eq!(apis.len(), 9);
        assert!(apis.iter().all(|a| a["allowed"] == true), "{check}");

        let cp = one_json(&pgraftctl(&["server", "checkpoint", "-o", "json", "--conninfo", &ci]));
        let lsn: String =
            su.query_one("SELECT checkpoint_lsn::text FROM pg_control_checkpoint()", &[]).expect("q").get(0);
        let printed: Lsn = cp["checkpoint_lsn"].as_str().expect("an LSN").parse().expect("an LSN");
        assert_eq!(printed, lsn.parse::<Lsn>().expect("an LSN"));
        assert_eq!(cp["timeline"], 1);

        let st =
            one_json(&pgraftctl(&["server", "stat", "global/pg_control", "-o", "json", "--conninfo", &ci]));
        assert_eq!(st["size"], 8192);
        assert_eq!(st["is_dir"], false);
        let modification = st["modification"].as_str().expect("a time");
        assert_eq!(modification.len(), "2025-01-01 00:00:00".len(), "{modification}");
        assert_eq!(st["creation"], Value::Null);

        // read: to stdout, and to a file in odd-sized chunks.
        assert_eq!(pgraftctl(&["server", "read", "PG_VERSION", "--conninfo", &ci]), format!("{major}\n"));
        let content: Vec<u8> =
            (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        fs::write(srv.data_dir.join("pgraft_cli.bin"), &content).expect("write a test file");
        let out = dir.join("read.bin");
        let o = out.to_string_lossy();
        let summary = one_json(&pgraftctl(&[
            "server",
            "read",
            "pgraft_cli.bin",
            "--out",
            &o,
            "--chunk-size",
            "1000003",
            "-o",
            "json",
            "--conninfo",
            &ci,
        ]));
        assert_eq!(summary["bytes"], 3_000_000);
        assert!(fs::read(&out).expect("read the copy") == content, "the copy differs");
        let part = one_json(&pgraftctl(&[
            "server",
            "read",
            "pgraft_cli.bin",
            "--offset",
            "10",
            "--length",
            "100",
            "--out",
            &o,
            "-o",
            "json",
            "--conninfo",
            &ci,
        ]));
        assert_eq!(part["bytes"], 100);
        assert_eq!(fs::read(&out).expect("read"), &content[10..110]);

        // Errors an operator sees.
        let err = pgraftctl_fails(&["server", "read", "/etc/passwd", "--conninfo", &ci]);
        assert!(err.contains("relative to the data directory"), "{err}");
        let err = pgraftctl_fails(&[
            "server",
            "read",
            "pgraft_cli.bin",
            "--offset",
            "2999999",
            "--length",
            "2",
            "--conninfo",
            &ci,
        ]);
        assert!(err.contains("the file ends at byte 3000000"), "{err}");
        su.batch_execute("CREATE ROLE operator LOGIN").expect("create role");
        let op = srv.conninfo_as("operator");
        let err = pgraftctl_fails(&["server", "checkpoint", "--conninfo", &op]);
        assert!(err.contains("GRANT pg_checkpoint TO operator;"), "{err}");
        let check = pgraftctl(&["server", "check", "--conninfo", &op]);
        assert!(check.contains("checkpoint        DENIED  fix: GRANT pg_checkpoint TO operator;"), "{check}");
        assert!(check.lines().any(|l| l.starts_with("info") && l.ends_with("allowed")), "{check}");
        let err =
            pgraftctl_fails(&["backup", "--dir", &dir.join("denied").to_string_lossy(), "--conninfo", &op]);
        assert!(
            err.contains("GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO operator;"),
            "{err}"
        );
        // Streaming the backup's WAL needs the REPLICATION attribute.
        assert!(err.contains("stream_wal: ALTER ROLE operator REPLICATION;"), "{err}");
        drop(su);
        drop(srv);
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Kills a started pgbench (or backup) when the test ends, even by panic.
struct Bench(Child);

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every transaction updates one account and records its own transaction id and delta in
/// the history, so the expected balances can be computed from the history rows alone.
const SCRIPT: &str = "\\set aid random(1, 100000)\n\\set delta random(-5000, 5000)\nBEGIN;\n\
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, xid) \
VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP, pg_current_xact_id()::text::bigint);\nEND;\n";

fn history_count(c: &mut postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM pgbench_history", &[]).expect("count").get(0)
}

/// The transaction ids of the commit records from `from` to `to`, read with pg_waldump.
fn commits_between(srv: &PlainServer, from: Lsn, to: Lsn) -> HashSet<i64> {
    let out = Command::new(srv.install.bin("pg_waldump"))
        .arg("-p")
        .arg(srv.data_dir.join("pg_wal"))
        .args(["-s", &from.to_string(), "-e", &to.to_string(), "-r", "Transaction"])
        .output()
        .expect("run pg_waldump");
    assert!(out.status.success(), "pg_waldump failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut xids = HashSet::new();
    for line in text.lines().filter(|l| l.contains("desc: COMMIT")) {
        let tx = line.split("tx:").nth(1).and_then(|r| r.split(',').next()).expect("a tx field").trim();
        let lsn: Lsn = line
            .split("lsn:")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .expect("an lsn")
            .trim()
            .parse()
            .expect("LSN");
        assert!(lsn >= from && lsn < to, "{line}");
        xids.insert(tx.parse::<i64>().expect("a transaction id"));
    }
    xids
}

/// Copies the backup's data directory to `rdir/pgdata` and starts a server on it, from
/// the installation and as the user of `srv`.
fn restore(srv: &PlainServer, bdir: &Path, rdir: &Path) -> PlainServer {
    copy_tree(&bdir.join("data"), &rdir.join("pgdata"));
    let restored = PlainServer::adopt(srv.install.clone(), srv.user.clone(), rdir, rdir.join("pgdata"))
        .expect("adopt the restored directory");
    restored.start().expect("the restored server starts");
    restored
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

#[test]
fn backup_under_pgbench_restores_exactly_the_committed_rows() {
    for pg_config in pg_configs() {
        let major = PgInstall::from_pg_config(&pg_config).expect("pg_config").major;
        let (dir, srv) = start_server(&pg_config, &format!("backup{major}"));
        let mut su = srv.connect().expect("connect");
        let port = srv.port.to_string();
        let pgbench = |args: &[&str]| {
            let mut c = Command::new(srv.install.bin("pgbench"));
            c.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"]).args(args).arg("postgres");
            c
        };
        let init = pgbench(&["-i", "-q", "-s", "1"]).output().expect("pgbench -i");
        assert!(init.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
        su.batch_execute("ALTER TABLE pgbench_history ADD COLUMN xid bigint").expect("add xid");
        let script = dir.join("load.sql");
        fs::write(&script, SCRIPT).expect("write the script");
        let bench = Bench(
            pgbench(&["-n", "-c", "4", "-j", "2", "-T", "600", "-f", &script.to_string_lossy()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pgbench"),
        );
        wait_until("pgbench to write", Duration::from_secs(30), Duration::from_millis(20), || {
            Ok((history_count(&mut su) >= 300).then_some(()))
        })
        .expect("load running");

        // The backup, under load.
        let before_backup = history_count(&mut su);
        let bdir = dir.join("backup");
        let b = bdir.to_string_lossy().into_owned();
        let t0 = Instant::now();
        let done =
            one_json(&pgraftctl(&["backup", "--dir", &b, "--conninfo", &srv.conninfo(), "--label", "t30"]));
        let backup_secs = t0.elapsed().as_secs_f64();
        let after_backup = history_count(&mut su);
        // Keep the load going past the backup, so some commits must be missing from it.
        wait_until(
            "more commits after the backup",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || Ok((history_count(&mut su) >= after_backup + 50).then_some(())),
        )
        .expect("load continues");
        drop(bench);
        wait_until("pgbench's sessions to end", Duration::from_secs(30), Duration::from_millis(20), || {
            let n: i64 = su
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'", &[])?
                .get(0);
            Ok((n == 0).then_some(()))
        })
        .expect("pgbench gone");

        let manifest: Value =
            serde_json::from_slice(&fs::read(bdir.join("backup_manifest.json")).expect("manifest"))
                .expect("JSON");
        let start: Lsn = manifest["start_lsn"].as_str().expect("start").parse().expect("LSN");
        let end: Lsn = manifest["end_lsn"].as_str().expect("end").parse().expect("LSN");
        assert!(start <= end, "start {start} after end {end}");
        assert_eq!(done["end_lsn"], manifest["end_lsn"]);
        let label = fs::read_to_string(bdir.join("data/backup_label")).expect("backup_label");
        assert!(label.contains("LABEL: t30"), "{label}");
        let at = label
            .lines()
            .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("no START WAL LOCATION in {label}"));
        assert_eq!(at.parse::<Lsn>().expect("an LSN"), start);
        // The backup's WAL ends with the segment backup stop switched away from; the
        // restored server replays everything before the next segment starts.
        let seg =
            SegmentSize::new(manifest["wal_segment_size"].as_u64().expect("size")).expect("segment size");
        let last_seg = seg.segment_of(Lsn(end.0 - 1));
        let wal: Vec<&str> = manifest["wal_files"]
            .as_array()
            .expect("wal")
            .iter()
            .map(|v| v.as_str().expect("name"))
            .collect();
        assert_eq!(wal.first().copied(), Some(seg.file_name(1, start).as_str()));
        assert_eq!(wal.last().copied(), Some(seg.segment_file_name(1, last_seg).as_str()));
        let cut = seg.segment_start(last_seg + 1).expect("in range");

        // What the backup must hold: every history row except those whose commit record
        // comes after the cut (read from the source's WAL).
        let flush: String = su.query_one("SELECT pg_current_wal_flush_lsn()::text", &[]).expect("lsn").get(0);
        let late: Vec<i64> = commits_between(&srv, cut, flush.parse().expect("LSN")).into_iter().collect();
        assert!(late.len() >= 50, "only {} commits after the cut", late.len());
        let expected_history: (i64, String) = {
            let r = su
                .query_one(
                    "SELECT count(*), md5(string_agg(format('%s:%s:%s', xid, aid, delta), ',' ORDER BY xid)) \
                     FROM pgbench_history WHERE NOT (xid = ANY($1))",
                    &[&late],
                )
                .expect("expected history");
            (r.get(0), r.get(1))
        };
        let balances_sql = "SELECT md5(string_agg(format('%s:%s', aid, abalance), ',' ORDER BY aid)) \
                            FROM pgbench_accounts WHERE abalance <> 0";
        let expected_balances: String = su
            .query_one(
                "SELECT md5(string_agg(format('%s:%s', aid, s), ',' ORDER BY aid)) FROM \
                 (SELECT aid, sum(delta) AS s FROM pgbench_history WHERE NOT (xid = ANY($1)) \
                  GROUP BY aid HAVING sum(delta) <> 0) q",
                &[&late],
            )
            .expect("expected balances")
            .get(0);
        // The model holds on the source itself: balances are the sums of all deltas.
        let all_deltas: String = su
            .query_one(
                "SELECT md5(string_agg(format('%s:%s', aid, s), ',' ORDER BY aid)) FROM \
                 (SELECT aid, sum(delta) AS s FROM pgbench_history GROUP BY aid HAVING sum(delta) <> 0) q",
                &[],
            )
            .expect("all deltas")
            .get(0);
        let source_balances: String = su.query_one(balances_sql, &[]).expect("balances").get(0);
        assert_eq!(all_deltas, source_balances, "the load's model does not hold on the source");
        assert!(
            expected_history.0 > before_backup,
            "no commit of the backup's duration is expected ({} <= {before_backup})",
            expected_history.0
        );

        // Restore into a new data directory and start: recovery must finish.
        let rdir = dir.join("restored");
        let restored = restore(&srv, &bdir, &rdir);
        let mut rc = restored.connect().expect("connect to the restored server");
        let in_recovery: bool = rc.query_one("SELECT pg_is_in_recovery()", &[]).expect("q").get(0);
        assert!(!in_recovery, "recovery did not finish");
        let got_history: (i64, String) = {
            let r = rc
                .query_one(
                    "SELECT count(*), md5(string_agg(format('%s:%s:%s', xid, aid, delta), ',' ORDER BY xid)) \
                     FROM pgbench_history",
                    &[],
                )
                .expect("restored history");
            (r.get(0), r.get(1))
        };
        assert_eq!(
            got_history, expected_history,
            "history rows differ from those committed before backup stop"
        );
        let got_balances: String = rc.query_one(balances_sql, &[]).expect("restored balances").get(0);
        assert_eq!(
            got_balances, expected_balances,
            "balances differ from those committed before backup stop"
        );
        let accounts: i64 = rc.query_one("SELECT count(*) FROM pgbench_accounts", &[]).expect("q").get(0);
        assert_eq!(accounts, 100_000);
        drop(rc);
        restored.stop().expect("stop the restored server");
        // Every page of the restored cluster carries a valid checksum.
        let pc = restored
            .user
            .command(srv.install.bin("pg_checksums"))
            .args(["--check", "-D"])
            .arg(&restored.data_dir)
            .output()
            .expect("run pg_checksums");
        assert!(
            pc.status.success(),
            "pg_checksums: {}{}",
            String::from_utf8_lossy(&pc.stdout),
            String::from_utf8_lossy(&pc.stderr)
        );
        assert!(String::from_utf8_lossy(&pc.stdout).contains("Bad checksums:  0"));

        // --verify: the finished backup matches; one flipped byte does not.
        let v = one_json(&pgraftctl(&["backup", "--verify", "--dir", &b]));
        assert_eq!(v["verified"], true);
        assert_eq!(v["files"], manifest["files"].as_array().expect("files").len());
        let victim = manifest["files"]
            .as_array()
            .expect("files")
            .iter()
            .find(|f| {
                f["path"].as_str().is_some_and(|p| p.starts_with("data/base/"))
                    && f["size"].as_u64() > Some(16384)
            })
            .and_then(|f| f["path"].as_str())
            .expect("a relation file")
            .to_string();
        let mut bytes = fs::read(bdir.join(&victim)).expect("read");
        bytes[12_345] ^= 0x01;
        fs::write(bdir.join(&victim), &bytes).expect("flip a byte");
        let err = pgraftctl_fails(&["backup", "--verify", "--dir", &b]);
        assert!(err.contains(&format!("{victim}: SHA-256")), "{err}");
        eprintln!(
            "PostgreSQL {major}: backup of {} files in {backup_secs:.1}s; {} rows restored, {} committed after the cut",
            v["files"], expected_history.0, late.len()
        );
        drop(restored);
        drop(srv);
        let _ = fs::remove_dir_all(&dir);
    }
}

const POLL: Duration = Duration::from_millis(20);

/// The grants docs/backup.md lists for a backup role on PostgreSQL 15 and later, with
/// REPLICATION for the WAL stream.
const BACKUP_ROLE_15: &str = "CREATE ROLE backup LOGIN REPLICATION;
GRANT pg_read_server_files TO backup;
GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint, boolean) TO backup;
GRANT EXECUTE ON FUNCTION pg_ls_dir(text, boolean, boolean) TO backup;
GRANT EXECUTE ON FUNCTION pg_stat_file(text, boolean) TO backup;
GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO backup;
GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO backup;";

/// The WAL files in the server's pg_wal.
fn server_wal_files(c: &mut postgres::Client) -> HashSet<String> {
    c.query("SELECT name FROM pg_ls_waldir()", &[]).expect("pg_ls_waldir").iter().map(|r| r.get(0)).collect()
}

/// The backup's replication slot keeps its WAL: with 1 MiB segments, `wal_keep_size = 0`
/// and a 4 MiB `max_wal_size`, the backup is held right after backup start (the test-only
/// `PGRAFT_BACKUP_TEST_PAUSE`) while rounds of inserts, WAL switches and CHECKPOINTs write
/// far more WAL than the server keeps. The segment holding the backup's start stays in
/// pg_wal until the backup has streamed it (and goes at the next checkpoint after the
/// backup, with the slot); the backup, made by a role with exactly the documented grants,
/// restores with every row committed before backup stop and none after.
#[test]
fn the_backup_slot_keeps_wal_through_checkpoints() {
    for pg_config in pg_configs() {
        let major = PgInstall::from_pg_config(&pg_config).expect("pg_config").major;
        let dir = cluster_dir(&format!("bslot{major}"));
        let srv = PlainServer::init(
            &pg_config,
            &dir.join("src"),
            &PlainOptions {
                wal_segsize_mb: Some(1),
                extra_conf: vec![
                    "wal_keep_size = 0".into(),
                    "min_wal_size = 2MB".into(),
                    "max_wal_size = 4MB".into(),
                ],
                ..Default::default()
            },
        )
        .expect("initdb and start");
        let mut su = srv.connect().expect("connect");
        su.batch_execute(BACKUP_ROLE_15).expect("the backup role");
        su.batch_execute("CREATE TABLE kept (id int PRIMARY KEY, v text)").expect("create the table");
        su.batch_execute("INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
            .expect("first rows");

        let bdir = dir.join("backup");
        let pause = dir.join("pause");
        let out = fs::File::create(dir.join("backup.out")).expect("stdout file");
        let err = fs::File::create(dir.join("backup.err")).expect("stderr file");
        let mut child = Bench(
            Command::new(env!("CARGO_BIN_EXE_pgraftctl"))
                .args(["backup", "--label", "slot", "--dir"])
                .arg(&bdir)
                .args(["--conninfo", &srv.conninfo_as("backup")])
                .env("PGRAFT_BACKUP_TEST_PAUSE", &pause)
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .expect("start pgraftctl backup"),
        );
        let start: Lsn =
            wait_until("the backup to pause after backup start", Duration::from_secs(60), POLL, || {
                if let Some(status) = child.0.try_wait()? {
                    panic!("the backup exited ({status}): {}", fs::read_to_string(dir.join("backup.err"))?);
                }
                Ok(fs::read_to_string(&pause).ok().and_then(|t| t.parse().ok()))
            })
            .expect("paused");

        // The slot exists, is temporary, and reserves WAL from no later than the start.
        let row = su
            .query_one(
                "SELECT slot_name::text, temporary, restart_lsn::text, pg_walfile_name($1::text::pg_lsn) \
                 FROM pg_replication_slots",
                &[&start.to_string()],
            )
            .expect("one slot");
        let (slot, temporary, restart, start_file): (String, bool, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert!(slot.starts_with("pgraft_backup_"), "{slot}");
        assert!(temporary, "the slot is temporary");
        assert!(restart.parse::<Lsn>().expect("an LSN") <= start, "restart_lsn {restart} after {start}");
        assert!(server_wal_files(&mut su).contains(&start_file), "{start_file} already gone");

        // Far more WAL than max_wal_size, with checkpoints that would recycle it.
        let rounds = 8;
        for r in 0..rounds {
            su.batch_execute(&format!(
                "INSERT INTO kept SELECT g, repeat(md5(g::text), 20) FROM generate_series({}, {}) g; \
                 SELECT pg_switch_wal(); CHECKPOINT;",
                2000 + r * 2000,
                2000 + r * 2000 + 1999
            ))
            .expect("a round of WAL and a checkpoint");
        }
        let flush: Lsn = su
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .expect("flush")
            .get::<_, String>(0)
            .parse()
            .expect("LSN");
        let seg = SegmentSize::new(1 << 20).expect("1 MiB");
        assert!(
            seg.segment_of(flush) - seg.segment_of(start) >= 3 * 4,
            "the rounds wrote too little WAL ({start} to {flush})"
        );
        let files = server_wal_files(&mut su);
        assert!(files.contains(&start_file), "{start_file} was recycled though the slot holds it: {files:?}");
        let committed: (i64, String) = {
            let r = su
                .query_one("SELECT count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM kept", &[])
                .expect("rows");
            (r.get(0), r.get(1))
        };

        fs::remove_file(&pause).expect("resume the backup");
        let status =
            wait_until("the backup to finish", Duration::from_secs(120), POLL, || Ok(child.0.try_wait()?))
                .expect("finished");
        assert!(
            status.success(),
            "backup failed: {}",
            fs::read_to_string(dir.join("backup.err")).unwrap_or_default()
        );
        let done = one_json(&fs::read_to_string(dir.join("backup.out")).expect("output"));
        // Rows after backup stop must not be in the restored cluster.
        su.batch_execute("INSERT INTO kept VALUES (-1, 'after the backup')").expect("a later row");

        // The slot went with the backup; the next checkpoints remove the start segment.
        let slots: i64 = su.query_one("SELECT count(*) FROM pg_replication_slots", &[]).expect("q").get(0);
        assert_eq!(slots, 0, "the backup's slot is still there");
        su.batch_execute("SELECT pg_switch_wal(); CHECKPOINT; SELECT pg_switch_wal(); CHECKPOINT;")
            .expect("checkpoints after the backup");
        assert!(!server_wal_files(&mut su).contains(&start_file), "{start_file} is kept without the slot");

        // The backup's WAL: every segment from the start's to the end's, nothing else.
        let end: Lsn = done["end_lsn"].as_str().expect("end").parse().expect("LSN");
        let manifest: Value =
            serde_json::from_slice(&fs::read(bdir.join("backup_manifest.json")).expect("manifest"))
                .expect("JSON");
        let wal: Vec<String> = manifest["wal_files"]
            .as_array()
            .expect("wal")
            .iter()
            .map(|v| v.as_str().expect("name").to_string())
            .collect();
        let expected: Vec<String> = (seg.segment_of(start)..=seg.segment_of(Lsn(end.0 - 1)))
            .map(|n| seg.segment_file_name(1, n))
            .collect();
        assert_eq!(wal, expected);
        let mut on_disk: Vec<String> = fs::read_dir(bdir.join("data/pg_wal"))
            .expect("pg_wal")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut want = expected.clone();
        want.push("archive_status".into());
        want.sort();
        assert_eq!(on_disk, want, "the backup's pg_wal holds exactly its segments");
        for name in &expected {
            assert_eq!(fs::metadata(bdir.join("data/pg_wal").join(name)).expect("segment").len(), 1 << 20);
        }
        let v = one_json(&pgraftctl(&["backup", "--verify", "--dir", &bdir.to_string_lossy()]));
        assert_eq!(v["verified"], true);

        let rdir = dir.join("restored");
        let restored = restore(&srv, &bdir, &rdir);
        let mut rc = restored.connect().expect("connect to the restored server");
        let got: (i64, String) = {
            let r = rc
                .query_one("SELECT count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM kept", &[])
                .expect("restored rows");
            (r.get(0), r.get(1))
        };
        assert_eq!(got, committed, "the restored rows differ from those committed before backup stop");
        assert_eq!(got.0, 1000 + 2000 * rounds as i64);
        eprintln!(
            "PostgreSQL {major}: {} WAL segments from {start} to {end} kept by slot {slot} through {rounds} checkpoints",
            wal.len()
        );
        assert!(!srv.log().contains("permission denied"), "{}", srv.log());

        // A backup whose WAL stream breaks fails with the stream's error, stops the backup
        // and leaves no slot behind: here its walsender is terminated during the pause.
        let bdir2 = dir.join("broken");
        let mut child = Bench(
            Command::new(env!("CARGO_BIN_EXE_pgraftctl"))
                .args(["backup", "--dir"])
                .arg(&bdir2)
                .args(["--conninfo", &srv.conninfo_as("backup")])
                .env("PGRAFT_BACKUP_TEST_PAUSE", &pause)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start pgraftctl backup"),
        );
        wait_until("the second backup to pause", Duration::from_secs(60), POLL, || {
            if let Some(status) = child.0.try_wait()? {
                panic!("the backup exited early ({status})");
            }
            Ok(fs::read_to_string(&pause).ok().and_then(|t| t.parse::<Lsn>().ok()))
        })
        .expect("paused");
        let killed: bool = su
            .query_one("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots", &[])
            .expect("terminate the walsender")
            .get(0);
        assert!(killed);
        fs::remove_file(&pause).expect("resume the backup");
        let status = wait_until("the broken backup to exit", Duration::from_secs(120), POLL, || {
            Ok(child.0.try_wait()?)
        })
        .expect("exited");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().expect("stderr"), &mut stderr)
            .expect("read stderr");
        assert!(!status.success(), "a backup without its WAL succeeded");
        assert!(stderr.contains("stream the backup's WAL"), "{stderr}");
        assert!(!bdir2.join("backup_manifest.json").exists(), "an unfinished backup has no manifest");
        let slots: i64 = su.query_one("SELECT count(*) FROM pg_replication_slots", &[]).expect("q").get(0);
        assert_eq!(slots, 0, "the broken backup left its slot");
        eprintln!("PostgreSQL {major}: a backup whose WAL stream broke: {}", stderr.trim());
        // And the next backup works.
        let again = one_json(&pgraftctl(&[
            "backup",
            "--dir",
            &dir.join("again").to_string_lossy(),
            "--conninfo",
            &srv.conninfo_as("backup"),
        ]));
        assert!(again["wal_files"].as_u64() >= Some(1), "{again}");
        drop(rc);
        drop(restored);
        drop(srv);
        let _ = fs::remove_dir_all(&dir);
    }
}

/// A backup of a server on timeline 2 (restarted as a standby of its own WAL and
/// promoted) streams the timeline's history file into `pg_wal` with its segments; the
/// restored server comes up on timeline 2 with the rows.
#[test]
fn backup_on_a_new_timeline_carries_its_history_file() {
    for pg_config in pg_configs() {
        let major = PgInstall::from_pg_config(&pg_config).expect("pg_config").major;
        let dir = cluster_dir(&format!("btli{major}"));
        let srv = PlainServer::init(
            &pg_config,
            &dir.join("src"),
            &PlainOptions { wal_segsize_mb: Some(1), ..Default::default() },
        )
        .expect("initdb and start");
        let mut su = srv.connect().expect("connect");
        su.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 500)")
            .expect("rows");
        drop(su);
        srv.stop().expect("stop");
        fs::write(srv.data_dir.join("standby.signal"), b"").expect("standby.signal");
        srv.user.chown(&srv.data_dir.join("standby.signal")).expect("chown");
        srv.start().expect("start as a standby");
        let pg_ctl = |args: &[&str]| {
            let out = srv
                .user
                .command(srv.install.bin("pg_ctl"))
                .arg("-D")
                .arg(&srv.data_dir)
                .args(args)
                .output()
                .expect("run pg_ctl");
            assert!(out.status.success(), "pg_ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        pg_ctl(&["-w", "-t", "60", "promote"]);
        let mut su = srv.connect().expect("connect after promotion");
        wait_until("the promotion to end recovery", Duration::from_secs(60), POLL, || {
            let rec: bool = su.query_one("SELECT pg_is_in_recovery()", &[])?.get(0);
            Ok((!rec).then_some(()))
        })
        .expect("promoted");
        su.batch_execute("INSERT INTO t SELECT generate_series(501, 700)").expect("rows on timeline 2");

        let bdir = dir.join("backup");
        let done = one_json(&pgraftctl(&[
            "backup",
            "--dir",
            &bdir.to_string_lossy(),
            "--conninfo",
            &srv.conninfo(),
        ]));
        assert_eq!(done["timeline"], 2, "{done}");
        let manifest: Value =
            serde_json::from_slice(&fs::read(bdir.join("backup_manifest.json")).expect("manifest"))
                .expect("JSON");
        let wal: Vec<&str> = manifest["wal_files"]
            .as_array()
            .expect("wal")
            .iter()
            .map(|v| v.as_str().expect("name"))
            .collect();
        assert_eq!(wal.first().copied(), Some("00000002.history"), "{wal:?}");
        assert!(wal[1..].iter().all(|n| n.starts_with("00000002")), "{wal:?}");
        assert_eq!(
            fs::read(bdir.join("data/pg_wal/00000002.history")).expect("the backup's history file"),
            fs::read(srv.data_dir.join("pg_wal/00000002.history")).expect("the server's history file")
        );
        let v = one_json(&pgraftctl(&["backup", "--verify", "--dir", &bdir.to_string_lossy()]));
        assert_eq!(v["verified"], true);

        let rdir = dir.join("restored");
        let restored = restore(&srv, &bdir, &rdir);
        let mut rc = restored.connect().expect("connect to the restored server");
        let n: i64 = rc.query_one("SELECT count(*) FROM t", &[]).expect("rows").get(0);
        assert_eq!(n, 700);
        let tli: i32 =
            rc.query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[]).expect("tli").get(0);
        assert!(tli >= 2, "the restored server is on timeline {tli}");
        drop(rc);
        drop(restored);
        drop(srv);
        let _ = fs::remove_dir_all(&dir);
    }
}
