//! The conformance suite every [`LogStore`] must pass.
//!
//! `open(None)` must return a fresh, empty store; `open(Some(store))` must close `store`
//! and reopen it from wherever it keeps its state, as a crash would (for a memory store:
//! [`super::MemStore::crashed`]).
//! Each check below states the guarantee it holds the store to.

use raft::prelude::{ConfState, Entry, HardState};
use raft::GetEntriesContext;

use super::{create_snapshot_now, Identity, LogStore, StorageError};

fn ent(index: u64, term: u64) -> Entry {
    Entry { index, term, data: format!("entry {index}@{term}").into_bytes(), ..Default::default() }
}

fn ents(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| ent(i, term)).collect()
}

fn read<S: LogStore>(s: &S, low: u64, high: u64) -> Vec<(u64, u64)> {
    s.entries(low, high, None, GetEntriesContext::empty(false))
        .expect("entries in range")
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
}

/// Runs every check.
pub fn run_all<S: LogStore>(mut open: impl FnMut(Option<S>) -> S) {
    empty_store(open(None));
    append_read_and_reopen(&mut open);
    overwrite_truncates_the_suffix(&mut open);
    holes_and_compacted_writes_are_refused(open(None));
    hard_and_conf_state_survive_reopen(&mut open);
    snapshots_compact_and_survive_reopen(&mut open);
    applying_a_snapshot_replaces_the_log(&mut open);
    identity_is_recorded_and_enforced(&mut open);
    size_limited_reads_return_at_least_one(open(None));
    entry_bytes_follow_appends_overwrites_and_compaction(&mut open);
    one_write_per_ready_and_unsynced_commits(&mut open);
    async_writes_are_read_at_once_and_durable_in_order(&mut open);
}

/// `persist_async` writes are read back at once (raft-rs reads them before they are
/// durable), overwrite each other as `persist` does, are reported durable in order, and
/// after `flush` survive a restart.
fn async_writes_are_read_at_once_and_durable_in_order<S: LogStore>(open: &mut impl FnMut(Option<S>) -> S) {
    let mut s = open(None);
    let mut durable = 0;
    let note = |durable: &mut u64, r: Option<u64>| {
        if let Some(n) = r {
            assert!(n >= *durable, "durable numbers go forward: {n} after {durable}");
            *durable = n;
        }
    };
    let hs1 = HardState { term: 1, vote: 1, commit: 0 };
    note(&mut durable, s.persist_async(1, &ents(1..=3, 1), Some(&hs1), true).expect("first write"));
    assert_eq!(read(&s, 1, 4), vec![(1, 1), (2, 1), (3, 1)], "read back before durable");
    assert_eq!(s.hard_state(), hs1);
    let hs2 = HardState { term: 2, vote: 2, commit: 2 };
    note(&mut durable, s.persist_async(2, &ents(3..=5, 2), Some(&hs2), true).expect("an overwrite"));
    let hs3 = HardState { commit: 4, ..hs2.clone() };
    note(&mut durable, s.persist_async(3, &[], Some(&hs3), false).expect("a commit alone"));
    note(&mut durable, s.persist_async(4, &ents(6..=6, 2), None, true).expect("one more entry"));
    assert_eq!(read(&s, 1, 7), vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 2)]);
    assert_eq!(s.hard_state(), hs3);
    // Reported as the I/O finishes (see the durable store's own test), or all at once by
    // `flush`.
    note(&mut durable, s.poll_durable().expect("poll"));
    note(&mut durable, s.flush().expect("flush"));
    assert_eq!(durable, 4, "every write reported durable");
    let s = open(Some(s));
    assert_eq!(read(&s, 1, 7), vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 2)]);
    assert_eq!(s.hard_state(), hs3, "the commit went with the last synced write");
}

