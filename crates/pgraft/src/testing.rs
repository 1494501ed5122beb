//! Helpers for the pgrx tests of the SQL functions: one member, founded by `pgraft_init()`,
//! on the test server `cargo pgrx test` starts (see `pg_test` in lib.rs).

use pgrx::datum::{FromDatum, IntoDatum};
use pgrx::prelude::*;

/// The one value a query returns; the test fails when it errors or returns NULL.
pub fn one<T: FromDatum + IntoDatum>(q: &str) -> T {
    match Spi::get_one::<T>(q) {
        Ok(Some(v)) => v,
        Ok(None) => panic!("{q}: returned NULL"),
        Err(e) => panic!("{q}: {e}"),
    }
}

/// The one value a query returns, or None for NULL.
pub fn maybe<T: FromDatum + IntoDatum>(q: &str) -> Option<T> {
    Spi::get_one::<T>(q).unwrap_or_else(|e| panic!("{q}: {e}"))
}

/// A boolean query's answer.
pub fn yes(q: &str) -> bool {
    one::<bool>(q)
}

/// `pgraft_init()` on the bootstrap member founds a one-member cluster it leads.
pub fn init_and_lead() {
    assert!(yes("SELECT pgraft_init()"));
    for _ in 0..150 {
        if yes("SELECT pgraft_is_leader()") {
            return;
        }
        Spi::run("SELECT pg_sleep(0.1)").expect("sleep");
    }
    panic!("not leader 15 s after pgraft_init()");
}

/// Waits (up to 10 s) until a boolean query holds: for facts published a moment apart,
/// such as shared memory and the worker's status.
#[track_caller]
pub fn eventually(q: &str) {
    for _ in 0..100 {
        if yes(q) {
            return;
        }
        Spi::run("SELECT pg_sleep(0.1)").expect("sleep");
    }
    panic!("not true within 10 s: {q}");
}

/// What a statement raises: `SQLSTATE message` (and ` HINT: …` when there is one), or
/// `no error`. It runs in a PL/pgSQL exception block, so the test's transaction survives
/// and one test can check several error paths.
pub fn error_of(sql: &str) -> String {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.pgraft_error_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
         DECLARE state text; msg text; hint text;
         BEGIN
           EXECUTE q;
           RETURN 'no error';
         EXCEPTION WHEN OTHERS OR query_canceled THEN
           GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
           RETURN state || ' ' || msg || CASE WHEN hint <> '' THEN ' HINT: ' || hint ELSE '' END;
         END $f$",
    )
    .expect("create pg_temp.pgraft_error_of");
    Spi::get_one_with_args::<String>("SELECT pg_temp.pgraft_error_of($1)", &[sql.into()])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_default()
}

/// Asserts that a statement raises an error with this SQLSTATE whose text contains `part`.
#[track_caller]
pub fn assert_error(sql: &str, sqlstate: &str, part: &str) {
    let e = error_of(sql);
    assert!(
        e.starts_with(&format!("{sqlstate} ")) && e.contains(part),
        "{sql}\n  raised: {e}\n  wanted: {sqlstate} …{part}…"
    );
}
