//! The MVCC key-value store.
//!
//! The keys live in a persistent B-tree (`imbl::OrdMap`) and values in reference-counted
//! buffers: cloning the store is O(1) and shares everything, so a snapshot is a clone taken
//! on the Raft thread and encoded elsewhere while the Raft thread keeps applying (a write
//! copies only the tree path it changes).

use bytes::Bytes;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use super::op::{Compare, KvOp, KvResult, TxnAction};

/// A key as a reader sees it at some revision, with etcd's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: u64,
    /// The revision of the last change.
    pub mod_revision: u64,
    /// 1 at creation, +1 per put; a delete resets it.
    pub version: u64,
    /// When the key was created, ms since the Unix epoch (proposer's clock).
    pub created_ms: i64,
    /// When it last changed.
    pub updated_ms: i64,
}

/// One change of one key, as a watch reports it (etcd's event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The key.
    pub key: String,
    /// The value put; `None` for a deletion.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// The revision that created the key (0 for a deletion).
    pub create_revision: u64,
    /// The revision of this change.
    pub mod_revision: u64,
    /// The key's version after it (0 for a deletion).
    pub version: u64,
}

/// One revision of one key; `value: None` is a deletion (tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rev {
    mod_revision: u64,
    create_revision: u64,
    version: u64,
    value: Option<Bytes>,
    created_ms: i64,
    updated_ms: i64,
}

/// Counters of what the store has applied; every member counts the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStats {
    /// Puts applied (including those of successful compare-and-swaps).
    pub puts: u64,
    /// Keys deleted (by delete, prefix delete or compare-and-swap).
    pub deletes: u64,
    /// Compare-and-swaps whose comparison held.
    pub cas_succeeded: u64,
    /// Compare-and-swaps whose comparison failed.
    pub cas_failed: u64,
    /// Compactions applied.
    pub compactions: u64,
    /// Resets applied.
    pub resets: u64,
}

/// The store: every key's revisions since the last compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    revision: u64,
    compact_revision: u64,
    #[serde(with = "crate::persistent_serde::ord_map")]
    keys: OrdMap<String, Vec<Rev>>,
    stats: KvStats,
}

/// A read of a revision that compaction already removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("revision {requested} has been compacted; the oldest readable revision is {compacted}")]
pub struct Compacted {
    /// The revision asked for.
    pub requested: u64,
    /// The revision compacted up to.
    pub compacted: u64,
}

