//! The durable store, on redb.
//!
//! One redb file, `raft.redb`, in the member's data directory, and the snapshot images
//! beside it in `snap/` (see [`super::snapshot_file`]):
//!
//! ```text
//! table "log":  u64 index -> record(Entry)
//! table "meta": "hard_state" -> record(HardState)   "conf_state" -> record(ConfState)
//!               "trunc" -> record(index u64 LE, term u64 LE)
//!               "snapshot_file" -> record(SnapshotMetadata): the image is
//!                                  snap/<index>-<term>.snap
//!               "snapshot" -> record(Snapshot)       (older stores: image inline; read)
//!               "identity" -> record(JSON Identity)
//! record(x) = crc32(x) as u32 LE ++ x       (x: a protobuf message, prost encoding)
//! ```
//!
//! Every write is one redb transaction committed with `Durability::Immediate` (fsync)
//! before the method returns; a `Ready`'s entries and hard state go in one. A hard state
//! that only moves the commit index (raft-rs: no sync needed) stays in memory until the
//! next such write records it. Every record carries its own CRC32, checked on each read, so
//! a flipped bit is reported as corruption instead of being used.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use redb::{Database, ReadableTable, TableDefinition};

use super::entry_sizes::EntrySizes;
use super::mem_store::check_append;
use super::pending_hard_state::PendingHardState;
use super::read_stats::ReadStats;
use super::snapshot_file::{file_name, read_image, serve_snapshot, sync_dir, ImageCache, ImageData};
use super::term_runs::TermRuns;
use super::{
    check_entries_range, term_without_entry, to_raft, Identity, LogStore, Result, SnapshotImage,
    SnapshotWriter, StorageError,
};
use crate::metrics::Histogram;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// redb's page cache per member.
const CACHE_BYTES: usize = 16 << 20;

/// The file name inside the data directory.
pub const FILE_NAME: &str = "raft.redb";

/// The directory of snapshot images inside the data directory.
pub const SNAP_DIR: &str = "snap";

/// Where the current snapshot's image is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SnapSource {
    None,
    /// Inside the "snapshot" record (stores written before images moved to files).
    Inline,
    File(PathBuf),
}

/// A store on disk.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    snap_dir: PathBuf,
    /// The hard state; a commit index written without a sync (see
    /// [`LogStore::persist`]) goes with the next synced write.
    hard_state: PendingHardState,
    conf_state: ConfState,
    trunc: (u64, u64),
    last: u64,
    snapshot_meta: SnapshotMetadata,
    snapshot_source: SnapSource,
    /// The image last read, by snapshot index: a leader sends it to every follower that
    /// needs it without reading the file again.
    image_cache: ImageCache,
    identity: Option<Identity>,
    /// Reads raft made, for the member thread's slow-pass warning.
    reads: ReadStats,
    /// How long each durable commit took (fsync included), for `/metrics`.
    syncs: Arc<Mutex<Histogram>>,
    /// The term of every entry in the log, so `term` reads nothing.
    terms: TermRuns,
    /// The size of every entry after the compacted index, in memory.
    sizes: EntrySizes,
}

macro_rules! redb_try {
    ($e:expr, $what:expr) => {
        $e.map_err(|e| StorageError::Io(format!("{}: {e}", $what)))?
    };
}

pub(crate) fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

pub(crate) fn unseal<'a>(what: &str, record: &'a [u8]) -> Result<&'a [u8]> {
    if record.len() < 4 {
        return Err(StorageError::Corrupt(format!(
            "{what}: record of {} bytes has no checksum",
            record.len()
        )));
    }
    let (sum, payload) = record.split_at(4);
    let want = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
    let got = crc32fast::hash(payload);
    if want != got {
        return Err(StorageError::Corrupt(format!(
            "{what}: checksum mismatch (stored {want:08x}, computed {got:08x})"
        )));
    }
    Ok(payload)
}

