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

/// A handshake: hello and answer.
pub fn handshake(data: &[u8]) {
    let _ = Hello::decode(data);
    let _ = Ack::decode(data);
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
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for runners.
pub const TARGETS: [(&str, Target); 4] = [
    ("frame", frame),
    ("handshake", handshake),
    ("snapshot_chunks", snapshot_chunks),
    ("stored_records", stored_records),
];
