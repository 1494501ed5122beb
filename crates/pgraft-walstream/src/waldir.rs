//! A receiver's WAL directory: segment files as PostgreSQL names them, made durable in a
//! fixed order.
//!
//! ```text
//!  D/
//!   .lock                               flock'ed by the one receiver writing here
//!   000000010000000000000003            complete segments, byte-identical to pg_wal's
//!   000000010000000000000004
//!   000000010000000000000005.partial    the segment being written (or one left at the
//!                                       end of a timeline)
//!   00000002.history                    history of every timeline > 1 we streamed
//!   000000020000000000000005.partial
//! ```
//!
//! Durability rules, in the order they are applied:
//! 1. A new `.partial` file is created and the directory fsynced before any position in it
//!    is reported as flushed.
//! 2. WAL is written at its offset in the segment; `flushed` moves only after
//!    `fdatasync` of the file returns ([`SegmentWriter::sync`]).
//! 3. A full segment is fsynced, renamed to its final name, and the directory fsynced.
//! 4. A history file is written to `NAME.tmp`, fsynced, renamed, directory fsynced.
//!
//! After a crash the directory is a set of complete segments and at most one partial per
//! timeline; streaming resumes at the start of the newest partial segment (or after the
//! newest complete one), so what the server sends again overwrites identical bytes and
//! nothing is skipped.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::segment::{SegmentSize, TimeLineId};
use crate::timeline::TimelineHistory;

const PARTIAL: &str = ".partial";

/// Where to continue streaming from, as the directory's contents say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The timeline of the newest segment.
    pub timeline: TimeLineId,
    /// The first position not known to be complete: the start of the newest partial
    /// segment, or the end of the newest complete one.
    pub start: Lsn,
    /// The segment file that decided it.
    pub newest_file: PathBuf,
}

/// An open WAL directory, locked against a second receiver.
#[derive(Debug)]
pub struct WalDir {
    path: PathBuf,
    seg: SegmentSize,
    _lock: File,
}

