//! Where each timeline's WAL survives: PostgreSQL's timeline history files, read from every
//! primary the clients wrote to, and the point at which a replaced primary's WAL stopped
//! being the cluster's.
//!
//! ```text
//!   00000003.history on timeline 3's primary:   1  0/3000000  ...   timeline 1 up to 0/3000000,
//!                                               2  0/5A00000  ...   then 2 up to 0/5A00000,
//!                                                                   then 3
//!   the final timeline 4 forked from 2 at 0/5800000:
//!     everything timeline 3's primary wrote, and timeline 2's WAL past 0/5800000, is gone;
//!     a lost commit of timeline 3 at 0/5A10000 lies 0x210000 bytes past the divergence
//! ```
//!
//! Asynchronous mode promises a bound in bytes (`pgraft.maximum_lag_on_failover`, see
//! docs/failover.md), so the loss check measures each lost commit's WAL position against
//! the divergence of its timeline from the final one, not against a clock.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use pgraft_core::ha::parse_history;

/// The history files read from the servers: (timeline, member) to the file's text (`None`
/// for timeline 1, or where it could not be read).
pub type HistoryFiles = BTreeMap<(u32, u64), Option<String>>;

/// One timeline's ancestry: `(timeline, end)` from timeline 1 on, each ending where the
/// next one forked off; the last is the timeline itself, with no end.
type Chain = Vec<(u32, Option<u64>)>;

/// The history files seen, by timeline.
#[derive(Debug, Clone, Default)]
pub struct Timelines {
    chains: BTreeMap<u32, Chain>,
}

impl Timelines {
    /// Records timeline `tli` with the text of its history file (`None` for timeline 1,
    /// which has none). Comment and blank lines are skipped, as PostgreSQL does.
    pub fn add(&mut self, tli: u32, history: Option<&str>) -> Result<()> {
        if tli > 1 && history.is_none() {
            bail!("timeline {tli}: its history file could not be read");
        }
        let switches =
            parse_history(history.unwrap_or("")).map_err(|e| anyhow!("history of timeline {tli}: {e}"))?;
        if switches.windows(2).any(|w| w[0].at > w[1].at) {
            bail!("history of timeline {tli}: switch points go backwards");
        }
        if switches.last().is_some_and(|s| s.timeline >= tli) {
            bail!("history of timeline {tli} names a parent at or after it");
        }
        let mut chain: Chain = switches.iter().map(|s| (s.timeline, Some(s.at))).collect();
        chain.push((tli, None));
        self.chains.insert(tli, chain);
        Ok(())
    }

    /// The timelines of the history files read from each member's server, by (timeline,
    /// member), and what is wrong with them: a file that does not parse or could not be
    /// read, or one timeline number started from two histories (two servers promoted
    /// apart onto the same number).
    pub fn from_histories(seen: &HistoryFiles) -> (Timelines, Vec<String>) {
        let mut t = Timelines::default();
        let mut problems = Vec::new();
        let mut by_timeline: BTreeMap<u32, Vec<(u64, Option<&str>)>> = BTreeMap::new();
        for ((tli, node), text) in seen {
            by_timeline.entry(*tli).or_default().push((*node, text.as_deref()));
        }
        for (tli, files) in by_timeline {
            let texts: std::collections::BTreeSet<Option<&str>> = files.iter().map(|f| f.1).collect();
            if texts.len() > 1 {
                let nodes: Vec<u64> = files.iter().map(|f| f.0).collect();
                problems
                    .push(format!("timeline {tli} was started from different histories on nodes {nodes:?}"));
            }
            if let Err(e) = t.add(tli, files[0].1) {
                problems.push(format!("{e:#}"));
            }
        }
        (t, problems)
    }

    /// Whether timeline `tli`'s history has been seen.
    pub fn knows(&self, tli: u32) -> bool {
        self.chains.contains_key(&tli)
    }

    /// The first WAL position at which timelines `a` and `b` hold different WAL: what `a`
    /// wrote from there on is not in `b`. `Ok(None)` when `a` is `b` (nothing diverges).
    pub fn divergence(&self, a: u32, b: u32) -> Result<Option<u64>> {
        let chain =
            |t: u32| self.chains.get(&t).with_context(|| format!("no history of timeline {t} was read"));
        let (ca, cb) = (chain(a)?, chain(b)?);
        let mut start = 0;
        for ((ta, ea), (tb, eb)) in ca.iter().zip(cb) {
            if ta != tb {
                return Ok(Some(start));
            }
            match (ea, eb) {
                (Some(x), Some(y)) if x == y => start = *x,
                (None, None) => return Ok(None),
                (x, y) => return Ok(Some(x.unwrap_or(u64::MAX).min(y.unwrap_or(u64::MAX)))),
            }
        }
        // Both chains end in an entry with no end, so the loop returned.
        bail!("histories of timelines {a} and {b} are malformed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timelines() -> Timelines {
        let mut t = Timelines::default();
        t.add(1, None).unwrap();
        t.add(2, Some("1\t0/3000000\tno recovery target specified\n")).unwrap();
        t.add(3, Some("1\t0/3000000\tno recovery target specified\n\n2\t0/5A00000\tx\n")).unwrap();
        t.add(4, Some("# comment\n1\t0/3000000\tno recovery target specified\n2\t0/5800000\tx\n")).unwrap();
        t
    }

    #[test]
    fn a_replaced_timeline_diverges_where_the_survivor_forked() {
        let t = timelines();
        assert_eq!(t.divergence(4, 4).unwrap(), None);
        // Timeline 2 is an ancestor of 4, which forked from it at 0/5800000.
        assert_eq!(t.divergence(2, 4).unwrap(), Some(0x580_0000));
        assert_eq!(t.divergence(1, 4).unwrap(), Some(0x300_0000));
        // Timeline 3 forked from 2 later than 4 did: 2's WAL past 4's fork is gone too.
        assert_eq!(t.divergence(3, 4).unwrap(), Some(0x580_0000));
        // The survivor's own WAL before the fork is common to both.
        assert_eq!(t.divergence(4, 2).unwrap(), Some(0x580_0000));
        assert!(t.divergence(5, 4).is_err());
    }

    #[test]
    fn one_timeline_number_from_two_histories_is_a_problem() {
        let seen = BTreeMap::from([
            ((1, 1), None),
            ((2, 1), Some("1\t0/3000000\tx\n".to_string())),
            ((2, 3), Some("1\t0/4000000\tx\n".to_string())),
            ((3, 2), None),
        ]);
        let (t, problems) = Timelines::from_histories(&seen);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("timeline 2") && problems[1].contains("timeline 3"), "{problems:?}");
        assert!(t.knows(1) && t.knows(2) && !t.knows(3));
    }

    #[test]
    fn malformed_histories_are_refused() {
        let mut t = Timelines::default();
        assert!(t.add(3, Some("2\t0/1\n1\t0/2\n")).is_err());
        assert!(t.add(3, Some("1\t0/2\n2\t0/1\n")).is_err());
        assert!(t.add(2, Some("2\t0/1\n")).is_err());
        assert!(t.add(2, Some("1\n")).is_err());
        assert!(t.add(2, Some("one\t0/1\n")).is_err());
        assert!(t.add(2, Some("1\t0/123456789\n")).is_err());
        assert!(t.add(2, None).is_err(), "a timeline after 1 has a history file");
    }
}