impl KvStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The revision of the last change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The revision compacted up to (0: never compacted).
    pub fn compact_revision(&self) -> u64 {
        self.compact_revision
    }

    /// Counters of applied operations.
    pub fn stats(&self) -> KvStats {
        self.stats
    }

    /// Keys with any revision held (deleted ones among them until compaction removes
    /// their tombstones): constant time, unlike [`KvStore::live_keys`].
    pub fn keys_held(&self) -> usize {
        self.keys.len()
    }

    /// Keys that exist now.
    pub fn live_keys(&self) -> usize {
        self.keys.values().filter(|h| h.last().is_some_and(|r| r.value.is_some())).count()
    }

    /// Revisions kept in history, tombstones included.
    pub fn history_len(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    /// Tombstones kept in history (deleted keys not yet compacted away).
    pub fn tombstones(&self) -> usize {
        self.keys.values().flatten().filter(|r| r.value.is_none()).count()
    }

    /// Bytes of keys and values held, history included.
    pub fn size_bytes(&self) -> usize {
        self.keys
            .iter()
            .map(|(k, h)| {
                h.iter().map(|r| k.len() + r.value.as_ref().map_or(0, Bytes::len) + 48).sum::<usize>()
            })
            .sum()
    }

    fn check_readable(&self, at: Option<u64>) -> Result<u64, Compacted> {
        let at = at.unwrap_or(self.revision).min(self.revision);
        if at < self.compact_revision {
            return Err(Compacted { requested: at, compacted: self.compact_revision });
        }
        Ok(at)
    }

    fn at_rev(key: &str, history: &[Rev], at: u64) -> Option<KeyValue> {
        let idx = history.partition_point(|r| r.mod_revision <= at);
        let r = history.get(idx.checked_sub(1)?)?;
        let value = r.value.as_ref()?.to_vec();
        Some(KeyValue {
            key: key.to_string(),
            value,
            create_revision: r.create_revision,
            mod_revision: r.mod_revision,
            version: r.version,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        })
    }

    /// The key as of revision `at` (default: now).
    pub fn get(&self, key: &str, at: Option<u64>) -> Result<Option<KeyValue>, Compacted> {
        let at = self.check_readable(at)?;
        Ok(self.keys.get(key).and_then(|h| Self::at_rev(key, h, at)))
    }

    /// Every key starting with `prefix` as of revision `at`, in key order; at most `limit`
    /// keys when given.
    pub fn range(
        &self,
        prefix: &str,
        at: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Vec<KeyValue>, Compacted> {
        let at = self.check_readable(at)?;
        let iter = self
            .keys
            .range::<_, str>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, h)| Self::at_rev(k, h, at));
        Ok(match limit {
            Some(n) => iter.take(n).collect(),
            None => iter.collect(),
        })
    }

    /// Every change to a key starting with `prefix` after revision `after`, in revision
    /// order (then key order within a revision), at most about `limit`: a revision is never
    /// cut in two, so a caller that goes on after the last revision returned misses
    /// nothing. A revision that compaction removed is an error (etcd's watch does the same).
    pub fn changes(&self, prefix: &str, after: u64, limit: usize) -> Result<Vec<Change>, Compacted> {
        if after < self.compact_revision {
            return Err(Compacted { requested: after, compacted: self.compact_revision });
        }
        let mut out: Vec<Change> = self
            .keys
            .range::<_, str>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .flat_map(|(k, h)| {
                let from = h.partition_point(|r| r.mod_revision <= after);
                h[from..].iter().map(move |r| Change {
                    key: k.clone(),
                    value: r.value.as_ref().map(|v| v.to_vec()),
                    create_revision: r.create_revision,
                    mod_revision: r.mod_revision,
                    version: r.version,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.mod_revision, &a.key).cmp(&(b.mod_revision, &b.key)));
        if out.len() > limit {
            let last = out[limit.saturating_sub(1)].mod_revision;
            let keep = out.partition_point(|c| c.mod_revision <= last);
            out.truncate(keep.max(1));
        }
        Ok(out)
    }

    /// A 64-bit FNV-1a hash of the live state at revision `at` (default: now), over every
    /// key's name, value, revisions and version. Equal stores hash equal; members compare
    /// hashes to prove they converged (etcd's `hashkv`).
    pub fn hash(&self, at: Option<u64>) -> Result<u64, Compacted> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for kv in self.range("", at, None)? {
            eat(&(kv.key.len() as u64).to_le_bytes());
            eat(kv.key.as_bytes());
            eat(&(kv.value.len() as u64).to_le_bytes());
            eat(&kv.value);
            eat(&kv.create_revision.to_le_bytes());
            eat(&kv.mod_revision.to_le_bytes());
            eat(&kv.version.to_le_bytes());
        }
        Ok(h)
    }

    /// Applies one operation. Deterministic: every member applying the same operations in
    /// the same order reaches the same state.
    pub fn apply(&mut self, op: &KvOp) -> KvResult {
        match op {
            KvOp::Put { key, value, time_ms } => {
                let prev = self.get(key, None).unwrap_or(None);
                self.put(key, Bytes::copy_from_slice(value), *time_ms, prev.as_ref());
                KvResult::Put { revision: self.revision, prev }
            }
            KvOp::Delete { key, time_ms } => {
                let deleted = u64::from(self.delete(key, *time_ms));
                KvResult::Deleted { revision: self.revision, deleted }
            }
            KvOp::DeletePrefix { prefix, time_ms } => {
                let live: Vec<String> =
                    self.range(prefix, None, None).unwrap_or_default().into_iter().map(|kv| kv.key).collect();
                // etcd deletes a range in one revision; so do we.
                if !live.is_empty() {
                    self.revision += 1;
                    for k in &live {
                        self.tombstone(k, *time_ms);
                    }
                    self.stats.deletes += live.len() as u64;
                }
                KvResult::Deleted { revision: self.revision, deleted: live.len() as u64 }
            }
            KvOp::CompareAndSwap { key, compare, action, time_ms } => {
                let prev = self.get(key, None).unwrap_or(None);
                let holds = match compare {
                    Compare::Value(v) => prev.as_ref().map(|kv| &kv.value) == v.as_ref(),
                    Compare::Version(n) => prev.as_ref().map_or(0, |kv| kv.version) == *n,
                    Compare::ModRevision(n) => prev.as_ref().map_or(0, |kv| kv.mod_revision) == *n,
                    Compare::CreateRevision(n) => prev.as_ref().map_or(0, |kv| kv.create_revision) == *n,
                };
                if holds {
                    self.stats.cas_succeeded += 1;
                    match action {
                        TxnAction::Put(v) => {
                            self.put(key, Bytes::copy_from_slice(v), *time_ms, prev.as_ref())
                        }
                        TxnAction::Delete => {
                            self.delete(key, *time_ms);
                        }
                    }
                } else {
                    self.stats.cas_failed += 1;
                }
                KvResult::CompareAndSwap { succeeded: holds, revision: self.revision, prev }
            }
            KvOp::Compact { revision } => match self.compact(*revision) {
                Ok(()) => KvResult::Compacted { revision: *revision },
                Err(reason) => KvResult::CompactRefused { reason },
            },
            KvOp::Reset => {
                let removed = self.live_keys() as u64;
                self.keys.clear();
                self.revision += 1;
                self.compact_revision = self.revision;
                self.stats.resets += 1;
                KvResult::Reset { removed }
            }
        }
    }

    fn put(&mut self, key: &str, value: Bytes, time_ms: i64, prev: Option<&KeyValue>) {
        self.revision += 1;
        let rev = Rev {
            mod_revision: self.revision,
            create_revision: prev.map_or(self.revision, |p| p.create_revision),
            version: prev.map_or(1, |p| p.version + 1),
            value: Some(value),
            created_ms: prev.map_or(time_ms, |p| p.created_ms),
            updated_ms: time_ms,
        };
        self.push(key, rev);
        self.stats.puts += 1;
    }

    /// Deletes a live key in a new revision; returns whether it existed.
    fn delete(&mut self, key: &str, time_ms: i64) -> bool {
        if self.get(key, None).ok().flatten().is_none() {
            return false;
        }
        self.revision += 1;
        self.tombstone(key, time_ms);
        self.stats.deletes += 1;
        true
    }

    fn tombstone(&mut self, key: &str, time_ms: i64) {
        let rev = Rev {
            mod_revision: self.revision,
            create_revision: 0,
            version: 0,
            value: None,
            created_ms: time_ms,
            updated_ms: time_ms,
        };
        self.push(key, rev);
    }

    fn push(&mut self, key: &str, rev: Rev) {
        match self.keys.get_mut(key) {
            Some(history) => history.push(rev),
            None => {
                self.keys.insert(key.to_string(), vec![rev]);
            }
        }
    }

    fn compact(&mut self, revision: u64) -> Result<(), String> {
        if revision > self.revision {
            return Err(format!(
                "revision {revision} is in the future; the current revision is {}",
                self.revision
            ));
        }
        if revision <= self.compact_revision && revision != 0 {
            return Err(format!(
                "revision {revision} has already been compacted (up to {})",
                self.compact_revision
            ));
        }
        // Rebuilt rather than edited in place: the old tree may be shared with a snapshot
        // being written, and a compaction touches most keys anyway.
        self.keys = std::mem::take(&mut self.keys)
            .into_iter()
            .filter_map(|(key, mut history)| {
                // Keep the last revision at or below `revision` (the state then) and all later.
                let keep_from = history.partition_point(|r| r.mod_revision <= revision).saturating_sub(1);
                history.drain(..keep_from);
                if history.first().is_some_and(|r| r.mod_revision <= revision && r.value.is_none()) {
                    history.remove(0);
                }
                (!history.is_empty()).then_some((key, history))
            })
            .collect();
        self.compact_revision = self.compact_revision.max(revision);
        self.stats.compactions += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> KvOp {
        KvOp::Put { key: k.into(), value: v.as_bytes().to_vec(), time_ms: 1000 }
    }
    fn del(k: &str) -> KvOp {
        KvOp::Delete { key: k.into(), time_ms: 2000 }
    }

    #[test]
    fn changes_after_a_revision_come_in_revision_order_whole_revisions_at_a_time() {
        let mut s = KvStore::new();
        s.apply(&put("w/a", "1")); // 1
        s.apply(&put("other", "x")); // 2
        s.apply(&put("w/b", "1")); // 3
        s.apply(&put("w/a", "2")); // 4
        s.apply(&KvOp::DeletePrefix { prefix: "w/".into(), time_ms: 3000 }); // 5: both
        let all = s.changes("w/", 0, 100).expect("readable");
        let seen: Vec<(u64, &str, Option<&[u8]>)> =
            all.iter().map(|c| (c.mod_revision, c.key.as_str(), c.value.as_deref())).collect();
        assert_eq!(
            seen,
            vec![
                (1, "w/a", Some(&b"1"[..])),
                (3, "w/b", Some(&b"1"[..])),
                (4, "w/a", Some(&b"2"[..])),
                (5, "w/a", None),
                (5, "w/b", None)
            ]
        );
        assert_eq!((all[2].version, all[2].create_revision), (2, 1));
        assert_eq!(s.changes("w/", 4, 100).expect("readable").len(), 2);
        assert!(s.changes("w/", 5, 100).expect("readable").is_empty(), "nothing after the last");
        // A limit never cuts a revision in two.
        let first = s.changes("w/", 3, 1).expect("readable");
        assert_eq!(first.len(), 1);
        let cut = s.changes("w/", 3, 2).expect("readable");
        assert_eq!(cut.len(), 3, "revision 5 comes whole: {cut:?}");
        // Compacted revisions are an error.
        s.apply(&KvOp::Compact { revision: 4 });
        assert_eq!(s.changes("w/", 3, 100), Err(Compacted { requested: 3, compacted: 4 }));
        assert_eq!(s.changes("w/", 4, 100).expect("readable").len(), 2);
    }

    #[test]
    fn revisions_versions_follow_etcd() {
        let mut s = KvStore::new();
        s.apply(&put("a", "1"));
        s.apply(&put("b", "1"));
        s.apply(&put("a", "2"));
        let a = s.get("a", None).expect("readable").expect("a exists");
        assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 3, 2));
        assert_eq!(a.value, b"2");
        assert_eq!(s.revision(), 3);
        // A delete bumps the revision; a delete of a missing key does not.
        assert_eq!(s.apply(&del("a")), KvResult::Deleted { revision: 4, deleted: 1 });
        assert_eq!(s.apply(&del("a")), KvResult::Deleted { revision: 4, deleted: 0 });
        // Re-creating starts a new life: version 1, new create_revision.
        s.apply(&put("a", "3"));
        let a = s.get("a", None).expect("readable").expect("a exists");
        assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
        // History stays readable.
        assert_eq!(s.get("a", Some(2)).expect("readable").map(|kv| kv.value), Some(b"1".to_vec()));
        assert_eq!(s.get("a", Some(4)).expect("readable"), None);
    }

    #[test]
    fn put_returns_the_previous_value() {
        let mut s = KvStore::new();
        assert_eq!(s.apply(&put("k", "v1")), KvResult::Put { revision: 1, prev: None });
        match s.apply(&put("k", "v2")) {
            KvResult::Put { revision: 2, prev: Some(p) } => assert_eq!(p.value, b"v1"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn compare_and_swap() {
        let mut s = KvStore::new();
        let cas = |compare, action| KvOp::CompareAndSwap { key: "lock".into(), compare, action, time_ms: 5 };
        // Create only if absent.
        let r = s.apply(&cas(Compare::Version(0), TxnAction::Put(b"owner-1".to_vec())));
        assert!(matches!(r, KvResult::CompareAndSwap { succeeded: true, revision: 1, prev: None }));
        let r = s.apply(&cas(Compare::Version(0), TxnAction::Put(b"owner-2".to_vec())));
        assert!(matches!(r, KvResult::CompareAndSwap { succeeded: false, revision: 1, .. }));
        // Compare value, then delete.
        let r = s.apply(&cas(Compare::Value(Some(b"owner-2".to_vec())), TxnAction::Delete));
        assert!(matches!(r, KvResult::CompareAndSwap { succeeded: false, .. }));
        let r = s.apply(&cas(Compare::ModRevision(1), TxnAction::Put(b"owner-1b".to_vec())));
        assert!(matches!(r, KvResult::CompareAndSwap { succeeded: true, revision: 2, .. }));
        let r = s.apply(&cas(Compare::CreateRevision(1), TxnAction::Delete));
        assert!(matches!(r, KvResult::CompareAndSwap { succeeded: true, revision: 3, .. }));
        assert_eq!(s.get("lock", None).expect("readable"), None);
        let r = s.apply(&cas(Compare::Value(None), TxnAction::Put(b"x".to_vec())));
        assert!(matches!(r, KvResult::CompareAndSwap { succeeded: true, .. }));
        assert_eq!(s.stats().cas_succeeded, 4);
        assert_eq!(s.stats().cas_failed, 2);
    }

    #[test]
    fn range_and_prefix_delete() {
        let mut s = KvStore::new();
        for k in ["app/a", "app/b", "apq", "b"] {
            s.apply(&put(k, "v"));
        }
        let keys: Vec<String> =
            s.range("app/", None, None).expect("readable").into_iter().map(|kv| kv.key).collect();
        assert_eq!(keys, ["app/a", "app/b"]);
        assert_eq!(s.range("", None, Some(3)).expect("readable").len(), 3);
        let r = s.apply(&KvOp::DeletePrefix { prefix: "app/".into(), time_ms: 9 });
        assert_eq!(r, KvResult::Deleted { revision: 5, deleted: 2 }, "one revision for the whole range");
        assert_eq!(s.live_keys(), 2);
    }

    #[test]
    fn compaction_keeps_live_keys_and_drops_history() {
        let mut s = KvStore::new();
        s.apply(&put("a", "1"));
        s.apply(&put("a", "2"));
        s.apply(&put("gone", "x"));
        s.apply(&del("gone"));
        s.apply(&put("a", "3"));
        let before = s.hash(None).expect("hash");
        assert_eq!(s.apply(&KvOp::Compact { revision: 4 }), KvResult::Compacted { revision: 4 });
        assert_eq!(s.hash(None).expect("hash"), before, "compaction changes no live state");
        assert_eq!(s.get("a", None).expect("readable").map(|kv| kv.value), Some(b"3".to_vec()));
        assert_eq!(s.get("a", Some(4)).expect("rev 4 is readable").map(|kv| kv.value), Some(b"2".to_vec()));
        assert!(s.get("a", Some(3)).is_err(), "revision 3 was compacted");
        assert_eq!(s.tombstones(), 0);
        assert_eq!(s.history_len(), 2);
        assert!(matches!(s.apply(&KvOp::Compact { revision: 4 }), KvResult::CompactRefused { .. }));
        assert!(matches!(s.apply(&KvOp::Compact { revision: 99 }), KvResult::CompactRefused { .. }));
    }

    #[test]
    fn reset_clears_everything_but_revisions_keep_rising() {
        let mut s = KvStore::new();
        s.apply(&put("a", "1"));
        s.apply(&put("b", "1"));
        assert_eq!(s.apply(&KvOp::Reset), KvResult::Reset { removed: 2 });
        assert_eq!(s.live_keys(), 0);
        assert_eq!(s.revision(), 3);
        s.apply(&put("a", "again"));
        let a = s.get("a", None).expect("readable").expect("exists");
        assert_eq!((a.create_revision, a.version), (4, 1));
    }

    #[test]
    fn equal_histories_hash_equal() {
        let ops = [put("x", "1"), put("y", "2"), del("x"), put("z", "3")];
        let (mut a, mut b) = (KvStore::new(), KvStore::new());
        for op in &ops {
            a.apply(op);
            b.apply(op);
        }
        assert_eq!(a.hash(None), b.hash(None));
        b.apply(&put("y", "2"));
        assert_ne!(a.hash(None), b.hash(None), "a version bump changes the hash");
    }
}
