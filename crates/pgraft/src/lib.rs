//! The pgraft extension: Raft consensus inside PostgreSQL.
//!
//! `_PG_init` runs only from `shared_preload_libraries`; it registers the `pgraft.*`
//! settings (see [`gucs`]). The Raft member itself lives in `pgraft-core`, which knows
//! nothing of PostgreSQL.

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;

mod bridge;
mod functions;
pub mod gucs;
mod ha;
mod http_endpoint;
mod protocol;
pub mod shmem;
mod worker;

::pgrx::pg_module_magic!(name, version);

/// The extension's version, as the reference documents print it.
pub const VERSION: &str = "1.0.0";

/// Entry point: refuses to load other than through `shared_preload_libraries`, because
/// the background worker and shared memory can only be set up in the postmaster.
#[pg_guard]
#[allow(non_snake_case)]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading a PostgreSQL global from the thread that loads the library.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pgraft must be loaded via shared_preload_libraries",
            "Add 'pgraft' to shared_preload_libraries in postgresql.conf and restart PostgreSQL."
        );
    }
    gucs::init();
    shmem::init();
    ha::gate::install();
    // The worker runs on primaries and hot standbys alike (Raft state is its own, not in
    // PostgreSQL's WAL); after a crash the postmaster restarts it and it recovers from disk.
    BackgroundWorkerBuilder::new("pgraft worker")
        .set_type("pgraft")
        .set_library("pgraft")
        .set_function("pgraft_worker_main")
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::PostmasterStart)
        .set_restart_time(Some(std::time::Duration::from_secs(2)))
        .load();
    // The replication slots of an HA cluster's members, through SQL (ha/slot_keeper.rs):
    // from a consistent state on, so on hot standbys too.
    BackgroundWorkerBuilder::new(ha::slot_keeper::TITLE)
        .set_type(ha::slot_keeper::TITLE)
        .set_library("pgraft")
        .set_function("pgraft_slot_keeper_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(ha::slot_keeper::RESTART))
        .load();
}

/// The extension's version: `1.0.0`.
#[pg_extern]
fn pgraft_get_version() -> &'static str {
    VERSION
}

#[cfg(any(test, feature = "pg_test"))]
mod testing;

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn version_is_the_documented_one() {
        assert_eq!(one::<String>("SELECT pgraft_get_version()"), "1.0.0");
    }

    #[pg_test]
    fn settings_have_the_reference_defaults() {
        let show = |name: &str| one::<String>(&format!("SHOW {name}"));
        assert_eq!(show("pgraft.election_timeout"), "1s");
        assert_eq!(show("pgraft.heartbeat_interval"), "100ms");
        assert_eq!(show("pgraft.log_level"), "info");
        assert_eq!(show("pgraft.ssl_enabled"), "off");
        assert_eq!(show("pgraft.failover_enabled"), "off");
        assert_eq!(show("pgraft.address"), "127.0.0.1");
        assert_eq!(show("pgraft.port"), "45901");
    }

    #[pg_test]
    fn settings_refuse_bad_values_and_hide_nothing_secret() {
        // Settings of server start or reload cannot be SET in a session.
        assert_error("SET pgraft.port = 45902", "55P02", "pgraft.port");
        assert_error("SET pgraft.election_timeout = '5ms'", "55P02", "pgraft.election_timeout");
        assert_error("SET pgraft.log_level = 'debug'", "55P02", "pgraft.log_level");
        // A session's own setting is range-checked, with its unit.
        assert_error("SET pgraft.request_timeout = '5ms'", "22023", "outside the valid range");
        assert_error("SET pgraft.nonsense = 1", "42602", "pgraft");
        Spi::run("SET LOCAL pgraft.request_timeout = '2s'").expect("a valid request_timeout");
        assert_eq!(one::<String>("SHOW pgraft.request_timeout"), "2s");
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // A port of its own, so a test server never collides with a local cluster.
        vec!["shared_preload_libraries='pgraft'", "pgraft.port=45901", "pgraft.cluster_id='pgrx-tests'"]
    }
}
