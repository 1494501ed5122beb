//! What the local PostgreSQL server is doing, read from shared memory by the worker (no
//! SQL session, no transaction): whether it is a standby, its timeline and WAL positions,
//! and where its WAL receiver connects.

use std::ffi::CStr;

use pgrx::pg_sys;

/// One look at the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// The startup process still replays WAL.
    pub in_recovery: bool,
    /// The startup process replays WAL after a crash (no signal file): a primary that is
    /// not open yet, as opposed to a standby's (or a promoting standby's) recovery.
    pub crash_recovery: bool,
    /// Insert timeline (primary) or replay timeline (standby).
    pub timeline: u32,
    /// The timeline of the last record replayed (a primary's insert timeline).
    pub replay_timeline: u32,
    /// A standby that accepts read-only sessions: it reached a consistent state and
    /// `hot_standby` is on (a primary: true).
    pub reads_open: bool,
    /// `hot_standby` is on.
    pub hot_standby: bool,
    /// A standby's received and flushed position (0 before its WAL receiver ran).
    pub received: u64,
    /// A standby's replayed position; a primary's flushed one.
    pub replayed: u64,
    /// The WAL receiver is connected or connecting (not stopped or waiting).
    pub receiver_active: bool,
    /// The WAL receiver is streaming.
    pub receiver_streaming: bool,
    /// The end of the upstream's WAL as its last message said (0: none yet).
    pub upstream_end: u64,
    /// The connection string the WAL receiver uses (passwords obfuscated by PostgreSQL).
    pub receiver_conninfo: String,
    /// PostgreSQL's port.
    pub port: u16,
    /// `pg_control_system().system_identifier`.
    pub system_id: u64,
}

impl ServerFacts {
    /// A primary replaying after a crash (not yet open; not a standby to plan for). Read
    /// from the recovery state, not from `standby.signal`: a promoting standby removes the
    /// file a moment before it leaves recovery, and in that moment it is neither.
    pub fn is_starting_primary(&self) -> bool {
        self.in_recovery && self.crash_recovery
    }

    /// A standby that has not reached a consistent state yet: it cannot open for reads,
    /// and promoting it would fail ("WAL ends before consistent recovery point"). Known
    /// only with `hot_standby` on, which tells when the state is reached.
    pub fn is_inconsistent_standby(&self) -> bool {
        self.in_recovery && !self.crash_recovery && self.hot_standby && !self.reads_open
    }
}

/// Reads the server's facts.
pub fn observe() -> ServerFacts {
    // SAFETY: these read PostgreSQL's shared memory, which the worker attached at start
    // (BGWORKER_SHMEM_ACCESS), and take or need no locks beyond what they take themselves.
    unsafe {
        let in_recovery = pg_sys::RecoveryInProgress();
        let crash_recovery = pg_sys::GetRecoveryState() == pg_sys::RecoveryState::RECOVERY_STATE_CRASH;
        let (timeline, replay_timeline, received, replayed) = if in_recovery {
            let mut replay_tli: pg_sys::TimeLineID = 0;
            let replayed = pg_sys::GetXLogReplayRecPtr(&mut replay_tli);
            let mut receive_tli: pg_sys::TimeLineID = 0;
            let received = pg_sys::GetWalRcvFlushRecPtr(std::ptr::null_mut(), &mut receive_tli);
            (replay_tli.max(receive_tli), replay_tli, received, replayed)
        } else {
            let mut tli: pg_sys::TimeLineID = 0;
            let flushed = pg_sys::GetFlushRecPtr(&mut tli);
            (tli, tli, flushed, flushed)
        };
        let WalReceiver {
            active: receiver_active,
            streaming: receiver_streaming,
            upstream_end,
            conninfo: receiver_conninfo,
        } = wal_receiver();
        ServerFacts {
            in_recovery,
            crash_recovery,
            timeline,
            replay_timeline,
            reads_open: !in_recovery || pg_sys::HotStandbyActive(),
            hot_standby: pg_sys::EnableHotStandby,
            received,
            replayed,
            receiver_active,
            receiver_streaming,
            upstream_end,
            receiver_conninfo,
            port: u16::try_from(pg_sys::PostPortNumber).unwrap_or(0),
            system_id: pg_sys::GetSystemIdentifier(),
        }
    }
}

/// What the WAL receiver's shared state says.
#[derive(Default)]
struct WalReceiver {
    active: bool,
    streaming: bool,
    upstream_end: u64,
    conninfo: String,
}

/// The WAL receiver's state, the upstream's end of WAL and the connection string. Read
/// without its spinlock (which is a macro PostgreSQL does not export): the string is
/// written once per connection, and a torn read can only fail to match a member, which
/// counts as "maybe still the primary"; the end of WAL is one aligned 8-byte word.
unsafe fn wal_receiver() -> WalReceiver {
    // SAFETY: WalRcv points into shared memory for the life of the server.
    unsafe {
        let w = pg_sys::WalRcv;
        if w.is_null() {
            return WalReceiver::default();
        }
        let state = std::ptr::read_volatile(&(*w).walRcvState);
        let active =
            !matches!(state, pg_sys::WalRcvState::WALRCV_STOPPED | pg_sys::WalRcvState::WALRCV_WAITING);
        let streaming = state == pg_sys::WalRcvState::WALRCV_STREAMING;
        let upstream_end = std::ptr::read_volatile(&(*w).latestWalEnd);
        let raw: [std::ffi::c_char; 1024] = std::ptr::read_volatile(&(*w).conninfo);
        let bytes: Vec<u8> = raw.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        let conninfo = CStr::from_bytes_with_nul(&[bytes.as_slice(), &[0]].concat())
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        WalReceiver { active, streaming, upstream_end, conninfo }
    }
}

/// The `host` and `port` of a libpq keyword/value connection string.
pub fn host_port(conninfo: &str) -> (Option<String>, Option<u16>) {
    let (mut host, mut port) = (None, None);
    for word in conninfo.split_whitespace() {
        if let Some((k, v)) = word.split_once('=') {
            let v = v.trim_matches('\'');
            match k {
                "host" | "hostaddr" if host.is_none() || k == "host" => host = Some(v.to_string()),
                "port" => port = v.parse().ok(),
                _ => {}
            }
        }
    }
    (host, port)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::host_port;
    use pgrx::prelude::*;

    #[pg_test]
    fn conninfo_host_and_port() {
        assert_eq!(
            host_port("user=postgres host=127.2.0.3 port=5433 application_name=x"),
            (Some("127.2.0.3".into()), Some(5433))
        );
        assert_eq!(host_port("host='h' port=bad"), (Some("h".into()), None));
        assert_eq!(host_port(""), (None, None));
    }

    #[pg_test]
    fn a_lone_test_server_is_a_primary() {
        let facts = super::observe();
        assert!(!facts.in_recovery);
        assert!(facts.timeline >= 1);
        assert!(facts.replayed > 0);
        assert!(facts.system_id > 0);
    }
}
