//! The messages exchanged inside the COPY BOTH stream of a replication connection.
//!
//! Once `START_REPLICATION` is answered with CopyBothResponse, every CopyData message
//! carries one of these, identified by its first byte (all integers big-endian; layouts
//! from the protocol documentation, "Streaming Replication Protocol"):
//!
//! ```text
//!  server → client
//!   XLogData           'w' | wal_start i64 | wal_end i64 | server_time i64 | data ...
//!   PrimaryKeepalive   'k' | wal_end i64   | server_time i64 | reply_requested u8
//!  client → server
//!   StandbyStatusUpdate'r' | written i64 | flushed i64 | applied i64 | client_time i64
//!                          | reply_requested u8
//!   HotStandbyFeedback 'h' | client_time i64 | xmin u32 | xmin_epoch u32
//!                          | catalog_xmin u32 | catalog_xmin_epoch u32
//! ```
//!
//! Decoding is strict: a wrong tag, a short message or trailing bytes after a fixed-size
//! message is an [`Error::Decode`], never a panic, whatever the bytes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::time::PgTimestamp;

/// WAL bytes as the server sent them, with where they belong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// The WAL position of the first byte of `data`.
    pub wal_start: Lsn,
    /// The end of WAL on the server when it sent this (its flush position).
    pub wal_end: Lsn,
    /// The server's clock at sending.
    pub server_time: PgTimestamp,
    /// The WAL itself (physical) or the output plugin's bytes (logical).
    pub data: Bytes,
}

/// The server telling where it is, and maybe asking for an immediate status update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The end of WAL on the server.
    pub wal_end: Lsn,
    /// The server's clock at sending.
    pub server_time: PgTimestamp,
    /// Whether the server wants a standby status update now (it otherwise disconnects
    /// the client after `wal_sender_timeout`).
    pub reply_requested: bool,
}

/// A message the server sends while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalMessage {
    /// WAL data.
    XLogData(XLogData),
    /// A keepalive.
    PrimaryKeepalive(PrimaryKeepalive),
}

/// The client's progress report: what it has written, flushed to durable storage and
/// applied. The server uses `flushed` to advance a replication slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// The position after the last byte written (not necessarily durable).
    pub written: Lsn,
    /// The position after the last byte flushed: durable, and so safe for the server to
    /// forget once the slot moves past it.
    pub flushed: Lsn,
    /// The position after the last byte applied (`0/0` when the client applies nothing).
    pub applied: Lsn,
    /// The client's clock at sending.
    pub client_time: PgTimestamp,
    /// Whether the client wants the server to answer with a keepalive at once.
    pub reply_requested: bool,
}

/// Hot standby feedback: the oldest transaction ids a standby's queries still need, so
/// the server does not vacuum away rows they may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    /// The client's clock at sending.
    pub client_time: PgTimestamp,
    /// The standby's xmin (0 turns feedback off).
    pub xmin: u32,
    /// The epoch of `xmin`.
    pub xmin_epoch: u32,
    /// The xmin of the standby's replication slots' catalog needs (0 for none).
    pub catalog_xmin: u32,
    /// The epoch of `catalog_xmin`.
    pub catalog_xmin_epoch: u32,
}

/// A message the client sends while streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyMessage {
    /// A status update.
    Status(StandbyStatusUpdate),
    /// Hot standby feedback.
    Feedback(HotStandbyFeedback),
}

const XLOG_DATA: u8 = b'w';
const KEEPALIVE: u8 = b'k';
const STATUS: u8 = b'r';
const FEEDBACK: u8 = b'h';
const XLOG_DATA_HEADER: usize = 1 + 8 + 8 + 8;
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
const STATUS_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;
const FEEDBACK_LEN: usize = 1 + 8 + 4 + 4 + 4 + 4;

/// Reads big-endian integers off a slice, failing (never panicking) when it runs short.
struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Decode {
                what: self.what,
                reason: format!("needs {n} more bytes, {} left", self.buf.len()),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("take(8) returns 8 bytes")))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(self.u64()? as i64)
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().expect("take(4) returns 4 bytes")))
    }
    fn bool(&mut self) -> Result<bool> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(Error::Decode { what: self.what, reason: format!("flag byte {b}, want 0 or 1") }),
        }
    }
    fn end(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Decode { what: self.what, reason: format!("{} trailing bytes", self.buf.len()) })
        }
    }
}

fn wrong_tag(what: &'static str, tag: Option<&u8>) -> Error {
    Error::Decode {
        what,
        reason: match tag {
            None => "empty message".into(),
            Some(t) => format!("unknown tag {:?} (0x{t:02x})", *t as char),
        },
    }
}

