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
}

/// The extension's version: `1.0.0`.
#[pg_extern]
fn pgraft_get_version() -> &'static str {
    VERSION
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn sql_bool(q: &str) -> bool {
        Spi::get_one::<bool>(q).expect("query runs").expect("not null")
    }

    /// pgraft_init() on the bootstrap member founds a one-member cluster it leads.
    fn init_and_lead() {
        assert!(sql_bool("SELECT pgraft_init()"));
        for _ in 0..150 {
            if sql_bool("SELECT pgraft_is_leader()") {
                return;
            }
            Spi::run("SELECT pg_sleep(0.1)").expect("sleep");
        }
        panic!("not leader 15 s after pgraft_init()");
    }

    #[pg_test]
    fn version_is_the_documented_one() {
        assert_eq!(Spi::get_one::<&str>("SELECT pgraft_get_version()"), Ok(Some("1.0.0")));
    }

    #[pg_test]
    fn settings_have_the_reference_defaults() {
        let show = |name: &str| Spi::get_one::<String>(&format!("SHOW {name}")).expect("SHOW works");
        assert_eq!(show("pgraft.election_timeout"), Some("1s".to_string()));
        assert_eq!(show("pgraft.heartbeat_interval"), Some("100ms".to_string()));
        assert_eq!(show("pgraft.log_level"), Some("info".to_string()));
        assert_eq!(show("pgraft.ssl_enabled"), Some("off".to_string()));
        assert_eq!(show("pgraft.failover_enabled"), Some("off".to_string()));
    }

    #[pg_test]
    fn init_leads_and_the_kv_store_works() {
        init_and_lead();
        assert_eq!(Spi::get_one::<&str>("SELECT pgraft_get_worker_state()"), Ok(Some("running")));
        assert!(sql_bool("SELECT pgraft_init()"), "pgraft_init() again is harmless");
        assert!(Spi::get_one::<i64>("SELECT pgraft_get_term()").expect("term").expect("not null") >= 1);
        assert_eq!(Spi::get_one::<i32>("SELECT pgraft_get_leader()"), Ok(Some(1)));
        assert!(sql_bool("SELECT pgraft_quorum_met()"));
        assert!(sql_bool("SELECT pgraft_kv_put('foo', 'bar')"));
        assert_eq!(Spi::get_one::<&str>("SELECT pgraft_kv_get('foo')"), Ok(Some("bar")));
        assert!(sql_bool("SELECT pgraft_kv_exists('foo')"));
        assert!(sql_bool("SELECT pgraft_kv_delete('foo')"));
        assert_eq!(Spi::get_one::<&str>("SELECT pgraft_kv_get('foo')"), Ok(None));
        assert!(!sql_bool("SELECT pgraft_kv_exists('foo')"));
        assert!(sql_bool("SELECT pgraft_kv_put('j', jsonb_build_object('a', 1))"));
        assert!(sql_bool("SELECT pgraft_kv_get('j')::jsonb = '{\"a\": 1}'::jsonb"));
        assert!(sql_bool("SELECT pgraft_replicate_entry('{\"x\": 1}')"));
        assert!(sql_bool("SELECT pgraft_test()"));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pgraft_get_nodes()"), Ok(Some(1)));
        assert_eq!(
            Spi::get_one::<String>("SELECT state FROM pgraft_get_cluster_status() WHERE node_id = 1"),
            Ok(Some("Leader".to_string()))
        );
    }

    #[pg_test(error = "invalid port 70000: a port is 1 to 65535")]
    fn add_node_refuses_a_bad_port() {
        Spi::run("SELECT pgraft_add_node(5, '127.0.0.1', 70000)").expect("raises");
    }

    #[pg_test(error = "pgraft_add_node: node id -1 is out of range; node ids are 1 or greater")]
    fn add_node_refuses_a_bad_id() {
        Spi::run("SELECT pgraft_add_node(-1, '127.0.0.1', 7005)").expect("raises");
    }

    #[pg_test(error = "address \"not a host!\" is neither an IP address nor a host name")]
    fn add_node_refuses_a_bad_address() {
        Spi::run("SELECT pgraft_add_node(5, 'not a host!', 7005)").expect("raises");
    }

    #[pg_test(error = "node 42 is not a member of the cluster")]
    fn removing_an_unknown_node_fails() {
        init_and_lead();
        Spi::run("SELECT pgraft_remove_node(42)").expect("raises");
    }

    #[pg_test(error = "cannot transfer leadership to node 9: it is not a voting member of the cluster")]
    fn transfer_to_a_non_member_fails() {
        init_and_lead();
        Spi::run("SELECT pgraft_transfer_leadership(9)").expect("raises");
    }

    #[pg_test(error = "the key must not be empty")]
    fn an_empty_key_is_refused() {
        init_and_lead();
        Spi::run("SELECT pgraft_kv_put('', 'x')").expect("raises");
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
