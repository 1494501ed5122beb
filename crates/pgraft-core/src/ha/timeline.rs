//! Whether a standby can follow a newer timeline, read from that timeline's history file.
//!
//! A promotion starts a new timeline whose history file (`pg_wal/0000000L.history`) lists
//! every ancestor timeline and the position where the new history left it:
//!
//! ```text
//! 1    0/3000158    no recovery target specified
//! 2    0/5000000    no recovery target specified
//! ```
//!
//! A standby's WAL receiver fetches that file from the new primary when it connects. The
//! standby can switch to the new timeline only if its own timeline is one of those
//! ancestors and it has not replayed past the point where the new history left it;
//! otherwise it holds WAL the new primary never had (it *diverged*), PostgreSQL stops
//! replaying ("new timeline L forked off current database system timeline T before current
//! recovery point") and, once restarted, refuses to start at all ("requested timeline L does
//! not contain minimum recovery point"). Such a standby must be rewound. The test is the one
//! PostgreSQL makes (`rescanLatestTimeLine`), made by the worker so that it can act on it.

use super::ha_state::Lsn;

/// One line of a history file: an ancestor timeline and where the history left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// The ancestor timeline.
    pub timeline: u32,
    /// The first position that is not on it (the end of its last record taken over).
    pub at: Lsn,
}

/// Parses a timeline history file: one `TLI<tab>X/Y<tab>reason` line per ancestor, blank
/// lines and `#` comments skipped, as PostgreSQL reads them (`readTimeLineHistory`).
pub fn parse_history(text: &str) -> Result<Vec<Switch>, String> {
    let mut out: Vec<Switch> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let bad = |what: &str| format!("line {}: {what}: {line:?}", i + 1);
        let timeline: u32 = words.next().and_then(|w| w.parse().ok()).ok_or_else(|| bad("no timeline"))?;
        let at = words.next().and_then(parse_lsn).ok_or_else(|| bad("no switch position"))?;
        if out.last().is_some_and(|prev| prev.timeline >= timeline) {
            return Err(bad("timelines out of order"));
        }
        out.push(Switch { timeline, at });
    }
    Ok(out)
}

/// An LSN as PostgreSQL prints it: `X/Y`, both hexadecimal.
pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (hi, lo) = text.split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Why a standby replaying `timeline` up to `replayed` cannot follow timeline `newer`
/// (whose history is `history`), or `None` if it can.
pub fn divergence(history: &[Switch], newer: u32, timeline: u32, replayed: Lsn) -> Option<String> {
    if timeline >= newer {
        return None;
    }
    match history.iter().find(|s| s.timeline == timeline) {
        None => Some(format!("timeline {newer} does not descend from this standby's timeline {timeline}")),
        Some(s) if replayed > s.at => Some(format!(
            "timeline {newer} left timeline {timeline} at {}, and this standby replayed it up to {}",
            lsn_text(s.at),
            lsn_text(replayed)
        )),
        Some(_) => None,
    }
}

/// `X/Y`.
pub fn lsn_text(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The file name of timeline `tli`'s history under `pg_wal`.
pub fn history_file_name(tli: u32) -> String {
    format!("{tli:08X}.history")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HISTORY_3: &str = "1\t0/3000158\tno recovery target specified\n\n\
                             # a comment\n2\t0/5000000\tno recovery target specified\n";

    #[test]
    fn a_history_file_reads_as_postgresql_writes_it() {
        let h = parse_history(HISTORY_3).expect("parse");
        assert_eq!(h, vec![Switch { timeline: 1, at: 0x300_0158 }, Switch { timeline: 2, at: 0x500_0000 }]);
        assert_eq!(parse_history("").expect("empty"), vec![]);
        for bad in ["x\t0/1\tr", "1\t\tr", "1\t01\tr", "2\t0/1\n1\t0/2", "1\t0/123456789\tr"] {
            assert!(parse_history(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_lsn("1A/FF"), Some((0x1A << 32) | 0xFF));
        assert_eq!(lsn_text((0x1A << 32) | 0xFF), "1A/FF");
        assert_eq!(history_file_name(37), "00000025.history");
    }

    #[test]
    fn a_standby_past_the_switch_point_diverged() {
        let h = parse_history(HISTORY_3).expect("parse");
        // On timeline 2, up to the switch: it follows.
        assert_eq!(divergence(&h, 3, 2, 0x500_0000), None);
        assert_eq!(divergence(&h, 3, 2, 0x400_0000), None);
        // Past it: diverged.
        let why = divergence(&h, 3, 2, 0x500_0001).expect("diverged");
        assert!(why.contains("0/5000000") && why.contains("0/5000001"), "{why}");
        // Timeline 1 left at 0/3000158.
        assert!(divergence(&h, 3, 1, 0x300_0159).is_some());
        assert_eq!(divergence(&h, 3, 1, 0x300_0158), None);
        // Not an ancestor at all (a sibling branch).
        assert!(divergence(&parse_history("1\t0/3000158\tx\n").expect("p"), 3, 2, 1).is_some());
        // Already on it, or newer.
        assert_eq!(divergence(&h, 3, 3, u64::MAX), None);
    }
}
