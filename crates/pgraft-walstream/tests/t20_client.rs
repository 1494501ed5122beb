//! The replication client against real servers (every version in PGRAFT_TEST_PG_CONFIGS):
//! SCRAM login, IDENTIFY_SYSTEM, plain queries, slots, physical streaming compared byte for
//! byte with pg_wal, standby status and hot standby feedback seen by the server, the
//! CopyDone handshake, and logical streaming through test_decoding.

mod common;

use std::time::Duration;

use common::{lsn, pg_configs, runtime, Sql, DEADLINE, POLL};
use pgraft_testkit::{wait_until, ReplicationServer, ReplicationServerOptions};
use pgraft_walstream::{
    Config, Error, HotStandbyFeedback, Lsn, PgTimestamp, ReplicationClient, ReplicationMode, SegmentSize,
    SlotKind, StandbyStatusUpdate, StartOutcome, StreamEvent, WalMessage,
};

fn config(server: &ReplicationServer, mode: ReplicationMode) -> Config {
    let mut cfg = Config::from_conninfo(&server.replicator_conninfo()).expect("valid conninfo");
    cfg.replication = mode;
    cfg.dbname = Some("postgres".into());
    cfg
}

#[test]
fn login_commands_and_slots() {
    for pg in pg_configs() {
        let server = ReplicationServer::start_new("client", &pg, &ReplicationServerOptions::default())
            .expect("server");
        let major = server.install.major;
        let mut sql = Sql(server.sql().expect("sql"));
        runtime().block_on(async {
            // Wrong and missing passwords: the server's refusal carries SQLSTATE 28P01.
            let mut bad = config(&server, ReplicationMode::Physical);
            bad.password = Some("wrong".into());
            let err = ReplicationClient::connect(&bad).await.expect_err("a wrong password is refused");
            assert_eq!(err.sqlstate(), Some("28P01"), "pg{major}: {err}");
            bad.password = None;
            let err = ReplicationClient::connect(&bad).await.expect_err("no password");
            assert!(matches!(err, Error::Auth(_)), "pg{major}: {err}");

            let mut c = ReplicationClient::connect(&config(&server, ReplicationMode::Physical))
                .await
                .expect("SCRAM login");
            assert!(!c.is_tls());
            assert_eq!(c.server_major_version(), Some(major));
            let id = c.identify_system().await.expect("IDENTIFY_SYSTEM");
            let sysid: i64 = sql
                .query_one("SELECT system_identifier FROM pg_control_system()", &[])
                .expect("system id")
                .get(0);
            assert_eq!(id.system_id, sysid as u64, "pg{major}");
            assert_eq!(id.timeline, 1);
            assert_eq!(id.dbname, None, "a physical connection has no database");
            assert!(id.xlogpos <= lsn(&mut sql, "SELECT pg_current_wal_lsn()::text"));
            assert_eq!(c.wal_segment_size().await.expect("SHOW"), 1 << 20);
            let r = c.simple_query("SHOW wal_level").await.expect("a plain query");
            assert_eq!(r[0].required(0, "wal_level").expect("value"), "logical");
            assert!(c.timeline_history(1).await.is_err(), "timeline 1 has no history file");

            // Slots: physical reserving WAL, temporary, logical; duplicates and missing
            // slots by SQLSTATE.
            let s = c
                .create_replication_slot("phys_a", &SlotKind::Physical { reserve_wal: true }, false)
                .await
                .expect("physical slot");
            assert_eq!(s.slot_name, "phys_a");
            let restart = lsn(
                &mut sql,
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'phys_a'",
            );
            assert!(!restart.is_invalid(), "RESERVE_WAL set restart_lsn");
            let info =
                c.read_replication_slot("phys_a").await.expect("READ_REPLICATION_SLOT").expect("exists");
            assert_eq!((info.slot_type.as_str(), info.restart_lsn), ("physical", Some(restart)));
            assert_eq!(c.read_replication_slot("nope").await.expect("READ_REPLICATION_SLOT"), None);
            let dup = c
                .create_replication_slot("phys_a", &SlotKind::Physical { reserve_wal: false }, false)
                .await
                .expect_err("duplicate");
            assert_eq!(dup.sqlstate(), Some("42710"), "{dup}");
            c.create_replication_slot("temp_a", &SlotKind::Physical { reserve_wal: false }, true)
                .await
                .expect("temporary slot");
            let temp: bool = sql
                .query_one("SELECT temporary FROM pg_replication_slots WHERE slot_name = 'temp_a'", &[])
                .expect("temporary slot listed")
                .get(0);
            assert!(temp);
            c.drop_replication_slot("phys_a", false).await.expect("drop");
            let missing = c.drop_replication_slot("phys_a", false).await.expect_err("already dropped");
            assert_eq!(missing.sqlstate(), Some("42704"), "{missing}");
            assert!(c
                .create_replication_slot("Bad Name", &SlotKind::Physical { reserve_wal: false }, false)
                .await
                .is_err());
            c.disconnect().await.expect("disconnect");
            wait_until("the temporary slot to go with its connection", DEADLINE, POLL, || {
                let n: i64 = sql
                    .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'temp_a'", &[])?
                    .get(0);
                Ok((n == 0).then_some(()))
            })
            .expect("temporary slot dropped");

            // A logical connection: a database, plain SQL, a logical slot (through
            // test_decoding, which the PostgreSQL 16 of `make test-matrix`, a wheel without
            // contrib, lacks: checked on the other versions).
            if !server.install.has_module("test_decoding") {
                println!(
                    "pg{}: no test_decoding: logical slots are checked on the other versions",
                    server.install.major
                );
                return;
            }
            let mut l = ReplicationClient::connect(&config(&server, ReplicationMode::Logical))
                .await
                .expect("logical");
            assert_eq!(
                l.identify_system().await.expect("IDENTIFY_SYSTEM").dbname.as_deref(),
                Some("postgres")
            );
            let r = l.simple_query("SELECT 1 + 1 AS two").await.expect("SQL on a logical connection");
            assert_eq!(r[0].required(0, "two").expect("value"), "2");
            let s = l
                .create_replication_slot(
                    "logi_a",
                    &SlotKind::Logical { plugin: "test_decoding".into() },
                    false,
                )
                .await
                .expect("logical slot");
            assert!(s.consistent_point.is_some());
            assert_eq!(s.output_plugin.as_deref(), Some("test_decoding"));
            assert_eq!(s.snapshot_name, None, "no snapshot exported");
            l.drop_replication_slot("logi_a", true).await.expect("drop logical");
            l.disconnect().await.expect("disconnect");
        });
    }
}

