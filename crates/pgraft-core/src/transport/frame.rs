//! Frames on a peer connection, after the handshake.
//!
//! ```text
//! frame = len: u32 BE (bytes after this field, at most the cap) | kind: u8 | payload
//! kind 1  MESSAGE         payload = a raft Message (protobuf, prost)
//! kind 2  SNAPSHOT_START  payload = total: u64 BE | a raft MsgSnapshot with empty data
//! kind 3  CHUNK           payload = the next bytes of a snapshot's data or a large message
//! kind 4  LARGE_START     payload = total: u64 BE (bytes of the encoded message that follow)
//! ```
//!
//! A snapshot larger than one frame travels as a start frame and chunks; the receiver
//! delivers the message once `total` bytes have arrived. Any other message larger than one
//! frame (an append carrying a big entry: pgraft puts no fixed limit on an entry's size)
//! travels the same way, its encoded bytes in chunks after a LARGE_START. Every length is
//! checked against a cap before anything is allocated, so a peer cannot make us reserve
//! memory it never sends.

use prost::Message as _;
use raft::prelude::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted by default (16 MiB).
pub const DEFAULT_FRAME_CAP: u32 = 16 << 20;
/// Largest snapshot accepted by default (4 GiB).
pub const DEFAULT_SNAPSHOT_CAP: u64 = 4 << 30;

const MESSAGE: u8 = 1;
const SNAPSHOT_START: u8 = 2;
const SNAPSHOT_CHUNK: u8 = 3;
const LARGE_START: u8 = 4;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A raft message.
    Message(Message),
    /// The start of a snapshot of `total` bytes; `msg` carries everything but the data.
    SnapshotStart {
        /// Bytes of snapshot data that follow in chunks.
        total: u64,
        /// The MsgSnapshot without its data.
        msg: Message,
    },
    /// The next bytes of snapshot data, or of a large message.
    SnapshotChunk(Vec<u8>),
    /// The start of a message too large for one frame: `total` bytes of its encoding
    /// follow in chunks.
    LargeStart {
        /// Bytes of the encoded message that follow in chunks.
        total: u64,
    },
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is larger than the cap.
    #[error("frame of {len} bytes exceeds the cap of {cap} bytes")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// The bytes are not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl Frame {
    /// The bytes of this frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            Frame::Message(m) => (MESSAGE, m.encode_to_vec()),
            Frame::SnapshotStart { total, msg } => {
                let mut p = total.to_be_bytes().to_vec();
                p.extend(msg.encode_to_vec());
                (SNAPSHOT_START, p)
            }
            Frame::SnapshotChunk(b) => (SNAPSHOT_CHUNK, b.clone()),
            Frame::LargeStart { total } => (LARGE_START, total.to_be_bytes().to_vec()),
        };
        let mut out = Vec::with_capacity(payload.len() + 5);
        out.extend(((payload.len() + 1) as u32).to_be_bytes());
        out.push(kind);
        out.extend(payload);
        out
    }

    /// Decodes the bytes after the length prefix (kind and payload).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let (&kind, payload) =
            body.split_first().ok_or_else(|| FrameError::Malformed("empty frame".into()))?;
        let msg =
            |b: &[u8]| Message::decode(b).map_err(|e| FrameError::Malformed(format!("raft message: {e}")));
        match kind {
            MESSAGE => Ok(Frame::Message(msg(payload)?)),
            SNAPSHOT_START => {
                if payload.len() < 8 {
                    return Err(FrameError::Malformed("snapshot start without a length".into()));
                }
                let (total, rest) = payload.split_at(8);
                let total = u64::from_be_bytes(total.try_into().unwrap_or([0; 8]));
                Ok(Frame::SnapshotStart { total, msg: msg(rest)? })
            }
            SNAPSHOT_CHUNK => Ok(Frame::SnapshotChunk(payload.to_vec())),
            LARGE_START => {
                let total: [u8; 8] = payload
                    .try_into()
                    .map_err(|_| FrameError::Malformed("large message start without a length".into()))?;
                Ok(Frame::LargeStart { total: u64::from_be_bytes(total) })
            }
            k => Err(FrameError::Malformed(format!("unknown frame kind {k}"))),
        }
    }

    /// Splits a message into frames of at most `cap` bytes: one frame, a snapshot start
    /// and chunks, or a large message's start and chunks.
    pub fn split(mut m: Message, cap: u32) -> Vec<Frame> {
        let room = (cap as usize).saturating_sub(64).max(1);
        let data_len = m.snapshot.as_ref().map_or(0, |s| s.data.len());
        if data_len + 1024 < room {
            if m.encoded_len() < room {
                return vec![Frame::Message(m)];
            }
            let bytes = m.encode_to_vec();
            let mut frames = vec![Frame::LargeStart { total: bytes.len() as u64 }];
            frames.extend(bytes.chunks(room).map(|c| Frame::SnapshotChunk(c.to_vec())));
            return frames;
        }
        let data = m.snapshot.as_mut().map(|s| std::mem::take(&mut s.data)).unwrap_or_default();
        let mut frames = vec![Frame::SnapshotStart { total: data.len() as u64, msg: m }];
        frames.extend(data.chunks(room).map(|c| Frame::SnapshotChunk(c.to_vec())));
        frames
    }
}

