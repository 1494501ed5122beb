//! How many standbys acknowledge each commit (`k` of `synchronous_standby_names = ANY k
//! (...)`), and the record of it in the log that failover decisions rely on.
//!
//! The primary's `k` decides how many standbys must have let go of it before another
//! server may be promoted: every set of `k` acknowledging standbys among the `s` must
//! contain a detached one, so `s - k + 1` of them must report. With `k = floor(n/2)` (every
//! commit on a majority of servers) that is the detach quorum `ceil(n/2)`.
//!
//! - `strict` keeps `k = floor(n/2)` whatever happens: commits wait while fewer standbys
//!   stream.
//! - `on` lowers `k` to the number of standbys streaming when fewer than `floor(n/2)` do,
//!   but not below 1 while one does, so commits go on and a failover still loses nothing
//!   (it then needs more reports); with no standby streaming at all it falls back to
//!   asynchronous commits (`k = 0`), and then no other server is promoted in its place
//!   (none is proven to hold its commits): the cluster waits for its own server to come
//!   back, as Patroni's synchronous mode promotes only a synchronous standby. Turning
//!   synchronous mode off is the operator's way to accept the loss instead.
//! - `off` is `k = 0`.
//!
//! A lower `k` is recorded in the log (`ha_sync`) before the primary uses it, and a higher
//! one only after the primary has used it for a while, so a decision that reads the record
//! never assumes more acknowledgements than a commit had.

use super::ha_state::{HaCommand, PrimaryRecord, SyncRecord};
use super::planner::{application_name, sync_count, Observation, SyncMode};

/// How long the primary uses a higher `k` before it records it (every process, the
/// walsenders releasing commits among them, has reloaded by then).
pub const RAISE_AFTER_MS: i64 = 1_000;

/// The `k` a decision about `rec` assumes: the record of `rec`'s own, else what a primary
/// uses from its promotion (`floor(n/2)`), or 0 where this member runs asynchronously.
pub fn recorded_k(o: &Observation<'_>, rec: &PrimaryRecord, voters: usize) -> usize {
    match o.ha.sync.as_ref().filter(|s| s.node == rec.node && s.term >= rec.term) {
        Some(s) => s.k as usize,
        None if o.sync == SyncMode::Off => 0,
        None => sync_count(voters),
    }
}

/// How many standbys must have let go of a primary with `k` before a promotion, among
/// `standbys`; 0 when `k` is 0 (nothing to intersect: the asynchronous rules apply).
pub fn reports_needed(standbys: usize, k: usize) -> usize {
    if k == 0 {
        0
    } else {
        standbys.saturating_sub(k) + 1
    }
}

/// `synchronous_standby_names` for `k` of the `standbys`.
pub fn names(k: usize, standbys: &[u64]) -> String {
    if k == 0 || standbys.is_empty() {
        return String::new();
    }
    let list: Vec<String> = standbys.iter().map(|v| application_name(*v)).collect();
    format!("ANY {} ({})", k.min(standbys.len()), list.join(", "))
}

/// The `k` a primary wants now, for `voters` cluster voters.
pub fn wanted_k(o: &Observation<'_>, voters: usize) -> usize {
    let full = sync_count(voters);
    match o.sync {
        SyncMode::Off => 0,
        SyncMode::Strict => full,
        SyncMode::On => match o.streaming.as_ref().map(Vec::len) {
            Some(n) if n < full => n,
            _ => full,
        },
    }
}

/// What a leading, open primary writes and records: `synchronous_standby_names`, and an
/// `ha_sync` entry when the record must change. `standbys` are the other cluster voters.
pub fn plan_primary_sync(
    o: &Observation<'_>,
    rec: &PrimaryRecord,
    standbys: &[u64],
) -> (String, Option<HaCommand>) {
    let voters = standbys.len() + 1;
    let wanted = wanted_k(o, voters);
    // Without a record of its own, the k a primary uses from its promotion.
    let recorded =
        o.ha.sync
            .as_ref()
            .filter(|s| s.node == rec.node && s.term >= rec.term)
            .map_or(sync_count(voters), |s| s.k as usize);
    let record = |k: usize| {
        HaCommand::Sync(SyncRecord { node: o.raft.me, term: o.raft.term, k: k as u32, time_ms: o.now_ms })
    };
    if wanted < recorded {
        // Lower: on record first; until then the primary keeps the higher k.
        return (names(recorded, standbys), Some(record(wanted)));
    }
    if wanted > recorded {
        // Higher: used first; recorded once the primary has used it for a while.
        let used =
            o.server.sync_k.is_some_and(|(k, since)| k == wanted && o.now_ms - since >= RAISE_AFTER_MS);
        return (names(wanted, standbys), used.then(|| record(wanted)));
    }
    (names(wanted, standbys), None)
}

#[cfg(test)]
mod tests {
    use super::super::ha_state::{DetachReport, HaState};
    use super::super::planner::tests::{decisions, ha_with_primary, obs, raft, server};
    use super::super::planner::{fencing_bound_ms, plan, RaftView, Receiving, ServerView};
    use super::*;