impl WalMessage {
    /// Decodes the payload of one CopyData message from the server.
    pub fn decode(payload: &Bytes) -> Result<Self> {
        match payload.first() {
            Some(&XLOG_DATA) => {
                let mut r = Reader { what: "XLogData", buf: &payload[1..] };
                let wal_start = Lsn(r.u64()?);
                let wal_end = Lsn(r.u64()?);
                let server_time = PgTimestamp(r.i64()?);
                Ok(WalMessage::XLogData(XLogData {
                    wal_start,
                    wal_end,
                    server_time,
                    data: payload.slice(XLOG_DATA_HEADER..),
                }))
            }
            Some(&KEEPALIVE) => {
                let mut r = Reader { what: "primary keepalive", buf: &payload[1..] };
                let m = PrimaryKeepalive {
                    wal_end: Lsn(r.u64()?),
                    server_time: PgTimestamp(r.i64()?),
                    reply_requested: r.bool()?,
                };
                r.end()?;
                Ok(WalMessage::PrimaryKeepalive(m))
            }
            other => Err(wrong_tag("replication", other)),
        }
    }

    /// Encodes the payload, as a server would (for tests and tools that replay streams).
    pub fn encode(&self) -> Bytes {
        match self {
            WalMessage::XLogData(x) => {
                let mut b = BytesMut::with_capacity(XLOG_DATA_HEADER + x.data.len());
                b.put_u8(XLOG_DATA);
                b.put_u64(x.wal_start.0);
                b.put_u64(x.wal_end.0);
                b.put_i64(x.server_time.0);
                b.put_slice(&x.data);
                b.freeze()
            }
            WalMessage::PrimaryKeepalive(k) => {
                let mut b = BytesMut::with_capacity(KEEPALIVE_LEN);
                b.put_u8(KEEPALIVE);
                b.put_u64(k.wal_end.0);
                b.put_i64(k.server_time.0);
                b.put_u8(u8::from(k.reply_requested));
                b.freeze()
            }
        }
    }
}

impl StandbyMessage {
    /// Encodes the payload of the CopyData message that carries this to the server.
    pub fn encode(&self) -> Bytes {
        match self {
            StandbyMessage::Status(s) => {
                let mut b = BytesMut::with_capacity(STATUS_LEN);
                b.put_u8(STATUS);
                b.put_u64(s.written.0);
                b.put_u64(s.flushed.0);
                b.put_u64(s.applied.0);
                b.put_i64(s.client_time.0);
                b.put_u8(u8::from(s.reply_requested));
                b.freeze()
            }
            StandbyMessage::Feedback(h) => {
                let mut b = BytesMut::with_capacity(FEEDBACK_LEN);
                b.put_u8(FEEDBACK);
                b.put_i64(h.client_time.0);
                b.put_u32(h.xmin);
                b.put_u32(h.xmin_epoch);
                b.put_u32(h.catalog_xmin);
                b.put_u32(h.catalog_xmin_epoch);
                b.freeze()
            }
        }
    }

