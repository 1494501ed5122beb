//! The durable store: an append-only, segmented, checksummed log (format in
//! [`super::log_segment`]) and snapshot images beside it (see [`super::snapshot_file`]).
//!
//! ```text
//! <data dir>/raftlog/0000000000000001.seg, ...     the log, oldest first
//! <data dir>/snap/<index>-<term>.snap              the current snapshot's image
//! ```
//!
//! Why not a B-tree (the redb file it replaces, whose format it still reads to migrate):
//! a Raft log is written at its end and dropped at its start. The `Ready`s that arrive
//! while one write is out are one write at the end of the newest segment and one
//! `fdatasync`, on the log's I/O thread (see [`super::log_writer`]); compaction after a
//! snapshot is the deletion of whole segments, which gives the space back at once. redb
//! paid a B-tree's page writes per append and deleted thousands of entries one by one in
//! the compaction transaction, which held the Raft thread for 250-370 ms at every
//! snapshot under load.
//!
//! Everything the store answers is in memory (hard state, membership, the terms and sizes
//! of entries, the newest entries decoded); older entries are read from their segment at
//! the recorded place.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};

use super::log_index::{Loc, LogIndex, CACHE_BYTES};
use super::log_segment::{header, scan, Record, State, HEADER};
use super::log_writer::{Job, LogWriter, SyncTrail};
use super::mem_store::check_append;
use super::pending_hard_state::PendingHardState;
use super::read_stats::ReadStats;
use super::snapshot_file::{file_name, read_image, serve_snapshot, sync_dir, ImageCache, ImageData};
use super::{
    check_entries_range, term_without_entry, to_raft, Identity, LogStore, RedbStore, Result, SnapshotImage,
    SnapshotWriter, StorageError, Waker,
};
use crate::metrics::Histogram;

/// The log's directory inside the data directory.
pub const LOG_DIR: &str = "raftlog";

/// The directory of snapshot images inside the data directory.
const SNAP_DIR: &str = "snap";

/// A segment is closed and the next one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 8 << 20;

fn io(what: impl std::fmt::Display, e: std::io::Error) -> StorageError {
    StorageError::Io(format!("{what}: {e}"))
}

/// Removes the files the store no longer names on a thread of its own, in the order asked:
/// unlinking a snapshot image of tens of MB and the segments a compaction emptied, then
/// syncing their directories, held the Raft thread about 100 ms at every snapshot. A crash
/// before a removal leaves a file that start-up removes (an image) or that replay skips and
/// the next compaction removes (a segment).
struct Reaper {
    tx: Option<std::sync::mpsc::Sender<(Vec<PathBuf>, PathBuf)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reaper {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<PathBuf>, PathBuf)>();
        let thread = crate::node::with_signals_blocked(|| {
            std::thread::Builder::new().name("pgraft-reaper".into()).spawn(move || {
                for (files, dir) in rx {
                    for f in files {
                        if let Err(e) = std::fs::remove_file(&f) {
                            if e.kind() != std::io::ErrorKind::NotFound {
                                log::warn!("cannot remove {}: {e}", f.display());
                            }
                        }
                    }
                    if let Err(e) = sync_dir(&dir) {
                        log::warn!("{e}");
                    }
                }
            })
        });
        match thread {
            Ok(t) => Self { tx: Some(tx), thread: Some(t) },
            Err(e) => {
                log::warn!("files are removed on the Raft thread: no thread for it ({e})");
                Self { tx: None, thread: None }
            }
        }
    }

    /// Removes `files`, then syncs `dir`.
    fn remove(&self, files: Vec<PathBuf>, dir: &Path) {
        let job = (files, dir.to_path_buf());
        // Without the thread (it could not start, or it is gone), here and now.
        let job = match &self.tx {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(unsent) => unsent.0,
            },
            None => job,
        };
        for f in &job.0 {
            let _ = std::fs::remove_file(f);
        }
        let _ = sync_dir(&job.1);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One segment file.
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Shared with the I/O thread, which writes at the end while the Raft thread reads.
    file: Arc<File>,
}

/// What `persist_async` took while a write was out: written as one record when it is done.
struct Staged {
    /// The highest `Ready` number it covers.
    number: u64,
    /// Consecutive entries; a later `Ready`'s that overwrite some replace them.
    entries: Vec<Entry>,
}