impl WalDir {
    /// Opens (creating it if needed) and locks the directory.
    pub fn open(path: &Path, seg: SegmentSize) -> Result<WalDir> {
        if !path.exists() {
            fs::create_dir_all(path).map_err(|e| Error::io(format!("create {}", path.display()), e))?;
            if let Some(parent) = path.parent() {
                fsync_dir(if parent.as_os_str().is_empty() { Path::new(".") } else { parent })?;
            }
        }
        let lock_path = path.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("open {}", lock_path.display()), e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::WalDir(format!(
                "{} is locked by another receiver ({})",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
        let dir = WalDir { path: path.to_path_buf(), seg, _lock: lock };
        dir.remove_temporaries()?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segment size this directory is written with.
    pub fn segment_size(&self) -> SegmentSize {
        self.seg
    }

    fn remove_temporaries(&self) -> Result<()> {
        for entry in self.entries()? {
            if entry.ends_with(".tmp") {
                let p = self.path.join(&entry);
                fs::remove_file(&p).map_err(|e| Error::io(format!("remove {}", p.display()), e))?;
            }
        }
        Ok(())
    }

    fn entries(&self) -> Result<Vec<String>> {
        let rd =
            fs::read_dir(&self.path).map_err(|e| Error::io(format!("list {}", self.path.display()), e))?;
        let mut names = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io(format!("list {}", self.path.display()), e))?;
            if let Some(n) = e.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        Ok(names)
    }

    /// The segments present: (timeline, segment number, is partial, file name).
    pub fn segments(&self) -> Result<Vec<(TimeLineId, u64, bool, String)>> {
        let mut out = Vec::new();
        for name in self.entries()? {
            let (base, partial) = match name.strip_suffix(PARTIAL) {
                Some(b) => (b, true),
                None => (name.as_str(), false),
            };
            if base.len() != 24 {
                continue;
            }
            if let Ok((tli, segno)) = self.seg.parse_file_name(base) {
                out.push((tli, segno, partial, name.clone()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Where streaming continues, or `None` for an empty directory. A complete segment
    /// whose size is not the segment size is refused (the directory was written with
    /// another `wal_segment_size`, or damaged).
    pub fn resume_point(&self) -> Result<Option<ResumePoint>> {
        // The newest is the highest segment; on a tie the higher timeline; on a tie
        // complete beats partial (pg_receivewal's rule).
        let best =
            self.segments()?.into_iter().max_by_key(|(tli, segno, partial, _)| (*segno, *tli, !*partial));
        let Some((tli, segno, partial, name)) = best else {
            return Ok(None);
        };
        let path = self.path.join(&name);
        let len = fs::metadata(&path).map_err(|e| Error::io(format!("stat {}", path.display()), e))?.len();
        if partial {
            if len > self.seg.bytes() {
                return Err(Error::WalDir(format!(
                    "{} has {len} bytes, more than a segment",
                    path.display()
                )));
            }
            Ok(Some(ResumePoint { timeline: tli, start: self.seg.segment_start(segno)?, newest_file: path }))
        } else {
            if len != self.seg.bytes() {
                return Err(Error::WalDir(format!(
                    "{} has {len} bytes, not the segment size {}",
                    path.display(),
                    self.seg.bytes()
                )));
            }
            Ok(Some(ResumePoint {
                timeline: tli,
                start: self.seg.segment_start(segno + 1)?,
                newest_file: path,
            }))
        }
    }

    /// The system identifier in the long page header at the start of a segment file, if
    /// the file has one. A receiver refuses to add another cluster's WAL to a directory.
    pub fn system_id_of(path: &Path) -> Result<Option<u64>> {
        let f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let mut head = [0u8; 40];
        match f.read_exact_at(&mut head, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        }
        // XLogLongPageHeaderData, in the server's byte order (ours: same machine type):
        // xlp_magic u16, xlp_info u16 (XLP_LONG_HEADER = 0x0002), xlp_tli u32,
        // xlp_pageaddr u64, xlp_rem_len u32, padding, xlp_sysid u64 at 24.
        let info = u16::from_ne_bytes([head[2], head[3]]);
        if info & 0x0002 == 0 {
            return Ok(None);
        }
        Ok(Some(u64::from_ne_bytes(head[24..32].try_into().expect("8 bytes"))))
    }

    /// Opens the segment `segno` of `tli` for writing from its start, as a `.partial` file
    /// (rule 1: created and made durable in the directory before use).
    pub fn open_segment(&self, tli: TimeLineId, segno: u64) -> Result<SegmentWriter> {
        let name = self.seg.segment_file_name(tli, segno);
        let final_path = self.path.join(&name);
        if final_path.exists() {
            return Err(Error::WalDir(format!(
                "{} is already complete; refusing to write it again",
                final_path.display()
            )));
        }
        let partial = self.path.join(format!("{name}{PARTIAL}"));
        let existed = partial.exists();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&partial)
            .map_err(|e| Error::io(format!("open {}", partial.display()), e))?;
        if !existed {
            fsync_dir(&self.path)?;
        }
        Ok(SegmentWriter {
            file,
            partial,
            final_path,
            dir: self.path.clone(),
            tli,
            segno,
            size: self.seg.bytes(),
            written: 0,
            synced: 0,
        })
    }

    /// Whether the history file of `tli` is here.
    pub fn has_history(&self, tli: TimeLineId) -> bool {
        self.path.join(TimelineHistory::file_name_of(tli)).exists()
    }

    /// Writes a timeline history file durably (rule 4).
    pub fn write_history(&self, h: &TimelineHistory) -> Result<PathBuf> {
        let path = self.path.join(&h.file_name);
        let tmp = self.path.join(format!("{}.tmp", h.file_name));
        {
            let f = File::create(&tmp).map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
            f.write_all_at(&h.content, 0).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
            f.sync_all().map_err(|e| Error::io(format!("fsync {}", tmp.display()), e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| Error::io(format!("rename {} into place", tmp.display()), e))?;
        fsync_dir(&self.path)?;
        Ok(path)
    }
}

/// One segment being written.
#[derive(Debug)]
pub struct SegmentWriter {
    file: File,
    partial: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
    tli: TimeLineId,
    segno: u64,
    size: u64,
    written: u64,
    synced: u64,
}

impl SegmentWriter {
    /// The timeline and segment number.
    pub fn id(&self) -> (TimeLineId, u64) {
        (self.tli, self.segno)
    }

    /// Bytes written from the segment's start.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes known durable from the segment's start.
    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// Room left in the segment.
    pub fn remaining(&self) -> u64 {
        self.size - self.written
    }

    /// Appends `data` at the current end (never past the segment's end).
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        if len > self.remaining() {
            return Err(Error::WalDir(format!(
                "{} bytes do not fit in the {} left of {}",
                len,
                self.remaining(),
                self.partial.display()
            )));
        }
        self.file
            .write_all_at(data, self.written)
            .map_err(|e| Error::io(format!("write {}", self.partial.display()), e))?;
        self.written += len;
        Ok(())
    }

    /// Makes what is written durable (rule 2).
    pub fn sync(&mut self) -> Result<()> {
        if self.synced < self.written {
            self.file.sync_data().map_err(|e| Error::io(format!("fsync {}", self.partial.display()), e))?;
            self.synced = self.written;
        }
        Ok(())
    }

    /// Whether the segment is full.
    pub fn is_full(&self) -> bool {
        self.written == self.size
    }

    /// Completes a full segment: fsync, rename to its final name, fsync the directory
    /// (rule 3). Returns the final path.
    pub fn complete(mut self) -> Result<PathBuf> {
        if !self.is_full() {
            return Err(Error::WalDir(format!(
                "{} has {} of {} bytes; it is not complete",
                self.partial.display(),
                self.written,
                self.size
            )));
        }
        self.sync()?;
        fs::rename(&self.partial, &self.final_path)
            .map_err(|e| Error::io(format!("rename {} to its final name", self.partial.display()), e))?;
        fsync_dir(&self.dir)?;
        Ok(self.final_path)
    }
}

/// fsync of a directory: makes created, renamed and removed names in it durable.
pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    let d = File::open(path).map_err(|e| Error::io(format!("open directory {}", path.display()), e))?;
    d.sync_all().map_err(|e| Error::io(format!("fsync directory {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgraft-waldir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn writes_completes_and_resumes() {
        let path = scratch("resume");
        let seg = SegmentSize::new(1 << 20).expect("1 MiB");
        let dir = WalDir::open(&path, seg).expect("open");
        assert!(dir.resume_point().expect("scan").is_none());
        assert!(WalDir::open(&path, seg).is_err(), "a second receiver is locked out");

        let mut w = dir.open_segment(1, 3).expect("open segment");
        w.write(&vec![7u8; 1 << 19]).expect("first half");
        assert!(w.complete().is_err(), "half a segment is not complete");
        let mut w = dir.open_segment(1, 3).expect("reopen");
        w.write(&vec![7u8; 1 << 20]).expect("whole");
        assert!(w.write(&[1]).is_err(), "nothing past the end");
        let done = w.complete().expect("complete");
        assert!(done.ends_with("000000010000000000000003"));
        assert_eq!(dir.resume_point().expect("scan").map(|r| (r.timeline, r.start)), Some((1, Lsn(4 << 20))));

        let mut w = dir.open_segment(1, 4).expect("next");
        w.write(&[1, 2, 3]).expect("a little");
        w.sync().expect("sync");
        assert_eq!(w.synced(), 3);
        drop(w);
        assert_eq!(dir.resume_point().expect("scan").map(|r| (r.timeline, r.start)), Some((1, Lsn(4 << 20))));
        // A newer timeline's partial of the same segment wins.
        dir.open_segment(2, 4).expect("tli 2");
        assert_eq!(dir.resume_point().expect("scan").map(|r| r.timeline), Some(2));
        assert!(dir.open_segment(1, 3).is_err(), "a complete segment is never rewritten");

        let h = TimelineHistory {
            timeline: 2,
            file_name: TimelineHistory::file_name_of(2),
            content: bytes::Bytes::from_static(b"1\t0/4000100\tno recovery target specified\n"),
        };
        let p = dir.write_history(&h).expect("history");
        assert_eq!(fs::read(p).expect("read"), h.content.to_vec());
        assert!(dir.has_history(2));
        drop(dir);
        fs::remove_dir_all(&path).expect("clean up");
    }

    #[test]
    fn refuses_a_short_complete_segment() {
        let path = scratch("short");
        fs::create_dir_all(&path).expect("mkdir");
        fs::write(path.join("000000010000000000000001"), [0u8; 10]).expect("write");
        let dir = WalDir::open(&path, SegmentSize::new(1 << 20).expect("1 MiB")).expect("open");
        assert!(dir.resume_point().is_err());
        drop(dir);
        fs::remove_dir_all(&path).expect("clean up");
    }
}