/// `persist` writes a `Ready`'s entries and hard state together; a commit index written
/// without a sync is seen at once, lost by a restart before the next synced write, and
/// made durable by it. Entries, a term or a vote are never written without a sync.
fn one_write_per_ready_and_unsynced_commits<S: LogStore>(open: &mut impl FnMut(Option<S>) -> S) {
    let mut s = open(None);
    let hs = HardState { term: 2, vote: 1, commit: 3 };
    s.persist(&ents(1..=5, 2), Some(&hs), true).expect("entries and hard state");
    let moved = HardState { commit: 5, ..hs.clone() };
    s.persist(&[], Some(&moved), false).expect("a commit without a sync");
    assert_eq!(s.hard_state(), moved, "an unsynced commit is seen at once");
    assert_eq!(s.initial_state().expect("state").hard_state, moved);
    let refused = [
        s.persist(&ents(6..=6, 2), None, false),
        s.persist(&[], Some(&HardState { term: 3, ..moved.clone() }), false),
        s.persist(&[], Some(&HardState { vote: 2, ..moved.clone() }), false),
    ];
    for r in refused {
        assert!(matches!(r, Err(StorageError::Invalid(_))), "{r:?}");
    }
    let mut s = open(Some(s));
    assert_eq!(s.hard_state(), hs, "a restart forgets the unsynced commit, keeps the rest");
    assert_eq!(s.last_index().expect("last"), 5);
    s.persist(&[], Some(&moved), false).expect("a commit without a sync");
    s.persist(&ents(6..=7, 2), None, true).expect("entries with a sync");
    let s = open(Some(s));
    assert_eq!(s.hard_state(), moved, "the next synced write made the commit durable");
    assert_eq!(read(&s, 5, 8), vec![(5, 2), (6, 2), (7, 2)]);
    // A snapshot at an index committed without a sync records that commit with it.
    let mut s = s;
    let at_7 = HardState { commit: 7, ..hs };
    s.persist(&[], Some(&at_7), false).expect("a commit without a sync");
    create_snapshot_now(
        &mut s,
        7,
        &ConfState { voters: vec![1], ..Default::default() },
        b"image".to_vec(),
        2,
    )
    .expect("snapshot at 7");
    let s = open(Some(s));
    assert_eq!(s.hard_state(), at_7, "the snapshot's commit survives a restart");
    assert_eq!(s.snapshot_metadata().index, 7);
}

/// A new store: first index 1, last index 0, term(0) = 0, no snapshot.
fn empty_store<S: LogStore>(s: S) {
    assert_eq!(s.first_index().expect("first"), 1);
    assert_eq!(s.last_index().expect("last"), 0);
    assert_eq!(s.term(0).expect("term 0"), 0);
    assert!(s.snapshot(0, 0).is_err(), "a new store has no snapshot");
    assert_eq!(s.initial_state().expect("state").hard_state, HardState::default());
}

/// Appended entries read back in order, also after a reopen (durable before return).
fn append_read_and_reopen<S: LogStore>(open: &mut impl FnMut(Option<S>) -> S) {
    let mut s = open(None);
    s.append(&ents(1..=5, 1)).expect("append");
    s.append(&ents(6..=8, 2)).expect("append");
    let s = open(Some(s));
    assert_eq!(s.last_index().expect("last"), 8);
    assert_eq!(read(&s, 1, 9).len(), 8);
    assert_eq!(s.term(5).expect("term"), 1);
    assert_eq!(s.term(8).expect("term"), 2);
    assert!(s.term(9).is_err(), "no entry 9");
    let e = s.entries(3, 4, None, GetEntriesContext::empty(false)).expect("entry 3");
    assert_eq!(e[0].data.as_ref() as &[u8], b"entry 3@1");
}

/// Reference: Raft paper section 5.3: a conflicting entry and all that follow it are
/// deleted before the leader's entries are appended.
fn overwrite_truncates_the_suffix<S: LogStore>(open: &mut impl FnMut(Option<S>) -> S) {
    let mut s = open(None);
    s.append(&ents(1..=10, 1)).expect("append");
    s.append(&ents(6..=7, 3)).expect("overwrite from 6");
    let s = open(Some(s));
    assert_eq!(s.last_index().expect("last"), 7, "entries 8..10 went with the overwrite");
    assert_eq!(read(&s, 5, 8), vec![(5, 1), (6, 3), (7, 3)]);
}

