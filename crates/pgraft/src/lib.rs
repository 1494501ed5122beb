//! The pgraft extension: Raft consensus inside PostgreSQL.
//!
//! `_PG_init` runs only from `shared_preload_libraries`; it registers the `pgraft.*`
//! settings (see [`gucs`]). The Raft member itself lives in `pgraft-core`, which knows
//! nothing of PostgreSQL.

use pgrx::prelude::*;

pub mod gucs;

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
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries='pgraft'"]
    }
}
