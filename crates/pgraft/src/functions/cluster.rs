//! Cluster management and state: init, membership, leadership, status.

use pgraft_core::command::Body;
use pgraft_core::{Request, Response};
use pgrx::prelude::*;

use crate::bridge::{self, invalid};
use crate::protocol::{IpcRequest, IpcResponse, StatusReport};
use crate::shmem;

fn node_id_arg(what: &str, id: i32) -> u64 {
    if id < 1 {
        invalid(format!("{what}: node id {id} is out of range; node ids are 1 or greater"));
    }
    id as u64
}

/// Initialises pgraft on this member: the bootstrap member (pgraft.bootstrap_node, 1 by
/// default) founds a one-member cluster; the others get ready to be added. Harmless to
/// run again.
#[pg_extern]
fn pgraft_init() -> bool {
    match bridge::call(IpcRequest::Init) {
        IpcResponse::Init(Ok(what)) => {
            pgrx::log!("pgraft_init: {what}");
            true
        }
        IpcResponse::Init(Err(e)) => bridge::fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("pgraft_init failed: {e}"),
            None,
        ),
        other => bridge::unexpected(other),
    }
}

/// Adds a member (leader only); adding it again with the same address is a no-op.
#[pg_extern]
fn pgraft_add_node(node_id: Option<i32>, address: Option<&str>, port: Option<i32>) -> bool {
    const F: &str = "pgraft_add_node";
    let id = node_id_arg(F, bridge::required(F, "node_id", node_id));
    let address = bridge::required(F, "address", address);
    let port = bridge::required(F, "port", port);
    if !(1..=65535).contains(&port) {
        invalid(format!("invalid port {port}: a port is 1 to 65535"));
    }
    if let Err(e) = pgraft_core::config::validate_host("address", address) {
        invalid(e.0);
    }
    let address =
        if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") };
    matches!(
        bridge::raft(Request::AddMember { id, address, learner: false }),
        Response::Applied { .. } | Response::Unchanged
    )
}

/// Removes a member (leader only).
#[pg_extern]
fn pgraft_remove_node(node_id: Option<i32>) -> bool {
    const F: &str = "pgraft_remove_node";
    let id = node_id_arg(F, bridge::required(F, "node_id", node_id));
    matches!(bridge::raft(Request::RemoveMember { id }), Response::Applied { .. } | Response::Unchanged)
}

/// Whether this member is the leader (from shared memory).
#[pg_extern]
fn pgraft_is_leader() -> bool {
    shmem::read().is_leader
}

/// The leader this member knows of; 0 when none.
#[pg_extern]
fn pgraft_get_leader() -> i32 {
    i32::try_from(shmem::read().leader_id).unwrap_or(0)
}

/// The current term.
#[pg_extern]
fn pgraft_get_term() -> i64 {
    shmem::read().term as i64
}

/// The background worker's state: `initializing`, `running`, `stopped` or `error`, in lowercase,
/// as the reference compares it (`pgraft_get_worker_state() = 'running'`).
#[pg_extern]
fn pgraft_get_worker_state() -> &'static str {
    shmem::read().state.as_str()
}

/// Whether a majority of the members is reachable from here.
#[pg_extern]
fn pgraft_quorum_met() -> bool {
    status().member.quorum_active
}

/// Whether the Raft leader keeps a majority without member `node_id`: true only on the
/// leader, when the voters it heard from within the election timeout, itself included and
/// `node_id` not counted, are more than half of all voters. The rejoin helper asks the
/// primary this before it stops a standby to rewind it, so that a rewind never costs the
/// cluster its majority (etcd's strict reconfiguration check asks the same before it
/// removes a member).
#[pg_extern]
fn pgraft_can_spare(node_id: i32) -> bool {
    let id = node_id_arg("pgraft_can_spare", node_id);
    let st = status();
    if st.member.role != pgraft_core::Role::Leader {
        return false;
    }
    let timeout = crate::gucs::effective_timing(&st.cluster_config).election_timeout_ms as i64;
    let heard = st
        .member
        .voters
        .iter()
        .filter(|v| **v != id && heard_ms(&st, **v).is_some_and(|ms| ms <= timeout))
        .count();
    heard > st.member.voters.len() / 2
}

