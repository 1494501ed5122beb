//! The log's I/O thread: writes one record at its place in a segment and syncs it, while
//! the Raft thread goes on stepping messages, ticking and staging the next `Ready`s.
//!
//! ```text
//!  Raft thread (SegmentStore)                     I/O thread (LogWriter)
//!  persist_async: entries readable at once,
//!    staged; the writer idle ─▶ seal: one record ─▶ write_all_at, fdatasync
//!  Readies meanwhile: staged, merged              │
//!  poll_durable ◀─ done(number), waker() ◀─────────┘
//!    then seal what was staged: one write, one sync for all of it (group commit)
//! ```
//!
//! One write is out at a time, so records reach the disk in order and a crash tears at
//! most the last one (replay cuts a torn tail, and refuses damage that a valid record
//! follows). A write or sync that fails is reported once and is fatal: after a failed
//! `fsync` the kernel may have dropped the dirty pages, so nothing may be retried.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::{Result, StorageError, Waker};
use crate::metrics::Histogram;

/// For the crash test's power cuts: with `PGRAFT_TEST_SYNC_TRAIL` set in the environment,
/// every sync of a segment appends `<segment> <length synced>` to `<data dir>/sync-trail`
/// (without a sync of its own: the test kills the process, the kernel keeps the lines), so
/// the test can cut each segment back to what was synced, as a power cut would, before it
/// restarts the member.
pub(crate) struct SyncTrail(File);

/// The trail's file name in the data directory.
pub(crate) const SYNC_TRAIL: &str = "sync-trail";

impl SyncTrail {
    /// The trail of `dir`, if the environment asks for one.
    pub fn open_if_asked(dir: &std::path::Path) -> Result<Option<Arc<SyncTrail>>> {
        if std::env::var_os("PGRAFT_TEST_SYNC_TRAIL").is_none() {
            return Ok(None);
        }
        let path = dir.join(SYNC_TRAIL);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StorageError::Io(format!("open {}: {e}", path.display())))?;
        Ok(Some(Arc::new(SyncTrail(file))))
    }

    /// Segment `seq` is synced up to `len` bytes.
    pub fn note(&self, seq: u64, len: u64) {
        use std::io::Write as _;
        // One write of one line: appends of both threads never interleave.
        let _ = (&self.0).write_all(format!("{seq} {len}\n").as_bytes());
    }
}

/// One record to write at `offset` of a segment file, then sync.
pub(crate) struct Job {
    pub file: Arc<File>,
    /// The segment's number, for the sync trail.
    pub seq: u64,
    pub path: PathBuf,
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// The highest `Ready` number the record makes durable.
    pub number: u64,
}

#[derive(Default)]
struct Slot {
    /// A job is out.
    busy: bool,
    /// How the last job ended, until taken.
    done: Option<Result<u64>>,
}

#[derive(Default)]
struct Shared {
    slot: Mutex<Slot>,
    finished: Condvar,
    waker: Mutex<Option<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The thread and the one job it may have out.
pub(crate) struct LogWriter {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl LogWriter {
    /// Starts the thread; it records every sync's latency in `syncs`.
    pub fn start(syncs: Arc<Mutex<Histogram>>, trail: Option<Arc<SyncTrail>>) -> Result<Self> {
        let (tx, rx) = channel::<Job>();
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("pgraft-log".into())
            .spawn(move || {
                crate::thread_slice::ask_for_short_slices();
                for job in rx {
                    let started = Instant::now();
                    let what = job.path.display();
                    let r = job
                        .file
                        .write_all_at(&job.bytes, job.offset)
                        .map_err(|e| StorageError::Io(format!("write {what}: {e}")))
                        .and_then(|()| {
                            job.file.sync_data().map_err(|e| StorageError::Io(format!("sync {what}: {e}")))
                        });
                    lock(&syncs).observe(started.elapsed());
                    if let (Ok(()), Some(t)) = (&r, &trail) {
                        t.note(job.seq, job.offset + job.bytes.len() as u64);
                    }
                    let durable = r.is_ok().then_some(job.number);
                    {
                        let mut slot = lock(&theirs.slot);
                        slot.busy = false;
                        slot.done = Some(r.map(|()| job.number));
                    }
                    theirs.finished.notify_all();
                    let waker = lock(&theirs.waker).clone();
                    if let Some(w) = waker {
                        w(durable);
                    }
                }
            })
            .map_err(|e| StorageError::Io(format!("start the log's I/O thread: {e}")))?;
        Ok(Self { tx: Some(tx), thread: Some(thread), shared })
    }

    /// Whom to wake when a job is done.
    pub fn set_waker(&self, waker: Waker) {
        *lock(&self.shared.waker) = Some(waker);
    }

    /// Whether a job is out or its end not yet taken.
    pub fn busy(&self) -> bool {
        let slot = lock(&self.shared.slot);
        slot.busy || slot.done.is_some()
    }

    /// Hands `job` to the thread; the caller has taken the previous one's end.
    pub fn submit(&self, job: Job) -> Result<()> {
        {
            let mut slot = lock(&self.shared.slot);
            debug_assert!(!slot.busy && slot.done.is_none(), "one job at a time");
            slot.busy = true;
        }
        let sent = self.tx.as_ref().map(|tx| tx.send(job));
        if !matches!(sent, Some(Ok(()))) {
            lock(&self.shared.slot).busy = false;
            return Err(StorageError::Io("the log's I/O thread is gone".into()));
        }
        Ok(())
    }

    /// The end of the job out, if it ended: the number it made durable, or its error.
    pub fn try_take(&self) -> Option<Result<u64>> {
        lock(&self.shared.slot).done.take()
    }

    /// Waits for the job out to end and takes its end (`None`: no job was out).
    pub fn wait(&self) -> Option<Result<u64>> {
        let mut slot = lock(&self.shared.slot);
        while slot.busy {
            slot = self.shared.finished.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
        slot.done.take()
    }
}

impl Drop for LogWriter {
    /// Lets the job out finish (a write half done is a torn tail for replay to cut, but
    /// there is no reason to make one), then ends the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
