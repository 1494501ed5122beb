//! The failover decision: when the leader whose server is a standby may name a new primary,
//! and which server that is.
//!
//! Two kinds of evidence say that the recorded primary can no longer get a commit
//! acknowledged, and where its acknowledged commits are:
//!
//! - **A detach quorum**: `ceil(n/2)` standbys let go of it in this term. Every set of
//!   standbys that can acknowledge a commit (`floor(n/2)` of the `n - 1`) contains one of
//!   them, and the most advanced of them holds every acknowledged commit.
//! - **Its own report**: fenced, its server shut down cleanly and the rejoin helper started
//!   it again as a standby (no other server had become the primary). Running in recovery,
//!   with no promotion asked for, it cannot acknowledge anything, and every commit it ever
//!   acknowledged precedes its shutdown checkpoint, whose position it reports.
//!
//! The second matters when the fenced primary's member is needed for a Raft majority: a
//! fence (or a switchover) with one of three members down would otherwise leave the cluster
//! with neither a leader nor a primary, since the fenced server's member stops with it and
//! the one remaining standby is no detach quorum.

use super::ha_state::{DetachReport, HaCommand, PrimaryRecord};
use super::planner::{detach_quorum, fencing_bound_ms, ha_voters, Observation, Plan, SyncMode};
use super::sync_set::{self, recorded};

/// Proposes this member's report, unless one of this term about the same primary and at
/// least as far along is applied.
pub(super) fn report(o: &Observation<'_>, report: DetachReport, p: &mut Plan) {
    let reported = o.ha.reports.get(&o.raft.me);
    if reported.is_none_or(|old| {
        old.term != report.term || old.from != report.from || old.position() < report.position()
    }) {
        p.propose.push(HaCommand::Detached { node: o.raft.me, report });
    }
}

/// The recorded primary's own server runs as a standby in a later term than its record.
pub(super) fn plan_former_primary(o: &Observation<'_>, rec: &PrimaryRecord, p: &mut Plan) {
    let r = &o.raft;
    if r.leader_id == 0 {
        p.waiting = Some("no Raft leader".into());
        return;
    }
    // `primary_conninfo` is left as it is: a member that just started may still be
    // applying the log, with a record older than the primary its server already streams
    // from, and re-pointing it would cut that stream.
    if o.server.promoting {
        p.waiting = Some("a promotion asked for earlier is still under way".into());
        return;
    }
    let Some((timeline, lsn)) = o.server.stood_down else {
        // Without the helper's record of a clean shutdown, the WAL still to replay may hold
        // acknowledged commits: its position says nothing yet.
        p.waiting = Some(format!(
            "this server, primary on record since term {}, runs as a standby the rejoin helper did not start; \
             the other members decide",
            rec.term
        ));
        return;
    };
    report(o, DetachReport { term: r.term, from: r.me, timeline, received: lsn, replayed: lsn }, p);
    if r.leader {
        plan_candidate(o, rec, p);
    }
}

/// How long replay must stand still short of the received position before a candidate
/// takes the rest for a record that arrived in part and promotes without it.
pub const REPLAY_STALL_MS: u64 = 2_000;

/// In asynchronous mode with a lag limit: how far `mine` (the most advanced report) is
/// behind the primary's last published position, if more than the limit. Synchronous mode
/// has no limit: the detach quorum already proves no acknowledged commit is missing, so a
/// limit could only hold back a failover that loses nothing.
fn too_far_behind(o: &Observation<'_>, rec: &PrimaryRecord, mine: DetachReport) -> Option<u64> {
    if o.sync != SyncMode::Off || o.max_lag == 0 || rec.node == o.raft.me {
        return None;
    }
    // What the primary last published, and at least where it was promoted: a primary that
    // has published nothing since (or only in an earlier term as primary) is not unbounded.
    let published = o.ha.positions.get(&rec.node).copied().unwrap_or(0).max(rec.lsn);
    // The primary writes on the timeline its promotion started (`rec.timeline + 1`; a
    // bootstrap primary stays on `rec.timeline`), and so do the standbys that follow it: a
    // report on that timeline is behind it like any other. Only a later one was promoted
    // since, with no lag to speak of. (Comparing with `rec.timeline` alone let every
    // standby that had followed a promoted primary through: the 30-minute asynchronous
    // database torture lost 13 MB written by a primary whose replication links were cut.)
    if mine.timeline > rec.timeline + 1 {
        return None;
    }
    let (_, have) = mine.position();
    published.checked_sub(have).filter(|behind| *behind > o.max_lag)
}

