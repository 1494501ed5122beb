//! What travels in a Raft entry: a proposal and its origin.
//!
//! ```text
//! entry.data    = PROPOSAL_FORMAT (1 byte, 2) ++ postcard(Proposal)
//!                 (format 1, still read: the same without `low`)
//! entry.context = empty for normal entries; for a membership change:
//!                 FORMAT (1 byte, 1) ++ postcard(ConfContext)
//! ```
//!
//! The origin (member id, incarnation, sequence) lets the member that proposed an entry
//! find the client waiting for it when the entry is applied, even when the proposal was
//! forwarded to the leader; the incarnation keeps a restarted member from mistaking an old
//! entry for a new request. With `low` it also lets the state machine apply a proposal
//! sent twice only once (see [`crate::sessions`]).

use serde::{Deserialize, Serialize};

use crate::kv::KvOp;

/// The encoding version of membership change contexts.
pub const FORMAT: u8 = 1;

/// The encoding version of proposals (2 added `low`). A release that adds a kind of
/// entry (a `Body` or `HaCommand` variant) raises it, so that a member of an older build
/// tells an entry it cannot read yet from a damaged one (see `member/apply_block.rs`).
pub const PROPOSAL_FORMAT: u8 = 2;

/// The format a member that has not announced the formats it reads is taken to read:
/// that of the last release before members announced (see `member/cluster_format.rs`).
pub const FORMAT_UNANNOUNCED: u8 = 2;

/// The cluster setting under which member `id` announces the newest proposal format it
/// reads (a `SetConfig` entry: every release applies one).
pub fn format_setting(id: u64) -> String {
    format!("reads_format.{id}")
}

/// Whether entry data says it was written in a format newer than this build's.
pub fn is_newer_proposal_format(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|v| *v > PROPOSAL_FORMAT)
}

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
    /// A change to the replicated HA state (failover).
    Ha(crate::ha::HaCommand),
}

impl Body {
    /// The proposal format an entry of this kind is written in: the format that added the
    /// kind, at least 2 (format 2's proposal carries `low`). A release that adds a kind
    /// raises [`PROPOSAL_FORMAT`] and returns it here for that kind only: the other kinds
    /// stay readable by the release before, and the new one is proposed once every member
    /// reads it (`member/cluster_format.rs`).
    pub fn format(&self) -> u8 {
        match self {
            Body::Kv(_) | Body::Raw(_) | Body::SetConfig { .. } | Body::Probe | Body::Ha(_) => 2,
        }
    }

    /// The entry's operation name, as shown in `pgraft.log_index_mapping`.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Kv(op) => op.name(),
            Body::Raw(_) => "replicate_entry",
            Body::SetConfig { .. } => "set_config",
            Body::Probe => "probe",
            Body::Ha(cmd) => cmd.name(),
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
    /// The lowest sequence number its proposer still waited for when proposing it: every
    /// lower one of the same incarnation is settled and never applied again.
    pub low: u64,
}

/// A proposal of format 1, before `low` existed (read from older logs).
#[derive(Deserialize)]
struct ProposalV1 {
    origin: Origin,
    time_ms: i64,
    body: Body,
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
        let mut out = vec![self.body.format()];
        out.extend(postcard::to_stdvec(self).expect("postcard serialises plain data into a Vec"));
        out
    }

    /// Reads entry data of either format.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.split_first() {
            Some((2..=PROPOSAL_FORMAT, rest)) => {
                postcard::from_bytes(rest).map_err(|e| DecodeError(e.to_string()))
            }
            Some((1, rest)) => {
                let v1: ProposalV1 = postcard::from_bytes(rest).map_err(|e| DecodeError(e.to_string()))?;
                // No watermark: nothing of this proposer's is known to be settled.
                Ok(Proposal { origin: v1.origin, time_ms: v1.time_ms, body: v1.body, low: 0 })
            }
            Some((v, _)) => Err(DecodeError(format!("unknown payload format {v}"))),
            None => Err(DecodeError("empty payload".into())),
        }
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
            low: 3,
        };
        assert_eq!(Proposal::decode(&p.encode()), Ok(p.clone()));
        // Format 1 (no watermark) is still read.
        let mut v1 = vec![1u8];
        v1.extend(postcard::to_stdvec(&(p.origin, p.time_ms, p.body.clone())).expect("encodes"));
        assert_eq!(Proposal::decode(&v1), Ok(Proposal { low: 0, ..p }));
        let c = ConfContext {
            origin: Origin { node: 1, incarnation: 1, seq: 1 },
            address: "127.0.0.1:7002".into(),
        };
        assert_eq!(ConfContext::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn unknown_formats_and_garbage_are_errors() {
        assert!(Proposal::decode(&[]).is_err());
        assert!(Proposal::decode(&[3, 0, 0]).is_err());
        assert!(Proposal::decode(&[PROPOSAL_FORMAT, 0xff, 0xff, 0xff]).is_err());
        assert!(ConfContext::decode(&[2, 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Proposal::decode(&bytes);
            let _ = ConfContext::decode(&bytes);
        }
    }
}
