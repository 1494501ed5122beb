//! WAL segments: which file holds a position, and the names PostgreSQL gives them.

use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// A timeline id: which history of the WAL a segment belongs to.
pub type TimeLineId = u32;

/// A WAL segment size (`wal_segment_size`, fixed at initdb): a power of two from 1 MiB to
/// 1 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSize(u64);

impl SegmentSize {
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: SegmentSize = SegmentSize(16 * 1024 * 1024);

    /// Validates a segment size in bytes.
    pub fn new(bytes: u64) -> Result<Self> {
        if bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes) {
            Ok(Self(bytes))
        } else {
            Err(Error::InvalidSegmentSize(bytes))
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per 4 GiB "xlogid", the middle part of a segment file name.
    fn per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.0
    }

    /// The number of the segment holding `lsn`.
    pub fn segment_of(self, lsn: Lsn) -> u64 {
        lsn.0 / self.0
    }

    /// The offset of `lsn` within its segment.
    pub fn offset_in_segment(self, lsn: Lsn) -> u64 {
        lsn.0 % self.0
    }

    /// The first position of segment `segno`.
    pub fn segment_start(self, segno: u64) -> Result<Lsn> {
        segno
            .checked_mul(self.0)
            .map(Lsn)
            .ok_or_else(|| Error::LsnOverflow(format!("segment {segno} of {} bytes", self.0)))
    }

    /// The first position of the segment holding `lsn` (where a receiver restarts).
    pub fn align_down(self, lsn: Lsn) -> Lsn {
        Lsn(lsn.0 - lsn.0 % self.0)
    }

    /// The file name of the segment holding `lsn` on timeline `tli` (PostgreSQL's
    /// XLogFileName): 8 hex digits each of timeline, xlogid and segment within it.
    pub fn file_name(self, tli: TimeLineId, lsn: Lsn) -> String {
        self.segment_file_name(tli, self.segment_of(lsn))
    }

    /// The file name of segment number `segno` on timeline `tli`.
    pub fn segment_file_name(self, tli: TimeLineId, segno: u64) -> String {
        format!("{:08X}{:08X}{:08X}", tli, segno / self.per_xlogid(), segno % self.per_xlogid())
    }

    /// Parses a segment file name (24 upper- or lower-case hex digits) into timeline and
    /// segment number.
    pub fn parse_file_name(self, name: &str) -> Result<(TimeLineId, u64)> {
        let bad = |reason| Error::InvalidSegmentName { input: name.to_string(), reason };
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not 24 hex digits"));
        }
        let part =
            |r: std::ops::Range<usize>| u32::from_str_radix(&name[r], 16).map_err(|_| bad("not hexadecimal"));
        let (tli, xlogid, seg) = (part(0..8)?, part(8..16)?, part(16..24)?);
        if u64::from(seg) >= self.per_xlogid() {
            return Err(bad("segment part too large for this segment size"));
        }
        Ok((tli, u64::from(xlogid) * self.per_xlogid() + u64::from(seg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert!(SegmentSize::new(16 << 20).is_ok());
        assert!(SegmentSize::new(1 << 20).is_ok());
        assert!(SegmentSize::new(1 << 30).is_ok());
        assert!(SegmentSize::new(1 << 19).is_err());
        assert!(SegmentSize::new(2 << 30).is_err());
        assert!(SegmentSize::new(3 << 20).is_err());
        assert!(SegmentSize::new(0).is_err());
    }

    #[test]
    fn file_names_match_postgresql() {
        // pg_walfile_name('16/B374D848') on timeline 1 with 16 MiB segments.
        let s = SegmentSize::DEFAULT;
        let lsn: Lsn = "16/B374D848".parse().expect("valid");
        assert_eq!(s.file_name(1, lsn), "0000000100000016000000B3");
        assert_eq!(s.offset_in_segment(lsn), 0x74D848);
        assert_eq!(s.align_down(lsn), "16/B3000000".parse().expect("valid"));
        assert_eq!(s.file_name(2, Lsn(0)), "000000020000000000000000");
        // 1 GiB segments: four per xlogid.
        let g = SegmentSize::new(1 << 30).expect("valid");
        assert_eq!(g.file_name(1, "1/C0000000".parse().expect("valid")), "000000010000000100000003");
    }

    #[test]
    fn names_round_trip() {
        let s = SegmentSize::DEFAULT;
        for segno in [0u64, 1, 255, 256, 0x16B3, (1 << 40) - 1] {
            let name = s.segment_file_name(7, segno);
            assert_eq!(s.parse_file_name(&name).ok(), Some((7, segno)));
            assert_eq!(s.segment_of(s.segment_start(segno).expect("in range")), segno);
        }
        assert!(s.parse_file_name("00000001000000000000010").is_err());
        assert!(s.parse_file_name("000000010000000000000100").is_err(), "segment part 0x100 >= 256");
        assert!(s.parse_file_name("00000001000000000000000G").is_err());
    }
}
