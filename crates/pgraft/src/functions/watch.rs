//! etcd's watch, through SQL: `pgraft_kv_watch(prefix, since_revision, timeout)` returns
//! every change (put or delete) to the keys with a prefix after a revision, waiting up to
//! the timeout for the first one; `pgraft.watch_status` lists the calls waiting now.
//!
//! ```text
//!   linearizable read of the changes after `since`   (what the cluster committed before
//!        │ none yet                                   the call, at least)
//!        ▼
//!   this member's applied state, every 20 ms, until a change arrives or the timeout ends
//!   (the member applies the log in order, so a change seen here is committed, and none
//!   before it is missed); the statement's cancel and statement_timeout work throughout
//! ```
//!
//! A caller that goes on from the last `mod_revision` it received misses nothing: changes
//! come in revision order and a revision is never cut in two. A revision that compaction
//! removed is an error naming the oldest one left (etcd's `ErrCompacted`).

use std::time::{Duration, Instant};

use pgraft_core::{Consistency, Read, Request, Response};
use pgrx::prelude::*;

use crate::bridge::{self, invalid};
use crate::shmem::{self, WatchSlot, WATCH_PREFIX_BYTES};

/// At most this many changes per call (whole revisions; the caller goes on from the last).
const MAX_CHANGES: usize = 10_000;
/// How often a waiting watch looks at this member's applied state.
const POLL: Duration = Duration::from_millis(20);

/// This backend's slot in the watch table while the call runs; freed when it ends, however
/// it ends (an error or a cancel unwinds through the drop).
struct Registration(usize);

impl Registration {
    fn new(prefix: &str, since: u64) -> Registration {
        // SAFETY: MyProcPid is set for the life of the backend.
        let pid = unsafe { pg_sys::MyProcPid };
        let mut cut = prefix.len().min(WATCH_PREFIX_BYTES);
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut table = shmem::WATCHES.exclusive();
        // A slot left by a backend that died without unwinding is free again.
        for slot in table.slots.iter_mut().filter(|s| s.pid != 0 && !alive(s.pid)) {
            *slot = WatchSlot::default();
        }
        let Some(i) = table.slots.iter().position(|s| s.pid == 0) else {
            drop(table);
            bridge::fail(
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                format!("pgraft_kv_watch: {} watches already wait on this server", shmem::WATCH_SLOTS),
                Some("End one, or watch on another member"),
            );
        };
        let mut slot = WatchSlot {
            pid,
            waiting: true,
            since,
            started_ms: crate::worker::now_ms(),
            prefix_len: cut as u8,
            ..WatchSlot::default()
        };
        slot.prefix[..cut].copy_from_slice(&prefix.as_bytes()[..cut]);
        table.slots[i] = slot;
        Registration(i)
    }

    fn update(&self, f: impl FnOnce(&mut WatchSlot)) {
        f(&mut shmem::WATCHES.exclusive().slots[self.0]);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        shmem::WATCHES.exclusive().slots[self.0] = WatchSlot::default();
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn changes(prefix: &str, after: u64, c: Consistency) -> Vec<pgraft_core::kv::Change> {
    let read = Read::Changes { prefix: prefix.to_string(), after, limit: MAX_CHANGES };
    match bridge::raft(Request::Read(read, c)) {
        Response::Changes { changes, .. } => changes,
        other => bridge::unexpected(crate::protocol::IpcResponse::Raft(Ok(other))),
    }
}

/// Every change to the keys starting with `prefix` after revision `since_revision`, in
/// revision order: `kind` is `put` or `delete` (whose `value` is NULL). Waits up to
/// `timeout` for the first change, then returns what there is (nothing, if none came).
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_kv_watch(
    prefix: &str,
    since_revision: i64,
    timeout: default!(pgrx::datetime::Interval, "'10 seconds'"),
) -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(key, String),
        name!(value, Option<String>),
        name!(create_revision, i64),
        name!(mod_revision, i64),
        name!(version, i64),
    ),
> {
    if since_revision < 0 {
        invalid("pgraft_kv_watch: since_revision must not be negative");
    }
    let micros = timeout.as_micros();
    if micros < 0 {
        invalid("pgraft_kv_watch: the timeout must not be negative");
    }
    let wait = Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX));
    let since = since_revision as u64;
    let reg = Registration::new(prefix, since);
    // Shown as waiting between polls, not while one asks the member.
    let poll = |c: Consistency| {
        reg.update(|s| s.waiting = false);
        let found = changes(prefix, since, c);
        reg.update(|s| {
            s.polls += 1;
            s.waiting = true;
        });
        found
    };
    let started = Instant::now();
    let mut found = poll(Consistency::Linearizable);
    while found.is_empty() && started.elapsed() < wait {
        std::thread::sleep(POLL.min(wait.saturating_sub(started.elapsed())));
        pgrx::check_for_interrupts!();
        found = poll(Consistency::Serializable);
    }
    drop(reg);
    TableIterator::new(found.into_iter().map(|c| {
        let kind = if c.value.is_some() { "put" } else { "delete" };
        (
            kind.to_string(),
            c.key,
            c.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
            c.create_revision as i64,
            c.mod_revision as i64,
            c.version as i64,
        )
    }))
}

