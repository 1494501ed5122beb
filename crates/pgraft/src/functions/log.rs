//! The replicated log: raw entries, commit and apply waits, statistics, replication.

use pgraft_core::command::Body;
use pgraft_core::{Consistency, Read, Request, Response};
use pgrx::prelude::*;

use super::cluster::{heard_ms, seconds, state_of, status};
use crate::bridge::{self, invalid};
use crate::protocol::{IpcRequest, IpcResponse};

/// Replicates an entry through Raft; returns once it is committed and applied here.
#[pg_extern]
fn pgraft_replicate_entry(entry_data: Option<&str>) -> bool {
    let entry_data = bridge::required("pgraft_replicate_entry", "entry_data", entry_data);
    matches!(
        bridge::raft(Request::Propose(Body::Raw(entry_data.as_bytes().to_vec()))),
        Response::Applied { .. }
    )
}

/// Appends an entry in `term`, which must be this member's current term (checked by the
/// member itself, so a term change cannot slip in between); returns once the entry is in
/// the log (committed and applied here).
#[pg_extern]
fn pgraft_log_append(term: Option<i64>, data: Option<&str>) -> bool {
    let term = bridge::required("pgraft_log_append", "term", term);
    let data = bridge::required("pgraft_log_append", "data", data);
    let Ok(term) = u64::try_from(term) else {
        invalid(format!("pgraft_log_append: term {term} is out of range; terms start at 0"));
    };
    let body = Body::Raw(data.as_bytes().to_vec());
    matches!(bridge::raft(Request::ProposeInTerm { term, body }), Response::Applied { .. })
}

fn index_arg(what: &str, index: i64) -> u64 {
    if index < 1 {
        invalid(format!("{what}: log index {index} is out of range; indexes start at 1"));
    }
    index as u64
}

/// Waits until log index `index` is committed on this member.
#[pg_extern]
fn pgraft_log_commit(index: Option<i64>) -> bool {
    let i = index_arg("pgraft_log_commit", bridge::required("pgraft_log_commit", "index", index));
    matches!(bridge::raft(Request::WaitCommitted(i)), Response::Reached(_))
}

/// Waits until log index `index` is applied on this member.
#[pg_extern]
fn pgraft_log_apply(index: Option<i64>) -> bool {
    let i = index_arg("pgraft_log_apply", bridge::required("pgraft_log_apply", "index", index));
    matches!(bridge::raft(Request::WaitApplied(i)), Response::Reached(_))
}

/// The data of a replicated entry, or a JSON description of any other entry; NULL when
/// the log no longer (or not yet) holds the index.
#[pg_extern]
fn pgraft_log_get_entry(index: i64) -> Option<String> {
    let i = index_arg("pgraft_log_get_entry", index);
    match bridge::call(IpcRequest::Entry { index: i }) {
        IpcResponse::Entry(e) => e.map(|e| e.text),
        other => bridge::unexpected(other),
    }
}

/// Waits until this member has applied everything the leader had committed when called.
#[pg_extern]
fn pgraft_log_sync_with_leader() -> bool {
    matches!(bridge::raft(Request::Read(Read::Barrier, Consistency::Linearizable)), Response::Reached(_))
}

/// Statistics of this member's log: `log_size` is the bytes of the entries in it (as
/// encoded), `disk_usage_mb` the size of its segment files (`raftlog/`, which also hold the
/// hard state; compaction deletes the segments it empties; snapshot images are apart).
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_log_get_stats() -> TableIterator<
    'static,
    (
        name!(log_size, i64),
        name!(last_index, i64),
        name!(commit_index, i64),
        name!(last_applied, i64),
        name!(first_index, i64),
        name!(total_entries, i64),
        name!(disk_usage_mb, f64),
    ),
> {
    let st = status();
    let m = &st.member;
    let total = (m.last_index + 1).saturating_sub(m.first_index);
    TableIterator::once((
        m.log_bytes as i64,
        m.last_index as i64,
        m.commit as i64,
        m.applied as i64,
        m.first_index as i64,
        total as i64,
        (st.log_disk_bytes as f64 / (1024.0 * 1024.0) * 1000.0).round() / 1000.0,
    ))
}

/// Replication of every other member, as this member (the leader) sees it. On a follower
/// only the leader's row is known.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_log_get_replication_status() -> TableIterator<
    'static,
    (
        name!(node_id, i32),
        name!(match_index, Option<i64>),
        name!(next_index, Option<i64>),
        name!(is_replicating, bool),
        name!(last_heartbeat, Option<String>),
        name!(commit_index, i64),
        name!(lag_entries, Option<i64>),
        name!(state, String),
    ),
