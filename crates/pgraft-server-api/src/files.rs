//! Reading files of the data directory over SQL: `server_read_binary_file`,
//! `server_file_stat`, and the directory listing a backup walks with.
//!
//! ```text
//!   read_binary_file("base/5/16384", offset, length)
//!     │ check_path: relative, no `..`
//!     │ privilege check (pg_read_server_files, EXECUTE on pg_read_binary_file)
//!     ▼
//!   SELECT pg_read_binary_file($1, $2, $3, true)   ── one chunk (4 MiB by default) ──┐
//!     ▲  bytea in binary format, appended to the output                               │
//!     └──────────── next offset, until `length` bytes or a short chunk ───────────────┘
//! ```

use std::io::Write;
use std::time::SystemTime;

use crate::error::{query_err, Error, Result};
use crate::file_stat::{check_path, DirEntry, FileStat};
use crate::privilege::Api;
use crate::server::Server;

impl Server {
    /// `server_read_binary_file`: exactly `length` bytes of `path` (relative to the data
    /// directory) from `offset`, read in chunks of any size.
    ///
    /// A missing file is [`Error::FileNotFound`]; an offset at or past the end of the file
    /// is [`Error::OffsetPastEndOfFile`]; a range that reaches past the end is
    /// [`Error::PastEndOfFile`] (never a silently short answer). A zero-length read only
    /// checks that the file exists.
    pub fn read_binary_file(&mut self, path: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(length.min(self.chunk_size * 16)).unwrap_or(0));
        self.read_binary_file_to(path, offset, length, &mut out)?;
        Ok(out)
    }

    /// Like [`Server::read_binary_file`], but writes the bytes to `out` chunk by chunk, so
    /// a file of any size streams through a bounded buffer.
    pub fn read_binary_file_to(
        &mut self,
        path: &str,
        offset: u64,
        length: u64,
        out: &mut dyn Write,
    ) -> Result<()> {
        check_path(path)?;
        let end = checked_end(offset, length)?;
        self.require(Api::ReadBinaryFile)?;
        let mut pos = offset;
        // Even a zero-length read asks once, so a missing file is reported.
        loop {
            let want = (end - pos).min(self.chunk_size);
            let chunk = self
                .read_chunk_unchecked(path, pos, want)?
                .ok_or_else(|| Error::FileNotFound { server: self.name.clone(), path: path.to_string() })?;
            let got = chunk.len() as u64;
            out.write_all(&chunk).map_err(|e| Error::Protocol {
                server: self.name.clone(),
                what: "read_binary_file",
                detail: format!("writing the bytes of {path:?} to the caller's output failed: {e}"),
            })?;
            pos += got;
            if got == 0 && want > 0 && pos == offset {
                return Err(Error::OffsetPastEndOfFile {
                    server: self.name.clone(),
                    path: path.to_string(),
                    offset,
                });
            }
            if got < want {
                return Err(Error::PastEndOfFile {
                    server: self.name.clone(),
                    path: path.to_string(),
                    offset,
                    length,
                    file_end: pos,
                });
            }
            if pos == end {
                return Ok(());
            }
        }
    }

    /// Up to `max` bytes of `path` from `offset`: fewer at the end of the file, `None`
    /// when the file does not exist (it may have been removed, as relation files are
    /// while a backup runs). For walkers that read a file to its end in a loop.
    pub fn read_chunk(&mut self, path: &str, offset: u64, max: u64) -> Result<Option<Vec<u8>>> {
        check_path(path)?;
        checked_end(offset, max)?;
        self.require(Api::ReadBinaryFile)?;
        self.read_chunk_unchecked(path, offset, max.min(self.chunk_size))
    }

    fn read_chunk_unchecked(&mut self, path: &str, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let what = format!("pg_read_binary_file({path:?}, {offset}, {len})");
        let err = query_err(&self.name, what);
        // Both fit in i64: checked_end proved offset + len <= i64::MAX.
        let (o, l) = (offset as i64, len as i64);
        let row = self
            .client()?
            .query_one("SELECT pg_read_binary_file($1, $2, $3, true)", &[&path, &o, &l])
            .map_err(err)?;
        Ok(row.get::<_, Option<Vec<u8>>>(0))
    }

    /// `server_file_stat`: size, kind and times of `path` (relative to the data
    /// directory).
    pub fn file_stat(&mut self, path: &str) -> Result<FileStat> {
        check_path(path)?;
        self.require(Api::FileStat)?;
        let err = query_err(&self.name, format!("pg_stat_file({path:?})"));
        let row = self
            .client()?
            .query_one(
                "SELECT size, isdir, access, modification, change, creation FROM pg_stat_file($1, true)",
                &[&path],
            )
            .map_err(err)?;
        let size: Option<i64> = row.get(0);
        let Some(size) = size else {
            return Err(Error::FileNotFound { server: self.name.clone(), path: path.to_string() });
        };
        let missing_time = || Error::Protocol {
            server: self.name.clone(),
            what: "pg_stat_file",
            detail: format!("no access or modification time for {path:?}"),
        };
        Ok(FileStat {
            size: u64::try_from(size).map_err(|_| Error::Protocol {
                server: self.name.clone(),
                what: "pg_stat_file",
                detail: format!("negative size {size} for {path:?}"),
            })?,
            is_dir: row.get(1),
            access: row.get::<_, Option<SystemTime>>(2).ok_or_else(missing_time)?,
            modification: row.get::<_, Option<SystemTime>>(3).ok_or_else(missing_time)?,
            change: row.get(4),
            creation: row.get(5),
        })
    }

    /// The entries of directory `path` (relative to the data directory; `.` for the data
    /// directory itself) with their metadata, sorted by name. Entries removed between the
    /// listing and their stat are left out.
    pub fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>> {
        check_path(path)?;
        self.require(Api::ListDir)?;
        let err = query_err(&self.name, format!("listing {path:?} (pg_ls_dir, pg_stat_file)"));
        let rows = self
            .client()?
            .query(
                "SELECT l.name, p.path, s.size, s.isdir, s.access, s.modification, s.change, s.creation \
                 FROM pg_ls_dir($1, true, false) AS l(name), \
                 LATERAL (SELECT CASE WHEN $1 = '.' THEN l.name ELSE $1 || '/' || l.name END) AS p(path), \
                 LATERAL pg_stat_file(p.path, true) AS s \
                 WHERE s.size IS NOT NULL ORDER BY l.name",
                &[&path],
            )
            .map_err(err)?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let path: String = row.get(1);
            let size: i64 = row.get(2);
            let bad =
                |detail: String| Error::Protocol { server: self.name.clone(), what: "pg_stat_file", detail };
            entries.push(DirEntry {
                name: row.get(0),
                stat: FileStat {
                    size: u64::try_from(size).map_err(|_| bad(format!("negative size for {path:?}")))?,
                    is_dir: row.get(3),
                    access: row
                        .get::<_, Option<SystemTime>>(4)
                        .ok_or_else(|| bad(format!("no time for {path:?}")))?,
                    modification: row
                        .get::<_, Option<SystemTime>>(5)
                        .ok_or_else(|| bad(format!("no time for {path:?}")))?,
                    change: row.get(6),
                    creation: row.get(7),
                },
                path,
            });
        }
        Ok(entries)
    }
}

/// `offset + length`, when both fit PostgreSQL's `bigint`.
fn checked_end(offset: u64, length: u64) -> Result<u64> {
    offset
        .checked_add(length)
        .filter(|&e| i64::try_from(e).is_ok())
        .ok_or(Error::RangeTooLarge { offset, length })
}
