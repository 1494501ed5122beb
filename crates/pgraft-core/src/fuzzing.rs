//! The bodies of the fuzz targets: every decoder that reads bytes from the network or the
//! disk. Each must return an error for bad input and never panic, loop or allocate without
//! bound.
//!
//! `cargo +nightly fuzz run <target>` in `crates/pgraft-core/fuzz` runs them under
//! libFuzzer; `tests/t50_fuzz.rs` runs them on stable over a seed corpus and random
//! inputs for a bounded time in the test command.

use crate::command::{ConfContext, Proposal};
use crate::state_machine::StateMachine;
use crate::transport::{Ack, Frame, Hello, Reassembly};

/// A peer's frame body (after the length prefix).
pub fn frame(data: &[u8]) {
    let _ = Frame::decode(data);
}

/// A handshake: hello, challenge, proof and answer.
pub fn handshake(data: &[u8]) {
    let _ = Hello::decode(data);
    let _ = Ack::decode(data);
    let _ = crate::transport::Challenge::decode(data);
    let _ = crate::transport::Proof::decode(data);
}

/// A stream of length-prefixed frames fed to snapshot reassembly, as a connection would
/// deliver them (small caps, so the limits are exercised).
pub fn snapshot_chunks(data: &[u8]) {
    let mut r = Reassembly::default();
    let mut rest = data;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > 1 << 16 || rest.len() < 4 + len {
            break; // read_frame refuses these before allocating
        }
        let body = &rest[4..4 + len];
        rest = &rest[4 + len..];
        match Frame::decode(body) {
            Ok(f) => {
                if r.feed(f, 1 << 20).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
}

/// Records as stored on disk, and entry payloads as stored in the log.
pub fn stored_records(data: &[u8]) {
    use raft::prelude::{ConfState, Entry, HardState, Snapshot};
    let _ = crate::storage::redb_store::decode::<Entry>("fuzz", data);
    let _ = crate::storage::redb_store::decode::<HardState>("fuzz", data);
    let _ = crate::storage::redb_store::decode::<ConfState>("fuzz", data);
    let _ = crate::storage::redb_store::decode::<Snapshot>("fuzz", data);
    let _ = Proposal::decode(data);
    let _ = ConfContext::decode(data);
    let _ = StateMachine::decode(data);
    // The same bytes behind a valid checksum, so the decoders behind it are reached.
    let sealed = crate::storage::redb_store::seal(data);
    let _ = crate::storage::redb_store::decode::<Entry>("fuzz", &sealed);
    let _ = crate::storage::redb_store::decode::<Snapshot>("fuzz", &sealed);
    // The log's segments: raw bytes behind a valid header, and a record of the kind the
    // first byte names around the rest, its checksums right.
    use crate::storage::log_segment::{header, raw_record, scan};
    let mut segment = header(1);
    segment.extend_from_slice(data);
    let _ = scan("fuzz", 1, &segment);
    if let Some((kind, payload)) = data.split_first() {
        let mut segment = header(1);
        segment.extend_from_slice(&raw_record(kind % 4, payload));
        let _ = scan("fuzz", 1, &segment);
    }
}

/// Raft messages from an authenticated peer, forged from `data`, stepped into the members
/// of a live three-member cluster (node 1 leads, entries committed), which then go on
/// talking to each other. Every field is drawn near the target's own state (its term, its
/// last index, the terms in its log) or anywhere, so both plausible and absurd messages
/// reach raft-rs: none may panic, whatever a peer sends.
pub fn peer_messages(data: &[u8]) {
    use crate::member::hand_net::HandNet;
    use crate::request::Request;
    let mut net = HandNet::three();
    net.elect_one();
    for i in 0..3u64 {
        net.member(1).submit(i, Request::Propose(crate::command::Body::Raw(vec![i as u8; 8])));
    }
    net.pump(|_| false);
    let mut input = Forge { data, at: 0 };
    let mut steps = 0;
    while input.more() && steps < 64 {
        steps += 1;
        let target = 1 + input.below(3);
        let m = input.message(net.member(target));
        let _ = net.member(target).step(m);
        if input.below(4) == 0 {
            net.tick_all();
        }
        net.pump_rounds(32, |_| false);
    }
}

/// Reads the fields of forged messages from fuzz input.
struct Forge<'a> {
    data: &'a [u8],
    at: usize,
}

impl Forge<'_> {
    fn more(&self) -> bool {
        self.at < self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn below(&mut self, n: u64) -> u64 {
        u64::from(self.byte()) % n.max(1)
    }

    fn any_u64(&mut self) -> u64 {
        (0..8).fold(0, |v, _| v << 8 | u64::from(self.byte()))
    }

    /// A value near `around` (within 3), or anywhere one time in eight.
    fn near(&mut self, around: u64) -> u64 {
        match self.below(8) {
            0 => self.any_u64(),
            d => around.saturating_add(d).saturating_sub(4),
        }
    }

    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.byte()).collect()
    }

    fn message(&mut self, to: &crate::Member<crate::storage::MemStore>) -> raft::prelude::Message {
        use raft::prelude::{ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata};
        use raft::Storage as _;
        let (term, last) = (to.term(), to.store().last_index().unwrap_or(0));
        let members = [1, 2, 3, 4, 0];
        let kind = MessageType::from_i32(self.below(19) as i32).unwrap_or(MessageType::MsgAppend);
        let mut m = Message {
            msg_type: kind as i32,
            to: if self.below(8) == 0 { members[self.below(5) as usize] } else { to.id() },
            from: members[self.below(5) as usize],
            term: self.near(term),
            index: self.near(last),
            commit: self.near(last),
            reject: self.below(2) == 0,
            reject_hint: self.near(last),
            request_snapshot: if self.below(4) == 0 { self.near(last) } else { 0 },
            priority: self.below(3) as i64,
            ..Default::default()
        };
        m.log_term = match to.store().term(m.index) {
            Ok(t) if self.below(4) != 0 => t,
            _ => self.near(term),
        };
        m.commit_term = self.near(term);
        m.context = self.bytes(8);
        let mut index = if self.below(4) == 0 { self.near(m.index) } else { m.index + 1 };
        for _ in 0..self.below(4) {
            let kind = if self.below(6) == 0 { EntryType::EntryConfChangeV2 } else { EntryType::EntryNormal };
            m.entries.push(Entry {
                entry_type: kind as i32,
                term: self.near(m.term),
                index,
                data: self.bytes(24),
                ..Default::default()
            });
            index = if self.below(6) == 0 { self.near(index) } else { index + 1 };
        }
        if kind == MessageType::MsgSnapshot || self.below(16) == 0 {
            let voters: Vec<u64> = (1..=4).filter(|_| self.below(3) != 0).collect();
            let data = if self.below(2) == 0 {
                crate::state_machine::StateMachine::default().encode()
            } else {
                self.bytes(32)
            };
            m.snapshot = Some(Snapshot {
                data,
                metadata: Some(SnapshotMetadata {
                    conf_state: Some(ConfState::from((voters, vec![]))),
                    index: self.near(last),
                    term: self.near(term),
                }),
            });
        }
        m
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for runners.
pub const TARGETS: [(&str, Target); 5] = [
    ("frame", frame),
    ("handshake", handshake),
    ("snapshot_chunks", snapshot_chunks),
    ("stored_records", stored_records),
    ("peer_messages", peer_messages),
];
