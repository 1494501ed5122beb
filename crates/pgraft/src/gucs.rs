//! Every `pgraft.*` setting, registered in `_PG_init`.
//!
//! Identity and network settings take effect at server start (`postmaster` context);
//! timing and logging can be changed with a reload (`sighup`). String settings are checked
//! by hooks that run the rules of `pgraft_core::config`, so a bad value in
//! postgresql.conf is refused with a message that names the rule instead of surfacing
//! later as a failed start of the worker.

use std::ffi::{CStr, CString};

use pgraft_core::config;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

/// The cluster this member belongs to; recorded in its storage and sent in every peer
/// handshake, so members of two clusters never talk.
pub static CLUSTER_ID: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"pgraft-cluster"));
/// This member's node id, unique in the cluster (1 or more).
pub static NODE_ID: GucSetting<i32> = GucSetting::<i32>::new(1);
/// The host other members use to reach this member's Raft port.
pub static ADDRESS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"127.0.0.1"));
/// This member's Raft port.
pub static PORT: GucSetting<i32> = GucSetting::<i32>::new(7001);
/// The address the Raft listener binds and peer connections originate from, when it
/// differs from pgraft.address (behind NAT or a proxy; etcd's listen vs advertise URLs).
/// Empty: pgraft.address.
pub static LISTEN_ADDRESS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// Where the member keeps its Raft log, state and snapshots. Empty: `pgraft` under PGDATA.
pub static DATA_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// Milliseconds without a leader before a follower campaigns.
pub static ELECTION_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// Milliseconds between a leader's heartbeats.
pub static HEARTBEAT_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(100);
/// The worker's log level: debug, info, notice, warning or error.
pub static LOG_LEVEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"info"));
/// Encrypt and mutually authenticate peer connections with TLS.
pub static SSL_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(false);
/// This member's certificate (PEM), presented to peers.
pub static SSL_CERT_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// The private key of pgraft.ssl_cert_file (PEM).
pub static SSL_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// The CA certificates (PEM) that peers' certificates must chain to.
pub static SSL_CA_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// A secret every member proves to every other by challenge and response at the handshake
/// (at least 16 bytes); empty: none. Superusers only, and not in `SHOW ALL`.
pub static CLUSTER_SECRET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// A file holding the cluster secret (its first line); wins over pgraft.cluster_secret.
pub static CLUSTER_SECRET_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// A static initial member list, etcd-style: `1=host:port,2=host:port,...`. Empty: the
/// one-member bootstrap of pgraft_init() and pgraft_add_node().
pub static INITIAL_CLUSTER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// The member that founds the cluster when `pgraft_init()` runs on it.
pub static BOOTSTRAP_NODE: GucSetting<i32> = GucSetting::<i32>::new(1);
/// How long a request waits for the cluster when statement_timeout is not set.
pub static REQUEST_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(30_000);
/// How long a probe of this member's own server (a new connection; a commit on a primary)
/// may wait before the server counts as unable to serve; 0 turns the checks off (see
/// `pgraft_core::ha::judge_health`).
pub static HEALTH_CHECK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(5_000);
/// In asynchronous mode, the most a standby may lag behind the primary's last published
/// position and still be promoted, in kB; 0: no limit (see `pgraft_core::ha` candidate).
pub static MAXIMUM_LAG_ON_FAILOVER: GucSetting<i32> = GucSetting::<i32>::new(1024);
/// Whether automatic PostgreSQL failover may act (it gates the failover feature).
pub static FAILOVER_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `off`, `on` or `strict`: whether the primary waits for standbys to acknowledge commits
/// (see `pgraft_core::ha::SyncMode`).
pub static SYNCHRONOUS_MODE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"on"));
/// The host this member's standby dials for every other member's server, instead of the
/// host that member registered (its pgraft.address): for replication through a proxy.
/// Empty: each member's own.
pub static REPLICATION_HOST: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// libpq keywords added to the `primary_conninfo` the worker writes (user, sslmode,
/// passfile, ...); host, port and application_name are the worker's.
pub static REPLICATION_CONNINFO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// The address the HTTP endpoints (health checks, `/metrics`) bind; empty: pgraft.address.
pub static HTTP_ADDRESS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// The HTTP endpoints' port; 0 (the default) serves no HTTP.
pub static HTTP_PORT: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Serve the HTTP endpoints over TLS with pgraft.ssl_cert_file and pgraft.ssl_key_file.
pub static HTTP_TLS: GucSetting<bool> = GucSetting::<bool>::new(false);
/// `user:password` every HTTP request must present (basic auth); empty: none asked.
pub static HTTP_AUTH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// How the rejoin helper starts this server (`sh -c`), e.g. through its service manager;
/// empty: `pg_ctl restart` with the options the server last started with.
pub static SERVER_START_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// How the rejoin helper stops this server when it must rewind a standby it started;
/// empty: `pg_ctl stop -m fast`.
pub static SERVER_STOP_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// A PostgreSQL C string global (a GUC's value), copied; empty when unset.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that stays valid during the call (a
/// GUC of this process, read on its main thread).
pub unsafe fn c_string(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated, by the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The timing in effect: what `pgraft_set_config` put in the log, else these settings.
pub fn effective_timing(cluster: &std::collections::BTreeMap<String, String>) -> config::Timing {
    let get = |n: &str, d: u64| cluster.get(n).and_then(|v| config::parse_duration_ms(v).ok()).unwrap_or(d);
    config::Timing {
        election_timeout_ms: get("election_timeout", ELECTION_TIMEOUT.get() as u64),
        heartbeat_interval_ms: get("heartbeat_interval", HEARTBEAT_INTERVAL.get() as u64),
    }
}

/// Whether automatic failover may act: `pgraft_set_config('failover_enabled', ...)` in
/// the log when set (the cluster-wide pause), else `pgraft.failover_enabled`.
pub fn effective_failover(cluster: &std::collections::BTreeMap<String, String>) -> bool {
    match cluster.get("failover_enabled") {
        Some(v) => v == "true",
        None => FAILOVER_ENABLED.get(),
    }
}

/// Reads a string setting (empty when unset).
pub fn string(setting: &GucSetting<Option<CString>>) -> String {
    setting.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Registers every setting. Called once from `_PG_init`.
pub fn init() {
    use GucContext::{Postmaster, Sighup};
    let none = GucFlags::default();
    let ms = GucFlags::UNIT_MS;
    // SAFETY: the hooks are plain functions with the signatures PostgreSQL expects; they
    // only read the proposed value and, on refusal, set GUC_check_errdetail_string.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"pgraft.cluster_id",
            c"The cluster this member belongs to.",
            c"Recorded in the member's storage and sent in every peer handshake; members of different clusters never talk.",
            &CLUSTER_ID,
            Postmaster,
            none,
            Some(check_cluster_id),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"pgraft.address",
            c"The host other members use to reach this member's Raft port.",
            c"",
            &ADDRESS,
            Postmaster,
            none,
            Some(check_address),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"pgraft.listen_address",
            c"The address the Raft listener binds and peer connections come from; empty means pgraft.address.",
            c"Set it when members reach this one through NAT or a proxy (like etcd's listen versus advertise URLs).",
            &LISTEN_ADDRESS,
            Postmaster,
            none,
            Some(check_listen_address),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"pgraft.data_dir",
            c"Where the member keeps its Raft log, state and snapshots; empty means PGDATA/pgraft.",
            c"",
            &DATA_DIR,
            Postmaster,
            none,
            Some(check_data_dir),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"pgraft.log_level",
            c"The worker's log level: debug, info, notice, warning or error.",
            c"",
            &LOG_LEVEL,
            Sighup,
            none,
            Some(check_log_level),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"pgraft.initial_cluster",
            c"A static initial member list, id=host:port separated by commas.",
            c"Empty: bootstrap with pgraft_init() on one member and pgraft_add_node() for the others.",
            &INITIAL_CLUSTER,
            Postmaster,
            none,
            Some(check_initial_cluster),
            None,
            None,
        );
        for (name, short, setting) in [
            (
                c"pgraft.ssl_cert_file",
                c"This member's TLS certificate (PEM), presented to peers.",
                &SSL_CERT_FILE,
            ),
            (c"pgraft.ssl_key_file", c"The private key of pgraft.ssl_cert_file (PEM).", &SSL_KEY_FILE),
            (
                c"pgraft.ssl_ca_file",
                c"The CA certificates (PEM) that peers' certificates must chain to.",
                &SSL_CA_FILE,
            ),
        ] {
            GucRegistry::define_string_guc_with_hooks(
                name,
                short,
                c"",
                setting,
                Postmaster,
                none,
                Some(check_absolute_or_empty),
                None,
                None,
            );
        }
    }
    GucRegistry::define_int_guc(
        c"pgraft.node_id",
        c"This member's node id, unique in the cluster.",
        c"",
        &NODE_ID,
        1,
        i32::MAX,
        Postmaster,
        none,
    );
    GucRegistry::define_int_guc(
        c"pgraft.port",
        c"This member's Raft port.",
        c"",
        &PORT,
        1,
        65535,
        Postmaster,
        none,
    );
    GucRegistry::define_int_guc(
        c"pgraft.election_timeout",
        c"Time without a leader before a follower campaigns.",
        c"At least twice pgraft.heartbeat_interval.",
        &ELECTION_TIMEOUT,
        20,
        config::Timing::MAX_ELECTION_TIMEOUT_MS as i32,
        Sighup,
        ms,
    );
    GucRegistry::define_int_guc(
        c"pgraft.heartbeat_interval",
        c"Time between a leader's heartbeats; also the tick of the Raft loop.",
        c"",
        &HEARTBEAT_INTERVAL,
        config::Timing::MIN_HEARTBEAT_MS as i32,
        60_000,
        Sighup,
        ms,
    );
    GucRegistry::define_int_guc(
        c"pgraft.bootstrap_node",
        c"The member that founds the cluster when pgraft_init() runs on it.",
        c"The others wait to be added with pgraft_add_node().",
        &BOOTSTRAP_NODE,
        1,
        i32::MAX,
        Postmaster,
        none,
    );
    GucRegistry::define_int_guc(
        c"pgraft.request_timeout",
        c"How long a request waits for the cluster when statement_timeout is not set.",
        c"",
        &REQUEST_TIMEOUT,
        10,
        3_600_000,
        GucContext::Userset,
        ms,
    );
    GucRegistry::define_int_guc(
        c"pgraft.health_check_timeout",
        c"How long a probe of this member's own server may wait before it counts as unable to serve.",
        c"A new connection, and on a primary a commit; 0 turns the checks off.",
        &HEALTH_CHECK_TIMEOUT,
        0,
        3_600_000,
        Sighup,
        ms,
    );
    GucRegistry::define_int_guc(
        c"pgraft.maximum_lag_on_failover",
        c"In asynchronous mode, the most a standby may lag behind the primary and still be promoted.",
        c"Measured against the primary's last published position; 0: no limit.",
        &MAXIMUM_LAG_ON_FAILOVER,
        0,
        i32::MAX,
        Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"pgraft.http_port",
        c"The port of the HTTP endpoints for load balancers and Prometheus (/primary, /replica, /health, /metrics, ...).",
        c"0 serves no HTTP.",
        &HTTP_PORT,
        0,
        65535,
        Postmaster,
        none,
    );
    GucRegistry::define_string_guc(
        c"pgraft.http_address",
        c"The address the HTTP endpoints bind; empty means pgraft.address.",
        c"",
        &HTTP_ADDRESS,
        Postmaster,
        none,
    );
    GucRegistry::define_bool_guc(
        c"pgraft.http_tls",
        c"Serve the HTTP endpoints over TLS, with pgraft.ssl_cert_file and pgraft.ssl_key_file.",
        c"",
        &HTTP_TLS,
        Postmaster,
        none,
    );
    GucRegistry::define_string_guc(
        c"pgraft.http_auth",
        c"user:password every HTTP request must present with basic auth; empty asks for none.",
        c"",
        &HTTP_AUTH,
        Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pgraft.cluster_secret",
        c"A secret members prove to each other at every connection (challenge and response; at least 16 bytes).",
        c"Empty: none. Use it where peers talk without TLS; pgraft.cluster_secret_file keeps it out of the configuration.",
        &CLUSTER_SECRET,
        Postmaster,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"pgraft.cluster_secret_file",
        c"A file whose first line is the cluster secret; wins over pgraft.cluster_secret.",
        c"",
        &CLUSTER_SECRET_FILE,
        Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_bool_guc(
        c"pgraft.ssl_enabled",
        c"Encrypt and mutually authenticate peer connections with TLS.",
        c"Needs pgraft.ssl_cert_file, pgraft.ssl_key_file and pgraft.ssl_ca_file.",
        &SSL_ENABLED,
        Postmaster,
        none,
    );
    // SAFETY: as above.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"pgraft.synchronous_mode",
            c"off, on or strict: whether the primary waits for floor(n/2) standbys to acknowledge each commit.",
            c"With on or strict no acknowledged commit is lost in a failover; with off the loss is bounded by the standbys' lag.",
            &SYNCHRONOUS_MODE,
            Sighup,
            none,
            Some(check_synchronous_mode),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"pgraft.replication_host",
            c"The host this member's standby dials for every other member's server; empty means each member's pgraft.address.",
            c"For replication through a proxy.",
            &REPLICATION_HOST,
            Sighup,
            none,
            Some(check_replication_host),
            None,
            None,
        );
    }
    GucRegistry::define_string_guc(
        c"pgraft.replication_conninfo",
        c"libpq keywords added to the primary_conninfo the worker writes (user, sslmode, passfile, ...).",
        c"Host, port and application_name are set by the worker.",
        &REPLICATION_CONNINFO,
        Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pgraft.server_start_command",
        c"How the rejoin helper starts this server (run with sh -c), e.g. through its service manager.",
        c"Empty: pg_ctl restart with the options the server last started with.",
        &SERVER_START_COMMAND,
        Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pgraft.server_stop_command",
        c"How the rejoin helper stops this server before rewinding a standby it started.",
        c"Empty: pg_ctl stop -m fast.",
        &SERVER_STOP_COMMAND,
        Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_bool_guc(
        c"pgraft.failover_enabled",
        c"Whether automatic PostgreSQL failover may act.",
        c"",
        &FAILOVER_ENABLED,
        Sighup,
        none,
    );
    // SAFETY: called from _PG_init with a valid, static prefix.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"pgraft".as_ptr()) };
}

