//! The on-disk format of the Raft log: append-only segment files of checksummed records.
//!
//! ```text
//! raftlog/<sequence, 16 hex digits>.seg
//! segment = header record*
//! header  = "PGRAFTLG" | format version u32 LE (1) | sequence u64 LE               (20 bytes)
//! record  = length u32 LE | kind u8 | crc32(length, kind) u32 LE | crc32(payload) u32 LE
//!           | payload (length bytes)                                                (13 + length)
//!
//! kind 1  state     hard state | conf state | compacted index u64 LE | its term u64 LE
//!                   | clear u8 | snapshot | identity                   (each part: len u32 LE | bytes)
//!                   the member's whole durable state but the entries: clear 1 says the log
//!                   was replaced (a leader's snapshot), else entries up to the index are gone
//! kind 2  entries   has hard state u8 | hard state (len u32 LE | bytes) | (len u32 LE | Entry)*
//!                   a Ready's write: its hard state, then entries, the first of which
//!                   replaces that index and every later one (a new leader's overwrite)
//! hard state, conf state, snapshot (its metadata: the image is snap/<index>-<term>.snap) and
//! entries are raft's protobuf messages; the identity is JSON, empty for none.
//! ```
//!
//! Every write of the store is exactly one record, synced once, so a crash can tear only
//! the last record of the newest segment. A record that is cut short or fails a checksum
//! with no valid record after it is such a write (never synced, so never acknowledged):
//! the file is cut there. One with a valid record after it is damage, and the store
//! refuses to open rather than drop what follows. A segment opens with a state record,
//! so segments whose entries are all compacted are deleted, oldest first, and replay
//! starts at the oldest left.

use prost::Message as _;
use raft::prelude::{ConfState, Entry, HardState, SnapshotMetadata};

use super::{Result, StorageError};

/// The first bytes of every segment.
pub(crate) const MAGIC: &[u8; 8] = b"PGRAFTLG";
/// The format version this build writes and reads.
pub(crate) const VERSION: u32 = 1;
/// Bytes of a segment's header.
pub(crate) const HEADER: usize = 8 + 4 + 8;
/// Bytes of a record before its payload.
pub(crate) const RECORD_HEAD: usize = 4 + 1 + 4 + 4;
/// The largest record a reader accepts (an entry is at most 1 GiB, as a request is).
pub(crate) const MAX_RECORD: usize = (1 << 30) + (1 << 20);

/// The member's durable state but its entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct State {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// Index and term of the last compacted entry.
    pub trunc: (u64, u64),
    /// The log was replaced by a snapshot: no entry before this record is live.
    pub clear: bool,
    /// The current snapshot (index 0: none).
    pub snapshot: SnapshotMetadata,
    /// The identity as JSON (empty: none recorded).
    pub identity: Vec<u8>,
}

/// One record of a segment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    State(Box<State>),
    Entries { hard_state: Option<HardState>, entries: Vec<Entry> },
}

fn put_part(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a payload's parts in order.
struct Parts<'a> {
    payload: &'a [u8],
    at: usize,
}

impl<'a> Parts<'a> {
    fn bytes(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let b = self.payload.get(self.at..self.at + n).ok_or_else(|| format!("{what} is cut short"))?;
        self.at += n;
        Ok(b)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(8, what)?.try_into().unwrap_or([0; 8])))
    }

    fn part(&mut self, what: &str) -> std::result::Result<&'a [u8], String> {
        let n = u32::from_le_bytes(self.bytes(4, what)?.try_into().unwrap_or([0; 4])) as usize;
        self.bytes(n, what)
    }

    fn done(&self) -> bool {
        self.at == self.payload.len()
    }
}

impl Record {
    fn kind(&self) -> u8 {
        match self {
            Record::State(_) => 1,
            Record::Entries { .. } => 2,
        }
    }