/// Physical streaming: whole segments equal to the server's files, keepalive on request,
/// status and hot standby feedback visible in pg_stat_replication, CopyDone both ways.
#[test]
fn physical_streaming() {
    for pg in pg_configs() {
        let server =
            ReplicationServer::start_new("phys", &pg, &ReplicationServerOptions::default()).expect("server");
        let major = server.install.major;
        let mut sql = Sql(server.sql().expect("sql"));
        sql.batch_execute("CREATE TABLE t (id int, v text)").expect("table");
        let seg = SegmentSize::new(1 << 20).expect("1 MiB");
        runtime().block_on(async {
            let mut c = ReplicationClient::connect(&config(&server, ReplicationMode::Physical)).await.expect("connect");
            let id = c.identify_system().await.expect("IDENTIFY_SYSTEM");
            let start = seg.align_down(id.xlogpos);
            assert!(c.recv(None).await.is_err(), "recv before START_REPLICATION is refused");
            assert_eq!(c.start_physical(None, start, Some(1)).await.expect("START_REPLICATION"), StartOutcome::Streaming);
            assert!(c.identify_system().await.is_err(), "no command while streaming");

            // Fill the start segment and switch to the next one.
            sql.batch_execute("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 3000) g; SELECT pg_switch_wal();")
                .expect("write WAL");
            let want_end = start.checked_add(seg.bytes()).expect("in range");
            let mut segment = Vec::new();
            let mut next = start;
            while next < want_end {
                match c.recv(Some(DEADLINE)).await.expect("recv") {
                    Some(StreamEvent::Message(WalMessage::XLogData(x))) => {
                        assert_eq!(x.wal_start, next, "contiguous");
                        assert!(x.wal_end >= x.wal_start);
                        assert!(x.server_time > PgTimestamp::EPOCH);
                        segment.extend_from_slice(&x.data);
                        next = x.wal_start.checked_add(x.data.len() as u64).expect("in range");
                    }
                    Some(StreamEvent::Message(WalMessage::PrimaryKeepalive(_))) => {}
                    other => panic!("pg{major}: unexpected {other:?}"),
                }
            }
            segment.truncate(seg.bytes() as usize);
            let on_server = std::fs::read(server.wal_file(&seg.file_name(1, start))).expect("the server's segment");
            assert!(segment == on_server, "pg{major}: the streamed segment differs from pg_wal's");

            // A status update asking for a reply gets a keepalive; the server shows what we
            // reported.
            let written = want_end;
            let flushed = start.checked_add(4096).expect("in range");
            c.send_standby_status(StandbyStatusUpdate {
                written,
                flushed,
                applied: Lsn::INVALID,
                client_time: PgTimestamp::now(),
                reply_requested: true,
            })
            .await
            .expect("status");
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                assert!(tokio::time::Instant::now() < deadline, "pg{major}: no keepalive after a reply request");
                if let Some(StreamEvent::Message(WalMessage::PrimaryKeepalive(k))) =
                    c.recv(Some(Duration::from_secs(5))).await.expect("recv")
                {
                    assert!(k.wal_end >= want_end);
                    break;
                }
            }
            let xid: i64 = sql.query_one("SELECT txid_current()", &[]).expect("xid").get(0);
            c.send_hot_standby_feedback(HotStandbyFeedback {
                client_time: PgTimestamp::now(),
                xmin: xid as u32,
                xmin_epoch: (xid >> 32) as u32,
                catalog_xmin: 0,
                catalog_xmin_epoch: 0,
            })
            .await
            .expect("feedback");
            let pid = c.backend_pid();
            let mut last = String::new();
            let seen = wait_until("pg_stat_replication to show our report", DEADLINE, POLL, || {
                let row = sql.query_one(
                    "SELECT write_lsn::text, flush_lsn::text, backend_xmin::text FROM pg_stat_replication WHERE pid = $1",
                    &[&pid],
                )?;
                let (w, f, x): (Option<String>, Option<String>, Option<String>) = (row.get(0), row.get(1), row.get(2));
                last = format!("{w:?} {f:?} {x:?}");
                Ok((w == Some(written.to_string())
                    && f == Some(flushed.to_string())
                    && x == Some(((xid as u64) & 0xFFFF_FFFF).to_string()))
                .then_some(()))
            });
            seen.unwrap_or_else(|e| panic!("pg{major}: {e}; last seen {last}"));

            // We stop: CopyDone both ways, then the connection takes commands again.
            let end = c.stop_streaming().await.expect("CopyDone handshake");
            assert_eq!(end.next_timeline, None, "the current timeline has no successor");
            assert_eq!(c.identify_system().await.expect("commands after streaming").timeline, 1);
            // Starting past the server's timeline is refused with its error.
            assert!(c.start_physical(None, start, Some(7)).await.is_err());
            c.disconnect().await.expect("disconnect");
        });
    }
}

