//! Timeline history files: how a server's timelines branched.
//!
//! A file `0000000N.history` holds one line per ancestor of timeline N:
//! `parent_tli <TAB> switchpoint <TAB> reason`, where the switch point is the first
//! position that belongs to the child. Comment lines start with `#`.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::segment::TimeLineId;

/// The answer to `TIMELINE_HISTORY`: the file as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    /// The timeline this is the history of.
    pub timeline: TimeLineId,
    /// The file name, `0000000N.history`.
    pub file_name: String,
    /// The file's bytes, exactly.
    pub content: Bytes,
}

/// One line of a history file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// An ancestor timeline.
    pub parent: TimeLineId,
    /// Where it ended: the first position of the next timeline.
    pub switchpoint: Lsn,
    /// Why (free text), possibly empty.
    pub reason: String,
}

impl TimelineHistory {
    /// The name PostgreSQL gives the history file of `tli`.
    pub fn file_name_of(tli: TimeLineId) -> String {
        format!("{tli:08X}.history")
    }

    /// Parses the file's lines, as PostgreSQL's `readTimeLineHistory` does.
    pub fn entries(&self) -> Result<Vec<HistoryEntry>> {
        let text = std::str::from_utf8(&self.content)
            .map_err(|_| Error::Decode { what: "timeline history", reason: "not UTF-8".into() })?;
        let mut out: Vec<HistoryEntry> = Vec::new();
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| Error::Decode {
                what: "timeline history",
                reason: format!("{reason} in line {line:?}"),
            };
            let mut parts = line.splitn(3, char::is_whitespace);
            let parent: TimeLineId =
                parts.next().unwrap_or("").parse().map_err(|_| bad("no parent timeline number"))?;
            let switchpoint: Lsn =
                parts.next().unwrap_or("").trim().parse().map_err(|_| bad("no switch point"))?;
            if out.last().is_some_and(|prev| prev.parent >= parent) {
                return Err(bad("timeline numbers not increasing"));
            }
            out.push(HistoryEntry {
                parent,
                switchpoint,
                reason: parts.next().unwrap_or("").trim().to_string(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_history_file() {
        let h = TimelineHistory {
            timeline: 3,
            file_name: TimelineHistory::file_name_of(3),
            content: Bytes::from_static(
                b"1\t0/3000160\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n",
            ),
        };
        assert_eq!(h.file_name, "00000003.history");
        let e = h.entries().expect("valid");
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0],
            HistoryEntry {
                parent: 1,
                switchpoint: Lsn(0x300_0160),
                reason: "no recovery target specified".into()
            }
        );
        assert_eq!(e[1].switchpoint, Lsn(0x500_0000));
        let bad = TimelineHistory { content: Bytes::from_static(b"2\t0/1\tx\n1\t0/2\ty\n"), ..h.clone() };
        assert!(bad.entries().is_err());
        let bad = TimelineHistory { content: Bytes::from_static(b"1\tzz\tx\n"), ..h };
        assert!(bad.entries().is_err());
    }
}