impl Staged {
    fn add(&mut self, number: u64, entries: &[Entry]) {
        self.number = self.number.max(number);
        if let Some(first) = entries.first() {
            let keep = self.entries.iter().position(|e| e.index >= first.index).unwrap_or(self.entries.len());
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
    }

    fn first(&self) -> u64 {
        self.entries.first().map_or(u64::MAX, |e| e.index)
    }
}

/// The write out on the I/O thread.
struct InFlight {
    /// The highest `Ready` number durable when it is done.
    covers: u64,
    /// Its first entry's index (`u64::MAX`: none).
    first: u64,
}

/// A store on disk.
pub struct SegmentStore {
    log_dir: PathBuf,
    snap_dir: PathBuf,
    /// Oldest first; the last one is written.
    segments: Vec<Segment>,
    /// Where the next record goes in the newest segment.
    write_pos: u64,
    segment_bytes: u64,
    /// The hard state; a commit index written without a sync (see
    /// [`LogStore::persist`]) goes with the next synced write.
    hard_state: PendingHardState,
    conf_state: ConfState,
    /// Index and term of the last compacted entry.
    trunc: (u64, u64),
    log: LogIndex,
    snapshot_meta: SnapshotMetadata,
    /// The image last read, by snapshot index: a leader sends it to every follower that
    /// needs it without reading the file again.
    image_cache: ImageCache,
    identity: Option<Identity>,
    reads: ReadStats,
    syncs: Arc<Mutex<Histogram>>,
    reaper: Reaper,
    writer: LogWriter,
    trail: Option<Arc<SyncTrail>>,
    staged: Option<Staged>,
    in_flight: Option<InFlight>,
    /// The highest `Ready` number made durable and not yet reported.
    reported: Option<u64>,
}

/// The state replay rebuilds from the records, in order.
struct Replay {
    hard_state: HardState,
    conf_state: ConfState,
    trunc: (u64, u64),
    log: LogIndex,
    snapshot_meta: SnapshotMetadata,
    identity: Option<Identity>,
    /// The highest index below which entries were missing when a record resumed the log
    /// after a gap (their segments were deleted): a later compaction must cover it.
    gap: u64,
}

impl Replay {
    fn apply(&mut self, segment: u64, record: Record, spans: Vec<(u64, u32)>, what: &str) -> Result<()> {
        match record {
            Record::State(st) => {
                if st.clear {
                    self.log.clear_to(st.trunc.0);
                } else {
                    self.log.compact_to(st.trunc.0);
                }
                self.hard_state = st.hard_state;
                self.conf_state = st.conf_state;
                self.trunc = st.trunc;
                self.snapshot_meta = st.snapshot;
                if !st.identity.is_empty() {
                    self.identity = Some(
                        serde_json::from_slice(&st.identity)
                            .map_err(|e| StorageError::Corrupt(format!("{what}: identity: {e}")))?,
                    );
                }
            }
            Record::Entries { hard_state, entries } => {
                if let Some(hs) = hard_state {
                    self.hard_state = hs;
                }
                let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
                let mut locs: Vec<Loc> =
                    spans.iter().map(|&(offset, len)| Loc { segment, offset, len }).collect();
                let mut entries = entries;
                if first <= self.log.base() {
                    // Compacted since: only what follows the compaction point is live.
                    let skip = ((self.log.base() + 1 - first) as usize).min(entries.len());
                    entries.drain(..skip);
                    locs.drain(..skip);
                } else if first > self.log.last() + 1 {
                    self.gap = self.gap.max(first - 1);
                    self.log.clear_to(first - 1);
                }
                self.log.append(entries, locs);
            }
        }
        Ok(())
    }
}

impl SegmentStore {
    /// Opens (or creates) the store in `dir`; a store of the previous format (`raft.redb`)
    /// is carried over first.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`SegmentStore::open`] with segments of `segment_bytes` (small in tests).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self> {
        let log_dir = dir.join(LOG_DIR);
        let snap_dir = dir.join(SNAP_DIR);
        for d in [&log_dir, &snap_dir] {
            std::fs::create_dir_all(d).map_err(|e| io(format!("create {}", d.display()), e))?;
        }
        let mut seqs = list_segments(&log_dir)?;
        let old = dir.join(super::FILE_NAME);
        if seqs.is_empty() && old.exists() {
            migrate_from_redb(dir, &log_dir, &snap_dir)?;
            seqs = list_segments(&log_dir)?;
        }
        let mut replay = Replay {
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            trunc: (0, 0),
            log: LogIndex::new(0, CACHE_BYTES),
            snapshot_meta: SnapshotMetadata::default(),
            identity: None,
            gap: 0,
        };
        let trail = SyncTrail::open_if_asked(dir)?;
        let mut segments = Vec::new();
        let mut write_pos = 0;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = log_dir.join(segment_name(seq));
            let what = path.display().to_string();
            let bytes = std::fs::read(&path).map_err(|e| io(format!("read {what}"), e))?;
            let found = scan(&what, seq, &bytes)?;
            let newest = i + 1 == seqs.len();
            if let Some(why) = &found.torn {
                if !newest {
                    return Err(StorageError::Corrupt(format!(
                        "{what}: {why}, and newer segments follow it"
                    )));
                }
                log::warn!("{what}: {why}: a write that a crash interrupted, cut off");
            }
            if found.end < HEADER as u64 {
                // Its creation was interrupted: it holds nothing.
                std::fs::remove_file(&path).map_err(|e| io(format!("remove {what}"), e))?;
                sync_dir(&log_dir)?;
                continue;
            }
            for s in found.records {
                replay.apply(seq, s.record, s.spans, &what)?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io(format!("open {what}"), e))?;
            if found.torn.is_some() {
                file.set_len(found.end).map_err(|e| io(format!("cut {what}"), e))?;
            }
            // After a crash of the process (not of the machine) the newest segment can hold
            // records written but never synced, which replay just took as the log: they
            // are synced before the member answers anything about them (PostgreSQL syncs
            // its data directory after a crash for the same reason).
            if newest {
                file.sync_all().map_err(|e| io(format!("sync {what}"), e))?;
            }
            write_pos = found.end;
            if let Some(t) = &trail {
                t.note(seq, found.end);
            }
            segments.push(Segment { seq, path, file: Arc::new(file) });
        }
        if replay.gap > replay.trunc.0 {
            return Err(StorageError::Corrupt(format!(
                "the log misses the entries up to {} (compacted only up to {})",
                replay.gap, replay.trunc.0
            )));
        }
        if replay.snapshot_meta.index > 0 {
            let image = snap_dir.join(file_name(replay.snapshot_meta.index, replay.snapshot_meta.term));
            if !image.exists() {
                return Err(StorageError::Corrupt(format!(
                    "the snapshot at index {} names {}, which is missing",
                    replay.snapshot_meta.index,
                    image.display()
                )));
            }
        }
        let syncs: Arc<Mutex<Histogram>> = Arc::default();
        let writer = LogWriter::start(Arc::clone(&syncs), trail.clone())?;
        let mut s = Self {
            log_dir,
            snap_dir,
            segments,
            write_pos,
            segment_bytes,
            hard_state: PendingHardState::loaded(replay.hard_state),
            conf_state: replay.conf_state,
            trunc: replay.trunc,
            log: replay.log,
            snapshot_meta: replay.snapshot_meta,
            image_cache: ImageCache::default(),
            identity: replay.identity,
            reads: ReadStats::default(),
            syncs,
            reaper: Reaper::start(),
            writer,
            trail,
            staged: None,
            in_flight: None,
            reported: None,
        };
        if s.segments.is_empty() {
            s.start_segment(seqs.last().copied().unwrap_or(1))?;
        }
        s.remove_stale_images()?;
        Ok(s)
    }

    /// The log reads since the last call (then counts again).
    pub fn take_read_stats(&self) -> ReadStats {
        self.reads.take()
    }

    /// The latencies of its synced writes, shared with whoever reports them.
    pub fn sync_latency(&self) -> Arc<Mutex<Histogram>> {
        Arc::clone(&self.syncs)
    }

    /// How many segment files the log spans.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Removes image files the log does not name: left by a crash between writing an image
    /// and recording it, or between recording a new one and removing the old.
    fn remove_stale_images(&self) -> Result<()> {
        let keep = (self.snapshot_meta.index > 0)
            .then(|| std::ffi::OsString::from(file_name(self.snapshot_meta.index, self.snapshot_meta.term)));
        let list = std::fs::read_dir(&self.snap_dir)
            .map_err(|e| io(format!("list {}", self.snap_dir.display()), e))?;
        for entry in list.flatten() {
            if Some(entry.file_name()) != keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The durable state but the entries, as a state record records it.
    fn state(&self) -> State {
        State {
            hard_state: self.hard_state.get().clone(),
            conf_state: self.conf_state.clone(),
            trunc: self.trunc,
            clear: false,
            snapshot: self.snapshot_meta.clone(),
            identity: self.identity.as_ref().and_then(|id| serde_json::to_vec(id).ok()).unwrap_or_default(),
        }
    }

    /// Creates segment `seq` with its header and a state record, synced, and writes to it
    /// from now on: older segments are needed only for their entries. No write is out;
    /// the state record holds the hard state on disk, not one staged (whose commit may
    /// name entries still staged): the next record carries that.
    fn start_segment(&mut self, seq: u64) -> Result<()> {
        let path = self.log_dir.join(segment_name(seq));
        let what = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io(format!("create {what}"), e))?;
        let mut bytes = header(seq);
        let state = State { hard_state: self.hard_state.on_disk().clone(), ..self.state() };
        Record::State(Box::new(state)).encode_into(&mut bytes);
        file.write_all_at(&bytes, 0).map_err(|e| io(format!("write {what}"), e))?;
        file.sync_all().map_err(|e| io(format!("sync {what}"), e))?;
        sync_dir(&self.log_dir)?;
        if let Some(t) = &self.trail {
            t.note(seq, bytes.len() as u64);
        }
        self.segments.push(Segment { seq, path, file: Arc::new(file) });
        self.write_pos = bytes.len() as u64;
        Ok(())
    }

    /// Starts a new segment if the newest is full; no write is out.
    fn rotate_if_full(&mut self) -> Result<()> {
        if self.write_pos >= self.segment_bytes {
            let next = self.segments.last().map_or(1, |s| s.seq + 1);
            self.start_segment(next)?;
        }
        Ok(())
    }

    /// Takes the end of the write out if it ended, and hands what was staged meanwhile to
    /// the I/O thread as one record if it is idle.
    fn advance_io(&mut self) -> Result<()> {
        if let Some(r) = self.writer.try_take() {
            self.finished(r?);
        }
        if !self.writer.busy() {
            self.seal()?;
        }
        Ok(())
    }

    /// Waits until nothing is staged or out: every write before is durable.
    fn drain(&mut self) -> Result<()> {
        loop {
            if let Some(r) = self.writer.wait() {
                self.finished(r?);
            }
            if self.staged.is_none() {
                return Ok(());
            }
            self.seal()?;
        }
    }

    /// The write out is durable.
    fn finished(&mut self, number: u64) {
        let covers = self.in_flight.take().map_or(number, |f| f.covers.max(number));
        self.reported = Some(self.reported.map_or(covers, |r| r.max(covers)));
        self.pin();
    }

    /// Writes what is staged as one record (with the hard state, if the disk's is older)
    /// on the I/O thread, which is idle.
    fn seal(&mut self) -> Result<()> {
        let Some(st) = self.staged.take() else { return Ok(()) };
        self.rotate_if_full()?;
        let hs = self.hard_state.to_record(None);
        let first = st.entries.first().map(|e| e.index);
        let record = Record::Entries { hard_state: hs.clone(), entries: st.entries };
        let mut bytes = Vec::new();
        let spans = record.encode_into(&mut bytes);
        let Some(seg) = self.segments.last() else {
            return Err(StorageError::Invalid("the log has no segment to write to".into()));
        };
        let offset = self.write_pos;
        if let Some(first) = first {
            let locs = spans.into_iter().map(|(o, len)| Loc { segment: seg.seq, offset: offset + o, len });
            self.log.set_locs(first, locs);
        }
        if let Some(hs) = hs {
            self.hard_state.recorded(hs);
        }
        self.write_pos += bytes.len() as u64;
        let job = Job {
            file: Arc::clone(&seg.file),
            seq: seg.seq,
            path: seg.path.clone(),
            offset,
            bytes,
            number: st.number,
        };
        self.in_flight = Some(InFlight { covers: st.number, first: first.unwrap_or(u64::MAX) });
        self.writer.submit(job)?;
        self.pin();
        Ok(())
    }

    /// Keeps entries not yet durable in the cache: reading them from their segment could
    /// come before the I/O thread wrote them.
    fn pin(&mut self) {
        let staged = self.staged.as_ref().map_or(u64::MAX, Staged::first);
        let out = self.in_flight.as_ref().map_or(u64::MAX, |f| f.first);
        self.log.pin_from(staged.min(out));
    }

    /// A write that needs no record of its own is durable with the write out or staged.
    fn attach(&mut self, number: u64) -> Option<u64> {
        if let Some(st) = &mut self.staged {
            st.number = st.number.max(number);
            None
        } else if let Some(f) = &mut self.in_flight {
            f.covers = f.covers.max(number);
            None
        } else {
            Some(number)
        }
    }

    /// Writes `record` at the end of the log, synced, after every write started before it:
    /// starts a new segment first when the newest is full.
    fn write(&mut self, record: &Record) -> Result<()> {
        self.drain()?;
        self.rotate_if_full()?;
        let mut bytes = Vec::new();
        let Some(seg) = self.segments.last() else {
            return Err(StorageError::Invalid("the log has no segment to write to".into()));
        };
        record.encode_into(&mut bytes);
        let started = std::time::Instant::now();
        let what = || seg.path.display().to_string();
        seg.file.write_all_at(&bytes, self.write_pos).map_err(|e| io(format!("write {}", what()), e))?;
        seg.file.sync_data().map_err(|e| io(format!("sync {}", what()), e))?;
        self.syncs.lock().unwrap_or_else(|p| p.into_inner()).observe(started.elapsed());
        self.write_pos += bytes.len() as u64;
        if let Some(t) = &self.trail {
            t.note(seg.seq, self.write_pos);
        }
        Ok(())
    }

    /// Deletes the oldest segments while none of their entries is live; the newest stays.
    fn drop_compacted_segments(&mut self) -> Result<()> {
        let mut dropped = Vec::new();
        while self.segments.len() > 1 {
            let seq = self.segments[0].seq;
            if self.log.newest_in(seq) > 0 {
                break;
            }
            dropped.push(self.segments.remove(0).path);
        }
        if !dropped.is_empty() {
            self.reaper.remove(dropped, &self.log_dir);
        }
        Ok(())
    }

    /// The current snapshot's image.
    fn image(&self) -> Result<Arc<Vec<u8>>> {
        let meta = &self.snapshot_meta;
        self.image_cache.get(meta.index, || match meta.index {
            0 => Err(StorageError::Invalid("there is no snapshot".into())),
            _ => read_image(&self.image_path(meta)),
        })
    }

    fn image_path(&self, meta: &SnapshotMetadata) -> PathBuf {
        self.snap_dir.join(file_name(meta.index, meta.term))
    }

    /// Records `state`, whose snapshot's image is already durable, then removes the
    /// previous image.
    fn record_snapshot(&mut self, state: State) -> Result<()> {
        self.write(&Record::State(Box::new(state.clone())))?;
        let old = std::mem::replace(&mut self.snapshot_meta, state.snapshot);
        self.hard_state.recorded(state.hard_state);
        self.conf_state = state.conf_state;
        self.trunc = state.trunc;
        if old.index > 0 {
            let (old_path, new_path) = (self.image_path(&old), self.image_path(&self.snapshot_meta));
            if old_path != new_path {
                self.reaper.remove(vec![old_path], &self.snap_dir);
            }
        }
        Ok(())
    }

    fn read_entry(&self, index: u64) -> Result<Entry> {
        if let Some(e) = self.log.cached(index) {
            return Ok(e.clone());
        }
        let loc = self
            .log
            .loc(index)
            .ok_or_else(|| StorageError::Invalid(format!("entry {index} is not in the log")))?;
        if loc == Loc::UNWRITTEN {
            return Err(StorageError::Invalid(format!("entry {index} is neither written nor cached")));
        }
        let seg = self.segments.iter().find(|s| s.seq == loc.segment).ok_or_else(|| {
            StorageError::Corrupt(format!("entry {index} names segment {}, which is gone", loc.segment))
        })?;
        let mut buf = vec![0u8; loc.len as usize];
        seg.file
            .read_exact_at(&mut buf, loc.offset)
            .map_err(|e| io(format!("read entry {index} from {}", seg.path.display()), e))?;
        let e = Entry::decode(buf.as_slice())
            .map_err(|e| StorageError::Corrupt(format!("entry {index} in {}: {e}", seg.path.display())))?;
        if e.index != index {
            return Err(StorageError::Corrupt(format!("entry {index} read back as entry {}", e.index)));
        }
        Ok(e)
    }
}