/// The leader's server is a standby and the recorded primary is another member's, or its
/// own from an earlier term: fail over.
pub(super) fn plan_candidate(o: &Observation<'_>, rec: &PrimaryRecord, p: &mut Plan) {
    let r = &o.raft;
    // As many standbys as it takes to meet every set of k that could have acknowledged a
    // commit (k as the primary recorded it); asynchronous (k = 0): a detach quorum to
    // pick the most advanced from, and the fencing bound below.
    // The standbys counted are those of the record: a member removed since may still hold
    // commits it acknowledged, and its report can no longer arrive, so the others must
    // make up the count (see `sync_set.rs`).
    let cfg = recorded(o, rec);
    let k = cfg.k;
    let needed = match cfg.reports_needed() {
        0 => detach_quorum(r.voters.len()),
        n => n,
    };
    let reports: Vec<(u64, DetachReport)> =
        o.ha.reports_for(r.term, rec.node)
            .filter(|(n, _)| r.voters.contains(n))
            .map(|(n, rep)| (n, *rep))
            .collect();
    let stood_down = reports.iter().any(|(n, _)| *n == rec.node);
    if o.sync == SyncMode::On && k == 0 && !stood_down && rec.node != r.me {
        // `on` fell back to asynchronous commits (no standby streamed): no other server is
        // proven to hold what the primary acknowledged since. Only its own server may be
        // the primary again (it stands down as a standby and reports where it stopped, see
        // `plan_former_primary`); turning synchronous mode off accepts the loss.
        p.waiting = Some(format!(
            "node {} committed asynchronously (synchronous_mode = on, no standby streamed): no other server \
             is proven to hold its commits, so none is promoted until it is back \
             (pgraft.synchronous_mode = off on the members fails over with the asynchronous rules instead)",
            rec.node
        ));
        return;
    }
    let standbys =
        reports.iter().filter(|(n, _)| *n != rec.node && (k == 0 || cfg.standbys.contains(n))).count();
    if !stood_down && standbys < needed {
        p.waiting = Some(format!(
            "{standbys} of the {needed} standbys needed have let go of node {} in term {}",
            rec.node, r.term
        ));
        return;
    }
    let Some(mine) = reports.iter().find(|(n, _)| *n == r.me).map(|(_, rep)| *rep) else {
        p.waiting = Some("this member's own report is not applied yet".into());
        return;
    };
    // The most advanced server wins; this one on a tie.
    if let Some((best, rep)) = reports.iter().max_by_key(|(n, rep)| (rep.position(), *n == r.me)) {
        if *best != r.me && rep.position() > mine.position() {
            p.transfer = Some(*best);
            p.waiting = Some(format!("node {best} holds more WAL; handing it leadership"));
            return;
        }
    }
    // On a tie, a server that can serve: this one's cannot, and another holds as much
    // WAL (so every acknowledged commit too). A less advanced one never gets it.
    if o.health.is_some() {
        let healthy_peer = reports.iter().find(|(n, rep)| {
            *n != r.me && rep.position() >= mine.position() && !o.ha.unhealthy.contains_key(n)
        });
        if let Some((n, _)) = healthy_peer {
            p.transfer = Some(*n);
            p.waiting = Some(format!(
                "this server cannot serve and node {n} holds as much WAL; handing it leadership"
            ));
            return;
        }
    }
    if let Some(behind) = too_far_behind(o, rec, mine) {
        p.waiting = Some(format!(
            "asynchronous mode: the most advanced standby is {behind} bytes behind node {}'s last published position, \
             more than pgraft.maximum_lag_on_failover ({} bytes): not promoting",
            rec.node, o.max_lag
        ));
        return;
    }
    if (o.sync == SyncMode::Off || k == 0)
        && !stood_down
        && r.led_ms < fencing_bound_ms(r.election_timeout_ms)
    {
        p.waiting = Some(format!(
            "asynchronous mode: waiting out the fencing bound ({} ms) before promoting",
            fencing_bound_ms(r.election_timeout_ms)
        ));
        return;
    }
    // What was received but is not replayed yet is replayed first; but WAL received up to
    // the middle of a record (a link cut mid-stream, the primary then lost) can never be
    // replayed, and promotion drops it: once replay has stood still for a while, go on. A
    // commit the primary acknowledged in synchronous mode was flushed whole by the
    // standbys counted, so it never lies in such a tail (t17 met one that blocked a
    // failover for good).
    if o.server.replayed < o.server.received && o.server.replay_still_ms < REPLAY_STALL_MS {
        p.upstream = Some(None);
        p.waiting = Some("replaying the WAL received before promoting".into());
        return;
    }
    p.upstream = Some(None);
    let reason = if rec.node == r.me {
        format!("this server stood down as a standby after term {} and leads again", rec.term)
    } else if stood_down {
        format!("failover from node {} (which stood down as a standby)", rec.node)
    } else {
        format!("failover from node {}", rec.node)
    };
    p.propose.push(HaCommand::Primary(PrimaryRecord {
        node: r.me,
        term: r.term,
        timeline: o.server.timeline,
        lsn: o.server.replayed,
        reason,
        time_ms: o.now_ms,
    }));
    // With it, the configuration its server will use: the promotion writes exactly this.
    let others: Vec<u64> = ha_voters(o).into_iter().filter(|v| *v != r.me).collect();
    p.propose.push(sync_set::at_promotion(o, &others));
}

