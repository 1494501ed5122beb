//! Every server API function against real servers (each PostgreSQL of
//! `PGRAFT_TEST_PG_CONFIGS`), with exact expected values.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use pgraft_server_api::{format_utc, Error, Lsn, SegmentSize, Server};
use pgraft_testkit::{free_port, PlainOptions};

/// A server initialised with checksums and 4 MiB WAL segments (not the default 16, so a
/// right answer cannot be a guess).
fn checksummed(pg_config: &std::path::Path, name: &str) -> Fixture {
    server(pg_config, name, &PlainOptions { checksums: true, wal_segsize_mb: Some(4), ..Default::default() })
}

#[test]
fn info_valid_online_verify_checkpoint_stat_and_backup() {
    for pg_config in pg_configs() {
        let srv = checksummed(&pg_config, "funcs");
        let major = srv.install.major;
        let mut su = srv.connect().expect("superuser connection");
        let mut s = Server::from_conninfo("main", &srv.conninfo()).expect("conninfo parses");

        // server_valid before and after server_info.
        assert!(!s.valid(), "no facts yet");
        assert!(s.facts().is_none());
        let info = s.info().expect("server_info").clone();
        assert!(s.valid());
        let num: String = su.query_one("SHOW server_version_num", &[]).expect("SHOW").get(0);
        assert_eq!(info.version.0.to_string(), num);
        assert_eq!(info.version.major(), major);
        assert!(info.checksums, "initdb --data-checksums");
        assert_eq!(controldata(&srv, "Data page checksum version"), "1");
        assert!(info.primary);
        assert_eq!(info.wal_level, "replica");
        assert_eq!(info.archive_mode, "off");
        assert_eq!(info.wal_segment_size, 4 << 20);
        assert_eq!(controldata(&srv, "Bytes per WAL segment"), (4u64 << 20).to_string());
        assert_eq!(info.block_size, 8192);
        assert_eq!(controldata(&srv, "Database block size"), info.block_size.to_string());
        assert_eq!(info.wal_block_size, 8192);
        assert_eq!(controldata(&srv, "WAL block size"), info.wal_block_size.to_string());
        assert_eq!(info.segment_size, 1 << 30);
        let blocks_per_seg: u64 =
            controldata(&srv, "Blocks per segment of large relation").parse().expect("number");
        assert_eq!(info.segment_size, blocks_per_seg * info.block_size);
        assert_eq!(info.summarize_wal, if major >= 17 { Some(false) } else { None });
        assert_eq!(s.facts(), Some(&info));

        // server_is_online / server_set_online: a flag, false until set.
        assert!(!s.is_online());
        s.set_online(true);
        assert!(s.is_online());
        s.set_online(false);
        assert!(!s.is_online());

        // server_verify_connection: connects and disconnects; a closed port fails.
        s.verify_connection().expect("verify_connection");
        let closed = free_port().expect("a free port");
        let nobody = Server::from_conninfo(
            "nobody",
            &format!("host=127.0.0.1 port={closed} user=postgres connect_timeout=2"),
        )
        .expect("conninfo parses");
        let err = nobody.verify_connection().expect_err("nothing listens there");
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&format!("port={closed}")), "{err}");

        // server_checkpoint: the LSN and timeline pg_control_checkpoint() reports.
        su.batch_execute("CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 1000)")
            .expect("write");
        let c1 = s.checkpoint().expect("checkpoint");
        let row = su
            .query_one("SELECT checkpoint_lsn::text, timeline_id, pg_current_wal_lsn()::text FROM pg_control_checkpoint()", &[])
            .expect("pg_control_checkpoint");
        assert_eq!(c1.lsn, row.get::<_, String>(0).parse::<Lsn>().expect("an LSN"));
        assert_eq!(c1.timeline, 1);
        assert_eq!(row.get::<_, i32>(1), 1);
        assert!(c1.lsn <= row.get::<_, String>(2).parse::<Lsn>().expect("an LSN"));
        su.batch_execute("INSERT INTO t SELECT generate_series(1, 1000)").expect("write");
        let c2 = s.checkpoint().expect("second checkpoint");
        assert!(c2.lsn > c1.lsn, "{} then {}", c1.lsn, c2.lsn);

        // server_file_stat: the size and times the file system reports.
        let st = s.file_stat("global/pg_control").expect("stat pg_control");
        let md = std::fs::metadata(srv.data_dir.join("global/pg_control")).expect("metadata");
        assert_eq!(st.size, 8192);
        assert_eq!(st.size, md.len());
        assert!(!st.is_dir);
        assert_eq!(st.modification, UNIX_EPOCH + Duration::from_secs(md.mtime() as u64));
        assert_eq!(st.change, Some(UNIX_EPOCH + Duration::from_secs(md.ctime() as u64)));
        assert_eq!(st.creation, None, "creation time is Windows only");
        assert_eq!(format_utc(st.modification).len(), "2025-01-01 00:00:00".len());
        let base = s.file_stat("base").expect("stat base");
        assert!(base.is_dir);
        assert!(matches!(s.file_stat("no/such/file"), Err(Error::FileNotFound { .. })));
        assert!(matches!(s.file_stat("/etc/passwd"), Err(Error::PathOutsideDataDirectory { .. })));

        // The directory listing a backup walks.
        let root = s.list_dir(".").expect("list the data directory");
        let find = |n: &str| root.iter().find(|e| e.name == n).unwrap_or_else(|| panic!("{n} not listed"));
        assert!(find("base").stat.is_dir && find("global").stat.is_dir && find("pg_wal").stat.is_dir);
        assert_eq!(find("PG_VERSION").stat.size, format!("{major}\n").len() as u64);
        assert_eq!(find("PG_VERSION").path, "PG_VERSION");
        let global = s.list_dir("global").expect("list global");
        assert!(global.iter().any(|e| e.path == "global/pg_control" && e.stat.size == 8192));

        // server_backup_start / server_backup_stop.
        assert!(matches!(s.backup_stop(false), Err(Error::NoBackupInProgress { .. })));
        let start = s.backup_start("t10 label", true).expect("backup_start");
        assert_eq!(s.backup_in_progress(), Some(start));
        assert!(matches!(s.backup_start("again", true), Err(Error::BackupAlreadyInProgress { .. })));
        su.batch_execute("INSERT INTO t SELECT generate_series(1, 1000)").expect("write during the backup");
        let stop = s.backup_stop(false).expect("backup_stop");
        assert!(start <= stop.lsn, "start {start} is after stop {}", stop.lsn);
        assert_eq!(s.backup_in_progress(), None);
        assert_eq!(stop.start_lsn(), Some(start));
        assert_eq!(stop.start_timeline(), Some(1));
        assert_eq!(stop.label_value("LABEL"), Some("t10 label"));
        assert_eq!(stop.label_value("BACKUP FROM"), Some("primary"));
        assert_eq!(stop.label_value("BACKUP METHOD"), Some("streamed"));
        let seg = SegmentSize::new(info.wal_segment_size).expect("segment size");
        let start_file = seg.file_name(1, start);
        // "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)"; the LSN is
        // compared as a position (18 prints it zero-padded).
        let (at, file) = stop
            .label_value("START WAL LOCATION")
            .and_then(|v| v.split_once(" (file "))
            .unwrap_or_else(|| panic!("no START WAL LOCATION in {}", stop.label_file));
        assert_eq!(at.parse::<Lsn>().expect("an LSN"), start);
        assert_eq!(file, format!("{start_file})"));
        let checkpoint_at: Lsn =
            stop.label_value("CHECKPOINT LOCATION").expect("CHECKPOINT LOCATION").parse().expect("an LSN");
        assert!(start <= checkpoint_at && checkpoint_at <= stop.lsn);
        assert_eq!(stop.tablespace_map, "", "no tablespaces");
        // The segment holding the end of the backup was switched and is on disk.
        let end_file = seg.file_name(1, Lsn(stop.lsn.0 - 1));
        let md = std::fs::metadata(srv.data_dir.join("pg_wal").join(&end_file)).expect("end segment exists");
        assert_eq!(md.len(), info.wal_segment_size);
        let now: String = su.query_one("SELECT pg_current_wal_lsn()::text", &[]).expect("lsn").get(0);
        assert!(stop.lsn <= now.parse().expect("an LSN"));

        // A backup whose connection is lost is aborted by the server, and said so.
        s.backup_start("lost", true).expect("backup_start");
        let killed: bool = su
            .query_one(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgraft-server-api'",
                &[],
            )
            .expect("terminate")
            .get(0);
        assert!(killed);
        pgraft_testkit::wait_until(
            "the backend to end",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let n: i64 = su
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgraft-server-api'",
                        &[],
                    )?
                    .get(0);
                Ok((n == 0).then_some(()))
            },
        )
        .expect("backend gone");
        let err = s.backup_stop(false).expect_err("the connection was lost");
        assert!(matches!(err, Error::BackupConnectionLost { .. }), "{err}");
        assert_eq!(s.backup_in_progress(), None);
        // The handle reconnects for the next call.
        let again = s.backup_start("after the loss", false).expect("a new backup");
        assert!(s.backup_stop(false).expect("stop").lsn >= again);
    }
}

