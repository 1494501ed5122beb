//! Helpers for the tests that talk to real servers.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use pgraft_walstream::Lsn;

/// The PostgreSQL installs to test against: `PGRAFT_TEST_PG_CONFIGS` (space separated, set
/// by `make test`), else the Debian PostgreSQL 15.
pub fn pg_configs() -> Vec<PathBuf> {
    let list = std::env::var("PGRAFT_TEST_PG_CONFIGS")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".to_string());
    list.split_whitespace().map(PathBuf::from).collect()
}

/// A single-threaded runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// A blocking SQL connection usable inside a tokio runtime: every call runs on a scoped
/// thread of its own (the `postgres` crate blocks on a runtime of its own, which tokio
/// forbids on a runtime thread).
pub struct Sql(pub postgres::Client);

impl Sql {
    fn off<T: Send>(&mut self, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
        let c = &mut self.0;
        std::thread::scope(|s| match s.spawn(move || f(c)).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }

    /// `Client::query_one`.
    pub fn query_one(
        &mut self,
        q: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<postgres::Row, postgres::Error> {
        self.off(|c| c.query_one(q, params))
    }

    /// `Client::batch_execute`.
    pub fn batch_execute(&mut self, q: &str) -> Result<(), postgres::Error> {
        self.off(|c| c.batch_execute(q))
    }
}

/// An LSN from SQL text.
pub fn lsn(c: &mut Sql, sql: &str) -> Lsn {
    let row = c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let text: String = row.get(0);
    text.parse().unwrap_or_else(|e| panic!("{sql} returned {text:?}: {e}"))
}

/// Generous deadlines for a loaded 2-core machine; conditions are polled, never slept on.
pub const DEADLINE: Duration = Duration::from_secs(60);
pub const POLL: Duration = Duration::from_millis(50);
