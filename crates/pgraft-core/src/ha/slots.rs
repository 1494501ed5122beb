//! Replication slots for every member on every server, so that after a failover every
//! standby streams from the new primary without a WAL gap.
//!
//! Each server of an HA cluster holds a physical slot `pgraft_node_N` for every other
//! voting member N, and a standby streams through its own slot wherever its upstream holds
//! one. On the primary the slots advance as the standbys confirm what they flushed. On a
//! standby nothing streams through them, so its slot keeper advances each to the position
//! the primary's slot for the same member has (never past its own replay): whichever
//! standby is promoted then keeps, for every other member, the WAL that member has not
//! flushed yet. The positions travel in the HA state: each server's holder publishes its
//! slot set when it changes (`ha_slots`), and the primary its positions as they move.

use std::collections::BTreeMap;

use super::ha_state::{HaCommand, Lsn};
use super::planner::{application_name, ha_voters, Observation, SyncMode};
use super::timeline::lsn_text;

/// The primary publishes its slots' positions again once one moved this far (a WAL segment),
/// either way: a slot that went back (a member streaming from before a slot created late)
/// matters to [`wal_gone`] as much as one that went ahead.
pub const PUBLISH_STEP: Lsn = 16 << 20;
/// ... and at most this often.
pub const PUBLISH_PAUSE_MS: u64 = 5_000;
/// In asynchronous mode with a lag limit, the primary also publishes its position once it
/// moved half the limit (at least this much), at most once a second, so that the limit
/// bounds what a failover can lose.
pub const POSITION_STEP_MIN: Lsn = 64 << 10;
/// ... at most this often.
pub const POSITION_PAUSE_MS: u64 = 1_000;

/// What this member's server should hold, and what to tell the others.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotPlan {
    /// Member -> how far a standby advances its slot for it: the primary's restart LSN for
    /// it, `Lsn::MAX` (its own replay) for the primary's member, 0 where none is known or
    /// on the primary itself, whose slots move as its standbys stream.
    pub wanted: BTreeMap<u64, Lsn>,
    /// An `ha_slots` entry to propose.
    pub publish: Option<HaCommand>,
}

/// The slot plan, or `None` where slots are not managed (no primary on record, or this
/// server is not a copy of the primary's). `held` is what the server holds (member ->
/// restart LSN) as last seen, if seen lately; `since_published_ms` the time since this
/// member last proposed its slots.
pub fn plan_slots(
    o: &Observation<'_>,
    held: Option<&BTreeMap<u64, Lsn>>,
    since_published_ms: u64,
) -> Option<SlotPlan> {
    let rec = o.ha.primary.as_ref()?;
    if o.ha.primary_system_id() != Some(o.server.record.system_id) {
        return None;
    }
    let me = o.raft.me;
    let primary_slots = o.ha.slots.get(&rec.node);
    // A standby's slot for the primary's member follows the standby's own replay: should
    // that server become a standby, it needs nothing older than what this one replayed.
    let target = |n: u64| match primary_slots.and_then(|s| s.get(&n)) {
        _ if !o.server.in_recovery => 0,
        _ if n == rec.node => Lsn::MAX,
        Some(lsn) => *lsn,
        None => 0,
    };
    let wanted = ha_voters(o).into_iter().filter(|n| *n != me).map(|n| (n, target(n))).collect();
    let mut plan = SlotPlan { wanted, publish: None };
    let Some(held) = held else { return Some(plan) };
    let recorded = o.ha.slots.get(&me);
    let same_set = recorded.is_some_and(|r| r.keys().eq(held.keys()));
    let moved = recorded.is_some_and(|r| {
        held.iter().any(|(n, lsn)| lsn.abs_diff(r.get(n).copied().unwrap_or(0)) >= PUBLISH_STEP)
    });
    let primary = !o.server.in_recovery && rec.node == me && o.raft.leader;
    let position = o.server.replayed;
    let position_moved =
        o.sync == SyncMode::Off && o.max_lag > 0 && since_published_ms >= POSITION_PAUSE_MS && {
            let last = o.ha.positions.get(&me).copied().unwrap_or(0);
            position >= last.saturating_add((o.max_lag / 2).max(POSITION_STEP_MIN))
        };
    if !same_set || primary && (since_published_ms >= PUBLISH_PAUSE_MS && moved || position_moved) {
        plan.publish = Some(HaCommand::Slots { node: me, slots: held.clone(), position });
    }
    Some(plan)
}