/// Reads one frame, refusing any longer than `cap` before allocating.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, cap: u32) -> Result<Frame, FrameError> {
    let len = r.read_u32().await?;
    if len > cap {
        return Err(FrameError::TooLarge { len: u64::from(len), cap: u64::from(cap) });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    Frame::decode(&body)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    w.write_all(&f.encode()).await
}

/// Reassembles chunked snapshots on the receiving side.
#[derive(Default)]
pub struct Reassembly {
    /// The message being reassembled (a snapshot without its data, or `None` for a large
    /// message whose encoding arrives in chunks), its announced length and what came.
    pending: Option<(Option<Message>, u64, Vec<u8>)>,
}

impl Reassembly {
    /// Feeds a frame; returns a complete message when one is ready.
    pub fn feed(&mut self, f: Frame, snapshot_cap: u64) -> Result<Option<Message>, FrameError> {
        match f {
            Frame::Message(m) => {
                if self.pending.is_some() {
                    return Err(FrameError::Malformed(
                        "a message arrived in the middle of a snapshot".into(),
                    ));
                }
                Ok(Some(m))
            }
            Frame::SnapshotStart { total, msg } => {
                if total > snapshot_cap {
                    return Err(FrameError::TooLarge { len: total, cap: snapshot_cap });
                }
                if self.pending.is_some() {
                    return Err(FrameError::Malformed("a snapshot started inside another".into()));
                }
                if msg.snapshot.is_none() {
                    return Err(FrameError::Malformed("snapshot start without snapshot metadata".into()));
                }
                self.pending = Some((Some(msg), total, Vec::new()));
                self.finish()
            }
            Frame::LargeStart { total } => {
                // Snapshots are the largest thing a member sends; a message is never larger.
                if total > snapshot_cap {
                    return Err(FrameError::TooLarge { len: total, cap: snapshot_cap });
                }
                if self.pending.is_some() {
                    return Err(FrameError::Malformed("a large message started inside another".into()));
                }
                self.pending = Some((None, total, Vec::new()));
                self.finish()
            }
            Frame::SnapshotChunk(bytes) => {
                let Some((_, total, data)) = self.pending.as_mut() else {
                    return Err(FrameError::Malformed("a chunk without a start".into()));
                };
                if data.len() as u64 + bytes.len() as u64 > *total {
                    return Err(FrameError::Malformed("chunks exceed the announced length".into()));
                }
                data.extend_from_slice(&bytes);
                self.finish()
            }
        }
    }

