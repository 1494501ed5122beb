//! [`WalWriter`]: the WAL of one physical stream (one timeline) written into a
//! [`WalDir`], segment by segment, under the directory's durability rules. Both the WAL
//! receiver (`pgraftctl wal receive`) and the base backup (`pgraftctl backup`, which
//! streams its WAL into the backup's `pg_wal`) write through it.
//!
//! ```text
//!   XLogData(wal_start, data) ──▶ must start at `written` (no gap, no overlap)
//!        │ split at segment ends
//!        ▼
//!   NNN.partial (created, directory fsynced) ── write at the offset in the segment
//!        │ segment full?
//!        ▼
//!   fsync, rename to NNN, fsync the directory ──▶ on_complete(path)
//! ```

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::message::StandbyStatusUpdate;
use crate::segment::{SegmentSize, TimeLineId};
use crate::time::PgTimestamp;
use crate::waldir::{SegmentWriter, WalDir};

/// Writes the WAL of one timeline, received in order from `start` (a segment start), into
/// a [`WalDir`].
///
/// Guarantees: bytes land at their offset in the segment holding them; a segment is
/// renamed to its final name only once full and fsynced (and the directory fsynced after
/// the rename); [`WalWriter::flushed`] never passes what is durable.
#[derive(Debug)]
pub struct WalWriter<'a> {
    dir: &'a WalDir,
    seg: SegmentSize,
    tli: TimeLineId,
    /// The next position expected from the server.
    written: Lsn,
    /// Everything before this is durable.
    flushed: Lsn,
    writer: Option<SegmentWriter>,
}

impl<'a> WalWriter<'a> {
    /// A writer for the WAL of `tli` from `start`, which must be the start of a segment
    /// (the segment is written whole, so it can be renamed to its final name when full).
    pub fn new(dir: &'a WalDir, tli: TimeLineId, start: Lsn) -> Result<Self> {
        let seg = dir.segment_size();
        if seg.offset_in_segment(start) != 0 {
            return Err(Error::WalDir(format!("WAL must be written from a segment start, not from {start}")));
        }
        Ok(WalWriter { dir, seg, tli, written: start, flushed: start, writer: None })
    }

    /// The timeline written.
    pub fn timeline(&self) -> TimeLineId {
        self.tli
    }

    /// The end of what is written: the next position expected.
    pub fn written(&self) -> Lsn {
        self.written
    }

    /// The end of what is durable.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Writes `data`, which the server sent from `start`; `start` must be the next
    /// position expected. Each segment this completes is made durable and renamed, and
    /// its final path passed to `on_complete`.
    pub fn write(&mut self, start: Lsn, mut data: &[u8], on_complete: &mut dyn FnMut(PathBuf)) -> Result<()> {
        if start != self.written {
            return Err(Error::WalDir(format!(
                "the server sent WAL from {start}, but the next position expected is {}",
                self.written
            )));
        }
        while !data.is_empty() {
            let segno = self.seg.segment_of(self.written);
            if self.writer.as_ref().map(|w| w.id()) != Some((self.tli, segno)) {
                // `new` starts at a segment start and segments are written whole, so a new
                // segment always starts at its first byte.
                debug_assert_eq!(self.seg.offset_in_segment(self.written), 0);
                self.writer = Some(self.dir.open_segment(self.tli, segno)?);
            }
            let w = self.writer.as_mut().expect("a writer was opened above");
            let n = (w.remaining() as usize).min(data.len());
            w.write(&data[..n])?;
            self.written = self.written.checked_add(n as u64)?;
            data = &data[n..];
            if w.is_full() {
                let w = self.writer.take().expect("the writer is present");
                let path = w.complete()?;
                self.flushed = self.written;
                on_complete(path);
            }
        }
        Ok(())
    }

    /// fsyncs what is written; afterwards `flushed == written`.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.sync()?;
        }
        self.flushed = self.written;
        Ok(())
    }

    /// A standby status update saying what is written and durable (`applied` is `0/0`).
    pub fn status(&self, reply_requested: bool) -> StandbyStatusUpdate {
        StandbyStatusUpdate {
            written: self.written,
            flushed: self.flushed,
            applied: Lsn::INVALID,
            client_time: PgTimestamp::now(),
            reply_requested,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_split_at_segment_ends() {
        let path = std::env::temp_dir().join(format!("pgraft-walwriter-split-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let seg = SegmentSize::new(1 << 20).expect("1 MiB");
        let dir = WalDir::open(&path, seg).expect("open");
        assert!(WalWriter::new(&dir, 1, Lsn((5 << 20) + 8)).is_err(), "not a segment start");
        let start = Lsn(5 << 20);
        let mut s = WalWriter::new(&dir, 1, start).expect("writer");
        let mut done = Vec::new();
        let mut on_complete = |p: PathBuf| done.push(p);
        s.write(start, &vec![1u8; (1 << 20) - 10], &mut on_complete).expect("most of a segment");
        s.write(Lsn((6 << 20) - 10), &[2u8; 30], &mut on_complete).expect("across the boundary");
        assert!(s.write(Lsn(1), &[0], &mut on_complete).is_err(), "a gap is refused");
        s.sync().expect("sync");
        assert_eq!(s.flushed(), Lsn((6 << 20) + 20));
        assert_eq!(s.written(), s.flushed());
        assert_eq!(done, vec![path.join("000000010000000000000005")]);
        let first = std::fs::read(path.join("000000010000000000000005")).expect("complete segment");
        assert_eq!(first.len(), 1 << 20);
        assert_eq!(&first[(1 << 20) - 11..], &[1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]);
        let partial = std::fs::read(path.join("000000010000000000000006.partial")).expect("partial");
        assert_eq!(partial, vec![2u8; 20]);
        drop(s);
        drop(dir);
        std::fs::remove_dir_all(&path).expect("clean up");
    }
}