    fn primary_plan(
        ha: &HaState,
        sync: SyncMode,
        streaming: Option<usize>,
        sync_k: Option<(usize, i64)>,
    ) -> crate::ha::Plan {
        let mut o = obs(ha, raft(1, 1, 2), ServerView { sync_k, ..server(false, 100, Receiving::Nothing) });
        o.sync = sync;
        // Members 2, 3, ...: as many as stream.
        o.streaming = streaming.map(|n| (2..).take(n).collect());
        o.now_ms = 10_000;
        plan(&o)
    }

    fn sync_entries(p: &crate::ha::Plan) -> Vec<u32> {
        p.propose.iter().filter_map(|c| if let HaCommand::Sync(s) = c { Some(s.k) } else { None }).collect()
    }

    #[test]
    fn on_lowers_k_on_record_first_and_raises_it_in_use_first() {
        let mut ha = ha_with_primary(1, 2);
        // Both standbys stream: ANY 1, nothing to record.
        let p = primary_plan(&ha, SyncMode::On, Some(2), None);
        assert_eq!(
            (p.sync_names.as_deref(), sync_entries(&p)),
            (Some("ANY 1 (pgraft_node_2, pgraft_node_3)"), vec![])
        );
        // None streams: k = 0 goes on record while ANY 1 stays in use.
        let p = primary_plan(&ha, SyncMode::On, Some(0), Some((1, 0)));
        assert_eq!(
            (p.sync_names.as_deref(), sync_entries(&p)),
            (Some("ANY 1 (pgraft_node_2, pgraft_node_3)"), vec![0])
        );
        let rec = SyncRecord { node: 1, term: 2, k: 0, time_ms: 0 };
        ha.apply(&HaCommand::Sync(rec), 2).expect("sync");
        let p = primary_plan(&ha, SyncMode::On, Some(0), Some((1, 0)));
        assert_eq!((p.sync_names.as_deref(), sync_entries(&p)), (Some(""), vec![]));
        // Back: ANY 1 in use first, on record once used for a second.
        let p = primary_plan(&ha, SyncMode::On, Some(2), Some((0, 0)));
        assert_eq!(
            (p.sync_names.as_deref(), sync_entries(&p)),
            (Some("ANY 1 (pgraft_node_2, pgraft_node_3)"), vec![])
        );
        let p = primary_plan(&ha, SyncMode::On, Some(2), Some((1, 9_500)));
        assert_eq!(sync_entries(&p), Vec::<u32>::new(), "used for half a second");
        let p = primary_plan(&ha, SyncMode::On, Some(2), Some((1, 8_000)));
        assert_eq!(sync_entries(&p), vec![1]);
        // strict never lowers; off records 0.
        let ha = ha_with_primary(1, 2);
        let p = primary_plan(&ha, SyncMode::Strict, Some(0), Some((1, 0)));
        assert_eq!(
            (p.sync_names.as_deref(), sync_entries(&p)),
            (Some("ANY 1 (pgraft_node_2, pgraft_node_3)"), vec![])
        );
        let p = primary_plan(&ha, SyncMode::Off, Some(2), Some((1, 0)));
        assert_eq!(sync_entries(&p), vec![0]);
    }

    #[test]
    fn a_lower_recorded_k_needs_more_reports_and_k_0_waits_out_the_fencing_bound() {
        assert_eq!(
            (reports_needed(2, 1), reports_needed(4, 2), reports_needed(4, 1), reports_needed(4, 0)),
            (2, 3, 4, 0)
        );
        for n in 2..=9usize {
            let s = n - 1;
            for k in 1..=s {
                // Any k acknowledging standbys meet the reporters.
                assert!(reports_needed(s, k) + k > s, "n = {n}, k = {k}");
            }
        }
        // Recorded k = 0 (no standby streamed): with synchronous_mode = on nobody else is
        // promoted (candidate.rs); turned off, a new leader waits out the fencing bound.
        let mut ha = ha_with_primary(1, 2);
        ha.apply(&HaCommand::Sync(SyncRecord { node: 1, term: 2, k: 0, time_ms: 0 }), 2).expect("sync");
        for n in [2, 3] {
            let report = DetachReport { term: 3, from: 1, timeline: 1, received: 100, replayed: 100 };
            ha.apply(&HaCommand::Detached { node: n, report }, 3).expect("report");
        }
        let mut o = obs(
            &ha,
            RaftView { led_ms: fencing_bound_ms(1000), ..raft(3, 3, 3) },
            server(true, 100, Receiving::Nothing),
        );
        assert!(decisions(&plan(&o)).is_empty());
        o.sync = SyncMode::Off;
        o.raft.led_ms = 100;
        assert!(decisions(&plan(&o)).is_empty());
        o.raft.led_ms = fencing_bound_ms(1000);
        assert_eq!(decisions(&plan(&o)).len(), 1);
        // A record of another primary (or none) is not this one's: k = floor(n/2).
        let other = ha_with_primary(2, 2);
        assert_eq!(
            recorded_k(
                &obs(&other, raft(3, 3, 3), server(true, 1, Receiving::Nothing)),
                other.primary.as_ref().expect("p"),
                3
            ),
            1
        );
    }
}