/// The calls of `pgraft_kv_watch()` running on this server now.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_watches() -> TableIterator<
    'static,
    (
        name!(watcher_id, i64),
        name!(is_active, bool),
        name!(prefix, String),
        name!(since_revision, i64),
        name!(polls, i64),
        name!(started_at, Option<pgrx::datetime::TimestampWithTimeZone>),
    ),
> {
    let table = *shmem::WATCHES.share();
    let rows: Vec<_> = table
        .slots
        .iter()
        .filter(|s| s.pid != 0 && alive(s.pid))
        .map(|s| {
            (
                i64::from(s.pid),
                s.waiting,
                s.prefix(),
                s.since as i64,
                s.polls as i64,
                super::kv::ts(s.started_ms),
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn a_watch_returns_the_changes_after_a_revision_and_refuses_compacted_ones() {
        init_and_lead();
        let before = one::<i64>("SELECT revision FROM pgraft_kv_get_stats()");
        assert!(yes(
            "SELECT pgraft_kv_put('w/a', '1') AND pgraft_kv_put('other', 'x') AND pgraft_kv_put('w/a', '2')"
        ));
        assert!(yes("SELECT pgraft_kv_delete('w/a')"));
        let seen: String = one(&format!(
            "SELECT string_agg(kind || ':' || key || '=' || coalesce(value, 'NULL') || '@v' || version, ',' \
                               ORDER BY mod_revision) FROM pgraft_kv_watch('w/', {before})"
        ));
        assert_eq!(seen, "put:w/a=1@v1,put:w/a=2@v2,delete:w/a=NULL@v0");
        // Revisions are consecutive and the last one is the store's.
        assert!(yes(&format!(
            "SELECT max(mod_revision) = (SELECT revision FROM pgraft_kv_get_stats()) AND min(mod_revision) = {before} + 1 \
               FROM pgraft_kv_watch('w/', {before})"
        )));
        // Nothing after the last revision: it waits out the timeout and returns nothing.
        let started = std::time::Instant::now();
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM pgraft_kv_watch('w/', (SELECT revision FROM pgraft_kv_get_stats()), '300 ms')"
            ),
            0
        );
        assert!(started.elapsed() >= std::time::Duration::from_millis(300), "{:?}", started.elapsed());
        assert_eq!(one::<i64>("SELECT count(*) FROM pgraft.watch_status"), 0, "the watch is gone");
        assert_error("SELECT * FROM pgraft_kv_watch('w/', -1)", "22023", "must not be negative");
        assert_error("SELECT * FROM pgraft_kv_watch('w/', 0, '-1 second')", "22023", "must not be negative");
        // Compacted revisions are an error naming the oldest one left.
        assert!(yes("SELECT pgraft_kv_compact()"));
        let err = error_of(&format!("SELECT * FROM pgraft_kv_watch('w/', {before})"));
        assert!(err.contains("has been compacted"), "{err}");
        assert_eq!(one::<i64>("SELECT count(*) FROM pgraft.watch_status"), 0, "an error frees the slot");
    }
}
