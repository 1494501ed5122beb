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
//!
//! The record also names the standbys (`S`), because membership changes move them: a
//! decision on record `(k, S)` waits for `|S| - k + 1` reports from members of `S`, which
//! meets every `k` of `S`. A configuration `(k', S')` in use is covered by that record when
//! each of its acknowledging sets keeps `k` members of `S`: `k' >= k + |S' \ S|`. The
//! primary uses a configuration only while the record covers it: a covered one at once
//! (recorded after a while, like a higher `k`), another only after a record covering both
//! it and the one in use (`min(k, k')` of `S ∪ S'`) is applied. So removing a standby's
//! member, or the primary's, never lets a decision count fewer reports than the commits
//! had acknowledgements, and a member added is named only once the record says so.

use super::ha_state::{HaCommand, PrimaryRecord, SyncRecord};
use super::planner::{application_name, ha_voters, member_of, sync_count, Observation, SyncMode};

/// How long the primary uses a configuration the record covers before it records it
/// (every process, the walsenders releasing commits among them, has reloaded by then).
pub const RAISE_AFTER_MS: i64 = 1_000;

/// `ANY k (S)`: every commit waits for `k` of the standbys `S`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncConfig {
    /// How many acknowledge each commit; 0: asynchronous.
    pub k: usize,
    /// The members named, ascending (empty when `k` is 0).
    pub standbys: Vec<u64>,
}

impl SyncConfig {
    /// `k` of `standbys`, as PostgreSQL applies it: never more than are named, and no
    /// list at all when `k` is 0.
    pub fn new(k: usize, standbys: &[u64]) -> Self {
        let mut standbys = standbys.to_vec();
        standbys.sort_unstable();
        standbys.dedup();
        let k = k.min(standbys.len());
        if k == 0 {
            standbys.clear();
        }
        SyncConfig { k, standbys }
    }

    /// The configuration a `synchronous_standby_names` value written by the worker stands
    /// for (`None`: not of the `ANY k (pgraft_node_N, ...)` form).
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        if t.is_empty() {
            return Some(Self::default());
        }
        let rest = t.strip_prefix("ANY ").or_else(|| t.strip_prefix("any "))?;
        let (k, list) = rest.split_once('(')?;
        let k: usize = k.trim().parse().ok()?;
        let list = list.trim_end().strip_suffix(')')?;
        let standbys: Option<Vec<u64>> = list.split(',').map(|n| member_of(n.trim())).collect();
        Some(Self::new(k, &standbys?))
    }

    /// The `synchronous_standby_names` value.
    pub fn names(&self) -> String {
        if self.k == 0 {
            return String::new();
        }
        let list: Vec<String> = self.standbys.iter().map(|v| application_name(*v)).collect();
        format!("ANY {} ({})", self.k, list.join(", "))
    }

    /// Whether every set of standbys that acknowledges a commit under `self` meets every
    /// detach quorum a decision on record `rec` waits for.
    pub fn covered_by(&self, rec: &SyncConfig) -> bool {
        let outside = self.standbys.iter().filter(|s| !rec.standbys.contains(s)).count();
        rec.k == 0 || self.k >= rec.k + outside
    }

    /// A configuration that covers both `self` and `other`.
    fn covering(&self, other: &SyncConfig) -> SyncConfig {
        let mut all = self.standbys.clone();
        all.extend(&other.standbys);
        SyncConfig::new(self.k.min(other.k), &all)
    }

    /// How many reports from members of the set a promotion waits for; 0 when `k` is 0
    /// (the asynchronous rules apply).
    pub fn reports_needed(&self) -> usize {
        reports_needed(self.standbys.len(), self.k)
    }
}

/// The configuration a decision about `rec` assumes: the record of `rec`'s own, else what
/// a primary uses from its promotion when none was recorded (`unrecorded`), or nothing
/// where this member runs asynchronously.
pub fn recorded(o: &Observation<'_>, rec: &PrimaryRecord) -> SyncConfig {
    match on_record(o, rec) {
        Some(cfg) => cfg,
        None if o.sync == SyncMode::Off => SyncConfig::default(),
        None => unrecorded(o, rec),
    }
}