    /// Decodes a client message, as a server would (for tests and proxies).
    pub fn decode(payload: &[u8]) -> Result<Self> {
        match payload.first() {
            Some(&STATUS) => {
                let mut r = Reader { what: "standby status update", buf: &payload[1..] };
                let m = StandbyStatusUpdate {
                    written: Lsn(r.u64()?),
                    flushed: Lsn(r.u64()?),
                    applied: Lsn(r.u64()?),
                    client_time: PgTimestamp(r.i64()?),
                    reply_requested: r.bool()?,
                };
                r.end()?;
                Ok(StandbyMessage::Status(m))
            }
            Some(&FEEDBACK) => {
                let mut r = Reader { what: "hot standby feedback", buf: &payload[1..] };
                let m = HotStandbyFeedback {
                    client_time: PgTimestamp(r.i64()?),
                    xmin: r.u32()?,
                    xmin_epoch: r.u32()?,
                    catalog_xmin: r.u32()?,
                    catalog_xmin_epoch: r.u32()?,
                };
                r.end()?;
                Ok(StandbyMessage::Feedback(m))
            }
            other => Err(wrong_tag("standby", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte layout of XLogData, field by field as the protocol documentation lists it:
    /// Byte1('w'), Int64 start, Int64 end, Int64 clock, Byten data.
    #[test]
    fn xlogdata_layout() {
        let bytes: Vec<u8> = [
            &[b'w'][..],
            &[0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD8, 0x48], // 16/B374D848
            &[0x00, 0x00, 0x00, 0x16, 0xB3, 0x75, 0x00, 0x00], // 16/B3750000
            &[0x00, 0x02, 0xD8, 0x9A, 0x5E, 0x3B, 0x8C, 0x40], // server clock
            b"WAL!",
        ]
        .concat();
        let msg = WalMessage::decode(&Bytes::from(bytes.clone())).expect("valid XLogData");
        let want = WalMessage::XLogData(XLogData {
            wal_start: "16/B374D848".parse().expect("lsn"),
            wal_end: "16/B3750000".parse().expect("lsn"),
            server_time: PgTimestamp(0x0002_D89A_5E3B_8C40),
            data: Bytes::from_static(b"WAL!"),
        });
        assert_eq!(msg, want);
        assert_eq!(&want.encode()[..], &bytes[..]);
        // No data is allowed (an empty XLogData), a short header is not.
        assert!(WalMessage::decode(&Bytes::from(bytes[..25].to_vec())).is_ok());
        assert!(WalMessage::decode(&Bytes::from(bytes[..24].to_vec())).is_err());
    }

    /// Primary keepalive: Byte1('k'), Int64 end of WAL, Int64 clock, Byte1 reply flag.
    #[test]
    fn keepalive_layout() {
        let bytes: Vec<u8> =
            [&[b'k'][..], &[0, 0, 0, 1, 0, 0, 0, 0x28], &[0, 0, 0, 0, 0, 0, 0x03, 0xE8], &[1]].concat();
        let msg = WalMessage::decode(&Bytes::from(bytes.clone())).expect("valid keepalive");
        let want = WalMessage::PrimaryKeepalive(PrimaryKeepalive {
            wal_end: Lsn(0x1_0000_0028),
            server_time: PgTimestamp(1000),
            reply_requested: true,
        });
        assert_eq!(msg, want);
        assert_eq!(&want.encode()[..], &bytes[..]);
        let mut long = bytes.clone();
        long.push(0);
        assert!(WalMessage::decode(&Bytes::from(long)).is_err(), "trailing byte");
        assert!(WalMessage::decode(&Bytes::from(bytes[..17].to_vec())).is_err(), "short");
        let mut flag = bytes;
        flag[17] = 2;
        assert!(WalMessage::decode(&Bytes::from(flag)).is_err(), "flag must be 0 or 1");
    }

    /// Standby status update: Byte1('r'), Int64 written, Int64 flushed, Int64 applied,
    /// Int64 clock, Byte1 reply requested.
    #[test]
    fn status_update_layout() {
        let m = StandbyMessage::Status(StandbyStatusUpdate {
            written: Lsn(0x0102_0304_0506_0708),
            flushed: Lsn(0x1112_1314_1516_1718),
            applied: Lsn(0),
            client_time: PgTimestamp(-2),
            reply_requested: false,
        });
        let bytes = m.encode();
        let want: Vec<u8> = [
            &[b'r'][..],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18],
            &[0; 8],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE],
            &[0],
        ]
        .concat();
        assert_eq!(&bytes[..], &want[..]);
        assert_eq!(bytes.len(), 34);
        assert_eq!(StandbyMessage::decode(&bytes).expect("round trip"), m);
    }

    /// Hot standby feedback: Byte1('h'), Int64 clock, Int32 xmin, Int32 epoch, Int32
    /// catalog_xmin, Int32 epoch.
    #[test]
    fn hot_standby_feedback_layout() {
        let m = StandbyMessage::Feedback(HotStandbyFeedback {
            client_time: PgTimestamp(0x0A0B),
            xmin: 0x0102_0304,
            xmin_epoch: 5,
            catalog_xmin: 0xAABB_CCDD,
            catalog_xmin_epoch: 6,
        });
        let want: Vec<u8> = [
            &[b'h'][..],
            &[0, 0, 0, 0, 0, 0, 0x0A, 0x0B],
            &[1, 2, 3, 4],
            &[0, 0, 0, 5],
            &[0xAA, 0xBB, 0xCC, 0xDD],
            &[0, 0, 0, 6],
        ]
        .concat();
        assert_eq!(&m.encode()[..], &want[..]);
        assert_eq!(StandbyMessage::decode(&want).expect("round trip"), m);
    }

    #[test]
    fn unknown_and_empty_messages_are_errors() {
        assert!(WalMessage::decode(&Bytes::new()).is_err());
        assert!(WalMessage::decode(&Bytes::from_static(b"r")).is_err());
        assert!(StandbyMessage::decode(b"w").is_err());
        assert!(StandbyMessage::decode(b"").is_err());
    }
}
