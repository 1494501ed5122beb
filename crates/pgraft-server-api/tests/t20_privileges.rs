//! Privileges against real servers: a role with exactly the grants the reference lists
//! can call every function; a role missing one gets an error naming it and the GRANT
//! that fixes it, before anything privileged is sent (so the server logs no permission
//! error, and nothing is retried).

mod common;

use common::*;
use pgraft_server_api::{Api, Error, Server};
use pgraft_testkit::PlainOptions;

/// The grants of `reference/server-apis.txt` for PostgreSQL 15 and later, each with the
/// API function that needs it. `pg_ls_dir` is ours: walking a data directory; so is
/// REPLICATION: streaming a backup's WAL.
const GRANTS_15: &[(&str, &str)] = &[
    ("read_binary_file", "GRANT pg_read_server_files TO {r}"),
    (
        "read_binary_file",
        "GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint, boolean) TO {r}",
    ),
    ("checkpoint", "GRANT pg_checkpoint TO {r}"),
    ("file_stat", "GRANT EXECUTE ON FUNCTION pg_stat_file(text, boolean) TO {r}"),
    ("list_dir", "GRANT EXECUTE ON FUNCTION pg_ls_dir(text, boolean, boolean) TO {r}"),
    ("backup_start", "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO {r}"),
    ("backup_stop", "GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO {r}"),
    ("stream_wal", "ALTER ROLE {r} REPLICATION"),
];

/// A login role with every grant of the list except `skip`.
fn role_with(su: &mut postgres::Client, name: &str, skip: Option<usize>) {
    su.batch_execute(&format!("CREATE ROLE {name} LOGIN")).expect("create role");
    for (i, (_, grant)) in GRANTS_15.iter().enumerate() {
        if Some(i) != skip {
            su.batch_execute(&grant.replace("{r}", name)).expect("grant");
        }
    }
}

/// Calls one API function the way a tool would; `Ok` when it did its work.
fn call(s: &mut Server, conninfo: &str, api: &str) -> Result<(), Error> {
    match api {
        "read_binary_file" => s.read_binary_file("PG_VERSION", 0, 2).map(|b| assert_eq!(b.len(), 2)),
        "checkpoint" => s.checkpoint().map(|c| assert_eq!(c.timeline, 1)),
        "file_stat" => s.file_stat("global/pg_control").map(|st| assert_eq!(st.size, 8192)),
        "list_dir" => s.list_dir("global").map(|l| assert!(l.iter().any(|e| e.name == "pg_control"))),
        "backup_start" => {
            let start = s.backup_start("privileges", true)?;
            let stop = s.backup_stop(false).expect("stop right after start");
            assert!(start <= stop.lsn);
            Ok(())
        }
        "backup_stop" => {
            if s.backup_in_progress().is_none() {
                s.backup_start("privileges", true).expect("start before stop");
            }
            s.backup_stop(false).map(|stop| assert!(stop.start_lsn().is_some()))
        }
        "stream_wal" => {
            // The check, then what a backup does with it: a physical replication
            // connection (opened by pgraft-walstream, not this library).
            s.require(Api::StreamWal)?;
            let cfg =
                pgraft_walstream::Config::from_conninfo(conninfo).expect("a replication connection string");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let id = rt
                .block_on(async {
                    let mut c = pgraft_walstream::ReplicationClient::connect(&cfg).await?;
                    let id = c.identify_system().await?;
                    c.disconnect().await?;
                    Ok::<_, pgraft_walstream::Error>(id)
                })
                .expect("a replication connection with REPLICATION");
            assert_eq!(id.timeline, 1);
            Ok(())
        }
        other => panic!("unknown api {other}"),
    }
}

#[test]
fn exact_grants_suffice_and_each_missing_one_is_named() {
    for pg_config in pg_configs() {
        let srv = server(&pg_config, "priv", &PlainOptions::default());
        assert!(srv.install.major >= 15, "this test lists the grants of PostgreSQL 15 and later");
        let mut su = srv.connect().expect("superuser connection");

        // Everything the list grants is enough for every function.
        role_with(&mut su, "full_role", None);
        let mut s = Server::from_conninfo("priv", &srv.conninfo_as("full_role")).expect("conninfo");
        let info = s.info().expect("info needs no grant").clone();
        assert!(!info.checksums, "initdb without --data-checksums");
        assert!(s.valid());
        s.verify_connection().expect("verify_connection needs no grant");
        for api in [
            "read_binary_file",
            "checkpoint",
            "file_stat",
            "list_dir",
            "backup_start",
            "backup_stop",
            "stream_wal",
        ] {
            call(&mut s, &srv.conninfo_as("full_role"), api)
                .unwrap_or_else(|e| panic!("{api} as full_role: {e}"));
        }
        assert!(s.check_privileges().expect("check").iter().all(|a| a.allowed()));

        // No grants at all: info still works, every privileged function is refused.
        su.batch_execute("CREATE ROLE bare_role LOGIN").expect("create role");
        let mut bare = Server::from_conninfo("priv", &srv.conninfo_as("bare_role")).expect("conninfo");
        bare.info().expect("info needs no grant");
        let access = bare.check_privileges().expect("check");
        for a in &access {
            assert_eq!(a.allowed(), matches!(a.api, Api::Info | Api::VerifyConnection), "{:?}", a.api);
        }

        // Without each single grant: the error names it and carries the GRANT; that GRANT
        // then makes the same call work.
        for (i, (api, grant)) in GRANTS_15.iter().enumerate() {
            let role = format!("no_grant_{i}");
            role_with(&mut su, &role, Some(i));
            let mut s = Server::from_conninfo("priv", &srv.conninfo_as(&role)).expect("conninfo");
            // backup_stop is refused with the backup started, which stays in progress.
            let err = call(&mut s, &srv.conninfo_as(&role), api).expect_err("a grant is missing");
            let expected = format!("{};", grant.replace("{r}", &role));
            match &err {
                Error::PermissionDenied { api: a, role: r, grant: g, missing, .. } => {
                    assert_eq!(a, api);
                    assert_eq!(r, &role);
                    assert_eq!(g, &expected, "the GRANT that fixes it");
                    let what = if grant.starts_with("ALTER ROLE") {
                        "the REPLICATION attribute".to_string()
                    } else if grant.contains("EXECUTE") {
                        let f = grant
                            .split("FUNCTION ")
                            .nth(1)
                            .expect("a function")
                            .split(" TO")
                            .next()
                            .expect("sig");
                        format!("EXECUTE on function {f}")
                    } else {
                        let r = grant.split_whitespace().nth(1).expect("a role");
                        format!("the privileges of role {r}")
                    };
                    assert!(missing.starts_with(&what), "{missing} should name {what}");
                }
                other => panic!("{api} without `{grant}`: expected PermissionDenied, got {other}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&expected) && msg.contains(&role), "{msg}");
            // The reported GRANT fixes it.
            su.batch_execute(&expected).expect("run the GRANT from the error");
            call(&mut s, &srv.conninfo_as(&role), api)
                .unwrap_or_else(|e| panic!("{api} after `{expected}`: {e}"));
        }

        // No refused call ever reached the server: it logged no permission error.
        let log = srv.log();
        assert!(
            !log.contains("permission denied"),
            "a privileged call was sent without the privilege:\n{log}"
        );
    }
}