/// A segment's file name.
fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

/// The sequence numbers of the segments in `dir`, in order; other files are left alone.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(format!("list {}", dir.display()), e))?.flatten() {
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else { continue };
        if let Ok(seq) = u64::from_str_radix(stem, 16) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
        return Err(StorageError::Corrupt(format!(
            "the segments in {} are not consecutive: {seqs:?}",
            dir.display()
        )));
    }
    Ok(seqs)
}

/// Carries a store of the previous format (`raft.redb`, pgraft 1.0) over to the log: its
/// whole state goes into a first segment, synced; only then is the old file removed. A
/// crash before that leaves the old file and no segment (or a torn one, removed): the
/// next start migrates again.
fn migrate_from_redb(dir: &Path, log_dir: &Path, snap_dir: &Path) -> Result<()> {
    use raft::Storage as _;
    let old = RedbStore::open(dir)?;
    let meta = old.snapshot_metadata();
    if meta.index > 0 && !snap_dir.join(file_name(meta.index, meta.term)).exists() {
        // Stores older still kept the image inside the database.
        let snap = old.snapshot(0, 0).map_err(|e| StorageError::Io(format!("read the old snapshot: {e}")))?;
        let image = SnapshotWriter::in_dir(snap_dir.to_path_buf()).write(meta.clone(), &snap.data)?;
        drop(image);
    }
    let first = old.first_index().map_err(|e| StorageError::Io(e.to_string()))?;
    let last = old.last_index().map_err(|e| StorageError::Io(e.to_string()))?;
    let trunc_term = old.term(first - 1).map_err(|e| StorageError::Io(e.to_string()))?;
    let state = State {
        hard_state: old.hard_state(),
        conf_state: old.initial_state().map_err(|e| StorageError::Io(e.to_string()))?.conf_state,
        trunc: (first - 1, trunc_term),
        clear: true,
        snapshot: meta,
        identity: match old.identity() {
            Some(id) => {
                serde_json::to_vec(&id).map_err(|e| StorageError::Io(format!("encode identity: {e}")))?
            }
            None => Vec::new(),
        },
    };
    let mut records = vec![Record::State(Box::new(state))];
    let mut at = first;
    while at <= last {
        let upto = (at + 1000).min(last + 1);
        let entries = old
            .entries(at, upto, None, GetEntriesContext::empty(false))
            .map_err(|e| StorageError::Io(format!("read the old log: {e}")))?;
        at += entries.len() as u64;
        records.push(Record::Entries { hard_state: None, entries });
    }
    drop(old);
    let path = log_dir.join(segment_name(1));
    let mut bytes = header(1);
    for r in &records {
        r.encode_into(&mut bytes);
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io(format!("create {}", path.display()), e))?;
    file.write_all_at(&bytes, 0).map_err(|e| io(format!("write {}", path.display()), e))?;
    file.sync_all().map_err(|e| io(format!("sync {}", path.display()), e))?;
    sync_dir(log_dir)?;
    let old_file = dir.join(super::FILE_NAME);
    std::fs::remove_file(&old_file).map_err(|e| io(format!("remove {}", old_file.display()), e))?;
    sync_dir(dir)?;
    log::info!("carried the Raft log over from {} to {}", old_file.display(), log_dir.display());
    Ok(())
}

