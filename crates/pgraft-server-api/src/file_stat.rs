//! What `server_file_stat` reports about a file, and the paths the file functions accept.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// The metadata of one file or directory in the server's data directory, from
/// `pg_stat_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    /// Size in bytes at the time of the call.
    pub size: u64,
    /// Whether it is a directory (a symlink to a directory counts as one: the server
    /// follows links, as for `pg_wal` and `pg_tblspc/*`).
    pub is_dir: bool,
    /// When it was last read.
    pub access: SystemTime,
    /// When its contents last changed.
    pub modification: SystemTime,
    /// When its status (permissions, owner) last changed; Unix servers only.
    pub change: Option<SystemTime>,
    /// When it was created; Windows servers only.
    pub creation: Option<SystemTime>,
}

/// One entry of a directory listing: its name, its path from the data directory and its
/// metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's own name.
    pub name: String,
    /// Its path relative to the data directory.
    pub path: String,
    /// Its metadata.
    pub stat: FileStat,
}

/// Refuses paths that could leave the data directory: the file functions resolve a
/// relative path inside it, while an absolute path or a `..` component (which a role
/// with `pg_read_server_files` or SUPERUSER may use) reaches any file the server account
/// can read. `.` alone names the data directory itself.
pub fn check_path(path: &str) -> Result<()> {
    let refuse = |reason| Err(Error::PathOutsideDataDirectory { path: path.to_string(), reason });
    if path.is_empty() {
        return refuse("the path is empty");
    }
    if path.contains('\0') {
        return refuse("the path contains a NUL byte");
    }
    if path.starts_with('/') {
        return refuse("the path is absolute");
    }
    if path.split('/').any(|c| c == "..") {
        return refuse("the path has a `..` component");
    }
    Ok(())
}

/// Formats a time as the reference does, `%Y-%m-%d %H:%M:%S`, in UTC.
pub fn format_utc(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Year, month, day of a count of days since 1970-01-01 in the proleptic Gregorian
/// calendar (eras of 400 years, years counted from March so leap days fall last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of (March-based) year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn paths() {
        for ok in ["base/1/1259", "global/pg_control", ".", "pg_wal/000000010000000000000001", "a/./b"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "base/../../etc/passwd", "base/..", "a\0b"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01 00:00:00");
        assert_eq!(format_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29 00:00:00");
        assert_eq!(format_utc(UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14 22:13:20");
        assert_eq!(format_utc(UNIX_EPOCH - Duration::from_secs(1)), "1969-12-31 23:59:59");
    }
}