/// Hands leadership to another voter; returns once it leads. With failover on, the Raft
/// leader's server is the primary, so this is a planned switchover: writes stop on the old
/// primary, it shuts down cleanly while its standbys receive everything it wrote, the
/// target is promoted, and the old primary rejoins as its standby. It returns once the
/// target is the recorded primary and leads; the primary refuses (and this times out) while
/// the target's standby does not stream from it.
#[pg_extern]
fn pgraft_transfer_leadership(target_node_id: Option<i32>) -> bool {
    const F: &str = "pgraft_transfer_leadership";
    let to = node_id_arg(F, bridge::required(F, "target_node_id", target_node_id));
    let st = status();
    if !st.member.voters.contains(&to) {
        invalid(format!("cannot transfer leadership to node {to}: it is not a voting member of the cluster"));
    }
    let failover = crate::gucs::effective_failover(&st.cluster_config);
    if let Some(from) = st.ha.primary.as_ref().map(|p| p.node).filter(|p| failover && *p != to) {
        // Failover acts only where another voter runs a standby of the primary's cluster;
        // elsewhere (a plain cluster with failover switched on) this is a Raft transfer.
        let cluster = st
            .ha
            .primary_system_id()
            .map_or(0, |sid| st.member.voters.iter().filter(|v| st.ha.runs_cluster(**v, sid)).count());
        if cluster >= pgraft_core::ha::FAILOVER_VOTERS {
            return switchover(&st, from, to);
        }
    }
    matches!(bridge::raft(Request::TransferLeader { to }), Response::Reached(_))
}

/// How long a switchover may take before `pgraft_transfer_leadership` says it did not
/// complete (statement_timeout ends it sooner).
const SWITCHOVER_WAIT: std::time::Duration =
    std::time::Duration::from_millis(pgraft_core::ha::SWITCHOVER_TIMEOUT_MS as u64 + 5_000);

fn switchover(st: &StatusReport, from: u64, to: u64) -> bool {
    use pgraft_core::ha::{HaCommand, SwitchoverRecord};
    let primary_sid = st.ha.servers.get(&from).map(|s| s.system_id);
    if st.ha.servers.get(&to).map(|s| s.system_id) != primary_sid {
        invalid(format!(
            "cannot switch over to node {to}: its server is not a standby of node {from}'s (not registered with the primary's system identifier)"
        ));
    }
    let term = st.member.term;
    let time_ms = crate::worker::now_ms();
    let body = Body::Ha(HaCommand::Switchover(SwitchoverRecord { from, to, term, time_ms }));
    match bridge::raft(Request::ProposeInTerm { term, body }) {
        Response::Applied { outcome: pgraft_core::state_machine::Outcome::Ha(Some(why)), .. } => {
            invalid(format!("switchover to node {to} refused: {why}"))
        }
        Response::Applied { .. } => {}
        other => invalid(format!("unexpected answer to a switchover: {other:?}")),
    }
    let deadline = std::time::Instant::now() + SWITCHOVER_WAIT;
    loop {
        let st = status();
        if st.ha.primary.as_ref().is_some_and(|p| p.node == to) && st.member.leader_id == to {
            pgrx::log!("pgraft: switchover from node {from} to node {to} done");
            return true;
        }
        if std::time::Instant::now() >= deadline {
            bridge::fail(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("switchover from node {from} to node {to} did not complete within {SWITCHOVER_WAIT:?}"),
                Some("The primary refuses a switchover to a member whose standby does not stream from it; pgraft.ha_status shows what each member waits for. The old primary takes writes again once the switchover times out."),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        pgrx::check_for_interrupts!();
    }
}

/// A round trip through the log: proposes a no-op entry and waits until it is applied.
#[pg_extern]
fn pgraft_test() -> bool {
    matches!(bridge::raft(Request::Propose(Body::Probe)), Response::Applied { .. })
}

/// The worker's full status.
pub fn status() -> StatusReport {
    match bridge::call(IpcRequest::Status) {
        IpcResponse::Status(s) => *s,
        other => bridge::unexpected(other),
    }
}

fn split_address(a: &str) -> (String, i32) {
    match a.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().unwrap_or(0)),
        None => (a.to_string(), 0),
    }
}