#[test]
fn read_binary_file_any_size_and_its_errors() {
    for pg_config in pg_configs() {
        let srv = checksummed(&pg_config, "read");
        let major = srv.install.major;
        let mut s = Server::from_conninfo("main", &srv.conninfo()).expect("conninfo parses");

        // A small file, exactly.
        assert_eq!(
            s.read_binary_file("PG_VERSION", 0, 3).expect("read PG_VERSION"),
            format!("{major}\n").as_bytes()
        );

        // A file larger than 64 MiB with content that shows any misplaced byte, at a size
        // that is no multiple of the chunk size.
        let size: usize = (64 << 20) + 12_345;
        let mut big = vec![0u8; size];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for chunk in big.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let path = srv.data_dir.join("pgraft_big.bin");
        std::fs::File::create(&path).and_then(|mut f| f.write_all(&big)).expect("write the big file");
        let got = s.read_binary_file("pgraft_big.bin", 0, size as u64).expect("read 64 MiB");
        assert_eq!(got.len(), size);
        assert!(got == big, "the 64 MiB read differs from the file");
        // Odd chunk size, odd offset, streamed.
        s.set_chunk_size(1_000_003);
        let (off, len) = (7_777_777usize, 50 << 20);
        let mut streamed = Vec::new();
        s.read_binary_file_to("pgraft_big.bin", off as u64, len as u64, &mut streamed)
            .expect("streamed read");
        assert!(streamed == big[off..off + len], "the streamed range differs");
        // The last byte alone, and a zero-length read.
        assert_eq!(
            s.read_binary_file("pgraft_big.bin", size as u64 - 1, 1).expect("last byte"),
            &big[size - 1..]
        );
        assert_eq!(s.read_binary_file("pgraft_big.bin", 5, 0).expect("zero length"), Vec::<u8>::new());

        // Past the end: the offset, or offset + length.
        let err = s.read_binary_file("pgraft_big.bin", size as u64, 1).expect_err("offset at the end");
        assert!(matches!(err, Error::OffsetPastEndOfFile { offset, .. } if offset == size as u64), "{err}");
        let err =
            s.read_binary_file("pgraft_big.bin", size as u64 + 4096, 10).expect_err("offset past the end");
        assert!(matches!(err, Error::OffsetPastEndOfFile { .. }), "{err}");
        let err = s.read_binary_file("pgraft_big.bin", size as u64 - 10, 11).expect_err("one byte too many");
        match &err {
            Error::PastEndOfFile { file_end, length, .. } => {
                assert_eq!((*file_end, *length), (size as u64, 11));
            }
            other => panic!("expected PastEndOfFile, got {other}"),
        }
        assert!(err.to_string().contains(&format!("the file ends at byte {size}")), "{err}");
        let err = s.read_binary_file("PG_VERSION", 0, 4096).expect_err("longer than the file");
        assert!(err.to_string().contains("ends at byte 3"), "{err}");
        let err = s.read_binary_file("PG_VERSION", u64::MAX, 2).expect_err("out of range");
        assert!(matches!(err, Error::RangeTooLarge { .. }), "{err}");

        // A missing file, a directory, paths outside the data directory (refused before
        // anything is sent, even for a superuser who could read them).
        let err = s.read_binary_file("base/no_such_file", 0, 1).expect_err("missing");
        assert!(matches!(err, Error::FileNotFound { .. }), "{err}");
        assert!(err.to_string().contains("\"base/no_such_file\" does not exist"), "{err}");
        let err = s.read_binary_file("base", 0, 1).expect_err("a directory");
        assert!(err.to_string().contains("Is a directory"), "{err}");
        for outside in ["/etc/passwd", "../../../../etc/passwd", "base/../../x", ""] {
            let err = s.read_binary_file(outside, 0, 1).expect_err("outside");
            assert!(matches!(err, Error::PathOutsideDataDirectory { .. }), "{outside}: {err}");
            assert!(err.to_string().contains("relative to the data directory"), "{err}");
        }
        // The refused reads never reached the server; the directory read did.
        let log = srv.log();
        assert!(!log.contains("/etc/passwd"), "a refused path reached the server:\n{log}");
        // The connection is still usable after the errors.
        assert_eq!(
            s.read_binary_file("PG_VERSION", 0, 2).expect("read again"),
            format!("{major}").as_bytes()
        );
    }
}