/// Why this standby can no longer get the WAL it needs from the primary, if so: the
/// primary's slot for this member, as last published, starts in a later WAL segment than
/// the end of the WAL this standby holds. A slot created after its member fell behind does
/// that (on a server re-cloned or rewound since, whose slots start at its own last
/// checkpoint), and the segments in between are gone, or go at the next checkpoint: no
/// rewind helps, only a re-clone. `segment_size` is the server's WAL segment size. The
/// caller acts only once this has held for a while with the standby's position standing
/// still: published positions lag by up to [`PUBLISH_PAUSE_MS`].
pub fn wal_gone(o: &Observation<'_>, segment_size: u64) -> Option<String> {
    let rec = o.ha.primary.as_ref()?;
    let me = o.raft.me;
    if rec.node == me || !o.server.in_recovery || segment_size == 0 {
        return None;
    }
    if o.ha.primary_system_id() != Some(o.server.record.system_id) {
        return None;
    }
    let slot = *o.ha.slots.get(&rec.node)?.get(&me)?;
    let have = o.server.held();
    (have > 0 && slot / segment_size > have / segment_size).then(|| {
        format!(
            "node {}'s server keeps WAL for this member only from {} (its slot {}), and this standby holds WAL up to {}",
            rec.node,
            lsn_text(slot),
            application_name(me),
            lsn_text(have)
        )
    })
}

/// The slot a standby of member `me` streams through from `upstream`'s server, if that
/// server holds one for it.
pub fn slot_on(o: &Observation<'_>, upstream: u64, me: u64) -> Option<String> {
    o.ha.slots.get(&upstream).filter(|s| s.contains_key(&me)).map(|_| application_name(me))
}

#[cfg(test)]
mod tests {
    use super::super::ha_state::HaCommand;
    use super::super::planner::tests::{ha_with_primary, obs, raft, server};
    use super::super::planner::Receiving;
    use super::*;

    #[test]
    fn every_server_holds_a_slot_for_every_other_member() {
        let ha = ha_with_primary(1, 2);
        let p = plan_slots(&obs(&ha, raft(2, 1, 2), server(true, 100, Receiving::From(1))), None, 0)
            .expect("an HA cluster");
        assert_eq!(p.wanted, [(1, Lsn::MAX), (3, 0)].into());
        assert!(p.publish.is_none(), "nothing seen yet");
        // Seen: the set is published, and again only when it changes.
        let held: BTreeMap<u64, Lsn> = [(1, 10), (3, 10)].into();
        let o = obs(&ha, raft(2, 1, 2), server(true, 100, Receiving::From(1)));
        let p = plan_slots(&o, Some(&held), 0).expect("plan");
        assert_eq!(p.publish, Some(HaCommand::Slots { node: 2, slots: held.clone(), position: 100 }));
        let mut ha2 = ha.clone();
        ha2.apply(&HaCommand::Slots { node: 2, slots: held.clone(), position: 100 }, 2).expect("slots");
        let far: BTreeMap<u64, Lsn> = [(1, 10 + PUBLISH_STEP), (3, 10)].into();
        let o = obs(&ha2, raft(2, 1, 2), server(true, 100, Receiving::From(1)));
        assert!(
            plan_slots(&o, Some(&far), 60_000).expect("plan").publish.is_none(),
            "a standby's positions stay"
        );
        // Not an HA cluster yet, or another cluster's server: none.
        let mut none = ha.clone();
        none.primary = None;
        assert!(
            plan_slots(&obs(&none, raft(2, 1, 2), server(true, 100, Receiving::Nothing)), None, 0).is_none()
        );
    }