/// Milliseconds since this member last heard from `id` (0 for itself).
pub fn heard_ms(st: &StatusReport, id: u64) -> Option<i64> {
    if id == st.member.id {
        return Some(0);
    }
    st.member.last_heard_ms.get(&id).map(|t| (st.now_ms - t).max(0))
}

/// A duration as the documents print it: `0.042s`.
pub fn seconds(ms: i64) -> String {
    format!("{:.3}s", ms as f64 / 1000.0)
}

/// One member as this member sees it: the columns both status functions share.
struct MemberView<'a> {
    id: u64,
    host: String,
    port: i32,
    progress: Option<&'a pgraft_core::member::PeerProgress>,
    is_me: bool,
    heard_ms: Option<i64>,
}

fn members(st: &StatusReport) -> Vec<MemberView<'_>> {
    st.addresses
        .iter()
        .map(|(id, addr)| {
            let (host, port) = split_address(addr);
            MemberView {
                id: *id,
                host,
                port,
                progress: st.member.progress.iter().find(|p| p.id == *id),
                is_me: *id == st.member.id,
                heard_ms: heard_ms(st, *id),
            }
        })
        .collect()
}

/// Where clients reach member `id`'s PostgreSQL server: as the member registered it for
/// failover, or for this member its own port at its Raft host. `None` for another member
/// that registered nothing (failover off): nobody here knows its port.
fn client_url(st: &StatusReport, id: u64, raft_host: &str) -> Option<String> {
    if let Some(s) = st.ha.servers.get(&id) {
        return Some(format!("postgresql://{}:{}", s.host, s.port));
    }
    // SAFETY: PostPortNumber is set by the postmaster before any backend runs and never
    // changes afterwards.
    let port = unsafe { pgrx::pg_sys::PostPortNumber };
    (id == st.member.id).then(|| format!("postgresql://{raft_host}:{port}"))
}

/// One row per member. `replication_lag_bytes` is the bytes of log the member is missing,
/// as the leader knows it (NULL on a follower, and for a member whose missing entries were
/// compacted: it is sent a snapshot); `lag_entries` of `pgraft_log_get_replication_status()`
/// counts the entries.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_get_nodes() -> TableIterator<
    'static,
    (
        name!(node_id, i32),
        name!(address, String),
        name!(port, i32),
        name!(is_leader, bool),
        name!(state, String),
        name!(match_index, Option<i64>),
        name!(commit_index, Option<i64>),
        name!(last_heartbeat_ms, Option<i64>),
        name!(replication_lag_bytes, Option<i64>),
        name!(is_learner, bool),
        name!(client_url, Option<String>),
    ),
