//! Server times: microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's `TimestampTz`.
//!
//! Every replication message carries one (the sender's clock when it sent it). They are
//! kept as the raw integer so that encoding and decoding are exact; conversions to
//! [`SystemTime`] are explicit.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the Unix epoch (1970-01-01) to PostgreSQL's epoch (2000-01-01).
pub const POSTGRES_EPOCH_UNIX_SECONDS: u64 = 946_684_800;

/// A point in time as PostgreSQL sends it: microseconds since 2000-01-01 UTC (negative
/// before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The PostgreSQL epoch itself, 2000-01-01 00:00:00 UTC.
    pub const EPOCH: PgTimestamp = PgTimestamp(0);

    /// Now, by this machine's clock (what standby status updates carry).
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Converts a wall-clock time, saturating at the ends of the `i64` range.
    pub fn from_system_time(t: SystemTime) -> Self {
        let epoch = UNIX_EPOCH + Duration::from_secs(POSTGRES_EPOCH_UNIX_SECONDS);
        match t.duration_since(epoch) {
            Ok(after) => PgTimestamp(i64::try_from(after.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => PgTimestamp(i64::try_from(e.duration().as_micros()).map(|v| -v).unwrap_or(i64::MIN)),
        }
    }

    /// The wall-clock time this stands for.
    pub fn to_system_time(self) -> SystemTime {
        let epoch = UNIX_EPOCH + Duration::from_secs(POSTGRES_EPOCH_UNIX_SECONDS);
        let d = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            epoch + d
        } else {
            epoch - d
        }
    }

    /// Microseconds since the Unix epoch, for logs and JSON.
    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(POSTGRES_EPOCH_UNIX_SECONDS as i64 * 1_000_000)
    }
}

impl fmt::Display for PgTimestamp {
    /// Seconds since the Unix epoch with microseconds, e.g. `1717171717.123456`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.unix_micros();
        let sign = if us < 0 { "-" } else { "" };
        let abs = us.unsigned_abs();
        write!(f, "{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_2000_01_01() {
        // 2000-01-01T00:00:00Z is 946684800 seconds after the Unix epoch.
        assert_eq!(PgTimestamp::EPOCH.to_system_time(), UNIX_EPOCH + Duration::from_secs(946_684_800));
        assert_eq!(PgTimestamp::from_system_time(UNIX_EPOCH), PgTimestamp(-946_684_800_000_000));
        assert_eq!(PgTimestamp(1_500_000).unix_micros(), 946_684_801_500_000);
        assert_eq!(PgTimestamp(1_500_000).to_string(), "946684801.500000");
    }

    #[test]
    fn round_trips_through_system_time() {
        for us in [0i64, 1, -1, 123_456_789_012, -98_765_432_101, 800_000_000_000_000] {
            let t = PgTimestamp(us);
            assert_eq!(PgTimestamp::from_system_time(t.to_system_time()), t);
        }
        let now = PgTimestamp::now();
        // Some time after 2024-01-01 (757382400 s after 2000-01-01).
        assert!(now.0 > 757_382_400_000_000, "{now:?}");
    }
}