/// No holes, no writes below the compacted prefix.
fn holes_and_compacted_writes_are_refused<S: LogStore>(mut s: S) {
    s.append(&ents(1..=3, 1)).expect("append");
    assert!(matches!(s.append(&ents(5..=6, 1)), Err(StorageError::Invalid(_))), "a hole at 4");
    create_snapshot_now(&mut s, 3, &ConfState::from((vec![1], vec![])), b"sm".to_vec(), 0).expect("snapshot");
    // The same snapshot again, with nothing left to compact: dropped, and the one recorded
    // stays readable.
    create_snapshot_now(&mut s, 3, &ConfState::from((vec![1], vec![])), b"sm".to_vec(), 0).expect("again");
    assert_eq!(s.snapshot(0, 0).expect("the snapshot is still there").data.as_ref() as &[u8], b"sm");
    assert!(matches!(s.append(&ents(2..=4, 1)), Err(StorageError::Invalid(_))), "below the compacted prefix");
    s.append(&ents(4..=4, 1)).expect("right after the snapshot");
}

/// Term, vote, commit and membership are durable.
fn hard_and_conf_state_survive_reopen<S: LogStore>(open: &mut impl FnMut(Option<S>) -> S) {
    let mut s = open(None);
    let hs = HardState { term: 5, vote: 3, commit: 0 };
    s.set_hard_state(&hs).expect("hard state");
    let cs = ConfState::from((vec![1, 2, 3], vec![4]));
    s.set_conf_state(&cs).expect("conf state");
    let s = open(Some(s));
    let st = s.initial_state().expect("state");
    assert_eq!(st.hard_state, hs);
    assert_eq!(st.conf_state, cs);
    assert_eq!(s.hard_state(), hs);
}

/// A snapshot records the state machine at an index; the log before it (minus `keep`)
/// goes away, and `term(first_index - 1)` still answers.
fn snapshots_compact_and_survive_reopen<S: LogStore>(open: &mut impl FnMut(Option<S>) -> S) {
    let mut s = open(None);
    s.append(&ents(1..=4, 1)).expect("append");
    s.append(&ents(5..=10, 2)).expect("append");
    let cs = ConfState::from((vec![1, 2, 3], vec![]));
    create_snapshot_now(&mut s, 8, &cs, b"state at 8".to_vec(), 2).expect("snapshot");
    let s = open(Some(s));
    assert_eq!(s.snapshot_metadata().index, 8);
    assert_eq!(s.first_index().expect("first"), 7, "two entries kept before the snapshot index");
    assert_eq!(s.term(6).expect("term of the compacted boundary"), 2);
    assert!(s.term(5).is_err(), "5 is compacted");
    assert!(matches!(
        s.entries(5, 9, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(raft::StorageError::Compacted))
    ));
    assert_eq!(read(&s, 7, 11), vec![(7, 2), (8, 2), (9, 2), (10, 2)]);
    let snap = s.snapshot(0, 0).expect("the snapshot");
    assert_eq!(snap.get_metadata().index, 8);
    assert_eq!(snap.get_metadata().term, 2);
    assert_eq!(snap.get_metadata().get_conf_state(), &cs);
    assert_eq!(snap.data.as_ref() as &[u8], b"state at 8");
    assert!(s.snapshot(9, 0).is_err(), "a snapshot older than requested is unavailable");
    assert!(s.snapshot(0, 2).is_ok(), "member 2 is named by the snapshot");
    assert!(s.snapshot(0, 4).is_err(), "a snapshot that does not name member 4 cannot be sent to it");
}

/// A snapshot from the leader replaces the log; applying it again changes nothing.
fn applying_a_snapshot_replaces_the_log<S: LogStore>(open: &mut impl FnMut(Option<S>) -> S) {
    let mut s = open(None);
    s.append(&ents(1..=3, 1)).expect("append");
    let snap = super::snapshot_of(20, 4, &ConfState::from((vec![1, 2], vec![])), b"leader state".to_vec());
    s.apply_snapshot(&snap).expect("apply");
    s.apply_snapshot(&snap).expect("apply again: idempotent");
    // A local image written while the leader's snapshot arrived is older: discarded.
    let older = raft::prelude::SnapshotMetadata {
        index: 3,
        term: 1,
        conf_state: Some(ConfState::from((vec![1, 2], vec![]))),
    };
    let image = s.snapshot_writer().write(older, b"local state at 3").expect("image");
    s.create_snapshot(image, 0).expect("an older image is dropped, not an error");
    assert_eq!(s.snapshot_metadata().index, 20);
    let mut s = open(Some(s));
    assert_eq!(s.snapshot(0, 0).expect("snapshot").data.as_ref() as &[u8], b"leader state");
    assert_eq!(s.first_index().expect("first"), 21);
    assert_eq!(s.last_index().expect("last"), 20);
    assert_eq!(s.term(20).expect("term"), 4);
    let st = s.initial_state().expect("state");
    assert_eq!(st.hard_state.commit, 20);
    assert_eq!(st.hard_state.term, 4);
    assert_eq!(st.conf_state, ConfState::from((vec![1, 2], vec![])));
    s.append(&ents(21..=22, 4)).expect("append after the snapshot");
    assert_eq!(read(&s, 21, 23), vec![(21, 4), (22, 4)]);
}

