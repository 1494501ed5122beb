//! Checkpoints and non-exclusive backups: `server_checkpoint`, `server_backup_start`,
//! `server_backup_stop`.
//!
//! ```text
//!   backup_start(label) ─ pg_backup_start($1, $2)   (15+)  ─▶ start LSN
//!                         pg_start_backup($1, $2, false) (<15)
//!        ... the caller copies the data directory (read_binary_file, list_dir) ...
//!   backup_stop()       ─ pg_backup_stop($1)        (15+)  ─▶ end LSN, backup_label,
//!                         pg_stop_backup(false, $1)  (<15)      tablespace_map
//! ```
//! Both run on the handle's one connection: a non-exclusive backup lives in the session
//! that started it, and the server aborts it if that session ends.

use pgraft_walstream::{Lsn, TimeLineId};

use crate::error::{query_err, Error, Result};
use crate::privilege::Api;
use crate::server::Server;

/// Where a checkpoint put its redo record: the answer of `server_checkpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// `checkpoint_lsn` of `pg_control_checkpoint()`: the checkpoint record's position.
    pub lsn: Lsn,
    /// `timeline_id` of `pg_control_checkpoint()`.
    pub timeline: TimeLineId,
}

/// What `server_backup_stop` returns: everything needed to finish the backup's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStop {
    /// The backup's end position: recovery must replay WAL at least this far.
    pub lsn: Lsn,
    /// The contents of the `backup_label` file to write into the backup (START WAL
    /// LOCATION, CHECKPOINT LOCATION, BACKUP METHOD, BACKUP FROM, START TIME, LABEL, START
    /// TIMELINE).
    pub label_file: String,
    /// The contents of the `tablespace_map` file (one line per tablespace: OID and
    /// location); empty when the server has no tablespaces beyond the default ones.
    pub tablespace_map: String,
}

impl BackupStop {
    /// A `backup_label` line's value, for example `label_value("START TIMELINE")`.
    pub fn label_value(&self, key: &str) -> Option<&str> {
        self.label_file.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(": ")).map(str::trim)
    }

    /// The timeline the backup started on (`START TIMELINE`).
    pub fn start_timeline(&self) -> Option<TimeLineId> {
        self.label_value("START TIMELINE")?.parse().ok()
    }

    /// The WAL position the backup started at (the LSN of `START WAL LOCATION`).
    pub fn start_lsn(&self) -> Option<Lsn> {
        self.label_value("START WAL LOCATION")?.split_whitespace().next()?.parse().ok()
    }
}

impl Server {
    /// `server_checkpoint`: runs `CHECKPOINT`, then reads the checkpoint's LSN and
    /// timeline from `pg_control_checkpoint()`.
    ///
    /// Needs the `pg_checkpoint` role (15 and later) or SUPERUSER (before 15).
    pub fn checkpoint(&mut self) -> Result<Checkpoint> {
        self.require(Api::Checkpoint)?;
        let name = self.name.clone();
        let client = self.client()?;
        client.batch_execute("CHECKPOINT").map_err(query_err(&name, "CHECKPOINT"))?;
        let row = client
            .query_one("SELECT checkpoint_lsn::text, timeline_id FROM pg_control_checkpoint()", &[])
            .map_err(query_err(&name, "pg_control_checkpoint()"))?;
        let lsn: String = row.get(0);
        let tli: i32 = row.get(1);
        Ok(Checkpoint {
            lsn: lsn.parse()?,
            timeline: u32::try_from(tli).map_err(|_| Error::Protocol {
                server: name,
                what: "pg_control_checkpoint()",
                detail: format!("negative timeline {tli}"),
            })?,
        })
    }

    /// `server_backup_start`: starts a non-exclusive backup labelled `label` and returns
    /// its start LSN. `fast` asks for an immediate checkpoint instead of a spread one.
    ///
    /// Needs EXECUTE on `pg_backup_start(text, boolean)` (15 and later) or
    /// `pg_start_backup(text, boolean, boolean)` (before 15).
    pub fn backup_start(&mut self, label: &str, fast: bool) -> Result<Lsn> {
        if let Some(start_lsn) = self.backup_start_lsn {
            return Err(Error::BackupAlreadyInProgress { server: self.name.clone(), start_lsn });
        }
        let version = self.version()?;
        self.require(Api::BackupStart)?;
        let name = self.name.clone();
        let row = self
            .client()?
            .query_one(version.backup_start_sql(), &[&label, &fast])
            .map_err(query_err(&name, version.backup_start_function()))?;
        let lsn: Lsn = row.get::<_, String>(0).parse()?;
        self.backup_start_lsn = Some(lsn);
        Ok(lsn)
    }

    /// `server_backup_stop`: ends the backup this handle started and returns its end LSN,
    /// the `backup_label` contents and the tablespace map. On a primary the server then
    /// switches to a new WAL segment, so the last one the backup needs is complete.
    /// `wait_for_archive` makes the server wait until that WAL is archived (when
    /// archiving is on).
    ///
    /// Needs EXECUTE on `pg_backup_stop(boolean)` (15 and later) or
    /// `pg_stop_backup(boolean, boolean)` (before 15).
    pub fn backup_stop(&mut self, wait_for_archive: bool) -> Result<BackupStop> {
        let Some(start_lsn) = self.backup_start_lsn else {
            return Err(Error::NoBackupInProgress { server: self.name.clone() });
        };
        let row = match self.send_backup_stop(wait_for_archive) {
            Ok(row) => row,
            // The session that ran the backup is gone, and with it the backup.
            Err(e) if self.connection_lost(&e) => {
                self.backup_start_lsn = None;
                return Err(Error::BackupConnectionLost { server: self.name.clone(), start_lsn });
            }
            // Refused before stopping (a missing grant): the backup stays in progress and
            // stop may be asked again.
            Err(e) => return Err(e),
        };
        self.backup_start_lsn = None;
        let lsn: Lsn = row.get::<_, String>(0).parse()?;
        Ok(BackupStop {
            lsn,
            label_file: row.get(1),
            tablespace_map: row.get::<_, Option<String>>(2).unwrap_or_default(),
        })
    }

    fn send_backup_stop(&mut self, wait_for_archive: bool) -> Result<postgres::Row> {
        let version = self.version()?;
        self.require(Api::BackupStop)?;
        let name = self.name.clone();
        self.client()?
            .query_one(version.backup_stop_sql(), &[&wait_for_archive])
            .map_err(query_err(&name, version.backup_stop_function()))
    }

    /// The start LSN of the backup in progress on this handle, if any.
    pub fn backup_in_progress(&self) -> Option<Lsn> {
        self.backup_start_lsn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_fields() {
        let stop = BackupStop {
            lsn: Lsn(0x300_0100),
            label_file: "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                         CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
                         START TIME: 2025-01-01 00:00:00 UTC\nLABEL: x\nSTART TIMELINE: 1\n"
                .into(),
            tablespace_map: String::new(),
        };
        assert_eq!(stop.start_timeline(), Some(1));
        assert_eq!(stop.start_lsn(), Some(Lsn(0x200_0028)));
        assert_eq!(stop.label_value("LABEL"), Some("x"));
        assert_eq!(stop.label_value("NOPE"), None);
    }
}
