//! The fuzz targets on stable: each body over a seed corpus of valid encodings and their
//! mutations, then over random bytes, for a bounded time (PGRAFT_FUZZ_SECONDS, default 3
//! per target). The longer run: `cargo +nightly fuzz run TARGET` in crates/pgraft-core/fuzz.

use std::time::{Duration, Instant};

use pgraft_core::command::{Body, Origin, Proposal};
use pgraft_core::fuzzing::TARGETS;
use pgraft_core::kv::KvOp;
use pgraft_core::sim::Rng;
use pgraft_core::transport::{Ack, AckStatus, Challenge, Frame, Hello, Proof, PROTOCOL_VERSION};
use raft::prelude::{Message, MessageType};

fn corpus() -> Vec<Vec<u8>> {
    let msg = Message {
        msg_type: MessageType::MsgAppend as i32,
        to: 2,
        from: 1,
        term: 3,
        index: 9,
        ..Default::default()
    };
    let snap = pgraft_core::storage::snapshot_of(5, 2, &Default::default(), vec![7; 3000]);
    let snap_msg = Message {
        msg_type: MessageType::MsgSnapshot as i32,
        to: 2,
        from: 1,
        snapshot: Some(snap),
        ..Default::default()
    };
    let mut seeds = vec![
        Frame::Message(msg).encode(),
        Hello {
            version: PROTOCOL_VERSION,
            from: 1,
            to: 2,
            cluster_id: "c".into(),
            address: "127.0.0.1:7001".into(),
            nonce: None,
        }
        .encode(),
        Hello {
            version: PROTOCOL_VERSION,
            from: 1,
            to: 2,
            cluster_id: "c".into(),
            address: String::new(),
            nonce: Some([9; 16]),
        }
        .encode(),
        Challenge { nonce: [1; 16], mac: [2; 32] }.encode(),
        Proof { mac: [3; 32] }.encode(),
        Ack { version: PROTOCOL_VERSION, status: AckStatus::Accepted, node: 2 }.encode(),
        Proposal {
            origin: Origin { node: 1, incarnation: 2, seq: 3 },
            time_ms: 4,
            body: Body::Kv(KvOp::Put { key: "k".into(), value: b"v".to_vec(), time_ms: 5 }),
            low: 2,
        }
        .encode(),
        pgraft_core::state_machine::StateMachine::default().encode(),
    ];
    let chunks: Vec<u8> = Frame::split(snap_msg, 1024).iter().flat_map(|f| f.encode()).collect();
    seeds.push(chunks);
    // Frame bodies without their length prefix, too.
    let bodies: Vec<Vec<u8>> = seeds.iter().filter(|s| s.len() > 4).map(|s| s[4..].to_vec()).collect();
    seeds.extend(bodies);
    seeds
}

#[test]
fn decoders_survive_mutated_and_random_input() {
    let budget = Duration::from_secs(
        std::env::var("PGRAFT_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3),
    );
    let seeds = corpus();
    for (name, body) in TARGETS {
        let mut rng = Rng::new(name.len() as u64 * 7919);
        let start = Instant::now();
        let mut runs = 0u64;
        while start.elapsed() < budget {
            let mut input = if rng.chance(0.7) {
                seeds[rng.below(seeds.len() as u64) as usize].clone()
            } else {
                (0..rng.below(512)).map(|_| rng.next_u64() as u8).collect()
            };
            // Mutate: flip bytes, truncate, splice.
            for _ in 0..rng.below(6) {
                if input.is_empty() {
                    break;
                }
                let i = rng.below(input.len() as u64) as usize;
                match rng.below(3) {
                    0 => input[i] ^= 1 << rng.below(8),
                    1 => input.truncate(i),
                    _ => input.insert(i, rng.next_u64() as u8),
                }
            }
            body(&input);
            runs += 1;
        }
        println!("fuzz target {name}: {runs} inputs in {:?}", start.elapsed());
        assert!(runs > 100, "target {name} ran only {runs} inputs");
    }
}