/// The identity is recorded once and enforced on every later start.
fn identity_is_recorded_and_enforced<S: LogStore>(open: &mut impl FnMut(Option<S>) -> S) {
    let mut s = open(None);
    let me = Identity { cluster_id: "c1".into(), node_id: 2 };
    assert_eq!(s.identity(), None);
    s.ensure_identity(&me).expect("first start records it");
    let mut s = open(Some(s));
    assert_eq!(s.identity(), Some(me.clone()));
    s.ensure_identity(&me).expect("same member");
    let other_cluster = Identity { cluster_id: "c2".into(), node_id: 2 };
    assert!(
        matches!(s.ensure_identity(&other_cluster), Err(StorageError::IdentityMismatch(m)) if m.contains("cluster"))
    );
    let other_node = Identity { cluster_id: "c1".into(), node_id: 3 };
    assert!(
        matches!(s.ensure_identity(&other_node), Err(StorageError::IdentityMismatch(m)) if m.contains("node 2"))
    );
}

/// A size-limited read returns at least one entry (raft-rs relies on it).
fn size_limited_reads_return_at_least_one<S: LogStore>(mut s: S) {
    s.append(&ents(1..=5, 1)).expect("append");
    let got = s.entries(1, 6, Some(1), GetEntriesContext::empty(false)).expect("read");
    assert_eq!(got.len(), 1);
    let all = s.entries(1, 6, Some(u64::MAX), GetEntriesContext::empty(false)).expect("read");
    assert_eq!(all.len(), 5);
}

/// The bytes of a range of entries are their encoded sizes, through overwrites, reopen,
/// compaction and an installed snapshot; a range reaching outside the log has none.
fn entry_bytes_follow_appends_overwrites_and_compaction<S: LogStore>(open: &mut impl FnMut(Option<S>) -> S) {
    use prost::Message as _;
    let size = |es: &[Entry]| es.iter().map(|e| e.encoded_len() as u64).sum::<u64>();
    let mut s = open(None);
    assert_eq!(s.entry_bytes(0, 0), Some(0));
    assert_eq!(s.entry_bytes(0, 1), None);
    s.append(&ents(1..=10, 1)).expect("append");
    s.append(&ents(8..=12, 2)).expect("overwrite from 8");
    let s2 = open(Some(s));
    let all: Vec<Entry> = ents(1..=7, 1).into_iter().chain(ents(8..=12, 2)).collect();
    assert_eq!(s2.entry_bytes(0, 12), Some(size(&all)));
    assert_eq!(s2.entry_bytes(3, 9), Some(size(&all[3..9])));
    assert_eq!(s2.entry_bytes(12, 12), Some(0));
    assert_eq!(s2.entry_bytes(11, 13), None, "13 is not in the log");
    let mut s = s2;
    create_snapshot_now(&mut s, 9, &ConfState::from((vec![1], vec![])), b"sm".to_vec(), 2).expect("snapshot");
    let s = open(Some(s));
    assert_eq!(s.first_index().expect("first"), 8);
    assert_eq!(s.entry_bytes(7, 12), Some(size(&all[7..12])), "entries 8 and on are kept");
    assert_eq!(s.entry_bytes(6, 12), None, "7 is compacted");
    let mut s = s;
    s.apply_snapshot(&super::snapshot_of(30, 3, &ConfState::from((vec![1], vec![])), b"x".to_vec()))
        .expect("apply");
    s.append(&ents(31..=32, 3)).expect("append after the snapshot");
    let s = open(Some(s));
    assert_eq!(s.entry_bytes(30, 32), Some(size(&ents(31..=32, 3))));
    assert_eq!(s.entry_bytes(12, 32), None);
}
