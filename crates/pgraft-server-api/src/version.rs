//! Which PostgreSQL a server runs, and the SQL that differs between versions.

use std::fmt;

/// A server's version, from `server_version_num` (for example 150013 for 15.13).
///
/// Everything that differs between versions (function names, predefined roles) is decided
/// here, from the number, never from the version string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgVersion(pub u32);

impl PgVersion {
    /// The oldest version this library speaks: 10 renamed `xlog` to `wal` in function
    /// names and let EXECUTE grants replace superuser checks in the backup functions.
    pub const MIN_SUPPORTED: PgVersion = PgVersion(100_000);

    /// The major version: 15 for 150013, 9 for 90624.
    pub fn major(self) -> u32 {
        if self.0 >= 100_000 {
            self.0 / 10_000
        } else {
            self.0 / 100 % 100
        }
    }

    /// Whether `pg_backup_start`/`pg_backup_stop` exist (15 and later); before 15 the
    /// same work is `pg_start_backup`/`pg_stop_backup` with an `exclusive` flag.
    pub fn has_pg_backup_start(self) -> bool {
        self.major() >= 15
    }

    /// Whether the predefined role `pg_checkpoint` exists (15 and later); before, only a
    /// superuser may run CHECKPOINT.
    pub fn has_pg_checkpoint_role(self) -> bool {
        self.major() >= 15
    }

    /// Whether the predefined role `pg_read_server_files` exists and the file functions
    /// honour EXECUTE grants (11 and later); before, they are superuser only.
    pub fn has_file_roles(self) -> bool {
        self.major() >= 11
    }

    /// Whether the `summarize_wal` setting exists (17 and later).
    pub fn has_summarize_wal(self) -> bool {
        self.major() >= 17
    }

    /// The signature of the function that starts a non-exclusive backup.
    pub fn backup_start_function(self) -> &'static str {
        if self.has_pg_backup_start() {
            "pg_backup_start(text, boolean)"
        } else {
            "pg_start_backup(text, boolean, boolean)"
        }
    }

    /// The signature of the function that stops a non-exclusive backup.
    pub fn backup_stop_function(self) -> &'static str {
        if self.has_pg_backup_start() {
            "pg_backup_stop(boolean)"
        } else {
            "pg_stop_backup(boolean, boolean)"
        }
    }

    /// The statement that starts a non-exclusive backup: `$1` label, `$2` fast checkpoint.
    pub(crate) fn backup_start_sql(self) -> &'static str {
        if self.has_pg_backup_start() {
            "SELECT pg_backup_start($1, $2)::text"
        } else {
            "SELECT pg_start_backup($1, $2, false)::text"
        }
    }

    /// The statement that stops it: `$1` wait for archiving. Returns the end LSN, the
    /// backup_label contents and the tablespace map.
    pub(crate) fn backup_stop_sql(self) -> &'static str {
        if self.has_pg_backup_start() {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop($1)"
        } else {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, $1)"
        }
    }
}

impl fmt::Display for PgVersion {
    /// `15.13`, `9.6.24`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 100_000 {
            write!(f, "{}.{}", self.major(), self.0 % 10_000)
        } else {
            write!(f, "{}.{}.{}", self.0 / 10_000, self.0 / 100 % 100, self.0 % 100)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_and_display() {
        assert_eq!(PgVersion(150013).major(), 15);
        assert_eq!(PgVersion(170005).major(), 17);
        assert_eq!(PgVersion(90624).major(), 6);
        assert_eq!(PgVersion(150013).to_string(), "15.13");
        assert_eq!(PgVersion(90624).to_string(), "9.6.24");
    }

    #[test]
    fn per_version_sql() {
        let v14 = PgVersion(140010);
        let v15 = PgVersion(150000);
        assert_eq!(v14.backup_start_function(), "pg_start_backup(text, boolean, boolean)");
        assert_eq!(v14.backup_stop_function(), "pg_stop_backup(boolean, boolean)");
        assert!(v14.backup_start_sql().contains("pg_start_backup($1, $2, false)"));
        assert!(v14.backup_stop_sql().contains("pg_stop_backup(false, $1)"));
        assert_eq!(v15.backup_start_function(), "pg_backup_start(text, boolean)");
        assert_eq!(v15.backup_stop_function(), "pg_backup_stop(boolean)");
        assert!(v15.backup_stop_sql().contains("pg_backup_stop($1)"));
        assert!(!v14.has_pg_checkpoint_role() && v15.has_pg_checkpoint_role());
        assert!(!PgVersion(100020).has_file_roles() && PgVersion(110000).has_file_roles());
        assert!(!PgVersion(160000).has_summarize_wal() && PgVersion(170000).has_summarize_wal());
    }
}
