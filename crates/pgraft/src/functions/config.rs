//! Run-time configuration, health, queues and debugging.

use pgraft_core::command::Body;
use pgraft_core::config::{parse_duration_ms, Timing};
use pgraft_core::{Request, Response};
use pgrx::prelude::*;

use super::cluster::status;
use crate::bridge::{self, invalid};
use crate::gucs;
use crate::protocol::{IpcRequest, IpcResponse};

/// The settings `pgraft_set_config` changes on every member at run time.
const RUNTIME: [&str; 4] = ["election_timeout", "heartbeat_interval", "log_level", "failover_enabled"];

/// Settings that only take effect at server start.
const AT_START: [&str; 12] = [
    "cluster_id",
    "node_id",
    "address",
    "port",
    "listen_address",
    "data_dir",
    "ssl_enabled",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "initial_cluster",
    "bootstrap_node",
];

fn bool_text(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" | "t" => Some(true),
        "false" | "off" | "no" | "0" | "f" => Some(false),
        _ => None,
    }
}

/// Checks a value and returns it in canonical form.
fn normalise(name: &str, value: &str, current: &Timing) -> String {
    match name {
        "election_timeout" | "heartbeat_interval" => {
            let ms = parse_duration_ms(value).unwrap_or_else(|e| invalid(format!("pgraft.{name}: {}", e.0)));
            let t = if name == "election_timeout" {
                Timing { election_timeout_ms: ms, ..*current }
            } else {
                Timing { heartbeat_interval_ms: ms, ..*current }
            };
            if let Err(e) = t.validate() {
                invalid(format!("pgraft.{name} = {value}: {}", e.0));
            }
            format!("{ms}ms")
        }
        "log_level" => {
            let v = value.trim().to_ascii_lowercase();
            if !gucs::LOG_LEVELS.contains(&v.as_str()) {
                invalid(format!("pgraft.log_level {value:?} is not one of {}", gucs::LOG_LEVELS.join(", ")));
            }
            v
        }
        "failover_enabled" => match bool_text(value) {
            Some(b) => b.to_string(),
            None => invalid(format!("pgraft.failover_enabled {value:?} is not a boolean (true or false)")),
        },
        _ => unreachable!("only runtime settings are normalised"),
    }
}

/// Changes a setting on every member, through the log; it applies at once and survives
/// restarts (it is part of the replicated state). Values take units (`'75ms'`, `'1s'`).
#[pg_extern]
fn pgraft_set_config(name: Option<&str>, value: Option<&str>) -> bool {
    let name = bridge::required("pgraft_set_config", "name", name);
    let value = bridge::required("pgraft_set_config", "value", value);
    let name = name.trim().trim_start_matches("pgraft.").to_ascii_lowercase();
    if AT_START.contains(&name.as_str()) {
        invalid(format!(
            "pgraft.{name} cannot be changed at run time: it takes effect at server start; set it in postgresql.conf"
        ));
    }
    if !RUNTIME.contains(&name.as_str()) {
        invalid(format!(
            "unknown setting {name:?}; settings changed at run time are: {}",
            RUNTIME.join(", ")
        ));
    }
    let st = status();
    let value = normalise(&name, value, &gucs::effective_timing(&st.cluster_config));
    matches!(bridge::raft(Request::Propose(Body::SetConfig { name, value })), Response::Applied { .. })
}

/// Saves the cluster-wide settings to this member's data directory, so they apply from
/// its first moment after a restart, before the log is replayed.
#[pg_extern]
fn pgraft_save_config() -> bool {
    match bridge::call(IpcRequest::SaveConfig) {
        IpcResponse::Done => true,
        other => bridge::unexpected(other),
    }
}

/// How a setting is changed: through the log on every member (`pgraft_set_config`), by a
/// reload of `postgresql.conf`, in a session, or only at server start (PostgreSQL's
/// context of the setting).
fn changeable(name: &str, context: &str) -> &'static str {
    if RUNTIME.contains(&name) {
        return "run time";
    }
    match context {
        "sighup" => "reload",
        "user" | "superuser" => "session",
        _ => "server start",
    }
}

/// Every pgraft setting with its value, default and where the value comes from.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_get_config() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(value, String),
        name!(default_value, String),
        name!(source, String),
        name!(changeable, String),
    ),