pub(crate) fn decode<M: prost::Message + Default>(what: &str, record: &[u8]) -> Result<M> {
    M::decode(unseal(what, record)?).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Io(format!("create {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        // redb caches pages in memory; the log is mostly written and read once, so a
        // modest cache keeps a member's footprint small without slowing it down.
        let db = redb_try!(
            Database::builder().set_cache_size(CACHE_BYTES).create(&path),
            format!("open {}", path.display())
        );
        // Create the tables on first start so readers never see them missing.
        let tx = redb_try!(db.begin_write(), "begin");
        {
            redb_try!(tx.open_table(LOG), "open log table");
            redb_try!(tx.open_table(META), "open meta table");
        }
        redb_try!(tx.commit(), "commit table creation");

        let snap_dir = dir.join(SNAP_DIR);
        std::fs::create_dir_all(&snap_dir)
            .map_err(|e| StorageError::Io(format!("create {}: {e}", snap_dir.display())))?;
        let mut s = Self {
            db,
            path,
            snap_dir,
            hard_state: PendingHardState::default(),
            conf_state: ConfState::default(),
            trunc: (0, 0),
            last: 0,
            snapshot_meta: SnapshotMetadata::default(),
            snapshot_source: SnapSource::None,
            image_cache: ImageCache::default(),
            reads: ReadStats::default(),
            syncs: Arc::default(),
            terms: TermRuns::default(),
            sizes: EntrySizes::default(),
            identity: None,
        };
        s.load()?;
        s.remove_stale_images()?;
        Ok(s)
    }

    /// Removes image files the database does not name: left by a crash between writing an
    /// image and recording it, or between recording a new one and removing the old.
    fn remove_stale_images(&self) -> Result<()> {
        let keep = match &self.snapshot_source {
            SnapSource::File(p) => p.file_name().map(|n| n.to_os_string()),
            _ => None,
        };
        let list = std::fs::read_dir(&self.snap_dir)
            .map_err(|e| StorageError::Io(format!("list {}: {e}", self.snap_dir.display())))?;
        for entry in list.flatten() {
            if Some(entry.file_name()) != keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn load(&mut self) -> Result<()> {
        let rtx = redb_try!(self.db.begin_read(), "begin read");
        let meta = redb_try!(rtx.open_table(META), "open meta");
        let get = |k: &str| -> Result<Option<Vec<u8>>> {
            Ok(redb_try!(meta.get(k), format!("read {k}")).map(|g| g.value().to_vec()))
        };
        if let Some(r) = get("hard_state")? {
            self.hard_state = PendingHardState::loaded(decode("hard_state", &r)?);
        }
        if let Some(r) = get("conf_state")? {
            self.conf_state = decode("conf_state", &r)?;
        }
        if let Some(r) = get("trunc")? {
            let p = unseal("trunc", &r)?;
            if p.len() != 16 {
                return Err(StorageError::Corrupt(format!("trunc: {} bytes, expected 16", p.len())));
            }
            let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            self.trunc = (word(&p[..8]), word(&p[8..]));
        }
        if let Some(r) = get("snapshot_file")? {
            let meta: SnapshotMetadata = decode("snapshot_file", &r)?;
            let file = self.snap_dir.join(file_name(meta.index, meta.term));
            if !file.exists() {
                return Err(StorageError::Corrupt(format!(
                    "the snapshot at index {} names {}, which is missing",
                    meta.index,
                    file.display()
                )));
            }
            self.snapshot_meta = meta;
            self.snapshot_source = SnapSource::File(file);
        } else if let Some(r) = get("snapshot")? {
            let snap: Snapshot = decode("snapshot", &r)?;
            self.snapshot_meta = snap.get_metadata().clone();
            self.snapshot_source = SnapSource::Inline;
        }
        if let Some(r) = get("identity")? {
            let p = unseal("identity", &r)?;
            self.identity =
                Some(serde_json::from_slice(p).map_err(|e| StorageError::Corrupt(format!("identity: {e}")))?);
        }
        let log = redb_try!(rtx.open_table(LOG), "open log");
        self.last = match redb_try!(log.last(), "read the last entry") {
            Some((k, _)) => k.value(),
            None => self.trunc.0,
        };
        if self.last < self.trunc.0 {
            return Err(StorageError::Corrupt(format!(
                "last entry {} lies below the compacted index {}",
                self.last, self.trunc.0
            )));
        }
        let mut terms = Vec::new();
        let mut sizes = Vec::new();
        for item in redb_try!(log.range(self.trunc.0 + 1..), "read the log") {
            let (k, v) = redb_try!(item, "read the log");
            let e: Entry = decode(&format!("entry {}", k.value()), v.value())?;
            terms.push((k.value(), e.term));
            sizes.push((k.value(), e.encoded_len() as u64));
        }
        self.terms.clear();
        self.terms.append(terms);
        self.sizes.clear();
        self.sizes.compact_to(self.trunc.0);
        self.sizes.append(sizes);
        Ok(())
    }

    /// The log reads since the last call (then counts again).
    pub fn take_read_stats(&self) -> ReadStats {
        self.reads.take()
    }

    /// The latencies of its durable commits, shared with whoever reports them.
    pub fn sync_latency(&self) -> Arc<Mutex<Histogram>> {
        Arc::clone(&self.syncs)
    }

    /// Where the database file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one durable write transaction.
    fn write(&self, what: &str, f: impl FnOnce(&redb::WriteTransaction) -> Result<()>) -> Result<()> {
        let tx = redb_try!(self.db.begin_write(), what);
        f(&tx)?;
        let started = std::time::Instant::now();
        redb_try!(tx.commit(), what);
        self.syncs.lock().unwrap_or_else(|p| p.into_inner()).observe(started.elapsed());
        Ok(())
    }

    /// The current snapshot's image.
    fn image(&self) -> Result<Arc<Vec<u8>>> {
        self.image_cache.get(self.snapshot_meta.index, || match &self.snapshot_source {
            SnapSource::None => Err(StorageError::Invalid("there is no snapshot".into())),
            SnapSource::File(p) => read_image(p),
            SnapSource::Inline => {
                let rtx = redb_try!(self.db.begin_read(), "begin read");
                let meta = redb_try!(rtx.open_table(META), "open meta");
                let rec = redb_try!(meta.get("snapshot"), "read snapshot")
                    .ok_or_else(|| StorageError::Corrupt("the snapshot record is missing".into()))?;
                let snap: Snapshot = decode("snapshot", rec.value())?;
                Ok(snap.data)
            }
        })
    }

    /// Makes `image` the current snapshot in the database, with the other meta records
    /// `more` writes in the same transaction, then removes the previous image.
    fn record_snapshot(
        &mut self,
        image: SnapshotImage,
        more: impl FnOnce(&redb::WriteTransaction) -> Result<()>,
    ) -> Result<()> {
        let ImageData::File(path) = image.data else {
            return Err(StorageError::Invalid(
                "a snapshot image kept in memory cannot be recorded in a durable store; write it with the store's own writer".into(),
            ));
        };
        let meta = image.metadata;
        self.write("record snapshot", |tx| {
            let mut m = redb_try!(tx.open_table(META), "open meta");
            redb_try!(m.insert("snapshot_file", seal(&meta.encode_to_vec()).as_slice()), "write snapshot");
            redb_try!(m.remove("snapshot"), "remove the inline snapshot");
            drop(m);
            more(tx)
        })?;
        let old = std::mem::replace(&mut self.snapshot_source, SnapSource::File(path.clone()));
        if let SnapSource::File(old) = old {
            if old != path {
                let _ = std::fs::remove_file(old);
                sync_dir(&self.snap_dir)?;
            }
        }
        self.snapshot_meta = meta;
        Ok(())
    }

    fn read_entry(&self, idx: u64) -> Result<Entry> {
        let rtx = redb_try!(self.db.begin_read(), "begin read");
        let log = redb_try!(rtx.open_table(LOG), "open log");
        let rec = redb_try!(log.get(idx), format!("read entry {idx}"))
            .ok_or_else(|| StorageError::Corrupt(format!("entry {idx} is missing from the log")))?;
        decode(&format!("entry {idx}"), rec.value())
    }
}

impl raft::Storage for RedbStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.get().clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        check_entries_range(low, high, self.trunc.0, self.last)?;
        let started = std::time::Instant::now();
        let max = max_size.into().unwrap_or(u64::MAX);
        let read = || -> Result<Vec<Entry>> {
            let rtx = redb_try!(self.db.begin_read(), "begin read");
            let log = redb_try!(rtx.open_table(LOG), "open log");
            let mut out = Vec::new();
            let mut size = 0u64;
            for item in redb_try!(log.range(low..high), "range read") {
                let (k, v) = redb_try!(item, "range read");
                let e: Entry = decode(&format!("entry {}", k.value()), v.value())?;
                if e.index != k.value() {
                    return Err(StorageError::Corrupt(format!(
                        "entry stored at {} says index {}",
                        k.value(),
                        e.index
                    )));
                }
                size += e.encoded_len() as u64;
                // Like raft's limit_size: always at least one entry.
                if !out.is_empty() && size > max {
                    break;
                }
                out.push(e);
            }
            if (out.len() as u64) < (high - low) && size <= max {
                return Err(StorageError::Corrupt(format!("log has a hole between {low} and {high}")));
            }
            Ok(out)
        };
        let r = read();
        self.reads.count(r.as_ref().map_or(0, |v| v.len() as u64), 0, started.elapsed());
        r.map_err(to_raft)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if let Some(answer) = term_without_entry(idx, self.trunc, self.last) {
            return answer;
        }
        if let Some(term) = self.terms.term(idx) {
            return Ok(term);
        }
        let started = std::time::Instant::now();
        let r = self.read_entry(idx).map(|e| e.term).map_err(to_raft);
        self.reads.count(0, 1, started.elapsed());
        r
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.trunc.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        serve_snapshot(&self.snapshot_meta, request_index, to, || self.image())
    }
}

impl LogStore for RedbStore {
    fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        if self.hard_state.keep_unsynced(entries, hs, sync)? {
            return Ok(());
        }
        let first = entries.first().map(|e| e.index);
        if let Some(first) = first {
            check_append(first, self.trunc.0, self.last)?;
        }
        let hs = self.hard_state.to_record(hs);
        if first.is_none() && hs.is_none() {
            return Ok(());
        }
        let old_last = self.last;
        self.write("persist", |tx| {
            if let Some(first) = first {
                let mut log = redb_try!(tx.open_table(LOG), "open log");
                if first <= old_last {
                    redb_try!(log.retain_in(first.., |_, _| false), "truncate the log suffix");
                }
                for e in entries {
                    redb_try!(
                        log.insert(e.index, seal(&e.encode_to_vec()).as_slice()),
                        format!("write entry {}", e.index)
                    );
                }
            }
            if let Some(hs) = &hs {
                let mut meta = redb_try!(tx.open_table(META), "open meta");
                redb_try!(
                    meta.insert("hard_state", seal(&hs.encode_to_vec()).as_slice()),
                    "write hard state"
                );
            }
            Ok(())
        })?;
        if let Some(last) = entries.last() {
            self.last = last.index;
            self.terms.append(entries.iter().map(|e| (e.index, e.term)));
            self.sizes.append(entries.iter().map(|e| (e.index, e.encoded_len() as u64)));
        }
        if let Some(hs) = hs {
            self.hard_state.recorded(hs);
        }
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<()> {
        self.write("conf state", |tx| {
            let mut meta = redb_try!(tx.open_table(META), "open meta");
            redb_try!(meta.insert("conf_state", seal(&cs.encode_to_vec()).as_slice()), "write conf state");
            Ok(())
        })?;
        self.conf_state = cs.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata().clone();
        if meta.index <= self.trunc.0 {
            return Ok(());
        }
        let mut hs = self.hard_state.get().clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let cs = meta.get_conf_state().clone();
        let image = self.snapshot_writer().write(meta.clone(), &snap.data)?;
        self.record_snapshot(image, |tx| {
            let mut log = redb_try!(tx.open_table(LOG), "open log");
            redb_try!(log.retain(|_, _| false), "clear the log");
            let mut m = redb_try!(tx.open_table(META), "open meta");
            redb_try!(m.insert("trunc", seal(&trunc_bytes(meta.index, meta.term)).as_slice()), "write trunc");
            redb_try!(m.insert("hard_state", seal(&hs.encode_to_vec()).as_slice()), "write hard state");
            redb_try!(m.insert("conf_state", seal(&cs.encode_to_vec()).as_slice()), "write conf state");
            Ok(())
        })?;
        self.trunc = (meta.index, meta.term);
        self.last = meta.index;
        self.terms.clear();
        self.sizes.clear();
        self.sizes.compact_to(meta.index);
        self.hard_state.recorded(hs);
        self.conf_state = cs;
        Ok(())
    }

    fn snapshot_writer(&self) -> SnapshotWriter {
        SnapshotWriter::in_dir(self.snap_dir.clone())
    }

    fn create_snapshot(&mut self, image: SnapshotImage, keep: u64) -> Result<()> {
        let index = image.metadata.index;
        if index < self.snapshot_meta.index || index <= self.trunc.0 {
            // An image of the current snapshot's index and term has the current file's
            // name (the writer renamed it over that file): removing it would lose both.
            if !matches!((&image.data, &self.snapshot_source), (ImageData::File(p), SnapSource::File(q)) if p == q)
            {
                image.discard();
            }
            return Ok(());
        }
        let compact_to = index.saturating_sub(keep);
        let new_trunc = if compact_to > self.trunc.0 {
            let t =
                raft::Storage::term(self, compact_to).map_err(|e| StorageError::Invalid(e.to_string()))?;
            Some((compact_to, t))
        } else {
            None
        };
        // A snapshot's index was applied, so committed, but perhaps only by a commit index
        // kept without a sync: it goes on record with the snapshot, or a restart would
        // find a snapshot beyond its commit (raft-rs refuses to start on that).
        let hs = self.hard_state.to_record(None);
        self.record_snapshot(image, |tx| {
            let mut m = redb_try!(tx.open_table(META), "open meta");
            if let Some(hs) = &hs {
                redb_try!(m.insert("hard_state", seal(&hs.encode_to_vec()).as_slice()), "write hard state");
            }
            if let Some((i, t)) = new_trunc {
                redb_try!(m.insert("trunc", seal(&trunc_bytes(i, t)).as_slice()), "write trunc");
                let mut log = redb_try!(tx.open_table(LOG), "open log");
                redb_try!(log.retain_in(..=i, |_, _| false), "compact the log");
            }
            Ok(())
        })?;
        self.hard_state.all_recorded();
        if let Some(t) = new_trunc {
            self.trunc = t;
            self.terms.compact_to(t.0);
            self.sizes.compact_to(t.0);
        }
        Ok(())
    }

    fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.snapshot_meta.clone()
    }

    fn hard_state(&self) -> HardState {
        self.hard_state.get().clone()
    }

    fn identity(&self) -> Option<Identity> {
        self.identity.clone()
    }

    fn ensure_identity(&mut self, id: &Identity) -> Result<()> {
        if let Some(have) = &self.identity {
            return have.check(id);
        }
        let json = serde_json::to_vec(id).map_err(|e| StorageError::Io(format!("encode identity: {e}")))?;
        self.write("identity", |tx| {
            let mut m = redb_try!(tx.open_table(META), "open meta");
            redb_try!(m.insert("identity", seal(&json).as_slice()), "write identity");
            Ok(())
        })?;
        self.identity = Some(id.clone());
        Ok(())
    }

    fn disk_usage(&self) -> u64 {
        let image = match &self.snapshot_source {
            SnapSource::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            _ => 0,
        };
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0) + image
    }

    fn entry_bytes(&self, after: u64, upto: u64) -> Option<u64> {
        self.sizes.bytes(after, upto)
    }
}