> {
    let st = status();
    let m = &st.member;
    let heard = |id: u64| heard_ms(&st, id).map(seconds);
    let rows: Vec<_> = if !m.progress.is_empty() {
        m.progress
            .iter()
            .filter(|p| p.id != m.id)
            .map(|p| {
                let reachable = !m.unreachable.contains(&p.id);
                let state = if !reachable {
                    "stalled".to_string()
                } else if p.state == "replicate" {
                    "replicating".to_string()
                } else {
                    p.state.clone()
                };
                (
                    p.id as i32,
                    Some(p.matched as i64),
                    Some(p.next as i64),
                    reachable && p.state == "replicate",
                    heard(p.id),
                    m.commit as i64,
                    Some(m.last_index.saturating_sub(p.matched) as i64),
                    state,
                )
            })
            .collect()
    } else {
        st.addresses
            .keys()
            .filter(|id| **id != m.id && **id == m.leader_id)
            .map(|id| (*id as i32, None, None, true, heard(*id), m.commit as i64, None, state_of(*id, m)))
            .collect()
    };
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn replicated_entries_are_in_the_log_and_the_history() {
        init_and_lead();
        assert!(yes("SELECT pgraft_replicate_entry('{\"op\": \"t7\"}')"));
        let index = one::<i64>("SELECT raft_index FROM pgraft.log_index_mapping WHERE operation_type = 'replicate_entry' ORDER BY raft_index DESC LIMIT 1");
        assert_eq!(one::<String>(&format!("SELECT pgraft_log_get_entry({index})")), "{\"op\": \"t7\"}");
        assert!(yes(&format!(
            "SELECT operation_data = '{{\"op\": \"t7\"}}'::jsonb FROM pgraft.log_index_mapping WHERE raft_index = {index}"
        )));
        assert!(yes(&format!(
            "SELECT raft_term = pgraft_get_term() AND applied_at IS NOT NULL FROM pgraft.applied_entries WHERE raft_index = {index}"
        )));
        // Data that is not JSON is replicated as it is.
        assert!(yes("SELECT pgraft_replicate_entry('plain text, not JSON')"));
        let last = one::<i64>("SELECT max(raft_index) FROM pgraft.applied_entries");
        assert_eq!(one::<String>(&format!("SELECT pgraft_log_get_entry({last})")), "plain text, not JSON");
        // Other entries are described as JSON.
        assert!(yes("SELECT pgraft_kv_put('t7/k', 'v')"));
        let kv = one::<i64>("SELECT max(raft_index) FROM pgraft.applied_entries");
        assert!(yes(&format!("SELECT pgraft_log_get_entry({kv})::jsonb ->> 'key' = 't7/k'")));
    }

    #[pg_test]
    fn append_checks_the_term() {
        init_and_lead();
        let term = one::<i64>("SELECT pgraft_get_term()");
        assert!(yes(&format!("SELECT pgraft_log_append({term}, 'appended in term {term}')")));
        let last = one::<i64>("SELECT max(raft_index) FROM pgraft.applied_entries");
        assert_eq!(
            one::<String>(&format!("SELECT pgraft_log_get_entry({last})")),
            format!("appended in term {term}")
        );
        for bad in [term + 1, term - 1, 0] {
            assert_error(
                &format!("SELECT pgraft_log_append({bad}, 'x')"),
                "22023",
                &format!("invalid argument: term {bad} is not the current term {term}"),
            );
        }
        assert_error("SELECT pgraft_log_append(-5, 'x')", "22023", "term -5 is out of range");
    }

    #[pg_test]
    fn commit_and_apply_waits() {
        init_and_lead();
        assert!(yes("SELECT pgraft_test()"));
        let last = one::<i64>("SELECT last_index FROM pgraft_log_get_stats()");
        assert!(yes(&format!("SELECT pgraft_log_commit({last})")));
        assert!(yes(&format!("SELECT pgraft_log_apply({last})")));
        assert!(yes("SELECT pgraft_log_commit(1) AND pgraft_log_apply(1)"), "long done");
        for f in ["pgraft_log_commit", "pgraft_log_apply", "pgraft_log_get_entry"] {
            for bad in [0, -1] {
                assert_error(
                    &format!("SELECT {f}({bad})"),
                    "22023",
                    &format!("{f}: log index {bad} is out of range; indexes start at 1"),
                );
            }
        }
        // An index far ahead is never reached here: the wait ends at statement_timeout
        // with pgraft's reason, not a bare cancel.
        Spi::run("SET LOCAL statement_timeout = '700ms'").expect("set");
        let ahead = last + 1_000_000;
        // (The budget is what is left of statement_timeout since the statement started.)
        assert_error(
            &format!("SELECT pgraft_log_commit({ahead})"),
            "57014",
            "timed out waiting for the cluster",
        );
        assert_error(
            &format!("SELECT pgraft_log_apply({ahead})"),
            "57014",
            "timed out waiting for the cluster",
        );
        assert_eq!(maybe::<String>(&format!("SELECT pgraft_log_get_entry({ahead})")), None);
        Spi::run("SET LOCAL statement_timeout = 0").expect("reset");
        assert!(yes("SELECT pgraft_log_sync_with_leader()"));
    }

    #[pg_test]
    fn stats_and_replication_status_of_one_member() {
        init_and_lead();
        assert!(yes("SELECT pgraft_test()"));
        assert!(yes(
            "SELECT first_index >= 1 AND first_index <= last_index + 1 AND last_applied <= commit_index \
                    AND commit_index <= last_index AND total_entries = last_index - first_index + 1 \
                    AND log_size > 0 AND disk_usage_mb >= 0 FROM pgraft_log_get_stats()"
        ));
        eventually("SELECT commit_index = (SELECT commit_index FROM pgraft_shared_state()) FROM pgraft_log_get_stats()");
        assert_eq!(one::<i64>("SELECT count(*) FROM pgraft_log_get_replication_status()"), 0, "no peers");
        assert!(yes(
            "SELECT first_index = (SELECT first_index FROM pgraft_log_get_stats()) FROM pgraft_log_status"
        ));
        // log_size is the log's entries in bytes; disk_usage_mb its segment files on disk.
        let before = one::<i64>("SELECT log_size FROM pgraft_log_get_stats()");
        assert!(yes("SELECT pgraft_kv_put('log/big', repeat('x', 100000))"));
        let after = one::<i64>("SELECT log_size FROM pgraft_log_get_stats()");
        assert!((100_000..200_000).contains(&(after - before)), "log_size {before} then {after}");
        assert!(yes("SELECT disk_usage_mb > 0.09 FROM pgraft_log_get_stats()"));
    }
}