> {
    let st = status();
    let saved = match bridge::call(IpcRequest::SavedConfig) {
        IpcResponse::Config(c) => c,
        other => bridge::unexpected(other),
    };
    let rows: Vec<_> = Spi::connect(|c| {
        c.select(
            "SELECT substr(name, 8), setting || coalesce(unit, ''), coalesce(boot_val, '') || coalesce(unit, ''), source, \
                    context \
             FROM pg_settings WHERE name LIKE 'pgraft.%' ORDER BY name",
            None,
            &[],
        )
        .map(|t| {
            t.map(|r| {
                let name: String = r.get(1).ok().flatten().unwrap_or_default();
                let guc_value: String = r.get(2).ok().flatten().unwrap_or_default();
                let default: String = r.get(3).ok().flatten().unwrap_or_default();
                let source: String = r.get(4).ok().flatten().unwrap_or_default();
                let (value, source) = if let Some(v) = st.cluster_config.get(&name) {
                    (v.clone(), "cluster (pgraft_set_config)".to_string())
                } else if let Some(v) = saved.get(&name) {
                    (v.clone(), "saved (pgraft_save_config)".to_string())
                } else {
                    (guc_value, source)
                };
                let context: String = r.get(5).ok().flatten().unwrap_or_default();
                (name.clone(), value, default, source, changeable(&name, &context).to_string())
            })
            .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    });
    TableIterator::new(rows)
}

/// Turns the worker's debug logging on or off now.
#[pg_extern]
fn pgraft_set_debug(enabled: Option<bool>) -> bool {
    let enabled = bridge::required("pgraft_set_debug", "enabled", enabled);
    let level = if enabled { "debug".to_string() } else { gucs::string(&gucs::LOG_LEVEL) };
    matches!(bridge::call(IpcRequest::SetLogLevel(level)), IpcResponse::Done)
}

/// What waits in the worker: requests in the member, entries not yet committed or applied.
#[pg_extern]
fn pgraft_get_queue_status(
) -> TableIterator<'static, (name!(queue_name, String), name!(pending, i64), name!(description, String))> {
    let m = status().member;
    TableIterator::new(vec![
        ("requests".to_string(), m.pending as i64, "client requests waiting in the Raft member".to_string()),
        (
            "uncommitted".to_string(),
            m.last_index.saturating_sub(m.commit) as i64,
            "log entries not yet committed".to_string(),
        ),
        (
            "unapplied".to_string(),
            m.commit.saturating_sub(m.applied) as i64,
            "committed entries not yet applied".to_string(),
        ),
    ])
}

/// How peers prove who they are to this member: `tls` (certificates naming node ids),
/// `cluster secret`, `tls and cluster secret`, or `none`.
#[pg_extern]
fn pgraft_peer_authentication() -> String {
    crate::worker::peer_authentication().0
}

/// Health of this member and of the cluster as it sees it: one row per metric, with a
/// status and a severity (`ok`, `info`, `warning`, `critical`).
#[pg_extern]
fn pgraft_health_check() -> TableIterator<
    'static,
    (name!(metric, String), name!(value, String), name!(status, String), name!(severity, String)),
> {
    let shared = crate::shmem::read();
    let mut rows = vec![(
        "worker_state".to_string(),
        shared.state.as_str().to_string(),
        if shared.state == crate::shmem::WorkerState::Running { "OK" } else { "ERROR" }.to_string(),
        if shared.state == crate::shmem::WorkerState::Running { "ok" } else { "critical" }.to_string(),
    )];
    if shared.state != crate::shmem::WorkerState::Running {
        if shared.state == crate::shmem::WorkerState::Error {
            rows.push((
                "worker_error".to_string(),
                shared.error.as_str().to_string(),
                "ERROR".to_string(),
                "critical".to_string(),
            ));
        }
        return TableIterator::new(rows);
    }
    let st = status();
    let m = &st.member;
    let row = |metric: &str, value: String, ok: bool, bad: &str| {
        (
            metric.to_string(),
            value,
            if ok { "OK".into() } else { "PROBLEM".into() },
            if ok { "ok".into() } else { bad.to_string() },
        )
    };
    rows.push(row(
        "leader",
        if m.leader_id == 0 { "none".into() } else { m.leader_id.to_string() },
        m.leader_id != 0,
        "critical",
    ));
    rows.push(row(
        "quorum",
        if m.quorum_active { "met" } else { "not met" }.into(),
        m.quorum_active,
        "critical",
    ));
    rows.push(("term".into(), m.term.to_string(), "OK".into(), "ok".into()));
    // The same judgement as pgraft_get_nodes' "Unreachable": not heard from within an
    // election timeout (only a leader tracks every member).
    let unreachable: Vec<String> = m.unreachable.iter().map(|id| id.to_string()).collect();
    rows.push(row(
        "unreachable_members",
        if unreachable.is_empty() { "none".into() } else { unreachable.join(",") },
        unreachable.is_empty(),
        "warning",
    ));
    // An entry this build cannot read: the member applies nothing more until it runs the
    // cluster's version (see the operations guide, "Upgrading pgraft").
    rows.push(row(
        "apply_blocked",
        m.apply_blocked.clone().unwrap_or_else(|| "no".into()),
        m.apply_blocked.is_none(),
        "critical",
    ));
    // The entry formats the members announced: a rolling upgrade is done when every
    // member reads what this build writes (see the operations guide, "Upgrading pgraft").
    let own = pgraft_core::command::PROPOSAL_FORMAT;
    let behind: Vec<String> = m
        .entry_formats
        .iter()
        .filter(|(_, f, announced)| *f != own || !announced)
        .map(|(id, f, announced)| match announced {
            true => format!("node {id} reads up to {f}"),
            false => format!("node {id} has not announced"),
        })
        .collect();
    rows.push((
        "entry_formats".into(),
        match behind.is_empty() {
            true => format!("every member reads up to {own}"),
            false => format!("this member reads up to {own}; {}", behind.join(", ")),
        },
        "OK".into(),
        if behind.is_empty() { "ok" } else { "info" }.into(),
    ));
    let apply_lag = m.commit.saturating_sub(m.applied);
    rows.push(row("apply_lag_entries", apply_lag.to_string(), apply_lag < 1000, "warning"));
    let commit_lag = m.last_index.saturating_sub(m.commit);
    rows.push(row("uncommitted_entries", commit_lag.to_string(), commit_lag < 1000, "warning"));
    let per_term = m.counters.elections as f64 / m.term.max(1) as f64;
    rows.push(row("elections_per_term", format!("{per_term:.2}"), per_term <= 2.0, "warning"));
    rows.push((
        "refused_peer_connections".into(),
        st.refused_connections.to_string(),
        "OK".into(),
        if st.refused_connections > 0 { "info" } else { "ok" }.into(),
    ));
    let (auth, unprotected) = crate::worker::peer_authentication();
    rows.push(row("peer_authentication", auth, !unprotected, "warning"));
    let dropped = m.counters.messages_dropped;
    rows.push(row("dropped_peer_messages", dropped.to_string(), dropped == 0, "warning"));
    // Since start: informational, a stall long past is no present problem (its log line
    // says where the time went).
    let longest = m.counters.longest_pass_ms;
    rows.push((
        "raft_thread_longest_pass_ms".into(),
        longest.to_string(),
        "OK".into(),
        if longest >= 100 { "info" } else { "ok" }.into(),
    ));
    rows.push(("disk_usage_bytes".into(), st.disk_bytes.to_string(), "OK".into(), "ok".into()));
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    fn setting(name: &str) -> String {
        one::<String>(&format!(
            "SELECT value || ' | ' || default_value || ' | ' || source || ' | ' || changeable \
               FROM pgraft_get_config() WHERE name = '{name}'"
        ))
    }

    #[pg_test]
    fn set_config_changes_the_cluster_setting_and_get_config_shows_it() {
        init_and_lead();
        assert_eq!(setting("heartbeat_interval"), "100ms | 100ms | default | run time");
        assert_eq!(setting("port"), "45901 | 7001 | configuration file | server start");
        // Reloadable and session settings say so (PostgreSQL's context of each).
        assert!(setting("health_check_timeout").ends_with("| reload"), "{}", setting("health_check_timeout"));
        assert!(setting("synchronous_mode").ends_with("| reload"));
        assert!(setting("request_timeout").ends_with("| session"));
        assert!(yes("SELECT pgraft_set_config('heartbeat_interval', '75ms')"));
        assert_eq!(setting("heartbeat_interval"), "75ms | 100ms | cluster (pgraft_set_config) | run time");
        assert!(yes("SELECT pgraft_set_config('pgraft.election_timeout', '1.5s')"), "prefix and units");
        assert_eq!(setting("election_timeout"), "1500ms | 1000ms | cluster (pgraft_set_config) | run time");
        assert!(yes("SELECT pgraft_set_config('failover_enabled', 'on')"));
        assert_eq!(setting("failover_enabled"), "true | off | cluster (pgraft_set_config) | run time");
        assert!(yes("SELECT pgraft_set_config('LOG_LEVEL', 'Notice')"));
        assert_eq!(setting("log_level"), "notice | info | cluster (pgraft_set_config) | run time");
        // Through the log: each change is an applied entry.
        assert!(yes(
            "SELECT operation_data ->> 'value' = 'notice' FROM pgraft.log_index_mapping \
              WHERE operation_type = 'set_config' AND target_table = 'log_level' ORDER BY raft_index DESC LIMIT 1"
        ));
        assert!(yes("SELECT pgraft_save_config()"));
        // Back to the defaults, so other tests run at the usual pace.
        for (n, v) in [
            ("heartbeat_interval", "100ms"),
            ("election_timeout", "1s"),
            ("failover_enabled", "off"),
            ("log_level", "info"),
        ] {
            assert!(yes(&format!("SELECT pgraft_set_config('{n}', '{v}')")));
        }
        assert_eq!(setting("election_timeout"), "1000ms | 1000ms | cluster (pgraft_set_config) | run time");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pgraft_get_config()"),
            one::<i64>("SELECT count(*) FROM pg_settings WHERE name LIKE 'pgraft.%'"),
            "every setting is shown"
        );
    }

    #[pg_test]
    fn set_config_refuses_what_it_cannot_change() {
        init_and_lead();
        assert_error(
            "SELECT pgraft_set_config('port', '7009')",
            "22023",
            "pgraft.port cannot be changed at run time",
        );
        assert_error(
            "SELECT pgraft_set_config('ssl_key_file', '/x')",
            "22023",
            "takes effect at server start",
        );
        assert_error("SELECT pgraft_set_config('colour', 'blue')", "22023", "unknown setting \"colour\"");
        assert_error(
            "SELECT pgraft_set_config('heartbeat_interval', 'soon')",
            "22023",
            "pgraft.heartbeat_interval",
        );
        assert_error(
            "SELECT pgraft_set_config('heartbeat_interval', '-5ms')",
            "22023",
            "pgraft.heartbeat_interval",
        );
        assert_error(
            "SELECT pgraft_set_config('election_timeout', '150ms')",
            "22023",
            "pgraft.election_timeout = 150ms",
        );
        assert_error("SELECT pgraft_set_config('log_level', 'loud')", "22023", "is not one of debug, info");
        assert_error("SELECT pgraft_set_config('failover_enabled', 'maybe')", "22023", "is not a boolean");
        assert_eq!(setting("heartbeat_interval").split(" | ").next(), Some("100ms"), "nothing changed");
    }

    #[pg_test]
    fn debug_queues_and_health() {
        init_and_lead();
        assert!(yes("SELECT pgraft_set_debug(true)"));
        assert!(yes("SELECT pgraft_set_debug(false)"));
        assert_eq!(
            one::<String>(
                "SELECT string_agg(queue_name, ',' ORDER BY queue_name) FROM pgraft_get_queue_status()"
            ),
            "requests,unapplied,uncommitted"
        );
        assert!(yes("SELECT bool_and(pending >= 0 AND description <> '') FROM pgraft_get_queue_status()"));
        let health = one::<String>(
            "SELECT string_agg(metric || '=' || value || ':' || status || '/' || severity, ' ' ORDER BY metric) \
               FROM pgraft_health_check() WHERE metric IN ('worker_state', 'leader', 'quorum', 'unreachable_members')",
        );
        assert_eq!(
            health,
            "leader=1:OK/ok quorum=met:OK/ok unreachable_members=none:OK/ok worker_state=running:OK/ok"
        );
        assert!(yes(
            "SELECT bool_and(severity IN ('ok', 'info', 'warning', 'critical')) FROM pgraft_health_check()"
        ));
        // The Raft thread's longest pass since start, in ms, from the member's counters.
        let longest = one::<String>(
            "SELECT value FROM pgraft_health_check() WHERE metric = 'raft_thread_longest_pass_ms'",
        );
        assert!(longest.parse::<u64>().is_ok_and(|ms| ms < 60_000), "{longest}");
        // The member announces the entry format it reads through the log.
        eventually(
            "SELECT value = 'every member reads up to 2' AND severity = 'ok' FROM pgraft_health_check() \
              WHERE metric = 'entry_formats'",
        );
    }
}