impl raft::Storage for SegmentStore {
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
        check_entries_range(low, high, self.trunc.0, self.log.last())?;
        let started = std::time::Instant::now();
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let e = self.read_entry(index).map_err(to_raft)?;
            size += e.encoded_len() as u64;
            // Like raft's limit_size: always at least one entry.
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        self.reads.count(out.len() as u64, 0, started.elapsed());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if let Some(answer) = term_without_entry(idx, self.trunc, self.log.last()) {
            return answer;
        }
        if let Some(term) = self.log.terms.term(idx) {
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
        Ok(self.log.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        serve_snapshot(&self.snapshot_meta, request_index, to, || self.image())
    }
}

impl LogStore for SegmentStore {
    fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        self.persist_async(0, entries, hs, sync)?;
        if sync {
            self.drain()?;
        }
        Ok(())
    }

    fn persist_async(
        &mut self,
        number: u64,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<Option<u64>> {
        if self.hard_state.keep_unsynced(entries, hs, sync)? {
            return Ok(self.attach(number));
        }
        if let Some(first) = entries.first() {
            check_append(first.index, self.trunc.0, self.log.last())?;
        }
        if let Some(hs) = hs {
            self.hard_state.show(hs);
        }
        if entries.is_empty() && self.hard_state.to_record(None).is_none() {
            return Ok(self.attach(number));
        }
        // Readable at once; entries and hard state go in one record, which a crash keeps
        // whole or not at all.
        self.log.append(entries.to_vec(), vec![Loc::UNWRITTEN; entries.len()]);
        self.staged.get_or_insert_with(|| Staged { number, entries: Vec::new() }).add(number, entries);
        self.pin();
        self.advance_io()?;
        Ok(None)
    }

    fn poll_durable(&mut self) -> Result<Option<u64>> {
        self.advance_io()?;
        Ok(self.reported.take())
    }

    fn flush(&mut self) -> Result<Option<u64>> {
        self.drain()?;
        Ok(self.reported.take())
    }

    fn set_waker(&mut self, waker: Waker) {
        self.writer.set_waker(waker);
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<()> {
        self.write(&Record::State(Box::new(State { conf_state: cs.clone(), ..self.state() })))?;
        self.conf_state = cs.clone();
        self.hard_state.all_recorded();
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
        drop(image);
        let state = State {
            hard_state: hs,
            conf_state: cs,
            trunc: (meta.index, meta.term),
            clear: true,
            snapshot: meta.clone(),
            ..self.state()
        };
        self.record_snapshot(state)?;
        self.log.clear_to(meta.index);
        self.drop_compacted_segments()
    }

    fn snapshot_writer(&self) -> SnapshotWriter {
        SnapshotWriter::in_dir(self.snap_dir.clone())
    }

    fn create_snapshot(&mut self, image: SnapshotImage, keep: u64) -> Result<()> {
        let index = image.metadata.index;
        if index < self.snapshot_meta.index || index <= self.trunc.0 {
            // An image of the current snapshot's index and term has the current file's
            // name (the writer renamed it over that file): removing it would lose both.
            let current = self.snapshot_meta.index > 0
                && image.metadata.index == self.snapshot_meta.index
                && image.metadata.term == self.snapshot_meta.term;
            if !current {
                image.discard();
            }
            return Ok(());
        }
        if !matches!(image.data, ImageData::File(_)) {
            return Err(StorageError::Invalid(
                "a snapshot image kept in memory cannot be recorded in a durable store; write it with the store's own writer".into(),
            ));
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
        let state =
            State { trunc: new_trunc.unwrap_or(self.trunc), snapshot: image.metadata, ..self.state() };
        self.record_snapshot(state)?;
        self.log.compact_to(self.trunc.0);
        self.drop_compacted_segments()
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
        self.write(&Record::State(Box::new(State { identity: json, ..self.state() })))?;
        self.hard_state.all_recorded();
        self.identity = Some(id.clone());
        Ok(())
    }

    fn disk_usage(&self) -> u64 {
        let log: u64 = self.segments.iter().map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len())).sum();
        let image = if self.snapshot_meta.index > 0 {
            std::fs::metadata(self.image_path(&self.snapshot_meta)).map_or(0, |m| m.len())
        } else {
            0
        };
        log + image
    }

    fn entry_bytes(&self, after: u64, upto: u64) -> Option<u64> {
        self.log.sizes.bytes(after, upto)
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage as _;

    use super::*;
    use crate::storage::create_snapshot_now;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgraft-seg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn ent(index: u64, term: u64, bytes: usize) -> Entry {
        Entry { index, term, data: vec![index as u8; bytes], ..Default::default() }
    }

    fn voters() -> ConfState {
        ConfState { voters: vec![1, 2, 3], ..Default::default() }
    }

    #[test]
    fn conformance() {
        let dir = scratch("conformance");
        let mut n = 0;
        super::super::conformance::run_all(|prev: Option<SegmentStore>| match prev {
            // Reopen the same directory, as after a crash: what was synced must be there.
            Some(s) => {
                let path = s.log_dir.parent().expect("the log lives in a directory").to_path_buf();
                drop(s);
                SegmentStore::open_with(&path, 4096).expect("reopen")
            }
            None => {
                n += 1;
                SegmentStore::open_with(&dir.join(n.to_string()), 4096).expect("open a fresh store")
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Many small segments: entries are read back from old segments and the cache alike,
    /// compaction deletes the segments it emptied (the disk shrinks), and a restart
    /// rebuilds the same log from the segments left.
    /// Writes made while one is out go to disk together, and each is reported durable by
    /// the I/O thread without a `flush`.
    #[test]
    fn async_writes_are_grouped_and_reported_by_the_io_thread() {
        let dir = scratch("async");
        let mut s = SegmentStore::open_with(&dir, 64 << 10).expect("open");
        let hs = HardState { term: 1, vote: 1, commit: 0 };
        s.persist(&[], Some(&hs), true).expect("hard state");
        let syncs_before = s.sync_latency().lock().expect("histogram").count;
        for n in 1..=400u64 {
            let r = s.persist_async(n, &[ent(n, 1, 300)], None, true).expect("write");
            assert!(r.is_none_or(|d| d < n), "a write is not durable before the I/O thread syncs it");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut durable = 0;
        while durable < 400 {
            assert!(std::time::Instant::now() < deadline, "the I/O thread reported only up to {durable}");
            if let Some(n) = s.poll_durable().expect("poll") {
                durable = n;
            }
            std::thread::yield_now();
        }
        let syncs = s.sync_latency().lock().expect("histogram").count - syncs_before;
        assert!(syncs < 400, "400 writes made while others were out took {syncs} syncs");
        // More, flushed in rounds: the segment fills and the next starts between writes.
        for n in 401..=600u64 {
            s.persist_async(n, &[ent(n, 1, 300)], None, true).expect("write");
            if n % 50 == 0 {
                assert!(s.flush().expect("flush").is_some_and(|d| d == n));
            }
        }
        assert!(s.segment_count() > 1, "the writes crossed segments");
        drop(s);
        let s = SegmentStore::open_with(&dir, 64 << 10).expect("reopen");
        assert_eq!(s.last_index().expect("last"), 600);
        assert_eq!(s.entries(1, 601, None, GetEntriesContext::empty(false)).expect("read").len(), 600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_rotate_compact_away_and_replay() {
        let dir = scratch("rotate");
        let mut s = SegmentStore::open_with(&dir, 16 << 10).expect("open");
        s.set_conf_state(&voters()).expect("conf");
        for i in 1..=400u64 {
            let hs = HardState { term: 1 + i / 150, vote: 1, commit: i - 1 };
            s.persist(&[ent(i, 1 + i / 150, 300)], Some(&hs), true).expect("persist");
        }
        assert!(s.segment_count() > 5, "{} segments", s.segment_count());
        let all = s.entries(1, 401, None, GetEntriesContext::empty(false)).expect("read all");
        assert_eq!(all.len(), 400);
        assert!(all.iter().enumerate().all(|(i, e)| e.index == i as u64 + 1 && e.data.len() == 300));
        let before = s.disk_usage();
        let segments = s.segment_count();
        // Commit without a sync, then a snapshot at 350 keeping 20 entries.
        s.persist(&[], Some(&HardState { term: 3, vote: 1, commit: 400 }), false).expect("commit");
        create_snapshot_now(&mut s, 350, &voters(), b"image".to_vec(), 20).expect("snapshot");
        assert_eq!(s.first_index().expect("first"), 331);
        assert!(s.segment_count() < segments / 2, "{} of {segments} segments left", s.segment_count());
        assert!(s.disk_usage() < before / 2, "{} bytes of {before} left", s.disk_usage());
        // More writes after the compaction, then a restart.
        for i in 401..=450u64 {
            s.persist(&[ent(i, 3, 300)], Some(&HardState { term: 3, vote: 1, commit: 400 }), true)
                .expect("persist");
        }
        drop(s);
        let s = SegmentStore::open_with(&dir, 16 << 10).expect("reopen");
        assert_eq!(s.first_index().expect("first"), 331);
        assert_eq!(s.last_index().expect("last"), 450);
        assert_eq!(s.hard_state().commit, 400);
        assert_eq!(s.snapshot_metadata().index, 350);
        assert_eq!(s.term(330).expect("compacted boundary"), 3);
        let tail = s.entries(331, 451, None, GetEntriesContext::empty(false)).expect("read");
        assert_eq!(tail.len(), 120);
        assert_eq!(tail[0].index, 331);
        assert_eq!(s.snapshot(0, 0).expect("snapshot").data, b"image".to_vec());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A write that a crash interrupted is cut off; a damaged record with more after it
    /// is corruption, reported and never skipped.
    #[test]
    fn a_torn_last_write_is_cut_and_damage_in_the_middle_refused() {
        let dir = scratch("torn");
        {
            let mut s = SegmentStore::open(&dir).expect("open");
            for i in 1..=10u64 {
                s.persist(&[ent(i, 1, 100)], Some(&HardState { term: 1, vote: 1, commit: i }), true)
                    .expect("persist");
            }
        }
        let seg = dir.join(LOG_DIR).join(segment_name(1));
        let whole = std::fs::read(&seg).expect("read");
        // Cut in the middle of the last write: entry 10 is gone, 9 stays.
        std::fs::write(&seg, &whole[..whole.len() - 50]).expect("cut");
        {
            let mut s = SegmentStore::open(&dir).expect("a torn tail opens");
            assert_eq!(s.last_index().expect("last"), 9);
            assert_eq!(s.hard_state().commit, 9, "the last write's hard state went with its entry");
            s.persist(&[ent(10, 1, 100)], None, true).expect("writes go on after the cut");
        }
        let s = SegmentStore::open(&dir).expect("reopen");
        assert_eq!(s.last_index().expect("last"), 10);
        drop(s);
        // A flipped byte in an early record: refused, naming the file.
        let mut bytes = std::fs::read(&seg).expect("read");
        bytes[HEADER + 12] ^= 0x40;
        std::fs::write(&seg, &bytes).expect("damage");
        match SegmentStore::open(&dir) {
            Err(StorageError::Corrupt(msg)) => assert!(msg.contains("with a valid record after it"), "{msg}"),
            Err(e) => panic!("expected corruption, got {e}"),
            Ok(_) => panic!("a damaged log was opened"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A member of the previous format (redb) starts on the log with the same state:
    /// hard state, membership, identity, snapshot and entries; the old file is removed.
    #[test]
    fn a_redb_store_is_carried_over() {
        let dir = scratch("migrate");
        let id = Identity { cluster_id: "c".into(), node_id: 2 };
        {
            let mut old = RedbStore::open(&dir).expect("old store");
            old.ensure_identity(&id).expect("identity");
            old.set_conf_state(&voters()).expect("conf");
            for i in 1..=30u64 {
                old.append(&[ent(i, 2, 50)]).expect("append");
            }
            old.set_hard_state(&HardState { term: 2, vote: 3, commit: 30 }).expect("hs");
            create_snapshot_now(&mut old, 20, &voters(), b"old image".to_vec(), 5).expect("snapshot");
        }
        let s = SegmentStore::open(&dir).expect("carried over");
        assert!(!dir.join(crate::storage::FILE_NAME).exists(), "the old file is gone");
        assert_eq!(s.hard_state(), HardState { term: 2, vote: 3, commit: 30 });
        assert_eq!(s.initial_state().expect("state").conf_state, voters());
        assert_eq!(s.identity(), Some(id.clone()));
        assert_eq!((s.first_index().expect("first"), s.last_index().expect("last")), (16, 30));
        assert_eq!(s.term(15).expect("boundary"), 2);
        assert_eq!(s.snapshot(0, 0).expect("snapshot").data, b"old image".to_vec());
        let e = s.entries(16, 31, None, GetEntriesContext::empty(false)).expect("entries");
        assert_eq!(e, (16..=30).map(|i| ent(i, 2, 50)).collect::<Vec<_>>());
        drop(s);
        let mut s = SegmentStore::open(&dir).expect("reopen");
        assert_eq!(s.last_index().expect("last"), 30);
        s.ensure_identity(&id).expect("the same identity");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
