//! A session's side of the worker bridge: calls with deadlines, and errors with SQLSTATEs.

use std::path::Path;
use std::time::{Duration, Instant};

use pgraft_core::ipc::{self, IpcError, SOCKET_PATH};
use pgraft_core::{Error, Request, Response};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgLogLevel;

use crate::gucs;
use crate::protocol::{IpcRequest, IpcResponse};

/// Raises an ERROR with a SQLSTATE, message and optional hint.
pub fn fail(code: PgSqlErrorCode, msg: impl Into<String>, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, msg.into(), "pgraft");
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// A required argument's value. The functions that write or change the cluster are not
/// STRICT: a NULL argument is an error naming it, never a NULL result that a caller's
/// `IF NOT f(...) THEN RAISE` would let pass.
pub fn required<T>(func: &str, arg: &str, value: Option<T>) -> T {
    value.unwrap_or_else(|| {
        fail(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{func}: {arg} must not be NULL"), None)
    })
}

/// An argument error.
pub fn invalid(msg: impl Into<String>) -> ! {
    fail(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, msg, None)
}

/// How long the cluster may take: just under what is left of statement_timeout when it is
/// set (so the session hears pgraft's reason rather than a bare cancel, even when one
/// function makes several calls), else pgraft.request_timeout.
pub fn budget() -> Duration {
    // SAFETY: reading a backend-local GUC variable and the transaction's timestamps on the
    // backend's main thread.
    let (st, elapsed_us) = unsafe {
        (
            pg_sys::StatementTimeout,
            pg_sys::GetCurrentTimestamp() - pg_sys::GetCurrentStatementStartTimestamp(),
        )
    };
    if st > 0 {
        let left = (st as u64).saturating_sub(elapsed_us.max(0) as u64 / 1000);
        Duration::from_millis((left - (left / 10).min(200)).max(1))
    } else {
        Duration::from_millis(gucs::REQUEST_TIMEOUT.get().max(1) as u64)
    }
}

thread_local! {
    /// This session's connection to the worker, kept between calls.
    static CONNECTION: std::cell::Cell<ipc::Connection> = const { std::cell::Cell::new(ipc::Connection::new()) };
}

/// Sends a request to the worker and waits, honouring query cancel and statement_timeout.
pub fn call(req: IpcRequest) -> IpcResponse {
    let deadline = Instant::now() + budget() + Duration::from_secs(2);
    // Sessions run in the data directory, where the worker's socket lives. The connection
    // is taken out of the session's slot for the call: an ERROR raised from the interrupt
    // check leaves the slot empty, so the next call connects afresh.
    let mut conn = CONNECTION.take();
    let r = conn.call(Path::new(SOCKET_PATH), &req, deadline, || {
        pgrx::check_for_interrupts!();
    });
    CONNECTION.set(conn);
    match r {
        Ok(r) => r,
        Err(IpcError::NotRunning { .. }) => {
            let shared = crate::shmem::read();
            let msg = match shared.state {
                crate::shmem::WorkerState::Error => {
                    format!("the pgraft worker failed: {}", shared.error.as_str())
                }
                state => format!("the pgraft worker is not running (state: {})", state.as_str()),
            };
            fail(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                msg,
                Some(
                    "Check the server log; the worker starts with the server and restarts after a failure. \
                     pgraft_get_worker_state() shows its state.",
                ),
            )
        }
        Err(IpcError::Timeout(waited)) => fail(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            format!("timed out after {waited:?} waiting for the pgraft worker"),
            None,
        ),
        Err(e) => fail(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None),
    }
}

/// A request to the Raft member; its errors become SQL errors.
pub fn raft(req: Request) -> Response {
    let timeout_ms = budget().as_millis() as u64;
    match call(IpcRequest::Call { req, timeout_ms }) {
        IpcResponse::Raft(Ok(r)) => r,
        IpcResponse::Raft(Err(e)) => raise(e),
        other => unexpected(other),
    }
}

/// Raises an answer the caller did not expect.
pub fn unexpected(r: IpcResponse) -> ! {
    match r {
        IpcResponse::Failed(msg) => {
            fail(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("pgraft: {msg}"), None)
        }
        other => {
            fail(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("pgraft: unexpected answer {other:?}"), None)
        }
    }
}

/// Raises a Raft member's error with the SQLSTATE that fits it.
pub fn raise(e: Error) -> ! {
    use PgSqlErrorCode::*;
    let msg = e.to_string();
    match &e {
        Error::NotLeader { leader_id: Some(id), leader_address } => {
            let hint = format!(
                "Run it on the leader, node {id}{}.",
                leader_address.as_deref().map(|a| format!(" (Raft address {a})")).unwrap_or_default()
            );
            fail(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, msg, Some(&hint))
        }
        Error::NotLeader { leader_id: None, .. } | Error::NoLeader => fail(
            ERRCODE_CONNECTION_FAILURE,
            msg,
            Some("Wait for an election to finish, or check that a majority of the members is reachable."),
        ),
        Error::NoQuorum => fail(
            ERRCODE_CONNECTION_FAILURE,
            msg,
            Some("Check that a majority of the members is running and reachable."),
        ),
        Error::Timeout => fail(
            ERRCODE_QUERY_CANCELED,
            msg,
            Some("Raise statement_timeout or pgraft.request_timeout, or check the cluster's health."),
        ),
        Error::UnknownMember(_) | Error::InvalidArgument(_) | Error::Compacted { .. } => {
            fail(ERRCODE_INVALID_PARAMETER_VALUE, msg, None)
        }
        Error::Busy(_) => fail(ERRCODE_OBJECT_IN_USE, msg, None),
        Error::Removed(id) => fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            msg,
            Some(&format!(
                "Run the request on a member of the cluster, or add node {id} back with pgraft_add_node on the leader."
            )),
        ),
        Error::Stopped => fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            msg,
            Some("The worker restarts the member; check the server log."),
        ),
        Error::Storage(_) => fail(ERRCODE_IO_ERROR, msg, None),
        Error::NotUpgraded(_) => fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            msg,
            Some("Finish the rolling upgrade (docs/operations.md): every member must run a build that reads this kind of entry."),
        ),
        Error::ApplyBlocked(_) => fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            msg,
            Some("Start this member on the pgraft version the rest of the cluster runs, or run the request on another member."),
        ),
    }
}