fn trunc_bytes(index: u64, term: u64) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&term.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgraft-redb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn conformance() {
        let dir = scratch("conformance");
        let mut n = 0;
        super::super::conformance::run_all(|prev: Option<RedbStore>| {
            match prev {
                // Reopen the same file: what was written must be there.
                Some(s) => {
                    let path = s.path().parent().expect("the file lives in a directory").to_path_buf();
                    drop(s);
                    RedbStore::open(&path).expect("reopen")
                }
                None => {
                    n += 1;
                    RedbStore::open(&dir.join(n.to_string())).expect("open a fresh store")
                }
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_flipped_byte_is_reported_not_used() {
        let dir = scratch("corrupt");
        {
            let mut s = RedbStore::open(&dir).expect("open");
            let hs = HardState { term: 7, vote: 2, commit: 0 };
            s.set_hard_state(&hs).expect("write");
        }
        // Find the record in the file and flip a byte of its payload.
        let file = dir.join(FILE_NAME);
        let mut bytes = std::fs::read(&file).expect("read the file");
        let hs = HardState { term: 7, vote: 2, commit: 0 };
        let needle = seal(&hs.encode_to_vec());
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .expect("the record is in the file");
        bytes[at + needle.len() - 1] ^= 0x01;
        std::fs::write(&file, &bytes).expect("write the file back");
        match RedbStore::open(&dir) {
            Err(StorageError::Corrupt(msg)) => assert!(msg.contains("hard_state"), "{msg}"),
            Err(other) => panic!("expected a corruption report, got {other}"),
            Ok(_) => panic!("a corrupt hard state was used"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
