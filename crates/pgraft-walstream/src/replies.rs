//! What replication commands answer, as typed values.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::message::WalMessage;
use crate::segment::TimeLineId;

/// One result set of a plain query on a replication connection.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// The rows; each value is its raw bytes in text format, `None` for NULL.
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// The CommandComplete tag, for example `SELECT 1` or `DROP_REPLICATION_SLOT`.
    pub command_tag: String,
}

impl QueryResult {
    /// The value at `row`, `column` as text (`None` for NULL); an error when out of range
    /// or not UTF-8.
    pub fn text(&self, row: usize, column: &str) -> Result<Option<&str>> {
        let col = self.columns.iter().position(|c| c == column).ok_or_else(|| {
            Error::Protocol(format!("no column {column:?} in a result with {:?}", self.columns))
        })?;
        let value = self
            .rows
            .get(row)
            .and_then(|r| r.get(col))
            .ok_or_else(|| Error::Protocol(format!("no row {row} / column {column:?} in the result")))?;
        value
            .as_ref()
            .map(|v| {
                std::str::from_utf8(v)
                    .map_err(|_| Error::Protocol(format!("column {column:?} is not UTF-8 text")))
            })
            .transpose()
    }

    /// As [`QueryResult::text`], and NULL is an error.
    pub fn required(&self, row: usize, column: &str) -> Result<&str> {
        self.text(row, column)?.ok_or_else(|| Error::Protocol(format!("column {column:?} is NULL")))
    }
}

/// The answer to `IDENTIFY_SYSTEM`: which cluster, timeline and WAL position the server is at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (`pg_control_system().system_identifier`): a
    /// receiver refuses to mix WAL of two clusters.
    pub system_id: u64,
    /// The server's current timeline.
    pub timeline: TimeLineId,
    /// The server's current WAL flush position (its replay position on a standby).
    pub xlogpos: Lsn,
    /// The database of a logical replication connection, `None` for physical.
    pub dbname: Option<String>,
}

/// What kind of slot to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotKind {
    /// A physical slot. With `reserve_wal` the server keeps WAL from now on, before any
    /// client has streamed from the slot.
    Physical {
        /// Reserve WAL at creation.
        reserve_wal: bool,
    },
    /// A logical slot decoding through an output plugin (`test_decoding`, `pgoutput`).
    Logical {
        /// The output plugin's name.
        plugin: String,
    },
}

/// The answer to `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// Logical slots: the position from which changes are decoded; physical: the reserved
    /// position, if WAL was reserved.
    pub consistent_point: Option<Lsn>,
    /// An exported snapshot, if one was asked for (never by this client).
    pub snapshot_name: Option<String>,
    /// The output plugin of a logical slot.
    pub output_plugin: Option<String>,
}

/// The answer to `READ_REPLICATION_SLOT` (PostgreSQL 15 and later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// `physical` or `logical`.
    pub slot_type: String,
    /// The oldest WAL position the slot keeps, if it has one yet.
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`.
    pub restart_tli: Option<TimeLineId>,
}

/// Where the server's history leaves a timeline: the next timeline and the position at
/// which it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The timeline that follows.
    pub timeline: TimeLineId,
    /// The position at which it branched off the one that ended.
    pub start: Lsn,
}

/// How a `START_REPLICATION` was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// COPY BOTH mode: WAL follows.
    Streaming,
    /// The start position is exactly where the requested (historic) timeline ends: the
    /// server skipped streaming and named the next timeline.
    EndOfTimeline(TimelineSwitch),
}

/// How streaming ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamEnd {
    /// Set when the server streamed a timeline to its end: continue on this one.
    pub next_timeline: Option<TimelineSwitch>,
    /// The bytes of WAL the server had already sent when the client stopped; they are
    /// dropped, and the caller restarts from what it kept.
    pub discarded_bytes: u64,
}

/// What a streaming connection delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A message of the stream.
    Message(WalMessage),
    /// The server ended streaming (end of a timeline, or shutdown); the connection is back
    /// to accepting commands, or closed if the server went away.
    End(StreamEnd),
}