    /// Appends the record to `out`; for an entries record, returns where each entry's
    /// encoding starts relative to `out`'s start, and its length.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Vec<(u64, u32)> {
        let start = out.len();
        out.extend_from_slice(&[0; RECORD_HEAD]);
        let mut spans = Vec::new();
        match self {
            Record::State(s) => {
                put_part(out, &s.hard_state.encode_to_vec());
                put_part(out, &s.conf_state.encode_to_vec());
                out.extend_from_slice(&s.trunc.0.to_le_bytes());
                out.extend_from_slice(&s.trunc.1.to_le_bytes());
                out.push(u8::from(s.clear));
                put_part(out, &s.snapshot.encode_to_vec());
                put_part(out, &s.identity);
            }
            Record::Entries { hard_state, entries } => {
                out.push(u8::from(hard_state.is_some()));
                put_part(out, &hard_state.as_ref().map(|h| h.encode_to_vec()).unwrap_or_default());
                for e in entries {
                    let len = e.encoded_len();
                    out.extend_from_slice(&(len as u32).to_le_bytes());
                    spans.push(((out.len() - start) as u64, len as u32));
                    e.encode(out).unwrap_or_default();
                }
            }
        }
        let len = (out.len() - start - RECORD_HEAD) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4] = self.kind();
        let head_crc = crc32fast::hash(&out[start..start + 5]);
        let body_crc = crc32fast::hash(&out[start + RECORD_HEAD..]);
        out[start + 5..start + 9].copy_from_slice(&head_crc.to_le_bytes());
        out[start + 9..start + 13].copy_from_slice(&body_crc.to_le_bytes());
        spans
    }

    /// Decodes a record's payload (its checksums already checked). Entries come with
    /// where each one's encoding starts within the payload.
    fn decode(kind: u8, payload: &[u8]) -> std::result::Result<(Record, Vec<(u64, u32)>), String> {
        let mut p = Parts { payload, at: 0 };
        match kind {
            1 => {
                let hard_state = HardState::decode(p.part("the hard state")?).map_err(|e| e.to_string())?;
                let conf_state = ConfState::decode(p.part("the conf state")?).map_err(|e| e.to_string())?;
                let trunc = (p.u64("the compacted index")?, p.u64("the compacted term")?);
                let clear = match p.bytes(1, "the clear flag")?[0] {
                    0 => false,
                    1 => true,
                    b => return Err(format!("a clear flag of {b}")),
                };
                let snapshot =
                    SnapshotMetadata::decode(p.part("the snapshot")?).map_err(|e| e.to_string())?;
                let identity = p.part("the identity")?.to_vec();
                if !p.done() {
                    return Err("bytes after the state".into());
                }
                let s = State { hard_state, conf_state, trunc, clear, snapshot, identity };
                Ok((Record::State(Box::new(s)), Vec::new()))
            }
            2 => {
                let has = p.bytes(1, "the hard state flag")?[0];
                let hs = p.part("the hard state")?;
                let hard_state = match has {
                    0 => None,
                    1 => Some(HardState::decode(hs).map_err(|e| e.to_string())?),
                    b => return Err(format!("a hard state flag of {b}")),
                };
                let mut entries = Vec::new();
                let mut spans = Vec::new();
                while !p.done() {
                    let body = p.part("an entry")?;
                    spans.push(((p.at - body.len()) as u64, body.len() as u32));
                    entries.push(Entry::decode(body).map_err(|e| e.to_string())?);
                }
                if entries.windows(2).any(|w| w[1].index != w[0].index + 1) {
                    return Err("the entries of a record do not follow each other".into());
                }
                Ok((Record::Entries { hard_state, entries }, spans))
            }
            k => Err(format!("unknown record kind {k} (written by a newer pgraft?)")),
        }
    }
}

/// A record of any kind around any payload, its checksums right: what a reader must
/// judge by its content (the fuzz target's way past the checksums).
pub(crate) fn raw_record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.push(kind);
    let head_crc = crc32fast::hash(&out);
    out.extend_from_slice(&head_crc.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A segment's header.
pub(crate) fn header(sequence: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&sequence.to_le_bytes());
    h
}

/// A record read back, with its place in the file.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub record: Record,
    /// For entries: where each entry's encoding starts in the file, and its length.
    pub spans: Vec<(u64, u32)>,
}

/// What a scan of one segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    pub records: Vec<Scanned>,
    /// Where the valid records end.
    pub end: u64,
    /// What ended the scan early: a torn last write, acceptable only in the newest
    /// segment.
    pub torn: Option<String>,
}

/// The length and kind of a record whose head is intact at `at`, if its payload lies
/// within `bytes` and matches its checksum.
fn valid_at(bytes: &[u8], at: usize) -> std::result::Result<(usize, u8), String> {
    let head = bytes.get(at..at + RECORD_HEAD).ok_or("a record head cut short")?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let head_crc = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
    let body_crc = u32::from_le_bytes([head[9], head[10], head[11], head[12]]);
    if crc32fast::hash(&head[..5]) != head_crc {
        return Err("a record head that fails its checksum".into());
    }
    if len > MAX_RECORD {
        return Err(format!("a record of {len} bytes"));
    }
    let body = bytes
        .get(at + RECORD_HEAD..at + RECORD_HEAD + len)
        .ok_or(format!("a record of {len} bytes cut short"))?;
    if crc32fast::hash(body) != body_crc {
        return Err("a record that fails its checksum".into());
    }
    Ok((len, head[4]))
}

