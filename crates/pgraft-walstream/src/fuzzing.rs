//! Bodies of the fuzz targets, shared by `cargo fuzz` (crates/pgraft-walstream/fuzz) and
//! the stable-compiler fuzz test (tests/t50_fuzz.rs).
//!
//! Each takes arbitrary bytes and must return without panicking, whatever they are.

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;

use crate::frame::{self, Backend};
use crate::message::{StandbyMessage, WalMessage};
use crate::timeline::TimelineHistory;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("backend_stream", backend_stream),
    ("wal_message", wal_message),
    ("timeline_history", timeline_history),
];

/// A byte stream as a server might send it: split into messages and decode each the way
/// the client does (replication messages inside CopyData, errors, rows).
pub fn backend_stream(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(m)) = frame::split(&mut buf) {
        match m {
            Backend::CopyData(p) => wal_message(&p),
            Backend::Other(Message::ErrorResponse(b)) => {
                let _ = frame::server_error(b.fields());
            }
            Backend::Other(Message::NoticeResponse(b)) => {
                let _ = frame::server_error(b.fields());
            }
            Backend::Other(Message::RowDescription(b)) => {
                let _ = frame::columns(&b);
            }
            Backend::Other(Message::DataRow(b)) => {
                let _ = frame::values(&b);
            }
            Backend::Other(Message::AuthenticationSasl(b)) => {
                let _ = b.mechanisms().count();
            }
            Backend::Other(Message::ParameterStatus(b)) => {
                let _ = (b.name(), b.value());
            }
            Backend::Other(Message::CommandComplete(b)) => {
                let _ = b.tag();
            }
            _ => {}
        }
    }
}

/// One CopyData payload, decoded as a server message and as a client message; whatever
/// decodes must encode back to the same bytes.
pub fn wal_message(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(m) = WalMessage::decode(&bytes) {
        assert_eq!(m.encode(), bytes, "a decoded server message re-encodes to its bytes");
    }
    if let Ok(m) = StandbyMessage::decode(data) {
        assert_eq!(&m.encode()[..], data, "a decoded client message re-encodes to its bytes");
    }
}

/// A timeline history file's bytes.
pub fn timeline_history(data: &[u8]) {
    let h = TimelineHistory {
        timeline: 2,
        file_name: TimelineHistory::file_name_of(2),
        content: Bytes::copy_from_slice(data),
    };
    let _ = h.entries();
}