    #[test]
    fn the_primary_publishes_positions_and_standbys_follow_them() {
        let mut ha = ha_with_primary(1, 2);
        let held: BTreeMap<u64, Lsn> = [(2, 100), (3, 50)].into();
        ha.apply(&HaCommand::Slots { node: 1, slots: held.clone(), position: 500 }, 2).expect("slots");
        let primary = obs(&ha, raft(1, 1, 2), server(false, 500, Receiving::Nothing));
        let moved: BTreeMap<u64, Lsn> = [(2, 100 + PUBLISH_STEP), (3, 60)].into();
        assert!(plan_slots(&primary, Some(&moved), 1_000).expect("plan").publish.is_none(), "too soon");
        assert!(plan_slots(&primary, Some(&held), 60_000).expect("plan").publish.is_none(), "nothing moved");
        let p = plan_slots(&primary, Some(&moved), 60_000).expect("plan");
        assert_eq!(p.publish, Some(HaCommand::Slots { node: 1, slots: moved, position: 500 }));
        // Asynchronous mode with a lag limit: the position alone, once it moved half the
        // limit, at most once a second.
        let mut fast = obs(&ha, raft(1, 1, 2), server(false, 500 + (600 << 10), Receiving::Nothing));
        fast.sync = SyncMode::Off;
        fast.max_lag = 1 << 20;
        assert!(plan_slots(&fast, Some(&held), 500).expect("plan").publish.is_none(), "too soon");
        let p = plan_slots(&fast, Some(&held), 1_000).expect("plan");
        assert!(
            matches!(p.publish, Some(HaCommand::Slots { position, .. }) if position == 500 + (600 << 10))
        );
        fast.server.replayed = 500 + (400 << 10);
        assert!(plan_slots(&fast, Some(&held), 1_000).expect("plan").publish.is_none(), "not half the limit");
        // A standby advances its slot for node 3 to where the primary's is.
        let standby = obs(&ha, raft(2, 1, 2), server(true, 500, Receiving::From(1)));
        assert_eq!(plan_slots(&standby, None, 0).expect("plan").wanted, [(1, Lsn::MAX), (3, 50)].into());
        // The primary's slots move by themselves.
        assert_eq!(plan_slots(&primary, None, 0).expect("plan").wanted, [(2, 0), (3, 0)].into());
        // It streams through its slot where the upstream holds one.
        assert_eq!(slot_on(&standby, 1, 2).as_deref(), Some("pgraft_node_2"));
        assert_eq!(slot_on(&standby, 3, 2), None);
    }

    #[test]
    fn a_slot_that_went_back_is_published_and_one_ahead_of_its_member_means_the_wal_is_gone() {
        let mut ha = ha_with_primary(1, 2);
        let seg = 16 << 20;
        let held: BTreeMap<u64, Lsn> = [(2, 10 * seg), (3, 10 * seg)].into();
        ha.apply(&HaCommand::Slots { node: 1, slots: held.clone(), position: 12 * seg }, 2).expect("slots");
        // A member streaming from further back: the slot went back a segment, published.
        let back: BTreeMap<u64, Lsn> = [(2, 10 * seg), (3, 9 * seg - 1)].into();
        let primary = obs(&ha, raft(1, 1, 2), server(false, 12 * seg, Receiving::Nothing));
        assert!(plan_slots(&primary, Some(&back), 60_000).expect("plan").publish.is_some());
        // Node 3 holds WAL up to the middle of segment 9; the primary keeps it from 10.
        let standby = obs(&ha, raft(3, 1, 2), server(true, 9 * seg + 100, Receiving::Nothing));
        let why = wal_gone(&standby, seg).expect("gone");
        assert!(why.contains("pgraft_node_3") && why.contains("0/A000000 "), "{why}");
        // Up to the segment's end is enough: it needs segment 10 on, which is kept.
        let at_end = obs(&ha, raft(3, 1, 2), server(true, 10 * seg, Receiving::Nothing));
        assert_eq!(wal_gone(&at_end, seg), None);
        // The primary itself, or no slot on record: nothing to say.
        assert_eq!(wal_gone(&primary, seg), None);
        let mut none = ha.clone();
        none.slots.clear();
        assert_eq!(wal_gone(&obs(&none, raft(3, 1, 2), server(true, 100, Receiving::Nothing)), seg), None);
    }
}