/// Reads every record of a segment's bytes. `what` names the file in errors.
pub(crate) fn scan(what: &str, sequence: u64, bytes: &[u8]) -> Result<Scan> {
    let corrupt = |m: String| StorageError::Corrupt(format!("{what}: {m}"));
    if bytes.len() < HEADER {
        // A segment is created with its header and first record in one synced write
        // before it is used: a shorter file is one whose creation a crash interrupted.
        return Ok(Scan {
            records: Vec::new(),
            end: 0,
            torn: Some(format!("a header of {} bytes", bytes.len())),
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("not a pgraft log segment (bad magic)".into()));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(corrupt(format!(
            "log format version {version}, this build reads version {VERSION} (a newer pgraft wrote it?)"
        )));
    }
    let seq = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or([0; 8]));
    if seq != sequence {
        return Err(corrupt(format!("the header says segment {seq}")));
    }
    let mut at = HEADER;
    let mut records = Vec::new();
    while at < bytes.len() {
        let (len, kind) = match valid_at(bytes, at) {
            Ok(found) => found,
            Err(why) => {
                // Torn only if nothing valid follows: a write is one record.
                if let Some(next) = (at + 1..bytes.len()).find(|&o| valid_at(bytes, o).is_ok()) {
                    return Err(corrupt(format!(
                        "{why} at offset {at}, with a valid record after it at offset {next}"
                    )));
                }
                return Ok(Scan { records, end: at as u64, torn: Some(format!("{why} at offset {at}")) });
            }
        };
        let payload_at = (at + RECORD_HEAD) as u64;
        let (record, spans) = Record::decode(kind, &bytes[at + RECORD_HEAD..at + RECORD_HEAD + len])
            .map_err(|e| corrupt(format!("the record at offset {at}: {e}")))?;
        let spans = spans.into_iter().map(|(off, len)| (payload_at + off, len)).collect();
        records.push(Scanned { record, spans });
        at += RECORD_HEAD + len;
    }
    Ok(Scan { records, end: at as u64, torn: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> Entry {
        Entry { index, term: 2, data: vec![index as u8; 40], ..Default::default() }
    }

    fn state() -> State {
        State {
            hard_state: HardState { term: 2, vote: 1, commit: 3 },
            conf_state: ConfState { voters: vec![1, 2, 3], ..Default::default() },
            trunc: (3, 1),
            clear: true,
            snapshot: SnapshotMetadata { index: 3, term: 1, ..Default::default() },
            identity: b"{}".to_vec(),
        }
    }

    fn segment(records: &[Record]) -> Vec<u8> {
        let mut b = header(7);
        for r in records {
            r.encode_into(&mut b);
        }
        b
    }

    #[test]
    fn records_round_trip_with_entry_positions() {
        let records = vec![
            Record::State(Box::new(state())),
            Record::Entries {
                hard_state: Some(HardState { term: 2, vote: 1, commit: 4 }),
                entries: (4..=6).map(entry).collect(),
            },
            Record::Entries { hard_state: None, entries: vec![entry(7)] },
            Record::Entries { hard_state: Some(HardState::default()), entries: vec![] },
        ];
        let bytes = segment(&records);
        let scan = scan("test", 7, &bytes).expect("scan");
        assert!(scan.torn.is_none());
        assert_eq!(scan.end, bytes.len() as u64);
        let back: Vec<Record> = scan.records.iter().map(|s| s.record.clone()).collect();
        assert_eq!(back, records);
        for (span, want) in scan.records[1].spans.iter().zip(4..=6) {
            let body = &bytes[span.0 as usize..span.0 as usize + span.1 as usize];
            assert_eq!(Entry::decode(body).expect("entry"), entry(want));
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_before_valid_records_refused() {
        let records = vec![
            Record::State(Box::new(state())),
            Record::Entries { hard_state: None, entries: (1..=3).map(entry).collect() },
            Record::Entries { hard_state: None, entries: (4..=5).map(entry).collect() },
        ];
        let bytes = segment(&records);
        let second_end = segment(&records[..2]).len();
        // Cut anywhere inside the last record: the others survive, the tail is torn.
        for cut in second_end + 1..bytes.len() {
            let scan = scan("test", 7, &bytes[..cut]).expect("a torn tail is no error");
            assert_eq!(scan.records.len(), 2, "cut at {cut}");
            assert_eq!(scan.end, second_end as u64);
            assert!(scan.torn.is_some());
        }
        // The last record zeroed from some point (a write that reached the disk in part).
        let mut zeroed = bytes.clone();
        zeroed[second_end + 20..].fill(0);
        assert_eq!(scan("test", 7, &zeroed).expect("torn").records.len(), 2);
        // A flipped bit anywhere before the last record, the length field too: refused.
        for at in [HEADER + 1, HEADER + 6, HEADER + 15, second_end - 3, second_end - 40] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            let e = scan("test", 7, &damaged).expect_err("damage is refused");
            assert!(e.to_string().contains("with a valid record after it"), "{at}: {e}");
        }
        // Another segment's file, an unknown version, an unknown kind: refused.
        assert!(matches!(scan("test", 8, &bytes), Err(StorageError::Corrupt(_))));
        let mut newer = bytes.clone();
        newer[8] = 2;
        let e = scan("test", 7, &newer).expect_err("a newer format");
        assert!(e.to_string().contains("version 2"), "{e}");
        let mut unknown = header(7);
        unknown.extend_from_slice(&raw_record(42, b"from the future"));
        let e = scan("test", 7, &unknown).expect_err("an unknown kind");
        assert!(e.to_string().contains("unknown record kind 42"), "{e}");
    }
}