#[cfg(test)]
mod tests {
    use super::super::ha_state::{HaState, Lsn, SyncRecord};
    use super::super::planner::tests::{decisions, ha_with_primary, obs, raft, server};
    use super::super::planner::{fencing_bound_ms, plan, Gate, RaftView, Receiving, ServerView, SyncMode};
    use super::*;

    fn with_reports(mut ha: HaState, term: u64, reports: &[(u64, Lsn)]) -> HaState {
        for (n, lsn) in reports {
            let report = DetachReport { term, from: 1, timeline: 1, received: *lsn, replayed: *lsn };
            ha.apply(&HaCommand::Detached { node: *n, report }, term).expect("report");
        }
        ha
    }

    #[test]
    fn the_candidate_waits_for_a_detach_quorum_then_promotes_or_hands_over() {
        let ha = with_reports(ha_with_primary(1, 2), 3, &[(3, 100)]);
        let p = plan(&obs(&ha, raft(3, 3, 3), server(true, 100, Receiving::Nothing)));
        assert!(decisions(&p).is_empty(), "1 of 2 reports");
        assert!(p.waiting.as_deref().is_some_and(|w| w.contains("1 of the 2")), "{p:?}");

        // Node 2 has more WAL: it gets leadership instead.
        let ha2 = with_reports(ha.clone(), 3, &[(2, 150)]);
        let p = plan(&obs(&ha2, raft(3, 3, 3), server(true, 100, Receiving::Nothing)));
        assert_eq!(p.transfer, Some(2));
        assert!(decisions(&p).is_empty());

        // Node 3 is as advanced as anyone: it records itself, then promotes.
        let ha3 = with_reports(ha, 3, &[(2, 100)]);
        let p = plan(&obs(&ha3, raft(3, 3, 3), server(true, 100, Receiving::Nothing)));
        assert!(matches!(decisions(&p)[..], [HaCommand::Primary(PrimaryRecord { node: 3, term: 3, .. })]));
        assert!(!p.promote);
        // With it, the synchronous configuration its server will use.
        let sync =
            p.propose.iter().find_map(|c| if let HaCommand::SyncSet(s) = c { Some(s.clone()) } else { None });
        assert_eq!(
            sync.as_ref().map(|s| (s.node, s.term, s.k, s.standbys.clone())),
            Some((3, 3, 1, Some(vec![1, 2])))
        );
        let mut named = ha3.clone();
        let rec = PrimaryRecord { node: 3, term: 3, timeline: 1, lsn: 100, reason: "t".into(), time_ms: 0 };
        named.apply(&HaCommand::Primary(rec), 3).expect("primary");
        let p = plan(&obs(&named, raft(3, 3, 3), server(true, 100, Receiving::Nothing)));
        assert!(p.promote);
        assert_eq!(p.sync_names.as_deref(), Some("ANY 1 (pgraft_node_1, pgraft_node_2)"));
        // The promotion writes what was recorded (here: the record says node 1 alone).
        let mut one = named.clone();
        let rec = SyncRecord { node: 3, term: 3, k: 1, time_ms: 0, standbys: Some(vec![1]) };
        one.apply(&HaCommand::SyncSet(rec), 3).expect("sync");
        let p = plan(&obs(&one, raft(3, 3, 3), server(true, 100, Receiving::Nothing)));
        assert_eq!(p.sync_names.as_deref(), Some("ANY 1 (pgraft_node_1)"));
        // Not the leader of that term any more: no promotion.
        let p = plan(&obs(&named, raft(3, 2, 4), server(true, 100, Receiving::Nothing)));
        assert!(!p.promote);
    }