/// Logical streaming: exactly the inserted, updated and deleted rows; status updates move
/// the slot's confirmed_flush_lsn.
#[test]
fn logical_streaming() {
    for pg in pg_configs() {
        let server = ReplicationServer::start_new("logical", &pg, &ReplicationServerOptions::default())
            .expect("server");
        let major = server.install.major;
        if !server.install.has_module("test_decoding") {
            println!("pg{major}: no test_decoding: logical streaming is checked on the other versions");
            continue;
        }
        let mut sql = Sql(server.sql().expect("sql"));
        sql.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)").expect("table");
        runtime().block_on(async {
            let mut c = ReplicationClient::connect(&config(&server, ReplicationMode::Logical))
                .await
                .expect("connect");
            let slot = c
                .create_replication_slot("dec", &SlotKind::Logical { plugin: "test_decoding".into() }, false)
                .await
                .expect("slot");
            let before = lsn(
                &mut sql,
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'dec'",
            );
            // Three transactions (one batch_execute string would be one transaction).
            for change in [
                "INSERT INTO items VALUES (1, 'one'), (2, 'two')",
                "UPDATE items SET name = 'uno' WHERE id = 1",
                "DELETE FROM items WHERE id = 2",
            ] {
                sql.batch_execute(change).expect("a change");
            }
            let opts = vec![
                ("include-xids".to_string(), Some("0".to_string())),
                ("skip-empty-xacts".to_string(), Some("1".to_string())),
            ];
            c.start_logical("dec", Lsn::INVALID, &opts).await.expect("START_REPLICATION LOGICAL");
            let mut lines = Vec::new();
            let mut last_lsn = Lsn::INVALID;
            while lines.iter().filter(|l: &&String| l.as_str() == "COMMIT").count() < 3 {
                match c.recv(Some(DEADLINE)).await.expect("recv") {
                    Some(StreamEvent::Message(WalMessage::XLogData(x))) => {
                        // test_decoding's BEGIN carries 0/0; changes and COMMIT their
                        // record's position, after the slot's consistent point.
                        if &x.data[..] != b"BEGIN" {
                            assert!(x.wal_start >= slot.consistent_point.expect("consistent point"), "{x:?}");
                        }
                        lines.push(String::from_utf8(x.data.to_vec()).expect("test_decoding prints text"));
                        last_lsn = last_lsn.max(x.wal_start);
                    }
                    Some(StreamEvent::Message(WalMessage::PrimaryKeepalive(_))) => {}
                    other => panic!("pg{major}: unexpected {other:?}; so far {lines:?}"),
                }
            }
            assert_eq!(
                lines,
                [
                    "BEGIN",
                    "table public.items: INSERT: id[integer]:1 name[text]:'one'",
                    "table public.items: INSERT: id[integer]:2 name[text]:'two'",
                    "COMMIT",
                    "BEGIN",
                    "table public.items: UPDATE: id[integer]:1 name[text]:'uno'",
                    "COMMIT",
                    "BEGIN",
                    "table public.items: DELETE: id[integer]:2",
                    "COMMIT",
                ],
                "pg{major}"
            );
            c.send_standby_status(StandbyStatusUpdate {
                written: last_lsn,
                flushed: last_lsn,
                applied: last_lsn,
                client_time: PgTimestamp::now(),
                reply_requested: false,
            })
            .await
            .expect("status");
            let confirmed =
                wait_until("confirmed_flush_lsn to reach what we flushed", DEADLINE, POLL, || {
                    let l = lsn(
                        &mut sql,
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'dec'",
                    );
                    Ok((l >= last_lsn).then_some(l))
                })
                .unwrap_or_else(|e| panic!("pg{major}: {e}"));
            assert!(confirmed > before);
            c.stop_streaming().await.expect("stop");

            // The walsender cannot restart logical streaming on one connection.
            let again = c.start_logical("dec", Lsn::INVALID, &opts).await.expect_err("refused");
            assert!(matches!(again, Error::State(_)), "{again}");
            c.disconnect().await.expect("disconnect");

            // Streaming again from the slot: nothing confirmed comes back.
            sql.batch_execute("INSERT INTO items VALUES (3, 'three')").expect("one more");
            let mut c = ReplicationClient::connect(&config(&server, ReplicationMode::Logical))
                .await
                .expect("connect");
            c.start_logical("dec", Lsn::INVALID, &opts).await.expect("restart");
            let mut again = Vec::new();
            while again.last().map(String::as_str) != Some("COMMIT") {
                match c.recv(Some(DEADLINE)).await.expect("recv") {
                    Some(StreamEvent::Message(WalMessage::XLogData(x))) => {
                        again.push(String::from_utf8(x.data.to_vec()).expect("text"))
                    }
                    Some(StreamEvent::Message(WalMessage::PrimaryKeepalive(_))) => {}
                    other => panic!("pg{major}: unexpected {other:?}; so far {again:?}"),
                }
            }
            assert_eq!(
                again,
                ["BEGIN", "table public.items: INSERT: id[integer]:3 name[text]:'three'", "COMMIT"]
            );
            c.stop_streaming().await.expect("stop");
            c.disconnect().await.expect("disconnect");
        });
    }
}
