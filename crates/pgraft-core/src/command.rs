//! What travels in a Raft entry: a proposal and its origin.
//!
//! ```text
//! entry.data    = FORMAT (1 byte, 1) ++ postcard(Proposal)
//! entry.context = empty for normal entries; for a membership change:
//!                 FORMAT ++ postcard(ConfContext)
//! ```
//!
//! The origin (member id, incarnation, sequence) lets the member that proposed an entry
//! find the client waiting for it when the entry is applied, even when the proposal was
//! forwarded to the leader; the incarnation keeps a restarted member from mistaking an old
//! entry for a new request.

use serde::{Deserialize, Serialize};

use crate::kv::KvOp;

/// The encoding version of entry payloads.
pub const FORMAT: u8 = 1;

/// Who proposed an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The proposing member.
    pub node: u64,
    /// A value chosen at each start of that member.
    pub incarnation: u64,
    /// Counts proposals within one incarnation.
    pub seq: u64,
}

/// What an entry asks the state machine to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A KV operation.
    Kv(KvOp),
    /// Opaque data appended by `pgraft_replicate_entry` / `pgraft_log_append`; the state
    /// machine records it and leaves the data in the log.
    Raw(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A cluster-wide setting change (`pgraft_set_config`), validated before proposal.
    SetConfig {
        /// The setting's name without the `pgraft.` prefix.
        name: String,
        /// Its new value, as text.
        value: String,
    },
    /// A round trip through the log that changes nothing (`pgraft_test`).
    Probe,
}

impl Body {
    /// The entry's operation name, as shown in `pgraft.log_index_mapping`.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Kv(op) => op.name(),
            Body::Raw(_) => "replicate_entry",
            Body::SetConfig { .. } => "set_config",
            Body::Probe => "probe",
        }
    }
}

/// One proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Who is waiting for it.
    pub origin: Origin,
    /// When it was proposed, ms since the Unix epoch, by the proposer's clock.
    pub time_ms: i64,
    /// What to do.
    pub body: Body,
}

/// The context of a membership change entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfContext {
    /// Who is waiting for it.
    pub origin: Origin,
    /// The address (`host:port`) of the member being added; empty for removals.
    pub address: String,
}

/// A payload that cannot be decoded: a bug or corruption, never silently skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable entry payload: {0}")]
pub struct DecodeError(pub String);

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Serialising our own plain data types into a Vec cannot fail.
    out.extend(postcard::to_stdvec(v).expect("postcard serialises plain data into a Vec"));
    out
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| DecodeError(e.to_string())),
        Some((v, _)) => Err(DecodeError(format!("unknown payload format {v}"))),
        None => Err(DecodeError("empty payload".into())),
    }
}

impl Proposal {
    /// The entry data.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Reads entry data.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes)
    }
}

impl ConfContext {
    /// The entry context.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Reads an entry context.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let p = Proposal {
            origin: Origin { node: 2, incarnation: 99, seq: 7 },
            time_ms: 1_700_000_000_000,
            body: Body::Kv(KvOp::Put { key: "k".into(), value: vec![0, 255], time_ms: 5 }),
        };
        assert_eq!(Proposal::decode(&p.encode()), Ok(p));
        let c = ConfContext {
            origin: Origin { node: 1, incarnation: 1, seq: 1 },
            address: "127.0.0.1:7002".into(),
        };
        assert_eq!(ConfContext::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn unknown_formats_and_garbage_are_errors() {
        assert!(Proposal::decode(&[]).is_err());
        assert!(Proposal::decode(&[2, 0, 0]).is_err());
        assert!(Proposal::decode(&[FORMAT, 0xff, 0xff, 0xff]).is_err());
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Proposal::decode(&bytes);
            let _ = ConfContext::decode(&bytes);
        }
    }
}