    #[test]
    fn an_unhealthy_candidate_yields_only_to_a_healthy_server_as_advanced() {
        let ha = with_reports(ha_with_primary(1, 2), 3, &[(2, 100), (3, 100)]);
        let mut o = obs(&ha, raft(3, 3, 3), server(true, 100, Receiving::Nothing));
        o.health = Some("a commit has waited 6 s".into());
        let p = plan(&o);
        assert_eq!(p.transfer, Some(2));
        let primary = |p: &Plan| {
            decisions(p).iter().any(|d| matches!(d, HaCommand::Primary(PrimaryRecord { node: 3, .. })))
        };
        assert!(!primary(&p), "{p:?}");
        // Node 2 is less advanced: it could lack acknowledged commits; node 3 goes on.
        let behind = with_reports(ha_with_primary(1, 2), 3, &[(2, 90), (3, 100)]);
        let mut o = obs(&behind, raft(3, 3, 3), server(true, 100, Receiving::Nothing));
        o.health = Some("a commit has waited 6 s".into());
        let p = plan(&o);
        assert_eq!(p.transfer, None);
        assert!(primary(&p), "{p:?}");
    }

    #[test]
    fn replay_catches_up_before_the_decision() {
        let ha = with_reports(ha_with_primary(1, 2), 3, &[(2, 100), (3, 120)]);
        let behind = ServerView { replayed: 90, ..server(true, 120, Receiving::Nothing) };
        let p = plan(&obs(&ha, raft(3, 3, 3), behind.clone()));
        assert!(decisions(&p).is_empty());
        assert!(p.waiting.as_deref().is_some_and(|w| w.contains("replaying")));
        // Replay that stands still short of what was received is stuck before a record
        // that arrived in part: promoted.
        let stuck = ServerView { replay_still_ms: REPLAY_STALL_MS, ..behind };
        assert_eq!(decisions(&plan(&obs(&ha, raft(3, 3, 3), stuck))).len(), 1);
    }

    #[test]
    fn asynchronous_mode_waits_out_the_fencing_bound() {
        let ha = with_reports(ha_with_primary(1, 2), 3, &[(2, 100), (3, 100)]);
        let mut o =
            obs(&ha, RaftView { led_ms: 1000, ..raft(3, 3, 3) }, server(true, 100, Receiving::Nothing));
        o.sync = SyncMode::Off;
        assert!(decisions(&plan(&o)).is_empty());
        o.raft.led_ms = fencing_bound_ms(1000);
        assert_eq!(decisions(&plan(&o)).len(), 1);
    }