> {
    let st = status();
    let m = &st.member;
    let rows: Vec<_> = members(&st)
        .into_iter()
        .map(|v| {
            let match_index = v.progress.map(|p| p.matched as i64).or(v.is_me.then_some(m.last_index as i64));
            let commit = if v.is_me {
                Some(m.commit as i64)
            } else {
                v.progress.map(|p| m.commit.min(p.matched) as i64)
            };
            // Bytes of log the member is missing, as the leader knows it (None elsewhere,
            // and for a member whose missing entries were compacted: it needs a snapshot).
            let lag = v.progress.and_then(|p| p.lag_bytes).map(|b| b as i64);
            let is_leader = v.id == m.leader_id;
            // From the configuration: `state` says "Unreachable" of a learner that is.
            let learner = m.learners.contains(&v.id);
            let client_url = client_url(&st, v.id, &v.host);
            (
                v.id as i32,
                v.host,
                v.port,
                is_leader,
                state_of(v.id, m),
                match_index,
                commit,
                v.heard_ms,
                lag,
                learner,
                client_url,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// A member's state as seen from here.
pub fn state_of(id: u64, m: &pgraft_core::MemberStatus) -> String {
    if id == m.id {
        return m.role.as_str().to_string();
    }
    if id == m.leader_id {
        "Leader".into()
    } else if m.unreachable.contains(&id) {
        // Only a leader tracks every member: one it has not heard from within an election
        // timeout is shown as such rather than as a healthy follower.
        "Unreachable".into()
    } else if m.learners.contains(&id) {
        "Learner".into()
    } else {
        "Follower".into()
    }
}

/// One row per member with the cluster's status, as every document shows it. `term`,
/// `commit_index`, `last_log_index`, `messages_processed` and `elections_triggered` are each
/// member's own: this member's figures on its row; on a leader, a follower's term (if it
/// answered within the election timeout), the commit index it was told and the last index
/// it holds as far as the leader knows; on a follower, the leader's term. NULL where this
/// member does not know (nobody tells another member its counters). `current_term`,
/// `leader_id` and `num_nodes` are the cluster's as this member sees it.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_get_cluster_status() -> TableIterator<
    'static,
    (
        name!(node_id, i32),
        name!(address, String),
        name!(port, i32),
        name!(is_leader, bool),
        name!(state, String),
        name!(term, Option<i64>),
        name!(commit_index, Option<i64>),
        name!(last_log_index, Option<i64>),
        name!(last_heartbeat, Option<String>),
        name!(current_term, i64),
        name!(leader_id, i32),
        name!(num_nodes, i32),
        name!(messages_processed, Option<i64>),
        name!(elections_triggered, Option<i64>),
    ),
> {
    let st = status();
    let m = &st.member;
    let n = st.addresses.len() as i32;
    let rows: Vec<_> = members(&st)
        .into_iter()
        .map(|v| {
            let own = |x: u64| v.is_me.then_some(x as i64);
            let term = if v.is_me || v.id == m.leader_id || v.progress.is_some_and(|p| p.recent_active) {
                Some(m.term as i64)
            } else {
                None
            };
            let commit = own(m.commit).or(v.progress.map(|p| m.commit.min(p.matched) as i64));
            let last = own(m.last_index).or(v.progress.map(|p| p.matched as i64));
            (
                v.id as i32,
                v.host,
                v.port,
                v.id == m.leader_id,
                state_of(v.id, m),
                term,
                commit,
                last,
                v.heard_ms.map(seconds),
                m.term as i64,
                m.leader_id as i32,
                n,
                own(m.counters.messages_received + m.counters.messages_sent),
                own(m.counters.elections),
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn init_founds_a_cluster_this_member_leads() {
        init_and_lead();
        assert!(yes("SELECT pgraft_init()"), "pgraft_init() again is harmless");
        assert_eq!(one::<String>("SELECT pgraft_get_worker_state()"), "running");
        let term = one::<i64>("SELECT pgraft_get_term()");
        assert!(term >= 1);
        assert_eq!(one::<i32>("SELECT pgraft_get_leader()"), 1);
        assert!(yes("SELECT pgraft_is_leader()"));
        assert!(yes("SELECT pgraft_quorum_met()"));
        // One member, as both status functions show it.
        assert_eq!(
            one::<String>(
                "SELECT format('%s %s %s %s %s %s', node_id, address, port, is_leader, state, last_heartbeat_ms) \
                 FROM pgraft_get_nodes()"
            ),
            "1 127.0.0.1 45901 t Leader 0"
        );
        // Clients reach this member's server at its own port.
        assert!(yes("SELECT bool_and(client_url LIKE 'postgresql://%:' || current_setting('port') \
                     AND client_urls = client_url) \
               FROM pgraft_get_nodes() JOIN pgraft.member_list ON id = node_id"));
        assert_eq!(
            one::<String>(
                "SELECT format('%s %s %s %s %s %s %s', node_id, state, term = current_term, leader_id, num_nodes, \
                        last_heartbeat, commit_index <= last_log_index) FROM pgraft_get_cluster_status()"
            ),
            "1 Leader t 1 1 0.000s t"
        );
        assert_eq!(one::<i64>("SELECT term FROM pgraft_get_cluster_status()"), term);
        assert!(one::<i64>("SELECT elections_triggered FROM pgraft_get_cluster_status()") >= 1);
    }

    #[pg_test]
    fn a_learner_is_labelled_from_the_configuration_even_when_unreachable() {
        init_and_lead();
        // Node 2 never runs: added, it stays a learner catching up, unreachable.
        assert!(yes("SELECT pgraft_add_node(2, '127.0.0.1', 45999)"));
        assert!(yes("SELECT is_learner AND NOT is_leader FROM pgraft_get_nodes() WHERE node_id = 2"));
        assert!(yes("SELECT NOT is_learner FROM pgraft_get_nodes() WHERE node_id = 1"));
        assert!(yes("SELECT \"IsLearner\" FROM pgraft.member_details WHERE \"ID\" = 2"));
        assert!(yes("SELECT \"isLearner\" FROM pgraft.cluster_health WHERE member = 2"));
        assert!(yes("SELECT NOT \"isLearner\" FROM pgraft.endpoint_status"), "this member is a voter");
        assert!(yes("SELECT pgraft_remove_node(2)"));
        assert_eq!(one::<i64>("SELECT count(*) FROM pgraft_get_nodes()"), 1);
    }

    #[pg_test]
    fn the_test_function_goes_through_the_log() {
        init_and_lead();
        let before = one::<i64>("SELECT last_applied FROM pgraft_log_get_stats()");
        assert!(yes("SELECT pgraft_test()"));
        let after = one::<i64>("SELECT last_applied FROM pgraft_log_get_stats()");
        assert!(after > before, "applied index {before} -> {after}");
        assert_eq!(
            one::<String>(
                "SELECT operation_type FROM pgraft.log_index_mapping ORDER BY raft_index DESC LIMIT 1"
            ),
            "probe"
        );
    }

    #[pg_test]
    fn membership_arguments_are_checked() {
        init_and_lead();
        for port in [0, -1, 65536, 70000] {
            assert_error(
                &format!("SELECT pgraft_add_node(5, '127.0.0.1', {port})"),
                "22023",
                &format!("invalid port {port}: a port is 1 to 65535"),
            );
        }
        for id in [0, -1] {
            assert_error(
                &format!("SELECT pgraft_add_node({id}, '127.0.0.1', 7005)"),
                "22023",
                &format!("pgraft_add_node: node id {id} is out of range; node ids are 1 or greater"),
            );
        }
        assert_error(
            "SELECT pgraft_add_node(5, 'not a host!', 7005)",
            "22023",
            "address \"not a host!\" is neither an IP address nor a host name",
        );
        assert_error("SELECT pgraft_add_node(5, '', 7005)", "22023", "address");
        // A NULL argument is an error naming it, and does nothing.
        for (sql, arg) in [
            ("SELECT pgraft_add_node(NULL, '127.0.0.1', 7005)", "pgraft_add_node: node_id"),
            ("SELECT pgraft_add_node(5, NULL, 7005)", "pgraft_add_node: address"),
            ("SELECT pgraft_add_node(5, '127.0.0.1', NULL)", "pgraft_add_node: port"),
            ("SELECT pgraft_remove_node(NULL)", "pgraft_remove_node: node_id"),
            ("SELECT pgraft_transfer_leadership(NULL)", "pgraft_transfer_leadership: target_node_id"),
            ("SELECT pgraft_set_config(NULL, '1s')", "pgraft_set_config: name"),
            ("SELECT pgraft_set_config('heartbeat_interval', NULL)", "pgraft_set_config: value"),
            ("SELECT pgraft_set_debug(NULL)", "pgraft_set_debug: enabled"),
            ("SELECT pgraft_replicate_entry(NULL)", "pgraft_replicate_entry: entry_data"),
            ("SELECT pgraft_log_append(NULL, 'x')", "pgraft_log_append: term"),
            ("SELECT pgraft_log_append(1, NULL)", "pgraft_log_append: data"),
            ("SELECT pgraft_log_commit(NULL)", "pgraft_log_commit: index"),
            ("SELECT pgraft_log_apply(NULL)", "pgraft_log_apply: index"),
        ] {
            assert_error(sql, "22004", &format!("{arg} must not be NULL"));
        }
        // The reference's pattern no longer passes silently.
        assert_error(
            "DO $$ BEGIN IF NOT pgraft_replicate_entry(NULL) THEN RAISE 'not replicated'; END IF; END $$",
            "22004",
            "entry_data must not be NULL",
        );
        assert_error("SELECT pgraft_remove_node(42)", "22023", "node 42 is not a member of the cluster");
        assert_error("SELECT pgraft_remove_node(0)", "22023", "node id 0 is out of range");
        assert_error(
            "SELECT pgraft_transfer_leadership(9)",
            "22023",
            "cannot transfer leadership to node 9: it is not a voting member of the cluster",
        );
        assert_error("SELECT pgraft_transfer_leadership(-3)", "22023", "node id -3 is out of range");
        // Nothing of that changed the cluster.
        assert_eq!(one::<i64>("SELECT count(*) FROM pgraft_get_nodes()"), 1);
        // Handing leadership to the leader itself is done at once.
        assert!(yes("SELECT pgraft_transfer_leadership(1)"));
        assert!(yes("SELECT pgraft_is_leader()"));
    }

    #[pg_test]
    fn changing_the_cluster_is_not_for_everyone() {
        init_and_lead();
        Spi::run("CREATE ROLE pgraft_t_reader").expect("create role");
        let changes = [
            "pgraft_init()",
            "pgraft_add_node(integer, text, integer)",
            "pgraft_remove_node(integer)",
            "pgraft_transfer_leadership(integer)",
            "pgraft_replicate_entry(text)",
            "pgraft_log_append(bigint, text)",
            "pgraft_kv_put(text, text)",
            "pgraft_kv_put(text, jsonb)",
            "pgraft_kv_delete(text)",
            "pgraft_kv_delete_prefix(text)",
            "pgraft_kv_cas(text, text, text)",
            "pgraft_kv_compact()",
            "pgraft_kv_reset()",
            "pgraft_set_config(text, text)",
            "pgraft_save_config()",
            "pgraft_set_debug(boolean)",
            "pgraft_test()",
        ];
        for f in changes {
            assert!(
                !yes(&format!("SELECT has_function_privilege('pgraft_t_reader', '{f}', 'EXECUTE')")),
                "PUBLIC may run {f}"
            );
        }
        let reads = [
            "pgraft_get_cluster_status()",
            "pgraft_get_nodes()",
            "pgraft_is_leader()",
            "pgraft_get_leader()",
            "pgraft_kv_get(text)",
            "pgraft_kv_list_keys()",
            "pgraft_log_get_stats()",
            "pgraft_health_check()",
            "pgraft_get_config()",
        ];
        for f in reads {
            assert!(
                yes(&format!("SELECT has_function_privilege('pgraft_t_reader', '{f}', 'EXECUTE')")),
                "PUBLIC may not run {f}"
            );
        }
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgraft%' AND rolname <> 'pgraft_t_reader'"
            ),
            0
        );
    }

    #[pg_test(error = "permission denied for function pgraft_kv_put")]
    fn a_role_without_the_grant_cannot_write() {
        init_and_lead();
        Spi::run("CREATE ROLE pgraft_t_writer").expect("create role");
        Spi::run("SET LOCAL ROLE pgraft_t_writer").expect("set role");
        assert_eq!(maybe::<String>("SELECT pgraft_kv_get('pgraft_t_none')"), None, "reads are public");
        Spi::run("SELECT pgraft_kv_put('k', 'v')").expect("raises");
    }
}