/// The record of `rec`'s own, if there is one (a record written before the set was
/// recorded named every other voter).
fn on_record(o: &Observation<'_>, rec: &PrimaryRecord) -> Option<SyncConfig> {
    let s = o.ha.sync.as_ref().filter(|s| s.node == rec.node && s.term >= rec.term)?;
    Some(match &s.standbys {
        Some(set) => SyncConfig::new(s.k as usize, set),
        None => SyncConfig::new(s.k as usize, &other_voters(o, rec)),
    })
}

/// A primary with no record of its own (the first one, or one promoted before promotions
/// recorded it): `floor(n/2)` of every other voter.
fn unrecorded(o: &Observation<'_>, rec: &PrimaryRecord) -> SyncConfig {
    let others = other_voters(o, rec);
    SyncConfig::new(sync_count(others.len() + 1), &others)
}

/// The cluster voters but `rec`'s member: the standbys a primary of `rec` names.
fn other_voters(o: &Observation<'_>, rec: &PrimaryRecord) -> Vec<u64> {
    ha_voters(o).into_iter().filter(|v| *v != rec.node).collect()
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

/// The configuration a primary of this member wants now, with `standbys` the other
/// cluster voters.
pub fn wanted(o: &Observation<'_>, standbys: &[u64]) -> SyncConfig {
    let full = sync_count(standbys.len() + 1);
    let k = match o.sync {
        SyncMode::Off => 0,
        SyncMode::Strict => full,
        SyncMode::On => match o.streaming.as_ref().map(Vec::len) {
            Some(n) if n < full => n,
            _ => full,
        },
    };
    SyncConfig::new(k, standbys)
}

/// The record a candidate proposes with its promotion: the configuration its server will
/// use from the promotion on (`floor(n/2)` of the other cluster voters, or none).
pub fn at_promotion(o: &Observation<'_>, standbys: &[u64]) -> HaCommand {
    let k = if o.sync == SyncMode::Off { 0 } else { sync_count(standbys.len() + 1) };
    record(o, &SyncConfig::new(k, standbys))
}

/// `synchronous_standby_names` for the promotion of `rec` (this member's server): the
/// configuration its candidate recorded, or, if that record was lost, `floor(n/2)` of the
/// other cluster voters, which is what decisions assume without a record.
pub fn at_promotion_names(o: &Observation<'_>, rec: &PrimaryRecord) -> String {
    match on_record(o, rec) {
        Some(cfg) => cfg.names(),
        None => {
            let others = other_voters(o, rec);
            let k = if o.sync == SyncMode::Off { 0 } else { sync_count(others.len() + 1) };
            SyncConfig::new(k, &others).names()
        }
    }
}

/// The `ha_sync` entry for `cfg`, by this member in its current term.
fn record(o: &Observation<'_>, cfg: &SyncConfig) -> HaCommand {
    HaCommand::SyncSet(SyncRecord {
        node: o.raft.me,
        term: o.raft.term,
        k: cfg.k as u32,
        time_ms: o.now_ms,
        standbys: Some(cfg.standbys.clone()),
    })
}

/// What a leading, open primary writes and records: `synchronous_standby_names`, and an
/// `ha_sync` entry when the record must change. `standbys` are the other cluster voters.
pub fn plan_primary_sync(
    o: &Observation<'_>,
    rec: &PrimaryRecord,
    standbys: &[u64],
) -> (String, Option<HaCommand>) {
    let wanted = wanted(o, standbys);
    // Without a record, what the others assume (even where this member runs asynchronously:
    // a `k` of 0 must be on record before anyone relies on it).
    let recorded = on_record(o, rec).unwrap_or_else(|| unrecorded(o, rec));
    let explicit =
        o.ha.sync.as_ref().is_some_and(|s| s.node == rec.node && s.term >= rec.term && s.standbys.is_some());
    if !explicit {
        // What is assumed without a record (or with one from before sets were recorded)
        // follows the voters of the moment: a membership change would move it at once.
        // Put it on record as it stands, before anything else changes.
        return (recorded.names(), Some(record(o, &recorded)));
    }
    if wanted == recorded {
        return (wanted.names(), None);
    }
    if wanted.covered_by(&recorded) {
        // Safe now; recorded once a commit acknowledged under it would be: every process
        // has used it (so every commit acknowledged under the one before lies below the
        // position sampled then), and `k` of its standbys have flushed past that position.
        // A decision on the new record then meets one of them, which holds those commits.
        let settled =
            o.server.sync_in_use.as_ref().and_then(|u| (u.cfg == wanted).then_some(u.settled_at)?);
        let held = settled.is_some_and(|at| {
            wanted.standbys.iter().filter(|s| o.flushed.get(s).is_some_and(|f| *f >= at)).count() >= wanted.k
        });
        return (wanted.names(), held.then(|| record(o, &wanted)));
    }
    // Not safe yet: on record first, a configuration covering what is in use and what is
    // wanted; until then the recorded one stays in use.
    (recorded.names(), Some(record(o, &recorded.covering(&wanted))))
}

#[cfg(test)]
mod tests {
    use super::super::ha_state::{DetachReport, HaState};
    use super::super::planner::tests::{decisions, ha_with_primary, obs, raft, server};
    use super::super::planner::{fencing_bound_ms, plan, InUse, RaftView, Receiving, ServerView};
    use super::*;

    fn primary_plan(
        ha: &HaState,
        sync: SyncMode,
        streaming: Option<usize>,
        sync_k: Option<(usize, i64)>,
    ) -> crate::ha::Plan {
        // Settled a second after it came into use, at the primary's position (100), which
        // every streaming standby has flushed.
        let sync_in_use = sync_k.map(|(k, since_ms)| InUse {
            cfg: SyncConfig::new(k, &[2, 3]),
            since_ms,
            settled_at: (10_000 - since_ms >= RAISE_AFTER_MS).then_some(100),
        });
        let mut o =
            obs(ha, raft(1, 1, 2), ServerView { sync_in_use, ..server(false, 100, Receiving::Nothing) });
        o.sync = sync;
        // Members 2, 3, ...: as many as stream.
        o.streaming = streaming.map(|n| (2..).take(n).collect());
        o.flushed = o.streaming.iter().flatten().map(|n| (*n, 100)).collect();
        o.now_ms = 10_000;
        plan(&o)
    }

    fn sync_entries(p: &crate::ha::Plan) -> Vec<u32> {
        p.propose
            .iter()
            .filter_map(|c| if let HaCommand::SyncSet(s) = c { Some(s.k) } else { None })
            .collect()
    }

    #[test]
    fn a_primary_without_a_record_of_its_set_records_what_is_assumed_first() {
        let ha = ha_with_primary(1, 2);
        let p = primary_plan(&ha, SyncMode::On, Some(2), None);
        assert_eq!(
            (p.sync_names.as_deref(), sync_entries(&p)),
            (Some("ANY 1 (pgraft_node_2, pgraft_node_3)"), vec![1])
        );
        // A record from before sets were recorded is made explicit the same way.
        let mut legacy = ha_with_primary(1, 2);
        let old = super::super::ha_state::SyncRecordV1 { node: 1, term: 2, k: 1, time_ms: 0 };
        legacy.apply(&HaCommand::Sync(old), 2).expect("sync");
        let p = primary_plan(&legacy, SyncMode::On, Some(2), None);
        let set = p.propose.iter().find_map(|c| match c {
            HaCommand::SyncSet(s) => s.standbys.clone(),
            _ => None,
        });
        assert_eq!(set, Some(vec![2, 3]));
    }

    #[test]
    fn on_lowers_k_on_record_first_and_raises_it_in_use_first() {
        let mut ha = ha_with_primary(1, 2);
        record(&mut ha, 1, 2, 1, &[2, 3]);
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
        let rec = SyncRecord { node: 1, term: 2, k: 0, time_ms: 0, standbys: Some(vec![]) };
        ha.apply(&HaCommand::SyncSet(rec), 2).expect("sync");
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
        let mut ha = ha_with_primary(1, 2);
        record(&mut ha, 1, 2, 1, &[2, 3]);
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
        ha.apply(
            &HaCommand::SyncSet(SyncRecord { node: 1, term: 2, k: 0, time_ms: 0, standbys: Some(vec![]) }),
            2,
        )
        .expect("sync");
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
        // A record of another primary (or none) is not this one's: k = floor(n/2) of the
        // other voters.
        let other = ha_with_primary(2, 2);
        assert_eq!(
            recorded(
                &obs(&other, raft(3, 3, 3), server(true, 1, Receiving::Nothing)),
                other.primary.as_ref().expect("p")
            ),
            SyncConfig::new(1, &[1, 3])
        );
    }

    /// Members 1..=5 registered, node `primary` the primary of `term`.
    fn five(primary: u64, term: u64) -> HaState {
        let mut ha = ha_with_primary(primary, term);
        for n in 4..=5 {
            let rec = super::super::ha_state::ServerRecord {
                host: "127.0.0.1".into(),
                port: 5432,
                system_id: 7,
                primary: false,
            };
            ha.apply(&HaCommand::Server { node: n, server: rec }, term).expect("server");
        }
        ha
    }

    fn record(ha: &mut HaState, node: u64, term: u64, k: u32, standbys: &[u64]) {
        let rec = SyncRecord { node, term, k, time_ms: 0, standbys: Some(standbys.to_vec()) };
        ha.apply(&HaCommand::SyncSet(rec), term).expect("sync");
    }

    fn subsets(set: &[u64], size: usize) -> Vec<Vec<u64>> {
        (0u32..1 << set.len())
            .filter(|m| m.count_ones() as usize == size)
            .map(|m| set.iter().enumerate().filter(|(i, _)| m & (1 << i) != 0).map(|(_, v)| *v).collect())
            .collect()
    }

    #[test]
    fn covered_means_every_acknowledging_set_meets_every_detach_quorum_of_the_record() {
        let members = [2u64, 3, 4, 5, 6];
        let all: Vec<Vec<u64>> = (0..=members.len()).flat_map(|n| subsets(&members, n)).collect();
        for s_rec in &all {
            for k_rec in 0..=s_rec.len() {
                let rec = SyncConfig::new(k_rec, s_rec);
                for s_use in &all {
                    for k_use in 0..=s_use.len() {
                        let used = SyncConfig::new(k_use, s_use);
                        // By brute force: every k_use of s_use meets every reporting set a
                        // decision on `rec` accepts (k = 0: nothing is assumed).
                        let safe = rec.k == 0
                            || subsets(&used.standbys, used.k).iter().all(|acks| {
                                subsets(&rec.standbys, rec.reports_needed())
                                    .iter()
                                    .all(|reports| acks.iter().any(|a| reports.contains(a)))
                            });
                        assert_eq!(used.covered_by(&rec), safe, "{used:?} under {rec:?}");
                        assert!(rec.covering(&used).k <= rec.k.min(used.k.max(rec.k)));
                        assert!(
                            rec.covered_by(&rec.covering(&used)) && used.covered_by(&rec.covering(&used))
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn names_parse_back() {
        for cfg in [SyncConfig::new(2, &[4, 2, 3]), SyncConfig::new(0, &[2]), SyncConfig::new(5, &[3])] {
            assert_eq!(SyncConfig::parse(&cfg.names()), Some(cfg.clone()), "{}", cfg.names());
        }
        assert_eq!(SyncConfig::parse("FIRST 1 (a)"), None);
        assert_eq!(SyncConfig::parse("ANY 1 (walreceiver)"), None);
        assert_eq!(SyncConfig::parse("  "), Some(SyncConfig::default()));
    }

    #[test]
    fn a_standby_removed_still_counts_until_the_primary_names_the_others_alone() {
        // Five voters, primary 1 with ANY 2 (2, 3, 4, 5) on record; member 5 is removed.
        let mut ha = five(1, 2);
        record(&mut ha, 1, 2, 2, &[2, 3, 4, 5]);
        let four =
            |me: u64, leader: u64, term: u64| RaftView { voters: vec![1, 2, 3, 4], ..raft(me, leader, term) };
        // The primary names 2, 3, 4 at once (covered: a subset) and records it after a while.
        let mut o = obs(&ha, four(1, 1, 2), server(false, 100, Receiving::Nothing));
        o.now_ms = 10_000;
        let (names, rec) = plan_primary_sync(&o, ha.primary.as_ref().expect("p"), &[2, 3, 4]);
        assert_eq!((names.as_str(), rec), ("ANY 2 (pgraft_node_2, pgraft_node_3, pgraft_node_4)", None));
        o.server.sync_in_use =
            Some(InUse { cfg: SyncConfig::new(2, &[2, 3, 4]), since_ms: 0, settled_at: Some(100) });
        o.flushed = [(2, 100), (3, 100), (4, 100)].into();
        let (_, rec) = plan_primary_sync(&o, ha.primary.as_ref().expect("p"), &[2, 3, 4]);
        assert!(
            matches!(rec, Some(HaCommand::SyncSet(SyncRecord { k: 2, ref standbys, .. })) if standbys.as_deref() == Some(&[2, 3, 4][..]))
        );

        // Before that record, the primary dies: a commit acknowledged by 2 and 5 must not
        // be lost, so 3 and 4 are not enough (the old rule, 2 of the 3 voters, was).
        for n in [3, 4] {
            let report = DetachReport { term: 3, from: 1, timeline: 1, received: 100, replayed: 100 };
            ha.apply(&HaCommand::Detached { node: n, report }, 3).expect("report");
        }
        let p = plan(&obs(&ha, four(3, 3, 3), server(true, 100, Receiving::Nothing)));
        assert!(decisions(&p).is_empty(), "{p:?}");
        assert!(p.waiting.as_deref().is_some_and(|w| w.contains("2 of the 3")), "{p:?}");
        let report = DetachReport { term: 3, from: 1, timeline: 1, received: 120, replayed: 120 };
        ha.apply(&HaCommand::Detached { node: 2, report }, 3).expect("report");
        let p = plan(&obs(&ha, four(3, 3, 3), server(true, 100, Receiving::Nothing)));
        assert_eq!(p.transfer, Some(2), "node 2 holds the commit: {p:?}");
    }

    #[test]
    fn a_primary_whose_member_was_removed_is_replaced_only_with_every_report_its_commits_need() {
        // Three voters, primary 1 with ANY 1 (2, 3); member 1 is removed: voters 2 and 3.
        let mut ha = ha_with_primary(1, 2);
        record(&mut ha, 1, 2, 1, &[2, 3]);
        let two = |me: u64, leader: u64, term: u64| RaftView { voters: vec![2, 3], ..raft(me, leader, term) };
        let report = DetachReport { term: 3, from: 1, timeline: 1, received: 100, replayed: 100 };
        ha.apply(&HaCommand::Detached { node: 3, report }, 3).expect("report");
        let p = plan(&obs(&ha, two(3, 3, 3), server(true, 100, Receiving::Nothing)));
        assert!(decisions(&p).is_empty(), "node 2 may hold a commit node 3 lacks: {p:?}");
        ha.apply(&HaCommand::Detached { node: 2, report }, 3).expect("report");
        let p = plan(&obs(&ha, two(3, 3, 3), server(true, 100, Receiving::Nothing)));
        assert!(matches!(decisions(&p)[..], [HaCommand::Primary(PrimaryRecord { node: 3, .. })]), "{p:?}");
    }

    #[test]
    fn a_member_added_is_named_once_the_record_covers_it() {
        let mut ha = five(1, 2);
        record(&mut ha, 1, 2, 2, &[2, 3, 4]);
        let five_voters = RaftView { voters: vec![1, 2, 3, 4, 5], ..raft(1, 1, 2) };
        let mut o = obs(&ha, five_voters.clone(), server(false, 100, Receiving::Nothing));
        o.streaming = Some(vec![2, 3, 4, 5]);
        // ANY 2 of four would let 5 and one other acknowledge without meeting 3 reports of
        // 2, 3, 4: recorded first, the old list kept meanwhile.
        let (names, rec) = plan_primary_sync(&o, ha.primary.as_ref().expect("p"), &[2, 3, 4, 5]);
        assert_eq!(names, "ANY 2 (pgraft_node_2, pgraft_node_3, pgraft_node_4)");
        assert!(
            matches!(rec, Some(HaCommand::SyncSet(SyncRecord { k: 2, ref standbys, .. })) if standbys.as_deref() == Some(&[2, 3, 4, 5][..]))
        );
        record(&mut ha, 1, 2, 2, &[2, 3, 4, 5]);
        let mut o = obs(&ha, five_voters, server(false, 100, Receiving::Nothing));
        o.streaming = Some(vec![2, 3, 4, 5]);
        let (names, rec) = plan_primary_sync(&o, ha.primary.as_ref().expect("p"), &[2, 3, 4, 5]);
        assert_eq!(
            (names.as_str(), rec),
            ("ANY 2 (pgraft_node_2, pgraft_node_3, pgraft_node_4, pgraft_node_5)", None)
        );
    }

    #[test]
    fn a_removed_member_fences_a_primary_and_leaves_a_standby_alone() {
        let ha = ha_with_primary(1, 2);
        let removed =
            RaftView { voters: vec![2, 3], removed: true, leader: false, leader_id: 0, ..raft(1, 0, 3) };
        let p = plan(&obs(&ha, removed.clone(), server(false, 100, Receiving::Nothing)));
        assert!(p.fence.is_some() && p.gate == crate::ha::Gate::Fenced && p.propose.is_empty(), "{p:?}");
        let p = plan(&obs(&ha, removed, server(true, 100, Receiving::From(2))));
        assert!(p.fence.is_none() && p.gate == crate::ha::Gate::Open && p.propose.is_empty(), "{p:?}");
        assert_eq!((p.upstream, p.promote), (None, false));
    }

    #[test]
    fn a_raised_configuration_is_recorded_only_once_k_of_its_standbys_hold_what_came_before() {
        // Five voters; `on` had lowered k to 1; all four stream again: ANY 2 is wanted.
        let mut ha = five(1, 2);
        record(&mut ha, 1, 2, 1, &[2, 3, 4, 5]);
        let mut o = obs(
            &ha,
            RaftView { voters: vec![1, 2, 3, 4, 5], ..raft(1, 1, 2) },
            server(false, 100, Receiving::Nothing),
        );
        o.now_ms = 10_000;
        o.streaming = Some(vec![2, 3, 4, 5]);
        let used = InUse { cfg: SyncConfig::new(2, &[2, 3, 4, 5]), since_ms: 0, settled_at: Some(100) };
        o.server.sync_in_use = Some(used);
        // Used for long enough, but only node 2 has flushed past the position where it
        // settled: a commit acknowledged by node 3 alone before then would be missed by a
        // decision that needs 3 reports of 4 (2, 4, 5). Not recorded.
        o.flushed = [(2, 100), (3, 60), (4, 60), (5, 60)].into();
        let (names, rec) = plan_primary_sync(&o, ha.primary.as_ref().expect("p"), &[2, 3, 4, 5]);
        assert_eq!(
            (names.as_str(), rec),
            ("ANY 2 (pgraft_node_2, pgraft_node_3, pgraft_node_4, pgraft_node_5)", None)
        );
        // A second one has: recorded.
        o.flushed.insert(4, 100);
        let (_, rec) = plan_primary_sync(&o, ha.primary.as_ref().expect("p"), &[2, 3, 4, 5]);
        assert!(matches!(rec, Some(HaCommand::SyncSet(SyncRecord { k: 2, .. }))), "{rec:?}");
        // Not settled yet (in use for less than a second): not recorded whatever is flushed.
        o.server.sync_in_use.as_mut().expect("in use").settled_at = None;
        let (_, rec) = plan_primary_sync(&o, ha.primary.as_ref().expect("p"), &[2, 3, 4, 5]);
        assert_eq!(rec, None);
    }
}