    fn finish(&mut self) -> Result<Option<Message>, FrameError> {
        let done = self.pending.as_ref().is_some_and(|(_, total, data)| data.len() as u64 == *total);
        if !done {
            return Ok(None);
        }
        let Some((msg, _, data)) = self.pending.take() else { return Ok(None) };
        match msg {
            Some(mut msg) => {
                if let Some(s) = msg.snapshot.as_mut() {
                    s.data = data;
                }
                Ok(Some(msg))
            }
            None => Message::decode(data.as_slice())
                .map(Some)
                .map_err(|e| FrameError::Malformed(format!("large raft message: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::{MessageType, Snapshot};

    fn snapshot_msg(size: usize) -> Message {
        let snap =
            crate::storage::snapshot_of(9, 2, &Default::default(), (0..size).map(|i| i as u8).collect());
        Message {
            msg_type: MessageType::MsgSnapshot as i32,
            to: 2,
            from: 1,
            term: 2,
            snapshot: Some(snap),
            ..Default::default()
        }
    }

    #[test]
    fn messages_round_trip() {
        let m = Message {
            msg_type: MessageType::MsgHeartbeat as i32,
            to: 2,
            from: 1,
            term: 5,
            commit: 7,
            ..Default::default()
        };
        let bytes = Frame::Message(m.clone()).encode();
        assert_eq!(Frame::decode(&bytes[4..]).expect("decodes"), Frame::Message(m));
    }

    #[test]
    fn large_snapshots_are_chunked_and_reassembled() {
        let m = snapshot_msg(100_000);
        let frames = Frame::split(m.clone(), 4096);
        assert!(frames.len() > 20, "split into {} frames", frames.len());
        assert!(frames.iter().all(|f| f.encode().len() <= 4096 + 4));
        let mut r = Reassembly::default();
        let mut out = None;
        for f in frames {
            let again = Frame::decode(&f.encode()[4..]).expect("decodes");
            if let Some(done) = r.feed(again, DEFAULT_SNAPSHOT_CAP).expect("valid") {
                out = Some(done);
            }
        }
        assert_eq!(out, Some(m));
        assert_eq!(Frame::split(snapshot_msg(10), 4096).len(), 1, "a small snapshot is one frame");
    }

    #[test]
    fn large_messages_are_chunked_and_reassembled() {
        use raft::prelude::Entry;
        let big = Entry { index: 7, term: 2, data: vec![0xab; 50_000], ..Default::default() };
        let m = Message {
            msg_type: MessageType::MsgAppend as i32,
            to: 2,
            from: 1,
            term: 2,
            entries: vec![big],
            ..Default::default()
        };
        let frames = Frame::split(m.clone(), 4096);
        assert!(matches!(frames[0], Frame::LargeStart { .. }));
        assert!(frames.len() > 10 && frames.iter().all(|f| f.encode().len() <= 4096 + 4));
        let mut r = Reassembly::default();
        let mut out = None;
        for f in frames {
            if let Some(done) =
                r.feed(Frame::decode(&f.encode()[4..]).expect("decodes"), 1 << 20).expect("valid")
            {
                out = Some(done);
            }
        }
        assert_eq!(out, Some(m.clone()));
        let mut r = Reassembly::default();
        assert!(r.feed(Frame::LargeStart { total: 1 << 21 }, 1 << 20).is_err(), "over the cap");
        r.feed(Frame::LargeStart { total: 3 }, 100).expect("a start");
        assert!(r.feed(Frame::Message(m), 100).is_err(), "a message inside a large one");
        let mut r = Reassembly::default();
        r.feed(Frame::LargeStart { total: 3 }, 100).expect("a start");
        assert!(r.feed(Frame::SnapshotChunk(vec![0xff, 0xff, 0xff]), 100).is_err(), "not a message");
        assert!(Frame::decode(&[LARGE_START, 1, 2]).is_err(), "a short length");
    }

    #[test]
    fn bad_sequences_are_refused() {
        let mut r = Reassembly::default();
        assert!(r.feed(Frame::SnapshotChunk(vec![1]), 100).is_err());
        let start = Frame::SnapshotStart { total: 2, msg: snapshot_msg(0) };
        r.feed(start.clone(), 100).expect("a start");
        assert!(r.feed(Frame::SnapshotChunk(vec![1, 2, 3]), 100).is_err(), "more than announced");
        let mut r = Reassembly::default();
        assert!(
            r.feed(Frame::SnapshotStart { total: 1000, msg: snapshot_msg(0) }, 100).is_err(),
            "over the cap"
        );
        let no_meta = Message { snapshot: None::<Snapshot>, ..Default::default() };
        assert!(r.feed(Frame::SnapshotStart { total: 1, msg: no_meta }, 100).is_err());
        assert!(Frame::decode(&[]).is_err());
        assert!(Frame::decode(&[9, 1, 2]).is_err());
        assert!(Frame::decode(&[SNAPSHOT_START, 1]).is_err());
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_allocation() {
        let mut bytes: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1];
        match read_frame(&mut bytes, 1024).await {
            Err(FrameError::TooLarge { len, cap }) => assert_eq!((len, cap), (0xffff_ffff, 1024)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
}
