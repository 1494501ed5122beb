//! Backend messages off the wire: splitting the byte stream into frames and reading the
//! few message bodies a replication client needs.
//!
//! Every backend message is `tag u8 | length i32 (counting itself) | body`. Frames are
//! split here rather than by `postgres_protocol`, for two reasons: its parser does not know
//! CopyBothResponse (`W`), which START_REPLICATION answers with, and the length is checked
//! against a cap before any memory is reserved for it, so a hostile server cannot make
//! us allocate gigabytes with five bytes.

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, ErrorFields, Message, RowDescriptionBody};

use crate::error::{Error, Result, ServerError};

/// The largest backend message accepted: PostgreSQL never sends more than 1 GiB in one
/// message (MaxAllocSize), and WAL messages are at most a few hundred KiB.
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// A backend message, decoded as far as the client needs.
pub(crate) enum Backend {
    /// CopyData: its payload (a replication message while streaming).
    CopyData(Bytes),
    /// CopyBothResponse: the server entered COPY BOTH mode (streaming started).
    CopyBothResponse,
    /// NegotiateProtocolVersion: the server does not know some startup option.
    NegotiateProtocolVersion,
    /// Anything else, parsed by `postgres_protocol`.
    Other(Message),
}

/// Splits one message off the front of `buf`, or returns `None` if it is not complete
/// yet (reserving room for the rest).
pub(crate) fn split(buf: &mut BytesMut) -> Result<Option<Backend>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(Error::Decode { what: "backend", reason: format!("length {len} < 4 (tag {tag:#04x})") });
    }
    if len > MAX_MESSAGE_LEN {
        return Err(Error::Decode {
            what: "backend",
            reason: format!("length {len} over the {MAX_MESSAGE_LEN}-byte cap (tag {tag:#04x})"),
        });
    }
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    match tag {
        b'd' => {
            let mut frame = buf.split_to(1 + len);
            frame.advance(5);
            Ok(Some(Backend::CopyData(frame.freeze())))
        }
        b'W' => {
            buf.advance(1 + len);
            Ok(Some(Backend::CopyBothResponse))
        }
        b'v' => {
            buf.advance(1 + len);
            Ok(Some(Backend::NegotiateProtocolVersion))
        }
        _ => {
            let mut frame = buf.split_to(1 + len);
            match Message::parse(&mut frame) {
                Ok(Some(m)) => Ok(Some(Backend::Other(m))),
                Ok(None) => Err(Error::Decode { what: "backend", reason: "incomplete after framing".into() }),
                Err(e) => Err(Error::Decode { what: "backend", reason: e.to_string() }),
            }
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
pub(crate) fn server_error(fields: ErrorFields<'_>) -> Result<ServerError> {
    let mut e = ServerError::default();
    let mut it = fields;
    while let Some(f) =
        it.next().map_err(|e| Error::Decode { what: "ErrorResponse", reason: e.to_string() })?
    {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    Ok(e)
}

/// The column names of a RowDescription.
pub(crate) fn columns(body: &RowDescriptionBody) -> Result<Vec<String>> {
    body.fields()
        .map(|f| Ok(f.name().to_string()))
        .collect()
        .map_err(|e| Error::Decode { what: "RowDescription", reason: e.to_string() })
}

/// The values of a DataRow, as raw bytes (`None` for NULL).
pub(crate) fn values(body: &DataRowBody) -> Result<Vec<Option<Bytes>>> {
    let buf = body.buffer_bytes();
    body.ranges()
        .map(|r| Ok(r.map(|r| buf.slice(r))))
        .collect()
        .map_err(|e| Error::Decode { what: "DataRow", reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_copy_both_and_copy_data() {
        let mut buf = BytesMut::new();
        // CopyBothResponse: 'W', len 7, format 0, 0 columns... (Int8 format, Int16 count).
        buf.extend_from_slice(&[b'W', 0, 0, 0, 7, 0, 0, 0]);
        buf.extend_from_slice(&[b'd', 0, 0, 0, 6, b'k', b'!']);
        buf.extend_from_slice(&[b'c', 0, 0]);
        assert!(matches!(split(&mut buf), Ok(Some(Backend::CopyBothResponse))));
        match split(&mut buf) {
            Ok(Some(Backend::CopyData(b))) => assert_eq!(&b[..], b"k!"),
            _ => panic!("want CopyData"),
        }
        assert!(matches!(split(&mut buf), Ok(None)), "CopyDone is incomplete");
        buf.extend_from_slice(&[0, 4]);
        assert!(matches!(split(&mut buf), Ok(Some(Backend::Other(Message::CopyDone)))));
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_bad_lengths() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(split(&mut buf).is_err());
        let mut buf = BytesMut::from(&[b'd', 0x7F, 0xFF, 0xFF, 0xFF][..]);
        assert!(split(&mut buf).is_err(), "2 GiB is over the cap");
        assert!(buf.capacity() < 1 << 20, "nothing reserved for it");
    }
}