/// The log levels pgraft.log_level accepts.
pub const LOG_LEVELS: [&str; 5] = ["debug", "info", "notice", "warning", "error"];

/// Runs `rule` on a proposed string value; on refusal hands PostgreSQL the reason.
///
/// # Safety
/// `newval` must be the pointer PostgreSQL passes to a string check hook.
unsafe fn check_with(
    newval: *mut *mut std::ffi::c_char,
    rule: impl FnOnce(&str) -> config::Result<()>,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to a (possibly null) C string.
    let value = unsafe {
        let p = *newval;
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    match rule(&value) {
        Ok(()) => true,
        Err(e) => {
            let msg = CString::new(e.0.replace('\0', "")).unwrap_or_default();
            // SAFETY: GUC_check_errdetail_string must point at palloc'd memory; pstrdup
            // copies our message into the current memory context.
            unsafe { pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(msg.as_ptr()) };
            false
        }
    }
}

macro_rules! string_check_hook {
    ($name:ident, $rule:expr) => {
        #[pgrx::pg_guard]
        unsafe extern "C-unwind" fn $name(
            newval: *mut *mut std::ffi::c_char,
            _extra: *mut *mut std::ffi::c_void,
            _source: pg_sys::GucSource::Type,
        ) -> bool {
            // SAFETY: called by PostgreSQL as a string check hook.
            unsafe { check_with(newval, $rule) }
        }
    };
}

string_check_hook!(check_cluster_id, config::validate_cluster_id);
string_check_hook!(check_address, |v| config::validate_host("pgraft.address", v));
string_check_hook!(check_listen_address, |v| {
    if v.is_empty() {
        Ok(())
    } else {
        config::validate_host("pgraft.listen_address", v)
    }
});
string_check_hook!(check_data_dir, |v| absolute_or_empty("pgraft.data_dir", v));
string_check_hook!(check_absolute_or_empty, |v| absolute_or_empty("a pgraft.ssl_* file", v));
string_check_hook!(check_initial_cluster, |v| config::parse_initial_cluster(v).map(|_| ()));
string_check_hook!(check_log_level, |v| {
    if LOG_LEVELS.contains(&v.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(config::ConfigError(format!("pgraft.log_level {v:?} is not one of {}", LOG_LEVELS.join(", "))))
    }
});

string_check_hook!(check_synchronous_mode, |v| match pgraft_core::ha::SyncMode::parse(v) {
    Some(_) => Ok(()),
    None => Err(config::ConfigError(format!("pgraft.synchronous_mode {v:?} is not one of off, on, strict"))),
});
string_check_hook!(check_replication_host, |v| {
    if v.is_empty() {
        Ok(())
    } else {
        config::validate_host("pgraft.replication_host", v)
    }
});

fn absolute_or_empty(setting: &str, v: &str) -> config::Result<()> {
    if v.is_empty() || v.starts_with('/') {
        Ok(())
    } else {
        Err(config::ConfigError(format!("{setting} {v:?} must be an absolute path")))
    }
}