    #[test]
    fn a_primary_that_fell_back_to_asynchronous_commits_is_not_replaced_by_a_standby() {
        use super::super::ha_state::SyncRecord;
        let mut ha = with_reports(ha_with_primary(1, 2), 3, &[(2, 100), (3, 100)]);
        let rec = SyncRecord { node: 1, term: 2, k: 0, time_ms: 0, standbys: Some(vec![]) };
        ha.apply(&HaCommand::SyncSet(rec), 2).expect("sync");
        let led = RaftView { led_ms: fencing_bound_ms(1000), ..raft(3, 3, 3) };
        let o = obs(&ha, led.clone(), server(true, 100, Receiving::Nothing));
        let p = plan(&o);
        assert!(decisions(&p).is_empty(), "{p:?}");
        assert!(p.waiting.as_deref().is_some_and(|w| w.contains("asynchronously")), "{p:?}");
        // Strict never records 0; `off` follows the asynchronous rules (a possible loss, said).
        let mut off = obs(&ha, led.clone(), server(true, 100, Receiving::Nothing));
        off.sync = SyncMode::Off;
        assert_eq!(decisions(&plan(&off)).len(), 1);
        // The old primary, back as a standby with its shutdown position, is what it waits for:
        // it holds every commit, so the most advanced rule hands it leadership.
        let mut back = ha.clone();
        self_report(&mut back, 3, 150);
        let p = plan(&obs(&back, led, server(true, 100, Receiving::Nothing)));
        assert_eq!(p.transfer, Some(1), "{p:?}");
    }

    fn stood_down(lsn: Lsn) -> ServerView {
        ServerView { stood_down: Some((1, lsn)), ..server(true, 0, Receiving::Nothing) }
    }

    fn self_report(ha: &mut HaState, term: u64, lsn: Lsn) {
        let report = DetachReport { term, from: 1, timeline: 1, received: lsn, replayed: lsn };
        ha.apply(&HaCommand::Detached { node: 1, report }, term).expect("report");
    }

    #[test]
    fn a_fenced_primary_restarted_as_a_standby_reports_its_shutdown_position() {
        let ha = ha_with_primary(1, 2);
        // Node 2 leads term 3; node 1's server runs as a standby the helper started.
        let p = plan(&obs(&ha, raft(1, 2, 3), stood_down(200)));
        assert!(matches!(
            decisions(&p)[..],
            [HaCommand::Detached { node: 1, report: DetachReport { term: 3, from: 1, received: 200, .. } }]
        ));
        assert_eq!((p.gate, p.promote, p.upstream), (Gate::Open, false, None));
        // Started by anyone else, it may still have acknowledged commits to replay: no report.
        let p = plan(&obs(&ha, raft(1, 2, 3), server(true, 150, Receiving::Nothing)));
        assert!(decisions(&p).is_empty(), "{p:?}");
        // A promotion under way: it may be a primary in a moment.
        let promoting = ServerView { promoting: true, ..stood_down(200) };
        assert!(decisions(&plan(&obs(&ha, raft(1, 2, 3), promoting))).is_empty());
        // In the record's own term it is only ever promoted (by the leader of that term).
        assert!(decisions(&plan(&obs(&ha, raft(1, 2, 2), stood_down(200)))).is_empty());
    }

    #[test]
    fn the_old_primarys_own_report_replaces_the_detach_quorum() {
        // Node 3 is down: node 2's report alone is 1 of the 2 needed.
        let ha = with_reports(ha_with_primary(1, 2), 3, &[(2, 200)]);
        let p = plan(&obs(&ha, raft(2, 2, 3), server(true, 200, Receiving::Nothing)));
        assert!(decisions(&p).is_empty(), "{p:?}");
        // Node 1 stood down at the same position: node 2 takes over.
        let mut both = ha.clone();
        self_report(&mut both, 3, 200);
        let p = plan(&obs(&both, raft(2, 2, 3), server(true, 200, Receiving::Nothing)));
        assert!(
            matches!(decisions(&p)[..], [HaCommand::Primary(PrimaryRecord { node: 2, term: 3, ref reason, .. })] if reason.contains("stood down")),
            "{p:?}"
        );
        // In asynchronous mode too, without waiting out the fencing bound: it cannot write.
        let mut o =
            obs(&both, RaftView { led_ms: 0, ..raft(2, 2, 3) }, server(true, 200, Receiving::Nothing));
        o.sync = SyncMode::Off;
        assert_eq!(decisions(&plan(&o)).len(), 1);
        // Node 1 holds more: it gets leadership.
        let mut ahead = ha;
        self_report(&mut ahead, 3, 250);
        let p = plan(&obs(&ahead, raft(2, 2, 3), server(true, 200, Receiving::Nothing)));
        assert_eq!((p.transfer, decisions(&p).len()), (Some(1), 0));
        // Leading, node 1 names itself again in the new term.
        let p = plan(&obs(&ahead, raft(1, 1, 3), stood_down(250)));
        assert!(
            matches!(decisions(&p)[..], [HaCommand::Primary(PrimaryRecord { node: 1, term: 3, .. })]),
            "{p:?}"
        );
        // A report of an earlier term counts for nothing.
        let mut old = ha_with_primary(1, 2);
        self_report(&mut old, 3, 250);
        let p = plan(&obs(&old, raft(2, 2, 4), server(true, 200, Receiving::Nothing)));
        assert!(!decisions(&p).iter().any(|c| matches!(c, HaCommand::Primary(_))), "{p:?}");
    }

