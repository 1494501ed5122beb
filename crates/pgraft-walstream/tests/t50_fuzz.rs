//! The fuzz targets on a stable compiler: each body over a corpus of valid encodings,
//! their random mutations, and plain random bytes (proptest, so a failure shrinks and
//! prints a reproducible case). The long run: `cargo +nightly fuzz run backend_stream` in
//! crates/pgraft-walstream/fuzz.

use bytes::{BufMut, Bytes, BytesMut};
use pgraft_walstream::fuzzing::{self, TARGETS};
use pgraft_walstream::{
    Lsn, PgTimestamp, PrimaryKeepalive, StandbyMessage, StandbyStatusUpdate, WalMessage, XLogData,
};
use proptest::prelude::*;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_u32(body.len() as u32 + 4);
    b.put_slice(body);
    b.to_vec()
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Valid server messages of every kind the client reads.
fn corpus() -> Vec<Vec<u8>> {
    let xlog = WalMessage::XLogData(XLogData {
        wal_start: Lsn(0x100_0000),
        wal_end: Lsn(0x100_2000),
        server_time: PgTimestamp(12345),
        data: Bytes::from_static(b"\x10\xd1\x02\x00\x01\x00\x00\x00record bytes"),
    })
    .encode();
    let keepalive = WalMessage::PrimaryKeepalive(PrimaryKeepalive {
        wal_end: Lsn(77),
        server_time: PgTimestamp(-5),
        reply_requested: true,
    })
    .encode();
    let status = StandbyMessage::Status(StandbyStatusUpdate {
        written: Lsn(1),
        flushed: Lsn(2),
        applied: Lsn(3),
        client_time: PgTimestamp(4),
        reply_requested: false,
    })
    .encode();
    // RowDescription with one text column "xlogpos", a DataRow, CommandComplete, RFQ.
    let mut rowdesc = vec![0, 1];
    rowdesc.extend(cstr("xlogpos"));
    rowdesc.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]);
    let mut datarow = vec![0, 1, 0, 0, 0, 9];
    datarow.extend(b"0/1000000");
    let mut error = b"SERROR\0C42704\0Mreplication slot \"x\" does not exist\0".to_vec();
    error.push(0);
    let mut sasl = vec![0, 0, 0, 10];
    sasl.extend(cstr("SCRAM-SHA-256"));
    sasl.push(0);
    let stream: Vec<u8> = [
        frame(b'R', &sasl),
        frame(b'S', &[cstr("server_version"), cstr("17.2")].concat()),
        frame(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]),
        frame(b'Z', b"I"),
        frame(b'T', &rowdesc),
        frame(b'D', &datarow),
        frame(b'C', &cstr("IDENTIFY_SYSTEM")),
        frame(b'W', &[0, 0, 0]),
        frame(b'd', &xlog),
        frame(b'd', &keepalive),
        frame(b'c', &[]),
        frame(b'E', &error),
    ]
    .concat();
    vec![
        stream,
        xlog.to_vec(),
        keepalive.to_vec(),
        status.to_vec(),
        b"1\t0/3000160\tno recovery target specified\n2\t0/5000000\tbefore 2000-01-01\n".to_vec(),
    ]
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus();
    let n = seeds.len();
    (0..n, prop::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 0..8)).prop_map(move |(i, edits)| {
        let mut input = seeds[i].clone();
        for (pos, byte, kind) in edits {
            if input.is_empty() {
                break;
            }
            let at = pos as usize % input.len();
            match kind {
                0 => input[at] ^= byte | 1,
                1 => input.truncate(at),
                _ => input.insert(at, byte),
            }
        }
        input
    })
}

#[test]
fn the_corpus_decodes() {
    // The seeds themselves are valid: the targets see real messages, not only noise.
    let seeds = corpus();
    for s in &seeds[1..4] {
        let b = Bytes::copy_from_slice(s);
        assert!(WalMessage::decode(&b).is_ok() || StandbyMessage::decode(s).is_ok());
    }
    for (_, body) in TARGETS {
        for s in &seeds {
            body(s);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn targets_survive_mutated_messages(input in mutated()) {
        for (_, body) in TARGETS {
            body(&input);
        }
    }

    #[test]
    fn targets_survive_random_bytes(input in prop::collection::vec(any::<u8>(), 0..1024)) {
        for (_, body) in TARGETS {
            body(&input);
        }
    }

    #[test]
    fn backend_stream_survives_random_frames(
        frames in prop::collection::vec((prop::sample::select(b"RSKZTDCWdcEINHvG".to_vec()), prop::collection::vec(any::<u8>(), 0..64)), 0..12)
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(|(t, b)| frame(*t, b)).collect();
        fuzzing::backend_stream(&stream);
    }
}
