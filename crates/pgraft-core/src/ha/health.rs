//! Whether this member's PostgreSQL server can serve, judged from two probes the worker
//! runs against it:
//!
//! - **a connection**: once a second the worker opens a connection to the server's socket
//!   and waits for the first answer of a backend the postmaster started for it (an
//!   `SSLRequest`, answered `N` on a Unix socket: nothing is logged, nobody logs in). A
//!   postmaster that no longer starts backends (stuck, out of processes or memory) fails it;
//! - **a commit** (a primary only): once a second the slot keeper commits a transaction
//!   with a transaction id at `synchronous_commit = local`, so its WAL record is written
//!   and flushed (stuck I/O, a full disk) but no standby is waited for.
//!
//! A probe that has waited longer than the bound (`pgraft.health_check_timeout`) makes the
//! server unhealthy; the next answer makes it healthy again. A server replaying WAL after
//! a crash is unhealthy until it is open. The member then publishes it (`ha_health`), a
//! leader whose server is the primary hands leadership to a member whose server is
//! healthy, and the member's Raft campaigns wait (see `Member::hold_campaigns`), so that
//! healthy members win elections first.

/// One probe's state: when it last succeeded, and since when one has been waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Probe {
    /// The last answer, ms since the Unix epoch.
    pub ok_ms: Option<i64>,
    /// The probe waiting for an answer started then.
    pub pending_since_ms: Option<i64>,
}

impl Probe {
    /// How long the probe now waiting has waited, if one is.
    fn waited_ms(&self, now_ms: i64) -> Option<i64> {
        self.pending_since_ms.map(|t| (now_ms - t).max(0))
    }
}

/// The problem, if the server cannot serve: `connection` and `commit` are the probes,
/// `bound_ms` the health-check timeout (0: never unhealthy).
pub fn judge(
    now_ms: i64,
    bound_ms: u64,
    in_recovery: bool,
    connection: Probe,
    commit: Probe,
) -> Option<String> {
    if bound_ms == 0 {
        return None;
    }
    let bound = bound_ms as i64;
    if let Some(waited) = connection.waited_ms(now_ms).filter(|w| *w > bound) {
        return Some(format!("the server has not answered a new connection for {} ms", waited));
    }
    if !in_recovery {
        if let Some(waited) = commit.waited_ms(now_ms).filter(|w| *w > bound) {
            return Some(format!("a commit on the server has waited {waited} ms to be written"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_waiting_past_the_bound_makes_the_server_unhealthy() {
        let waiting = |since| Probe { ok_ms: Some(0), pending_since_ms: Some(since) };
        let idle = Probe { ok_ms: Some(900), pending_since_ms: None };
        assert_eq!(judge(10_000, 5_000, false, idle, idle), None);
        assert_eq!(judge(10_000, 5_000, false, waiting(6_000), idle), None, "4 s is within the bound");
        let p = judge(10_000, 5_000, false, waiting(4_000), idle).expect("6 s");
        assert!(p.contains("connection") && p.contains("6000 ms"), "{p}");
        let p = judge(10_000, 5_000, false, idle, waiting(1_000)).expect("9 s");
        assert!(p.contains("commit"), "{p}");
        // A standby commits nothing; a bound of 0 turns the checks off.
        assert_eq!(judge(10_000, 5_000, true, idle, waiting(1_000)), None);
        assert_eq!(judge(10_000, 0, false, waiting(0), waiting(0)), None);
    }
}