    #[test]
    fn asynchronous_mode_promotes_nobody_further_behind_than_the_lag_limit() {
        let mut ha = with_reports(ha_with_primary(1, 2), 3, &[(2, 100), (3, 100)]);
        ha.apply(&HaCommand::Slots { node: 1, slots: Default::default(), position: 2_000_000 }, 2)
            .expect("slots");
        let mut o =
            obs(&ha, RaftView { led_ms: 60_000, ..raft(3, 3, 3) }, server(true, 100, Receiving::Nothing));
        o.sync = SyncMode::Off;
        o.max_lag = 1 << 20;
        let p = plan(&o);
        assert!(decisions(&p).is_empty(), "{p:?}");
        assert!(p.waiting.as_deref().is_some_and(|w| w.contains("maximum_lag_on_failover")), "{p:?}");
        // Within the limit, or no limit, or synchronous mode: promoted.
        o.max_lag = 4 << 20;
        assert_eq!(decisions(&plan(&o)).len(), 1);
        o.max_lag = 0;
        assert_eq!(decisions(&plan(&o)).len(), 1);
        o.max_lag = 1 << 20;
        o.sync = SyncMode::On;
        assert_eq!(decisions(&plan(&o)).len(), 1);
    }

    /// Standbys that followed the primary onto the timeline its promotion started are held
    /// to the limit like any other; a primary that published nothing yet is bounded by
    /// where it was promoted.
    #[test]
    fn the_lag_limit_holds_on_the_timeline_the_primary_started() {
        let on_timeline = |ha: HaState, timeline: u32| {
            let mut ha = ha;
            for n in [2, 3] {
                let report = DetachReport { term: 3, from: 1, timeline, received: 100, replayed: 100 };
                ha.apply(&HaCommand::Detached { node: n, report }, 3).expect("report");
            }
            ha
        };
        let mut published = ha_with_primary(1, 2);
        published
            .apply(&HaCommand::Slots { node: 1, slots: Default::default(), position: 2_000_000 }, 2)
            .expect("slots");
        let ha = on_timeline(published.clone(), 2);
        let mut view = server(true, 100, Receiving::Nothing);
        view.timeline = 2;
        let mut o = obs(&ha, RaftView { led_ms: 60_000, ..raft(3, 3, 3) }, view.clone());
        o.sync = SyncMode::Off;
        o.max_lag = 1 << 20;
        let p = plan(&o);
        assert!(decisions(&p).is_empty(), "{p:?}");
        assert!(p.waiting.as_deref().is_some_and(|w| w.contains("maximum_lag_on_failover")), "{p:?}");
        // A timeline after that one was promoted since: no limit to apply.
        let later = on_timeline(published, 3);
        let mut view3 = view.clone();
        view3.timeline = 3;
        let mut o3 = obs(&later, RaftView { led_ms: 60_000, ..raft(3, 3, 3) }, view3);
        o3.sync = SyncMode::Off;
        o3.max_lag = 1 << 20;
        assert_eq!(decisions(&plan(&o3)).len(), 1);
        // Nothing published: the promotion's position bounds it.
        let mut promoted = ha_with_primary(1, 2);
        let mut rec = promoted.primary.clone().expect("a primary");
        rec.lsn = 3_000_000;
        promoted.apply(&HaCommand::Primary(rec), 2).expect("primary");
        let ha = on_timeline(promoted, 2);
        let mut o = obs(&ha, RaftView { led_ms: 60_000, ..raft(3, 3, 3) }, view);
        o.sync = SyncMode::Off;
        o.max_lag = 1 << 20;
        assert!(decisions(&plan(&o)).is_empty(), "{:?}", plan(&o));
    }
}
